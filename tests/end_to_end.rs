//! The whole flow with the real pieces: `gtpcharge serve` as a process on PostgreSQL (a fresh database;
//! SQLite when `GTPCHARGE_TEST_DATABASE_URL` is unset, said loudly), an SP creating purchases through
//! gRPC, a generated Gn capture carrying those tokens, and `gtpcharge replay --billing-url`.
//! (a) every purchase is charged to the MSISDN that sent its token, unattributed tokens are not charged;
//! (c) the billing server is killed with SIGKILL before the replay and started again while the probe
//!     waits: the spool drains and every purchase is charged exactly once;
//! (d) the same capture replayed again charges nothing new.
mod common;

use common::world::{free_port, serve, World};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn replay_charges_each_purchase_once_through_a_killed_and_restarted_server() {
    let mut world = World::new(5, 20);
    let (database, url, probe_key, port) =
        (world.database.clone(), world.url.clone(), world.probe_key.clone(), world.port);
    let (capture, truth) = (world.capture.clone(), world.truth.clone());
    let dir = world.dir.path().to_path_buf();
    // (c) The server dies hard; the probe replays against nothing, spools, and waits for it to return.
    world.server.kill().unwrap();
    world.server.wait().unwrap();
    let spool = dir.join("spool");
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
    world.server = serve(&database, port);
    let output = replay.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", truth.sightings.len())), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&spool)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "batch"))
            .count(),
        0
    );

    // (a) Every purchase charged to the MSISDN that sent its token; unattributed ones untouched.
    world.check();

    // (d) The same capture again: everything is already charged, nothing moves.
    let again = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", capture.to_str().unwrap(), "--billing-url", &url, "--probe-key", &probe_key])
        .args(["--spool-dir", spool.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("already-charged={}]", truth.sightings.len()))
            || stderr.contains(&format!("already-charged={} ", truth.sightings.len())),
        "{stderr}"
    );
    assert!(!stderr.contains(" charged="), "{stderr}");
    world.check();
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
    assert_eq!(
        events,
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pcaps/sample.expected.jsonl"))
            .unwrap()
    );
}

/// Run elsewhere than the repository's root, the demo's default sample is not found: it says where the
/// sample is and how to name it, and writes nothing on stdout.
#[test]
fn the_demo_outside_the_repository_says_where_the_sample_is() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .current_dir(dir.path())
        .args(["demo", "--workdir", dir.path().join("work").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("pcaps/sample.pcap: cannot read"), "{stderr}");
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
    let metrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
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
