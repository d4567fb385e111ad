//! Billing API replicas: two `serve` processes on one PostgreSQL ledger, and a probe given both
//! (`--billing-url A,B`). The first is killed with SIGKILL while sightings are in flight; the probe moves
//! to the second, and every purchase is charged exactly once, to its subscriber (balances exact to the
//! cent, the ledger balanced).
mod common;

use common::not_run::not_run;
use common::world::{free_port, serve, wait_for, World};

#[test]
fn a_probe_fails_over_to_another_replica_and_every_purchase_is_charged_once() {
    if std::env::var_os("GTPCHARGE_TEST_DATABASE_URL").is_none() {
        return not_run(
            "REPLICA FAILOVER",
            "replicas share a PostgreSQL ledger; GTPCHARGE_TEST_DATABASE_URL is not set",
        );
    }
    let mut world = World::new(35, 60);
    let port_b = free_port();
    let mut replica_b = serve(&world.database, port_b, &world.server_log);
    let spool = world.dir.path().join("spool");
    let mut probe = world.replay_fed_to(&spool, &format!("{}, http://127.0.0.1:{port_b}", world.url));
    probe.feed(0.5);
    wait_for("charges through the first replica", || world.charged() > 0);
    let before_kill = world.charged();
    world.kill_server();
    let (status, log) = probe.finish();
    assert!(status.success(), "{log}");
    assert!(log.contains("trying the next replica"), "the probe never moved to the second replica:\n{log}");
    let expected = world.truth.sightings.len() as i64;
    assert!(before_kill < expected, "the first replica charged everything before it was killed: no failover tested");
    assert_eq!(world.charged(), expected);
    // The world's own checks go through the first replica's address: start it again.
    world.restart_server();
    world.check();
    let _ = replica_b.kill();
    let _ = replica_b.wait();
}
