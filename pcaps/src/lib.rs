//! A deterministic generator of Gn/S5 captures for tests, demos and benchmarks.
//!
//! From a seed it writes what a carrier's mirror would show: GTPv1-C Create/Update/Delete PDP Context
//! exchanges between SGSNs and a GGSN, GTPv2-C Create Session / Modify Bearer / Delete Session on S5/S8,
//! GTP-U with the subscribers' own IPv4 and IPv6 traffic (HTTP requests with tokens in the URL or a
//! header, DNS queries and TLS ClientHellos carrying tokens in names, tokens split across TCP segments,
//! retransmissions, look-alikes that fail the check, downlink responses), VLAN tags, fragmented outer
//! IPv4, an IP handed to a new subscriber after a Delete, the same private IP on two APNs, traffic on
//! tunnels nobody signalled, and malformed packets of many kinds.
//!
//! Beside the packets it returns its [`Truth`]: which token each subscriber sent and which tokens no live
//! session explains, so tests check the probe against what was meant, not against its own output.
//! The GTP bytes are written here from the 3GPP layouts (TS 29.060, 29.274, 29.281), independently of the
//! probe's parser.
pub mod encap;

use etherparse::PacketBuilder;
use gtpcharge_proto::Token;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use std::net::{Ipv4Addr, Ipv6Addr};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub subscribers: u32,
    /// Rounds of user traffic per subscriber between signalling phases.
    pub traffic_rounds: u32,
    /// Plain (token-free) uplink/downlink packet pairs per subscriber per round: the bulk of a big capture.
    pub background_per_round: u32,
    /// Whether to add the malformed-packet and edge-case section.
    pub edge_cases: bool,
    /// Tokens to use, in order, wherever the capture carries a token (sightings and unattributed alike);
    /// when they run out, tokens are random. The rest of the capture does not depend on them.
    pub tokens: Vec<Token>,
}

impl Scenario {
    /// The committed sample: small, every feature.
    pub fn sample() -> Scenario {
        Scenario {
            seed: 7,
            subscribers: 24,
            traffic_rounds: 2,
            background_per_round: 2,
            edge_cases: true,
            tokens: Vec::new(),
        }
    }
}

/// Where a generated token was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    HttpUrl,
    HttpUrlSplit,
    HttpHeader,
    Dns,
    TlsSni,
}

/// What the capture means: the checks a correct probe must pass.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// (token, MSISDN that sent it): each must become a sighting for that MSISDN.
    pub sightings: Vec<(Token, String)>,
    /// Tokens on traffic no live session explains: each must be reported unattributed, never charged.
    pub unattributed: Vec<Token>,
    /// Sessions that must come up (MSISDN).
    pub sessions_up: Vec<String>,
    /// Sessions that must go down by Delete (MSISDN).
    pub sessions_down: Vec<String>,
    /// Every subscriber in the capture (MSISDN, IMSI), whether or not its session comes up.
    pub identities: Vec<(String, String)>,
    /// Number of frames written.
    pub frames: u64,
}

/// A sink for frames: the pcap writer, or a vector in tests.
pub trait FrameSink {
    fn frame(&mut self, ts_us: u64, data: &[u8]);
}

impl FrameSink for Vec<(u64, Vec<u8>)> {
    fn frame(&mut self, ts_us: u64, data: &[u8]) {
        self.push((ts_us, data.to_vec()));
    }
}

/// Writes frames to a pcap file (Ethernet) through libpcap.
pub struct PcapFile {
    save: pcap::Savefile,
    pub error: Option<pcap::Error>,
}

impl PcapFile {
    pub fn create(path: &std::path::Path) -> Result<PcapFile, pcap::Error> {
        let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET)?;
        Ok(PcapFile { save: dead.savefile(path)?, error: None })
    }

    pub fn finish(mut self) -> Result<(), pcap::Error> {
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        self.save.flush()
    }
}

