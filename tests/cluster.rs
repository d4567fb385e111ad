//! Probes that share subscriber state through NATS JetStream (`--cluster`), on the NATS server at
//! 127.0.0.1:4222 (`GTPCHARGE_TEST_NATS`; `.ci/setup` checks it), with a stream per test. A generated
//! capture is split as a packet broker would split a link: the control plane (GTP-C, and GTPv0, which
//! carries both planes) to one file, the user plane to two by TEID parity, frames that are neither (IP
//! fragments, malformed ones) to all three. Three `gtpcharge replay --cluster` processes deliver to one
//! billing API, and every subscriber must be charged exactly what the capture's truth says, as one
//! probe reading the whole link would.
mod common;

use common::not_run::not_run;
use common::world::{wait_for, World};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn nats_url() -> Option<String> {
    let url = std::env::var("GTPCHARGE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let address = url.trim_start_matches("nats://").to_owned();
    if std::net::TcpStream::connect(&address).is_err() {
        not_run("CLUSTER", &format!("no NATS server at {url} (set GTPCHARGE_TEST_NATS)"));
        return None;
    }
    Some(url)
}

/// Splits a pcap: control plane, user plane by TEID parity (0 and 1); other frames to all three.
fn split(capture: &Path, dir: &Path) -> [PathBuf; 3] {
    let bytes = std::fs::read(capture).unwrap();
    let header = &bytes[..24];
    let names = ["control.pcap", "user-even.pcap", "user-odd.pcap"].map(|n| dir.join(n));
    let mut outputs: Vec<Vec<u8>> = (0..3).map(|_| header.to_vec()).collect();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let record = &bytes[at..at + 16 + caplen];
        let frame = &record[16..];
        let targets: Vec<usize> = match etherparse::SlicedPacket::from_ethernet(frame) {
            Ok(packet) => match packet.transport {
                Some(etherparse::TransportSlice::Udp(udp)) => {
                    let ports = [udp.source_port(), udp.destination_port()];
                    let payload = udp.payload();
                    if ports.contains(&2123) || ports.contains(&3386) {
                        vec![0]
                    } else if ports.contains(&2152) && payload.len() >= 8 {
                        let teid = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                        vec![1 + (teid % 2) as usize]
                    } else {
                        vec![0, 1, 2]
                    }
                }
                _ => vec![0, 1, 2],
            },
            Err(_) => vec![0, 1, 2],
        };
        for target in targets {
            outputs[target].extend_from_slice(record);
        }
        at += 16 + caplen;
    }
    for (name, output) in names.iter().zip(outputs) {
        std::fs::write(name, output).unwrap();
    }
    names
}

/// `gtpcharge replay FILE --cluster ...` delivering to the world's API.
fn probe(world: &World, file: &Path, cluster: (&str, &str), id: &str, extra: &[&str]) -> Child {
    let log = std::fs::File::create(world.dir.path().join(format!("{id}.log"))).unwrap();
    let spool = world.dir.path().join(format!("spool-{id}"));
    Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", file.to_str().unwrap(), "--billing-url", &world.url, "--probe-key", &world.probe_key])
        .args(["--spool-dir", spool.to_str().unwrap(), "--cluster", cluster.0, "--cluster-name", cluster.1])
        .args(["--probe-id", id])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// What each subscriber was charged, from the ledger, against what the capture's truth says.
fn assert_charged_as_truth(world: &World, what: &str) {
    wait_for("the charges", || world.charged() as usize >= world.truth.sightings.len());
    world.check();
    assert_eq!(world.charged() as usize, world.truth.sightings.len(), "{what}");
}

fn finish(world: &World, mut probes: Vec<(String, Child)>) {
    for (id, child) in &mut probes {
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(world.dir.path().join(format!("{id}.log"))).unwrap();
        assert!(status.success(), "probe {id} failed:\n{log}");
    }
}

#[test]
fn three_probes_on_a_split_link_charge_what_one_probe_would() {
    let Some(url) = nats_url() else { return };
    let world = World::new(61, 40);
    let files = split(&world.capture, world.dir.path());
    let name = format!("test-split-{}", std::process::id());
    let probes: Vec<(String, Child)> = ["cp", "up0", "up1"]
        .iter()
        .zip(&files)
        .map(|(id, file)| (id.to_string(), probe(&world, file, (&url, &name), id, &[])))
        .collect();
    finish(&world, probes);
    assert_charged_as_truth(&world, "three probes started together");
    // The stream is compacted per tunnel: a subject a tunnel (and a probe), a few messages each.
    let stream = format!("GTPCHARGE_TEST_SPLIT_{}", std::process::id());
    let info = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let client = async_nats::connect(url.trim_start_matches("nats://")).await.unwrap();
        let mut stream = async_nats::jetstream::new(client).get_stream(&stream).await.unwrap();
        stream.info().await.unwrap().clone()
    });
    assert_eq!(info.config.max_messages_per_subject, 4);
    assert_eq!(info.config.subjects, [format!("gtpcharge.{name}.>")]);
    assert!(info.state.subjects_count > 20, "one subject a tunnel: {:?}", info.state);
}

