//! Memory per live session: resident set size before and after inserting N sessions (default 1,000,000)
//! shaped like real GTPv1 contexts (IMSI, MSISDN, IMEI, APN, IPv4, four tunnel keys), divided by N; and
//! the slowest single inserts (those that grew a table: the probe reads no packet meanwhile).
//!
//! cargo run --release -p gtpcharge-correlate --example session_memory [N]
use gtpcharge_correlate::session::{Endpoint, Session, SessionTable, TunnelKey};
use gtpcharge_correlate::wire::{Apn, Tbcd};
use std::net::IpAddr;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let mut table = SessionTable::new(n as usize + 1);
    let apn = Apn::from_text("internet.mnc001.mcc001.gprs");
    let before = rss_bytes();
    let mut slowest: Vec<(std::time::Duration, u32)> = Vec::new();
    for i in 0..n {
        let ggsn = IpAddr::from([198, 51, 100, (i % 4) as u8]);
        let sgsn = IpAddr::from([192, 0, 2, (i % 8) as u8]);
        let session = Session {
            id: 0,
            gtp_version: 1,
            imsi: Tbcd::from_digits(&format!("00101{:010}", i)).unwrap_or(Tbcd::EMPTY),
            msisdn: Tbcd::from_digits(&format!("4670{:08}", i)).unwrap_or(Tbcd::EMPTY),
            imei: Tbcd::from_digits(&format!("35{:013}", i)).unwrap_or(Tbcd::EMPTY),
            apn: table.intern_apn(apn),
            ue_ipv4: Some(std::net::Ipv4Addr::from(0x0A00_0000 + i)),
            ue_ipv6: None,
            nsapi: 5,
            tid: None,
            access: Endpoint {
                control: Some(TunnelKey { address: sgsn, teid: i }),
                user: Some(TunnelKey { address: sgsn, teid: i ^ 0x8000_0000 }),
            },
            core: Endpoint {
                control: Some(TunnelKey { address: ggsn, teid: i }),
                user: Some(TunnelKey { address: ggsn, teid: i ^ 0x8000_0000 }),
            },
            last_seen_us: 0,
            interface: gtpcharge_correlate::Interface::Gn,
            evidence_tag: 0,
        };
        let started = std::time::Instant::now();
        let inserted = table.insert(session);
        slowest.push((started.elapsed(), i));
        if slowest.len() > 64 {
            slowest.sort_unstable_by(|a, b| b.cmp(a));
            slowest.truncate(5);
        }
        if let Err(reason) = inserted {
            eprintln!("refused at {i}: {reason}");
            break;
        }
    }
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    let after = rss_bytes();
    println!(
        "sessions {}  rss before {:.1} MiB  after {:.1} MiB  {:.0} bytes per live session (all indices included)",
        table.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / f64::from(n)
    );
    for (took, i) in slowest.iter().take(5) {
        println!("slow insert: {:.1} ms at session {i}", took.as_secs_f64() * 1e3);
    }
}
