//! Load benchmark of the charging path (not a test): N purchases are created, then reported by C
//! concurrent callers (one HTTP/2 connection, C calls in flight on it) through gRPC into the ledger;
//! prints charges/s and p50/p99 latency of ReportSightings. `benches/billing-load.sh` runs it beside pgbench on the same PostgreSQL.
//!
//! With RATE (charges/s) the load is open: calls of BATCH sightings start on a fixed schedule, as many at
//! once as it takes, and latency counts from each call's scheduled start.
//!
//! A warm-up (a tenth as many charges, at least 200, closed loop) runs first and is not counted: the
//! pool's connections, their prepared statements and the credential cache are then as a running server
//! has them. LOAD_TRACE=FILE writes each measured call's start and latency (ms), to see when slow calls
//! happened; LOAD_WARMUP=N sets the warm-up's charges (0: measure a cold start); LOAD_ACCOUNTS=N the
//! number of accounts (default: one per 100 charges). LOAD_GROUP_COMMIT=N caps the sightings one
//! transaction takes from waiting calls (default 32; 1 turns group commit off, so a transaction holds
//! exactly one call's BATCH sightings) and LOAD_WORKERS=N the transactions in flight (default 2).
//!
//! cargo run --release -p gtpcharge-billing-api --example load -- DATABASE_URL [CHARGES] [CONCURRENCY] [BATCH] [RATE]
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::{AccountUpdate, NewPurchase};
use gtpcharge_billing_api::Ledger;
use gtpcharge_proto::v1 as pb;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).ok_or("usage: load DATABASE_URL [CHARGES] [CONCURRENCY] [BATCH] [RATE]")?.clone();
    let charges: usize = args.get(2).map_or(Ok(5_000), |s| s.parse())?;
    let concurrency: usize = args.get(3).map_or(Ok(16), |s| s.parse())?;
    let batch: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    let rate: f64 = args.get(5).map_or(Ok(0.0), |s| s.parse())?;
    let ledger = Ledger::open(&url).await?;
    let suffix = gtpcharge_billing_api::ledger::now_us();
    let (sp, _) = ledger.create_service_provider(&format!("load-{suffix}"), true).await?;
    let probe = ledger.create_credential(Kind::Probe, None, "load").await?;
    // One account per 100 charges, so charges contend on accounts as real traffic would, a little.
    // LOAD_ACCOUNTS=N sets the number of accounts instead.
    let accounts = match std::env::var("LOAD_ACCOUNTS") {
        Ok(n) => n.parse::<usize>()?.max(1),
        Err(_) => charges.div_ceil(100).max(1),
    };
    let owner = ledger.clone();
    setup(accounts, move |i| {
        let ledger = owner.clone();
        async move {
            let update = AccountUpdate {
                msisdn: msisdn(i),
                currency: "EUR".into(),
                balance: Some(1_000_000_000),
                ..Default::default()
            };
            ledger.set_account(&update).await.map(|_| ())
        }
    })
    .await?;
    // The warm-up's purchases come first: the same path, run before the clock starts and not counted,
    // so the figures are the steady state's (pgbench, too, reports without its connection time).
    let warmup = match std::env::var("LOAD_WARMUP") {
        Ok(n) => n.parse()?,
        Err(_) => (charges / 10).max(200),
    };
    eprintln!("creating {} purchases ({warmup} for the warm-up) ...", charges + warmup);
    let owner = ledger.clone();
    let made = setup(charges + warmup, move |i| {
        let ledger = owner.clone();
        async move {
            let new = NewPurchase {
                product_id: "load".into(),
                description: String::new(),
                amount: 1,
                currency: "EUR".into(),
                expires_in_s: 3600,
                idempotency_key: format!("load-{suffix}-{i}"),
                ..Default::default()
            };
            ledger.create_purchase(sp, &new).await.map(|p| p.token)
        }
    })
    .await?;
    let mut tokens: Vec<(String, String)> =
        made.into_iter().enumerate().map(|(i, token)| (token, msisdn(i % accounts))).collect();
    let measured = tokens.split_off(warmup);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut charging = gtpcharge_billing_api::server::Charging::default();
    if let Ok(n) = std::env::var("LOAD_GROUP_COMMIT") {
        charging.group_commit_sightings = n.parse()?;
    }
    if let Ok(n) = std::env::var("LOAD_WORKERS") {
        charging.workers = n.parse()?;
    }
    tokio::spawn(gtpcharge_billing_api::server::serve_with(
        ledger.clone(),
        listener,
        None,
        std::future::pending(),
        charging,
        Default::default(),
        Default::default(),
    ));
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?.connect().await?;
    let client = pb::sighting_service_client::SightingServiceClient::new(channel);
    let key = probe.secret.clone();
    let warm = closed_loop(&client, &key, tokens.chunks(batch).map(<[_]>::to_vec).collect(), concurrency).await?;
    eprintln!("warm-up: {} charges", warm.iter().map(|(_, c)| c).sum::<usize>());
    let chunks: Vec<Vec<(String, String)>> = measured.chunks(batch).map(<[_]>::to_vec).collect();
    let started = Instant::now();
    let results = if rate > 0.0 {
        // Open loop: call i starts at started + i * BATCH / RATE whether or not earlier calls have
        // answered, and its latency counts from that scheduled time (no coordinated omission).
        // The calls are started by a thread of their own that sleeps with the OS's timer (tens of
        // microseconds late), not by tokio's, whose 1 ms ticks started each call up to 1 ms late and
        // counted that lateness as the server's.
        let every = Duration::from_secs_f64(batch as f64 / rate);
        let runtime = tokio::runtime::Handle::current();
        let (client, key) = (client.clone(), key.clone());
        let calls = tokio::task::spawn_blocking(move || {
            let mut calls = Vec::new();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let due = started + every * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (client, key) = (client.clone(), key.clone());
                calls.push(runtime.spawn(async move {
                    let charged = call(client, &key, &chunk).await;
                    (vec![(due - started, due.elapsed())], charged)
                }));
            }
            calls
        })
        .await?;
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await?);
        }
        results
    } else {
        closed_loop(&client, &key, chunks, concurrency).await?
    };
    let elapsed = started.elapsed();
    // LOAD_TRACE=FILE: one line per call, "start_ms latency_ms", to see when the slow calls happened.
    if let Ok(path) = std::env::var("LOAD_TRACE") {
        let mut trace = String::new();
        for (start, latency) in results.iter().flat_map(|(calls, _)| calls) {
            trace.push_str(&format!("{:.3} {:.3}\n", start.as_secs_f64() * 1e3, latency.as_secs_f64() * 1e3));
        }
        std::fs::write(path, trace)?;
    }
    let charged: usize = results.iter().map(|(_, c)| c).sum();
    let mut latencies: Vec<Duration> = results.into_iter().flat_map(|(calls, _)| calls).map(|(_, l)| l).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let load = if rate > 0.0 { format!("offered {rate:.0} charges/s") } else { format!("concurrency {concurrency}") };
    println!(
        "charges {charged}/{charges}  {load}  batch {batch}  group commit {}  workers {}  elapsed {:.2}s  {:.0} charges/s  RPC p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms",
        charging.group_commit_sightings,
        charging.workers,
        elapsed.as_secs_f64(),
        charged as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3
    );
    let sums = ledger.sums_by_currency().await?;
    assert!(sums.iter().all(|(_, s)| *s == 0), "ledger unbalanced: {sums:?}");
    Ok(())
}

