//! The billing API through a real tonic client against a real server on an ephemeral port, once on an
//! embedded SQLite file and once on PostgreSQL (a fresh database per test, on the server named by
//! `GTPCHARGE_TEST_DATABASE_URL`; `.ci/test` sets it). Every test ends by checking that the ledger
//! balances: the entries of each currency sum to zero.
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::AccountUpdate;
use gtpcharge_billing_api::{Db, Ledger};
use gtpcharge_proto::v1 as pb;
use sqlx::Executor;
use tonic::{Code, Request};

mod harness;
use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchase_is_charged_once_and_the_sp_is_told() {
    for (backend, h) in Harness::each_backend().await {
        h.account("46700000001", 10_000).await;
        let purchase = h.create(&h.sp_key, 250, "order-1").await.unwrap();
        assert_eq!(purchase.state, pb::PurchaseState::Pending as i32, "{backend}");
        assert!(purchase.token.parse::<gtpcharge_proto::Token>().is_ok());
        let mut watch = h
            .purchases()
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: 0 }))
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.purchase.unwrap().state, pb::PurchaseState::Pending as i32);

        let result = h.report(&purchase.token, "46700000001").await;
        assert_eq!(outcome(&result), pb::SightingOutcome::Charged, "{backend}");
        let again = h.report(&purchase.token, "46700000001").await;
        assert_eq!(outcome(&again), pb::SightingOutcome::AlreadyCharged, "{backend}");
        assert_eq!(again.charged_msisdn, "46700000001");
        assert!(!again.other_subscriber);

        let change =
            tokio::time::timeout(std::time::Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        let charged = change.purchase.unwrap();
        assert_eq!(
            (charged.state, charged.charged_msisdn.as_str()),
            (pb::PurchaseState::Charged as i32, "46700000001"),
            "{backend}"
        );
        // Resuming from the first change's cursor sees the charge again, and nothing before it.
        let mut resumed = h
            .purchases()
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: first.cursor }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resumed.message().await.unwrap().unwrap().cursor, change.cursor);

        let account = h.ledger.get_account("46700000001").await.unwrap();
        assert_eq!((account.balance, account.spent_today), (9_750, 250), "{backend}");
        let fetched = h
            .purchases()
            .get_purchase(authed(
                &h.sp_key,
                pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(purchase.token.clone())) },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched.state, pb::PurchaseState::Charged as i32);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reports_of_one_token_charge_once() {
    for (backend, h) in Harness::each_backend().await {
        h.account("46700000002", 100_000).await;
        let purchase = h.create(&h.sp_key, 700, "race").await.unwrap();
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let client = h.sightings();
                let key = h.probe_key.clone();
                let token = purchase.token.clone();
                tokio::spawn(async move {
                    let mut client = client;
                    let request = pb::ReportSightingsRequest { sightings: vec![sighting(&token, "46700000002")] };
                    client.report_sightings(authed(&key, request)).await.unwrap().into_inner().results.remove(0)
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let charged = results.iter().filter(|r| outcome(r) == pb::SightingOutcome::Charged).count();
        assert_eq!(charged, 1, "{backend}: exactly one report charges");
        assert!(results
            .iter()
            .all(|r| matches!(outcome(r), pb::SightingOutcome::Charged | pb::SightingOutcome::AlreadyCharged)));
        assert!(
            results.iter().all(|r| r.purchase_id == results[0].purchase_id && r.charged_msisdn == "46700000002"),
            "{backend}: the same answer to all"
        );
        assert_eq!(h.ledger.get_account("46700000002").await.unwrap().balance, 99_300, "{backend}");
        assert_eq!(h.count("ledger_entries").await, 2 + 2, "{backend}: one adjustment pair, one charge pair");
        h.finish().await;
    }
}

/// The pool pings a connection only after it sat idle (`db.rs`, `PING_IDLE_AFTER`), not before every
/// use: connections the server closed while the pool held them idle must still be replaced before a
/// charge uses them, not fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_the_server_closed_while_idle_are_replaced_before_a_charge() {
    let Some((url, cleanup)) = postgres_database().await else { return };
    let (base, name) = cleanup.clone();
    let h = Harness::start(url, Some(cleanup)).await;
    h.account("46700000009", 10_000).await;
    let purchase = h.create(&h.sp_key, 300, "after-restart").await.unwrap();
    // Every pooled connection, as a server restart or an idle-session timeout would leave them.
    let admin = sqlx::AnyPool::connect(&base).await.unwrap();
    let closed = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1) AS t",
    )
    .bind(&name)
    .fetch_one(&admin)
    .await
    .unwrap();
    admin.close().await;
    use sqlx::Row;
    assert!(closed.try_get::<i64, _>("n").unwrap() > 0, "the ledger's pool had connections to close");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let result = h.report(&purchase.token, "46700000009").await;
    assert_eq!(outcome(&result), pb::SightingOutcome::Charged);
    assert_eq!(h.ledger.get_account("46700000009").await.unwrap().balance, 9_700);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_call_is_decided_in_order_as_if_reported_one_by_one() {
    for (backend, h) in Harness::each_backend().await {
        h.capped_account("46700000020", 1_000, Some(900)).await;
        let a = h.create(&h.sp_key, 400, "order-a").await.unwrap();
        let b = h.create(&h.sp_key, 400, "order-b").await.unwrap();
        let c = h.create(&h.sp_key, 400, "order-c").await.unwrap();
        let d = h.create(&h.sp_key, 50, "order-d").await.unwrap();
        let request = pb::ReportSightingsRequest {
            sightings: vec![
                sighting(&a.token, "46700000020"),
                sighting(&a.token, "46700000021"),
                sighting(&b.token, "46700000020"),
                sighting(&c.token, "46700000020"),
                sighting("not-a-token", "46700000020"),
                sighting(&d.token, "46700000020"),
                sighting(&b.token, "46700000020"),
            ],
        };
        let results = h.sightings().report_sightings(authed(&h.probe_key, request)).await.unwrap().into_inner().results;
        let seen: Vec<_> = results.iter().map(|r| (outcome(r), r.decline_reason, r.other_subscriber)).collect();
        use pb::DeclineReason as Why;
        use pb::SightingOutcome as O;
        assert_eq!(
            seen,
            vec![
                (O::Charged, Why::Unspecified as i32, false),
                // The same token again, from another subscriber, in the same call: charged once, flagged.
                (O::AlreadyCharged, Why::Unspecified as i32, true),
                (O::Charged, Why::Unspecified as i32, false),
                // The two charges before it count against the balance and the daily cap.
                (O::Declined, Why::DailyCap as i32, false),
                (O::UnknownToken, Why::Unspecified as i32, false),
                (O::Charged, Why::Unspecified as i32, false),
                (O::AlreadyCharged, Why::Unspecified as i32, false),
            ],
            "{backend}"
        );
        let account = h.ledger.get_account("46700000020").await.unwrap();
        assert_eq!((account.balance, account.spent_today), (150, 850), "{backend}");
        assert_eq!(h.count("sightings").await, 6, "{backend}: every sighting with a well-formed token is audited");
        assert_eq!(h.count("ledger_entries").await, 2 + 3 * 2, "{backend}");
        h.finish().await;
    }
}

