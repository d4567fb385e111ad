//! No plaintext off the loopback, secrets off the command line, personal data on disk private. Nothing
//! here sends a packet anywhere but the loopback: the refusals happen before any connection.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gtpcharge_under_umask_000(args: &[&str]) -> std::process::Output {
    let mut line = format!("umask 000; exec '{}'", env!("CARGO_BIN_EXE_gtpcharge"));
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    Command::new("sh").args(["-c", &line]).output().unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn sample() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.pcap").display().to_string()
}

#[test]
fn serve_refuses_plaintext_off_the_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("sqlite://{}", dir.path().join("refused.sqlite").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["serve", "--listen", "0.0.0.0:0", "--database-url", &ledger])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A server that wrongly starts never exits by itself: bound the wait, then fail.
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("serve kept running on 0.0.0.0 without TLS");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--tls-cert") && stderr.contains("--allow-plaintext"), "{stderr}");
    assert!(!dir.path().join("refused.sqlite").exists(), "refused before the ledger was touched");
}

/// With --allow-plaintext it serves, says so, and its new SQLite ledger is owner-only under umask 000
/// (at a path whose URL has no `mode=rwc`: the file is created all the same).
#[test]
fn allowed_plaintext_is_said_and_the_new_ledger_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.sqlite");
    let line = format!(
        "umask 000; exec '{}' serve --listen 0.0.0.0:0 --allow-plaintext --database-url 'sqlite://{}'",
        env!("CARGO_BIN_EXE_gtpcharge"),
        file.display()
    );
    let mut child = Command::new("sh").args(["-c", &line]).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !file.exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("without TLS off the loopback"), "{stderr}");
    assert_eq!(mode(&file), 0o600, "{stderr}");
}

#[test]
fn the_probe_refuses_an_http_billing_url_off_the_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("probe.key");
    std::fs::write(&key, "gcpk_whatever\n").unwrap();
    // 192.0.2.1 (TEST-NET-1) is never contacted: the refusal comes before any connection.
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", &sample(), "--billing-url", "http://192.0.2.1:50051", "--probe-key-file"])
        .arg(&key)
        .args(["--spool-dir", dir.path().join("spool").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("in the clear") && stderr.contains("--allow-plaintext"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// A key typed on the command line works but is warned about (never printed); the spool it leaves
/// (the API is not there) is owner-only under umask 000; a key file that is missing is named.
#[test]
fn command_line_secrets_are_warned_about_and_the_spool_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let closed = format!("http://127.0.0.1:{}", common_free_port());
    let output = gtpcharge_under_umask_000(&[
        "replay",
        &sample(),
        "--billing-url",
        &closed,
        "--probe-key",
        "gcpk_typed_on_the_command_line",
        "--spool-dir",
        spool.to_str().unwrap(),
        "--drain-timeout-s",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--probe-key was given on the command line"), "{stderr}");
    assert!(!stderr.contains("gcpk_typed_on_the_command_line"), "the key itself is never printed: {stderr}");
    assert_eq!(mode(&spool), 0o700);
    let batches: Vec<_> = std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!batches.is_empty(), "sightings wait in the spool: {stderr}");
    for batch in batches {
        assert_eq!(mode(&batch), 0o600, "{}", batch.display());
    }

    let missing = dir.path().join("no-such.key");
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", &sample(), "--billing-url", &closed, "--probe-key-file", missing.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no-such.key"), "{stderr}");
}

fn common_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every `admin` action that creates or revokes a key, creates an SP or sets an account leaves an audit
/// record (who: the Unix user; what; on what), and `admin audit` lists them newest first without a
/// secret.
#[test]
fn admin_actions_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("sqlite://{}?mode=rwc", dir.path().join("audited.sqlite").display());
    let admin = |args: &[&str]| -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
            .args(["admin", "--database-url", &ledger])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let field = |text: &str, name: &str| -> String {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}\t"))).unwrap().to_owned()
    };
    let sp = admin(&["sp", "create", "audited", "--allow-network-consent"]);
    let probe = admin(&["probe", "create", "probe-1"]);
    let operator = admin(&["operator", "create", "ops"]);
    admin(&["account", "set", "46700000099", "--currency", "EUR", "--balance", "700"]);
    admin(&["revoke", &field(&probe, "key_id")]);
    let trail = admin(&["audit"]);
    let rows: Vec<Vec<&str>> = trail.lines().map(|l| l.split('\t').collect()).collect();
    let actions: Vec<(&str, &str)> = rows.iter().map(|r| (r[3], r[4])).collect();
    let probe_key_id = field(&probe, "key_id");
    assert_eq!(
        actions,
        [
            ("key.revoke", probe_key_id.as_str()),
            ("account.set", "46700000099"),
            ("key.create", field(&operator, "key_id").as_str()),
            ("key.create", probe_key_id.as_str()),
            ("sp.create", field(&sp, "service_provider_id").as_str()),
        ],
        "{trail}"
    );
    for row in &rows {
        assert!(row[2].starts_with("admin (uid "), "{trail}");
    }
    for secret in [field(&sp, "api_key"), field(&probe, "probe_key"), field(&operator, "operator_key")] {
        assert!(!trail.contains(&secret), "the audit trail holds a secret");
    }
    assert!(rows[1][5].contains("balance=700"), "{trail}");
}

/// Bad keys from one peer through the real CLI client: counted on the API's metrics endpoint, the
/// sixth and seventh answered late (delayed), and the server's log names the peer, never the key.
#[test]
fn bad_keys_are_counted_on_the_api_metrics_and_logged_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("sqlite://{}?mode=rwc", dir.path().join("guarded.sqlite").display());
    let (port, metrics_port) = (common_free_port(), common_free_port());
    let log = dir.path().join("serve.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &ledger])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bad_key = "gcsk_guessguessguessguess";
    for _ in 0..7 {
        let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
            .args(["purchase", "--billing-url", &format!("http://127.0.0.1:{port}")])
            .args(["create", "--product-id", "p", "--amount", "1", "--currency", "EUR"])
            .env("GTPCHARGE_API_KEY", bad_key)
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert!(!String::from_utf8_lossy(&output.stderr).contains(bad_key), "the refusal echoes the key");
    }
    std::thread::sleep(Duration::from_millis(1500)); // the exposition is rendered once a second
    let metrics = common::metrics(metrics_port);
    let _ = server.kill();
    let _ = server.wait();
    assert!(metrics.contains("gtpcharge_api_auth_failures_total 7\n"), "{metrics}");
    assert!(metrics.contains("gtpcharge_api_auth_failures_delayed_total 2\n"), "{metrics}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("authentication failed") && log.contains("127.0.0.1"), "{log}");
    assert!(!log.contains(bad_key), "the server log holds the guessed key");
}
