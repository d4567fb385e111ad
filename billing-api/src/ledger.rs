//! The ledger: purchases, subscriber accounts, double-entry entries and the exactly-once charge.
//!
//! Every operation that changes money or a purchase's state is one database transaction. A charge moves
//! the purchase from `pending` to `charged` (with the MSISDN that paid), debits the subscriber and credits
//! the SP, after the caps and the balance are checked, all under row locks (PostgreSQL) or SQLite's single
//! writer, so concurrent reports of one token give one charge and the same answer to all. Entries are
//! only ever inserted; a refund is a new pair of entries. Each state change also appends a row to
//! `purchase_changes`, the SP's resumable change stream.
use crate::auth::{self, Caller, Kind, NewSecret};
use crate::db::{opt_text, pg_literal, Backend, Db, JsonColumn};
use gtpcharge_proto::Token;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("missing, unknown or revoked credential")]
    Unauthenticated,
    #[error("{0}")]
    PermissionDenied(&'static str),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no randomness available")]
    Random,
    #[error("{0}")]
    Unavailable(&'static str),
}

pub type Result<T> = std::result::Result<T, LedgerError>;

fn invalid(message: impl Into<String>) -> LedgerError {
    LedgerError::Invalid(message.into())
}

/// One movement of money: its id (the idempotency of the ledger), when, why and in which currency.
struct Movement<'a> {
    id: &'a str,
    at_us: i64,
    kind: &'a str,
    currency: &'a str,
}

/// Whether reading an account sums what it spent today and this month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spending {
    Always,
    /// Only when a cap needs it (the figures are then not shown to anyone).
    WhenCapped,
}

/// How far back of its mark the expiry sweep looks again (see [`Ledger::expire_due`]).
pub const EXPIRY_LOOK_BACK_US: i64 = 10_000_000;

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// ISO 4217 alphabetic codes of current currencies.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP \
BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ \
GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD \
MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR \
RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH \
UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL";

pub fn validate_currency(code: &str) -> Result<()> {
    if code.len() == 3 && ISO_4217.split(' ').any(|c| c == code) {
        Ok(())
    } else {
        Err(invalid(format!("currency must be an ISO 4217 code such as EUR (got {:?})", truncate(code))))
    }
}

pub fn validate_msisdn(msisdn: &str) -> Result<()> {
    if (5..=15).contains(&msisdn.len()) && msisdn.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid("msisdn must be 5 to 15 digits"))
    }
}

