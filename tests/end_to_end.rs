//! The whole flow with the real pieces: `gtpcharge serve` as a process on PostgreSQL (a fresh database;
//! SQLite when `GTPCHARGE_TEST_DATABASE_URL` is unset, said loudly), an SP creating purchases through
//! gRPC, a generated Gn capture carrying those tokens, and `gtpcharge replay --billing-url`.
//! (a) every purchase is charged to the MSISDN that sent its token, unattributed tokens are not charged;
//! (c) the billing server is killed with SIGKILL with charges in flight (half the capture delivered, the
//!     rest reaching the probe while it is down) and started again: the spool drains and every purchase
//!     is charged exactly once;
//! (d) the same capture replayed again charges nothing new.
mod common;

use common::world::{free_port, wait_for, World};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn replay_charges_each_purchase_once_through_a_killed_and_restarted_server() {
    let mut world = World::new(5, 20);
    let total = world.truth.sightings.len();
    let spool = world.dir.path().join("spool");
    // (c) The first half of the capture reaches the probe and its charges land; then the server dies
    // hard with the rest in flight: the sightings wait in the spool until it returns.
    let mut probe = world.replay_fed(&spool);
    probe.feed(0.5);
    wait_for("the first charges", || world.charged() > 0);
    let before = world.charged() as usize;
    assert!(before < total, "the second half must still carry charges ({before} of {total})");
    world.kill_server();
    probe.feed(1.0);
    wait_for("sightings in the spool while the API is down", || batches(&spool) > 0);
    world.restart_server();
    let (status, log) = probe.finish();
    assert!(status.success(), "{log}");
    assert!(log.contains(&format!("delivered {total}  ")), "{log}");
    assert!(log.contains("billing API unavailable"), "the probe never saw the API gone: {log}");
    assert_eq!(batches(&spool), 0);

    // (a) Every purchase charged to the MSISDN that sent its token; unattributed ones untouched.
    world.check();
    world.assert_log_clean("probe", &log);
    world.assert_log_clean("server", &world.server_log());

    // (d) The same capture again: everything is already charged, nothing moves.
    let again = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &world.url])
        .args(["--probe-key", &world.probe_key, "--spool-dir", spool.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("already-charged={total}]")) || stderr.contains(&format!("already-charged={total} ")),
        "{stderr}"
    );
    assert!(!stderr.contains(" charged="), "{stderr}");
    world.check();
}

/// Spool batch files waiting for delivery.
fn batches(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "batch"))).count())
        .unwrap_or(0)
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
    // 34 sightings: 33 purchases (one with DEVICE consent, confirmed through the pay agent's code) and
    // one device enrollment.
    assert!(stderr.contains("33 of 33 purchases charged to the subscriber who sent the token"), "{stderr}");
    assert!(stderr.contains("DEVICE purchase") && stderr.contains("signed consent: charged"), "{stderr}");
    assert!(stderr.contains("ledger balanced"), "{stderr}");
    let events = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        events,
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.expected.jsonl"))
            .unwrap()
    );
}

/// Run elsewhere than the repository's root, on a machine without the package, the demo's default sample
/// is not found: it says where it looked and how to name one, and writes nothing on stdout.
#[test]
fn the_demo_outside_the_repository_says_where_the_sample_is() {
    if std::path::Path::new("/usr/share/gtpcharge/sample.pcap").exists() {
        return common::not_run::not_run("DEMO WITHOUT A SAMPLE", "the Debian package's sample is installed here");
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .current_dir(dir.path())
        .args(["demo", "--workdir", dir.path().join("work").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no sample capture at pcaps/sample.pcap or /usr/share/gtpcharge/sample.pcap"), "{stderr}");
    assert!(stderr.contains("gtpcharge demo PATH"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// (b) Live: the capture is played onto one end of a veth pair whose other end is in a network
/// namespace this test creates; `gtpcharge capture` listens on the root-namespace end, reports to the
/// billing server, and stops on SIGTERM after draining. Same result as the replay. Where namespaces
/// cannot be created, the test fails and says so: it is never skipped silently.
#[test]
fn live_capture_on_a_veth_pair_charges_like_replay() {
    let world = World::new(9, 12);
    let veth = common::VethPair::new("e2e");
    let (probe_end, wire_end, namespace) = (&veth.probe_end, &veth.wire_end, &veth.namespace);
    let spool = world.dir.path().join("live-spool");
    let metrics_port = free_port();
    let capture = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["capture", "--interface", probe_end, "--billing-url", &world.url, "--probe-key", &world.probe_key])
        .args(["--spool-dir", spool.to_str().unwrap(), "--emit", "jsonl"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The metrics endpoint starts after libpcap has opened the interface: wait for it.
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "gtpcharge capture did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let inject = Command::new("ip")
        .args([
            "netns",
            "exec",
            namespace,
            env!("CARGO_BIN_EXE_gtpcharge"),
            "inject",
            "--interface",
            wire_end,
            "--pps",
            "5000",
        ])
        .arg(&world.capture)
        .output()
        .unwrap();
    assert!(inject.status.success(), "inject: {}", String::from_utf8_lossy(&inject.stderr));
    // Metrics are rendered about once a second; give the last batch time to be counted and rendered.
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = common::metrics(metrics_port);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("gtpcharge_packets_total") >= world.truth.frames, "{metrics}");
    assert_eq!(value("gtpcharge_sightings_total"), world.truth.sightings.len() as u64, "{metrics}");
    assert!(value("gtpcharge_libpcap_received_total") >= world.truth.frames, "{metrics}");
    assert!(metrics.contains("gtpcharge_charges_total{outcome=\"charged\"}"), "{metrics}");
    let status = Command::new("kill").args(["-TERM", &capture.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = capture.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "capture must exit 0 on SIGTERM: {stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", world.truth.sightings.len())), "{stderr}");
    assert!(stderr.contains("libpcap received"), "{stderr}");
    world.check();
}
