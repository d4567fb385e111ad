//! Two-phase purchases: a sighting of a `device` purchase, or of a `network` purchase the SP captures
//! itself (`manual`), authorizes it: the amount moves from the subscriber to a hold (an account of its
//! own in the double entry, `hold`/purchase id), where it counts against the balance and the caps.
//! The hold ends once: captured (hold → SP, the rest back to the subscriber), voided, refused or
//! expired (hold → subscriber). TigerBeetle's pending/post/void transfers and a Ro/Gy reservation
//! have the same shape.
use super::writes::*;
use super::*;

/// How long a hold lives when the SP does not say (seconds).
pub const HOLD_TTL_DEFAULT_S: i64 = 300;

/// Who must agree to a charge. Stored as its lowercase name in `purchases.consent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consent {
    /// The network's proof of the line is enough (the operator allows it per SP).
    #[default]
    Network,
    /// The subscriber confirms on the handset (pay agent, PIN, device key bound to the MSISDN).
    Device,
}

impl Consent {
    pub fn as_str(self) -> &'static str {
        match self {
            Consent::Network => "network",
            Consent::Device => "device",
        }
    }

    pub fn parse(name: &str) -> Option<Consent> {
        [Consent::Network, Consent::Device].into_iter().find(|c| c.as_str() == name)
    }
}

/// Who captures an authorized purchase. Stored as its lowercase name in `purchases.capture_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// The sighting charges (network) or the confirmation captures (device).
    #[default]
    Automatic,
    /// Network only: the sighting authorizes, the SP captures or voids.
    Manual,
}

impl CaptureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Automatic => "automatic",
            CaptureMode::Manual => "manual",
        }
    }

    pub fn parse(name: &str) -> Option<CaptureMode> {
        [CaptureMode::Automatic, CaptureMode::Manual].into_iter().find(|c| c.as_str() == name)
    }
}

impl PurchaseRow {
    /// Whether a sighting authorizes (a hold) rather than charges.
    pub fn two_phase(&self) -> bool {
        self.consent == Consent::Device || self.capture_mode == CaptureMode::Manual
    }

    /// What a refund may give back: what the SP received.
    pub fn refundable(&self) -> i64 {
        self.captured_amount.unwrap_or(self.amount) - self.refunded_amount
    }

    /// Authorizes this pending purchase for `msisdn` at `now` in memory (the caller writes it).
    pub(super) fn authorize(&mut self, msisdn: &str, now: i64) {
        let ttl_us = self.authorization_ttl_s.saturating_mul(1_000_000);
        self.state = PurchaseState::Authorized;
        self.charged_msisdn = Some(msisdn.to_owned());
        self.authorized_amount = Some(self.amount);
        self.authorized_at_us = Some(now);
        self.hold_expires_at_us = Some(now.saturating_add(ttl_us).min(self.expires_at_us));
    }
}

/// How a hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldEnd {
    /// This much goes to the SP (the rest back); the purchase is charged.
    Capture(i64),
    /// Everything goes back; the purchase ends in this state (voided, expired, declined with a reason).
    Release(PurchaseState, Option<DeclineReason>),
}

impl Ledger {
    /// Captures an authorized purchase of this SP (`amount` 0: all of it). A `device` purchase is
    /// captured only by its subscriber's confirmation. Capturing a charged purchase again with the
    /// amount it was captured for (or 0) returns it unchanged.
    pub async fn capture(&self, sp: i64, id: i64, amount: i64) -> Result<PurchaseRow> {
        if amount < 0 {
            return Err(invalid("amount must not be negative (0 captures all of it)"));
        }
        let mut tx = self.db.pool.begin().await?;
        let mut purchase = self.lock_purchase(&mut tx, sp, id).await?;
        let authorized = purchase.authorized_amount.unwrap_or(purchase.amount);
        match purchase.state {
            PurchaseState::Charged | PurchaseState::Refunded
                if purchase.captured_amount.is_some_and(|c| amount == 0 || c == amount) =>
            {
                return Ok(purchase);
            }
            PurchaseState::Authorized if purchase.consent == Consent::Device => {
                return Err(LedgerError::Precondition(
                    "a device purchase is captured by the subscriber's confirmation".into(),
                ))
            }
            PurchaseState::Authorized => {}
            other => {
                return Err(LedgerError::Precondition(format!(
                    "only an authorized purchase can be captured; it is {other}"
                )))
            }
        }
        if amount > authorized {
            return Err(LedgerError::Precondition(format!("at most the authorized {authorized} can be captured")));
        }
        let capture = if amount == 0 { authorized } else { amount };
        self.end_hold(&mut tx, &mut purchase, HoldEnd::Capture(capture), now_us()).await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(purchase)
    }

