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
            super::not_run("POSTGRESQL HALF (this test runs on SQLite)", "GTPCHARGE_TEST_DATABASE_URL is not set");
            (format!("sqlite://{}/ledger.sqlite?mode=rwc", dir.display()), None)
        }
    }
}

/// The password of a database URL (`scheme://user:password@host/...`), if it has one.
pub fn password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let credentials = rest.split_once('@')?.0;
    let password = credentials.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `gtpcharge serve` at `debug`, its log appended to `log` (the tests read it for secrets).
pub fn serve(database: &str, port: u16, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .env("RUST_LOG", "debug")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", database])
        .stdout(Stdio::null())
        .stderr(log)
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
    /// Every log line of the world's billing servers, restarts included.
    pub server_log: std::path::PathBuf,
    pub runtime: tokio::runtime::Runtime,
    pub capture: std::path::PathBuf,
    pub truth: gtpcharge_pcapgen::Truth,
    pub expected_spend: BTreeMap<String, i64>,
}

impl World {
    pub fn new(seed: u64, subscribers: u32) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (database, cleanup) = database_url(dir.path(), seed);
        let api_key = admin(&database, &["sp", "create", "e2e-games", "--allow-network-consent"])["api_key"].clone();
        let probe_key = admin(&database, &["probe", "create", "e2e-probe"])["probe_key"].clone();
        let port = free_port();
        let server_log = dir.path().join("server.log");
        let server = serve(&database, port, &server_log);
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
                    ..Default::default()
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
        World {
            dir,
            database,
            cleanup,
            api_key,
            probe_key,
            port,
            url,
            server,
            server_log,
            runtime,
            capture,
            truth,
            expected_spend,
        }
    }

    /// Kills the billing server with SIGKILL (no drain, no goodbye).
    pub fn kill_server(&mut self) {
        self.server.kill().unwrap();
        self.server.wait().unwrap();
    }

    /// Starts the billing server again on the same database, port and log.
    pub fn restart_server(&mut self) {
        self.server = serve(&self.database, self.port, &self.server_log);
    }

    /// How many purchases the ledger holds as charged, read from the database itself.
    pub fn charged(&self) -> i64 {
        self.runtime.block_on(async {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&self.database).await.unwrap();
            let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM purchases WHERE state = 'charged'")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            count
        })
    }

    /// A log that received secrets or subscriber identities holds none of them in full: not the SP's API
    /// key, the probe key, the database password (where the URL has one), an MSISDN or an IMSI.
    pub fn assert_log_clean(&self, name: &str, log: &str) {
        let mut secrets = vec![("API key", self.api_key.clone()), ("probe key", self.probe_key.clone())];
        if let Some(password) = password(&self.database) {
            secrets.push(("database password", password));
        }
        for (msisdn, imsi) in &self.truth.identities {
            secrets.push(("MSISDN", msisdn.clone()));
            secrets.push(("IMSI", imsi.clone()));
        }
        for (what, secret) in secrets {
            assert!(!log.contains(&secret), "the {name} log holds a {what} in full");
        }
    }

    /// The billing servers' log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.server_log).unwrap_or_default()
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
        drop_database(&self.runtime, self.cleanup.take());
    }
}

/// Drops the database [`database_url`] made on PostgreSQL (`cleanup` is its second half).
pub fn drop_database(runtime: &tokio::runtime::Runtime, cleanup: Option<(String, String)>) {
    if let Some((base, name)) = cleanup {
        runtime.block_on(async {
            use sqlx::Executor;
            if let Ok(admin) = sqlx::AnyPool::connect(&base).await {
                let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
            }
        });
    }
}

/// A probe replaying the world's capture from its standard input (`replay -`), fed by the test: the test
/// decides which frames have reached the probe when it stops or kills a service. One thread reads and
/// correlates, so every frame written is correlated without waiting for a batch to fill.
pub struct FedReplay {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    /// The capture's global header, then one entry a record (header and frame).
    records: Vec<Vec<u8>>,
    written: usize,
    stderr: std::path::PathBuf,
}

impl World {
    /// Starts the probe on an empty pipe, spooling to `spool`.
    pub fn replay_fed(&self, spool: &std::path::Path) -> FedReplay {
        self.replay_fed_to(spool, &self.url)
    }

    /// [`World::replay_fed`], delivering to `billing_url` (several replicas: comma-separated).
    pub fn replay_fed_to(&self, spool: &std::path::Path, billing_url: &str) -> FedReplay {
        let bytes = std::fs::read(&self.capture).unwrap();
        let mut records = vec![bytes[..24].to_vec()];
        let mut at = 24;
        while at < bytes.len() {
            let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
            records.push(bytes[at..at + 16 + caplen].to_vec());
            at += 16 + caplen;
        }
        let stderr = self.dir.path().join(format!("probe-{}.log", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
            .env("RUST_LOG", "debug")
            .args(["replay", "-", "--single-thread", "--billing-url", billing_url, "--probe-key", &self.probe_key])
            .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout-s", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        FedReplay { child, stdin, records, written: 0, stderr }
    }
}

impl FedReplay {
    /// Writes the capture up to `fraction` of its frames (the global header first).
    pub fn feed(&mut self, fraction: f64) {
        use std::io::Write;
        let until = 1 + ((self.records.len() - 1) as f64 * fraction) as usize;
        let stdin = self.stdin.as_mut().expect("the pipe is open");
        while self.written < until.min(self.records.len()) {
            stdin.write_all(&self.records[self.written]).unwrap();
            self.written += 1;
        }
        stdin.flush().unwrap();
    }

    /// Writes the rest, closes the pipe, waits for the probe; its exit status and log.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        self.feed(1.0);
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        (status, std::fs::read_to_string(&self.stderr).unwrap())
    }
}

/// Waits up to 30 s for `condition`, polling; panics with `what` if it never holds.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(30), "waited 30 s for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
