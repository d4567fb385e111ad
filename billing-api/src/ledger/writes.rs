//! The rows the ledger writes, and the statements that write them: each table's new rows go as one JSON
//! parameter into one statement ([`write_statements`], [`entries_sql`], [`changes_sql`]), so a batch of
//! charges costs a statement per table, not per row. The charge (`charging.rs`) decides them; accounts,
//! purchases and the change stream append entries and changes through the same writers.
use super::*;

/// The statement appending the ledger entries bound as `$n` ([`EntryWrite`] rows).
pub(super) fn entries_sql(backend: Backend, n: usize) -> String {
    backend.json_insert("ledger_entries", n, ENTRY_COLUMNS)
}

/// The statement appending the change rows bound as `$n` ([`ChangeWrite`] rows).
pub(super) fn changes_sql(backend: Backend, n: usize) -> String {
    backend.json_insert("purchase_changes", n, CHANGE_COLUMNS)
}

/// The statements that write what [`settle`] decided, one per table a batch can change, in the order
/// of [`Writes::rows`]: purchases, accounts, ledger entries, changes, sightings. Each takes its rows as
/// one JSON parameter: `$1` on SQLite, which runs them in turn; `$1` to `$5` on PostgreSQL, which runs
/// them as one ([`postgres_prepared`]).
pub(super) fn write_statements(backend: Backend) -> [String; 5] {
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
            ("authorized_amount", BigInt),
            ("authorized_at_us", BigInt),
            ("hold_expires_at_us", BigInt),
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
             charged_at_us = v.charged_at_us, decline_reason = v.decline_reason, \
             authorized_amount = v.authorized_amount, authorized_at_us = v.authorized_at_us, \
             hold_expires_at_us = v.hold_expires_at_us FROM {purchases} \
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

pub(super) fn json<T: Serialize + ?Sized>(rows: &T) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| LedgerError::Precondition(format!("encoding a batch: {e}")))
}

