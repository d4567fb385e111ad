//! Payment PINs and device keys bound to an MSISDN by the network.
//!
//! A device (the pay agent) registers its public key and gets an enrollment token; it sends the token
//! through mobile data, and the probe's sighting of it tells the ledger which MSISDN sent it
//! ([`Ledger::enrollment_sightings`]). The enrollment completes only with that account's payment PIN
//! and the key's signature: the network proves the line, the PIN the person, the signature the key. A
//! token seen from two MSISDNs binds nothing, ever (when in doubt, no binding).
use super::*;
use crate::signing;
use data_encoding::HEXLOWER;

/// Wrong PINs in a row that lock an account's PIN (until the operator sets a new one).
pub const PIN_TRIES: i64 = 5;
/// How long an enrollment token may take to be seen and the enrollment to be completed.
const ENROLLMENT_TTL_US: i64 = 600_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentRow {
    pub id: i64,
    pub token: String,
    pub expires_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: i64,
    pub msisdn: String,
    pub public_key: Vec<u8>,
    pub label: String,
    pub enrolled_at_us: i64,
    pub revoked_at_us: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollmentOutcome {
    Enrolled(DeviceRow),
    WrongPin { tries_left: i64 },
}

/// What a PIN check found (the failure count is written either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PinCheck {
    Right,
    Wrong {
        tries_left: i64,
    },
    /// Locked now or before: nothing is approved with it.
    Locked,
}

const DEVICE_COLUMNS: &str = "id, msisdn, public_key, label, enrolled_at_us, revoked_at_us";

impl DeviceRow {
    fn from_row(row: &AnyRow) -> Result<DeviceRow> {
        let key: String = row.try_get("public_key")?;
        Ok(DeviceRow {
            id: row.try_get("id")?,
            msisdn: row.try_get("msisdn")?,
            public_key: HEXLOWER
                .decode(key.as_bytes())
                .map_err(|_| LedgerError::Invariant("a stored key is not hex".into()))?,
            label: row.try_get("label")?,
            enrolled_at_us: row.try_get("enrolled_at_us")?,
            revoked_at_us: row.try_get::<Option<i64>, _>("revoked_at_us")?,
        })
    }
}

