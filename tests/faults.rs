//! Fault tests: the probe killed with SIGKILL while its spool holds undelivered sightings, and a spool
//! that fills up. After each, every purchase is charged exactly once and the ledger balances.
mod common;

use common::world::World;
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
    world.kill_server();
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

    world.restart_server();
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
    world.kill_server();
    let spool = world.dir.path().join("spool");
    let probe = replay_command(&world)
        .args(["--spool-dir", spool.to_str().unwrap(), "--spool-max-bytes", "1500", "--drain-timeout-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    world.restart_server();
    let output = probe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("spool full"), "the full spool must be reported: {stderr}");
    assert!(!stderr.contains("spool-full 0 "), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", world.truth.sightings.len())), "{stderr}");
    world.check();
}

/// Logs never contain a secret or an identity in full: the billing server at `debug` that created the
/// purchases (the SP's API key) and took the probe's reports (the probe key, MSISDNs and IMSIs), the probe
/// at `debug`, and a probe whose key is refused must not print an API key, a probe key, the database
/// password, an MSISDN or an IMSI.
#[test]
fn logs_hold_no_secrets_and_no_identities() {
    let world = World::new(23, 6);
    let output = replay_command(&world)
        .args(["--spool-dir", world.dir.path().join("spool").to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let probe_log = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{probe_log}");
    // The log did receive what it must not show: the outcome of each charge, naming its subscriber.
    assert!(probe_log.contains("billing outcome"), "{probe_log}");
    // A bad key too: its rejection must not echo it.
    let bad = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &world.url])
        .args(["--probe-key", "gcpk_wrongwrongwrong", "--drain-timeout-s", "1"])
        .args(["--spool-dir", world.dir.path().join("spool2").to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let bad_log = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(bad_log.contains("Unauthenticated"), "{bad_log}");
    let server_log = world.server_log();
    assert!(server_log.contains("billing API serving"), "{server_log}");
    assert!(server_log.contains("DEBUG"), "the server did not log at debug: {server_log}");
    for (name, log) in [("server", &server_log), ("probe", &probe_log), ("probe with a bad key", &bad_log)] {
        world.assert_log_clean(name, log);
        assert!(!log.contains("gcpk_wrongwrongwrong"), "the {name} log holds the refused key");
    }
    if common::world::password(&world.database).is_none() {
        common::not_run("DATABASE PASSWORD HALF OF THE LOG CHECK", "the test database URL has no password");
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
    world.kill_server();
    let probe = replay_command(&world)
        .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout-s", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    world.restart_server();
    let output = probe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("cannot write the spool"), "{stderr}");
    assert!(stderr.contains(" lost 0 "), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", world.truth.sightings.len())), "{stderr}");
    world.check();
}
