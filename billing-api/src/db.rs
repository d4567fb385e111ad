//! The database behind the ledger: PostgreSQL, or an embedded SQLite file by default. One code path
//! through sqlx's `Any` driver with runtime queries (so a fresh clone builds without a live database);
//! the few dialect differences (row locks, identity columns, constants for PostgreSQL's simple queries)
//! are confined to this module and the two migration folders, apart from the charging path's PostgreSQL
//! form (`Ledger::charge_postgres`).
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::ConnectOptions;
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
            // sqlx's own statement logs are off: the charging path writes its values into the SQL text
            // (`Ledger::charge_postgres`), so a logged statement would carry MSISDNs into the logs.
            Backend::Postgres => {
                let options = url
                    .parse::<AnyConnectOptions>()?
                    .log_statements(log::LevelFilter::Off)
                    .log_slow_statements(log::LevelFilter::Off, std::time::Duration::from_secs(1));
                AnyPoolOptions::new().max_connections(16).connect_with(options).await?
            }
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

/// `sql` with each placeholder `$n` replaced by the n-th of `params` as a constant ([`pg_literal`]), in one
/// pass: a value's own text is never searched for placeholders, so a `$1` inside a value stays text.
/// For statements whose only `$` signs are placeholders (the ones [`Db::json_rows`] and its kin write);
/// a placeholder with no value is left as it is, for PostgreSQL to refuse.
pub fn pg_inline(sql: &str, params: &[&str]) -> String {
    let mut out = String::with_capacity(sql.len() + params.iter().map(|p| p.len() + 8).sum::<usize>());
    let mut rest = sql;
    while let Some(dollar) = rest.find('$') {
        out.push_str(rest.get(..dollar).unwrap_or_default());
        let after = rest.get(dollar + 1..).unwrap_or_default();
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let value =
            after.get(..digits).and_then(|n| n.parse::<usize>().ok()).and_then(|n| params.get(n.checked_sub(1)?));
        match value {
            Some(value) => out.push_str(&pg_literal(value)),
            None => out.push_str(rest.get(dollar..dollar + 1 + digits).unwrap_or_default()),
        }
        rest = after.get(digits..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Reads an optional text column.
pub fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    row.try_get::<Option<String>, _>(column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlining_replaces_each_placeholder_once_and_never_inside_a_value() {
        let sql = "SELECT $1::json, $2, $10, cost$ FROM t WHERE a = $2";
        let got = pg_inline(sql, &["[\"$2\"]", "it's $1"]);
        assert_eq!(got, "SELECT $g$[\"$2\"]$g$::json, $g$it's $1$g$, $10, cost$ FROM t WHERE a = $g$it's $1$g$");
        assert_eq!(pg_inline("no placeholders", &["x"]), "no placeholders");
        assert_eq!(pg_inline("$0 $", &["x"]), "$0 $");
    }

    #[test]
    fn a_literal_tag_never_closes_early() {
        assert_eq!(pg_literal("plain"), "$g$plain$g$");
        assert_eq!(pg_literal("a$g$b"), "$gg$a$g$b$gg$");
        // The text's last bytes and the closing tag would read as "$g$" too soon.
        assert_eq!(pg_literal("ends $g"), "$gg$ends $g$gg$");
    }
}
