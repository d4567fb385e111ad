//! Fault tests: the probe killed with SIGKILL while its spool holds undelivered sightings, and a spool
//! that fills up. After each, every purchase is charged exactly once and the ledger balances.
mod common;

use common::world::{serve, World};
use gtpcharge_pcapgen::PcapFile;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `gtpcharge replay` of the world's capture, reporting to its billing server.
fn replay_command(world: &World) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gtpcharge"));
    command.args([
        "replay",
        world.capture.to_str().unwrap(),
        "--billing-url",
        &world.url,
        "--probe-key",
        &world.probe_key,
    ]);
    command
}

fn batches(spool: &Path) -> usize {
    std::fs::read_dir(spool)
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "batch"))).count())
        .unwrap_or(0)
}

#[test]
fn probe_killed_with_a_full_spool_delivers_it_on_the_next_start() {
    let mut world = World::new(21, 16);
    world.server.kill().unwrap();
    world.server.wait().unwrap();
    let spool = world.dir.path().join("spool");
    let mut probe = replay_command(&world)
        .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while batches(&spool) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing reached the spool");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    probe.kill().unwrap(); // SIGKILL: no drain, no goodbye
    probe.wait().unwrap();
    let left = batches(&spool);
    assert!(left > 0, "the spool must survive the crash");

    world.server = serve(&world.database, world.port);
    // The next start, even replaying nothing, sends what it finds in the spool first.
    let empty = world.dir.path().join("empty.pcap");
    PcapFile::create(&empty).unwrap().finish().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", empty.to_str().unwrap(), "--billing-url", &world.url, "--probe-key", &world.probe_key])
        .args(["--spool-dir", spool.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let recovered = format!("recovered-from-spool {}  ", world.truth.sightings.len());
    assert!(stderr.contains(&recovered), "{stderr}");
    assert_eq!(batches(&spool), 0);
    world.check();
}

#[test]
fn a_full_spool_is_loud_and_loses_nothing() {
    let mut world = World::new(22, 16);
    world.server.kill().unwrap();
    world.server.wait().unwrap();
    let spool = world.dir.path().join("spool");
    let probe = replay_command(&world)
        .args(["--spool-dir", spool.to_str().unwrap(), "--spool-max-bytes", "1500", "--drain-timeout-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    world.server = serve(&world.database, world.port);
    let output = probe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("spool full"), "the full spool must be reported: {stderr}");
    assert!(!stderr.contains("spool-full 0 "), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", world.truth.sightings.len())), "{stderr}");
    world.check();
}

/// Logs never contain a secret: the billing server at `debug`, with SP and probe calls made and the
/// database URL given, must not print an API key, a probe key or the database password.
#[test]
fn server_logs_hold_no_secrets() {
    let world = World::new(23, 6);
    let port = common::world::free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .env("RUST_LOG", "debug")
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &world.database])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the server's log as it comes: a full pipe would stall the server.
    let mut stderr = server.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
        log
    });
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}");
    let output = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &url, "--probe-key", &world.probe_key])
        .args(["--spool-dir", world.dir.path().join("spool").to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(output.status.success());
    let probe_log = String::from_utf8_lossy(&output.stderr).into_owned();
    // A bad key too: its rejection must not echo it.
    let bad = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &url, "--probe-key", "gcpk_wrongwrongwrong"])
        .args(["--spool-dir", world.dir.path().join("spool2").to_str().unwrap(), "--drain-timeout-s", "1"])
        .output()
        .unwrap();
    let bad_log = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(bad_log.contains("Unauthenticated"), "{bad_log}");
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    server.wait().unwrap();
    let server_log = reader.join().unwrap();
    assert!(server_log.contains("billing API serving"), "{server_log}");
    for (name, log) in [("server", &server_log), ("probe", &probe_log), ("probe with a bad key", &bad_log)] {
        for secret in [world.probe_key.as_str(), world.api_key.as_str(), "gcpk_wrongwrongwrong"] {
            assert!(!log.contains(secret), "the {name} log holds a secret");
        }
    }
}

/// The spool's disk is full (a 4 KiB tmpfs): the probe says so loudly, takes no more sightings, keeps
/// the batch in memory and sends it straight to the API once the API is back; nothing is lost.
#[test]
fn spool_disk_full_is_loud_and_loses_nothing_once_the_api_is_back() {
    let mut world = World::new(24, 48); // enough sightings that one batch exceeds the 4 KiB disk
    let spool = world.dir.path().join("tiny-disk");
    std::fs::create_dir_all(&spool).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=4k", "tmpfs", spool.to_str().unwrap()]).status();
    assert!(
        mounted.is_ok_and(|s| s.success()),
        "SPOOL DISK FULL TEST CANNOT RUN: mounting a tmpfs needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    world.server.kill().unwrap();
    world.server.wait().unwrap();
    let probe = replay_command(&world)
        .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    world.server = serve(&world.database, world.port);
    let output = probe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot write the spool"), "{stderr}");
    assert!(stderr.contains(" lost 0 "), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", world.truth.sightings.len())), "{stderr}");
    world.check();
}
