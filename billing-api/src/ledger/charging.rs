//! The exactly-once charge: sightings decided in order in memory ([`settle`]) against locked purchases and
//! accounts, then written in one transaction; PostgreSQL's path runs two prepared statements through a
//! connection it closes on any error ([`InTransaction`]), SQLite's the same writes one statement each.
use super::writes::*;
use super::*;

impl Ledger {
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
        let (mut results, writes) = if self.db.backend == Backend::Postgres {
            self.charge_postgres(items, &tokens, now).await?
        } else {
            let mut tx = self.db.pool.begin().await?;
            let (mut purchases, mut accounts) = self.lock_for_charging(&mut tx, items, &tokens, &wanted, now).await?;
            let (results, writes) = settle(items, &tokens, &mut purchases, &mut accounts, now)?;
            self.write(&mut tx, &writes).await?;
            tx.commit().await?;
            (results, writes)
        };
        if !writes.changes.is_empty() {
            self.changed.notify_waiters();
        }
        // A well-formed token no purchase has may be a device enrollment's.
        let unknown: Vec<(usize, &str, &str)> = results
            .iter()
            .enumerate()
            .filter(|(_, result)| result.outcome == Outcome::UnknownToken)
            .filter_map(|(i, _)| Some((i, tokens[i].as_deref()?, items[i].1.msisdn.as_str())))
            .collect();
        if !unknown.is_empty() {
            let seen: Vec<(&str, &str)> = unknown.iter().map(|(_, token, msisdn)| (*token, *msisdn)).collect();
            for ((i, _, _), enrollment) in unknown.iter().zip(self.enrollment_sightings(&seen).await?) {
                if enrollment {
                    results[*i].outcome = Outcome::Enrollment;
                }
            }
        }
        Ok(results)
    }

    /// SQLite's charging reads: the purchases of the `wanted` tokens, then the accounts of the MSISDNs
    /// that saw a pending, unexpired one, with what capped accounts spent so far. SQLite runs one
    /// transaction at a time, so nothing else can change them before this transaction commits.
    pub(super) async fn lock_for_charging(
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
                    .is_some_and(|p| p.state == PurchaseState::Pending && p.expires_at_us > now)
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
    pub(super) async fn charge_postgres(
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
        let (results, writes) = settle(items, tokens, &mut purchases, &mut accounts, now)?;
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
    pub(super) async fn write(&self, tx: &mut Tx<'_>, writes: &Writes) -> Result<()> {
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
}

/// A pooled PostgreSQL connection inside a transaction begun by a simple query (which sqlx does not
/// track). Dropped before [`InTransaction::finish`], on an error or when the future holding it is
/// abandoned, it closes the connection instead of returning it to the pool: PostgreSQL rolls back the
/// transaction of a connection that went away, and the pool never hands out one still inside it.
pub(super) struct InTransaction(Option<sqlx::pool::PoolConnection<sqlx::Any>>);

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
pub(super) const CHARGE_LOCK: &str = "gtpcharge_charge_lock";
pub(super) const CHARGE_WRITE: &str = "gtpcharge_charge_write";

/// What every PostgreSQL connection of the pool runs once when it opens (after the migrations, so the
/// tables exist): `PREPARE` of the charging path's two statements.
///
/// - `gtpcharge_charge_lock(seen json, now bigint)`: the locking read, one JSON text of the locked rows.
/// - `gtpcharge_charge_write(purchases, debits, entries, changes, sightings json, updates bigint)`: every
///   write of a batch as data-modifying WITH clauses of one statement (an empty array where a table does
///   not change). Its one row is a check that fails the statement, a cast of a text naming the problem,
///   unless the purchase update changed `updates` rows.
pub fn postgres_prepared() -> String {
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

/// What the charging reads locked, as [`settle`] takes it: purchases by token, accounts by MSISDN.
pub(super) fn keyed(
    purchases: Vec<PurchaseRow>,
    accounts: Vec<AccountRow>,
) -> (HashMap<String, PurchaseRow>, HashMap<String, AccountRow>) {
    (
        purchases.into_iter().map(|p| (p.token.clone(), p)).collect(),
        accounts.into_iter().map(|a| (a.msisdn.clone(), a)).collect(),
    )
}

/// Why this account cannot pay for this purchase now, or `None` if it can.
pub(super) fn decline_reason(account: Option<&AccountRow>, purchase: &PurchaseRow) -> Option<DeclineReason> {
    let Some(account) = account else { return Some(DeclineReason::UnknownSubscriber) };
    let amount = purchase.amount;
    let floor = if account.kind == AccountKind::Postpaid { -account.credit_limit } else { 0 };
    if account.barred {
        Some(DeclineReason::Barred)
    } else if account.currency != purchase.currency {
        Some(DeclineReason::CurrencyMismatch)
    } else if account.daily_cap > 0 && account.spent_today + amount > account.daily_cap {
        Some(DeclineReason::DailyCap)
    } else if account.monthly_cap > 0 && account.spent_this_month + amount > account.monthly_cap {
        Some(DeclineReason::MonthlyCap)
    } else if account.balance - amount < floor {
        Some(DeclineReason::InsufficientBalance)
    } else {
        None
    }
}

/// Decides a batch of sightings in order against the locked purchases (by token) and paying accounts
/// (by MSISDN), updating both as each charge would, so a later sighting in the batch sees what an
/// earlier one did (a token reported twice charges once; two charges to one account both count against
/// its balance and caps). `tokens` holds each sighting's canonical token, `None` where it failed its check.
pub(super) fn settle(
    items: &[(&str, &SightingReport)],
    tokens: &[Option<String>],
    purchases: &mut HashMap<String, PurchaseRow>,
    accounts: &mut HashMap<String, AccountRow>,
    now: i64,
) -> Result<(Vec<SightingResult>, Writes)> {
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
        let changed = purchase.state == PurchaseState::Pending;
        let outcome = match purchase.state {
            PurchaseState::Pending if purchase.expires_at_us <= now => {
                purchase.state = PurchaseState::Expired;
                Outcome::Expired
            }
            PurchaseState::Pending => {
                let account = accounts.get_mut(&sighting.msisdn);
                match decline_reason(account.as_deref(), purchase) {
                    Some(reason) => {
                        purchase.state = PurchaseState::Declined;
                        purchase.decline_reason = Some(reason);
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
                        // A two-phase purchase's amount goes to its hold, a charge's to the SP.
                        let (kind, other, outcome) = if purchase.two_phase() {
                            purchase.authorize(&sighting.msisdn, now);
                            ("hold", ("hold", purchase.id.to_string()), Outcome::Authorized)
                        } else {
                            purchase.state = PurchaseState::Charged;
                            purchase.charged_msisdn = Some(sighting.msisdn.clone());
                            purchase.charged_at_us = Some(now);
                            ("charge", ("sp", purchase.service_provider_id.to_string()), Outcome::Charged)
                        };
                        let movement = format!("{kind}-{}", purchase.id);
                        let movement = Movement { id: &movement, at_us: now, kind, currency: &purchase.currency };
                        writes.entries.extend(EntryWrite::pair(
                            &movement,
                            Some(purchase.id),
                            &sighting.msisdn,
                            -amount,
                            (other.0, &other.1),
                        ));
                        outcome
                    }
                }
            }
            // Settled already: answered, nothing changes.
            PurchaseState::Charged => Outcome::AlreadyCharged,
            PurchaseState::Declined => Outcome::Declined,
            PurchaseState::Expired => Outcome::Expired,
            PurchaseState::Cancelled => Outcome::Cancelled,
            PurchaseState::Refunded => Outcome::Refunded,
            PurchaseState::Authorized => Outcome::Authorized,
            PurchaseState::Voided => Outcome::Voided,
        };
        let other_subscriber = purchase.charged_msisdn.as_deref().is_some_and(|m| m != sighting.msisdn);
        if changed {
            writes.purchases.push(PurchaseWrite::of(purchase));
            writes.changes.push(ChangeWrite::of(purchase, now));
        }
        writes.sightings.push(audit(Some(purchase.id), outcome, other_subscriber));
        results.push(SightingResult {
            outcome,
            decline_reason: purchase.decline_reason,
            purchase_id: Some(purchase.id),
            charged_msisdn: purchase.charged_msisdn.clone(),
            other_subscriber,
        });
    }
    let mut debits: Vec<Debit> =
        debits.into_iter().map(|(msisdn, amount)| Debit { msisdn, amount, at_us: now }).collect();
    debits.sort_unstable_by(|a, b| a.msisdn.cmp(&b.msisdn));
    writes.debits = debits;
    writes.check_balanced()?;
    Ok((results, writes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(state: PurchaseState) -> PurchaseRow {
        PurchaseRow {
            id: 7,
            service_provider_id: 1,
            token: "t".into(),
            product_id: "p".into(),
            description: String::new(),
            amount: 100,
            currency: "EUR".into(),
            idempotency_key: "k".into(),
            state,
            created_at_us: 0,
            expires_at_us: i64::MAX,
            charged_msisdn: Some("46700000001".into()),
            charged_at_us: Some(1),
            refunded_amount: 0,
            decline_reason: None,
            consent: Consent::Network,
            capture_mode: CaptureMode::Automatic,
            consent_nonce: None,
            authorization_ttl_s: HOLD_TTL_DEFAULT_S,
            authorized_amount: None,
            authorized_at_us: None,
            hold_expires_at_us: None,
            captured_amount: None,
        }
    }

    /// A state the money model does not know is refused where the row is read (the locking read's JSON
    /// here), so it can never reach `settle`; a refunded purchase answers `Refunded` and moves nothing.
    #[test]
    fn unknown_states_are_refused_when_read() {
        let mut row = serde_json::to_value(PurchaseState::Refunded).unwrap();
        assert_eq!(row, serde_json::json!("refunded"));
        row = serde_json::json!("paid");
        assert!(serde_json::from_value::<PurchaseState>(row).is_err());
        assert_eq!(PurchaseState::parse("paid"), None);
        let report = SightingReport { token: "t".into(), msisdn: "46700000001".into(), seen_at_us: 1 };
        let items = [("probe", &report)];
        let mut purchases = HashMap::from([("t".to_owned(), purchase(PurchaseState::Refunded))]);
        let (results, writes) = settle(&items, &[Some("t".into())], &mut purchases, &mut HashMap::new(), 10).unwrap();
        assert_eq!((results[0].outcome, writes.entries.len()), (Outcome::Refunded, 0));
    }

    /// Double entry: a movement whose entries do not sum to zero is refused whole.
    #[test]
    fn unbalanced_movements_are_refused() {
        let movement = Movement { id: "m", at_us: 1, kind: "charge", currency: "EUR" };
        let mut writes = Writes::default();
        writes.entries.extend(EntryWrite::pair(&movement, Some(7), "46700000001", -100, ("sp", "1")));
        assert!(writes.check_balanced().is_ok());
        writes.entries[1].amount = 99;
        assert!(matches!(writes.check_balanced(), Err(LedgerError::Invariant(m)) if m.contains("sums to -1")));
    }
}
