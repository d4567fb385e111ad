//! What the session table hands out and takes in: a [`Session`] in full, its two sides' tunnel ends
//! ([`Endpoint`], [`TunnelKey`]) and the [`Direction`] of traffic into a tunnel end.
use super::*;

/// A tunnel end: the address a GTP packet is sent to and the TEID it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelKey {
    pub address: IpAddr,
    pub teid: u32,
}

impl Hash for TunnelKey {
    /// One 128-bit word: the address (IPv4 mapped, so its high 80 bits are free) with the TEID folded in.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(crate::ip_word(self.address) ^ u128::from(self.teid) << 96);
    }
}

/// Which way user traffic flows into a tunnel end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Subscriber to network: the GGSN/PGW/SGW S1-U end.
    Uplink,
    /// Network to subscriber: the SGSN/eNodeB/SGW S5 end.
    Downlink,
}

/// One side of a context: its control-plane and user-plane tunnel ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub control: Option<TunnelKey>,
    pub user: Option<TunnelKey>,
}

/// A session in full (what the engine builds from signalling and reads back); stored compactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Assigned by the table: stable while the session lives, never reused for another one.
    pub id: u64,
    pub gtp_version: u8,
    pub imsi: Tbcd,
    pub msisdn: Tbcd,
    pub imei: Tbcd,
    pub apn: Option<Arc<str>>,
    pub ue_ipv4: Option<Ipv4Addr>,
    pub ue_ipv6: Option<Ipv6Addr>,
    /// NSAPI (GTPv1) or 0 (GTPv2: one entry per PDN connection).
    pub nsapi: u8,
    /// GTPv0 TID, when the context was set up by GTPv0.
    pub tid: Option<u64>,
    /// SGSN / MME / SGW-on-S5 side: receives downlink.
    pub access: Endpoint,
    /// GGSN / PGW / SGW-on-S11 side: receives uplink.
    pub core: Endpoint,
    pub last_seen_us: u64,
    /// The interface the session was learnt from.
    pub interface: Interface,
    /// An opaque tag the binary's evidence store gives the session (0: none).
    pub evidence_tag: u32,
}

impl Session {
    pub fn identity(&self) -> Identity {
        Identity {
            session_id: self.id,
            imsi: self.imsi,
            msisdn: self.msisdn,
            imei: self.imei,
            apn: self.apn.clone(),
            ue_ipv4: self.ue_ipv4,
            ue_ipv6: self.ue_ipv6,
        }
    }

    /// The uplink TEID (0 when unknown, and for GTPv0, whose flow labels are not TEIDs).
    pub fn teid_up(&self) -> u32 {
        if self.tid.is_some() {
            return 0;
        }
        self.core.user.map_or(0, |k| k.teid)
    }

    /// The downlink TEID (0 when unknown, and for GTPv0).
    pub fn teid_down(&self) -> u32 {
        if self.tid.is_some() {
            return 0;
        }
        self.access.user.map_or(0, |k| k.teid)
    }

    pub(super) fn keys(&self) -> [Option<TunnelKey>; 4] {
        [self.access.control, self.access.user, self.core.control, self.core.user]
    }
}