/// Many transactions, each over several purchases and accounts listed in different orders, at once:
/// every purchase is decided once, every balance is the sum of its charges, and no transaction fails
/// (a lock-order deadlock would fail one with an error here, since the ledger is called directly).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_over_shared_rows_never_deadlock_and_charge_once() {
    use gtpcharge_billing_api::ledger::{Outcome, SightingReport};
    for (backend, h) in Harness::each_backend().await {
        const ACCOUNTS: usize = 5;
        const PURCHASES: usize = 40;
        for a in 0..ACCOUNTS {
            // Enough for about two thirds of the account's eight purchases: some are declined.
            h.account(&format!("4670000010{a}"), 300).await;
        }
        let mut tokens = Vec::new();
        for p in 0..PURCHASES {
            tokens.push(h.create(&h.sp_key, 30 + p as i64, &format!("mesh-{p}")).await.unwrap().token);
        }
        let tasks: Vec<_> = (0..16usize)
            .map(|t| {
                let ledger = h.ledger.clone();
                let probe = h.probe_key_id.clone();
                // Task t reports every third purchase from offset t, walking forward or backward, each
                // purchase always by the same subscriber (so the expected balances are known).
                let mut picked: Vec<usize> = (0..PURCHASES).filter(|p| (p + t) % 3 != 0).collect();
                if t % 2 == 1 {
                    picked.reverse();
                }
                let reports: Vec<(usize, SightingReport)> = picked
                    .into_iter()
                    .map(|p| {
                        let msisdn = format!("4670000010{}", p % ACCOUNTS);
                        (p, SightingReport { token: tokens[p].clone(), msisdn, seen_at_us: 1 })
                    })
                    .collect();
                tokio::spawn(async move {
                    let items: Vec<(&str, &SightingReport)> =
                        reports.iter().map(|(_, r)| (probe.as_str(), r)).collect();
                    let results = ledger.report_batch(&items).await.expect("no batch fails");
                    reports.iter().map(|(p, _)| *p).zip(results).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut charged_by = [0usize; PURCHASES];
        let mut declined = [false; PURCHASES];
        for task in tasks {
            for (p, result) in task.await.unwrap() {
                match result.outcome {
                    Outcome::Charged => charged_by[p] += 1,
                    Outcome::Declined => declined[p] = true,
                    Outcome::AlreadyCharged => {}
                    other => panic!("{backend}: purchase {p}: unexpected {other:?}"),
                }
            }
        }
        for p in 0..PURCHASES {
            assert!(charged_by[p] == 1 || (charged_by[p] == 0 && declined[p]), "{backend}: purchase {p}");
        }
        for a in 0..ACCOUNTS {
            let spent: i64 =
                (0..PURCHASES).filter(|p| p % ACCOUNTS == a && charged_by[*p] == 1).map(|p| 30 + p as i64).sum();
            let account = h.ledger.get_account(&format!("4670000010{a}")).await.unwrap();
            assert_eq!(account.balance, 300 - spent, "{backend}: account {a}");
            assert!(account.balance >= 0, "{backend}: a prepaid account never goes below zero");
        }
        let charges = charged_by.iter().sum::<usize>() as i64;
        assert!(charges > 0 && declined.iter().any(|d| *d), "{backend}: the mix has both charges and declines");
        assert_eq!(h.count("ledger_entries").await, ACCOUNTS as i64 * 2 + charges * 2, "{backend}");
        h.finish().await;
    }
}

/// Credentials are cached for a short time: a key revoked through another server sharing the database
/// stops working here within `CREDENTIAL_TTL` (one revoked through this server stops at once: see
/// `hostile_text_and_slow_watchers_change_nothing_else`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_elsewhere_stops_working_within_the_cache_time() {
    use gtpcharge_billing_api::ledger::CREDENTIAL_TTL;
    for (backend, h) in Harness::each_backend().await {
        let key = h.ledger.create_credential(Kind::Probe, None, "probe-elsewhere").await.unwrap();
        assert!(h.ledger.authenticate(&key.secret).await.is_ok(), "{backend}");
        let other_server = Ledger::new(h.ledger.db.clone());
        other_server.revoke(&key.key_id).await.unwrap();
        assert!(other_server.authenticate(&key.secret).await.is_err(), "{backend}: refused where it was revoked");
        tokio::time::sleep(CREDENTIAL_TTL + std::time::Duration::from_millis(100)).await;
        assert!(h.ledger.authenticate(&key.secret).await.is_err(), "{backend}: refused here once the cache expired");
        h.finish().await;
    }
}

/// The change stream is resumable by cursor, so cursors must become visible in order: a watcher that has
/// seen cursor N must never later find a change below N committed. Many transactions append changes at
/// once here (purchases created by several SPs' tasks, and charged through the batching queue) while a
/// watcher follows the stream; it must end up with every change, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_misses_no_change_when_many_commit_at_once() {
    for (backend, h) in Harness::each_backend().await {
        for a in 0..4 {
            h.account(&format!("4670000030{a}"), 1_000_000).await;
        }
        let mut watch = h
            .purchases()
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: 0 }))
            .await
            .unwrap()
            .into_inner();
        // Every purchase is created and then charged: 400 changes. A missed one never comes, so the
        // watcher stops on a quiet stream too (the assertions below then say what is missing).
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < 8 * 25 * 2 {
                let quiet = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message()).await;
                let Ok(Some(change)) = quiet.map(|m| m.unwrap()) else { break };
                seen.push(change.cursor);
            }
            seen
        });
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (purchases, sightings) = (h.purchases(), h.sightings());
                let (sp_key, probe_key) = (h.sp_key.clone(), h.probe_key.clone());
                tokio::spawn(async move {
                    let (mut purchases, mut sightings) = (purchases, sightings);
                    for i in 0..25 {
                        let request = pb::CreatePurchaseRequest {
                            product_id: "p".into(),
                            description: String::new(),
                            amount: 1,
                            currency: "EUR".into(),
                            expires_in_s: 600,
                            idempotency_key: format!("stream-{t}-{i}"),
                            ..Default::default()
                        };
                        let token =
                            purchases.create_purchase(authed(&sp_key, request)).await.unwrap().into_inner().token;
                        let report = pb::ReportSightingsRequest {
                            sightings: vec![sighting(&token, &format!("4670000030{}", t % 4))],
                        };
                        sightings.report_sightings(authed(&probe_key, report)).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let seen = watcher.await.unwrap();
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{backend}: no change twice");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{backend}: in cursor order");
        assert_eq!(seen.len() as i64, h.count("purchase_changes").await, "{backend}: every change, none missed");
        assert_eq!(seen.len(), 8 * 25 * 2, "{backend}: created and charged, 200 purchases");
        h.finish().await;
    }
}

