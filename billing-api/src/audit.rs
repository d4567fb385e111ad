//! The audit trail of operator actions: every key created or revoked, SP created and account created or
//! changed, whether through `gtpcharge admin` or the AccountService, leaves a row in `audit_log` (who,
//! what, on what, when). The row is written right after the action commits; a write that fails is an
//! error to the operator, who then knows the action happened but is not on record. Secrets never go
//! in: a new key's record names its key id only.
use crate::ledger::{now_us, AccountUpdate, Ledger, Result};
use sqlx::Row;

/// What an operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CreateServiceProvider,
    CreateKey,
    RevokeKey,
    SetAccount,
    SetPin,
    RevokeDevice,
    SetWebhook,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateServiceProvider => "sp.create",
            Action::CreateKey => "key.create",
            Action::RevokeKey => "key.revoke",
            Action::SetAccount => "account.set",
            Action::SetPin => "pin.set",
            Action::RevokeDevice => "device.revoke",
            Action::SetWebhook => "webhook.set",
        }
    }
}

/// One row of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_us: i64,
    /// `operator key <key id>` through the AccountService; `admin (uid N, USER)` through the CLI.
    pub actor: String,
    pub action: String,
    /// What was acted on: an SP id, a key id, an MSISDN.
    pub subject: String,
    pub detail: String,
}

impl Ledger {
    /// Appends one record.
    pub async fn audit(&self, actor: &str, action: Action, subject: &str, detail: &str) -> Result<()> {
        sqlx::query("INSERT INTO audit_log (at_us, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(now_us())
            .bind(actor)
            .bind(action.as_str())
            .bind(subject)
            .bind(detail)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// The newest `limit` records before id `before` (all when `None`), newest first.
    pub async fn audit_records(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at_us, actor, action, subject, detail FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: row.try_get("id")?,
                    at_us: row.try_get("at_us")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    subject: row.try_get("subject")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

impl AccountUpdate {
    /// What the update sets, for the audit trail: `currency=EUR balance=1000 daily_cap=500`.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("currency={}", self.currency)];
        if let Some(kind) = &self.kind {
            parts.push(format!("kind={kind}"));
        }
        for (name, value) in [
            ("balance", self.balance),
            ("credit_limit", self.credit_limit),
            ("daily_cap", self.daily_cap),
            ("monthly_cap", self.monthly_cap),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        if let Some(barred) = self.barred {
            parts.push(format!("barred={barred}"));
        }
        parts.join(" ")
    }
}

/// The actor of an AccountService call.
pub fn operator_key(key_id: &str) -> String {
    format!("operator key {key_id}")
}