#[test]
fn user_plane_probes_started_before_the_control_plane_wait_for_it() {
    let Some(url) = nats_url() else { return };
    let world = World::new(62, 30);
    let files = split(&world.capture, world.dir.path());
    let name = format!("test-late-cp-{}", std::process::id());
    // Two of the probes correlate on shards (`--workers`): what they publish and place is the same.
    let mut probes: Vec<(String, Child)> = vec![
        ("up0".into(), probe(&world, &files[1], (&url, &name), "up0", &["--workers", "2"])),
        ("up1".into(), probe(&world, &files[2], (&url, &name), "up1", &[])),
    ];
    // The user plane is replayed first: its tokens wait (within the grace) for the control plane.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    probes.push(("cp".into(), probe(&world, &files[0], (&url, &name), "cp", &["--workers", "3"])));
    finish(&world, probes);
    assert_charged_as_truth(&world, "user plane first");
}

#[test]
fn a_probe_that_joins_late_reads_the_view_from_the_stream() {
    let Some(url) = nats_url() else { return };
    let world = World::new(63, 30);
    let files = split(&world.capture, world.dir.path());
    let name = format!("test-join-late-{}", std::process::id());
    // The control plane first, to its end; then the user plane with no grace at all: every token must be
    // placed by what the stream held when the probe joined, or it would be unattributed and uncharged.
    finish(&world, vec![("cp".into(), probe(&world, &files[0], (&url, &name), "cp", &[]))]);
    let probes = files[1..]
        .iter()
        .enumerate()
        .map(|(i, file)| {
            (format!("up{i}"), probe(&world, file, (&url, &name), &format!("up{i}"), &["--cluster-grace-ms", "0"]))
        })
        .collect();
    finish(&world, probes);
    assert_charged_as_truth(&world, "late joiners");
}

/// Where a capture's first half ends: the first record boundary past the middle of its bytes.
fn half(bytes: &[u8]) -> usize {
    let mut cut = 24;
    while cut + 16 <= bytes.len() && cut < bytes.len() / 2 {
        cut += 16 + u32::from_le_bytes(bytes[cut + 8..cut + 12].try_into().unwrap()) as usize;
    }
    cut
}

