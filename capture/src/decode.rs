//! From a link-layer frame to a UDP datagram.
//!
//! The link walk is ours (a few fixed offsets, with any number of VLAN tags and MPLS labels, bounded);
//! IPv4, IPv6 with its extension headers, and UDP are etherparse's borrowed slices. A frame that is not
//! UDP over IP, or is malformed, yields a counter reason; nothing here panics on any input.
use crate::encap::{self, Kind, Layer};
use crate::reassembly::{FragmentKey, Outcome, Reassembler};
use crate::undecoded::Undecoded;
use etherparse::{IpNumber, IpSlice, Ipv4HeaderSlice, UdpSlice};
use std::net::{IpAddr, SocketAddr};

/// libpcap DLT values this decoder reads.
pub mod linktype {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    pub const RAW: i32 = 12;
    pub const RAW_OPENBSD: i32 = 14;
    pub const RAW_LINKTYPE: i32 = 101;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
/// 802.1Q, 802.1ad and the two pre-standard QinQ ethertypes.
fn is_vlan(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88A8 | 0x9100 | 0x9200)
}
/// MPLS unicast and multicast.
fn is_mpls(ethertype: u16) -> bool {
    matches!(ethertype, 0x8847 | 0x8848)
}
/// VLAN tags and MPLS labels walked before a frame is refused.
pub const LINK_TAGS_MAX: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfig {
    pub fragments_max: usize,
    pub fragment_timeout_ms: u64,
    /// UDP destination ports that carry VXLAN (4789 by default).
    pub vxlan_ports: Vec<u16>,
    /// UDP destination ports that carry Geneve (6081 by default).
    pub geneve_ports: Vec<u16>,
    /// Only frames whose outermost encapsulation names one of these mirror sessions (ERSPAN session id,
    /// VXLAN/Geneve VNI, GRE key) are decoded; the rest are dropped as `mirror-id-filtered`. Empty: all.
    /// Frames that arrive without an encapsulation are always decoded.
    pub mirror_ids: Vec<u32>,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            fragments_max: 4096,
            fragment_timeout_ms: 2_000,
            vxlan_ports: vec![4789],
            geneve_ports: vec![6081],
            mirror_ids: Vec::new(),
        }
    }
}

/// Mirror sessions counted apart in [`Decoder::mirror_sessions`]; frames of more are counted together.
pub const MIRROR_SESSIONS_MAX: usize = 64;

/// A mirror session (its encapsulation and id) and the frames decoded out of it.
pub type MirrorSessionCount = ((Kind, u32), u64);

const PORT_VXLAN: u8 = 1;
const PORT_GENEVE: u8 = 2;

/// A UDP datagram, borrowed from the frame or from the decoder's reassembly buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: &'a [u8],
}

