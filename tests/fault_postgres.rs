//! PostgreSQL stopped while charges are in flight, and started again: the billing API's calls wait for
//! the database (or answer UNAVAILABLE after 30 s and the probe retries from its spool), the pool
//! reconnects, and every purchase ends up charged exactly once. Alone in its test binary because it
//! stops the shared server (the cluster that listens on the URL's port, whichever that is).
mod common;

use common::world::{wait_for, World};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The port of a PostgreSQL URL (`postgres://user@host:port/db`; 5432 when absent).
fn port(url: &str) -> u16 {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    host.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).unwrap_or(5432)
}

/// The cluster (version, name) of `pg_lsclusters` that listens on `port`.
fn cluster(port: u16) -> Result<(String, String), String> {
    let output = Command::new("pg_lsclusters").arg("-h").output().map_err(|e| {
        format!("pg_lsclusters cannot run ({e}); the test stops and starts the cluster with pg_ctlcluster")
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&port.to_string().as_str()))
        .map(|fields| (fields[0].to_owned(), fields[1].to_owned()))
        .ok_or_else(|| format!("no cluster of pg_lsclusters listens on port {port}:\n{text}"))
}

#[test]
fn postgres_stopped_with_charges_in_flight_charges_every_purchase_once() {
    const WHAT: &str = "POSTGRESQL STOPPED MID-DELIVERY";
    let Ok(url) = std::env::var("GTPCHARGE_TEST_DATABASE_URL") else {
        common::not_run(WHAT, "GTPCHARGE_TEST_DATABASE_URL is not set (.ci/test sets it)");
        return;
    };
    let (version, name) = match cluster(port(&url)) {
        Ok(cluster) => cluster,
        Err(why) => return common::not_run(WHAT, &why),
    };
    let world = World::new(31, 40);
    let total = world.truth.sightings.len() as i64;
    let pg = |action: &str| {
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, &name, action])
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctlcluster {version} {name} {action}");
    };
    /// Starts the cluster again however the test ends: later tests need it.
    struct Restart(String, String);
    impl Drop for Restart {
        fn drop(&mut self) {
            let _ =
                Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", &self.0, &self.1, "start"]).status();
        }
    }
    let _restart = Restart(version.clone(), name.clone());

    // The first half of the capture: charges land.
    let mut probe = world.replay_fed(&world.dir.path().join("spool"));
    probe.feed(0.5);
    wait_for("the first charges", || world.charged() > 0);
    let before = world.charged();
    assert!(before < total, "the second half of the capture must still carry charges ({before} of {total} charged)");

    // The database goes away; the rest of the capture reaches the probe, whose sightings reach the API.
    pg("stop");
    probe.feed(1.0);
    std::thread::sleep(Duration::from_secs(2));
    let restarted_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
    pg("start");
    let (status, log) = probe.finish();
    assert!(status.success(), "{log}");
    assert!(log.contains(&format!("delivered {total}  ")), "{log}");

    // Charges that were in flight when the database stopped went through after the restart.
    let late = world.runtime.block_on(async {
        let pool = sqlx::AnyPool::connect(&world.database).await.unwrap();
        let (late,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM purchases WHERE state = 'charged' AND charged_at_us >= $1")
                .bind(restarted_us)
                .fetch_one(&pool)
                .await
                .unwrap();
        late
    });
    // (Charges the API committed while the server was shutting down count in neither; none is lost:
    // `check` below finds every purchase charged once.)
    assert!(late > 0, "no charge waited through the outage: the test did not overlap the load");
    world.check();
    world.assert_log_clean("probe", &log);
    world.assert_log_clean("server", &world.server_log());
}

#[test]
fn ports_of_urls() {
    assert_eq!(port("postgres://postgres@127.0.0.1:5433/test"), 5433);
    assert_eq!(port("postgres://postgres:pw@localhost/test"), 5432);
    assert_eq!(port("postgres://u:p:w@[::1]:6000/db"), 6000);
}