impl FrameSink for PcapFile {
    fn frame(&mut self, ts_us: u64, data: &[u8]) {
        let header = pcap::PacketHeader { ts: libc_timeval(ts_us), caplen: data.len() as u32, len: data.len() as u32 };
        self.save.write(&pcap::Packet::new(&header, data));
    }
}

fn libc_timeval(ts_us: u64) -> libc::timeval {
    libc::timeval { tv_sec: (ts_us / 1_000_000) as _, tv_usec: (ts_us % 1_000_000) as _ }
}

mod gtp_bytes;
mod signalling;
use gtp_bytes::*;

// ------------------------------------------------------------------------------------------------ subscribers

#[derive(Debug, Clone)]
struct Subscriber {
    imsi: String,
    msisdn: String,
    imei: String,
    apn: &'static str,
    ue_ipv4: Ipv4Addr,
    ue_ipv6: Option<Ipv6Addr>,
    v2: bool,
    /// Access side (SGSN / SGW on S5) control + user addresses and TEIDs.
    access_control: (Ipv4Addr, u32),
    access_user: (Ipv4Addr, u32),
    /// Core side (GGSN / PGW).
    core_control: (Ipv4Addr, u32),
    core_user: (Ipv4Addr, u32),
    tcp_port: u16,
    tcp_sequence: u32,
}

const SGSN_1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SGSN_1_USER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const SGSN_2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const SGSN_2_USER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 21);
const GGSN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const GGSN_USER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const SGW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 30);
const SGW_USER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 31);
const PGW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PGW_USER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const WEB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x80);
const RESOLVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);

/// The generator's state: clock, RNG, sequence numbers, and the truth being recorded.
pub struct Generator<'s, S: FrameSink> {
    sink: &'s mut S,
    rng: ChaCha8Rng,
    now_us: u64,
    sequence: u16,
    truth: Truth,
    next_teid: u32,
    ip_id: u16,
    supplied: std::collections::VecDeque<Token>,
}

impl<'s, S: FrameSink> Generator<'s, S> {
    pub(crate) fn tick(&mut self, max_us: u64) {
        self.now_us += 1 + self.rng.next_u64() % max_us;
    }

    /// The next token to place: a supplied one if any is left, else random. The RNG is drawn either
    /// way, so supplying tokens changes nothing else in the capture.
    pub(crate) fn token(&mut self) -> Token {
        let random = self.random_token();
        self.supplied.pop_front().unwrap_or(random)
    }

    pub(crate) fn random_token(&mut self) -> Token {
        let mut random = [0u8; 16];
        self.rng.fill_bytes(&mut random);
        Token::from_random(random)
    }

    pub(crate) fn teid(&mut self) -> u32 {
        self.next_teid = self.next_teid.wrapping_add(1 + (self.rng.next_u64() % 7) as u32);
        self.next_teid
    }

    pub(crate) fn seq(&mut self) -> u16 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    /// Writes an Ethernet frame (0-2 VLAN tags) carrying IPv4/UDP.
    pub(crate) fn udp(&mut self, source: (Ipv4Addr, u16), destination: (Ipv4Addr, u16), payload: &[u8]) {
        let mut ip = Vec::with_capacity(payload.len() + 28);
        self.ip_id = self.ip_id.wrapping_add(1);
        let builder = PacketBuilder::ipv4(source.0.octets(), destination.0.octets(), 64).udp(source.1, destination.1);
        if builder.write(&mut ip, payload).is_err() {
            return;
        }
        let vlans = (self.rng.next_u64() % 3) as usize;
        self.ethernet(&ip, vlans);
    }