/// Setup tasks (accounts, purchases) run at once.
const SETUP_TASKS: usize = 16;

/// `make(0) .. make(count - 1)`, [`SETUP_TASKS`] at a time (a 15,000-account run would otherwise spend a
/// minute creating them one by one); the results in that order.
async fn setup<T, F, Fut>(count: usize, make: F) -> Result<Vec<T>, Box<dyn std::error::Error>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<T, gtpcharge_billing_api::ledger::LedgerError>> + Send,
{
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..SETUP_TASKS {
        let make = make.clone();
        tasks.spawn(async move {
            let mut made = Vec::new();
            for i in (part..count).step_by(SETUP_TASKS) {
                made.push((i, make(i).await?));
            }
            Ok::<_, gtpcharge_billing_api::ledger::LedgerError>(made)
        });
    }
    let mut made = Vec::with_capacity(count);
    while let Some(done) = tasks.join_next().await {
        made.extend(done??);
    }
    made.sort_unstable_by_key(|(i, _)| *i);
    Ok(made.into_iter().map(|(_, t)| t).collect())
}

/// The MSISDN of account `i`.
fn msisdn(i: usize) -> String {
    format!("4690{i:08}")
}

/// Calls made and answered by one caller: (when each started, after the phase's start; how long it took),
/// and how many sightings were charged.
type CallerResult = (Vec<(Duration, Duration)>, usize);

/// CONCURRENCY callers, each sending its next call when the last one answered.
async fn closed_loop(
    client: &pb::sighting_service_client::SightingServiceClient<tonic::transport::Channel>,
    key: &str,
    chunks: Vec<Vec<(String, String)>>,
    concurrency: usize,
) -> Result<Vec<CallerResult>, tokio::task::JoinError> {
    let started = Instant::now();
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(chunks));
    let mut callers = Vec::new();
    for _ in 0..concurrency {
        let (queue, client, key) = (queue.clone(), client.clone(), key.to_string());
        callers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            let mut charged = 0usize;
            loop {
                let Some(chunk) = queue.lock().await.pop() else { break };
                let t = Instant::now();
                charged += call(client.clone(), &key, &chunk).await;
                calls.push((t - started, t.elapsed()));
            }
            (calls, charged)
        }));
    }
    let mut results = Vec::new();
    for caller in callers {
        results.push(caller.await?);
    }
    Ok(results)
}

/// One ReportSightings call; returns how many of its sightings were charged.
async fn call(
    mut client: pb::sighting_service_client::SightingServiceClient<tonic::transport::Channel>,
    key: &str,
    chunk: &[(String, String)],
) -> usize {
    let sightings = chunk
        .iter()
        .map(|(token, msisdn)| pb::Sighting { token: token.clone(), msisdn: msisdn.clone(), ..Default::default() })
        .collect();
    let mut request = tonic::Request::new(pb::ReportSightingsRequest { sightings });
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii key"));
    let response = client.report_sightings(request).await.expect("report");
    response.into_inner().results.iter().filter(|r| r.outcome == pb::SightingOutcome::Charged as i32).count()
}
