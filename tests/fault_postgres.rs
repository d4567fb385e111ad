//! PostgreSQL stopped and started again while the probe is delivering: the billing API's calls wait for
//! the database (or answer UNAVAILABLE after 30 s and the probe retries from its spool), the pool
//! reconnects, and every purchase ends up charged exactly once. Alone in its test binary because it restarts the shared server.
mod common;

use common::world::World;
use std::process::Command;
use std::time::Duration;

fn cluster() -> Option<String> {
    std::env::var("GTPCHARGE_TEST_DATABASE_URL").ok()?;
    let output = Command::new("pg_lsclusters").arg("-h").output().ok()?;
    let line = String::from_utf8_lossy(&output.stdout).lines().next()?.to_owned();
    let mut fields = line.split_whitespace();
    Some(format!("{} {}", fields.next()?, fields.next()?))
}

#[test]
fn postgres_restarted_mid_delivery_charges_every_purchase_once() {
    let Some(cluster) = cluster() else {
        eprintln!(
            "\n*** POSTGRESQL RESTART FAULT TEST NOT RUN: needs GTPCHARGE_TEST_DATABASE_URL and pg_ctlcluster ***\n"
        );
        return;
    };
    let (version, name) = cluster.split_once(' ').unwrap();
    let world = World::new(31, 40);
    let pg = |action: &str| {
        let status =
            Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", version, name, action]).status().unwrap();
        assert!(status.success(), "pg_ctlcluster {action}");
    };
    /// Starts the cluster again however the test ends: later tests need it.
    struct Restart(String, String);
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ =
                Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &self.0, &self.1, "start"]).status();
        }
    }
    let _restart = Restart(version.to_owned(), name.to_owned());
    pg("stop");
    let started = std::time::Instant::now();
    let spool = world.dir.path().join("spool");
    let probe = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", world.capture.to_str().unwrap(), "--billing-url", &world.url, "--probe-key", &world.probe_key])
        .args(["--spool-dir", spool.to_str().unwrap(), "--drain-timeout-s", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    pg("start");
    let output = probe.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The delivery could not finish while the database was down: the outage overlapped the load (the
    // API's pool waits for the database, up to 30 s, before answering UNAVAILABLE and being retried).
    assert!(started.elapsed() >= Duration::from_millis(1900), "{stderr}");
    assert!(stderr.contains(&format!("delivered {}  ", world.truth.sightings.len())), "{stderr}");
    world.check();
}
