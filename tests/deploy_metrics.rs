//! The dashboard and the alerting rules in `deploy/` name only metrics that exist: a live probe on a veth
//! pair, delivering to a real billing API, and that API, both with `--metrics-listen`, are scraped after
//! a capture went through them; every `gtpcharge_*` name in `deploy/prometheus/gtpcharge-alerts.yml` and
//! `deploy/grafana/gtpcharge-dashboard.json` must be in one of the two expositions. (`promtool check
//! rules` checks the rules' syntax in `.ci/run`.)
mod common;

use common::world::{free_port, wait_for, World};
use common::VethPair;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

/// Every `gtpcharge_…` metric name in `text`.
fn named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gtpcharge_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The series names an exposition declares (a histogram's `_bucket`, `_sum` and `_count` too).
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = declared.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(root.join("prometheus/gtpcharge-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root.join("grafana/gtpcharge-dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let wanted: BTreeSet<String> = named(&rules).into_iter().chain(named(&dashboard)).collect();
    assert!(wanted.len() >= 15, "the scan found the names: {wanted:?}");

    // The world's API again, now with its metrics endpoint.
    let mut world = World::new(34, 40);
    world.kill_server();
    let api_metrics = free_port();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&world.server_log).unwrap();
    world.server = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", world.port), "--database-url", &world.database])
        .args(["--metrics-listen", &format!("127.0.0.1:{api_metrics}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the API's metrics", || std::net::TcpStream::connect(("127.0.0.1", api_metrics)).is_ok());

    let veth = VethPair::new("mtr");
    let probe_metrics = free_port();
    let spool = world.dir.path().join("spool");
    let probe = Command::new(env!("CARGO_BIN_EXE_gtpcharge"))
        .args(["capture", "--interface", &veth.probe_end, "--billing-url", &world.url])
        .args(["--probe-key", &world.probe_key, "--spool-dir", spool.to_str().unwrap()])
        .args(["--metrics-listen", &format!("127.0.0.1:{probe_metrics}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the probe's metrics", || std::net::TcpStream::connect(("127.0.0.1", probe_metrics)).is_ok());
    let inject = Command::new("ip")
        .args(["netns", "exec", &veth.namespace, env!("CARGO_BIN_EXE_gtpcharge"), "inject", "--interface"])
        .arg(&veth.wire_end)
        .arg(&world.capture)
        .output()
        .unwrap();
    assert!(inject.status.success(), "inject: {}", String::from_utf8_lossy(&inject.stderr));
    let expected = world.truth.sightings.len() as i64;
    wait_for("every sighting charged", || world.charged() >= expected);
    // Both expositions are rendered once a second.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let probe_text = common::metrics(probe_metrics);
    let api_text = common::metrics(api_metrics);
    assert!(Command::new("kill").args(["-TERM", &probe.id().to_string()]).status().unwrap().success());
    let output = probe.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let have: BTreeSet<String> = exported(&probe_text).into_iter().chain(exported(&api_text)).collect();
    let missing: Vec<&String> = wanted.difference(&have).collect();
    assert!(missing.is_empty(), "named in deploy/ but exported by neither:\n{missing:?}\n\n{probe_text}\n{api_text}");
    // The API counted what it did: the charges and the calls that made them.
    assert!(
        api_text.contains(&format!("gtpcharge_api_charges_total{{outcome=\"charged\"}} {expected}\n")),
        "{api_text}"
    );
    assert!(
        api_text.contains("gtpcharge_api_requests_total{method=\"SightingService/ReportSightings\",status=\"OK\"}"),
        "{api_text}"
    );
    assert!(
        api_text.contains(
            "gtpcharge_api_request_duration_seconds_bucket{method=\"SightingService/ReportSightings\",le=\"+Inf\"}"
        ),
        "{api_text}"
    );
    world.check();
}
