//! `gtpcharge explain FILE`: an evidence file (see `evidence.rs`) in words. Each packet is decoded on its
//! own (frame, time, role, message, the identity and tunnels it carries, the token), then the packets are
//! replayed alone through a fresh correlator, which must reach the same subscriber: the chain is proved
//! again from the packets, not read back from what the probe said at the time.
use crate::jsonl::rfc3339;
use anyhow::{Context, Result};
use gtpcharge_capture::{Decoder, DecoderConfig, FileSource};
use gtpcharge_correlate::scan::{dns, TokenFinder};
use gtpcharge_correlate::wire::{gtpu, gtpv0, gtpv1, gtpv2};
use gtpcharge_correlate::{Config, Correlator, Datagram, Event};
use std::fmt::Write as _;
use std::path::Path;

/// Prints the explanation; `Ok(false)` when the packets alone do not attribute the token (the evidence
/// does not prove the charge).
pub fn explain(path: &Path) -> Result<bool> {
    let side: Option<serde_json::Value> =
        std::fs::read_to_string(path.with_extension("json")).ok().and_then(|text| serde_json::from_str(&text).ok());
    let roles: Vec<(String, u64)> = side
        .as_ref()
        .and_then(|s| s.get("packets"))
        .and_then(|p| p.as_array())
        .map(|packets| {
            packets
                .iter()
                .map(|p| {
                    let role = p.get("role").and_then(|r| r.as_str()).unwrap_or("?").to_string();
                    (role, p.get("frame").and_then(|f| f.as_u64()).unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut source = FileSource::open(path, None).with_context(|| format!("opening {}", path.display()))?;
    let mut decoder = Decoder::new(&DecoderConfig::default());
    let mut correlator = Correlator::new(Config::default());
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut index = 0usize;
    source
        .for_each(|frame| {
            let (role, original) = roles.get(index).cloned().unwrap_or_else(|| ("?".into(), 0));
            index += 1;
            let mut line = format!("#{index} frame {original} {} {role:<16} ", rfc3339(frame.ts_us));
            let decoded = decoder.decode_as(frame.linktype, frame.ts_us, frame.data, |udp| Datagram {
                ts_us: frame.ts_us,
                frame: index as u64,
                source: udp.source,
                destination: udp.destination,
                payload: udp.payload,
            });
            match decoded {
                Ok(Some(datagram)) => {
                    let _ = write!(line, "{} -> {}  {}", datagram.source, datagram.destination, describe(&datagram));
                    correlator.on_datagram(&datagram, &mut events);
                }
                Ok(None) => line.push_str("(an IP fragment)"),
                Err(reason) => {
                    let _ = write!(line, "(not decoded: {reason})");
                }
            }
            lines.push(line);
        })
        .with_context(|| format!("reading {}", path.display()))?;
    println!("{}: {} packets", path.display(), lines.len());
    if let Some(side) = &side {
        let field = |name: &str| side.get(name).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        println!(
            "recorded: token {} in {} charged to MSISDN {} (IMSI {}, UE {})",
            field("token"),
            field("where"),
            field("msisdn"),
            field("imsi"),
            field("ue_ip")
        );
    }
    for line in &lines {
        println!("  {line}");
    }
    println!("replayed alone, these packets give:");
    let mut proved = false;
    for event in &events {
        match event {
            Event::SessionUp(s) | Event::SessionUpdate(s) => println!(
                "  {}: IMSI {} MSISDN {} UE {} on {} (uplink TEID {:#x}, downlink TEID {:#x})",
                if matches!(event, Event::SessionUp(_)) { "session up" } else { "session update" },
                s.identity.imsi,
                s.identity.msisdn,
                s.identity.ue_ip().map_or("-".to_string(), |ip| ip.to_string()),
                s.interface.as_str(),
                s.teid_up,
                s.teid_down
            ),
            Event::SessionDown(s) => println!("  session down: IMSI {} ({})", s.identity.imsi, s.reason),
            Event::Sighting(s) => {
                let matches_record = side.as_ref().is_none_or(|side| {
                    side.get("msisdn").and_then(|m| m.as_str()) == Some(s.identity.msisdn.to_string().as_str())
                        && side.get("token").and_then(|t| t.as_str()) == Some(s.token.to_string().as_str())
                });
                proved |= matches_record;
                println!(
                    "  sighting: token {} ({}) from {} attributed to MSISDN {} (IMSI {}) by its {}{}",
                    s.token,
                    s.carrier.as_str(),
                    s.source,
                    s.identity.msisdn,
                    s.identity.imsi,
                    match s.attribution {
                        gtpcharge_correlate::Attribution::Tunnel => "tunnel",
                        gtpcharge_correlate::Attribution::UeIp => "UE address",
                    },
                    if matches_record { "" } else { "  (NOT what was recorded)" }
                );
            }
            Event::Unattributed(u) => println!("  unattributed: token {} ({})", u.token, u.reason),
        }
    }
    if proved {
        println!("the packets prove the charge: the same subscriber, from the signalling alone");
    } else {
        println!("the packets do NOT prove the charge on their own");
    }
    Ok(proved)
}

/// One datagram in words: its GTP message and what it says of identity, tunnels and tokens.
fn describe(datagram: &Datagram<'_>) -> String {
    let payload = datagram.payload;
    match payload.first().map(|flags| flags >> 5) {
        Some(2) => match gtpv2::Header::parse(payload) {
            Ok(header) => {
                let mut text = format!(
                    "GTPv2 {} seq {:#x} TEID {}",
                    v2_name(header.message_type),
                    header.sequence,
                    header.teid.map_or("-".into(), |t| format!("{t:#x}"))
                );
                if let Ok(f) = gtpv2::ControlFields::parse(header.body) {
                    push_identity(&mut text, f.imsi, f.msisdn, f.ue_ipv4.map(Into::into));
                    if let Some(c) = f.sender_control {
                        let _ = write!(text, " sender-F-TEID {:#x} (interface type {})", c.teid, c.interface_type);
                    }
                    if let Some(cause) = f.cause {
                        let _ = write!(text, " cause {cause}");
                    }
                }
                text
            }
            Err(error) => format!("GTPv2 (malformed: {error})"),
        },
        Some(1) => match gtpv1::Header::parse(payload) {
            Ok(header) if header.message_type == gtpv1::message::G_PDU => {
                format!("G-PDU TEID {:#x}{}", header.teid, inner(header.body))
            }
            Ok(header) => {
                let mut text = format!(
                    "GTPv1 {} seq {} TEID {:#x}",
                    v1_name(header.message_type),
                    header.sequence.map_or("-".into(), |s| s.to_string()),
                    header.teid
                );
                if let Ok(f) = gtpv1::ControlFields::parse(header.body) {
                    push_identity(&mut text, f.imsi, f.msisdn, f.ue_ipv4.map(Into::into));
                    if let Some(teid) = f.teid_control {
                        let _ = write!(text, " TEID-C {teid:#x}");
                    }
                    if let Some(teid) = f.teid_data {
                        let _ = write!(text, " TEID-U {teid:#x}");
                    }
                    if let Some(cause) = f.cause {
                        let _ = write!(text, " cause {cause}");
                    }
                }
                text
            }
            Err(error) => format!("GTPv1 (malformed: {error})"),
        },
        Some(0) => match gtpv0::Header::parse(payload) {
            Ok(header) if header.message_type == gtpv1::message::G_PDU => {
                format!("GTPv0 G-PDU TID IMSI {} NSAPI {}{}", header.imsi(), header.nsapi(), inner(header.body))
            }
            Ok(header) => format!(
                "GTPv0 {} seq {} TID IMSI {} NSAPI {}",
                v1_name(header.message_type),
                header.sequence,
                header.imsi(),
                header.nsapi()
            ),
            Err(error) => format!("GTPv0 (malformed: {error})"),
        },
        _ => "not GTP".into(),
    }
}

fn push_identity(
    text: &mut String,
    imsi: Option<gtpcharge_correlate::wire::Tbcd>,
    msisdn: Option<gtpcharge_correlate::wire::Tbcd>,
    ue: Option<std::net::IpAddr>,
) {
    if let Some(imsi) = imsi {
        let _ = write!(text, " IMSI {imsi}");
    }
    if let Some(msisdn) = msisdn {
        let _ = write!(text, " MSISDN {msisdn}");
    }
    if let Some(ue) = ue {
        let _ = write!(text, " UE {ue}");
    }
}

/// The inner packet of a G-PDU and any token it carries.
fn inner(body: &[u8]) -> String {
    let Ok(packet) = gtpu::inner_packet(body) else { return " (inner packet not decoded)".into() };
    let mut text = format!(" inner {} -> {}", packet.source, packet.destination);
    let mut name = [0u8; dns::NAME_MAX];
    let payload = match packet.transport {
        gtpu::Transport::Udp { destination_port: 53, payload, .. } => match dns::query_name(payload, &mut name) {
            Ok(len) => name.get(..len).unwrap_or_default(),
            Err(_) => payload,
        },
        gtpu::Transport::Tcp { payload, .. } | gtpu::Transport::Udp { payload, .. } => payload,
        gtpu::Transport::Other => &[][..],
    };
    let mut tokens = Vec::new();
    TokenFinder::default().scan(payload, |_, token| tokens.push(token.to_string()));
    if !tokens.is_empty() {
        let _ = write!(text, " token {}", tokens.join(", "));
    }
    text
}

fn v1_name(kind: u8) -> &'static str {
    match kind {
        16 => "Create PDP Context Request",
        17 => "Create PDP Context Response",
        18 => "Update PDP Context Request",
        19 => "Update PDP Context Response",
        20 => "Delete PDP Context Request",
        21 => "Delete PDP Context Response",
        _ => "message",
    }
}

fn v2_name(kind: u8) -> &'static str {
    match kind {
        32 => "Create Session Request",
        33 => "Create Session Response",
        34 => "Modify Bearer Request",
        35 => "Modify Bearer Response",
        36 => "Delete Session Request",
        37 => "Delete Session Response",
        _ => "message",
    }
}