/// The columns of each batch-inserted table, as its write struct below serialises them.
pub(super) const ENTRY_COLUMNS: &[(&str, JsonColumn)] = &[
    ("movement_id", JsonColumn::Text),
    ("at_us", JsonColumn::BigInt),
    ("kind", JsonColumn::Text),
    ("account_type", JsonColumn::Text),
    ("account_ref", JsonColumn::Text),
    ("currency", JsonColumn::Text),
    ("amount", JsonColumn::BigInt),
    ("purchase_id", JsonColumn::BigInt),
];
pub(super) const CHANGE_COLUMNS: &[(&str, JsonColumn)] = &[
    ("service_provider_id", JsonColumn::BigInt),
    ("purchase_id", JsonColumn::BigInt),
    ("state", JsonColumn::Text),
    ("refunded_amount", JsonColumn::BigInt),
    ("decline_reason", JsonColumn::Text),
    ("at_us", JsonColumn::BigInt),
];
pub(super) const SIGHTING_COLUMNS: &[(&str, JsonColumn)] = &[
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
pub(super) struct PurchaseWrite {
    pub(super) id: i64,
    pub(super) state: PurchaseState,
    pub(super) charged_msisdn: Option<String>,
    pub(super) charged_at_us: Option<i64>,
    pub(super) decline_reason: Option<DeclineReason>,
    pub(super) authorized_amount: Option<i64>,
    pub(super) authorized_at_us: Option<i64>,
    pub(super) hold_expires_at_us: Option<i64>,
}

impl PurchaseWrite {
    pub(super) fn of(purchase: &PurchaseRow) -> PurchaseWrite {
        PurchaseWrite {
            id: purchase.id,
            state: purchase.state,
            charged_msisdn: purchase.charged_msisdn.clone(),
            charged_at_us: purchase.charged_at_us,
            decline_reason: purchase.decline_reason,
            authorized_amount: purchase.authorized_amount,
            authorized_at_us: purchase.authorized_at_us,
            hold_expires_at_us: purchase.hold_expires_at_us,
        }
    }
}

/// One ledger entry.
#[derive(Debug, Serialize)]
pub(super) struct EntryWrite {
    pub(super) movement_id: String,
    pub(super) at_us: i64,
    pub(super) kind: String,
    pub(super) account_type: String,
    pub(super) account_ref: String,
    pub(super) currency: String,
    pub(super) amount: i64,
    pub(super) purchase_id: Option<i64>,
}

impl EntryWrite {
    /// The two entries of a movement between a subscriber and another account; they sum to zero.
    pub(super) fn pair(
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

    /// The two entries of a movement of a purchase between two accounts of any type; they sum to zero.
    pub(super) fn between(
        movement: &Movement<'_>,
        purchase_id: i64,
        (first_type, first_ref): (&str, &str),
        first_amount: i64,
        (other_type, other_ref): (&str, &str),
    ) -> [EntryWrite; 2] {
        let [mut first, mut other] =
            EntryWrite::pair(movement, Some(purchase_id), first_ref, first_amount, (other_type, other_ref));
        first.account_type = first_type.to_owned();
        first.account_ref = first_ref.to_owned();
        other.account_ref = other_ref.to_owned();
        [first, other]
    }
}

/// One row of an SP's change stream.
#[derive(Debug, Serialize)]
pub(super) struct ChangeWrite {
    pub(super) service_provider_id: i64,
    pub(super) purchase_id: i64,
    pub(super) state: PurchaseState,
    pub(super) refunded_amount: i64,
    pub(super) decline_reason: Option<DeclineReason>,
    pub(super) at_us: i64,
}

impl ChangeWrite {
    pub(super) fn of(purchase: &PurchaseRow, now: i64) -> ChangeWrite {
        ChangeWrite {
            service_provider_id: purchase.service_provider_id,
            purchase_id: purchase.id,
            state: purchase.state,
            refunded_amount: purchase.refunded_amount,
            decline_reason: purchase.decline_reason,
            at_us: now,
        }
    }
}

/// One audited sighting.
#[derive(Debug, Serialize)]
pub(super) struct SightingWrite {
    pub(super) purchase_id: Option<i64>,
    pub(super) token: String,
    pub(super) msisdn: String,
    pub(super) outcome: &'static str,
    pub(super) other_msisdn: i64,
    pub(super) probe_key_id: String,
    pub(super) seen_at_us: i64,
    pub(super) reported_at_us: i64,
}

/// What a batch of sightings changes, decided in memory by [`settle`].
#[derive(Debug, Default)]
pub(super) struct Writes {
    pub(super) purchases: Vec<PurchaseWrite>,
    /// Total debited per paying account.
    pub(super) debits: Vec<Debit>,
    pub(super) entries: Vec<EntryWrite>,
    pub(super) changes: Vec<ChangeWrite>,
    pub(super) sightings: Vec<SightingWrite>,
}

impl Writes {
    /// Each table's rows as JSON, in the order of [`write_statements`] (an empty array where the table
    /// does not change).
    /// Every movement's entries sum to zero (double entry): otherwise the batch is refused whole.
    pub(super) fn check_balanced(&self) -> Result<()> {
        let mut sums: HashMap<&str, i64> = HashMap::new();
        for entry in &self.entries {
            let sum = sums.entry(entry.movement_id.as_str()).or_default();
            *sum = sum.checked_add(entry.amount).ok_or_else(|| LedgerError::Invariant("an entry overflows".into()))?;
        }
        match sums.into_iter().find(|(_, sum)| *sum != 0) {
            Some((movement, sum)) => Err(LedgerError::Invariant(format!("movement {movement} sums to {sum}, not 0"))),
            None => Ok(()),
        }
    }

    pub(super) fn rows(&self) -> Result<[String; 5]> {
        Ok([
            json(&self.purchases)?,
            json(&self.debits)?,
            json(&self.entries)?,
            json(&self.changes)?,
            json(&self.sightings)?,
        ])
    }

    /// Whether the `i`-th statement of [`write_statements`] has rows to write.
    pub(super) fn has_rows(&self, i: usize) -> bool {
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

    pub(super) fn is_empty(&self) -> bool {
        (0..5).all(|i| !self.has_rows(i))
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Debit {
    pub(super) msisdn: String,
    pub(super) amount: i64,
    pub(super) at_us: i64,
}
