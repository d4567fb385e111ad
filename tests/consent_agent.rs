//! Consent on the handset, end to end on one machine: `gtpcharge serve` on a fresh database, the probe
//! replaying generated captures that carry the enrollment and purchase tokens, and `gtpcharge agent` in
//! a network namespace of its own (its loopback, and a veth to the API), with `curl` as the app.
//! Covers the list: the happy path charged once with the ledger balanced; the agent unreachable
//! from a non-loopback address; a wrong Host or Origin refused with nothing held; a token without its
//! nonce prompting nobody; a PIN in the body refused; five wrong PINs locking the PIN and voiding the
//! hold; a key of another MSISDN declined; the agent killed with SIGKILL mid-confirm and the request
//! repeated, charged once; a hold that expires released, the balance restored. (Capture beyond the
//! authorized amount is refused in `billing-api/tests/consent.rs`, over the same gRPC API.)
mod common;

use common::world::{admin, authed, database_url, drop_database, free_port, wait_for};
use common::VethPair;
use gtpcharge_pcapgen::{generate, PcapFile, Scenario};
use gtpcharge_proto::v1 as pb;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_gtpcharge");
const PIN: &str = "2468";
const AMOUNT: i64 = 199;

/// A generated capture of two subscribers in which the first (`second_line` false) or the second sends
/// `token`; returns its path and the sender's MSISDN. The other token slots carry random tokens nobody
/// knows (the capture does not depend on which tokens it carries, only on where).
fn capture(dir: &Path, name: &str, second_line: bool, token: &str) -> (PathBuf, String) {
    let mut scenario = Scenario {
        seed: 11,
        subscribers: 2,
        traffic_rounds: 1,
        background_per_round: 0,
        edge_cases: false,
        tokens: Vec::new(),
    };
    let dry = generate(&scenario, &mut Vec::<(u64, Vec<u8>)>::new());
    let first_line = dry.sightings[0].1.clone();
    let slot = dry.sightings.iter().position(|(_, msisdn)| (*msisdn != first_line) == second_line).unwrap();
    scenario.tokens = dry.sightings[..slot].iter().map(|(t, _)| *t).collect();
    scenario.tokens.push(token.parse().unwrap());
    let path = dir.join(format!("{name}.pcap"));
    let mut file = PcapFile::create(&path).unwrap();
    let truth = generate(&scenario, &mut file);
    file.finish().unwrap();
    let (sent, msisdn) = truth.sightings[slot].clone();
    assert_eq!(sent.to_string(), token);
    (path, msisdn)
}