impl Ledger {
    /// Sets an account's payment PIN (4 to 12 digits), which also unlocks it. The account must exist.
    pub async fn set_pin(&self, msisdn: &str, pin: &str) -> Result<()> {
        validate_msisdn(msisdn)?;
        if !auth::valid_pin(pin) {
            return Err(invalid("a payment PIN is 4 to 12 digits"));
        }
        let pin = pin.to_owned();
        let hash = tokio::task::spawn_blocking(move || auth::hash_pin(&pin))
            .await
            .map_err(|_| LedgerError::Unavailable("the PIN hashing task failed"))?
            .map_err(|_| LedgerError::Random)?;
        let now = now_us();
        let mut tx = self.db.pool.begin().await?;
        let exists =
            sqlx::query("SELECT msisdn FROM accounts WHERE msisdn = $1").bind(msisdn).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(LedgerError::NotFound("account"));
        }
        sqlx::query(
            "INSERT INTO account_pins (msisdn, pin_hash, failures, locked_at_us, updated_at_us) VALUES ($1, $2, 0, NULL, $3) \
             ON CONFLICT (msisdn) DO UPDATE SET pin_hash = excluded.pin_hash, failures = 0, locked_at_us = NULL, \
             updated_at_us = excluded.updated_at_us",
        )
        .bind(msisdn)
        .bind(hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Checks `pin` against the account's, in the caller's transaction (the PIN's row locked until it
    /// ends), counting a wrong one; the fifth wrong one in a row locks it. No PIN set is a refusal.
    pub(super) async fn check_pin(&self, tx: &mut Tx<'_>, msisdn: &str, pin: &str, now: i64) -> Result<PinCheck> {
        let lock = self.db.for_update();
        let row =
            sqlx::query(&format!("SELECT pin_hash, failures, locked_at_us FROM account_pins WHERE msisdn = $1{lock}"))
                .bind(msisdn)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| {
                    LedgerError::Precondition("the account has no payment PIN (the operator sets it)".into())
                })?;
        if row.try_get::<Option<i64>, _>("locked_at_us")?.is_some() {
            return Ok(PinCheck::Locked);
        }
        let stored: String = row.try_get("pin_hash")?;
        let failures: i64 = row.try_get("failures")?;
        let given = pin.to_owned();
        let right = auth::valid_pin(pin)
            && tokio::task::spawn_blocking(move || auth::pin_matches(&given, &stored))
                .await
                .map_err(|_| LedgerError::Unavailable("the PIN check task failed"))?;
        let failures = if right { 0 } else { failures + 1 };
        let locked = (failures >= PIN_TRIES).then_some(now);
        sqlx::query("UPDATE account_pins SET failures = $2, locked_at_us = $3, updated_at_us = $4 WHERE msisdn = $1")
            .bind(msisdn)
            .bind(failures)
            .bind(locked)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(match (right, locked) {
            (true, _) => PinCheck::Right,
            (false, Some(_)) => PinCheck::Locked,
            (false, None) => PinCheck::Wrong { tries_left: PIN_TRIES - failures },
        })
    }

    /// Registers a device key waiting for its enrollment token to be seen.
    pub async fn begin_enrollment(&self, public_key: &[u8], label: &str) -> Result<EnrollmentRow> {
        let token = Token::generate().map_err(|_| LedgerError::Random)?;
        self.import_enrollment(public_key, label, token).await
    }

    /// [`Ledger::begin_enrollment`] with a token minted elsewhere (the demo, whose capture carries known
    /// tokens); never reachable by a device.
    pub async fn import_enrollment(&self, public_key: &[u8], label: &str, token: Token) -> Result<EnrollmentRow> {
        if !signing::valid_public_key(public_key) {
            return Err(invalid("public_key must be an Ed25519 public key (32 bytes)"));
        }
        validate_text("label", label, 0, 64)?;
        let key = HEXLOWER.encode(public_key);
        let enrolled = sqlx::query("SELECT id FROM devices WHERE public_key = $1")
            .bind(&key)
            .fetch_optional(&self.db.pool)
            .await?;
        if enrolled.is_some() {
            return Err(LedgerError::AlreadyExists("this key is enrolled already; make a new one".into()));
        }
        let token = token.to_string();
        let now = now_us();
        let row = sqlx::query(
            "INSERT INTO enrollments (token, public_key, label, created_at_us, expires_at_us) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(&token)
        .bind(&key)
        .bind(label)
        .bind(now)
        .bind(now + ENROLLMENT_TTL_US)
        .fetch_one(&self.db.pool)
        .await?;
        Ok(EnrollmentRow { id: row.try_get("id")?, token, expires_at_us: now + ENROLLMENT_TTL_US })
    }

    /// Marks the enrollments whose tokens these sightings carry (token, MSISDN) as seen from that MSISDN:
    /// the first sighting binds, a sighting from another MSISDN spoils the enrollment for good. Returns,
    /// per sighting, whether its token was an enrollment's.
    pub async fn enrollment_sightings(&self, seen: &[(&str, &str)]) -> Result<Vec<bool>> {
        if seen.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_us();
        let mut tokens: Vec<&str> = seen.iter().map(|(token, _)| *token).collect();
        tokens.sort_unstable();
        tokens.dedup();
        let lock = self.db.for_update();
        let mut tx = self.db.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT id, token, expires_at_us, sighted_msisdn FROM enrollments WHERE {} ORDER BY id{lock}",
            self.db.backend.json_in("token", 1, None)
        ))
        .bind(super::writes::json(&tokens)?)
        .fetch_all(&mut *tx)
        .await?;
        // Each enrollment as this batch leaves it: an earlier sighting in it may bind or spoil it.
        let mut enrollments: HashMap<String, (i64, i64, Option<String>)> = HashMap::new();
        for row in &rows {
            let state = (row.try_get("id")?, row.try_get("expires_at_us")?, opt_text(row, "sighted_msisdn")?);
            enrollments.insert(row.try_get("token")?, state);
        }
        let mut found = Vec::with_capacity(seen.len());
        for (token, msisdn) in seen {
            let Some((id, expires_at_us, sighted)) = enrollments.get_mut(*token) else {
                found.push(false);
                continue;
            };
            found.push(true);
            match sighted {
                None if *expires_at_us > now => {
                    sqlx::query("UPDATE enrollments SET sighted_msisdn = $2, sighted_at_us = $3 WHERE id = $1")
                        .bind(*id)
                        .bind(*msisdn)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    *sighted = Some((*msisdn).to_owned());
                }
                Some(first) if first != msisdn => {
                    sqlx::query("UPDATE enrollments SET conflicted = 1 WHERE id = $1")
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                    tracing::warn!(
                        enrollment = *id,
                        "an enrollment token was seen from a second subscriber: it binds nothing"
                    );
                }
                _ => {}
            }
        }
        tx.commit().await?;
        Ok(found)
    }

