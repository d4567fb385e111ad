//! A billing world for end-to-end and fault tests: `gtpcharge serve` as a process on a fresh PostgreSQL
//! database (or SQLite, said loudly), an SP, a probe credential, real purchases for every token of a
//! generated capture, and accounts for every subscriber in it.
#![allow(dead_code)]
use gtpcharge_pcapgen::{generate, PcapFile, Scenario};
use gtpcharge_proto::v1 as pb;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn database_url(dir: &std::path::Path, seed: u64) -> (String, Option<(String, String)>) {
    match std::env::var("GTPCHARGE_TEST_DATABASE_URL") {
        Ok(base) => {
            let name = format!("gtpcharge_e2e_{}_{seed}", std::process::id());
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
            eprintln!(
                "\n*** END TO END ON SQLITE ONLY: GTPCHARGE_TEST_DATABASE_URL is not set (.ci/run sets it) ***\n"
            );
            (format!("sqlite://{}/ledger.sqlite?mode=rwc", dir.display()), None)
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn serve(database: &str, port: u16) -> Child {
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

pub fn admin(database: &str, args: &[&str]) -> BTreeMap<String, String> {
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

pub fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// A billing server with an SP, a probe credential, real purchases for every token of a generated
/// capture, and accounts for every subscriber in it.
pub struct World {
    pub dir: tempfile::TempDir,
    pub database: String,
    pub cleanup: Option<(String, String)>,
    pub api_key: String,
    pub probe_key: String,
    pub port: u16,
    pub url: String,
    pub server: Child,
    pub runtime: tokio::runtime::Runtime,
    pub capture: std::path::PathBuf,
    pub truth: gtpcharge_pcapgen::Truth,
    pub expected_spend: BTreeMap<String, i64>,
}

impl World {
    pub fn new(seed: u64, subscribers: u32) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (database, cleanup) = database_url(dir.path(), seed);
        let api_key = admin(&database, &["sp", "create", "e2e-games"])["api_key"].clone();
        let probe_key = admin(&database, &["probe", "create", "e2e-probe"])["probe_key"].clone();
        let port = free_port();
        let server = serve(&database, port);
        let url = format!("http://127.0.0.1:{port}");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut scenario = Scenario {
            seed,
            subscribers,
            traffic_rounds: 2,
            background_per_round: 1,
            edge_cases: true,
            tokens: Vec::new(),
        };
        // How many tokens the scenario carries, then that many real purchases.
        let dry_truth = generate(&scenario, &mut Vec::<(u64, Vec<u8>)>::new());
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
        World { dir, database, cleanup, api_key, probe_key, port, url, server, runtime, capture, truth, expected_spend }
    }

    /// Every purchase charged to the MSISDN that sent its token, unattributed ones untouched, balances
    /// down by exactly one charge per purchase, the ledger balanced.
    pub fn check(&self) {
        self.runtime.block_on(async {
            let mut client =
                pb::purchase_service_client::PurchaseServiceClient::connect(self.url.clone()).await.unwrap();
            for (token, msisdn) in &self.truth.sightings {
                let request =
                    pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(token.to_string())) };
                let p = client.get_purchase(authed(&self.api_key, request)).await.unwrap().into_inner();
                assert_eq!(
                    (p.state, p.charged_msisdn.as_str()),
                    (pb::PurchaseState::Charged as i32, msisdn.as_str()),
                    "{token}"
                );
            }
            for token in &self.truth.unattributed {
                let request =
                    pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Token(token.to_string())) };
                let p = client.get_purchase(authed(&self.api_key, request)).await.unwrap().into_inner();
                assert_eq!(p.state, pb::PurchaseState::Pending as i32, "an unattributed token must not be charged");
            }
        });
        for (msisdn, spent) in &self.expected_spend {
            let account = admin(&self.database, &["account", "show", msisdn]);
            assert_eq!(account["balance"].parse::<i64>().unwrap(), 100_000 - spent, "{msisdn}");
        }
        assert!(admin(&self.database, &["check-ledger"]).contains_key("EUR"));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some((base, name)) = self.cleanup.take() {
            self.runtime.block_on(async {
                use sqlx::Executor;
                if let Ok(admin) = sqlx::AnyPool::connect(&base).await {
                    let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                }
            });
        }
    }
}