pub struct Decoder {
    reassembler: Reassembler,
    reassembled: Vec<u8>,
    reported_timeouts: u64,
    /// Per UDP port: `PORT_VXLAN`, `PORT_GENEVE` or 0 (one load per datagram, no bounds check).
    tunnel_ports: Box<[u8; 1 << 16]>,
    mirror_ids: Vec<u32>,
    /// Frames by their outermost encapsulation and mirror session, and those beyond the bound.
    mirror_sessions: Vec<MirrorSessionCount>,
    mirror_sessions_other: u64,
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

/// The network-layer bytes of a frame (IPv4 or IPv6 by ethertype or version nibble).
#[inline(always)]
fn network_layer(linktype: i32, data: &[u8]) -> Result<&[u8], Undecoded> {
    let (mut ethertype, mut rest) = match linktype {
        linktype::ETHERNET => {
            (be16(data, 12).ok_or(Undecoded::LinkTruncated)?, data.get(14..).ok_or(Undecoded::LinkTruncated)?)
        }
        linktype::LINUX_SLL => {
            (be16(data, 14).ok_or(Undecoded::LinkTruncated)?, data.get(16..).ok_or(Undecoded::LinkTruncated)?)
        }
        linktype::LINUX_SLL2 => {
            (be16(data, 0).ok_or(Undecoded::LinkTruncated)?, data.get(20..).ok_or(Undecoded::LinkTruncated)?)
        }
        linktype::RAW | linktype::RAW_OPENBSD | linktype::RAW_LINKTYPE | linktype::IPV4 | linktype::IPV6 => {
            return Ok(data)
        }
        linktype::NULL | linktype::LOOP => {
            // A 4-byte address family, in the capturing host's byte order (NULL) or network order (LOOP).
            return data.get(4..).ok_or(Undecoded::LinkTruncated);
        }
        _ => return Err(Undecoded::LinkTypeUnsupported),
    };
    // The common case first: an untagged IP frame leaves at the first test.
    for _ in 0..LINK_TAGS_MAX {
        match ethertype {
            ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => return Ok(rest),
            t if is_vlan(t) => {
                ethertype = be16(rest, 2).ok_or(Undecoded::LinkTruncated)?;
                rest = rest.get(4..).ok_or(Undecoded::LinkTruncated)?;
            }
            t if is_mpls(t) => {
                let label = rest.get(..4).ok_or(Undecoded::LinkTruncated)?;
                let bottom_of_stack = label.get(2).is_some_and(|b| b & 1 == 1);
                rest = rest.get(4..).ok_or(Undecoded::LinkTruncated)?;
                if bottom_of_stack {
                    return Ok(rest); // IP by its version nibble
                }
            }
            _ => return Err(Undecoded::NotIp),
        }
    }
    match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Ok(rest),
        t if is_vlan(t) || is_mpls(t) => Err(Undecoded::LinkTooManyTags),
        _ => Err(Undecoded::NotIp),
    }
}

/// Which reassembly a frame belongs to when it is a fragment of an IPv4 packet: (source, destination,
/// protocol, identification); `None` for anything else. For gathering a reassembled packet's frames
/// (evidence), not on the per-packet path.
pub fn ipv4_fragment_of(linktype: i32, data: &[u8]) -> Option<(IpAddr, IpAddr, u8, u16)> {
    let network = network_layer(linktype, data).ok()?;
    let header = etherparse::Ipv4HeaderSlice::from_slice(network).ok()?;
    if !header.more_fragments() && header.fragments_offset().value() == 0 {
        return None;
    }
    let (source, destination) = (IpAddr::V4(header.source_addr()), IpAddr::V4(header.destination_addr()));
    Some((source, destination, header.protocol().0, header.identification()))
}

impl Decoder {
    pub fn new(config: &DecoderConfig) -> Decoder {
        let mut tunnel_ports = Box::new([0u8; 1 << 16]);
        for (ports, kind) in [(&config.vxlan_ports, PORT_VXLAN), (&config.geneve_ports, PORT_GENEVE)] {
            for &port in ports {
                if let Some(slot) = tunnel_ports.get_mut(usize::from(port)) {
                    *slot = kind;
                }
            }
        }
        Decoder {
            reassembler: Reassembler::new(config.fragments_max, config.fragment_timeout_ms * 1000),
            reassembled: Vec::new(),
            reported_timeouts: 0,
            tunnel_ports,
            mirror_ids: config.mirror_ids.clone(),
            mirror_sessions: Vec::new(),
            mirror_sessions_other: 0,
        }
    }

    /// Frames decoded out of a remote-mirror encapsulation, by the outermost one's kind and session id;
    /// and the frames of sessions beyond [`MIRROR_SESSIONS_MAX`].
    pub fn mirror_sessions(&self) -> (&[MirrorSessionCount], u64) {
        (&self.mirror_sessions, self.mirror_sessions_other)
    }

    #[inline(always)]
    fn tunnel_port(&self, port: u16) -> u8 {
        // A u16 indexes a table of 2^16 entries: never out of bounds.
        #[allow(clippy::indexing_slicing)]
        self.tunnel_ports[usize::from(port)]
    }