/// The expiry sweep: a pending purchase past its expiry becomes expired and the SP is told exactly once,
/// although two sweeps run (the server's own, every second, and the ones called here); a purchase charged
/// before its expiry and one not yet due are left as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_expiry_sweep_tells_the_sp_once() {
    for (backend, h) in Harness::each_backend().await {
        h.account("46700000009", 1_000).await;
        let create = |key: &'static str, expires_in_s: i64| pb::CreatePurchaseRequest {
            product_id: "p".into(),
            description: String::new(),
            amount: 10,
            currency: "EUR".into(),
            expires_in_s,
            idempotency_key: key.into(),
            ..Default::default()
        };
        let mut purchases = h.purchases();
        let make = |key, expires_in_s| {
            let request = authed(&h.sp_key, create(key, expires_in_s));
            let mut client = purchases.clone();
            async move { client.create_purchase(request).await.unwrap().into_inner() }
        };
        let due = make("due", 1).await;
        let charged = make("charged-in-time", 1).await;
        let later = make("later", 600).await;
        assert_eq!(outcome(&h.report(&charged.token, "46700000009").await), pb::SightingOutcome::Charged, "{backend}");
        let mut watch = purchases
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: 0 }))
            .await
            .unwrap()
            .into_inner();
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        h.ledger.expire_due().await.unwrap();
        h.ledger.expire_due().await.unwrap();
        // Everything the SP hears until the stream has been quiet for 2.5 s (two more server sweeps), or
        // more than it should ever hear (a sweep repeating itself would never go quiet).
        let mut heard = Vec::new();
        while heard.len() <= 20 {
            let Ok(Some(change)) = tokio::time::timeout(std::time::Duration::from_millis(2_500), watch.message())
                .await
                .map(|m| m.unwrap())
            else {
                break;
            };
            let p = change.purchase.unwrap();
            heard.push((p.token, p.state));
        }
        let told = |token: &str, state: pb::PurchaseState| {
            heard.iter().filter(|(t, s)| t == token && *s == state as i32).count()
        };
        assert_eq!(told(&due.token, pb::PurchaseState::Expired), 1, "{backend}: {heard:?}");
        assert_eq!(told(&charged.token, pb::PurchaseState::Charged), 1, "{backend}: {heard:?}");
        assert_eq!(told(&charged.token, pb::PurchaseState::Expired), 0, "{backend}: {heard:?}");
        assert_eq!(told(&later.token, pb::PurchaseState::Expired), 0, "{backend}: {heard:?}");
        assert_eq!(heard.len(), 5, "{backend}: three creations, a charge, an expiry: {heard:?}");
        let state = |token: String| {
            let mut client = purchases.clone();
            let request =
                authed(&h.sp_key, pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(token)) });
            async move { client.get_purchase(request).await.unwrap().into_inner().state }
        };
        assert_eq!(state(due.token.clone()).await, pb::PurchaseState::Expired as i32, "{backend}");
        assert_eq!(state(charged.token.clone()).await, pb::PurchaseState::Charged as i32, "{backend}");
        assert_eq!(state(later.token.clone()).await, pb::PurchaseState::Pending as i32, "{backend}");
        assert_eq!(h.ledger.expire_due().await.unwrap(), 0, "{backend}: nothing left to expire");
        // A sighting of the expired token is answered as expired and charges nothing.
        assert_eq!(outcome(&h.report(&due.token, "46700000009").await), pb::SightingOutcome::Expired, "{backend}");
        assert_eq!(h.ledger.get_account("46700000009").await.unwrap().balance, 990, "{backend}");
        h.finish().await;
    }
}

