//! The database behind the ledger: PostgreSQL, or an embedded SQLite file by default. One code path
//! through sqlx's `Any` driver with runtime queries (so a fresh clone builds without a live database);
//! the few dialect differences (row locks, identity columns) are confined to this module and the two
//! migration folders.
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Where the embedded default keeps its ledger.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://gtpcharge.sqlite?mode=rwc";

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(sqlx::Error::Configuration(
                "database URL must start with postgres:// or sqlite: (secrets are not echoed)".into(),
            ));
        };
        let pool = match backend {
            // SQLite serialises writers anyway; one connection makes every transaction run alone, so
            // no transaction can fail with "database is locked". WAL keeps readers cheap.
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Backend::Postgres => AnyPoolOptions::new().max_connections(16).connect(url).await?,
        };
        let migrator = match backend {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        Ok(Db { pool, backend })
    }

    /// ` FOR UPDATE` where the backend has row locks (PostgreSQL); SQLite runs one transaction at a time.
    pub fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }
}

/// The SQL type of a column read from a JSON parameter (see [`Db::json_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonColumn {
    BigInt,
    Text,
}

impl Db {
    /// A FROM item named `v` holding the rows of the JSON array of objects bound as `$n`, one column per
    /// object key. Set-based statements take any number of rows through one parameter, so each keeps one
    /// prepared statement whatever the batch size (an IN list or a VALUES list would prepare one statement
    /// per size). PostgreSQL: `json_to_recordset`; SQLite: `json_each`.
    pub fn json_rows(&self, n: usize, columns: &[(&str, JsonColumn)]) -> String {
        match self.backend {
            Backend::Postgres => {
                let types: Vec<String> = columns
                    .iter()
                    .map(|(name, kind)| match kind {
                        JsonColumn::BigInt => format!("{name} BIGINT"),
                        JsonColumn::Text => format!("{name} TEXT"),
                    })
                    .collect();
                format!("json_to_recordset(${n}::json) AS v({})", types.join(", "))
            }
            Backend::Sqlite => {
                let fields: Vec<String> =
                    columns.iter().map(|(name, _)| format!("json_extract(value, '$.{name}') AS {name}")).collect();
                format!("(SELECT {} FROM json_each(${n})) AS v", fields.join(", "))
            }
        }
    }

    /// An INSERT of the rows of the JSON array of objects bound as `$n` into `table`, one column per key.
    pub fn json_insert(&self, table: &str, n: usize, columns: &[(&str, JsonColumn)]) -> String {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let names = names.join(", ");
        format!("INSERT INTO {table} ({names}) SELECT {names} FROM {}", self.json_rows(n, columns))
    }

    /// A predicate: `column` equals one of the values bound as `$n`, a JSON array of strings (`key`
    /// `None`) or of objects (the value at `key`). On PostgreSQL it is written as `= ANY(ARRAY(...))`
    /// so the planner probes the column's index: a join or `IN` against a JSON function is estimated at
    /// 100 rows and planned as a scan of the whole table until the table is large.
    pub fn json_in(&self, column: &str, n: usize, key: Option<(&str, JsonColumn)>) -> String {
        match (self.backend, key) {
            (Backend::Postgres, None) => format!("{column} = ANY(ARRAY(SELECT json_array_elements_text(${n}::json)))"),
            (Backend::Postgres, Some((key, JsonColumn::Text))) => {
                format!("{column} = ANY(ARRAY(SELECT json_array_elements(${n}::json) ->> '{key}'))")
            }
            (Backend::Postgres, Some((key, JsonColumn::BigInt))) => {
                format!("{column} = ANY(ARRAY(SELECT (json_array_elements(${n}::json) ->> '{key}')::BIGINT))")
            }
            (Backend::Sqlite, None) => format!("{column} IN (SELECT value FROM json_each(${n}))"),
            (Backend::Sqlite, Some((key, _))) => {
                format!("{column} IN (SELECT json_extract(value, '$.{key}') FROM json_each(${n}))")
            }
        }
    }
}

/// Reads an optional text column.
pub fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(column)
}