    /// Completes an enrollment: the key's signature over [`signing::enrollment_statement`], and the PIN
    /// of the account whose line sent the token. Completing a completed enrollment returns its device.
    pub async fn complete_enrollment(&self, id: i64, pin: &str, signature: &[u8]) -> Result<EnrollmentOutcome> {
        let now = now_us();
        let lock = self.db.for_update();
        let mut tx = self.db.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT token, public_key, label, expires_at_us, sighted_msisdn, conflicted, device_id FROM enrollments \
             WHERE id = $1{lock}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(LedgerError::NotFound("enrollment"))?;
        let token: String = row.try_get("token")?;
        let key_hex: String = row.try_get("public_key")?;
        let key = HEXLOWER
            .decode(key_hex.as_bytes())
            .map_err(|_| LedgerError::Invariant("a stored key is not hex".into()))?;
        if !signing::verify(&key, &signing::enrollment_statement(id, &token), signature) {
            return Err(LedgerError::PermissionDenied("the signature does not verify with the enrollment's key"));
        }
        if let Some(device) = row.try_get::<Option<i64>, _>("device_id")? {
            let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"))
                .bind(device)
                .fetch_one(&mut *tx)
                .await?;
            return Ok(EnrollmentOutcome::Enrolled(DeviceRow::from_row(&row)?));
        }
        if row.try_get::<i64, _>("conflicted")? != 0 {
            return Err(LedgerError::Precondition(
                "the enrollment token was seen from more than one line; begin a new enrollment".into(),
            ));
        }
        if row.try_get::<i64, _>("expires_at_us")? <= now {
            return Err(LedgerError::Precondition("the enrollment expired; begin a new one".into()));
        }
        let Some(msisdn) = opt_text(&row, "sighted_msisdn")? else {
            return Err(LedgerError::Precondition("the enrollment token has not been seen yet".into()));
        };
        match self.check_pin(&mut tx, &msisdn, pin, now).await? {
            PinCheck::Right => {}
            PinCheck::Wrong { tries_left } => {
                tx.commit().await?;
                return Ok(EnrollmentOutcome::WrongPin { tries_left });
            }
            PinCheck::Locked => {
                tx.commit().await?;
                return Err(LedgerError::PermissionDenied("the payment PIN is locked; the operator sets a new one"));
            }
        }
        let label: String = row.try_get("label")?;
        let device = sqlx::query(&format!(
            "INSERT INTO devices (msisdn, public_key, label, enrolled_at_us) VALUES ($1, $2, $3, $4) RETURNING {DEVICE_COLUMNS}"
        ))
        .bind(&msisdn)
        .bind(&key_hex)
        .bind(&label)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let device = DeviceRow::from_row(&device)?;
        sqlx::query("UPDATE enrollments SET device_id = $2 WHERE id = $1")
            .bind(id)
            .bind(device.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(EnrollmentOutcome::Enrolled(device))
    }

    pub async fn device(&self, id: i64) -> Result<DeviceRow> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or(LedgerError::NotFound("device"))?;
        DeviceRow::from_row(&row)
    }

    pub async fn list_devices(&self, msisdn: &str) -> Result<Vec<DeviceRow>> {
        validate_msisdn(msisdn)?;
        let rows = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE msisdn = $1 ORDER BY id"))
            .bind(msisdn)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(DeviceRow::from_row).collect()
    }

    /// Revokes a device: its confirmations are refused from then on. Revoking twice keeps the first time.
    pub async fn revoke_device(&self, id: i64) -> Result<DeviceRow> {
        sqlx::query("UPDATE devices SET revoked_at_us = $2 WHERE id = $1 AND revoked_at_us IS NULL")
            .bind(id)
            .bind(now_us())
            .execute(&self.db.pool)
            .await?;
        self.device(id).await
    }
}