fn validate_text(field: &str, value: &str, min: usize, max: usize) -> Result<()> {
    let chars = value.chars().count();
    if chars < min || chars > max {
        return Err(invalid(format!("{field} must be {min} to {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

fn validate_amount(field: &str, amount: i64) -> Result<()> {
    if amount <= 0 || amount > 1_000_000_000_000 {
        return Err(invalid(format!("{field} must be a positive integer number of minor units, at most 10^12")));
    }
    Ok(())
}

fn truncate(text: &str) -> String {
    text.chars().take(16).collect()
}

/// Start of the UTC day and of the UTC month containing `now_us`.
fn day_and_month_start(now_us: i64) -> (i64, i64) {
    const DAY_US: i64 = 86_400_000_000;
    let days = now_us.div_euclid(DAY_US);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), then back to the 1st of the month.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5 + 1;
    let month_start_days = days - (day_of_month - 1);
    (days * DAY_US, month_start_days * DAY_US)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PurchaseRow {
    pub id: i64,
    pub service_provider_id: i64,
    pub token: String,
    pub product_id: String,
    pub description: String,
    pub amount: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub state: String,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    pub charged_msisdn: Option<String>,
    pub charged_at_us: Option<i64>,
    pub refunded_amount: i64,
    pub decline_reason: Option<String>,
}

const PURCHASE_COLUMNS: &str = "id, service_provider_id, token, product_id, description, amount, currency, \
idempotency_key, state, created_at_us, expires_at_us, charged_msisdn, charged_at_us, refunded_amount, decline_reason";

impl PurchaseRow {
    fn from_row(row: &AnyRow) -> std::result::Result<PurchaseRow, sqlx::Error> {
        Ok(PurchaseRow {
            id: row.try_get("id")?,
            service_provider_id: row.try_get("service_provider_id")?,
            token: row.try_get("token")?,
            product_id: row.try_get("product_id")?,
            description: row.try_get("description")?,
            amount: row.try_get("amount")?,
            currency: row.try_get("currency")?,
            idempotency_key: row.try_get("idempotency_key")?,
            state: row.try_get("state")?,
            created_at_us: row.try_get("created_at_us")?,
            expires_at_us: row.try_get("expires_at_us")?,
            charged_msisdn: opt_text(row, "charged_msisdn")?,
            charged_at_us: row.try_get::<Option<i64>, _>("charged_at_us")?,
            refunded_amount: row.try_get("refunded_amount")?,
            decline_reason: opt_text(row, "decline_reason")?,
        })
    }
}

/// An account as read: its row, and what it spent today and this month (summed from the ledger, or 0
/// where not asked for). Deserialize reads the row as the charging path's locking read returns it
/// (JSON; see `lock_for_charging`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountRow {
    pub msisdn: String,
    pub kind: String,
    pub currency: String,
    pub balance: i64,
    pub credit_limit: i64,
    pub daily_cap: i64,
    pub monthly_cap: i64,
    /// Stored as an integer (0 or 1) on both backends.
    #[serde(deserialize_with = "flag")]
    pub barred: bool,
    #[serde(default)]
    pub spent_today: i64,
    #[serde(default)]
    pub spent_this_month: i64,
}

fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<bool, D::Error> {
    Ok(i64::deserialize(deserializer)? != 0)
}

const ACCOUNT_COLUMNS: &str = "msisdn, kind, currency, balance, credit_limit, daily_cap, monthly_cap, barred";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRow {
    pub id: i64,
    pub at_us: i64,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub purchase_id: Option<i64>,
}

/// What an operator sets on an account; `None` leaves a field as it is (or at its default when new).
#[derive(Debug, Clone, Default)]
pub struct AccountUpdate {
    pub msisdn: String,
    pub kind: Option<String>,
    pub currency: String,
    pub balance: Option<i64>,
    pub credit_limit: Option<i64>,
    pub daily_cap: Option<i64>,
    pub monthly_cap: Option<i64>,
    pub barred: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct NewPurchase {
    pub product_id: String,
    pub description: String,
    pub amount: i64,
    pub currency: String,
    pub expires_in_s: i64,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, Default)]
pub struct PurchaseFilter {
    pub state: Option<String>,
    pub product_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SightingReport {
    pub token: String,
    pub msisdn: String,
    pub seen_at_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Charged,
    AlreadyCharged,
    Declined,
    Expired,
    Cancelled,
    UnknownToken,
    Refunded,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Charged => "charged",
            Outcome::AlreadyCharged => "already-charged",
            Outcome::Declined => "declined",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
            Outcome::UnknownToken => "unknown-token",
            Outcome::Refunded => "refunded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingResult {
    pub outcome: Outcome,
    pub decline_reason: Option<String>,
    pub purchase_id: Option<i64>,
    pub charged_msisdn: Option<String>,
    pub other_subscriber: bool,
}

impl SightingResult {
    fn unknown() -> SightingResult {
        SightingResult {
            outcome: Outcome::UnknownToken,
            decline_reason: None,
            purchase_id: None,
            charged_msisdn: None,
            other_subscriber: false,
        }
    }
}

#[derive(Clone)]
pub struct Ledger {
    pub db: Db,
    /// Woken after every commit that appended purchase changes (WatchPurchases waits on it).
    pub changed: Arc<Notify>,
    /// Credentials recently found valid, by the SHA-256 of their secret (see [`CREDENTIAL_TTL`]).
    credentials: Arc<Mutex<Credentials>>,
}

#[derive(Default)]
struct Credentials {
    valid: HashMap<String, (Caller, Instant)>,
    /// Bumped by every revocation: a lookup that started before one does not fill the cache.
    generation: u64,
}

/// How long a credential found valid is trusted without asking the database again. A key revoked
/// through this server stops working at once (the cache is emptied); one revoked through another
/// server sharing the database stops working here within this time.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(2);
/// The advisory lock key that orders change cursors ("gtpcharg" in ASCII; see `lock_change_stream`).
const CHANGE_STREAM_LOCK: i64 = 0x6774_7063_6861_7267;
/// At most this many credentials are remembered (the cache is emptied when it is full).
const CREDENTIALS_CACHED: usize = 4096;

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

impl Ledger {
    pub fn new(db: Db) -> Ledger {
        Ledger { db, changed: Arc::new(Notify::new()), credentials: Arc::default() }
    }

    // ------------------------------------------------------------------ credentials

    pub async fn create_service_provider(&self, name: &str) -> Result<(i64, NewSecret)> {
        validate_text("name", name, 1, 128)?;
        let mut tx = self.db.pool.begin().await?;
        let inserted = sqlx::query("INSERT INTO service_providers (name, created_at_us) VALUES ($1, $2) RETURNING id")
            .bind(name)
            .bind(now_us())
            .fetch_one(&mut *tx)
            .await;
        let id: i64 = match inserted {
            Ok(row) => row.try_get("id")?,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(LedgerError::AlreadyExists(format!("a service provider named {name:?} exists")))
            }
            Err(e) => return Err(e.into()),
        };
        let secret = Self::insert_credential(&mut tx, Kind::ServiceProvider, Some(id), name).await?;
        tx.commit().await?;
        Ok((id, secret))
    }

    pub async fn create_credential(
        &self,
        kind: Kind,
        service_provider_id: Option<i64>,
        name: &str,
    ) -> Result<NewSecret> {
        validate_text("name", name, 1, 128)?;
        let mut tx = self.db.pool.begin().await?;
        if let Some(id) = service_provider_id {
            let found =
                sqlx::query("SELECT id FROM service_providers WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
            if found.is_none() {
                return Err(LedgerError::NotFound("service provider"));
            }
        }
        let secret = Self::insert_credential(&mut tx, kind, service_provider_id, name).await?;
        tx.commit().await?;
        Ok(secret)
    }

    async fn insert_credential(tx: &mut Tx<'_>, kind: Kind, sp: Option<i64>, name: &str) -> Result<NewSecret> {
        let secret = auth::mint(kind).map_err(|_| LedgerError::Random)?;
        sqlx::query(
            "INSERT INTO credentials (key_id, kind, secret_sha256, service_provider_id, name, created_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&secret.key_id)
        .bind(kind.as_str())
        .bind(&secret.sha256)
        .bind(sp)
        .bind(name)
        .bind(now_us())
        .execute(&mut **tx)
        .await?;
        Ok(secret)
    }

    pub async fn revoke(&self, key_id: &str) -> Result<()> {
        let done = sqlx::query("UPDATE credentials SET revoked_at_us = $2 WHERE key_id = $1 AND revoked_at_us IS NULL")
            .bind(key_id)
            .bind(now_us())
            .execute(&self.db.pool)
            .await?;
        // After the row is updated: emptied, and lookups that read it before cannot refill the cache.
        if let Ok(mut cache) = self.credentials.lock() {
            cache.valid.clear();
            cache.generation += 1;
        }
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT key_id FROM credentials WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&self.db.pool)
                .await?;
            if exists.is_none() {
                return Err(LedgerError::NotFound("key"));
            }
        }
        Ok(())
    }

    pub async fn authenticate(&self, secret: &str) -> Result<Caller> {
        let hash = auth::hash(secret);
        let mut generation = None;
        if let Ok(cache) = self.credentials.lock() {
            if let Some((caller, at)) = cache.valid.get(&hash) {
                if at.elapsed() < CREDENTIAL_TTL {
                    return Ok(caller.clone());
                }
            }
            generation = Some(cache.generation);
        }
        let row = sqlx::query(
            "SELECT key_id, kind, service_provider_id FROM credentials WHERE secret_sha256 = $1 AND revoked_at_us IS NULL",
        )
        .bind(&hash)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or(LedgerError::Unauthenticated)?;
        let kind: String = row.try_get("kind")?;
        let caller = Caller {
            key_id: row.try_get("key_id")?,
            kind: Kind::parse(&kind).ok_or(LedgerError::Unauthenticated)?,
            service_provider_id: row.try_get::<Option<i64>, _>("service_provider_id")?,
        };
        if let Ok(mut cache) = self.credentials.lock() {
            if generation == Some(cache.generation) {
                if cache.valid.len() >= CREDENTIALS_CACHED {
                    cache.valid.clear();
                }
                cache.valid.insert(hash, (caller.clone(), Instant::now()));
            }
        }
        Ok(caller)
    }

    // ------------------------------------------------------------------ accounts

    pub async fn set_account(&self, update: &AccountUpdate) -> Result<AccountRow> {
        validate_msisdn(&update.msisdn)?;
        validate_currency(&update.currency)?;
        if let Some(kind) = &update.kind {
            if kind != "prepaid" && kind != "postpaid" {
                return Err(invalid("kind must be prepaid or postpaid"));
            }
        }
        for (name, value) in [
            ("credit_limit", update.credit_limit),
            ("daily_cap", update.daily_cap),
            ("monthly_cap", update.monthly_cap),
        ] {
            if value.is_some_and(|v| !(0..=1_000_000_000_000).contains(&v)) {
                return Err(invalid(format!("{name} must be 0 to 10^12 minor units")));
            }
        }
        if update.balance.is_some_and(|b| b.abs() > 1_000_000_000_000) {
            return Err(invalid("balance must be within ±10^12 minor units"));
        }
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let lock = self.db.for_update();
        let existing = sqlx::query(&format!("SELECT currency, balance FROM accounts WHERE msisdn = $1{lock}"))
            .bind(&update.msisdn)
            .fetch_optional(&mut *tx)
            .await?;
        let (old_balance, is_new) = match &existing {
            Some(row) => {
                let currency: String = row.try_get("currency")?;
                if currency != update.currency {
                    return Err(LedgerError::Precondition(format!(
                        "the account is kept in {currency}; its currency cannot change"
                    )));
                }
                (row.try_get::<i64, _>("balance")?, false)
            }
            None => (0, true),
        };
        if is_new {
            sqlx::query(
                "INSERT INTO accounts (msisdn, kind, currency, balance, credit_limit, daily_cap, monthly_cap, barred, updated_at_us) \
                 VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8)",
            )
            .bind(&update.msisdn)
            .bind(update.kind.as_deref().unwrap_or(if update.credit_limit.is_some() { "postpaid" } else { "prepaid" }))
            .bind(&update.currency)
            .bind(update.credit_limit.unwrap_or(0))
            .bind(update.daily_cap.unwrap_or(0))
            .bind(update.monthly_cap.unwrap_or(0))
            .bind(i64::from(update.barred.unwrap_or(false)))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE accounts SET kind = COALESCE($2, kind), credit_limit = COALESCE($3, credit_limit), \
                 daily_cap = COALESCE($4, daily_cap), monthly_cap = COALESCE($5, monthly_cap), \
                 barred = COALESCE($6, barred), updated_at_us = $7 WHERE msisdn = $1",
            )
            .bind(&update.msisdn)
            .bind(update.kind.as_deref())
            .bind(update.credit_limit)
            .bind(update.daily_cap)
            .bind(update.monthly_cap)
            .bind(update.barred.map(i64::from))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(balance) = update.balance {
            let delta = balance - old_balance;
            if delta != 0 {
                // A top-up or correction: the carrier's funding account pays the other side.
                let movement = format!("adjust-{}-{now}", update.msisdn);
                let movement = Movement { id: &movement, at_us: now, kind: "adjustment", currency: &update.currency };
                self.movement(&mut tx, &movement, None, &update.msisdn, delta, ("carrier", "funding")).await?;
                sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE msisdn = $1")
                    .bind(&update.msisdn)
                    .bind(delta)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let account = self
            .read_account(&mut tx, &update.msisdn, now, Spending::Always)
            .await?
            .ok_or(LedgerError::NotFound("account"))?;
        tx.commit().await?;
        Ok(account)
    }

    /// Writes one movement: two ledger entries that sum to zero, the subscriber's first.
    async fn movement(
        &self,
        tx: &mut Tx<'_>,
        movement: &Movement<'_>,
        purchase_id: Option<i64>,
        subscriber: &str,
        subscriber_amount: i64,
        (other_type, other_ref): (&str, &str),
    ) -> Result<()> {
        let entries = EntryWrite::pair(movement, purchase_id, subscriber, subscriber_amount, (other_type, other_ref));
        self.insert_entries(tx, &entries).await
    }

    /// Inserts ledger entries, any number in one statement.
    async fn insert_entries(&self, tx: &mut Tx<'_>, entries: &[EntryWrite]) -> Result<()> {
        sqlx::query(&entries_sql(self.db.backend, 1)).bind(json(entries)?).execute(&mut **tx).await?;
        Ok(())
    }

    /// One account; see [`Ledger::read_accounts`].
    async fn read_account(
        &self,
        tx: &mut Tx<'_>,
        msisdn: &str,
        now: i64,
        spending: Spending,
    ) -> Result<Option<AccountRow>> {
        Ok(self.read_accounts(tx, &[msisdn], now, spending).await?.pop())
    }

    /// The accounts of these MSISDNs that exist, in MSISDN order, unlocked (the charge path locks them in
    /// `lock_for_charging`); what each spent today and this month is added as `spending` says
    /// ([`Ledger::add_spending`]).
    async fn read_accounts(
        &self,
        tx: &mut Tx<'_>,
        msisdns: &[&str],
        now: i64,
        spending: Spending,
    ) -> Result<Vec<AccountRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {} ORDER BY msisdn",
            self.db.backend.json_in("msisdn", 1, None)
        ))
        .bind(json(msisdns)?)
        .fetch_all(&mut **tx)
        .await?;
        let mut accounts = rows
            .iter()
            .map(|row| {
                Ok(AccountRow {
                    msisdn: row.try_get("msisdn")?,
                    kind: row.try_get("kind")?,
                    currency: row.try_get("currency")?,
                    balance: row.try_get("balance")?,
                    credit_limit: row.try_get("credit_limit")?,
                    daily_cap: row.try_get("daily_cap")?,
                    monthly_cap: row.try_get("monthly_cap")?,
                    barred: row.try_get::<i64, _>("barred")? != 0,
                    spent_today: 0,
                    spent_this_month: 0,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        self.add_spending(tx, &mut accounts, now, spending).await?;
        Ok(accounts)
    }

    /// Fills in what each account spent today and this month, summed from the ledger (for every
    /// account, or only for those with a cap). A statement of its own: under READ COMMITTED it sees
    /// every charge committed before it began, so after the accounts' rows are locked it sees all the
    /// charges of the transactions it waited for.
    async fn add_spending(
        &self,
        conn: &mut sqlx::AnyConnection,
        accounts: &mut [AccountRow],
        now: i64,
        spending: Spending,
    ) -> Result<()> {
        let summed: Vec<&str> = accounts
            .iter()
            .filter(|a| spending == Spending::Always || a.daily_cap > 0 || a.monthly_cap > 0)
            .map(|a| a.msisdn.as_str())
            .collect();
        if summed.is_empty() {
            return Ok(());
        }
        // The month started no later than the day: one pass over the month's entries gives both.
        let (day_start, month_start) = day_and_month_start(now);
        let sums = sqlx::query(&format!(
            "SELECT account_ref, CAST(COALESCE(SUM(CASE WHEN at_us >= $2 THEN amount ELSE 0 END), 0) AS BIGINT) AS today, \
             CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS month FROM ledger_entries \
             WHERE account_type = 'subscriber' AND {} AND kind IN ('charge', 'refund') AND at_us >= $3 \
             GROUP BY account_ref",
            self.db.backend.json_in("account_ref", 1, None)
        ))
        .bind(json(&summed)?)
        .bind(day_start)
        .bind(month_start)
        .fetch_all(&mut *conn)
        .await?;
        for row in &sums {
            let msisdn: String = row.try_get("account_ref")?;
            if let Some(account) = accounts.iter_mut().find(|a| a.msisdn == msisdn) {
                account.spent_today = -row.try_get::<i64, _>("today")?;
                account.spent_this_month = -row.try_get::<i64, _>("month")?;
            }
        }
        Ok(())
    }

    pub async fn get_account(&self, msisdn: &str) -> Result<AccountRow> {
        validate_msisdn(msisdn)?;
        let mut tx = self.db.pool.begin().await?;
        let account = self
            .read_account(&mut tx, msisdn, now_us(), Spending::Always)
            .await?
            .ok_or(LedgerError::NotFound("account"))?;
        tx.commit().await?;
        Ok(account)
    }

    pub async fn statement(
        &self,
        msisdn: &str,
        page_size: i64,
        before_id: Option<i64>,
    ) -> Result<(AccountRow, Vec<EntryRow>)> {
        let account = self.get_account(msisdn).await?;
        let rows = sqlx::query(
            "SELECT id, at_us, kind, amount, currency, purchase_id FROM ledger_entries \
             WHERE account_type = 'subscriber' AND account_ref = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(msisdn)
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(page_size)
        .fetch_all(&self.db.pool)
        .await?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(EntryRow {
                    id: r.try_get("id")?,
                    at_us: r.try_get("at_us")?,
                    kind: r.try_get("kind")?,
                    amount: r.try_get("amount")?,
                    currency: r.try_get("currency")?,
                    purchase_id: r.try_get::<Option<i64>, _>("purchase_id")?,
                })
            })
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        Ok((account, entries))
    }

    // ------------------------------------------------------------------ purchases

    pub async fn create_purchase(&self, sp: i64, new: &NewPurchase) -> Result<PurchaseRow> {
        let token = Token::generate().map_err(|_| LedgerError::Random)?;
        self.insert_purchase(sp, new, token).await
    }

    /// Imports a pending purchase whose token was minted elsewhere (an operator migrating purchases from
    /// another system, or the demo, whose capture carries known tokens). Same checks and idempotency as
    /// [`Ledger::create_purchase`]; never reachable by an SP.
    pub async fn import_purchase(&self, sp: i64, new: &NewPurchase, token: Token) -> Result<PurchaseRow> {
        self.insert_purchase(sp, new, token).await
    }

    async fn insert_purchase(&self, sp: i64, new: &NewPurchase, token: Token) -> Result<PurchaseRow> {
        validate_text("product_id", &new.product_id, 1, 128)?;
        validate_text("description", &new.description, 0, 512)?;
        validate_text("idempotency_key", &new.idempotency_key, 1, 128)?;
        validate_amount("amount", new.amount)?;
        validate_currency(&new.currency)?;
        let expires_in_s = match new.expires_in_s {
            0 => 900,
            s if (1..=604_800).contains(&s) => s,
            _ => return Err(invalid("expires_in_s must be 1 to 604800 (0 for the default of 900)")),
        };
        let fingerprint = auth::hash(&format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            new.product_id, new.description, new.amount, new.currency, expires_in_s
        ));
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO purchases (service_provider_id, token, product_id, description, amount, currency, idempotency_key, \
             request_sha256, state, created_at_us, expires_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10) \
             RETURNING {PURCHASE_COLUMNS}"
        ))
        .bind(sp)
        .bind(token.to_string())
        .bind(&new.product_id)
        .bind(&new.description)
        .bind(new.amount)
        .bind(&new.currency)
        .bind(&new.idempotency_key)
        .bind(&fingerprint)
        .bind(now)
        .bind(now + expires_in_s * 1_000_000)
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(row) => {
                let purchase = PurchaseRow::from_row(&row)?;
                self.record_change(&mut tx, &purchase, now).await?;
                tx.commit().await?;
                self.changed.notify_waiters();
                Ok(purchase)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                let row = sqlx::query(&format!(
                    "SELECT {PURCHASE_COLUMNS}, request_sha256 FROM purchases WHERE service_provider_id = $1 AND idempotency_key = $2"
                ))
                .bind(sp)
                .bind(&new.idempotency_key)
                .fetch_one(&self.db.pool)
                .await?;
                let existing_fingerprint: String = row.try_get("request_sha256")?;
                if existing_fingerprint != fingerprint {
                    return Err(LedgerError::AlreadyExists(
                        "idempotency_key was used for a purchase with other parameters".into(),
                    ));
                }
                Ok(PurchaseRow::from_row(&row)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn record_change(&self, tx: &mut Tx<'_>, purchase: &PurchaseRow, now: i64) -> Result<()> {
        self.insert_changes(tx, &[ChangeWrite::of(purchase, now)]).await
    }

    /// Appends rows to the SPs' change streams, any number in one statement.
    async fn insert_changes(&self, tx: &mut Tx<'_>, changes: &[ChangeWrite]) -> Result<()> {
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
    async fn lock_change_stream(&self, tx: &mut Tx<'_>) -> Result<()> {
        if self.db.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHANGE_STREAM_LOCK).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// A purchase of this SP, by id or token; another SP's purchase is NOT_FOUND like a missing one.
    pub async fn get_purchase(&self, sp: i64, id: Option<i64>, token: Option<&str>) -> Result<PurchaseRow> {
        let row = match (id, token) {
            (Some(id), _) => {
                sqlx::query(&format!(
                    "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = $1 AND service_provider_id = $2"
                ))
                .bind(id)
                .bind(sp)
                .fetch_optional(&self.db.pool)
                .await?
            }
            (None, Some(token)) => {
                let token = Token::parse(token.as_bytes()).map_err(|e| invalid(format!("token: {e}")))?;
                sqlx::query(&format!(
                    "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE token = $1 AND service_provider_id = $2"
                ))
                .bind(token.to_string())
                .bind(sp)
                .fetch_optional(&self.db.pool)
                .await?
            }
            (None, None) => return Err(invalid("give an id or a token")),
        };
        Ok(PurchaseRow::from_row(&row.ok_or(LedgerError::NotFound("purchase"))?)?)
    }

    pub async fn list_purchases(
        &self,
        sp: i64,
        filter: &PurchaseFilter,
        page_size: i64,
        before_id: Option<i64>,
    ) -> Result<Vec<PurchaseRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE service_provider_id = $1 AND id < $2 \
             AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR product_id = $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(sp)
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(filter.state.as_deref())
        .bind(filter.product_id.as_deref())
        .bind(page_size)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(PurchaseRow::from_row).collect::<std::result::Result<_, _>>()?)
    }

    async fn lock_purchase(&self, tx: &mut Tx<'_>, sp: i64, id: i64) -> Result<PurchaseRow> {
        let lock = self.db.for_update();
        let row = sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = $1 AND service_provider_id = $2{lock}"
        ))
        .bind(id)
        .bind(sp)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(LedgerError::NotFound("purchase"))?;
        Ok(PurchaseRow::from_row(&row)?)
    }

    pub async fn cancel(&self, sp: i64, id: i64) -> Result<PurchaseRow> {
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let mut purchase = self.lock_purchase(&mut tx, sp, id).await?;
        match purchase.state.as_str() {
            "cancelled" => return Ok(purchase),
            "pending" => {}
            other => {
                return Err(LedgerError::Precondition(format!(
                    "only a pending purchase can be cancelled; it is {other}"
                )))
            }
        }
        sqlx::query("UPDATE purchases SET state = 'cancelled' WHERE id = $1").bind(id).execute(&mut *tx).await?;
        purchase.state = "cancelled".into();
        self.record_change(&mut tx, &purchase, now).await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(purchase)
    }

    /// Refunds `amount` (0: the rest) of a charged purchase, once per `refund_key`.
    pub async fn refund(
        &self,
        sp: i64,
        id: i64,
        amount: i64,
        refund_key: &str,
        reason: &str,
    ) -> Result<(PurchaseRow, i64)> {
        validate_text("refund_key", refund_key, 1, 128)?;
        validate_text("reason", reason, 0, 512)?;
        if amount < 0 {
            return Err(invalid("amount must not be negative (0 refunds the rest)"));
        }
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let mut purchase = self.lock_purchase(&mut tx, sp, id).await?;
        let previous = sqlx::query("SELECT amount FROM refunds WHERE purchase_id = $1 AND refund_key = $2")
            .bind(id)
            .bind(refund_key)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = previous {
            let done: i64 = row.try_get("amount")?;
            if amount != 0 && amount != done {
                return Err(LedgerError::AlreadyExists("refund_key was used for another amount".into()));
            }
            return Ok((purchase, done));
        }
        if purchase.state != "charged" {
            return Err(LedgerError::Precondition(format!(
                "only a charged purchase can be refunded; it is {}",
                purchase.state
            )));
        }
        let remaining = purchase.amount - purchase.refunded_amount;
        let refund = if amount == 0 { remaining } else { amount };
        if refund > remaining {
            return Err(LedgerError::Precondition(format!("at most {remaining} remains to refund")));
        }
        let msisdn = purchase.charged_msisdn.clone().unwrap_or_default();
        let movement = format!("refund-{id}-{refund_key}");
        let movement = Movement { id: &movement, at_us: now, kind: "refund", currency: &purchase.currency };
        self.movement(&mut tx, &movement, Some(id), &msisdn, refund, ("sp", &sp.to_string())).await?;
        sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE msisdn = $1")
            .bind(&msisdn)
            .bind(refund)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO refunds (purchase_id, refund_key, amount, reason, at_us) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(refund_key)
            .bind(refund)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        purchase.refunded_amount += refund;
        if purchase.refunded_amount == purchase.amount {
            purchase.state = "refunded".into();
        }
        sqlx::query("UPDATE purchases SET refunded_amount = $2, state = $3 WHERE id = $1")
            .bind(id)
            .bind(purchase.refunded_amount)
            .bind(&purchase.state)
            .execute(&mut *tx)
            .await?;
        self.record_change(&mut tx, &purchase, now).await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok((purchase, refund))
    }

    /// Marks pending purchases past their expiry as expired; returns how many.
    ///
    /// The sweep remembers how far it has gone (`expiry_sweep`) and reads only purchases that expire
    /// after that, less [`EXPIRY_LOOK_BACK_US`]: each purchase is read by a bounded number of sweeps, however
    /// many purchases the ledger holds, without an index on `state` (which would keep every charge's
    /// update of its purchase from being heap-only on PostgreSQL). The look-back covers a purchase whose
    /// creating transaction committed after a sweep had passed its expiry, and clocks of several servers
    /// that differ by less than it. Sweepers on several servers take turns on the mark's row lock.
    pub async fn expire_due(&self) -> Result<u64> {
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let lock = self.db.for_update();
        let swept_until: i64 =
            sqlx::query_scalar(&format!("SELECT swept_until_us FROM expiry_sweep WHERE id = 1{lock}"))
                .fetch_one(&mut *tx)
                .await?;
        // Rows are locked in id order, as every transaction that locks several purchases does.
        let rows = sqlx::query(&format!(
            "UPDATE purchases SET state = 'expired' WHERE id IN (SELECT id FROM purchases \
             WHERE state = 'pending' AND expires_at_us > $1 AND expires_at_us <= $2 ORDER BY id{lock}) \
             RETURNING {PURCHASE_COLUMNS}"
        ))
        .bind(swept_until.saturating_sub(EXPIRY_LOOK_BACK_US))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        if now > swept_until {
            sqlx::query("UPDATE expiry_sweep SET swept_until_us = $1 WHERE id = 1").bind(now).execute(&mut *tx).await?;
        }
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let changes = rows
            .iter()
            .map(|row| Ok(ChangeWrite::of(&PurchaseRow::from_row(row)?, now)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        self.insert_changes(&mut tx, &changes).await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(rows.len() as u64)
    }

    /// The caller's purchase changes after `cursor`, oldest first: (cursor, purchase as it was then).
    pub async fn changes_after(&self, sp: i64, cursor: i64, limit: i64) -> Result<Vec<(i64, PurchaseRow)>> {
        let columns: String = PURCHASE_COLUMNS
            .split(", ")
            .map(|c| match c {
                "state" | "refunded_amount" | "decline_reason" => format!("c.{c} AS {c}"),
                other => format!("p.{other} AS {other}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
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

    // ------------------------------------------------------------------ sightings

    /// Reports one sighting: charges the purchase at most once. Validate with [`validate_msisdn`] first.
    pub async fn report(&self, probe_key_id: &str, sighting: &SightingReport) -> Result<SightingResult> {
        let mut results = self.report_batch(&[(probe_key_id, sighting)]).await?;
        results.pop().ok_or(LedgerError::Precondition("a batch of one gave no result".into()))
    }

    /// Reports sightings (each with the key id of the probe that sent it) in one transaction; each
    /// purchase is charged at most once. The results are what reporting them one by one, in this order,
    /// would give. Validate every MSISDN with [`validate_msisdn`] first.
    ///
    /// Purchases are locked in id order, then the paying accounts in MSISDN order; every transaction
    /// that locks more than one row of a table does so in that order, so concurrent batches wait for
    /// each other but cannot deadlock. The decisions are made in memory ([`settle`]) and written with
    /// one statement per table, whatever the batch size.
    pub async fn report_batch(&self, items: &[(&str, &SightingReport)]) -> Result<Vec<SightingResult>> {
        let now = now_us();
        // A token that fails its own check part cannot belong to a purchase: no database work for it.
        let tokens: Vec<Option<String>> = items
            .iter()
            .map(|(_, sighting)| Token::parse(sighting.token.as_bytes()).ok().map(|t| t.to_string()))
            .collect();
        let mut wanted: Vec<&str> = tokens.iter().flatten().map(String::as_str).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(items.iter().map(|_| SightingResult::unknown()).collect());
        }
        let (results, writes) = if self.db.backend == Backend::Postgres {
            self.charge_postgres(items, &tokens, now).await?
        } else {
            let mut tx = self.db.pool.begin().await?;
            let (mut purchases, mut accounts) = self.lock_for_charging(&mut tx, items, &tokens, &wanted, now).await?;
            let (results, writes) = settle(items, &tokens, &mut purchases, &mut accounts, now);
            self.write(&mut tx, &writes).await?;
            tx.commit().await?;
            (results, writes)
        };
        if !writes.changes.is_empty() {
            self.changed.notify_waiters();
        }
        Ok(results)
    }

    /// SQLite's charging reads: the purchases of the `wanted` tokens, then the accounts of the MSISDNs
    /// that saw a pending, unexpired one, with what capped accounts spent so far. SQLite runs one
    /// transaction at a time, so nothing else can change them before this transaction commits.
    async fn lock_for_charging(
        &self,
        tx: &mut Tx<'_>,
        items: &[(&str, &SightingReport)],
        tokens: &[Option<String>],
        wanted: &[&str],
        now: i64,
    ) -> Result<(HashMap<String, PurchaseRow>, HashMap<String, AccountRow>)> {
        let rows = sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE {} ORDER BY id",
            self.db.backend.json_in("token", 1, None)
        ))
        .bind(json(wanted)?)
        .fetch_all(&mut **tx)
        .await?;
        let purchases = rows.iter().map(PurchaseRow::from_row).collect::<std::result::Result<Vec<_>, sqlx::Error>>()?;
        // Only a sighting of a pending, unexpired purchase can charge: just those payers.
        let mut payers: Vec<&str> = items
            .iter()
            .zip(tokens)
            .filter(|(_, token)| {
                token
                    .as_ref()
                    .and_then(|t| purchases.iter().find(|p| p.token == *t))
                    .is_some_and(|p| p.state == "pending" && p.expires_at_us > now)
            })
            .map(|((_, sighting), _)| sighting.msisdn.as_str())
            .collect();
        payers.sort_unstable();
        payers.dedup();
        let accounts = if payers.is_empty() {
            Vec::new()
        } else {
            self.read_accounts(tx, &payers, now, Spending::WhenCapped).await?
        };
        Ok(keyed(purchases, accounts))
    }

    /// A batch of sightings on PostgreSQL: lock, decide ([`settle`]), write and commit in two round trips
    /// where the same work through separate statements takes four or five (BEGIN, the locking read, the
    /// writes, COMMIT). Each round trip is one simple query of several statements: `BEGIN` with the
    /// locking read, then the writes with `COMMIT`. The locking read and the writes are statements every
    /// connection prepared when it opened ([`postgres_prepared`]), run by `EXECUTE` with their values
    /// written into the text as constants ([`pg_literal`]), because a simple query takes no parameters:
    /// PostgreSQL parses and plans them once per connection, not once per batch (which was a third of its
    /// CPU under load), and the batch still costs two round trips (benches/RESULTS.md).
    ///
    /// The locking read locks the purchases of the sighted tokens (in id order), then the accounts of
    /// the MSISDNs that saw a pending, unexpired one (in MSISDN order), in one statement: the accounts'
    /// clause takes its MSISDNs from an aggregate over the materialized purchases, so it cannot start
    /// before every purchase row is locked; each row comes back as it is after any transaction it waited
    /// for (READ COMMITTED re-reads a row it had to wait for). What capped accounts spent so far is a
    /// statement of its own ([`Ledger::add_spending`]), run only when a payer has a cap.
    ///
    /// The writes check in the same statement that every purchase to update was there, and fail
    /// otherwise, so COMMIT never runs on a batch that went wrong. Until COMMIT has answered, the
    /// connection is held by a guard that closes it if the batch fails or is abandoned: PostgreSQL then
    /// rolls the transaction back, and no pooled connection is ever left inside one.
    async fn charge_postgres(
        &self,
        items: &[(&str, &SightingReport)],
        tokens: &[Option<String>],
        now: i64,
    ) -> Result<(Vec<SightingResult>, Writes)> {
        #[derive(Serialize)]
        struct Seen<'a> {
            token: &'a str,
            msisdn: &'a str,
        }
        #[derive(Deserialize)]
        struct Locked {
            purchases: Option<Vec<PurchaseRow>>,
            accounts: Option<Vec<AccountRow>>,
        }
        let seen: Vec<Seen<'_>> = items
            .iter()
            .zip(tokens)
            .filter_map(|((_, sighting), token)| {
                token.as_deref().map(|token| Seen { token, msisdn: sighting.msisdn.as_str() })
            })
            .collect();
        let lock = format!("BEGIN; EXECUTE {CHARGE_LOCK}({}, {now})", pg_literal(&json(&seen)?));
        let mut guard = InTransaction(Some(self.db.pool.acquire().await?));
        let conn = guard.connection()?;
        let rows = sqlx::Executor::fetch_all(&mut **conn, sqlx::raw_sql(&lock)).await?;
        let row = rows.first().ok_or(LedgerError::Precondition("the locking read gave no row".into()))?;
        let locked: Locked = serde_json::from_str(&row.try_get::<String, _>("locked")?)
            .map_err(|e| LedgerError::Precondition(format!("the locking read gave unreadable rows: {e}")))?;
        let mut accounts = locked.accounts.unwrap_or_default();
        self.add_spending(conn, &mut accounts, now, Spending::WhenCapped).await?;
        let (mut purchases, mut accounts) = keyed(locked.purchases.unwrap_or_default(), accounts);
        let (results, writes) = settle(items, tokens, &mut purchases, &mut accounts, now);
        let mut sql = String::new();
        if !writes.is_empty() {
            let rows: Vec<String> = writes.rows()?.iter().map(|rows| pg_literal(rows)).collect();
            sql.push_str(&format!("EXECUTE {CHARGE_WRITE}({}, {}); ", rows.join(", "), writes.purchases.len()));
        }
        sql.push_str("COMMIT");
        sqlx::Executor::execute(&mut **conn, sqlx::raw_sql(&sql)).await?;
        guard.finish();
        Ok((results, writes))
    }

    /// Writes what [`settle`] decided on SQLite, a statement per table that changes.
    async fn write(&self, tx: &mut Tx<'_>, writes: &Writes) -> Result<()> {
        let statements = write_statements(Backend::Sqlite);
        for (i, (sql, rows)) in statements.iter().zip(writes.rows()?).enumerate() {
            if writes.has_rows(i) {
                let done = sqlx::query(sql).bind(rows).execute(&mut **tx).await?;
                if i == 0 && done.rows_affected() != writes.purchases.len() as u64 {
                    return Err(LedgerError::Precondition("a purchase to update was not found".into()));
                }
            }
        }
        Ok(())
    }

    /// Sum of all ledger entries per currency (zero for every currency in a balanced ledger).
    pub async fn sums_by_currency(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT currency, CAST(SUM(amount) AS BIGINT) AS total FROM ledger_entries GROUP BY currency ORDER BY currency",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("currency")?, r.try_get("total")?)))
            .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// A pooled PostgreSQL connection inside a transaction begun by a simple query (which sqlx does not
/// track). Dropped before [`InTransaction::finish`], on an error or when the future holding it is
/// abandoned, it closes the connection instead of returning it to the pool: PostgreSQL rolls back the
/// transaction of a connection that went away, and the pool never hands out one still inside it.
struct InTransaction(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

impl InTransaction {
    fn connection(&mut self) -> Result<&mut sqlx::pool::PoolConnection<sqlx::Any>> {
        self.0.as_mut().ok_or(LedgerError::Unavailable("the transaction's connection is gone"))
    }

    /// The transaction has ended (committed): the connection may go back to the pool.
    fn finish(mut self) {
        drop(self.0.take());
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            // Closed without ceremony: the server sees the socket close and rolls back.
            drop(connection.detach());
        }
    }
}

/// The prepared statements of PostgreSQL's charging path ([`Ledger::charge_postgres`]).
const CHARGE_LOCK: &str = "gtpcharge_charge_lock";
const CHARGE_WRITE: &str = "gtpcharge_charge_write";

/// What every PostgreSQL connection of the pool runs once when it opens (after the migrations, so the
/// tables exist): `PREPARE` of the charging path's two statements.
///
/// - `gtpcharge_charge_lock(seen json, now bigint)`: the locking read, one JSON text of the locked rows.
/// - `gtpcharge_charge_write(purchases, debits, entries, changes, sightings json, updates bigint)`: every
///   write of a batch as data-modifying WITH clauses of one statement (an empty array where a table does
///   not change). Its one row is a check that fails the statement, a cast of a text naming the problem,
///   unless the purchase update changed `updates` rows.
pub(crate) fn postgres_prepared() -> String {
    let lock = format!(
        "PREPARE {CHARGE_LOCK}(json, bigint) AS \
         WITH seen AS MATERIALIZED (SELECT s ->> 'token' AS token, s ->> 'msisdn' AS msisdn \
         FROM json_array_elements($1) AS s), \
         p AS MATERIALIZED (SELECT {PURCHASE_COLUMNS} FROM purchases \
         WHERE token = ANY(ARRAY(SELECT token FROM seen)) ORDER BY id FOR UPDATE), \
         a AS MATERIALIZED (SELECT {ACCOUNT_COLUMNS} FROM accounts \
         WHERE msisdn = ANY(ARRAY(SELECT DISTINCT seen.msisdn FROM seen JOIN p ON p.token = seen.token \
         WHERE p.state = 'pending' AND p.expires_at_us > $2)) ORDER BY msisdn FOR UPDATE) \
         SELECT json_build_object('purchases', (SELECT json_agg(p) FROM p), \
         'accounts', (SELECT json_agg(a) FROM a))::text AS locked"
    );
    let clauses: Vec<String> = write_statements(Backend::Postgres)
        .iter()
        .enumerate()
        .map(|(i, sql)| format!("w{i} AS ({sql} RETURNING 1)"))
        .collect();
    let write = format!(
        "PREPARE {CHARGE_WRITE}(json, json, json, json, json, bigint) AS WITH {} \
         SELECT CASE WHEN (SELECT COUNT(*) FROM w0) = $6 THEN 0 \
         ELSE CAST('a purchase to update was not found: updated ' || (SELECT COUNT(*) FROM w0) \
         || ' of ' || $6 AS INT) END AS checked",
        clauses.join(", ")
    );
    format!("{lock}; {write}")
}

/// The statement appending the ledger entries bound as `$n` ([`EntryWrite`] rows).
fn entries_sql(backend: Backend, n: usize) -> String {
    backend.json_insert("ledger_entries", n, ENTRY_COLUMNS)
}

/// The statement appending the change rows bound as `$n` ([`ChangeWrite`] rows).
fn changes_sql(backend: Backend, n: usize) -> String {
    backend.json_insert("purchase_changes", n, CHANGE_COLUMNS)
}

/// The statements that write what [`settle`] decided, one per table a batch can change, in the order
/// of [`Writes::rows`]: purchases, accounts, ledger entries, changes, sightings. Each takes its rows as
/// one JSON parameter: `$1` on SQLite, which runs them in turn; `$1` to `$5` on PostgreSQL, which runs
/// them as one ([`postgres_prepared`]).
fn write_statements(backend: Backend) -> [String; 5] {
    use JsonColumn::{BigInt, Text};
    let n = |i: usize| if backend == Backend::Postgres { i } else { 1 };
    let purchases = backend.json_rows(
        n(1),
        &[
            ("id", BigInt),
            ("state", Text),
            ("charged_msisdn", Text),
            ("charged_at_us", BigInt),
            ("decline_reason", Text),
        ],
    );
    let debits = backend.json_rows(n(2), &[("msisdn", Text), ("amount", BigInt), ("at_us", BigInt)]);
    let mut changes = changes_sql(backend, n(4));
    if backend == Backend::Postgres {
        // The change-stream lock (`lock_change_stream`) inside the one statement, saving a round trip:
        // each row to insert is a join with the lock's one row, so no row (and no cursor, drawn as a row
        // is inserted) exists before the lock is held. A batch with no change rows does not take it (the
        // condition on the parameter alone is checked before the lock's row is made).
        changes.push_str(&format!(
            " CROSS JOIN (SELECT pg_advisory_xact_lock({CHANGE_STREAM_LOCK}) WHERE json_array_length(${}) > 0) \
             AS stream_lock",
            n(4)
        ));
    }
    [
        // No `state = 'pending'` guard here: the rows are locked since they were read pending (or
        // SQLite's only writer holds the database), and the guard makes the planner scan the index of
        // pending purchases. The row count still catches a purchase that is not there.
        format!(
            "UPDATE purchases SET state = v.state, charged_msisdn = v.charged_msisdn, \
             charged_at_us = v.charged_at_us, decline_reason = v.decline_reason FROM {purchases} \
             WHERE purchases.id = v.id AND {}",
            backend.json_in("purchases.id", n(1), Some(("id", BigInt)))
        ),
        format!(
            "UPDATE accounts SET balance = accounts.balance - v.amount, updated_at_us = v.at_us FROM {debits} \
             WHERE accounts.msisdn = v.msisdn AND {}",
            backend.json_in("accounts.msisdn", n(2), Some(("msisdn", Text)))
        ),
        entries_sql(backend, n(3)),
        changes,
        backend.json_insert("sightings", n(5), SIGHTING_COLUMNS),
    ]
}

/// What the charging reads locked, as [`settle`] takes it: purchases by token, accounts by MSISDN.
fn keyed(
    purchases: Vec<PurchaseRow>,
    accounts: Vec<AccountRow>,
) -> (HashMap<String, PurchaseRow>, HashMap<String, AccountRow>) {
    (
        purchases.into_iter().map(|p| (p.token.clone(), p)).collect(),
        accounts.into_iter().map(|a| (a.msisdn.clone(), a)).collect(),
    )
}

fn json<T: Serialize + ?Sized>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| LedgerError::Precondition(format!("encoding a batch: {e}")))
}

/// The columns of each batch-inserted table, as its write struct below serialises them.
const ENTRY_COLUMNS: &[(&str, JsonColumn)] = &[
    ("movement_id", JsonColumn::Text),
    ("at_us", JsonColumn::BigInt),
    ("kind", JsonColumn::Text),
    ("account_type", JsonColumn::Text),
    ("account_ref", JsonColumn::Text),
    ("currency", JsonColumn::Text),
    ("amount", JsonColumn::BigInt),
    ("purchase_id", JsonColumn::BigInt),
];
const CHANGE_COLUMNS: &[(&str, JsonColumn)] = &[
    ("service_provider_id", JsonColumn::BigInt),
    ("purchase_id", JsonColumn::BigInt),
    ("state", JsonColumn::Text),
    ("refunded_amount", JsonColumn::BigInt),
    ("decline_reason", JsonColumn::Text),
    ("at_us", JsonColumn::BigInt),
];
const SIGHTING_COLUMNS: &[(&str, JsonColumn)] = &[
    ("purchase_id", JsonColumn::BigInt),
    ("token", JsonColumn::Text),
    ("msisdn", JsonColumn::Text),
    ("outcome", JsonColumn::Text),
    ("other_msisdn", JsonColumn::BigInt),
    ("probe_key_id", JsonColumn::Text),
    ("seen_at_us", JsonColumn::BigInt),
    ("reported_at_us", JsonColumn::BigInt),
];

/// A purchase leaving `pending`, as written back.
#[derive(Debug, Serialize)]
struct PurchaseWrite {
    id: i64,
    state: String,
    charged_msisdn: Option<String>,
    charged_at_us: Option<i64>,
    decline_reason: Option<String>,
}

/// One ledger entry.
#[derive(Debug, Serialize)]
struct EntryWrite {
    movement_id: String,
    at_us: i64,
    kind: String,
    account_type: String,
    account_ref: String,
    currency: String,
    amount: i64,
    purchase_id: Option<i64>,
}

impl EntryWrite {
    /// The two entries of a movement between a subscriber and another account; they sum to zero.
    fn pair(
        movement: &Movement<'_>,
        purchase_id: Option<i64>,
        subscriber: &str,
        subscriber_amount: i64,
        (other_type, other_ref): (&str, &str),
    ) -> [EntryWrite; 2] {
        let entry = |account_type: &str, account_ref: &str, amount: i64| EntryWrite {
            movement_id: movement.id.to_owned(),
            at_us: movement.at_us,
            kind: movement.kind.to_owned(),
            account_type: account_type.to_owned(),
            account_ref: account_ref.to_owned(),
            currency: movement.currency.to_owned(),
            amount,
            purchase_id,
        };
        [entry("subscriber", subscriber, subscriber_amount), entry(other_type, other_ref, -subscriber_amount)]
    }
}

/// One row of an SP's change stream.
#[derive(Debug, Serialize)]
struct ChangeWrite {
    service_provider_id: i64,
    purchase_id: i64,
    state: String,
    refunded_amount: i64,
    decline_reason: Option<String>,
    at_us: i64,
}

impl ChangeWrite {
    fn of(purchase: &PurchaseRow, now: i64) -> ChangeWrite {
        ChangeWrite {
            service_provider_id: purchase.service_provider_id,
            purchase_id: purchase.id,
            state: purchase.state.clone(),
            refunded_amount: purchase.refunded_amount,
            decline_reason: purchase.decline_reason.clone(),
            at_us: now,
        }
    }
}

/// One audited sighting.
#[derive(Debug, Serialize)]
struct SightingWrite {
    purchase_id: Option<i64>,
    token: String,
    msisdn: String,
    outcome: &'static str,
    other_msisdn: i64,
    probe_key_id: String,
    seen_at_us: i64,
    reported_at_us: i64,
}

/// What a batch of sightings changes, decided in memory by [`settle`].
#[derive(Debug, Default)]
struct Writes {
    purchases: Vec<PurchaseWrite>,
    /// Total debited per paying account.
    debits: Vec<Debit>,
    entries: Vec<EntryWrite>,
    changes: Vec<ChangeWrite>,
    sightings: Vec<SightingWrite>,
}

impl Writes {
    /// Each table's rows as JSON, in the order of [`write_statements`] (an empty array where the table
    /// does not change).
    fn rows(&self) -> Result<[String; 5]> {
        Ok([
            json(&self.purchases)?,
            json(&self.debits)?,
            json(&self.entries)?,
            json(&self.changes)?,
            json(&self.sightings)?,
        ])
    }

    /// Whether the `i`-th statement of [`write_statements`] has rows to write.
    fn has_rows(&self, i: usize) -> bool {
        [
            self.purchases.is_empty(),
            self.debits.is_empty(),
            self.entries.is_empty(),
            self.changes.is_empty(),
            self.sightings.is_empty(),
        ]
        .get(i)
        .is_some_and(|empty| !empty)
    }

    fn is_empty(&self) -> bool {
        (0..5).all(|i| !self.has_rows(i))
    }
}

#[derive(Debug, Serialize)]
struct Debit {
    msisdn: String,
    amount: i64,
    at_us: i64,
}

/// Why this account cannot pay for this purchase now, or `None` if it can.
fn decline_reason(account: Option<&AccountRow>, purchase: &PurchaseRow) -> Option<&'static str> {
    let Some(account) = account else { return Some("unknown-subscriber") };
    let amount = purchase.amount;
    let floor = if account.kind == "postpaid" { -account.credit_limit } else { 0 };
    if account.barred {
        Some("barred")
    } else if account.currency != purchase.currency {
        Some("currency-mismatch")
    } else if account.daily_cap > 0 && account.spent_today + amount > account.daily_cap {
        Some("daily-cap")
    } else if account.monthly_cap > 0 && account.spent_this_month + amount > account.monthly_cap {
        Some("monthly-cap")
    } else if account.balance - amount < floor {
        Some("insufficient-balance")
    } else {
        None
    }
}

/// Decides a batch of sightings in order against the locked purchases (by token) and paying accounts
/// (by MSISDN), updating both as each charge would, so a later sighting in the batch sees what an
/// earlier one did (a token reported twice charges once; two charges to one account both count against
/// its balance and caps). `tokens` holds each sighting's canonical token, `None` where it failed its check.
fn settle(
    items: &[(&str, &SightingReport)],
    tokens: &[Option<String>],
    purchases: &mut HashMap<String, PurchaseRow>,
    accounts: &mut HashMap<String, AccountRow>,
    now: i64,
) -> (Vec<SightingResult>, Writes) {
    let mut writes = Writes::default();
    let mut debits: HashMap<String, i64> = HashMap::new();
    let mut results = Vec::with_capacity(items.len());
    for ((probe_key_id, sighting), token) in items.iter().zip(tokens) {
        let Some(token) = token else {
            results.push(SightingResult::unknown());
            continue;
        };
        let audit = |purchase_id: Option<i64>, outcome: Outcome, other: bool| SightingWrite {
            purchase_id,
            token: token.clone(),
            msisdn: sighting.msisdn.clone(),
            outcome: outcome.as_str(),
            other_msisdn: i64::from(other),
            probe_key_id: (*probe_key_id).to_owned(),
            seen_at_us: sighting.seen_at_us,
            reported_at_us: now,
        };
        let Some(purchase) = purchases.get_mut(token) else {
            writes.sightings.push(audit(None, Outcome::UnknownToken, false));
            results.push(SightingResult::unknown());
            continue;
        };
        let mut changed = true;
        let outcome = match purchase.state.as_str() {
            "pending" if purchase.expires_at_us <= now => {
                purchase.state = "expired".into();
                Outcome::Expired
            }
            "pending" => {
                let account = accounts.get_mut(&sighting.msisdn);
                match decline_reason(account.as_deref(), purchase) {
                    Some(reason) => {
                        purchase.state = "declined".into();
                        purchase.decline_reason = Some(reason.into());
                        Outcome::Declined
                    }
                    None => {
                        let amount = purchase.amount;
                        if let Some(account) = account {
                            account.balance -= amount;
                            account.spent_today += amount;
                            account.spent_this_month += amount;
                        }
                        *debits.entry(sighting.msisdn.clone()).or_default() += amount;
                        let movement = format!("charge-{}", purchase.id);
                        let movement =
                            Movement { id: &movement, at_us: now, kind: "charge", currency: &purchase.currency };
                        let sp = purchase.service_provider_id.to_string();
                        writes.entries.extend(EntryWrite::pair(
                            &movement,
                            Some(purchase.id),
                            &sighting.msisdn,
                            -amount,
                            ("sp", &sp),
                        ));
                        purchase.state = "charged".into();
                        purchase.charged_msisdn = Some(sighting.msisdn.clone());
                        purchase.charged_at_us = Some(now);
                        Outcome::Charged
                    }
                }
            }
            state => {
                changed = false;
                match state {
                    "charged" => Outcome::AlreadyCharged,
                    "declined" => Outcome::Declined,
                    "expired" => Outcome::Expired,
                    "cancelled" => Outcome::Cancelled,
                    _ => Outcome::Refunded,
                }
            }
        };
        let other_subscriber = purchase.charged_msisdn.as_deref().is_some_and(|m| m != sighting.msisdn);
        if changed {
            writes.purchases.push(PurchaseWrite {
                id: purchase.id,
                state: purchase.state.clone(),
                charged_msisdn: purchase.charged_msisdn.clone(),
                charged_at_us: purchase.charged_at_us,
                decline_reason: purchase.decline_reason.clone(),
            });
            writes.changes.push(ChangeWrite::of(purchase, now));
        }
        writes.sightings.push(audit(Some(purchase.id), outcome, other_subscriber));
        results.push(SightingResult {
            outcome,
            decline_reason: purchase.decline_reason.clone(),
            purchase_id: Some(purchase.id),
            charged_msisdn: purchase.charged_msisdn.clone(),
            other_subscriber,
        });
    }
    let mut debits: Vec<Debit> =
        debits.into_iter().map(|(msisdn, amount)| Debit { msisdn, amount, at_us: now }).collect();
    debits.sort_unstable_by(|a, b| a.msisdn.cmp(&b.msisdn));
    writes.debits = debits;
    (results, writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_and_month_boundaries() {
        // 2026-11-22T19:00:00Z
        let now = 1_795_374_000_000_000;
        let (day, month) = day_and_month_start(now);
        assert_eq!(day, 1_795_305_600_000_000); // 2026-11-22T00:00:00Z
        assert_eq!(month, 1_793_491_200_000_000); // 2026-11-01T00:00:00Z
    }

    #[test]
    fn validation() {
        assert!(validate_currency("EUR").is_ok());
        assert!(validate_currency("XYZ").is_err());
        assert!(validate_currency("eur").is_err());
        assert!(validate_msisdn("46701234567").is_ok());
        assert!(validate_msisdn("+4670").is_err());
        assert!(validate_amount("amount", 0).is_err());
        assert!(validate_amount("amount", -5).is_err());
        assert!(validate_text("x", "a\u{0}b", 0, 10).is_err());
        assert!(validate_text("x", "'; DROP TABLE purchases; --", 0, 64).is_ok(), "SQL-shaped text is just text");
    }
}
