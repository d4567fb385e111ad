//! Webhook endpoints and their outbox. The outbox is the change stream itself (`purchase_changes`, written
//! in the transaction of every state change): an endpoint remembers up to which change it has queued
//! deliveries ([`Ledger::queue_webhook_deliveries`]), and a delivery row per change carries the retry state
//! until the SP answers 2xx or 72 hours have passed. Sending is `webhooks.rs`.
use super::changes::change_columns;
use super::*;

/// How long deliveries are retried before they are abandoned.
pub const WEBHOOK_RETRY_FOR_US: i64 = 72 * 3600 * 1_000_000;
/// A claimed delivery is another sender's to retry after this long (its sender died mid-attempt).
const CLAIM_LEASE_US: i64 = 60_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub service_provider_id: i64,
    pub url: String,
    pub secret: String,
    /// The secret before the last rotation, and until when it still signs.
    pub previous: Option<(String, i64)>,
}

/// A delivery claimed for an attempt: the event (the change and the purchase as that change left it),
/// where it goes and how it is signed.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub cursor: i64,
    pub at_us: i64,
    pub attempts: i64,
    pub created_at_us: i64,
    pub purchase: PurchaseRow,
    pub endpoint: WebhookEndpoint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAttemptRow {
    pub cursor: i64,
    pub at_us: i64,
    pub status: i64,
    pub error: String,
    pub duration_us: i64,
}

/// What an attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// Retried at this time.
    Retry(i64),
    Abandoned,
}

/// The URL a webhook may have: https, or http to a loopback address (tests, a local relay).
pub fn validate_webhook_url(url: &str) -> Result<()> {
    validate_text("url", url, 10, 2048)?;
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(inner) => inner.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(invalid("a webhook URL must be https:// (http:// only to a loopback address)"));
        }
        rest
    } else {
        return Err(invalid("a webhook URL must be https:// (http:// only to a loopback address)"));
    };
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        return Err(invalid("a webhook URL needs a host"));
    }
    Ok(())
}

/// The retry time after `attempts` failed attempts: 1 s doubling, at most an hour apart.
pub fn next_attempt(now: i64, attempts: i64) -> i64 {
    let shift = attempts.saturating_sub(1).clamp(0, 12) as u32;
    now + (1_000_000i64 << shift).min(3_600_000_000)
}

fn endpoint_from(row: &AnyRow) -> Result<WebhookEndpoint> {
    let previous = match (opt_text(row, "previous_secret")?, row.try_get::<Option<i64>, _>("previous_until_us")?) {
        (Some(secret), Some(until)) => Some((secret, until)),
        _ => None,
    };
    Ok(WebhookEndpoint {
        service_provider_id: row.try_get("service_provider_id")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        previous,
    })
}

/// Change cursors as the JSON rows the set-based statements take (`{"c": cursor}`).
fn cursor_rows(cursors: &[i64]) -> Result<String> {
    super::writes::json(&cursors.iter().map(|c| serde_json::json!({ "c": c })).collect::<Vec<_>>())
}

const ENDPOINT_COLUMNS: &str = "service_provider_id, url, secret, previous_secret, previous_until_us";

