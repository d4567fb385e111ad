//! The database behind the ledger: PostgreSQL, or an embedded SQLite file by default. One code path
//! through sqlx's `Any` driver with runtime queries (so a fresh clone builds without a live database);
//! the few dialect differences (row locks, identity columns, constants for PostgreSQL's simple queries)
//! are confined to this module and the two migration folders, apart from the charging path's PostgreSQL
//! form (`Ledger::charge_postgres`, and the statements each connection prepares for it, which the
//! ledger hands to [`Db::connect`]: this module knows no ledger statement).
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use sqlx::{ConnectOptions, Connection};

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

/// A pooled PostgreSQL connection idle at least this long is pinged before it is handed out.
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the embedded default keeps its ledger.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://gtpcharge.sqlite?mode=rwc";

/// The file of a `sqlite:` URL (`sqlite://FILE`, `sqlite:FILE`, `sqlite:///ABSOLUTE`), without the query;
/// `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// A new ledger file is created owner-only (0600, whatever the umask; SQLite gives its journal files
/// the same mode), and created at all: a `sqlite:` URL without `mode=rwc` would not create it.
fn create_private_sqlite_file(url: &str) -> Result<(), sqlx::Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = sqlite_file(url) else { return Ok(()) };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => {
            Err(sqlx::Error::Configuration(format!("creating the ledger {}: {error}", path.display()).into()))
        }
    }
}

impl Db {
    /// Connects and brings the schema up to date. On PostgreSQL every pooled connection runs
    /// `postgres_on_connect` once when it opens, after the migrations (the ledger's `PREPARE`s); SQLite
    /// ignores it. `Ledger::open` is the usual way in.
    pub async fn connect(url: &str, postgres_on_connect: String) -> Result<Db, sqlx::Error> {
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
        if backend == Backend::Sqlite {
            create_private_sqlite_file(url)?;
        }
        let pool = match backend {
            // SQLite serialises writers anyway; one connection makes every transaction run alone, so
            // no transaction can fail with "database is locked". WAL keeps readers cheap.
            Backend::Sqlite => {
                let pool = AnyPoolOptions::new()
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
                    .await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                pool
            }
            // sqlx's own statement logs are off: the charging path writes its values into the SQL text
            // (`Ledger::charge_postgres`), so a logged statement would carry MSISDNs into the logs.
            Backend::Postgres => {
                let options = url
                    .parse::<AnyConnectOptions>()?
                    .log_statements(log::LevelFilter::Off)
                    .log_slow_statements(log::LevelFilter::Off, std::time::Duration::from_secs(1));
                // The schema first, on a connection of its own: every pooled connection then prepares
                // the charging statements, which name its tables.
                let mut connection = options.connect().await?;
                POSTGRES_MIGRATIONS.run(&mut connection).await?;
                connection.close().await?;
                let prepare = std::sync::Arc::new(postgres_on_connect);
                AnyPoolOptions::new()
                    .max_connections(16)
                    // A connection in steady use is not pinged before each use: the ping was a third
                    // round trip per charging batch (0.2 ms of its 3 ms at idle, benches/RESULTS.md).
                    // One that sat idle is, so that one the server closed meanwhile (a restart) is
                    // replaced before it is used (tests/api.rs). sqlx still pings each connection as it
                    // comes back to the pool, off the caller's path, and closes one that fails; a batch
                    // that fails is retried call by call (`group_commit.rs`).
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IDLE_AFTER {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .after_connect(move |conn, _| {
                        let prepare = prepare.clone();
                        Box::pin(async move {
                            sqlx::Executor::execute(conn, sqlx::raw_sql(&prepare)).await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
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

/// The SQL type of a column read from a JSON parameter (see [`Backend::json_rows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonColumn {
    BigInt,
    Text,
}

impl Backend {
    /// A FROM item named `v` holding the rows of the JSON array of objects bound as `$n`, one column per
    /// object key. Set-based statements take any number of rows through one parameter, so each keeps one
    /// prepared statement whatever the batch size (an IN list or a VALUES list would prepare one statement
    /// per size). PostgreSQL: `json_to_recordset`; SQLite: `json_each`.
    pub fn json_rows(self, n: usize, columns: &[(&str, JsonColumn)]) -> String {
        match self {
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
    pub fn json_insert(self, table: &str, n: usize, columns: &[(&str, JsonColumn)]) -> String {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let names = names.join(", ");
        format!("INSERT INTO {table} ({names}) SELECT {names} FROM {}", self.json_rows(n, columns))
    }

    /// A predicate: `column` equals one of the values bound as `$n`, a JSON array of strings (`key`
    /// `None`) or of objects (the value at `key`). On PostgreSQL it is written as `= ANY(ARRAY(...))`
    /// so the planner probes the column's index: a join or `IN` against a JSON function is estimated at
    /// 100 rows and planned as a scan of the whole table until the table is large.
    pub fn json_in(self, column: &str, n: usize, key: Option<(&str, JsonColumn)>) -> String {
        match (self, key) {
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

/// `text` as a PostgreSQL string constant, dollar-quoted with a tag that does not occur in it, so no
/// character of it needs escaping and no setting (such as `standard_conforming_strings`) changes what
/// it means. For values the ledger wrote itself (JSON of its own rows) that go into a simple query.
pub fn pg_literal(text: &str) -> String {
    let mut tag = String::from("$g");
    // The constant ends where `tag$` first occurs after the opening one, which must be the closing one we
    // append: not inside the text, nor made of the text's last bytes and the closing tag ("...$g" +
    // "$g$" reads as "$g$" then "g$"). Bounded: each turn makes the tag longer, and a tag longer than
    // the text cannot start inside it.
    loop {
        let quoted = format!("{tag}${text}{tag}$");
        let content = tag.len() + 1..quoted.len();
        if quoted.get(content).and_then(|rest| rest.find(&format!("{tag}$"))) == Some(text.len()) {
            return quoted;
        }
        tag.push('g');
    }
}

/// Reads an optional text column.
pub fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_tag_never_closes_early() {
        assert_eq!(pg_literal("plain"), "$g$plain$g$");
        assert_eq!(pg_literal("a$g$b"), "$gg$a$g$b$gg$");
        // The text's last bytes and the closing tag would read as "$g$" too soon.
        assert_eq!(pg_literal("ends $g"), "$gg$ends $g$gg$");
    }
}
