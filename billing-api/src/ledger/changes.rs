//! The change stream: every state change of a purchase appended in commit order per SP, read from a cursor.
use super::writes::*;
use super::*;

/// A purchase's columns as one of its change rows (`c`, joined to `p`, the purchase) shows it: the state,
/// refunds and decline of the change, the rest of the purchase.
pub(super) fn change_columns() -> String {
    PURCHASE_COLUMNS
        .split(", ")
        .map(|c| match c {
            "state" | "refunded_amount" | "decline_reason" => format!("c.{c} AS {c}"),
            other => format!("p.{other} AS {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ledger {
    pub(super) async fn record_change(&self, tx: &mut Tx<'_>, purchase: &PurchaseRow, now: i64) -> Result<()> {
        self.insert_changes(tx, &[ChangeWrite::of(purchase, now)]).await
    }

    /// Appends rows to the SPs' change streams, any number in one statement.
    pub(super) async fn insert_changes(&self, tx: &mut Tx<'_>, changes: &[ChangeWrite]) -> Result<()> {
        self.lock_change_stream(tx).await?;
        sqlx::query(&changes_sql(self.db.backend, 1)).bind(json(changes)?).execute(&mut **tx).await?;
        Ok(())
    }

    /// Makes change cursors visible in order. A cursor is drawn when a change row is inserted, but the
    /// row becomes visible when its transaction commits; were two transactions to commit in the other
    /// order, a watcher could see cursor N+1, resume after it, and never see N. So every transaction
    /// takes this lock (a transaction-scoped advisory lock on PostgreSQL) just before it inserts change
    /// rows and keeps it until it commits: cursors are drawn in commit order. It is always the last lock
    /// a transaction takes, and its holder waits for nothing else, so it cannot deadlock. SQLite runs one
    /// transaction at a time and needs nothing.
    pub(super) async fn lock_change_stream(&self, tx: &mut Tx<'_>) -> Result<()> {
        if self.db.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHANGE_STREAM_LOCK).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The caller's purchase changes after `cursor`, oldest first: (cursor, purchase as it was then).
    pub async fn changes_after(&self, sp: i64, cursor: i64, limit: i64) -> Result<Vec<(i64, PurchaseRow)>> {
        let columns = change_columns();
        let rows = sqlx::query(&format!(
            "SELECT c.cursor AS cursor, {columns} FROM purchase_changes c JOIN purchases p ON p.id = c.purchase_id \
             WHERE c.service_provider_id = $1 AND c.cursor > $2 ORDER BY c.cursor LIMIT $3"
        ))
        .bind(sp)
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("cursor")?, PurchaseRow::from_row(r)?)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }
}