    /// Voids an authorized purchase of this SP: the hold goes back. Voiding a voided one returns it.
    pub async fn void(&self, sp: i64, id: i64) -> Result<PurchaseRow> {
        let mut tx = self.db.pool.begin().await?;
        let mut purchase = self.lock_purchase(&mut tx, sp, id).await?;
        match purchase.state {
            PurchaseState::Voided => return Ok(purchase),
            PurchaseState::Authorized => {}
            other => {
                return Err(LedgerError::Precondition(format!(
                    "only an authorized purchase can be voided; it is {other}"
                )))
            }
        }
        self.end_hold(&mut tx, &mut purchase, HoldEnd::Release(PurchaseState::Voided, None), now_us()).await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(purchase)
    }

    /// Ends the hold of an authorized purchase locked by this transaction: the entries (a capture
    /// and/or a release, each summing to zero), the subscriber's balance, the purchase row and its change.
    pub(super) async fn end_hold(
        &self,
        tx: &mut Tx<'_>,
        purchase: &mut PurchaseRow,
        end: HoldEnd,
        now: i64,
    ) -> Result<()> {
        if purchase.state != PurchaseState::Authorized {
            return Err(LedgerError::Precondition(format!("the purchase is {}, not authorized", purchase.state)));
        }
        let held = purchase.authorized_amount.unwrap_or(purchase.amount);
        let msisdn = purchase.charged_msisdn.clone().unwrap_or_default();
        let hold = purchase.id.to_string();
        let captured = match end {
            HoldEnd::Capture(amount) => amount.clamp(0, held),
            HoldEnd::Release(..) => 0,
        };
        let mut writes = Writes::default();
        if captured > 0 {
            let id = format!("capture-{}", purchase.id);
            let movement = Movement { id: &id, at_us: now, kind: "capture", currency: &purchase.currency };
            let sp = purchase.service_provider_id.to_string();
            writes.entries.extend(EntryWrite::between(&movement, purchase.id, ("hold", &hold), -captured, ("sp", &sp)));
        }
        let released = held - captured;
        if released > 0 {
            let id = format!("release-{}", purchase.id);
            let movement = Movement { id: &id, at_us: now, kind: "release", currency: &purchase.currency };
            writes.entries.extend(EntryWrite::pair(&movement, Some(purchase.id), &msisdn, released, ("hold", &hold)));
            sqlx::query("UPDATE accounts SET balance = balance + $2, updated_at_us = $3 WHERE msisdn = $1")
                .bind(&msisdn)
                .bind(released)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        writes.check_balanced()?;
        self.insert_entries(tx, &writes.entries).await?;
        match end {
            HoldEnd::Capture(_) => {
                purchase.state = PurchaseState::Charged;
                purchase.captured_amount = Some(captured);
                purchase.charged_at_us = Some(now);
            }
            HoldEnd::Release(state, reason) => {
                purchase.state = state;
                purchase.decline_reason = reason;
            }
        }
        purchase.hold_expires_at_us = None;
        sqlx::query(
            "UPDATE purchases SET state = $2, captured_amount = $3, charged_at_us = $4, decline_reason = $5, \
             hold_expires_at_us = NULL WHERE id = $1",
        )
        .bind(purchase.id)
        .bind(purchase.state.as_str())
        .bind(purchase.captured_amount)
        .bind(purchase.charged_at_us)
        .bind(purchase.decline_reason.map(DeclineReason::as_str))
        .execute(&mut **tx)
        .await?;
        self.record_change(tx, purchase, now).await
    }

    /// Ends the holds whose time has passed (released, the purchase `expired`); returns how many. Run
    /// by the expiry sweeper with [`Ledger::expire_due`]. The index on `hold_expires_at_us` holds only
    /// live holds' times (an ended hold's is NULL), so the sweep reads what is due and nothing else.
    pub async fn expire_holds(&self) -> Result<u64> {
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let lock = self.db.for_update();
        let rows = sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE hold_expires_at_us <= $1 AND state = 'authorized' \
             ORDER BY id LIMIT 500{lock}"
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        // The payers' rows too, in MSISDN order before any is updated, as every transaction that locks
        // several accounts does.
        let mut payers: Vec<String> =
            rows.iter().filter_map(|row| opt_text(row, "charged_msisdn").ok().flatten()).collect();
        payers.sort_unstable();
        payers.dedup();
        if !payers.is_empty() {
            sqlx::query(&format!(
                "SELECT msisdn FROM accounts WHERE {} ORDER BY msisdn{lock}",
                self.db.backend.json_in("msisdn", 1, None)
            ))
            .bind(json(&payers)?)
            .fetch_all(&mut *tx)
            .await?;
        }
        for row in &rows {
            let mut purchase = PurchaseRow::from_row(row)?;
            self.end_hold(&mut tx, &mut purchase, HoldEnd::Release(PurchaseState::Expired, None), now).await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            self.changed.notify_waiters();
        }
        Ok(rows.len() as u64)
    }
}
