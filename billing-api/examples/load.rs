//! Load benchmark of the charging path (not a test): N purchases are created, then reported by C
//! concurrent probe connections through gRPC into the ledger; prints charges/s and p50/p99 latency of
//! ReportSightings. `benches/billing-load.sh` runs it beside pgbench on the same PostgreSQL.
//!
//! With RATE (charges/s) the load is open: calls of BATCH sightings start on a fixed schedule, as many at
//! once as it takes, and latency counts from each call's scheduled start.
//!
//! cargo run --release -p gtpcharge-billing-api --example load -- DATABASE_URL [CHARGES] [CONCURRENCY] [BATCH] [RATE]
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::{AccountUpdate, NewPurchase};
use gtpcharge_billing_api::{Db, Ledger};
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
    let ledger = Ledger::new(Db::connect(&url).await?);
    let suffix = gtpcharge_billing_api::ledger::now_us();
    let (sp, _) = ledger.create_service_provider(&format!("load-{suffix}")).await?;
    let probe = ledger.create_credential(Kind::Probe, None, "load").await?;
    // One account per 100 charges, so charges contend on accounts as real traffic would, a little.
    let accounts = charges.div_ceil(100).max(1);
    for i in 0..accounts {
        let update = AccountUpdate {
            msisdn: format!("4690{:08}", i),
            currency: "EUR".into(),
            balance: Some(1_000_000_000),
            ..Default::default()
        };
        ledger.set_account(&update).await?;
    }
    eprintln!("creating {charges} purchases ...");
    let mut tokens = Vec::with_capacity(charges);
    for i in 0..charges {
        let new = NewPurchase {
            product_id: "load".into(),
            description: String::new(),
            amount: 1,
            currency: "EUR".into(),
            expires_in_s: 3600,
            idempotency_key: format!("load-{suffix}-{i}"),
        };
        tokens.push((ledger.create_purchase(sp, &new).await?.token, format!("4690{:08}", i % accounts)));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(gtpcharge_billing_api::server::serve(ledger.clone(), listener, None, std::future::pending()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?.connect().await?;
    let chunks: Vec<Vec<(String, String)>> = tokens.chunks(batch).map(<[_]>::to_vec).collect();
    let client = pb::sighting_service_client::SightingServiceClient::new(channel);
    let key = probe.secret.clone();
    let started = Instant::now();
    let mut workers = Vec::new();
    if rate > 0.0 {
        // Open loop: call i starts at started + i * BATCH / RATE whether or not earlier calls have
        // answered, and its latency counts from that scheduled time (no coordinated omission).
        let every = Duration::from_secs_f64(batch as f64 / rate);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let due = started + every * i as u32;
            tokio::time::sleep_until(due.into()).await;
            let (client, key) = (client.clone(), key.clone());
            workers.push(tokio::spawn(async move {
                let charged = call(client, &key, &chunk).await;
                (vec![due.elapsed()], charged)
            }));
        }
    } else {
        // Closed loop: CONCURRENCY callers, each sending its next call when the last one answered.
        let queue = std::sync::Arc::new(tokio::sync::Mutex::new(chunks));
        for _ in 0..concurrency {
            let (queue, client, key) = (queue.clone(), client.clone(), key.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut charged = 0usize;
                loop {
                    let Some(chunk) = queue.lock().await.pop() else { break };
                    let t = Instant::now();
                    charged += call(client.clone(), &key, &chunk).await;
                    latencies.push(t.elapsed());
                }
                (latencies, charged)
            }));
        }
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut charged = 0;
    for worker in workers {
        let (l, c) = worker.await?;
        latencies.extend(l);
        charged += c;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    let load = if rate > 0.0 { format!("offered {rate:.0} charges/s") } else { format!("concurrency {concurrency}") };
    println!(
        "charges {charged}/{charges}  {load}  batch {batch}  elapsed {:.2}s  {:.0} charges/s  RPC p50 {:.2} ms  p99 {:.2} ms",
        elapsed.as_secs_f64(),
        charged as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    let sums = ledger.sums_by_currency().await?;
    assert!(sums.iter().all(|(_, s)| *s == 0), "ledger unbalanced: {sums:?}");
    Ok(())
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