    pub(crate) fn ethernet(&mut self, ip: &[u8], vlans: usize) {
        let mut frame = Vec::with_capacity(ip.len() + 22);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02]);
        for tag in 0..vlans {
            let tpid: u16 = if tag == 0 && vlans == 2 { 0x88A8 } else { 0x8100 };
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&(100 + tag as u16).to_be_bytes());
        }
        let ethertype: u16 = if ip.first().map(|b| b >> 4) == Some(6) { 0x86DD } else { 0x0800 };
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(ip);
        self.sink.frame(self.now_us, &frame);
        self.truth.frames += 1;
    }

    /// A GTP-U datagram; when it would exceed a 1500-byte MTU the outer IPv4 packet is fragmented.
    pub(crate) fn gtpu(&mut self, source: Ipv4Addr, destination: Ipv4Addr, teid: u32, inner: &[u8]) {
        let extension = self.rng.next_u64() % 8 == 0;
        let payload = g_pdu(teid, inner, extension);
        if payload.len() + 28 <= 1500 {
            return self.udp((source, 2152), (destination, 2152), &payload);
        }
        let mut whole = Vec::new();
        if PacketBuilder::ipv4(source.octets(), destination.octets(), 64)
            .udp(2152, 2152)
            .write(&mut whole, &payload)
            .is_err()
        {
            return;
        }
        let Ok((mut header, _)) = etherparse::Ipv4Header::from_slice(&whole) else { return };
        self.ip_id = self.ip_id.wrapping_add(1);
        header.identification = self.ip_id;
        let transport = whole[20..].to_vec();
        let chunk = 1480;
        let mut start = 0;
        let mut fragments = Vec::new();
        while start < transport.len() {
            let end = (start + chunk).min(transport.len());
            let mut h = header.clone();
            h.more_fragments = end < transport.len();
            h.fragment_offset =
                etherparse::IpFragOffset::try_new((start / 8) as u16).unwrap_or(etherparse::IpFragOffset::ZERO);
            if h.set_payload_len(end - start).is_err() {
                return;
            }
            h.header_checksum = h.calc_header_checksum();
            let mut ip = h.to_bytes().to_vec();
            ip.extend_from_slice(&transport[start..end]);
            fragments.push(ip);
            start = end;
        }
        // Fragments sometimes arrive last-first.
        if self.rng.next_u64() % 2 == 0 {
            fragments.reverse();
        }
        for fragment in fragments {
            self.ethernet(&fragment, 1);
        }
    }

    pub(crate) fn inner_tcp(&mut self, sub: &Subscriber, v6: bool, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let mut inner = Vec::with_capacity(payload.len() + 60);
        let result = match (v6, sub.ue_ipv6) {
            (true, Some(ue6)) => PacketBuilder::ipv6(ue6.octets(), WEB6.octets(), 64)
                .tcp(sub.tcp_port, 80, sequence, 65535)
                .ack(1)
                .psh()
                .write(&mut inner, payload),
            _ => PacketBuilder::ipv4(sub.ue_ipv4.octets(), WEB.octets(), 64)
                .tcp(sub.tcp_port, if payload.first() == Some(&0x16) { 443 } else { 80 }, sequence, 65535)
                .ack(1)
                .psh()
                .write(&mut inner, payload),
        };
        if result.is_err() {
            inner.clear();
        }
        inner
    }

    pub(crate) fn uplink(&mut self, sub: &Subscriber, inner: &[u8]) {
        self.tick(2_000);
        self.gtpu(sub.access_user.0, sub.core_user.0, sub.core_user.1, inner);
    }

    pub(crate) fn downlink(&mut self, sub: &Subscriber, inner: &[u8]) {
        self.tick(2_000);
        self.gtpu(sub.core_user.0, sub.access_user.0, sub.access_user.1, inner);
    }

    /// One TCP connection's request, optionally split in two segments, optionally retransmitted.
    pub(crate) fn http_request(
        &mut self,
        sub: &mut Subscriber,
        request: &[u8],
        split_at: Option<usize>,
        retransmit: bool,
    ) {
        sub.tcp_port = sub.tcp_port.wrapping_add(1).max(1024);
        let v6 = sub.ue_ipv6.is_some() && self.rng.next_u64() % 2 == 0;
        let isn = self.rng.next_u64() as u32;
        // SYN
        let mut syn = Vec::new();
        let _ = match (v6, sub.ue_ipv6) {
            (true, Some(ue6)) => PacketBuilder::ipv6(ue6.octets(), WEB6.octets(), 64)
                .tcp(sub.tcp_port, 80, isn, 65535)
                .syn()
                .write(&mut syn, &[]),
            _ => PacketBuilder::ipv4(sub.ue_ipv4.octets(), WEB.octets(), 64)
                .tcp(sub.tcp_port, if request.first() == Some(&0x16) { 443 } else { 80 }, isn, 65535)
                .syn()
                .write(&mut syn, &[]),
        };
        self.uplink(sub, &syn);
        let start = isn.wrapping_add(1);
        let parts: Vec<(u32, &[u8])> = match split_at {
            Some(at) if at < request.len() => {
                vec![(start, &request[..at]), (start.wrapping_add(at as u32), &request[at..])]
            }
            _ => vec![(start, request)],
        };
        for (index, (sequence, bytes)) in parts.iter().enumerate() {
            let inner = self.inner_tcp(sub, v6, *sequence, bytes);
            self.uplink(sub, &inner);
            if retransmit && index == 0 {
                self.uplink(sub, &inner);
            }
        }
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let mut down = Vec::new();
        let _ = PacketBuilder::ipv4(WEB.octets(), sub.ue_ipv4.octets(), 64)
            .tcp(80, sub.tcp_port, 1, 65535)
            .write(&mut down, response);
        self.downlink(sub, &down);
    }

    pub(crate) fn dns_query(&mut self, sub: &Subscriber, name: &str) {
        let id = u16::from_be_bytes([(self.rng.next_u64() & 0xFF) as u8, 0x34]);
        let message = gtpcharge_correlate::scan::dns::build_query(id, name);
        let mut inner = Vec::new();
        let _ = PacketBuilder::ipv4(sub.ue_ipv4.octets(), RESOLVER.octets(), 64)
            .udp(40000 + (sub.tcp_port % 1000), 53)
            .write(&mut inner, &message);
        self.uplink(sub, &inner);
    }

    pub(crate) fn background(&mut self, sub: &mut Subscriber) {
        let size = [40usize, 200, 576, 1200, 1400][(self.rng.next_u64() % 5) as usize];
        let body = vec![b'x'; size];
        let sent = size.min(100);
        let mut up = Vec::new();
        let _ = PacketBuilder::ipv4(sub.ue_ipv4.octets(), WEB.octets(), 64)
            .tcp(50000, 8443, sub.tcp_sequence, 65535)
            .ack(1)
            .write(&mut up, &body[..sent]);
        sub.tcp_sequence = sub.tcp_sequence.wrapping_add(sent as u32);
        self.uplink(sub, &up);
        let mut down = Vec::new();
        let _ = PacketBuilder::ipv4(WEB.octets(), sub.ue_ipv4.octets(), 64)
            .tcp(8443, 50000, 1, 65535)
            .ack(1)
            .write(&mut down, &body);
        self.downlink(sub, &down);
    }

    /// A token sent by `sub` in one of the carriers; recorded in the truth.
    pub(crate) fn send_token(&mut self, sub: &mut Subscriber, placement: Placement) {
        let token = self.token();
        let text = token.to_string();
        match placement {
            Placement::HttpUrl => {
                let request =
                    format!("GET /confirm?t={text}&sp=42 HTTP/1.1\r\nHost: pay.sp.example\r\nUser-Agent: test\r\n\r\n");
                let retransmit = self.rng.next_u64() % 3 == 0;
                self.http_request(sub, request.as_bytes(), None, retransmit);
            }
            Placement::HttpUrlSplit => {
                let request = format!("GET /confirm?t={text} HTTP/1.1\r\nHost: pay.sp.example\r\n\r\n");
                // Split inside the token: the first segment ends with part of it.
                let at = "GET /confirm?t=".len() + 5 + (self.rng.next_u64() % 25) as usize;
                self.http_request(sub, request.as_bytes(), Some(at), true);
            }
            Placement::HttpHeader => {
                let request = format!("POST /api/buy HTTP/1.1\r\nHost: api.sp.example\r\nX-Purchase-Token: {text}\r\nContent-Length: 0\r\n\r\n");
                self.http_request(sub, request.as_bytes(), None, false);
            }
            Placement::Dns => {
                // Resolvers may randomise case (0x20): the probe must not care.
                let name: String = format!("{text}.pay.example")
                    .chars()
                    .map(|c| if self.rng.next_u64() % 2 == 0 { c.to_ascii_uppercase() } else { c })
                    .collect();
                self.dns_query(sub, &name);
            }
            Placement::TlsSni => {
                let hello =
                    gtpcharge_correlate::scan::tls::build_client_hello(format!("{text}.pay.example").as_bytes());
                self.http_request(sub, &hello, None, false);
            }
        }
        self.truth.sightings.push((token, sub.msisdn.clone()));
    }

    pub(crate) fn look_alike(&mut self, sub: &mut Subscriber) {
        let mut text = self.random_token().to_string().into_bytes();
        text[20] = if text[20] == b'a' { b'b' } else { b'a' };
        let request =
            format!("GET /confirm?t={} HTTP/1.1\r\nHost: pay.sp.example\r\n\r\n", String::from_utf8_lossy(&text));
        self.http_request(sub, request.as_bytes(), None, false);
    }

    pub(crate) fn malformed(&mut self) {
        let garbage_gtpc: [&[u8]; 5] = [
            &[0x32, 16, 0, 40, 0, 0, 0, 0, 0, 1], // length beyond the datagram
            &[0x32, 16, 0, 8, 0, 0, 0, 0, 0, 9, 0, 0, 100, 1, 2, 3], // unknown TV IE 100
            &[0x32, 16, 0, 7, 0, 0, 0, 0, 0, 9, 0, 0, 131, 0, 60], // TLV longer than the message
            &[0xE2, 1, 0, 0],                     // version 7
            &[0x48, 32, 0, 3, 0, 0, 0],           // GTPv2 length too short
        ];
        for bytes in garbage_gtpc {
            self.tick(1_000);
            self.udp((SGSN_1, 2123), (GGSN, 2123), bytes);
        }
        let garbage_gtpu: [&[u8]; 4] = [
            b"not gtp at all, just bytes on port 2152", // false GTP (like zeek's gtp3)
            &[0x34, 0xFF, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0x85, 0, 0, 0, 0], // zero-length extension
            &[0x30, 0xFF, 0, 4, 0, 0, 0, 1, 0x45, 0, 0, 60], // truncated inner IPv4
            &[0x30, 0x01, 0, 4, 0, 0, 0, 0, 0, 1, 0, 0], // GTP-U echo request
        ];
        for bytes in garbage_gtpu {
            self.tick(1_000);
            self.udp((SGSN_1_USER, 2152), (GGSN_USER, 2152), bytes);
        }
        // Not UDP at all: an ARP frame and a TCP segment between the GSNs.
        self.tick(1_000);
        let mut arp = vec![0xFF; 6];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        self.sink.frame(self.now_us, &arp);
        self.truth.frames += 1;
        let mut tcp = Vec::new();
        let _ = PacketBuilder::ipv4(SGSN_1.octets(), GGSN.octets(), 64).tcp(2123, 2123, 1, 100).write(&mut tcp, b"x");
        self.ethernet(&tcp, 0);
    }
}

