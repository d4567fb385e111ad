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

mod accounts;
mod changes;
mod charging;
mod consent;
mod credentials;
mod devices;
mod holds;
mod purchases;
mod webhooks;
mod writes;

pub use charging::postgres_prepared;
pub use consent::{ConfirmOutcome, ConsentPromptRow};
pub use devices::{DeviceRow, EnrollmentOutcome, EnrollmentRow, PIN_TRIES};
pub use holds::{CaptureMode, Consent, HOLD_TTL_DEFAULT_S};
pub use webhooks::{
    next_attempt, validate_webhook_url, AttemptResult, DueDelivery, WebhookAttemptRow, WebhookEndpoint,
    WEBHOOK_RETRY_FOR_US,
};

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
    /// A rule of the money model was about to be broken (a movement whose entries do not sum to zero):
    /// nothing was written. (An unknown purchase state cannot get this far: a row holding one fails to
    /// decode, and the schema refuses to store one.)
    #[error("ledger invariant: {0}")]
    Invariant(String),
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
    pub state: PurchaseState,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    pub charged_msisdn: Option<String>,
    pub charged_at_us: Option<i64>,
    pub refunded_amount: i64,
    pub decline_reason: Option<DeclineReason>,
    pub consent: Consent,
    pub capture_mode: CaptureMode,
    pub consent_nonce: Option<String>,
    pub authorization_ttl_s: i64,
    pub authorized_amount: Option<i64>,
    pub authorized_at_us: Option<i64>,
    /// Set while the hold lives (NULL once it has ended).
    pub hold_expires_at_us: Option<i64>,
    pub captured_amount: Option<i64>,
}

/// Where a purchase is in its life. Stored as its lowercase name in `purchases.state` and
/// `purchase_changes.state`, which the schema limits to these eight (migrations 0004, 0005).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PurchaseState {
    /// Waiting for its token to be seen; the only state a charge or an authorization starts from.
    Pending,
    /// Seen; its amount is held on the payer's account until captured, voided, refused or expired.
    Authorized,
    Charged,
    Declined,
    Expired,
    Cancelled,
    /// Refunded in full (a partial refund leaves it `Charged`).
    Refunded,
    /// Authorized, then voided by the SP.
    Voided,
}

impl PurchaseState {
    pub const ALL: [PurchaseState; 8] = [
        PurchaseState::Pending,
        PurchaseState::Authorized,
        PurchaseState::Charged,
        PurchaseState::Declined,
        PurchaseState::Expired,
        PurchaseState::Cancelled,
        PurchaseState::Refunded,
        PurchaseState::Voided,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseState::Pending => "pending",
            PurchaseState::Charged => "charged",
            PurchaseState::Declined => "declined",
            PurchaseState::Expired => "expired",
            PurchaseState::Cancelled => "cancelled",
            PurchaseState::Refunded => "refunded",
            PurchaseState::Authorized => "authorized",
            PurchaseState::Voided => "voided",
        }
    }

    /// The state a stored name stands for; `None` for a name the money model does not know.
    pub fn parse(name: &str) -> Option<PurchaseState> {
        PurchaseState::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

impl std::fmt::Display for PurchaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a charge was declined. Stored as its kebab-case name in `purchases.decline_reason` (bounded by the
/// schema, migration 0004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeclineReason {
    UnknownSubscriber,
    Barred,
    CurrencyMismatch,
    DailyCap,
    MonthlyCap,
    InsufficientBalance,
    /// A confirmation signed by a device enrolled for another MSISDN than the one the network saw.
    SubscriberMismatch,
    /// The subscriber refused on the handset.
    ConsentRefused,
    /// The payment PIN locked (too many wrong tries).
    PinLocked,
}

impl DeclineReason {
    pub const ALL: [DeclineReason; 9] = [
        DeclineReason::UnknownSubscriber,
        DeclineReason::Barred,
        DeclineReason::CurrencyMismatch,
        DeclineReason::DailyCap,
        DeclineReason::MonthlyCap,
        DeclineReason::InsufficientBalance,
        DeclineReason::SubscriberMismatch,
        DeclineReason::ConsentRefused,
        DeclineReason::PinLocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeclineReason::UnknownSubscriber => "unknown-subscriber",
            DeclineReason::Barred => "barred",
            DeclineReason::CurrencyMismatch => "currency-mismatch",
            DeclineReason::DailyCap => "daily-cap",
            DeclineReason::MonthlyCap => "monthly-cap",
            DeclineReason::InsufficientBalance => "insufficient-balance",
            DeclineReason::SubscriberMismatch => "subscriber-mismatch",
            DeclineReason::ConsentRefused => "consent-refused",
            DeclineReason::PinLocked => "pin-locked",
        }
    }

    pub fn parse(name: &str) -> Option<DeclineReason> {
        DeclineReason::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

/// How an account pays: from its balance (prepaid), or on credit down to minus its credit limit
/// (postpaid). Stored as its lowercase name in `accounts.kind` (bounded by the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    Prepaid,
    Postpaid,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Prepaid => "prepaid",
            AccountKind::Postpaid => "postpaid",
        }
    }

    pub fn parse(name: &str) -> Option<AccountKind> {
        [AccountKind::Prepaid, AccountKind::Postpaid].into_iter().find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for AccountKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored name that no variant of `T` has: the row fails to decode.
fn unknown_name(what: &str, name: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} {name:?}").into())
}