impl Ledger {
    /// Registers (or changes) an SP's endpoint with a new signing secret; the previous secret, if any,
    /// keeps signing for `overlap_s` seconds. New endpoints get the changes made from now on.
    pub async fn set_webhook(&self, sp: i64, url: &str, overlap_s: i64) -> Result<WebhookEndpoint> {
        validate_webhook_url(url)?;
        if !(0..=7 * 86_400).contains(&overlap_s) {
            return Err(invalid("overlap_s must be 0 to 604800"));
        }
        let secret = auth::webhook_secret().map_err(|_| LedgerError::Random)?;
        let now = now_us();
        let lock = self.db.for_update();
        let mut tx = self.db.pool.begin().await?;
        let exists =
            sqlx::query("SELECT id FROM service_providers WHERE id = $1").bind(sp).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(LedgerError::NotFound("service provider"));
        }
        let current = sqlx::query(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE service_provider_id = $1{lock}"
        ))
        .bind(sp)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = current {
            let old = endpoint_from(&row)?;
            sqlx::query(
                "UPDATE webhook_endpoints SET url = $2, secret = $3, previous_secret = $4, previous_until_us = $5, \
                 updated_at_us = $6 WHERE service_provider_id = $1",
            )
            .bind(sp)
            .bind(url)
            .bind(&secret)
            .bind(&old.secret)
            .bind(now + overlap_s * 1_000_000)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else {
            // From the newest change on: the SP's history before it registered is in WatchPurchases.
            let last: Option<i64> =
                sqlx::query_scalar("SELECT MAX(cursor) FROM purchase_changes").fetch_one(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO webhook_endpoints (service_provider_id, url, secret, queued_cursor, created_at_us, updated_at_us) \
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(sp)
            .bind(url)
            .bind(&secret)
            .bind(last.unwrap_or(0))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let row =
            sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE service_provider_id = $1"))
                .bind(sp)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        endpoint_from(&row)
    }

    /// Queues a delivery for every change made since each endpoint last queued (at most 1,000 an endpoint
    /// a call); returns how many. Replicas take turns on each endpoint's row lock.
    pub async fn queue_webhook_deliveries(&self) -> Result<u64> {
        let endpoints: Vec<i64> =
            sqlx::query_scalar("SELECT service_provider_id FROM webhook_endpoints ORDER BY service_provider_id")
                .fetch_all(&self.db.pool)
                .await?;
        let lock = self.db.for_update();
        let mut queued = 0;
        for sp in endpoints {
            let now = now_us();
            let mut tx = self.db.pool.begin().await?;
            let from: i64 = sqlx::query_scalar(&format!(
                "SELECT queued_cursor FROM webhook_endpoints WHERE service_provider_id = $1{lock}"
            ))
            .bind(sp)
            .fetch_one(&mut *tx)
            .await?;
            let cursors: Vec<i64> = sqlx::query_scalar(
                "SELECT cursor FROM purchase_changes WHERE service_provider_id = $1 AND cursor > $2 ORDER BY cursor LIMIT 1000",
            )
            .bind(sp)
            .bind(from)
            .fetch_all(&mut *tx)
            .await?;
            if let Some(last) = cursors.last() {
                sqlx::query(&format!(
                    "INSERT INTO webhook_deliveries (change_cursor, service_provider_id, next_attempt_us, created_at_us) \
                     SELECT v.c, $2, $3, $3 FROM {} WHERE true ON CONFLICT (change_cursor) DO NOTHING",
                    self.db.backend.json_rows(1, &[("c", JsonColumn::BigInt)])
                ))
                .bind(cursor_rows(&cursors)?)
                .bind(sp)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE webhook_endpoints SET queued_cursor = $2 WHERE service_provider_id = $1")
                    .bind(sp)
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
                queued += cursors.len() as u64;
            }
            tx.commit().await?;
        }
        Ok(queued)
    }

    /// Claims up to `limit` deliveries that are due: each is leased for a minute (a sender that dies
    /// mid-attempt leaves it to be retried then), and comes with its event and endpoint.
    pub async fn claim_webhook_deliveries(&self, limit: i64) -> Result<Vec<DueDelivery>> {
        let now = now_us();
        let skip = if self.db.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let mut tx = self.db.pool.begin().await?;
        let claimed: Vec<(i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT change_cursor, attempts, created_at_us FROM webhook_deliveries WHERE delivered_at_us IS NULL \
             AND abandoned_at_us IS NULL AND next_attempt_us <= $1 ORDER BY next_attempt_us LIMIT $2{skip}"
        ))
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let cursors: Vec<i64> = claimed.iter().map(|(c, _, _)| *c).collect();
        sqlx::query(&format!(
            "UPDATE webhook_deliveries SET next_attempt_us = $2 WHERE {}",
            self.db.backend.json_in("change_cursor", 1, Some(("c", JsonColumn::BigInt)))
        ))
        .bind(cursor_rows(&cursors)?)
        .bind(now + CLAIM_LEASE_US)
        .execute(&mut *tx)
        .await?;
        let columns = change_columns();
        let rows = sqlx::query(&format!(
            "SELECT c.cursor AS cursor, c.at_us AS change_at_us, {columns}, e.url AS url, e.secret AS secret, \
             e.previous_secret AS previous_secret, e.previous_until_us AS previous_until_us \
             FROM purchase_changes c JOIN purchases p ON p.id = c.purchase_id \
             JOIN webhook_endpoints e ON e.service_provider_id = c.service_provider_id WHERE {} ORDER BY c.cursor",
            self.db.backend.json_in("c.cursor", 1, Some(("c", JsonColumn::BigInt)))
        ))
        .bind(cursor_rows(&cursors)?)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let cursor: i64 = row.try_get("cursor")?;
            let Some((_, attempts, created_at_us)) = claimed.iter().find(|(c, _, _)| *c == cursor) else { continue };
            due.push(DueDelivery {
                cursor,
                at_us: row.try_get("change_at_us")?,
                attempts: *attempts,
                created_at_us: *created_at_us,
                purchase: PurchaseRow::from_row(row)?,
                // The endpoint's columns under their own names; its SP is the change's, the purchase's.
                endpoint: endpoint_from(row)?,
            });
        }
        Ok(due)
    }

    /// Records an attempt and what follows from it: delivered, retried later (backing off), or
    /// abandoned after [`WEBHOOK_RETRY_FOR_US`].
    pub async fn record_webhook_attempt(
        &self,
        delivery: &DueDelivery,
        status: u16,
        error: &str,
        duration_us: i64,
    ) -> Result<AttemptResult> {
        let now = now_us();
        let attempts = delivery.attempts + 1;
        let result = if (200..300).contains(&status) {
            AttemptResult::Delivered
        } else if now - delivery.created_at_us >= WEBHOOK_RETRY_FOR_US {
            AttemptResult::Abandoned
        } else {
            AttemptResult::Retry(next_attempt(now, attempts))
        };
        let (delivered, abandoned, next) = match result {
            AttemptResult::Delivered => (Some(now), None, now),
            AttemptResult::Abandoned => (None, Some(now), now),
            AttemptResult::Retry(at) => (None, None, at),
        };
        let mut tx = self.db.pool.begin().await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = $2, next_attempt_us = $3, delivered_at_us = $4, abandoned_at_us = $5, \
             last_status = $6 WHERE change_cursor = $1",
        )
        .bind(delivery.cursor)
        .bind(attempts)
        .bind(next)
        .bind(delivered)
        .bind(abandoned)
        .bind(i64::from(status))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (service_provider_id, change_cursor, at_us, status, error, duration_us) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(delivery.endpoint.service_provider_id)
        .bind(delivery.cursor)
        .bind(now)
        .bind(i64::from(status))
        .bind(error)
        .bind(duration_us)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(result)
    }

    /// An SP's most recent attempts, newest first.
    pub async fn webhook_log(&self, sp: i64, limit: i64) -> Result<Vec<WebhookAttemptRow>> {
        let rows: Vec<(i64, i64, i64, String, i64)> = sqlx::query_as(
            "SELECT change_cursor, at_us, status, error, duration_us FROM webhook_attempts WHERE service_provider_id = $1 \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(sp)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(cursor, at_us, status, error, duration_us)| WebhookAttemptRow {
                cursor,
                at_us,
                status,
                error,
                duration_us,
            })
            .collect())
    }

    /// Deliveries neither delivered nor abandoned: the backlog an alert watches.
    pub async fn webhook_backlog(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM webhook_deliveries WHERE delivered_at_us IS NULL AND abandoned_at_us IS NULL",
        )
        .fetch_one(&self.db.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_https_or_loopback() {
        for url in ["https://sp.example/hooks", "http://127.0.0.1:8080/h", "http://[::1]:9/x", "http://localhost:1/x"] {
            assert!(validate_webhook_url(url).is_ok(), "{url}");
        }
        for url in
            ["http://sp.example/hooks", "ftp://x.example/", "https://", "http://10.0.0.1/x", "https:// x.example"]
        {
            assert!(validate_webhook_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn retries_back_off_to_an_hour() {
        assert_eq!(next_attempt(0, 1), 1_000_000);
        assert_eq!(next_attempt(0, 2), 2_000_000);
        assert_eq!(next_attempt(0, 5), 16_000_000);
        assert_eq!(next_attempt(0, 40), 3_600_000_000);
    }
}
