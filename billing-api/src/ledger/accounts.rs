//! Subscriber accounts: set and read, the statement, the spending that caps count, the carrier funding
//! movements of `--balance`, and the ledger's per-currency sums.
use super::writes::*;
use super::*;

impl Ledger {
    pub async fn set_account(&self, update: &AccountUpdate) -> Result<AccountRow> {
        validate_msisdn(&update.msisdn)?;
        validate_currency(&update.currency)?;
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
            .bind(
                update
                    .kind
                    .unwrap_or(if update.credit_limit.is_some() { AccountKind::Postpaid } else { AccountKind::Prepaid })
                    .as_str(),
            )
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
            .bind(update.kind.map(AccountKind::as_str))
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
    pub(super) async fn movement(
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
    pub(super) async fn insert_entries(&self, tx: &mut Tx<'_>, entries: &[EntryWrite]) -> Result<()> {
        sqlx::query(&entries_sql(self.db.backend, 1)).bind(json(entries)?).execute(&mut **tx).await?;
        Ok(())
    }

    /// One account; see [`Ledger::read_accounts`].
    pub(super) async fn read_account(
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
    pub(super) async fn read_accounts(
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
                    kind: {
                        let name: String = row.try_get("kind")?;
                        AccountKind::parse(&name).ok_or_else(|| unknown_name("account kind", &name))?
                    },
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
    pub(super) async fn add_spending(
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
             WHERE account_type = 'subscriber' AND {} AND kind IN ('charge', 'refund', 'hold', 'release') AND at_us >= $3 \
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