const PURCHASE_COLUMNS: &str = "id, service_provider_id, token, product_id, description, amount, currency, \
idempotency_key, state, created_at_us, expires_at_us, charged_msisdn, charged_at_us, refunded_amount, decline_reason, \
consent, capture_mode, consent_nonce, authorization_ttl_s, authorized_amount, authorized_at_us, hold_expires_at_us, \
captured_amount";

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
            state: {
                let name: String = row.try_get("state")?;
                PurchaseState::parse(&name).ok_or_else(|| unknown_name("purchase state", &name))?
            },
            created_at_us: row.try_get("created_at_us")?,
            expires_at_us: row.try_get("expires_at_us")?,
            charged_msisdn: opt_text(row, "charged_msisdn")?,
            charged_at_us: row.try_get::<Option<i64>, _>("charged_at_us")?,
            refunded_amount: row.try_get("refunded_amount")?,
            decline_reason: match opt_text(row, "decline_reason")? {
                Some(name) => Some(DeclineReason::parse(&name).ok_or_else(|| unknown_name("decline reason", &name))?),
                None => None,
            },
            consent: {
                let name: String = row.try_get("consent")?;
                Consent::parse(&name).ok_or_else(|| unknown_name("consent", &name))?
            },
            capture_mode: {
                let name: String = row.try_get("capture_mode")?;
                CaptureMode::parse(&name).ok_or_else(|| unknown_name("capture mode", &name))?
            },
            consent_nonce: opt_text(row, "consent_nonce")?,
            authorization_ttl_s: row.try_get("authorization_ttl_s")?,
            authorized_amount: row.try_get::<Option<i64>, _>("authorized_amount")?,
            authorized_at_us: row.try_get::<Option<i64>, _>("authorized_at_us")?,
            hold_expires_at_us: row.try_get::<Option<i64>, _>("hold_expires_at_us")?,
            captured_amount: row.try_get::<Option<i64>, _>("captured_amount")?,
        })
    }
}

/// An account as read: its row, and what it spent today and this month (summed from the ledger, or 0
/// where not asked for). Deserialize reads the row as the charging path's locking read returns it
/// (JSON; see `lock_for_charging`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccountRow {
    pub msisdn: String,
    pub kind: AccountKind,
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
    pub kind: Option<AccountKind>,
    pub currency: String,
    pub balance: Option<i64>,
    pub credit_limit: Option<i64>,
    pub daily_cap: Option<i64>,
    pub monthly_cap: Option<i64>,
    pub barred: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct NewPurchase {
    pub product_id: String,
    pub description: String,
    pub amount: i64,
    pub currency: String,
    pub expires_in_s: i64,
    pub idempotency_key: String,
    pub consent: Consent,
    pub capture_mode: CaptureMode,
    /// 0: [`HOLD_TTL_DEFAULT_S`].
    pub authorization_ttl_s: i64,
}

#[derive(Debug, Clone, Default)]
pub struct PurchaseFilter {
    pub state: Option<PurchaseState>,
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
    /// Held (this report or an earlier one), waiting for capture or consent.
    Authorized,
    Voided,
    /// The token is a device enrollment's (see `devices.rs`).
    Enrollment,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Charged => "charged",
            Outcome::AlreadyCharged => "already-charged",
            Outcome::Declined => "declined",
            Outcome::Expired => "expired",
            Outcome::Cancelled => "cancelled",
            Outcome::UnknownToken => "unknown-token",
            Outcome::Refunded => "refunded",
            Outcome::Authorized => "authorized",
            Outcome::Voided => "voided",
            Outcome::Enrollment => "enrollment",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingResult {
    pub outcome: Outcome,
    pub decline_reason: Option<DeclineReason>,
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
    /// Connections the database pool holds, and how many of them are idle.
    pub fn pool_connections(&self) -> (u32, usize) {
        (self.db.pool.size(), self.db.pool.num_idle())
    }

    /// Opens the database at `url` (migrated, pooled, each PostgreSQL connection preparing the charging
    /// statements) and the ledger on it.
    pub async fn open(url: &str) -> std::result::Result<Ledger, sqlx::Error> {
        Ok(Ledger::new(Db::connect(url, postgres_prepared()).await?))
    }

    pub fn new(db: Db) -> Ledger {
        Ledger { db, changed: Arc::new(Notify::new()), credentials: Arc::default() }
    }
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
