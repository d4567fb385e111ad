//! Remote-mirror encapsulations around generated frames: what an analyzer session (ERSPAN), a virtual
//! tap (VXLAN, Geneve) or a GRE tunnel delivers to a probe's port. The same Gn traffic wrapped in each
//! must give the same sightings as the plain frames.
use crate::FrameSink;
use std::net::Ipv4Addr;

/// The mirror's source (the switch or vTAP) and the probe's address.
pub const MIRROR_SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 250);
pub const MIRROR_DESTINATION: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 251);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulation {
    Vxlan,
    Geneve,
    /// GRE with transparent Ethernet bridging (0x6558), keyed by the id.
    Gre,
    ErspanI,
    ErspanII,
    ErspanIII,
}

impl std::str::FromStr for Encapsulation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "vxlan" => Encapsulation::Vxlan,
            "geneve" => Encapsulation::Geneve,
            "gre" => Encapsulation::Gre,
            "erspan1" => Encapsulation::ErspanI,
            "erspan2" => Encapsulation::ErspanII,
            "erspan3" => Encapsulation::ErspanIII,
            _ => return Err(format!("{text}: not one of vxlan, geneve, gre, erspan1, erspan2, erspan3")),
        })
    }
}

/// Wraps every frame in `encapsulation` (mirror session or VNI `id`) before handing it on.
pub struct Encapsulating<S> {
    pub inner: S,
    pub encapsulation: Encapsulation,
    pub id: u32,
    sequence: u32,
}

impl<S> Encapsulating<S> {
    pub fn new(inner: S, encapsulation: Encapsulation, id: u32) -> Encapsulating<S> {
        Encapsulating { inner, encapsulation, id, sequence: 0 }
    }
}

impl<S: FrameSink> FrameSink for Encapsulating<S> {
    fn frame(&mut self, ts_us: u64, data: &[u8]) {
        self.sequence = self.sequence.wrapping_add(1);
        let wrapped = wrap(self.encapsulation, self.id, self.sequence, data);
        self.inner.frame(ts_us, &wrapped);
    }
}

/// One Ethernet frame inside one encapsulation, as a whole outer Ethernet/IPv4 frame.
pub fn wrap(encapsulation: Encapsulation, id: u32, sequence: u32, frame: &[u8]) -> Vec<u8> {
    let ethernet = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xFA], [2, 0, 0, 0, 0, 0xFB]);
    let (source, destination) = (MIRROR_SOURCE.octets(), MIRROR_DESTINATION.octets());
    let mut out = Vec::with_capacity(frame.len() + 64);
    match encapsulation {
        Encapsulation::Vxlan | Encapsulation::Geneve => {
            let mut payload = match encapsulation {
                Encapsulation::Vxlan => vec![0x08, 0, 0, 0],
                _ => vec![0x00, 0x00, 0x65, 0x58],
            };
            payload.extend_from_slice(&(id << 8).to_be_bytes());
            payload.extend_from_slice(frame);
            let port = if encapsulation == Encapsulation::Vxlan { 4789 } else { 6081 };
            let source_port = 49152 + (sequence % 16) as u16; // entropy, as a VTEP hashes flows
            ethernet.ipv4(source, destination, 64).udp(source_port, port).write(&mut out, &payload).ok();
        }
        Encapsulation::Gre | Encapsulation::ErspanI | Encapsulation::ErspanII | Encapsulation::ErspanIII => {
            let mut gre = match encapsulation {
                Encapsulation::Gre => {
                    let mut g = vec![0x20, 0, 0x65, 0x58];
                    g.extend_from_slice(&id.to_be_bytes());
                    g
                }
                Encapsulation::ErspanI => vec![0, 0, 0x88, 0xBE],
                Encapsulation::ErspanII => {
                    let mut g = vec![0x10, 0, 0x88, 0xBE];
                    g.extend_from_slice(&sequence.to_be_bytes());
                    // version 1, VLAN 0; COS 0, En 0, T 0, session id; reserved, index 0
                    g.extend_from_slice(&[0x10, 0x00]);
                    g.extend_from_slice(&((id & 0x3FF) as u16).to_be_bytes());
                    g.extend_from_slice(&[0, 0, 0, 0]);
                    g
                }
                Encapsulation::ErspanIII | Encapsulation::Vxlan | Encapsulation::Geneve => {
                    let mut g = vec![0x10, 0, 0x22, 0xEB];
                    g.extend_from_slice(&sequence.to_be_bytes());
                    // version 2, VLAN 0; COS 0, BSO 0, T 0, session id; timestamp; SGT, P, FT, HW, D, Gra, O
                    g.extend_from_slice(&[0x20, 0x00]);
                    g.extend_from_slice(&((id & 0x3FF) as u16).to_be_bytes());
                    g.extend_from_slice(&sequence.to_be_bytes());
                    g.extend_from_slice(&[0, 0, 0, 0x01]); // O = 1: a platform subheader follows
                    g.extend_from_slice(&[0x0C, 0, 0, 0, 0, 0, 0, 0]); // platform id 3, no data
                    g
                }
            };
            gre.extend_from_slice(frame);
            ethernet.ipv4(source, destination, 64).write(&mut out, etherparse::IpNumber::GRE, &gre).ok();
        }
    }
    out
}
