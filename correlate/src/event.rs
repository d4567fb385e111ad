//! What the correlator reports. Events are produced on control messages and on sightings, never per
//! ordinary user-plane packet; the binary turns them into JSON lines (or billing RPCs).
use crate::scan::Carrier;
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub ts_us: u64,
    pub identity: Identity,
    /// The TEID uplink G-PDUs carry (the GGSN's / PGW's / SGW's S1-U), 0 if not yet known.
    pub teid_up: u32,
    /// The TEID downlink G-PDUs carry (the SGSN's / eNodeB's / SGW's S5), 0 if not yet known.
    pub teid_down: u32,
    /// GTP version of the signalling (0, 1 or 2).
    pub gtp_version: u8,
    /// Why a session ended or changed: "deleted", "idle-timeout", "replaced", "updated"; "created" on up.
    pub reason: &'static str,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattributed {
    pub ts_us: u64,
    pub token: Token,
    pub ue_ip: IpAddr,
    pub reason: &'static str,
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
