//! What the correlator reports. Events are produced on control messages and on sightings, never per
//! ordinary user-plane packet; the binary turns them into JSON lines (or billing RPCs).
use crate::scan::Carrier;
use crate::session::TunnelKey;
use crate::wire::location::Uli;
use crate::wire::Tbcd;
use gtpcharge_proto::Token;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Who a session belongs to, as the signalling said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub session_id: u64,
    pub imsi: Tbcd,
    pub msisdn: Tbcd,
    pub imei: Tbcd,
    pub apn: Option<Arc<str>>,
    pub ue_ipv4: Option<Ipv4Addr>,
    pub ue_ipv6: Option<Ipv6Addr>,
}

impl Identity {
    /// The UE address reported in events: IPv4 when the context has one, else IPv6.
    pub fn ue_ip(&self) -> Option<IpAddr> {
        self.ue_ipv4.map(IpAddr::V4).or(self.ue_ipv6.map(IpAddr::V6))
    }
}

/// The interface a session was learnt from: `gn` for GTPv0/v1 (Gn/Gp), and for GTPv2 what the sender's
/// control F-TEID interface type says (TS 29.274 table 8.22-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Interface {
    Gn,
    S11,
    S5S8,
    S4,
    S2a,
    S2b,
    #[default]
    Unknown,
}

impl Interface {
    /// From a GTPv2 control F-TEID's interface type (the request's sender, or the response's).
    pub fn from_fteid_type(interface_type: u8) -> Interface {
        match interface_type {
            10 | 11 => Interface::S11, // S11 MME, S11/S4 SGW
            6 | 7 => Interface::S5S8,  // S5/S8 SGW, S5/S8 PGW
            17 => Interface::S4,       // S4 SGSN
            35 | 36 => Interface::S2a, // S2a TWAN, S2a PGW
            30 | 32 => Interface::S2b, // S2b ePDG, S2b PGW
            _ => Interface::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Gn => "gn",
            Interface::S11 => "s11",
            Interface::S5S8 => "s5s8",
            Interface::S4 => "s4",
            Interface::S2a => "s2a",
            Interface::S2b => "s2b",
            Interface::Unknown => "unknown",
        }
    }

    /// The stored form (one byte in the session record).
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(value: u8) -> Interface {
        [Interface::Gn, Interface::S11, Interface::S5S8, Interface::S4, Interface::S2a, Interface::S2b]
            .get(usize::from(value))
            .copied()
            .unwrap_or(Interface::Unknown)
    }
}

/// Where and how the subscriber is attached, as the signalling messages of one exchange (request and
/// response) said. Not stored in the session table: each event carries what its own messages had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attachment {
    pub rat_type: Option<u8>,
    pub uli: Option<Uli>,
    pub charging_id: Option<u32>,
    /// The serving node's control address: the SGSN (Gn), MME (S11), SGW (S5/S8) or SGSN (S4).
    pub serving_node: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub ts_us: u64,
    pub identity: Identity,
    /// The TEID uplink G-PDUs carry (the GGSN's / PGW's / SGW's S1-U), 0 if not yet known.
    pub teid_up: u32,
    /// The uplink tunnel's key (GSN user-plane address + TEID), when known: what a probe that sees only
    /// the user plane attributes by (`--cluster`).
    pub tunnel_up: Option<TunnelKey>,
    /// On an update that moved the uplink tunnel: the tunnel the session left (`--cluster` says so under
    /// that tunnel's own subject, so a compacted stream never keeps the session there).
    pub tunnel_up_before: Option<TunnelKey>,
    /// The TEID downlink G-PDUs carry (the SGSN's / eNodeB's / SGW's S5), 0 if not yet known.
    pub teid_down: u32,
    /// GTP version of the signalling (0, 1 or 2).
    pub gtp_version: u8,
    /// Why a session ended or changed: "deleted", "idle-timeout", "replaced", "updated"; "created" on up.
    pub reason: &'static str,
    pub interface: Interface,
    /// From the exchange that raised this event (empty on session_down).
    pub attachment: Attachment,
    /// Capture frames of that exchange: request, response (0 when unknown or not from an exchange).
    pub frames: [u64; 2],
    /// The session's evidence tag (see `Correlator::set_evidence_tag`; 0: none).
    pub evidence_tag: u32,
}

/// How a user-plane packet was tied to its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// By the tunnel (GSN address + TEID, or the GTPv0 TID): the signalling's own key.
    Tunnel,
    /// By the inner source address, when exactly one live session holds it and the tunnel was unknown.
    UeIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub ts_us: u64,
    pub token: Token,
    pub identity: Identity,
    pub carrier: Carrier,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub attribution: Attribution,
    /// The session's evidence tag (0: none).
    pub evidence_tag: u32,
    /// The evidence file the binary wrote for this sighting, if it keeps evidence.
    pub evidence: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattributed {
    pub ts_us: u64,
    pub token: Token,
    pub ue_ip: IpAddr,
    pub reason: &'static str,
    /// The tunnel the packet came in (destination GSN address + TEID), when it was GTPv1-U.
    pub tunnel: Option<TunnelKey>,
    pub carrier: Carrier,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    SessionUp(SessionEvent),
    SessionUpdate(SessionEvent),
    SessionDown(SessionEvent),
    Sighting(Sighting),
    Unattributed(Unattributed),
}
