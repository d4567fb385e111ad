//! Consent on the handset: the prompt a pay agent shows (from the ledger, never from the app) and the
//! subscriber's signed answer, which captures or releases the hold of a `device` purchase. Each
//! answer that decides is kept in `consents` as evidence: the device, the MSISDN, the statement's
//! exact bytes, the signature and the key.
use super::devices::PinCheck;
use super::holds::HoldEnd;
use super::*;
use crate::signing::{self, ConsentStatement};
use data_encoding::HEXLOWER;

/// What the subscriber is shown: the purchase and its SP's name.
#[derive(Debug, Clone)]
pub struct ConsentPromptRow {
    pub purchase: PurchaseRow,
    pub service_provider_name: String,
}

#[derive(Debug, Clone)]
pub enum ConfirmOutcome {
    /// The purchase as the answer left it (charged, declined), or as it had settled before.
    Settled(PurchaseRow),
    /// A wrong PIN: nothing changed but the count.
    WrongPin { purchase: PurchaseRow, tries_left: i64 },
}

/// Equal contents in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Ledger {
    /// The prompt for a `device` purchase, given its token and consent nonce; any mismatch is NOT_FOUND,
    /// as a missing purchase is (a token alone, which travels in clear, prompts nobody).
    pub async fn consent_prompt(&self, token: &str, nonce: &str) -> Result<ConsentPromptRow> {
        let token = Token::parse(token.as_bytes()).map_err(|e| invalid(format!("token: {e}")))?;
        let row = sqlx::query(&format!(
            "SELECT {PURCHASE_COLUMNS}, (SELECT name FROM service_providers s WHERE s.id = purchases.service_provider_id) \
             AS sp_name FROM purchases WHERE token = $1"
        ))
        .bind(token.to_string())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or(LedgerError::NotFound("purchase"))?;
        let purchase = PurchaseRow::from_row(&row)?;
        let known =
            purchase.consent == Consent::Device && purchase.consent_nonce.as_deref().is_some_and(|n| same(n, nonce));
        if !known {
            return Err(LedgerError::NotFound("purchase"));
        }
        Ok(ConsentPromptRow { purchase, service_provider_name: row.try_get("sp_name")? })
    }

    /// The subscriber's answer: `statement` signed by device `device_id`, with the payment PIN when it
    /// approves. See the ConsentService in the .proto for what must hold.
    pub async fn confirm(
        &self,
        device_id: i64,
        statement: &[u8],
        signature: &[u8],
        pin: &str,
    ) -> Result<ConfirmOutcome> {
        let parsed =
            ConsentStatement::parse(statement).ok_or_else(|| invalid("statement is not a consent statement"))?;
        let device = self.device(device_id).await?;
        if device.revoked_at_us.is_some() {
            return Err(LedgerError::PermissionDenied("the device is revoked"));
        }
        if !signing::verify(&device.public_key, statement, signature) {
            return Err(LedgerError::PermissionDenied("the signature does not verify with the device's key"));
        }
        let now = now_us();
        let lock = self.db.for_update();
        let mut tx = self.db.pool.begin().await?;
        let row = sqlx::query(&format!("SELECT {PURCHASE_COLUMNS} FROM purchases WHERE id = $1{lock}"))
            .bind(parsed.purchase_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(LedgerError::NotFound("purchase"))?;
        let mut purchase = PurchaseRow::from_row(&row)?;
        let nonce_ok = purchase.consent == Consent::Device
            && purchase.consent_nonce.as_deref().is_some_and(|n| same(n, &parsed.nonce));
        if !nonce_ok {
            return Err(LedgerError::NotFound("purchase"));
        }
        if (parsed.amount, parsed.currency.as_str(), parsed.service_provider_id)
            != (purchase.amount, purchase.currency.as_str(), purchase.service_provider_id)
        {
            return Err(invalid("the statement does not describe this purchase (amount, currency or SP)"));
        }
        match purchase.state {
            PurchaseState::Authorized => {}
            PurchaseState::Pending => {
                return Err(LedgerError::Precondition("the purchase's token has not been seen yet".into()))
            }
            // Settled already (this answer repeated, or settled otherwise): how it settled.
            _ => return Ok(ConfirmOutcome::Settled(purchase)),
        }
        let payer = purchase.charged_msisdn.clone().unwrap_or_default();
        let end = if device.msisdn != payer {
            tracing::warn!(
                purchase = purchase.id,
                device = device.id,
                "a confirmation from a device of another subscriber"
            );
            HoldEnd::Release(PurchaseState::Declined, Some(DeclineReason::SubscriberMismatch))
        } else if !parsed.approve {
            HoldEnd::Release(PurchaseState::Declined, Some(DeclineReason::ConsentRefused))
        } else {
            match self.check_pin(&mut tx, &payer, pin, now).await? {
                PinCheck::Right => HoldEnd::Capture(purchase.authorized_amount.unwrap_or(purchase.amount)),
                PinCheck::Locked => HoldEnd::Release(PurchaseState::Declined, Some(DeclineReason::PinLocked)),
                PinCheck::Wrong { tries_left } => {
                    tx.commit().await?;
                    return Ok(ConfirmOutcome::WrongPin { purchase, tries_left });
                }
            }
        };
        self.end_hold(&mut tx, &mut purchase, end, now).await?;
        sqlx::query(
            "INSERT INTO consents (purchase_id, device_id, msisdn, statement, signature, public_key, decision, outcome, at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(purchase.id)
        .bind(device.id)
        .bind(&device.msisdn)
        .bind(String::from_utf8_lossy(statement).into_owned())
        .bind(HEXLOWER.encode(signature))
        .bind(HEXLOWER.encode(&device.public_key))
        .bind(if parsed.approve { "approve" } else { "refuse" })
        .bind(match purchase.decline_reason {
            Some(reason) => reason.as_str(),
            None => purchase.state.as_str(),
        })
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.changed.notify_waiters();
        Ok(ConfirmOutcome::Settled(purchase))
    }
}
