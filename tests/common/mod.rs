//! Helpers shared by the integration tests: run the real `gtpcharge` binary and read its JSON lines.
#![allow(dead_code)]
pub mod not_run;
pub mod world;
pub use not_run::not_run;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub fn gtpcharge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gtpcharge")).args(args).output().expect("run gtpcharge")
}

/// A seeded pseudo-random sequence (xorshift64) for tests that damage or invent wire bytes: the same
/// seed, the same damage on every run.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The text of `GET /metrics` on a local Prometheus endpoint (the probe's or the API's).
pub fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").expect("send the request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read the exposition");
    text
}

/// Replays files with `--emit jsonl`; returns the events, the stderr summary and the exit code.
pub fn replay(files: &[&Path]) -> (Vec<Value>, String, i32) {
    let mut args = vec!["replay", "--emit", "jsonl"];
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let output = gtpcharge(&args);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 events");
    let events = stdout.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    (events, String::from_utf8_lossy(&output.stderr).into_owned(), output.status.code().unwrap_or(-1))
}

pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Wireshark's reading of a capture: `tshark -r FILE -Y FILTER -T fields -e ...`, one map a packet.
/// `None` when tshark is not installed: the caller says loudly that the check did not run (and under
/// `CI=true`, where `.ci/run` installs it, a missing tshark fails the test).
pub fn tshark(path: &Path, filter: &str, fields: &[&str]) -> Option<Vec<std::collections::BTreeMap<String, String>>> {
    tshark_with(path, &[], filter, fields)
}

/// [`tshark`] with more options first (`-2`, `-o pref:value`, `-E occurrence=a` ...).
pub fn tshark_with(
    path: &Path,
    options: &[&str],
    filter: &str,
    fields: &[&str],
) -> Option<Vec<std::collections::BTreeMap<String, String>>> {
    let mut command = Command::new("tshark");
    command.args(["-n", "-r", &path.display().to_string()]).args(options);
    command.args(["-Y", filter, "-T", "fields", "-E", "separator=/t"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(error) => {
            not_run("WIRESHARK CHECK", &format!("tshark is not installed ({error}); .ci/test installs it"));
            return None;
        }
    };
    assert!(output.status.success(), "tshark on {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8 from tshark");
    Some(
        text.lines()
            .map(|line| fields.iter().zip(line.split('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
            .collect(),
    )
}

/// The fields of a Create request (GTPv1 or GTPv2) that say where and how the subscriber is attached.
pub const ATTACHMENT_FIELDS: [&str; 24] = [
    "frame.number",
    "gtpv2.message_type",
    "gtp.message",
    "e212.imsi",
    "gtp.tid",
    "gtpv2.rat_type",
    "gtp.ext_rat_type",
    "e212.tai.mcc",
    "e212.tai.mnc",
    "gtpv2.tai_tac",
    "e212.ecgi.mcc",
    "e212.ecgi.mnc",
    "gtpv2.ecgi_eci",
    "e212.rai.mcc",
    "e212.rai.mnc",
    "gtp.rai_rac",
    "gtp.lac",
    "e212.sai.mcc",
    "e212.sai.mnc",
    "gtp.sai_sac",
    "e212.cgi.mcc",
    "gtp.cgi_ci",
    "gtpv2.charging_id",
    "gtp.chrg_id",
];

/// A number as tshark prints it (decimal or 0x hex; the first of several values).
pub fn tshark_number(value: &str) -> Option<u64> {
    let first = value.split(',').next()?.split(';').next()?.trim();
    match first.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => first.parse().ok(),
    }
}

/// Checks a session event's `rat_type` and `uli` against Wireshark's fields of the Create request the
/// session came from; returns what differs.
pub fn attachment_differences(event: &Value, request: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let get = |name: &str| request.get(name).map(String::as_str).unwrap_or("");
    let number = |name: &str| tshark_number(get(name));
    let mut differences = Vec::new();
    let mut check = |what: &str, ours: Option<u64>, theirs: Option<u64>| {
        if ours != theirs {
            differences.push(format!("{what}: ours {ours:?}, Wireshark's {theirs:?}"));
        }
    };
    check("rat_type", event["rat_type"].as_u64(), number("gtpv2.rat_type").or(number("gtp.ext_rat_type")));
    let uli = &event["uli"];
    let plmn = ["tai", "ecgi", "rai", "sai", "cgi"]
        .iter()
        .find_map(|kind| Some((number(&format!("e212.{kind}.mcc"))?, number(&format!("e212.{kind}.mnc"))?)));
    let ours_plmn = uli["mcc"].as_str().zip(uli["mnc"].as_str()).map(|(c, n)| (c.parse().ok(), n.parse().ok()));
    check("mcc", ours_plmn.and_then(|p| p.0), plmn.map(|p| p.0));
    check("mnc", ours_plmn.and_then(|p| p.1), plmn.map(|p| p.1));
    check("tai.tac", uli["tai"]["tac"].as_u64(), number("gtpv2.tai_tac"));
    // Wireshark's ECI field is the whole 32-bit word; the ECI is its low 28 bits (TS 29.274 8.21.5).
    check("ecgi.eci", uli["ecgi"]["eci"].as_u64(), number("gtpv2.ecgi_eci").map(|e| e & 0x0FFF_FFFF));
    check("rai.rac", uli["rai"]["rac"].as_u64(), number("gtp.rai_rac"));
    check("sai.sac", uli["sai"]["sac"].as_u64(), number("gtp.sai_sac"));
    check("cgi.ci", uli["cgi"]["ci"].as_u64(), number("gtp.cgi_ci"));
    differences
}

/// A veth pair for live tests: one end (`probe_end`) in this namespace, the other (`wire_end`) in a
/// network namespace of its own, up, MTU 9000; deleted however the test ends. Where namespaces or veth
/// cannot be created the test fails and says so: it is never skipped silently.
pub struct VethPair {
    pub namespace: String,
    pub probe_end: String,
    pub wire_end: String,
}

impl VethPair {
    pub fn new(tag: &str) -> VethPair {
        let id = std::process::id() % 100_000;
        let pair = VethPair {
            namespace: format!("gtpcharge-{tag}{id}"),
            probe_end: format!("{}p{id}", &tag[..tag.len().min(3)]),
            wire_end: format!("{}w{id}", &tag[..tag.len().min(3)]),
        };
        ip(&["netns", "add", &pair.namespace]);
        ip(&[
            "link",
            "add",
            &pair.probe_end,
            "mtu",
            "9000",
            "type",
            "veth",
            "peer",
            "name",
            &pair.wire_end,
            "mtu",
            "9000",
        ]);
        ip(&["link", "set", &pair.wire_end, "netns", &pair.namespace]);
        ip(&["link", "set", &pair.probe_end, "up"]);
        ip(&["-n", &pair.namespace, "link", "set", &pair.wire_end, "up"]);
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).status();
        let _ = Command::new("ip").args(["link", "del", &self.probe_end]).status();
    }
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("LIVE TEST CANNOT RUN: `ip` is not available: {e}"));
    assert!(
        output.status.success(),
        "LIVE TEST CANNOT RUN: `ip {}` failed (network namespaces or veth cannot be created here): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
