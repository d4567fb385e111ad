//! Fault tests: the probe killed with SIGKILL while its spool holds undelivered sightings, and a spool
//! that fills up. After each, every purchase is charged exactly once and the ledger balances.
mod common;

use common::world::{serve, World};
use gtpcharge_pcapgen::PcapFile;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let mut probe = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &world.url, "--probe-key", &world.probe_key])
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
    let probe = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &world.url, "--probe-key", &world.probe_key])
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