/// `gtpcharge replay -` in the cluster, its capture fed by the test on its standard input.
fn fed_probe(world: &World, cluster: (&str, &str), id: &str) -> (Child, std::process::ChildStdin) {
    let spool = world.dir.path().join(format!("spool-{id}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["replay", "-", "--single-thread", "--billing-url", &world.url, "--probe-key", &world.probe_key])
        .args(["--spool-dir", spool.to_str().unwrap(), "--cluster", cluster.0, "--cluster-name", cluster.1])
        .args(["--probe-id", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(world.dir.path().join(format!("{id}.log"))).unwrap())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// A probe fed the first half of `file`, then killed with SIGKILL.
fn killed_half_way(world: &World, file: &Path, cluster: (&str, &str), id: &str) {
    use std::io::Write;
    let bytes = std::fs::read(file).unwrap();
    let (mut child, mut stdin) = fed_probe(world, cluster, id);
    stdin.write_all(&bytes[..half(&bytes)]).unwrap();
    stdin.flush().unwrap();
    // Long enough for the half to be read, correlated and published.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_control_plane_probe_killed_mid_run_and_restarted_loses_and_doubles_nothing() {
    let Some(url) = nats_url() else { return };
    let world = World::new(64, 30);
    let files = split(&world.capture, world.dir.path());
    let name = format!("test-kill-{}", std::process::id());
    // The user plane waits long enough for the control plane's restart.
    let wait = ["--cluster-grace-ms", "30000"];
    let mut probes: Vec<(String, Child)> = vec![
        ("up0".into(), probe(&world, &files[1], (&url, &name), "up0", &wait)),
        ("up1".into(), probe(&world, &files[2], (&url, &name), "up1", &wait)),
    ];
    killed_half_way(&world, &files[0], (&url, &name), "cp");
    // Restarted, it reads its link again from the start: the changes it had published are the same
    // messages (same ids) and are stored once.
    probes.push(("cp".into(), probe(&world, &files[0], (&url, &name), "cp", &[])));
    finish(&world, probes);
    assert_charged_as_truth(&world, "control plane killed and restarted");
}

#[test]
fn the_same_link_replayed_by_two_probes_doubles_nothing() {
    let Some(url) = nats_url() else { return };
    let world = World::new(65, 30);
    let name = format!("test-twice-{}", std::process::id());
    let probes =
        ["a", "b"].iter().map(|id| (id.to_string(), probe(&world, &world.capture, (&url, &name), id, &[]))).collect();
    finish(&world, probes);
    assert_charged_as_truth(&world, "one link, two probes");
}

/// A NATS server of this test's own (JetStream, its store in `dir`) on `port`.
fn nats_server(dir: &Path, port: u16) -> Option<Child> {
    let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].into_iter().find(|p| Path::new(p).exists())?;
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_for("the test's NATS server", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    Some(child)
}

#[test]
fn a_restart_of_the_nats_server_mid_run_loses_nothing() {
    use std::io::Write;
    let world = World::new(66, 30);
    let store = world.dir.path().join("nats");
    let port = common::world::free_port();
    let Some(mut server) = nats_server(&store, port) else {
        not_run("NATS RESTART", "nats-server is not installed (.ci/setup installs it)");
        return;
    };
    let url = format!("nats://127.0.0.1:{port}");
    let files = split(&world.capture, world.dir.path());
    let name = format!("test-nats-restart-{}", std::process::id());
    let wait = ["--cluster-grace-ms", "30000"];
    let mut probes: Vec<(String, Child)> = vec![
        ("up0".into(), probe(&world, &files[1], (&url, &name), "up0", &wait)),
        ("up1".into(), probe(&world, &files[2], (&url, &name), "up1", &wait)),
    ];
    // The control plane fed in two halves, the server killed and restarted between them.
    let bytes = std::fs::read(&files[0]).unwrap();
    let cut = half(&bytes);
    let (cp, mut stdin) = fed_probe(&world, (&url, &name), "cp");
    stdin.write_all(&bytes[..cut]).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.kill().unwrap();
    server.wait().unwrap();
    stdin.write_all(&bytes[cut..]).unwrap();
    drop(stdin);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let mut server = nats_server(&store, port).expect("the NATS server restarts");
    probes.push(("cp".into(), cp));
    finish(&world, probes);
    assert_charged_as_truth(&world, "NATS restarted mid-run");
    let _ = server.kill();
    let _ = server.wait();
}
