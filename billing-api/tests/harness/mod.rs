//! The billing API's test harness: a real server on an ephemeral port, on an embedded SQLite file and
//! on PostgreSQL (a fresh database per test, on the server named by `GTPCHARGE_TEST_DATABASE_URL`;
//! `.ci/test` sets it), with real tonic clients. Shared by the API's test files.
#![allow(dead_code)]
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::AccountUpdate;
use gtpcharge_billing_api::Ledger;
use gtpcharge_proto::v1 as pb;
use pb::account_service_client::AccountServiceClient;
use pb::purchase_service_client::PurchaseServiceClient;
use pb::sighting_service_client::SightingServiceClient;
use sqlx::Executor;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

#[path = "../../../tests/common/not_run.rs"]
pub mod not_run;

/// A running server and the credentials the tests use.
pub struct Harness {
    pub ledger: Ledger,
    pub channel: Channel,
    /// The id of the SP whose key `sp_key` is.
    pub sp_id: i64,
    pub sp_key: String,
    pub other_sp_key: String,
    pub probe_key: String,
    pub operator_key: String,
    pub operator_key_id: String,
    pub probe_key_id: String,
    pub _dir: tempfile::TempDir,
    pub cleanup: Option<(String, String)>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
}

pub async fn postgres_database() -> Option<(String, (String, String))> {
    let base = match std::env::var("GTPCHARGE_TEST_DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            not_run::not_run("POSTGRESQL HALF", "GTPCHARGE_TEST_DATABASE_URL is not set (.ci/test sets it)");
            return None;
        }
    };
    sqlx::any::install_default_drivers();
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    let name = format!("gtpcharge_test_{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let admin = sqlx::AnyPool::connect(&base).await.expect("connect to the test PostgreSQL");
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some((format!("{prefix}/{name}"), (base, name)))
}

impl Harness {
    pub async fn start(url: String, cleanup: Option<(String, String)>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = url.replace("{dir}", dir.path().to_str().unwrap());
        let ledger = Ledger::open(&url).await.unwrap();
        let (sp_id, sp) = ledger.create_service_provider("games", true).await.unwrap();
        let (_, other) = ledger.create_service_provider("music", true).await.unwrap();
        let probe = ledger.create_credential(Kind::Probe, None, "probe-1").await.unwrap();
        let operator = ledger.create_credential(Kind::Operator, None, "ops").await.unwrap();
        let (channel, stop) = Self::serve(&ledger).await;
        Harness {
            ledger,
            channel,
            sp_id,
            sp_key: sp.secret,
            other_sp_key: other.secret,
            probe_key: probe.secret,
            probe_key_id: probe.key_id,
            operator_key_id: operator.key_id,
            operator_key: operator.secret,
            _dir: dir,
            cleanup,
            stop: Some(stop),
        }
    }

    /// A server for `ledger` on a fresh port: a channel to it, and what stops it.
    async fn serve(ledger: &Ledger) -> (Channel, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_ledger = ledger.clone();
        tokio::spawn(async move {
            gtpcharge_billing_api::server::serve(server_ledger, listener, None, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
        (channel, stop)
    }

    /// Stops the server (its sweeper and webhook sender with it) and starts another on the same database.
    pub async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (channel, stop) = Self::serve(&self.ledger).await;
        self.channel = channel;
        self.stop = Some(stop);
    }

    /// SQLite always; PostgreSQL when configured.
    pub async fn each_backend() -> Vec<(&'static str, Harness)> {
        let mut all = vec![("sqlite", Harness::start("sqlite://{dir}/ledger.sqlite?mode=rwc".into(), None).await)];
        if let Some((url, cleanup)) = postgres_database().await {
            all.push(("postgres", Harness::start(url, Some(cleanup)).await));
        }
        all
    }

    pub async fn finish(mut self) {
        let sums = self.ledger.sums_by_currency().await.unwrap();
        for (currency, sum) in &sums {
            assert_eq!(*sum, 0, "the ledger does not balance in {currency}");
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.ledger.db.pool.close().await;
        if let Some((base, name)) = self.cleanup.take() {
            let admin = sqlx::AnyPool::connect(&base).await.unwrap();
            admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
        }
    }

    pub fn purchases(&self) -> PurchaseServiceClient<Channel> {
        PurchaseServiceClient::new(self.channel.clone())
    }
    pub fn sightings(&self) -> SightingServiceClient<Channel> {
        SightingServiceClient::new(self.channel.clone())
    }
    pub fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel.clone())
    }

    pub async fn account(&self, msisdn: &str, balance: i64) {
        self.capped_account(msisdn, balance, None).await;
    }

    /// A EUR account with this balance and daily cap.
    pub async fn capped_account(&self, msisdn: &str, balance: i64, daily_cap: Option<i64>) {
        let update = AccountUpdate {
            msisdn: msisdn.into(),
            currency: "EUR".into(),
            balance: Some(balance),
            daily_cap,
            ..Default::default()
        };
        self.ledger.set_account(&update).await.unwrap();
    }

    pub async fn create(&self, key: &str, amount: i64, idempotency_key: &str) -> Result<pb::Purchase, tonic::Status> {
        let request = pb::CreatePurchaseRequest {
            product_id: "sword-of-testing".into(),
            description: "A sword".into(),
            amount,
            currency: "EUR".into(),
            expires_in_s: 600,
            idempotency_key: idempotency_key.into(),
            ..Default::default()
        };
        self.purchases().create_purchase(authed(key, request)).await.map(|r| r.into_inner())
    }

    pub async fn report(&self, token: &str, msisdn: &str) -> pb::SightingResult {
        let request = pb::ReportSightingsRequest { sightings: vec![sighting(token, msisdn)] };
        let response = self.sightings().report_sightings(authed(&self.probe_key, request)).await.unwrap().into_inner();
        response.results.into_iter().next().unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        use sqlx::Row;
        sqlx::query(&format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table}"))
            .fetch_one(&self.ledger.db.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap()
    }
}

pub fn authed<T>(key: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {key}")).unwrap());
    request
}

pub fn sighting(token: &str, msisdn: &str) -> pb::Sighting {
    pb::Sighting {
        token: token.into(),
        msisdn: msisdn.into(),
        imsi: "001010000000001".into(),
        ue_ip: "10.0.0.1".into(),
        r#where: "http-url".into(),
        seen_at_us: 1,
        probe_sighting_id: "t".into(),
    }
}

pub fn outcome(result: &pb::SightingResult) -> pb::SightingOutcome {
    pb::SightingOutcome::try_from(result.outcome).unwrap()
}