struct Setup {
    dir: tempfile::TempDir,
    database: String,
    cleanup: Option<(String, String)>,
    sp_key: String,
    probe_key: String,
    port: u16,
    server: Child,
    net: VethPair,
    host_ip: String,
    agent_ip: String,
    state_dir: PathBuf,
    pin_file: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        drop_database(&self.runtime, self.cleanup.take());
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (database, cleanup) = database_url(dir.path(), 32);
        // An SP the operator did not allow NETWORK consent: DEVICE purchases only.
        let sp_key = admin(&database, &["sp", "create", "Pixel Games"])["api_key"].clone();
        let probe_key = admin(&database, &["probe", "create", "consent-probe"])["probe_key"].clone();
        let net = VethPair::new("cons");
        let subnet = std::process::id() % 250 + 1;
        let (host_ip, agent_ip) = (format!("10.77.{subnet}.1"), format!("10.77.{subnet}.2"));
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &net.probe_end]);
        ip(&["-n", &net.namespace, "addr", "add", &format!("{agent_ip}/30"), "dev", &net.wire_end]);
        ip(&["-n", &net.namespace, "link", "set", "lo", "up"]);
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        // Listening on every address: the probe comes from the loopback, the agent over the veth.
        let server = Command::new(BIN)
            .args(["serve", "--listen", &format!("0.0.0.0:{port}"), "--allow-plaintext", "--database-url", &database])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for("the billing API", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        let pin_file = dir.path().join("pin");
        std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
        let state_dir = dir.path().join("agent");
        Setup {
            state_dir,
            pin_file,
            dir,
            database,
            cleanup,
            sp_key,
            probe_key,
            port,
            server,
            net,
            host_ip,
            agent_ip,
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// An account with a balance and the payment PIN.
    fn subscriber(&self, msisdn: &str) {
        admin(&self.database, &["account", "set", msisdn, "--currency", "EUR", "--balance", "10000"]);
        admin(&self.database, &["account", "pin", msisdn, "--pin-file", self.pin_file.to_str().unwrap()]);
    }

    fn balance(&self, msisdn: &str) -> i64 {
        admin(&self.database, &["account", "show", msisdn])["balance"].parse().unwrap()
    }

    /// Replays a capture into the API, to the end of delivery.
    fn replay(&self, capture: &Path) {
        let spool = self.dir.path().join(format!("spool-{}", capture.file_stem().unwrap().to_string_lossy()));
        let output = Command::new(BIN)
            .args(["replay", capture.to_str().unwrap(), "--billing-url", &format!("http://127.0.0.1:{}", self.port)])
            .args(["--probe-key", &self.probe_key, "--spool-dir", spool.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(output.status.success(), "replay: {}", String::from_utf8_lossy(&output.stderr));
    }

    fn billing_url(&self) -> String {
        format!("http://{}:{}", self.host_ip, self.port)
    }

    /// The pay agent in its namespace, reading PINs from `pin_file`; waits until it listens.
    fn agent(&self, pin_file: &Path, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.namespace, BIN, "agent", "--billing-url", &self.billing_url()])
            .args(["--allow-plaintext", "--state-dir", self.state_dir.to_str().unwrap()])
            .args(["--pin-file", pin_file.to_str().unwrap(), "--allow-origin", "https://shop.example"])
            .args(["--seen-wait-s", "20"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for("the pay agent", || self.curl_in_ns(&["-o", "/dev/null", "http://127.0.0.1:7353/"]).0 == 0);
        child
    }

    /// curl inside the agent's namespace: (exit code, HTTP status, body).
    fn curl_in_ns(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.net.namespace, "curl", "-s", "--max-time", "60"])
            .args(args)
            .output()
            .expect("curl is installed (.ci/setup installs it)");
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The app's request: POST /v1/pay; (HTTP status, body).
    fn pay(&self, body: &str, extra: &[&str]) -> (u16, serde_json::Value) {
        let mut args = vec!["-w", "\n%{http_code}", "-X", "POST", "http://127.0.0.1:7353/v1/pay"];
        args.extend(["-H", "Content-Type: application/json", "-H", "X-Gtpcharge-Pay: 1", "-d", body]);
        args.extend(extra);
        let (code, out) = self.curl_in_ns(&args);
        assert_eq!(code, 0, "curl failed: {out}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    }

    fn create(&self, key: &str, ttl_s: i64) -> pb::Purchase {
        let url = format!("http://127.0.0.1:{}", self.port);
        let request = pb::CreatePurchaseRequest {
            product_id: "gems-500".into(),
            description: "500 gems".into(),
            amount: AMOUNT,
            currency: "EUR".into(),
            idempotency_key: key.into(),
            consent: pb::Consent::Device as i32,
            authorization_ttl_s: ttl_s,
            ..Default::default()
        };
        self.runtime.block_on(async {
            let mut client = pb::purchase_service_client::PurchaseServiceClient::connect(url).await.unwrap();
            client.create_purchase(authed(&self.sp_key, request)).await.unwrap().into_inner()
        })
    }

    fn state(&self, purchase: &pb::Purchase) -> pb::PurchaseState {
        let url = format!("http://127.0.0.1:{}", self.port);
        let request = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Id(purchase.id.clone())) };
        self.runtime.block_on(async {
            let mut client = pb::purchase_service_client::PurchaseServiceClient::connect(url).await.unwrap();
            let p = client.get_purchase(authed(&self.sp_key, request)).await.unwrap().into_inner();
            pb::PurchaseState::try_from(p.state).unwrap()
        })
    }
}

fn body(purchase: &pb::Purchase) -> String {
    serde_json::json!({ "token": purchase.token, "consent_nonce": purchase.consent_nonce }).to_string()
}

#[test]
fn consent_on_the_handset_end_to_end() {
    let s = Setup::new();
    // The agent enrolls: its token is looked up over "mobile data", which the probe sees in a capture.
    let mut enroll = Command::new("ip")
        .args(["netns", "exec", &s.net.namespace, BIN, "agent", "enroll", "--billing-url", &s.billing_url()])
        .args(["--allow-plaintext", "--state-dir", s.state_dir.to_str().unwrap()])
        .args(["--pin-file", s.pin_file.to_str().unwrap(), "--wait-s", "60", "--label", "test phone"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(enroll.stdout.take().unwrap()).lines();
    let token = loop {
        let line = lines.next().expect("enroll printed its token").unwrap();
        if let Some(token) = line.strip_prefix("enrollment_token\t") {
            break token.to_owned();
        }
    };
    let (enroll_capture, msisdn) = capture(s.dir.path(), "enroll", false, &token);
    s.subscriber(&msisdn);
    s.replay(&enroll_capture);
    assert!(enroll.wait().unwrap().success(), "the enrollment completed");
    let devices = admin(&s.database, &["device", "list", &msisdn]);
    assert_eq!(devices.len(), 1, "one device enrolled for the line that sent the token: {devices:?}");

    let mut agent = s.agent(&s.pin_file, "agent.log");
    // Unreachable off the loopback: the namespace's own veth address, and from the host.
    let (refused, _) = s.curl_in_ns(&["-o", "/dev/null", &format!("http://{}:7353/v1/pay", s.agent_ip)]);
    assert_eq!(refused, 7, "connection refused on the non-loopback address");
    let from_host = Command::new("curl")
        .args(["-s", "--max-time", "5", "-o", "/dev/null", &format!("http://{}:7353/v1/pay", s.agent_ip)])
        .status()
        .unwrap();
    assert_eq!(from_host.code(), Some(7), "the agent is unreachable from another host");

    // The happy path: seen, prompted, PIN, charged once.
    let first = s.create("order-1", 0);
    let (capture1, seen_by) = capture(s.dir.path(), "pay1", false, &first.token);
    assert_eq!(seen_by, msisdn);
    // Before the sighting, refusals hold nothing: a wrong Host, a wrong Origin, a token without its
    // nonce, a PIN in the body, no JSON, no custom header.
    let (status, _) = s.pay(&body(&first), &["-H", "Host: shop.example:7353"]);
    assert_eq!(status, 403, "a rebound name is refused");
    let (status, _) = s.pay(&body(&first), &["-H", "Origin: https://evil.example"]);
    assert_eq!(status, 403, "an Origin not allowed is refused");
    let no_nonce = serde_json::json!({ "token": first.token, "consent_nonce": "" }).to_string();
    assert_eq!(s.pay(&no_nonce, &[]).0, 404, "a token alone prompts nobody");
    let with_pin = serde_json::json!({ "token": first.token, "consent_nonce": first.consent_nonce, "pin": PIN });
    assert_eq!(s.pay(&with_pin.to_string(), &[]).0, 400, "a PIN is never taken from the app");
    let (code, out) = s.curl_in_ns(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-d",
        &body(&first),
        "http://127.0.0.1:7353/v1/pay",
    ]);
    assert_eq!((code, out.as_str()), (0, "415"), "a form post is refused");
    let (code, out) = s.curl_in_ns(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body(&first),
        "http://127.0.0.1:7353/v1/pay",
    ]);
    assert_eq!((code, out.as_str()), (0, "403"), "no custom header, no payment");
    assert_eq!(s.state(&first), pb::PurchaseState::Pending, "nothing held");
    assert_eq!(s.balance(&msisdn), 10_000);
    let log = std::fs::read_to_string(s.dir.path().join("agent.log")).unwrap();
    assert!(!log.contains("consent prompt shown"), "no prompt so far: {log}");
    // A preflight from the allowed Origin is answered with CORS headers.
    let (_, preflight) = s.curl_in_ns(&[
        "-i",
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://shop.example",
        "-H",
        "Access-Control-Request-Method: POST",
        "http://127.0.0.1:7353/v1/pay",
    ]);
    assert!(
        preflight.to_ascii_lowercase().contains("access-control-allow-origin: https://shop.example"),
        "{preflight}"
    );

    s.replay(&capture1);
    // Seen and held now; a page of another Origin still gets nothing and prompts nobody.
    let (status, _) = s.pay(&body(&first), &["-H", "Origin: https://evil.example"]);
    assert_eq!(status, 403);
    assert_eq!(s.state(&first), pb::PurchaseState::Authorized, "held by the sighting, not captured");
    assert_eq!(s.balance(&msisdn), 10_000 - AMOUNT);
    let log = std::fs::read_to_string(s.dir.path().join("agent.log")).unwrap();
    assert!(!log.contains("consent prompt shown"), "no prompt for a refused request: {log}");
    let (status, outcome) = s.pay(&body(&first), &["-H", "Origin: https://shop.example"]);
    assert_eq!((status, outcome["outcome"].as_str()), (200, Some("charged")), "{outcome}");
    assert!(!outcome.to_string().contains(&msisdn), "the app never learns the MSISDN");
    assert_eq!(s.balance(&msisdn), 10_000 - AMOUNT);
    let (status, again) = s.pay(&body(&first), &[]);
    assert_eq!((status, again["outcome"].as_str()), (200, Some("charged")), "asked again: the same, no second charge");
    assert_eq!(s.balance(&msisdn), 10_000 - AMOUNT);

    // A purchase seen from another line: this device's key is not that line's.
    let other = s.create("order-other", 0);
    let (capture2, other_msisdn) = capture(s.dir.path(), "other", true, &other.token);
    assert_ne!(other_msisdn, msisdn);
    s.subscriber(&other_msisdn);
    s.replay(&capture2);
    let (_, declined) = s.pay(&body(&other), &[]);
    assert_eq!(declined["decline_reason"].as_str(), Some("subscriber-mismatch"), "{declined}");
    assert_eq!(s.balance(&other_msisdn), 10_000, "the other line's hold went back");

    // SIGKILL mid-confirm: the agent waits on a PIN that never comes (a FIFO nobody writes), is killed,
    // restarted, and the app asks again: charged once.
    agent.kill().unwrap();
    agent.wait().unwrap();
    let fifo = s.dir.path().join("pin.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut stuck = s.agent(&fifo, "agent-stuck.log");
    let crash = s.create("order-crash", 0);
    let (capture3, _) = capture(s.dir.path(), "crash", false, &crash.token);
    s.replay(&capture3);
    let app = {
        let (namespace, body) = (s.net.namespace.clone(), body(&crash));
        std::thread::spawn(move || {
            Command::new("ip")
                .args(["netns", "exec", &namespace, "curl", "-s", "--max-time", "60", "-X", "POST"])
                .args(["-H", "Content-Type: application/json", "-H", "X-Gtpcharge-Pay: 1", "-d", &body])
                .arg("http://127.0.0.1:7353/v1/pay")
                .output()
                .unwrap()
        })
    };
    wait_for("the prompt", || {
        std::fs::read_to_string(s.dir.path().join("agent-stuck.log")).unwrap().contains("consent prompt shown")
    });
    // One prompt at a time: a second request while the first waits for the subscriber.
    let (status, busy) = s.pay(&body(&crash), &[]);
    assert_eq!(status, 409, "{busy}");
    stuck.kill().unwrap();
    stuck.wait().unwrap();
    let _ = app.join();
    assert_eq!(s.state(&crash), pb::PurchaseState::Authorized, "killed before answering: still held");
    let mut agent = s.agent(&s.pin_file, "agent-2.log");
    let (_, outcome) = s.pay(&body(&crash), &[]);
    assert_eq!(outcome["outcome"].as_str(), Some("charged"), "{outcome}");
    assert_eq!(s.balance(&msisdn), 10_000 - 2 * AMOUNT, "charged once");

    // A hold that expires before anyone answers: released, and the app is told.
    let expiring = s.create("order-expiring", 1);
    let (capture4, _) = capture(s.dir.path(), "expiring", false, &expiring.token);
    s.replay(&capture4);
    wait_for("the hold's expiry", || s.state(&expiring) == pb::PurchaseState::Expired);
    assert_eq!(s.balance(&msisdn), 10_000 - 2 * AMOUNT, "the balance is restored");
    let (_, outcome) = s.pay(&body(&expiring), &[]);
    assert_eq!(outcome["outcome"].as_str(), Some("expired"), "{outcome}");

    // Five wrong PINs: locked, the hold voided.
    agent.kill().unwrap();
    agent.wait().unwrap();
    let wrong = s.dir.path().join("wrong-pin");
    std::fs::write(&wrong, "0000\n").unwrap();
    let mut agent = s.agent(&wrong, "agent-wrong.log");
    let locked = s.create("order-locked", 0);
    let (capture5, _) = capture(s.dir.path(), "locked", false, &locked.token);
    s.replay(&capture5);
    let (_, outcome) = s.pay(&body(&locked), &[]);
    assert_eq!(outcome["decline_reason"].as_str(), Some("pin-locked"), "{outcome}");
    assert_eq!(s.balance(&msisdn), 10_000 - 2 * AMOUNT, "the hold went back");
    agent.kill().unwrap();
    agent.wait().unwrap();

    let checked = Command::new(BIN).args(["admin", "--database-url", &s.database, "check-ledger"]).output().unwrap();
    assert!(checked.status.success(), "the ledger balances: {}", String::from_utf8_lossy(&checked.stdout));
}
