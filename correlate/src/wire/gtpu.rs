//! GTP-U (TS 29.281): a G-PDU carries one subscriber IP packet after the GTPv1 header (and its
//! extension headers, walked by [`super::gtpv1::Header::parse`]); this module decodes that inner packet
//! down to the transport payload the token scanner reads. Inner parsing uses etherparse's borrowed slices.
use crate::reason::DropReason;
use etherparse::{IpNumber, IpSlice, Ipv4HeaderSlice, TcpSlice, UdpSlice};
use std::net::IpAddr;

/// What the inner packet carried, borrowed from the G-PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    Tcp {
        source_port: u16,
        destination_port: u16,
        sequence: u32,
        syn: bool,
        fin: bool,
        rst: bool,
        payload: &'a [u8],
    },
    Udp {
        source_port: u16,
        destination_port: u16,
        payload: &'a [u8],
    },
    /// Another protocol (ICMP, ESP ...): not scanned.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket<'a> {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub transport: Transport<'a>,
}

/// Why an inner packet was not decoded (each a counter reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerError {
    Ip,
    Fragment,
    Tcp,
    Udp,
}

impl InnerError {
    pub fn reason(&self) -> DropReason {
        match self {
            InnerError::Ip => DropReason::InnerIpMalformed,
            InnerError::Fragment => DropReason::InnerIpFragment,
            InnerError::Tcp => DropReason::InnerTcpMalformed,
            InnerError::Udp => DropReason::InnerUdpMalformed,
        }
    }
}

/// The source address of a G-PDU's inner IP packet, read from the fixed header alone (no checksum,
/// options or payload): what the probe's dispatcher shards the user plane by. `None` where the header
/// is not there; the shard that gets the packet then says why.
#[inline]
pub fn inner_source(data: &[u8]) -> Option<IpAddr> {
    match data.first()? >> 4 {
        4 if data.len() >= 20 => {
            let octets: [u8; 4] = data.get(12..16)?.try_into().ok()?;
            Some(IpAddr::from(octets))
        }
        6 if data.len() >= 40 => {
            let octets: [u8; 16] = data.get(8..24)?.try_into().ok()?;
            Some(IpAddr::from(octets))
        }
        _ => None,
    }
}

/// Decodes the subscriber's packet of a G-PDU. Always inlined, as `gtpv1::Header::parse` (why there).
#[inline(always)]
pub fn inner_packet(data: &[u8]) -> Result<InnerPacket<'_>, InnerError> {
    let (source, destination, protocol, payload) = match plain_ipv4(data) {
        Some(plain) => plain,
        None => {
            let ip = IpSlice::from_slice(data).map_err(|_| InnerError::Ip)?;
            if ip.is_fragmenting_payload() {
                return Err(InnerError::Fragment);
            }
            (ip.source_addr(), ip.destination_addr(), ip.payload_ip_number(), ip.payload().payload)
        }
    };
    let transport = match protocol {
        IpNumber::TCP => {
            let tcp = TcpSlice::from_slice(payload).map_err(|_| InnerError::Tcp)?;
            Transport::Tcp {
                source_port: tcp.source_port(),
                destination_port: tcp.destination_port(),
                sequence: tcp.sequence_number(),
                syn: tcp.syn(),
                fin: tcp.fin(),
                rst: tcp.rst(),
                payload: tcp.payload(),
            }
        }
        IpNumber::UDP => {
            let udp = UdpSlice::from_slice(payload).map_err(|_| InnerError::Udp)?;
            Transport::Udp {
                source_port: udp.source_port(),
                destination_port: udp.destination_port(),
                payload: udp.payload(),
            }
        }
        _ => Transport::Other,
    };
    Ok(InnerPacket { source, destination, transport })
}

/// The common case, cheaply: an unfragmented IPv4 packet without an authentication header, whole in
/// `data` (etherparse's header slice, about 100 instructions fewer than its full `IpSlice`, which decodes
/// everything else and reports every error). A test checks that both paths agree.
#[inline]
fn plain_ipv4(data: &[u8]) -> Option<(IpAddr, IpAddr, IpNumber, &[u8])> {
    let header = Ipv4HeaderSlice::from_slice(data).ok()?;
    let protocol = header.protocol();
    if header.is_fragmenting_payload() || protocol == IpNumber::AUTHENTICATION_HEADER {
        return None;
    }
    let payload = data.get(header.slice().len()..usize::from(header.total_len()))?;
    Some((header.source_addr().into(), header.destination_addr().into(), protocol, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber's IPv4/TCP packet carrying the start of an HTTP request.
    fn http_request_packet() -> Vec<u8> {
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [93, 184, 216, 34], 64)
            .tcp(40000, 80, 1000, 64240)
            .write(&mut packet, b"GET / HTTP/1.1\r\n")
            .unwrap();
        packet
    }

    #[test]
    fn tcp_and_udp_inner_packets() {
        let tcp = http_request_packet();
        let inner = inner_packet(&tcp).unwrap();
        assert_eq!(inner.source, IpAddr::from([10, 0, 0, 1]));
        assert!(matches!(
            inner.transport,
            Transport::Tcp { destination_port: 80, sequence: 1000, payload: b"GET / HTTP/1.1\r\n", .. }
        ));
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv6([0x20; 16], [0x30; 16], 64).udp(5353, 53).write(&mut udp, b"q").unwrap();
        assert!(matches!(inner_packet(&udp).unwrap().transport, Transport::Udp { destination_port: 53, .. }));
        assert_eq!(inner_packet(&tcp[..30]), Err(InnerError::Ip), "IP total length beyond the data");
        assert_eq!(inner_packet(&[0x45, 0, 0]), Err(InnerError::Ip));
    }

    /// The IPv4 fast path against etherparse's full `IpSlice` on every truncation and on byte mutations
    /// of the header: where the fast path answers, it answers the same.
    #[test]
    fn the_ipv4_fast_path_agrees_with_the_full_decode() {
        let packet = http_request_packet();
        let mut cases: Vec<Vec<u8>> = (0..packet.len()).map(|cut| packet[..cut].to_vec()).collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..40_000 {
            let mut mutated = packet.clone();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            mutated[(state >> 8) as usize % 20] = (state >> 32) as u8;
            cases.push(mutated);
        }
        let mut answered = 0;
        for case in cases {
            let Some((source, destination, protocol, payload)) = plain_ipv4(&case) else { continue };
            answered += 1;
            let full = IpSlice::from_slice(&case).expect("the full decode accepts what the fast path does");
            assert!(!full.is_fragmenting_payload());
            assert_eq!((source, destination), (full.source_addr(), full.destination_addr()));
            assert_eq!((protocol, payload), (full.payload_ip_number(), full.payload().payload));
        }
        assert!(answered > 1_000, "the fast path answered {answered} cases");
    }
}
