//! Purchases: creation (idempotent on the SP's key), reads and lists, cancel, refund and the expiry sweep.
use super::writes::*;
use super::*;

impl Ledger {
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

    pub(super) async fn insert_purchase(&self, sp: i64, new: &NewPurchase, token: Token) -> Result<PurchaseRow> {
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
        let authorization_ttl_s = match new.authorization_ttl_s {
            0 => HOLD_TTL_DEFAULT_S,
            s if (1..=604_800).contains(&s) => s,
            _ => return Err(invalid("authorization_ttl_s must be 1 to 604800 (0 for the default of 300)")),
        };
        if new.consent == Consent::Device && new.capture_mode == CaptureMode::Manual {
            return Err(invalid("a device purchase is captured by the subscriber's confirmation, not manually"));
        }
        // The same parameters give the same purchase; a fingerprint made before consent existed (five
        // fields) is what a network, automatic purchase with the default hold still gives.
        let mut fingerprint_text = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            new.product_id, new.description, new.amount, new.currency, expires_in_s
        );
        if new.consent != Consent::Network
            || new.capture_mode != CaptureMode::Automatic
            || authorization_ttl_s != HOLD_TTL_DEFAULT_S
        {
            fingerprint_text.push_str(&format!(
                "\u{0}{}\u{0}{}\u{0}{authorization_ttl_s}",
                new.consent.as_str(),
                new.capture_mode.as_str()
            ));
        }
        let fingerprint = auth::hash(&fingerprint_text);
        let nonce = match new.consent {
            Consent::Device => Some(auth::random_text().map_err(|_| LedgerError::Random)?),
            Consent::Network => None,
        };
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        if new.consent == Consent::Network {
            let allowed: Option<i64> =
                sqlx::query_scalar("SELECT network_consent FROM service_providers WHERE id = $1")
                    .bind(sp)
                    .fetch_optional(&mut *tx)
                    .await?;
            if allowed != Some(1) {
                return Err(LedgerError::PermissionDenied(
                    "this SP may create only DEVICE purchases (the operator allows NETWORK consent per SP)",
                ));
            }
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO purchases (service_provider_id, token, product_id, description, amount, currency, idempotency_key, \
             request_sha256, state, created_at_us, expires_at_us, consent, capture_mode, consent_nonce, authorization_ttl_s) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10, $11, $12, $13, $14) \
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
        .bind(new.consent.as_str())
        .bind(new.capture_mode.as_str())
        .bind(nonce)
        .bind(authorization_ttl_s)
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
        .bind(filter.state.map(PurchaseState::as_str))
        .bind(filter.product_id.as_deref())
        .bind(page_size)
        .fetch_all(&self.db.pool)
        .await?;
        Ok(rows.iter().map(PurchaseRow::from_row).collect::<std::result::Result<_, _>>()?)
    }

    pub(super) async fn lock_purchase(&self, tx: &mut Tx<'_>, sp: i64, id: i64) -> Result<PurchaseRow> {
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
        match purchase.state {
            PurchaseState::Cancelled => return Ok(purchase),
            PurchaseState::Pending => {}
            other => {
                return Err(LedgerError::Precondition(format!(
                    "only a pending purchase can be cancelled; it is {other}"
                )))
            }
        }
        sqlx::query("UPDATE purchases SET state = 'cancelled' WHERE id = $1").bind(id).execute(&mut *tx).await?;
        purchase.state = PurchaseState::Cancelled;
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
        if purchase.state != PurchaseState::Charged {
            return Err(LedgerError::Precondition(format!(
                "only a charged purchase can be refunded; it is {}",
                purchase.state
            )));
        }
        let remaining = purchase.refundable();
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
        if purchase.refundable() == 0 {
            purchase.state = PurchaseState::Refunded;
        }
        sqlx::query("UPDATE purchases SET refunded_amount = $2, state = $3 WHERE id = $1")
            .bind(id)
            .bind(purchase.refunded_amount)
            .bind(purchase.state.as_str())
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
}