/// The sweep reads only purchases expiring after its mark less the look-back: a purchase whose expiry lies
/// behind the mark (set by a server whose clock runs 5 s ahead, or passed before the purchase's creation
/// committed) is still expired; one further behind than the look-back is beyond what the sweep reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_expiry_sweep_looks_back_behind_its_mark() {
    use gtpcharge_billing_api::ledger::{now_us, EXPIRY_LOOK_BACK_US};
    for (backend, h) in Harness::each_backend().await {
        let set_mark = |at_us: i64| {
            let pool = h.ledger.db.pool.clone();
            async move {
                sqlx::query("UPDATE expiry_sweep SET swept_until_us = $1").bind(at_us).execute(&pool).await.unwrap();
            }
        };
        let state = |token: String| {
            let mut client = h.purchases();
            let request =
                authed(&h.sp_key, pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(token)) });
            async move { client.get_purchase(request).await.unwrap().into_inner().state }
        };
        let create = |key: &'static str| {
            let mut client = h.purchases();
            let request = authed(
                &h.sp_key,
                pb::CreatePurchaseRequest {
                    product_id: "p".into(),
                    description: String::new(),
                    amount: 10,
                    currency: "EUR".into(),
                    expires_in_s: 2,
                    idempotency_key: key.into(),
                    ..Default::default()
                },
            );
            async move { client.create_purchase(request).await.unwrap().into_inner() }
        };
        let behind = create("behind-the-mark").await;
        set_mark(now_us() + 5_000_000).await;
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        h.ledger.expire_due().await.unwrap();
        assert_eq!(state(behind.token).await, pb::PurchaseState::Expired as i32, "{backend}");

        let beyond = create("beyond-the-look-back").await;
        set_mark(now_us() + EXPIRY_LOOK_BACK_US + 5_000_000).await;
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        h.ledger.expire_due().await.unwrap();
        assert_eq!(state(beyond.token.clone()).await, pb::PurchaseState::Pending as i32, "{backend}");
        // A sighting of it is still answered as expired: charging checks the expiry itself.
        h.account("46700000010", 100).await;
        assert_eq!(outcome(&h.report(&beyond.token, "46700000010").await), pb::SightingOutcome::Expired, "{backend}");
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declines_expiry_cancel_and_second_subscriber() {
    for (backend, h) in Harness::each_backend().await {
        h.account("46700000003", 100).await;
        let expensive = h.create(&h.sp_key, 500, "too-much").await.unwrap();
        let r = h.report(&expensive.token, "46700000003").await;
        assert_eq!(
            (outcome(&r), r.decline_reason),
            (pb::SightingOutcome::Declined, pb::DeclineReason::InsufficientBalance as i32),
            "{backend}"
        );
        // A decline is final and repeats its answer.
        assert_eq!(outcome(&h.report(&expensive.token, "46700000003").await), pb::SightingOutcome::Declined);

        let unknown = h.create(&h.sp_key, 10, "nobody").await.unwrap();
        let r = h.report(&unknown.token, "46799999999").await;
        assert_eq!(r.decline_reason, pb::DeclineReason::UnknownSubscriber as i32, "{backend}");

        h.capped_account("46700000004", 1_000, Some(300)).await;
        let a = h.create(&h.sp_key, 200, "cap-a").await.unwrap();
        let b = h.create(&h.sp_key, 200, "cap-b").await.unwrap();
        assert_eq!(outcome(&h.report(&a.token, "46700000004").await), pb::SightingOutcome::Charged);
        assert_eq!(
            h.report(&b.token, "46700000004").await.decline_reason,
            pb::DeclineReason::DailyCap as i32,
            "{backend}"
        );

        let barred = AccountUpdate {
            msisdn: "46700000005".into(),
            currency: "EUR".into(),
            balance: Some(1_000),
            barred: Some(true),
            ..Default::default()
        };
        h.ledger.set_account(&barred).await.unwrap();
        let c = h.create(&h.sp_key, 10, "barred").await.unwrap();
        assert_eq!(h.report(&c.token, "46700000005").await.decline_reason, pb::DeclineReason::Barred as i32);

        let usd = AccountUpdate {
            msisdn: "46700000006".into(),
            currency: "USD".into(),
            balance: Some(1_000),
            ..Default::default()
        };
        h.ledger.set_account(&usd).await.unwrap();
        let d = h.create(&h.sp_key, 10, "usd").await.unwrap();
        assert_eq!(h.report(&d.token, "46700000006").await.decline_reason, pb::DeclineReason::CurrencyMismatch as i32);

        let e = h.create(&h.sp_key, 10, "cancel-me").await.unwrap();
        let cancelled = h
            .purchases()
            .cancel_purchase(authed(&h.sp_key, pb::CancelPurchaseRequest { id: e.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cancelled.state, pb::PurchaseState::Cancelled as i32);
        assert_eq!(outcome(&h.report(&e.token, "46700000004").await), pb::SightingOutcome::Cancelled);

        let short = pb::CreatePurchaseRequest {
            product_id: "p".into(),
            description: String::new(),
            amount: 5,
            currency: "EUR".into(),
            expires_in_s: 1,
            idempotency_key: "short".into(),
            ..Default::default()
        };
        let short = h.purchases().create_purchase(authed(&h.sp_key, short)).await.unwrap().into_inner();
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        assert_eq!(outcome(&h.report(&short.token, "46700000004").await), pb::SightingOutcome::Expired, "{backend}");

        // The token of a charged purchase seen from a second MSISDN: no second charge, flagged.
        let r = h.report(&a.token, "46700000001").await;
        assert_eq!(outcome(&r), pb::SightingOutcome::AlreadyCharged);
        assert!(r.other_subscriber, "{backend}");
        assert_eq!(h.ledger.get_account("46700000004").await.unwrap().balance, 800);

        // Forged tokens: right syntax and wrong check part; right check part and no purchase.
        let mut forged = a.token.clone().into_bytes();
        forged[10] = if forged[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            outcome(&h.report(std::str::from_utf8(&forged).unwrap(), "46700000004").await),
            pb::SightingOutcome::UnknownToken
        );
        let stranger = gtpcharge_proto::Token::generate().unwrap().to_string();
        assert_eq!(outcome(&h.report(&stranger, "46700000004").await), pb::SightingOutcome::UnknownToken);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_are_new_entries_and_idempotent() {
    for (backend, h) in Harness::each_backend().await {
        h.account("46700000007", 1_000).await;
        let p = h.create(&h.sp_key, 600, "refund-me").await.unwrap();
        assert_eq!(outcome(&h.report(&p.token, "46700000007").await), pb::SightingOutcome::Charged);
        let refund = |amount, key: &str| pb::RefundPurchaseRequest {
            id: p.id.clone(),
            amount,
            refund_key: key.into(),
            reason: "test".into(),
        };
        let first = h.purchases().refund_purchase(authed(&h.sp_key, refund(200, "r1"))).await.unwrap().into_inner();
        assert_eq!(first.refunded_now, 200);
        let repeat = h.purchases().refund_purchase(authed(&h.sp_key, refund(200, "r1"))).await.unwrap().into_inner();
        assert_eq!(repeat.purchase.unwrap().refunded_amount, 200, "{backend}: the same refund key moves money once");
        let too_much = h.purchases().refund_purchase(authed(&h.sp_key, refund(500, "r2"))).await.unwrap_err();
        assert_eq!(too_much.code(), Code::FailedPrecondition);
        let rest = h.purchases().refund_purchase(authed(&h.sp_key, refund(0, "r3"))).await.unwrap().into_inner();
        assert_eq!((rest.refunded_now, rest.purchase.unwrap().state), (400, pb::PurchaseState::Refunded as i32));
        assert_eq!(h.ledger.get_account("46700000007").await.unwrap().balance, 1_000, "{backend}");
        assert_eq!(outcome(&h.report(&p.token, "46700000007").await), pb::SightingOutcome::Refunded);
        let statement = h
            .accounts()
            .get_statement(authed(
                &h.operator_key,
                pb::GetStatementRequest { msisdn: "46700000007".into(), page_size: 10, page_token: String::new() },
            ))
            .await
            .unwrap()
            .into_inner();
        let kinds: Vec<&str> = statement.entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["refund", "refund", "charge", "adjustment"], "{backend}");
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    for (backend, h) in Harness::each_backend().await {
        h.account("46700000008", 1_000).await;
        let mine = h.create(&h.sp_key, 100, "mine").await.unwrap();
        let before = (h.count("purchases").await, h.count("ledger_entries").await, h.count("purchase_changes").await);
        let create = |amount: i64, currency: &str, key: &str| pb::CreatePurchaseRequest {
            product_id: "p".into(),
            description: "d".into(),
            amount,
            currency: currency.into(),
            expires_in_s: 60,
            idempotency_key: key.into(),
            ..Default::default()
        };
        let code = |r: Result<tonic::Response<pb::Purchase>, tonic::Status>| r.unwrap_err().code();
        let mut purchases = h.purchases();
        assert_eq!(code(purchases.create_purchase(Request::new(create(1, "EUR", "x"))).await), Code::Unauthenticated);
        assert_eq!(
            code(purchases.create_purchase(authed("gcsk_not_a_key", create(1, "EUR", "x"))).await),
            Code::Unauthenticated
        );
        assert_eq!(
            code(purchases.create_purchase(authed(&h.probe_key, create(1, "EUR", "x"))).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(purchases.create_purchase(authed(&h.sp_key, create(0, "EUR", "x"))).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(purchases.create_purchase(authed(&h.sp_key, create(-5, "EUR", "x"))).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(purchases.create_purchase(authed(&h.sp_key, create(5, "XYZ", "x"))).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(purchases.create_purchase(authed(&h.sp_key, create(5, "EUR", ""))).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(purchases.create_purchase(authed(&h.sp_key, create(5, "EUR", "mine"))).await),
            Code::AlreadyExists,
            "{backend}"
        );
        let mut huge = create(5, "EUR", "huge");
        huge.description = "x".repeat(2 << 20);
        let status = purchases.create_purchase(authed(&h.sp_key, huge)).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument),
            "{status:?}"
        );
        let sql = create(5, "EUR", "'); DROP TABLE purchases; --");
        assert!(purchases.create_purchase(authed(&h.sp_key, sql)).await.is_ok(), "SQL-shaped text is stored as text");
        // Another SP's purchase does not exist for this caller, by id or by token.
        let by_id = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Id(mine.id.clone())) };
        assert_eq!(purchases.get_purchase(authed(&h.other_sp_key, by_id)).await.unwrap_err().code(), Code::NotFound);
        let by_token = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(mine.token.clone())) };
        assert_eq!(purchases.get_purchase(authed(&h.other_sp_key, by_token)).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(
            purchases
                .cancel_purchase(authed(&h.other_sp_key, pb::CancelPurchaseRequest { id: mine.id.clone() }))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        assert_eq!(
            purchases
                .cancel_purchase(authed(&h.sp_key, pb::CancelPurchaseRequest { id: "abc".into() }))
                .await
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        let refund = pb::RefundPurchaseRequest {
            id: mine.id.clone(),
            amount: 10,
            refund_key: "k".into(),
            reason: String::new(),
        };
        assert_eq!(
            purchases.refund_purchase(authed(&h.sp_key, refund)).await.unwrap_err().code(),
            Code::FailedPrecondition,
            "refund of a pending purchase"
        );
        let list = pb::ListPurchasesRequest { page_size: 100_000, ..Default::default() };
        assert_eq!(purchases.list_purchases(authed(&h.sp_key, list)).await.unwrap_err().code(), Code::InvalidArgument);
        let mut sightings = h.sightings();
        let too_many = pb::ReportSightingsRequest { sightings: vec![sighting(&mine.token, "46700000008"); 1001] };
        assert_eq!(
            sightings.report_sightings(authed(&h.probe_key, too_many)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let bad_msisdn = pb::ReportSightingsRequest {
            sightings: vec![sighting(&mine.token, "46700000008"), sighting(&mine.token, "+46 70")],
        };
        assert_eq!(
            sightings.report_sightings(authed(&h.probe_key, bad_msisdn)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let with_sp_key = pb::ReportSightingsRequest { sightings: vec![sighting(&mine.token, "46700000008")] };
        assert_eq!(
            sightings.report_sightings(authed(&h.sp_key, with_sp_key)).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let mut accounts = h.accounts();
        let set = pb::SetAccountRequest {
            msisdn: "46700000009".into(),
            currency: "EUR".into(),
            balance: Some(5),
            ..Default::default()
        };
        assert_eq!(
            accounts.set_account(authed(&h.sp_key, set.clone())).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let bad_currency = pb::SetAccountRequest { currency: "EURO".into(), ..set.clone() };
        assert_eq!(
            accounts.set_account(authed(&h.operator_key, bad_currency)).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let other_currency =
            pb::SetAccountRequest { msisdn: "46700000008".into(), currency: "USD".into(), ..set.clone() };
        assert_eq!(
            accounts.set_account(authed(&h.operator_key, other_currency)).await.unwrap_err().code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            accounts
                .get_account(authed(&h.operator_key, pb::GetAccountRequest { msisdn: "46711111111".into() }))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        // Nothing above changed money or state (the SQL-shaped purchase is the one accepted call).
        assert_eq!(h.count("purchases").await, before.0 + 1, "{backend}");
        assert_eq!(h.count("ledger_entries").await, before.1, "{backend}");
        assert_eq!(h.count("purchase_changes").await, before.2 + 1, "{backend}");
        assert_eq!(h.ledger.get_account("46700000008").await.unwrap().balance, 1_000);
        // A revoked key stops working.
        let key = accounts
            .create_api_key(authed(&h.operator_key, pb::CreateApiKeyRequest { service_provider_id: "1".into() }))
            .await
            .unwrap()
            .into_inner();
        assert!(h.create(&key.secret, 5, "with-new-key").await.is_ok());
        accounts.revoke_key(authed(&h.operator_key, pb::RevokeKeyRequest { key_id: key.key_id })).await.unwrap();
        assert_eq!(
            h.create(&key.secret, 5, "after-revoke").await.unwrap_err().code(),
            Code::Unauthenticated,
            "{backend}"
        );
        let _ = &h.probe_key_id;
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_idempotent_create() {
    for (backend, h) in Harness::each_backend().await {
        let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: "gtpcharge.v1.SightingService".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{backend}");
        let a = h.create(&h.sp_key, 42, "same").await.unwrap();
        let b = h.create(&h.sp_key, 42, "same").await.unwrap();
        assert_eq!((a.id, a.token), (b.id, b.token), "{backend}: a retried create returns the same purchase");
        let listed = h
            .purchases()
            .list_purchases(authed(&h.sp_key, pb::ListPurchasesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.purchases.len(), 1);
        let other = h
            .purchases()
            .list_purchases(authed(&h.other_sp_key, pb::ListPurchasesRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(other.purchases.is_empty(), "{backend}: an SP sees only its own purchases");
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_text_and_slow_watchers_change_nothing_else() {
    for (backend, h) in Harness::each_backend().await {
        let sql = "'); DROP TABLE ledger_entries; -- \" OR 1=1 ; SELECT * FROM credentials; \\x00";
        let sql = sql.replace("\\x00", "");
        // Every text field of every write takes SQL-shaped text as plain text.
        let create = pb::CreatePurchaseRequest {
            product_id: sql.clone(),
            description: sql.clone(),
            amount: 10,
            currency: "EUR".into(),
            expires_in_s: 60,
            idempotency_key: sql.clone(),
            ..Default::default()
        };
        let p = h.purchases().create_purchase(authed(&h.sp_key, create)).await.unwrap().into_inner();
        assert_eq!(
            (p.product_id.as_str(), p.description.as_str(), p.idempotency_key.as_str()),
            (sql.as_str(), sql.as_str(), sql.as_str())
        );
        h.account("46700000010", 100).await;
        assert_eq!(outcome(&h.report(&p.token, "46700000010").await), pb::SightingOutcome::Charged);
        let refund =
            pb::RefundPurchaseRequest { id: p.id.clone(), amount: 1, refund_key: sql.clone(), reason: sql.clone() };
        assert_eq!(
            h.purchases().refund_purchase(authed(&h.sp_key, refund)).await.unwrap().into_inner().refunded_now,
            1
        );
        let sp = pb::CreateServiceProviderRequest { name: sql.clone(), allow_network_consent: true };
        assert!(h.accounts().create_service_provider(authed(&h.operator_key, sp)).await.is_ok());
        let sighting_with_sql = pb::ReportSightingsRequest {
            sightings: vec![pb::Sighting {
                token: sql.chars().take(60).collect(),
                ..sighting(&p.token, "46700000010")
            }],
        };
        let r = h.sightings().report_sightings(authed(&h.probe_key, sighting_with_sql)).await.unwrap().into_inner();
        assert_eq!(outcome(&r.results[0]), pb::SightingOutcome::UnknownToken);
        let list = pb::ListPurchasesRequest { product_id: sql.clone(), ..Default::default() };
        assert_eq!(
            h.purchases().list_purchases(authed(&h.sp_key, list)).await.unwrap().into_inner().purchases.len(),
            1,
            "{backend}"
        );
        assert!(h.count("ledger_entries").await >= 6, "{backend}: the table is still there");

        // A client that opens WatchPurchases and never reads: the server holds a bounded buffer for it
        // and goes on serving everyone else.
        let slow = h
            .purchases()
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: 0 }))
            .await
            .unwrap();
        for i in 0..150 {
            h.create(&h.sp_key, 1, &format!("flood-{i}")).await.unwrap();
        }
        let started = std::time::Instant::now();
        let fresh = h.create(&h.sp_key, 1, "after-flood").await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{backend}: a slow watcher slowed everyone");
        let mut reader = h
            .purchases()
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: 0 }))
            .await
            .unwrap()
            .into_inner();
        let mut seen = 0;
        while let Some(change) =
            tokio::time::timeout(std::time::Duration::from_secs(5), reader.message()).await.unwrap().unwrap()
        {
            seen += 1;
            if change.purchase.unwrap().id == fresh.id {
                break;
            }
        }
        assert!(seen >= 152, "{backend}: a reading watcher gets every change ({seen})");
        drop(slow);
        h.finish().await;
    }
}

/// Sends raw bytes as a gRPC request body, to put what no well-behaved client would on the wire.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = bytes::Buf::copy_to_bytes(src, bytes::Buf::remaining(src));
        Ok(Some(bytes.to_vec()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_and_garbage_messages_are_refused_and_change_nothing() {
    for (backend, h) in Harness::each_backend().await {
        let sightings_before = h.count("sightings").await;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/gtpcharge.v1.SightingService/ReportSightings");
        // A Sighting (field 1) holding an unknown group (field 99) nested 50,000 deep.
        let mut inner = Vec::new();
        for _ in 0..50_000 {
            inner.extend_from_slice(&[0x9B, 0x06]); // field 99, wire type 3 (start group)
        }
        for _ in 0..50_000 {
            inner.extend_from_slice(&[0x9C, 0x06]); // field 99, wire type 4 (end group)
        }
        let mut nested = vec![0x0A];
        let mut len = inner.len();
        while len >= 0x80 {
            nested.push((len as u8 & 0x7F) | 0x80);
            len >>= 7;
        }
        nested.push(len as u8);
        nested.extend_from_slice(&inner);
        let garbage = vec![0xFF; 4096];
        for body in [nested, garbage] {
            let mut grpc = tonic::client::Grpc::new(h.channel.clone());
            grpc.ready().await.unwrap();
            let status = grpc.unary(authed(&h.probe_key, body), path.clone(), RawCodec).await.unwrap_err();
            assert_ne!(status.code(), Code::Ok, "{backend}");
        }
        assert_eq!(h.count("sightings").await, sightings_before, "{backend}: nothing recorded");
        // The server is still serving.
        let fresh = h.create(&h.sp_key, 5, "after-garbage").await.unwrap();
        h.account("46700000011", 100).await;
        assert_eq!(outcome(&h.report(&fresh.token, "46700000011").await), pb::SightingOutcome::Charged, "{backend}");
        h.finish().await;
    }
}

/// A peer that keeps sending bad keys is slowed: its first five failures are answered at once, then each
/// waits 250 ms, 500 ms, ... (a lower bound: a slow machine cannot make this pass wrongly); a good key from
/// the same peer is still served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_keys_from_one_peer_are_delayed() {
    let h = Harness::start("sqlite://{dir}/ledger.sqlite?mode=rwc".into(), None).await;
    let mut elapsed = Vec::new();
    for _ in 0..7 {
        let started = std::time::Instant::now();
        let status = h.create("gcsk_not_a_key_at_all", 1, "k").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(!status.message().contains("gcsk_not_a_key_at_all"), "the refusal echoes the key");
        elapsed.push(started.elapsed());
    }
    assert!(elapsed[5] >= std::time::Duration::from_millis(250), "the 6th failure was not delayed: {elapsed:?}");
    assert!(elapsed[6] >= std::time::Duration::from_millis(500), "the 7th failure was not delayed more: {elapsed:?}");
    let started = std::time::Instant::now();
    h.create(&h.sp_key, 1, "good").await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_millis(250), "a good key is not slowed");
    h.finish().await;
}

/// Every operator action through the AccountService leaves an audit record naming the operator's key
/// id, the action and its subject, and no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_through_the_api_are_audited() {
    for (backend, h) in Harness::each_backend().await {
        let mut a = h.accounts();
        let set = pb::SetAccountRequest {
            msisdn: "46700000077".into(),
            currency: "EUR".into(),
            balance: Some(500),
            ..Default::default()
        };
        a.set_account(authed(&h.operator_key, set)).await.unwrap();
        let sp = pb::CreateServiceProviderRequest { name: "audited-sp".into(), allow_network_consent: true };
        let credential = a.create_service_provider(authed(&h.operator_key, sp)).await.unwrap().into_inner();
        let key = pb::CreateApiKeyRequest { service_provider_id: credential.service_provider_id.clone() };
        let second = a.create_api_key(authed(&h.operator_key, key)).await.unwrap().into_inner();
        let revoke = pb::RevokeKeyRequest { key_id: second.key_id.clone() };
        a.revoke_key(authed(&h.operator_key, revoke)).await.unwrap();
        let records = h.ledger.audit_records(10, None).await.unwrap();
        let seen: Vec<(&str, &str)> = records.iter().rev().map(|r| (r.action.as_str(), r.subject.as_str())).collect();
        assert_eq!(
            seen,
            [
                ("account.set", "46700000077"),
                ("sp.create", credential.service_provider_id.as_str()),
                ("key.create", second.key_id.as_str()),
                ("key.revoke", second.key_id.as_str()),
            ],
            "{backend}"
        );
        let operator_key_id = &h.operator_key_id;
        for record in &records {
            assert_eq!(record.actor, format!("operator key {operator_key_id}"), "{backend}");
            for secret in [&credential.secret, &second.secret, &h.operator_key] {
                assert!(!record.detail.contains(secret.as_str()) && !record.subject.contains(secret.as_str()));
            }
        }
        assert!(records[3].detail.contains("balance=500"), "{backend}: {:?}", records[3]);
        h.finish().await;
    }
}

/// The database itself refuses what the money rules forbid, whatever the code does: a second charge of a
/// purchase (one charge entry per side and purchase), a state or a decline reason the API does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_a_second_charge_and_unknown_states() {
    for (backend, h) in Harness::each_backend().await {
        let p = h.create(&h.sp_key, 100, "backstop").await.unwrap();
        h.account("46700000055", 1000).await;
        assert_eq!(outcome(&h.report(&p.token, "46700000055").await), pb::SightingOutcome::Charged);
        let id: i64 = p.id.parse().unwrap();
        let pool = &h.ledger.db.pool;
        for side in ["subscriber", "sp"] {
            let again = sqlx::query(
                "INSERT INTO ledger_entries (movement_id, at_us, kind, account_type, account_ref, currency, amount, purchase_id) \
                 VALUES ('again', 1, 'charge', $1, 'x', 'EUR', 0, $2)",
            )
            .bind(side)
            .bind(id)
            .execute(pool)
            .await;
            assert!(again.is_err(), "{backend}: a second {side} charge entry was stored");
        }
        let bogus = sqlx::query("UPDATE purchases SET state = 'paid' WHERE id = $1").bind(id).execute(pool).await;
        assert!(bogus.is_err(), "{backend}: an unknown state was stored");
        let bogus = sqlx::query("UPDATE purchases SET decline_reason = 'felt-like-it' WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await;
        assert!(bogus.is_err(), "{backend}: an unknown decline reason was stored");
        // A refund entry for the same purchase is not a charge: allowed.
        let refund = sqlx::query(
            "INSERT INTO ledger_entries (movement_id, at_us, kind, account_type, account_ref, currency, amount, purchase_id) \
             VALUES ('r', 1, 'refund', 'subscriber', 'x', 'EUR', 0, $1)",
        )
        .bind(id)
        .execute(pool)
        .await;
        assert!(refund.is_ok(), "{backend}: {refund:?}");
        h.finish().await;
    }
}

/// Reflection answers in both of its versions: v1 (grpcurl) and v1alpha (what Python's grpcio-reflection
/// and other common clients ask first), each listing the three services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1_and_v1alpha() {
    let h = Harness::start("sqlite://{dir}/ledger.sqlite?mode=rwc".into(), None).await;
    let wanted = ["gtpcharge.v1.AccountService", "gtpcharge.v1.PurchaseService", "gtpcharge.v1.SightingService"];
    // The two versions' generated types share their names, not their types: one body, spelled twice.
    macro_rules! list_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{
                server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut client = ServerReflectionClient::new(h.channel.clone());
            let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
            let answer = answers.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
                panic!("{}: {answer:?}", stringify!($version))
            };
            list.service.into_iter().map(|s| s.name).collect::<Vec<String>>()
        }};
    }
    for (version, names) in [("v1alpha", list_services!(v1alpha)), ("v1", list_services!(v1))] {
        assert!(wanted.iter().all(|w| names.iter().any(|n| n == w)), "{version}: {names:?}");
    }
    h.finish().await;
}

/// The two schemas are one truth: after the migrations, PostgreSQL and SQLite have the same tables, the
/// same columns with the same nullability, and the same named indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_and_sqlite_schemas_agree() {
    use std::collections::BTreeSet;
    let backends = Harness::each_backend().await;
    if backends.len() < 2 {
        not_run::not_run("SCHEMA PARITY", "needs PostgreSQL (GTPCHARGE_TEST_DATABASE_URL)");
    }
    let mut shapes: Vec<(&str, BTreeSet<String>, BTreeSet<String>)> = Vec::new();
    for (backend, h) in backends {
        let pool = &h.ledger.db.pool;
        let (columns_sql, indexes_sql) = if backend == "postgres" {
            (
                "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT), \
                 CAST(CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END AS BIGINT) \
                 FROM information_schema.columns WHERE table_schema = current_schema()",
                "SELECT CAST(indexname AS TEXT) FROM pg_indexes WHERE schemaname = current_schema() \
                 AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
            )
        } else {
            (
                "SELECT m.name, p.name, CAST(CASE WHEN p.\"notnull\" = 1 OR p.pk > 0 THEN 1 ELSE 0 END AS BIGINT) \
                 FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table' \
                 AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite\\_autoindex%' ESCAPE '\\'",
            )
        };
        let columns: Vec<(String, String, i64)> = sqlx::query_as(columns_sql).fetch_all(pool).await.unwrap();
        let indexes: Vec<(String,)> = sqlx::query_as(indexes_sql).fetch_all(pool).await.unwrap();
        let columns = columns
            .into_iter()
            .filter(|(table, _, _)| table != "_sqlx_migrations")
            .map(|(table, column, not_null)| {
                format!("{table}.{column}{}", if not_null == 1 { " NOT NULL" } else { "" })
            })
            .collect();
        shapes.push((backend, columns, indexes.into_iter().map(|(name,)| name).collect()));
        h.finish().await;
    }
    if let [(_, sqlite_columns, sqlite_indexes), (_, pg_columns, pg_indexes)] = shapes.as_slice() {
        assert!(sqlite_columns.len() > 50, "{sqlite_columns:?}");
        assert_eq!(sqlite_columns.symmetric_difference(pg_columns).collect::<Vec<_>>(), Vec::<&String>::new());
        assert!(sqlite_indexes.contains("ledger_one_charge_per_purchase"), "{sqlite_indexes:?}");
        assert_eq!(sqlite_indexes.symmetric_difference(pg_indexes).collect::<Vec<_>>(), Vec::<&String>::new());
    }
}

/// SQL-shaped text in every string field of every RPC. Where the API stores the field, it reads back
/// exactly as sent (through the API where an RPC returns it, else from the table); where the field is an
/// identifier, a number, a currency or an MSISDN, the call is refused with INVALID_ARGUMENT or NOT_FOUND
/// (never INTERNAL) and changes nothing; fields the API does not keep (a sighting's IMSI, UE address,
/// carrier and probe id) leave the charge as it would be. The tables survive and the ledger balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_shaped_text_in_every_field_of_every_rpc() {
    const SQL: &str = "x'); DROP TABLE purchases; SELECT * FROM credentials WHERE '1'='1' --";
    const SQL_TOKEN: &str = "x'); DROP TABLE purchases; --"; // a token field holds 64 bytes at most
    let refused = |what: &str, status: tonic::Status| {
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::NotFound),
            "{what}: {:?} {}",
            status.code(),
            status.message()
        );
    };
    for (backend, h) in Harness::each_backend().await {
        let tables = ["purchases", "credentials", "ledger_entries", "refunds", "sightings", "accounts"];
        let mut p = h.purchases();
        let mut a = h.accounts();
        // CreatePurchase: the three free-text fields kept; SQL for a currency refused.
        let create = pb::CreatePurchaseRequest {
            product_id: SQL.into(),
            description: SQL.into(),
            amount: 10,
            currency: "EUR".into(),
            expires_in_s: 60,
            idempotency_key: SQL.into(),
            ..Default::default()
        };
        let created = p.create_purchase(authed(&h.sp_key, create.clone())).await.unwrap().into_inner();
        let bad_currency = pb::CreatePurchaseRequest { currency: SQL.into(), idempotency_key: "c".into(), ..create };
        refused("CreatePurchase.currency", p.create_purchase(authed(&h.sp_key, bad_currency)).await.unwrap_err());
        // GetPurchase by id and by token; the purchase read back.
        for key in [pb::get_purchase_request::Key::Id(SQL.into()), pb::get_purchase_request::Key::Token(SQL.into())] {
            let request = pb::GetPurchaseRequest { key: Some(key) };
            refused("GetPurchase", p.get_purchase(authed(&h.sp_key, request)).await.unwrap_err());
        }
        let by_id = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Id(created.id.clone())) };
        let read = p.get_purchase(authed(&h.sp_key, by_id)).await.unwrap().into_inner();
        assert_eq!(
            (read.product_id.as_str(), read.description.as_str(), read.idempotency_key.as_str()),
            (SQL, SQL, SQL),
            "{backend}"
        );
        // ListPurchases: a product filter matches the text as text; a page token is a number.
        let list = pb::ListPurchasesRequest { product_id: SQL.into(), ..Default::default() };
        let listed = p.list_purchases(authed(&h.sp_key, list)).await.unwrap().into_inner().purchases;
        assert_eq!(listed.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), [created.id.as_str()], "{backend}");
        let list = pb::ListPurchasesRequest { page_token: SQL.into(), ..Default::default() };
        refused("ListPurchases.page_token", p.list_purchases(authed(&h.sp_key, list)).await.unwrap_err());
        // CancelPurchase and RefundPurchase by an SQL id.
        let cancel = pb::CancelPurchaseRequest { id: SQL.into() };
        refused("CancelPurchase.id", p.cancel_purchase(authed(&h.sp_key, cancel)).await.unwrap_err());
        let refund =
            pb::RefundPurchaseRequest { id: SQL.into(), amount: 1, refund_key: "r".into(), reason: "r".into() };
        refused("RefundPurchase.id", p.refund_purchase(authed(&h.sp_key, refund)).await.unwrap_err());
        // ReportSightings: an SQL MSISDN refuses the batch; SQL in the fields not kept changes nothing;
        // an SQL token is unknown.
        let mut hostile = sighting(&created.token, SQL);
        let batch = pb::ReportSightingsRequest { sightings: vec![hostile.clone()] };
        refused(
            "ReportSightings.msisdn",
            h.sightings().report_sightings(authed(&h.probe_key, batch)).await.unwrap_err(),
        );
        h.account("46700000010", 100).await;
        hostile.msisdn = "46700000010".into();
        (hostile.imsi, hostile.ue_ip, hostile.r#where, hostile.probe_sighting_id) =
            (SQL.into(), SQL.into(), SQL.into(), SQL.into());
        let batch = pb::ReportSightingsRequest {
            sightings: vec![hostile.clone(), pb::Sighting { token: SQL_TOKEN.into(), ..hostile.clone() }],
        };
        let results = h.sightings().report_sightings(authed(&h.probe_key, batch)).await.unwrap().into_inner().results;
        assert_eq!(
            results.iter().map(outcome).collect::<Vec<_>>(),
            [pb::SightingOutcome::Charged, pb::SightingOutcome::UnknownToken],
            "{backend}"
        );
        // The audit table holds the charge as reported; a text that is no token is answered, not kept.
        let audited: Vec<(String, String, String)> =
            sqlx::query_as("SELECT token, msisdn, outcome FROM sightings").fetch_all(&h.ledger.db.pool).await.unwrap();
        assert_eq!(audited, [(created.token.clone(), "46700000010".to_owned(), "charged".to_owned())], "{backend}");
        // RefundPurchase: the refund key and reason kept as sent.
        let refund =
            pb::RefundPurchaseRequest { id: created.id.clone(), amount: 1, refund_key: SQL.into(), reason: SQL.into() };
        assert_eq!(p.refund_purchase(authed(&h.sp_key, refund)).await.unwrap().into_inner().refunded_now, 1);
        let (key, reason): (String, String) =
            sqlx::query_as("SELECT refund_key, reason FROM refunds").fetch_one(&h.ledger.db.pool).await.unwrap();
        assert_eq!((key.as_str(), reason.as_str()), (SQL, SQL), "{backend}");
        // SetAccount, GetAccount, GetStatement: an MSISDN, a currency and a page token are not text.
        let set = pb::SetAccountRequest { msisdn: SQL.into(), currency: "EUR".into(), ..Default::default() };
        refused("SetAccount.msisdn", a.set_account(authed(&h.operator_key, set)).await.unwrap_err());
        let set = pb::SetAccountRequest { msisdn: "46700000011".into(), currency: SQL.into(), ..Default::default() };
        refused("SetAccount.currency", a.set_account(authed(&h.operator_key, set)).await.unwrap_err());
        let get = pb::GetAccountRequest { msisdn: SQL.into() };
        refused("GetAccount.msisdn", a.get_account(authed(&h.operator_key, get)).await.unwrap_err());
        for (msisdn, page_token) in [(SQL, ""), ("46700000010", SQL)] {
            let statement =
                pb::GetStatementRequest { msisdn: msisdn.into(), page_size: 10, page_token: page_token.into() };
            refused("GetStatement", a.get_statement(authed(&h.operator_key, statement)).await.unwrap_err());
        }
        // CreateServiceProvider keeps the name; CreateApiKey and RevokeKey take identifiers.
        let sp = pb::CreateServiceProviderRequest { name: SQL.into(), allow_network_consent: true };
        let credential = a.create_service_provider(authed(&h.operator_key, sp)).await.unwrap().into_inner();
        let (name,): (String,) = sqlx::query_as(&format!(
            "SELECT name FROM service_providers WHERE id = {}",
            credential.service_provider_id.parse::<i64>().unwrap()
        ))
        .fetch_one(&h.ledger.db.pool)
        .await
        .unwrap();
        assert_eq!(name, SQL, "{backend}");
        let key = pb::CreateApiKeyRequest { service_provider_id: SQL.into() };
        refused("CreateApiKey.service_provider_id", a.create_api_key(authed(&h.operator_key, key)).await.unwrap_err());
        let revoke = pb::RevokeKeyRequest { key_id: SQL.into() };
        refused("RevokeKey.key_id", a.revoke_key(authed(&h.operator_key, revoke)).await.unwrap_err());
        // Nothing else moved: one purchase, charged once, refunded by 1; every table still there.
        let read = p
            .get_purchase(authed(
                &h.sp_key,
                pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Id(created.id.clone())) },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((read.state, read.refunded_amount), (pb::PurchaseState::Charged as i32, 1), "{backend}");
        for table in tables {
            assert!(h.count(table).await >= 1, "{backend}: {table}");
        }
        h.finish().await;
    }
}

/// The charging path writes its JSON into simple queries as dollar-quoted constants: whatever the text
/// holds (quotes, backslashes, dollar signs, the quoting tag itself), PostgreSQL reads back exactly it.
#[tokio::test]
async fn postgres_reads_back_every_literal_as_written() {
    let Ok(url) = std::env::var("GTPCHARGE_TEST_DATABASE_URL") else {
        not_run::not_run("POSTGRESQL LITERALS", "GTPCHARGE_TEST_DATABASE_URL is not set (.ci/test sets it)");
        return;
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect to the test PostgreSQL");
    let texts = [
        "",
        "plain",
        "it's \"quoted\" \\ and \\\\ escaped",
        "$",
        "$$",
        "$g$",
        "a$g$b$gg$c",
        "ends with $g",
        "ends with $gg",
        "$g$g",
        "ends with $",
        "$g$$gg$$ggg$",
        "{\"msisdn\":\"4690\",\"note\":\"$g$'); DROP TABLE x; --\"}",
        "tab\tnewline\nunicode é ✓",
    ];
    for text in texts {
        let literal = gtpcharge_billing_api::db::pg_literal(text);
        let rows = pool.fetch_all(sqlx::raw_sql(&format!("SELECT {literal}::text AS t; SELECT 1 AS one"))).await;
        let rows = rows.unwrap_or_else(|e| panic!("{text:?} as {literal}: {e}"));
        use sqlx::Row;
        assert_eq!(rows.len(), 2, "{text:?} as {literal}: one row per statement");
        assert_eq!(rows[0].try_get::<String, _>("t").unwrap(), text, "as {literal}");
    }
}

/// Every pooled PostgreSQL connection prepares the charging path's two statements when it opens (after
/// the migrations made the tables they name), and charging runs them: a new database, two connections
/// at once, both hold them; a charge through one of them runs the write from its prepared plan.
#[tokio::test]
async fn postgres_connections_prepare_the_charging_statements() {
    let Some((url, (base, name))) = postgres_database().await else { return };
    let db = Db::connect(&url, gtpcharge_billing_api::ledger::postgres_prepared())
        .await
        .expect("a new database is migrated and pooled");
    let names = "SELECT string_agg(name, ',' ORDER BY name) AS names, \
                 COALESCE(SUM(generic_plans + custom_plans), 0)::BIGINT AS runs FROM pg_prepared_statements";
    let mut first = db.pool.acquire().await.unwrap();
    let mut second = db.pool.acquire().await.unwrap();
    for connection in [&mut first, &mut second] {
        let row = connection.fetch_one(sqlx::raw_sql(names)).await.unwrap();
        use sqlx::Row;
        let prepared: String = row.try_get("names").unwrap();
        assert!(
            prepared.contains("gtpcharge_charge_lock") && prepared.contains("gtpcharge_charge_write"),
            "prepared on connect: {prepared}"
        );
    }
    drop(second);
    // With one connection in the pool free, the ledger's charge takes that one.
    let ledger = Ledger::new(db.clone());
    let (sp, _) = ledger.create_service_provider("prepared", true).await.unwrap();
    let update = AccountUpdate {
        msisdn: "46700000001".into(),
        currency: "EUR".into(),
        balance: Some(1000),
        ..Default::default()
    };
    ledger.set_account(&update).await.unwrap();
    let new = gtpcharge_billing_api::ledger::NewPurchase {
        product_id: "p".into(),
        description: String::new(),
        amount: 5,
        currency: "EUR".into(),
        expires_in_s: 600,
        idempotency_key: "prepared-1".into(),
        ..Default::default()
    };
    let token = ledger.create_purchase(sp, &new).await.unwrap().token;
    let sighting = gtpcharge_billing_api::ledger::SightingReport { token, msisdn: "46700000001".into(), seen_at_us: 0 };
    let results = ledger.report_batch(&[("probe", &sighting)]).await.unwrap();
    assert_eq!(results.len(), 1);
    let after = ledger.get_account("46700000001").await.unwrap();
    assert_eq!(after.balance, 995, "charged once through the prepared statements");
    drop(first);
    // Every connection of the pool, held at once: the charge ran on one of them (sqlx hands a dropped
    // connection back to the pool from a task, so a busy machine may have opened a third meanwhile).
    let mut held = Vec::new();
    for _ in 0..db.pool.size() {
        held.push(db.pool.acquire().await.unwrap());
    }
    let mut runs = 0i64;
    for connection in &mut held {
        use sqlx::Row;
        runs += connection.fetch_one(sqlx::raw_sql(names)).await.unwrap().try_get::<i64, _>("runs").unwrap();
    }
    drop(held);
    assert!(runs >= 2, "the lock and the write ran as prepared statements: {runs} runs");
    db.pool.close().await;
    let admin = sqlx::AnyPool::connect(&base).await.unwrap();
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
}