    /// One encapsulation layer around the frame's network layer, if there is one.
    fn unwrap<'d>(&self, ip: &IpSlice<'d>) -> Result<Option<Layer<'d>>, Undecoded> {
        if ip.is_fragmenting_payload() {
            return Ok(None); // reassembled first; see `decode_ip`
        }
        let payload = ip.payload().payload;
        match ip.payload_ip_number() {
            IpNumber::GRE => encap::gre(payload).map(Some),
            IpNumber::UDP => {
                let Ok(udp) = UdpSlice::from_slice(payload) else { return Ok(None) };
                match self.tunnel_port(udp.destination_port()) {
                    PORT_VXLAN => encap::vxlan(udp.payload()).map(Some),
                    PORT_GENEVE => encap::geneve(udp.payload()).map(Some),
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }

    /// Counts a frame under its mirror session; `Err` when the session is filtered out.
    fn mirror_session(&mut self, session: (Kind, u32)) -> Result<(), Undecoded> {
        if !self.mirror_ids.is_empty() && !self.mirror_ids.contains(&session.1) {
            return Err(Undecoded::MirrorIdFiltered);
        }
        let room = self.mirror_sessions.len() < MIRROR_SESSIONS_MAX;
        match self.mirror_sessions.iter_mut().find(|(s, _)| *s == session) {
            Some((_, count)) => *count += 1,
            None if room => self.mirror_sessions.push((session, 1)),
            None => self.mirror_sessions_other += 1,
        }
        Ok(())
    }

    /// Frames in a remote-mirror encapsulation: unwrapped (at most [`encap::DEPTH_MAX`] layers), then
    /// decoded as any other; and everything `decode_as`'s common case leaves.
    #[inline(never)]
    fn decode_slow<'a>(&'a mut self, linktype: i32, ts_us: u64, data: &'a [u8]) -> Result<Option<Udp<'a>>, Undecoded> {
        let (mut linktype, mut frame) = (linktype, data);
        let mut outermost = None;
        for _ in 0..=encap::DEPTH_MAX {
            // Parsed once: `unwrap` looks inside, `decode_ip` takes what it did not unwrap.
            let ip = IpSlice::from_slice(network_layer(linktype, frame)?).map_err(|_| Undecoded::IpMalformed)?;
            match self.unwrap(&ip)? {
                Some(layer) => {
                    outermost.get_or_insert((layer.kind, layer.id));
                    (linktype, frame) = (layer.linktype, layer.inner);
                }
                None => {
                    if let Some(session) = outermost {
                        self.mirror_session(session)?;
                    }
                    return self.decode_ip(ts_us, ip);
                }
            }
        }
        Err(Undecoded::EncapTooDeep)
    }

    /// Fragmented packets dropped for timing out since the last call.
    pub fn take_fragment_timeouts(&mut self) -> u64 {
        let new = self.reassembler.timed_out - self.reported_timeouts;
        self.reported_timeouts = self.reassembler.timed_out;
        new
    }

    /// Decodes one frame. `Ok(None)`: a fragment was held for reassembly. `Err(reason)`: dropped.
    /// Always inlined (the common case is short): as a call, its result went through memory.
    #[inline(always)]
    pub fn decode<'a>(&'a mut self, linktype: i32, ts_us: u64, data: &'a [u8]) -> Result<Option<Udp<'a>>, Undecoded> {
        self.decode_as(linktype, ts_us, data, |udp| udp)
    }

    /// [`Decoder::decode`], handing the datagram to `make` and returning what it makes: the caller's
    /// own form of a datagram is then built where the result lies, not copied there from a [`Udp`]
    /// (two socket addresses, moved field by field: 26 instructions a frame in the replay).
    #[inline(always)]
    pub fn decode_as<'a, T>(
        &'a mut self,
        linktype: i32,
        ts_us: u64,
        data: &'a [u8],
        make: impl FnOnce(Udp<'a>) -> T,
    ) -> Result<Option<T>, Undecoded> {
        let network = network_layer(linktype, data)?;
        if let Some((source, destination, transport)) = plain_ipv4(network, IpNumber::UDP) {
            let udp = udp(source, destination, transport)?;
            if self.tunnel_port(udp.destination.port()) == 0 {
                return Ok(Some(make(udp)));
            }
        }
        Ok(self.decode_slow(linktype, ts_us, data)?.map(make))
    }

    /// An IP packet that is no encapsulation, past the common case (see `plain_ipv4`): IPv6, fragments
    /// (reassembled here), errors. Reached through `decode_slow`, out of line, so that `decode`, inlined
    /// into the caller's per-frame loop, holds only the common case.
    fn decode_ip<'a>(&'a mut self, ts_us: u64, ip: IpSlice<'a>) -> Result<Option<Udp<'a>>, Undecoded> {
        let (source, destination) = (ip.source_addr(), ip.destination_addr());
        let protocol = ip.payload_ip_number();
        if protocol != IpNumber::UDP {
            return Err(match protocol {
                IpNumber::TCP => Undecoded::NotUdpTcp,
                IpNumber::GRE if ip.is_fragmenting_payload() => Undecoded::EncapInFragment,
                _ => Undecoded::NotUdp,
            });
        }
        if ip.is_fragmenting_payload() {
            let (identification, offset, more) = match &ip {
                IpSlice::Ipv4(v4) => {
                    let h = v4.header();
                    (u32::from(h.identification()), h.fragments_offset(), h.more_fragments())
                }
                IpSlice::Ipv6(v6) => {
                    let fragment = v6
                        .extensions()
                        .clone()
                        .into_iter()
                        .find_map(|ext| match ext {
                            etherparse::Ipv6ExtensionSlice::Fragment(f) => Some(f.to_header()),
                            _ => None,
                        })
                        .ok_or(Undecoded::IpMalformed)?;
                    (fragment.identification, fragment.fragment_offset, fragment.more_fragments)
                }
            };
            let key = FragmentKey { source, destination, identification, protocol: protocol.0 };
            let payload = ip.payload().payload;
            return match self.reassembler.add(ts_us, key, offset, more, payload)? {
                Outcome::Held => Ok(None),
                Outcome::Complete(whole) => {
                    let previous = std::mem::replace(&mut self.reassembled, whole);
                    self.reassembler.recycle(previous);
                    let udp = udp(source, destination, &self.reassembled)?;
                    if self.tunnel_port(udp.destination.port()) != 0 {
                        // A mirror's encapsulation split into outer fragments: reassembled, but not
                        // unwrapped (counted; mirror sessions are set up to fit the path's MTU).
                        return Err(Undecoded::EncapInFragment);
                    }
                    Ok(Some(udp))
                }
            };
        }
        udp(source, destination, ip.payload().payload).map(Some)
    }
}

/// The common case, cheaply: an unfragmented IPv4 packet of `protocol` (IPv4 options allowed), whole in
/// `network`; its addresses and payload (without any link-layer padding). `None` for anything else (IPv6,
/// AH, fragments, other protocols, every malformation), which the caller decodes with etherparse's full
/// `IpSlice`, so errors are reported by one path. The full path costs about 130 instructions per packet
/// more (callgrind); a test checks that both agree.
#[inline]
fn plain_ipv4(network: &[u8], protocol: IpNumber) -> Option<(IpAddr, IpAddr, &[u8])> {
    let header = Ipv4HeaderSlice::from_slice(network).ok()?;
    if header.protocol() != protocol || header.is_fragmenting_payload() {
        return None;
    }
    let payload = network.get(header.slice().len()..usize::from(header.total_len()))?;
    Some((header.source_addr().into(), header.destination_addr().into(), payload))
}

#[inline(always)]
fn udp(source: IpAddr, destination: IpAddr, transport: &[u8]) -> Result<Udp<'_>, Undecoded> {
    let udp = UdpSlice::from_slice(transport).map_err(|_| Undecoded::UdpMalformed)?;
    Ok(Udp {
        source: SocketAddr::new(source, udp.source_port()),
        destination: SocketAddr::new(destination, udp.destination_port()),
        payload: udp.payload(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_frame(vlans: usize) -> Vec<u8> {
        let mut inner = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(2152, 2152).write(&mut inner, b"gtp").unwrap();
        let mut frame = vec![0u8; 12];
        for _ in 0..vlans {
            frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x0A]);
        }
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&inner);
        frame
    }

    #[test]
    fn ethernet_with_any_number_of_tags() {
        let mut decoder = Decoder::new(&DecoderConfig::default());
        for vlans in 0..=3 {
            let frame = udp_frame(vlans);
            let udp = decoder.decode(linktype::ETHERNET, 0, &frame).unwrap().unwrap();
            assert_eq!((udp.destination.port(), udp.payload), (2152, &b"gtp"[..]));
        }
        assert_eq!(decoder.decode(linktype::ETHERNET, 0, &udp_frame(9)), Err(Undecoded::LinkTooManyTags));
    }

    #[test]
    fn every_truncation_is_a_reason() {
        let mut decoder = Decoder::new(&DecoderConfig::default());
        let frame = udp_frame(2);
        for cut in 0..frame.len() {
            assert!(decoder.decode(linktype::ETHERNET, 0, &frame[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(decoder.decode(999, 0, &frame), Err(Undecoded::LinkTypeUnsupported));
    }

    #[test]
    fn sll2_and_raw() {
        let mut decoder = Decoder::new(&DecoderConfig::default());
        let ip = &udp_frame(0)[14..];
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(ip);
        assert!(decoder.decode(linktype::LINUX_SLL2, 0, &sll2).unwrap().is_some());
        assert!(decoder.decode(linktype::RAW, 0, ip).unwrap().is_some());
    }

    /// The IPv4 fast path against etherparse's full `IpSlice` on every truncation and on byte mutations of
    /// a UDP packet (with options and link padding): where the fast path answers, it answers the same.
    #[test]
    fn the_ipv4_fast_path_agrees_with_the_full_decode() {
        let mut packet = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(2152, 2152).write(&mut packet, b"payload").unwrap();
        let mut with_options = packet.clone();
        with_options[0] = 0x46; // IHL 6: one word of options
        with_options.splice(20..20, [1, 1, 1, 1]);
        let total = u16::from_be_bytes([with_options[2], with_options[3]]) + 4;
        with_options[2..4].copy_from_slice(&total.to_be_bytes());
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut answered = 0;
        for base in [packet, with_options] {
            let mut padded = base.clone();
            padded.extend_from_slice(&[0; 6]); // Ethernet minimum-frame padding
            let mut cases: Vec<Vec<u8>> = (0..base.len()).map(|cut| base[..cut].to_vec()).collect();
            cases.push(padded);
            for _ in 0..20_000 {
                let mut mutated = base.clone();
                for _ in 0..1 + (state % 3) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let at = (state >> 8) as usize % 12; // the fields the fast path reads
                    mutated[at] = (state >> 32) as u8;
                }
                cases.push(mutated);
            }
            for case in cases {
                let Some((source, destination, payload)) = plain_ipv4(&case, IpNumber::UDP) else { continue };
                answered += 1;
                let full = IpSlice::from_slice(&case).expect("the full decode accepts what the fast path does");
                assert!(!full.is_fragmenting_payload() && full.payload_ip_number() == IpNumber::UDP);
                assert_eq!((source, destination), (full.source_addr(), full.destination_addr()));
                assert_eq!(payload, full.payload().payload);
            }
        }
        assert!(answered > 1_000, "the fast path answered {answered} cases");
    }

    #[test]
    fn fragmented_ipv4_is_reassembled() {
        // A 1600-byte UDP payload in two fragments, as on Gn.
        let payload = vec![0x5Au8; 1600];
        let mut whole = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(2152, 2152).write(&mut whole, &payload).unwrap();
        let transport = &whole[20..];
        let mut header = etherparse::Ipv4Header::from_slice(&whole).unwrap().0;
        header.identification = 77;
        let split = 1000;
        let mut frames = Vec::new();
        for (start, end, more) in [(0, split, true), (split, transport.len(), false)] {
            let mut h = header.clone();
            h.more_fragments = more;
            h.fragment_offset = etherparse::IpFragOffset::try_new((start / 8) as u16).unwrap();
            h.set_payload_len(end - start).unwrap();
            h.header_checksum = h.calc_header_checksum();
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00]);
            frame.extend_from_slice(&h.to_bytes());
            frame.extend_from_slice(&transport[start..end]);
            frames.push(frame);
        }
        let mut decoder = Decoder::new(&DecoderConfig::default());
        assert_eq!(decoder.decode(linktype::ETHERNET, 0, &frames[1]), Ok(None));
        let udp = decoder.decode(linktype::ETHERNET, 1, &frames[0]).unwrap().unwrap();
        assert_eq!(udp.payload, &payload[..]);
    }
}
