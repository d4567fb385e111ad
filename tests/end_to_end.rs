//! The whole flow with the real pieces: `gtpcharge serve` as a process on PostgreSQL (a fresh database;
//! SQLite when `GTPCHARGE_TEST_DATABASE_URL` is unset, said loudly), an SP creating purchases through
//! gRPC, a generated Gn capture carrying those tokens, and `gtpcharge replay --billing-url`.
//! (a) every purchase is charged to the MSISDN that sent its token, unattributed tokens are not charged;
//! (c) the billing server is killed with SIGKILL before the replay and started again while the probe
//!     waits: the spool drains and every purchase is charged exactly once;
//! (d) the same capture replayed again charges nothing new.
mod common;

use gtpcharge_pcapgen::{generate, PcapFile, Scenario};
use gtpcharge_proto::v1 as pb;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn database_url(dir: &std::path::Path) -> (String, Option<(String, String)>) {
    match std::env::var("GTPCHARGE_TEST_DATABASE_URL") {
        Ok(base) => {
            let name = format!("gtpcharge_e2e_{}", std::process::id());
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                use sqlx::Executor;
                sqlx::any::install_default_drivers();
                let admin = sqlx::AnyPool::connect(&base).await.unwrap();
                admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
                admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
            });
            let (prefix, _) = base.rsplit_once('/').unwrap();
            (format!("{prefix}/{name}"), Some((base.clone(), name)))
        }
        Err(_) => {
            eprintln!("\n*** END TO END ON SQLITE ONLY: GTPCHARGE_TEST_DATABASE_URL is not set (.ci/run sets it) ***\n");
            (format!("sqlite://{}/ledger.sqlite?mode=rwc", dir.display()), None)
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(database: &str, port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", database])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "gtpcharge serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn admin(database: &str, args: &[&str]) -> BTreeMap<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["admin", "--database-url", database])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('\t').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

#[test]
fn replay_charges_each_purchase_once_through_a_killed_and_restarted_server() {
    let dir = tempfile::tempdir().unwrap();
    let (database, cleanup) = database_url(dir.path());
    let api_key = admin(&database, &["sp", "create", "e2e-games"])["api_key"].clone();
    let probe_key = admin(&database, &["probe", "create", "e2e-probe"])["probe_key"].clone();
    let port = free_port();
    let mut server = serve(&database, port);
    let url = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // How many tokens the scenario carries, then that many real purchases.
    let mut scenario = Scenario { seed: 5, subscribers: 20, traffic_rounds: 2, background_per_round: 1, edge_cases: true, tokens: Vec::new() };
    let mut dry: Vec<(u64, Vec<u8>)> = Vec::new();
    let dry_truth = generate(&scenario, &mut dry);
    let needed = dry_truth.sightings.len() + dry_truth.unattributed.len();
    let purchases: Vec<pb::Purchase> = runtime.block_on(async {
        let mut client = pb::purchase_service_client::PurchaseServiceClient::connect(url.clone()).await.unwrap();
        let mut out = Vec::new();
        for i in 0..needed {
            let request = pb::CreatePurchaseRequest {
                product_id: format!("item-{i}"),
                description: "e2e".into(),
                amount: 100,
                currency: "EUR".into(),
                expires_in_s: 3600,
                idempotency_key: format!("e2e-{i}"),
            };
            out.push(client.create_purchase(authed(&api_key, request)).await.unwrap().into_inner());
        }
        out
    });
    scenario.tokens = purchases.iter().map(|p| p.token.parse().unwrap()).collect();
    let capture = dir.path().join("e2e.pcap");
    let mut file = PcapFile::create(&capture).unwrap();
    let truth = generate(&scenario, &mut file);
    file.finish().unwrap();
    assert_eq!(truth.sightings.len() + truth.unattributed.len(), needed);
    let mut expected_spend: BTreeMap<String, i64> = BTreeMap::new();
    for (_, msisdn) in &truth.sightings {
        *expected_spend.entry(msisdn.clone()).or_default() += 100;
    }
    for msisdn in expected_spend.keys() {
        admin(&database, &["account", "set", msisdn, "--currency", "EUR", "--balance", "100000"]);
    }

    // (c) The server dies hard; the probe replays against nothing, spools, and waits for it to return.
    server.kill().unwrap();
    server.wait().unwrap();
    let spool = dir.path().join("spool");
    let replay = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", capture.to_str().unwrap(), "--billing-url", &url, "--probe-key", &probe_key])
        .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout-s", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let spooled = std::fs::read_dir(&spool).unwrap().count();
    assert!(spooled > 0, "sightings must wait in the spool while the API is down");
    let mut server = serve(&database, port);
    let output = replay.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", truth.sightings.len())), "{stderr}");
    assert_eq!(std::fs::read_dir(&spool).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "batch")).count(), 0);

    // (a) Every purchase charged to the MSISDN that sent its token; unattributed ones untouched.
    let check = |runtime: &tokio::runtime::Runtime| {
        runtime.block_on(async {
            let mut client = pb::purchase_service_client::PurchaseServiceClient::connect(url.clone()).await.unwrap();
            for (token, msisdn) in &truth.sightings {
                let request = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(token.to_string())) };
                let p = client.get_purchase(authed(&api_key, request)).await.unwrap().into_inner();
                assert_eq!((p.state, p.charged_msisdn.as_str()), (pb::PurchaseState::Charged as i32, msisdn.as_str()), "{token}");
            }
            for token in &truth.unattributed {
                let request = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(token.to_string())) };
                let p = client.get_purchase(authed(&api_key, request)).await.unwrap().into_inner();
                assert_eq!(p.state, pb::PurchaseState::Pending as i32, "an unattributed token must not be charged");
            }
        });
        for (msisdn, spent) in &expected_spend {
            let account = admin(&database, &["account", "show", msisdn]);
            assert_eq!(account["balance"].parse::<i64>().unwrap(), 100_000 - spent, "{msisdn}");
        }
        assert!(admin(&database, &["check-ledger"]).contains_key("EUR"));
    };
    check(&runtime);

    // (d) The same capture again: everything is already charged, nothing moves.
    let again = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", capture.to_str().unwrap(), "--billing-url", &url, "--probe-key", &probe_key])
        .args(["--spool-dir", spool.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("already-charged={}]", truth.sightings.len())) || stderr.contains(&format!("already-charged={} ", truth.sightings.len())), "{stderr}");
    assert!(!stderr.contains(" charged="), "{stderr}");
    check(&runtime);

    server.kill().unwrap();
    let _ = server.wait();
    if let Some((base, name)) = cleanup {
        runtime.block_on(async {
            use sqlx::Executor;
            let admin = sqlx::AnyPool::connect(&base).await.unwrap();
            admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
        });
    }
}

/// The README's main command: `gtpcharge demo` replays the committed sample into the embedded default
/// and checks every charge itself; it must succeed from a clean working directory.
#[test]
fn the_readme_demo_charges_every_sample_purchase() {
    let dir = tempfile::tempdir().unwrap();
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap");
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["demo", sample.to_str().unwrap(), "--workdir", dir.path().join("work").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("34 of 34 purchases charged to the subscriber who sent the token"), "{stderr}");
    assert!(stderr.contains("ledger balanced"), "{stderr}");
    let events = String::from_utf8(output.stdout).unwrap();
    assert_eq!(events, std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.expected.jsonl")).unwrap());
}
