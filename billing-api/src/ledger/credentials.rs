//! Service providers and credentials: minting, revoking, and authenticating keys (cached
//! [`CREDENTIAL_TTL`](super::CREDENTIAL_TTL), emptied on every revocation).
use super::*;

impl Ledger {
    /// Registers an SP and mints its first key. `network_consent`: whether it may create purchases that
    /// the network's proof alone charges (otherwise only `device` ones).
    pub async fn create_service_provider(&self, name: &str, network_consent: bool) -> Result<(i64, NewSecret)> {
        validate_text("name", name, 1, 128)?;
        let mut tx = self.db.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO service_providers (name, created_at_us, network_consent) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(now_us())
        .bind(i64::from(network_consent))
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

    pub(super) async fn insert_credential(
        tx: &mut Tx<'_>,
        kind: Kind,
        sp: Option<i64>,
        name: &str,
    ) -> Result<NewSecret> {
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
}