/// Generates a capture into `sink` and returns its truth.
pub fn generate<S: FrameSink>(scenario: &Scenario, sink: &mut S) -> Truth {
    let mut g = Generator {
        sink,
        rng: ChaCha8Rng::seed_from_u64(scenario.seed),
        now_us: 1_767_225_600_000_000, // 2026-01-01T00:00:00Z
        sequence: 0,
        truth: Truth::default(),
        next_teid: 0x1000,
        ip_id: 0,
        supplied: scenario.tokens.iter().copied().collect(),
    };
    let n = scenario.subscribers.max(4);
    let mut subscribers: Vec<Subscriber> = (0..n)
        .map(|i| {
            // Subscribers 0 and 1 share one private address on two APNs.
            let host = if i == 1 { 0 } else { i };
            let ip = Ipv4Addr::new(10, 64 + (host >> 16) as u8, (host >> 8) as u8, (host & 0xFF) as u8);
            let ip = if ip.octets()[3] == 0 {
                Ipv4Addr::new(10, 200, (host >> 8) as u8, (host & 0xFF) as u8 + 1)
            } else {
                ip
            };
            let apn = if i == 1 { "corp.example" } else { "internet" };
            g.subscriber(i, ip, apn)
        })
        .collect();
    if scenario.edge_cases {
        // A request the GGSN refuses: no session, and the traffic below on its TEIDs stays unattributed.
        let mut refused = g.subscriber(n + 1, Ipv4Addr::new(10, 250, 0, 1), "internet");
        refused.v2 = false;
        g.create(&mut refused, false);
        let token = g.token();
        let text = token.to_string();
        g.http_request(
            &mut refused,
            format!("GET /confirm?t={text} HTTP/1.1\r\nHost: pay.sp.example\r\n\r\n").as_bytes(),
            None,
            false,
        );
        g.truth.unattributed.push(token);
    }
    for sub in subscribers.iter_mut() {
        g.create(sub, true);
    }
    let placements =
        [Placement::HttpUrl, Placement::HttpHeader, Placement::Dns, Placement::TlsSni, Placement::HttpUrlSplit];
    for round in 0..scenario.traffic_rounds {
        for (i, sub) in subscribers.iter_mut().enumerate() {
            for _ in 0..scenario.background_per_round {
                g.background(sub);
            }
            if (i as u32 + round) % 2 == 0 {
                let placement = placements[(i + round as usize) % placements.len()];
                g.send_token(sub, placement);
            }
            if scenario.edge_cases && i % 7 == 2 && round == 0 {
                g.look_alike(sub);
            }
        }
        if round == 0 {
            for (i, sub) in subscribers.iter_mut().enumerate() {
                if i % 3 == 0 {
                    g.update(sub);
                    g.send_token(sub, Placement::HttpUrl);
                }
            }
        }
    }
    if scenario.edge_cases {
        g.malformed();
        // Subscriber 2 leaves; its address goes to a newcomer who buys something seconds later.
        let leaving = subscribers[2].clone();
        g.delete(&leaving);
        let mut newcomer = g.subscriber(n + 2, leaving.ue_ipv4, "internet");
        newcomer.v2 = false;
        newcomer.ue_ipv6 = None;
        g.create(&mut newcomer, true);
        g.send_token(&mut newcomer, Placement::HttpUrl);
        // A late packet of the old subscriber on its dead tunnel: no live session explains it.
        let token = g.token();
        let text = token.to_string();
        let mut ghost = leaving.clone();
        g.http_request(
            &mut ghost,
            format!("GET /confirm?t={text} HTTP/1.1\r\nHost: pay.sp.example\r\n\r\n").as_bytes(),
            None,
            false,
        );
        g.truth.unattributed.push(token);
        // A large request whose G-PDU exceeds the MTU: the outer IPv4 packet is fragmented.
        let big_header = "a".repeat(1600);
        // (Subscriber 4, or the last where there are fewer.)
        let mut sub = subscribers[4.min(subscribers.len() - 1)].clone();
        let token = g.token();
        let request =
            format!("GET /confirm?t={token} HTTP/1.1\r\nHost: pay.sp.example\r\nCookie: {big_header}\r\n\r\n");
        g.http_request(&mut sub, request.as_bytes(), None, false);
        g.truth.sightings.push((token, sub.msisdn.clone()));
        subscribers.push(newcomer);
        subscribers.remove(2);
    }
    // Most sessions end; a few stay up past the end of the capture.
    for (i, sub) in subscribers.iter().enumerate() {
        if i % 5 != 4 {
            g.delete(sub);
        }
    }
    g.truth
}
