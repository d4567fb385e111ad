//! Remote-mirror encapsulations, down to the mirrored frame: what a carrier's analyzer session or
//! virtual tap sends to the probe's port when the probe is not on the mirrored link itself.
//!
//! ```text
//! GRE (IP protocol 47, RFC 2784/2890): C R K S flags, version 0, protocol type, then the optional
//!     checksum+reserved (C), key (K) and sequence (S) words
//!   0x6558 transparent Ethernet bridging          → Ethernet (the key, if any, names the session)
//!   0x88BE without S: ERSPAN type I               → Ethernet
//!   0x88BE with S: ERSPAN type II, 8-byte header  → Ethernet (ver 1, 10-bit session id)
//!   0x22EB ERSPAN type III, 12-byte header        → [8-byte platform subheader if O] → Ethernet
//!   0x0800 / 0x86DD plain IP in GRE              → IP
//! VXLAN (UDP, 4789 by default, RFC 7348): flags (I), 24-bit VNI, 8 bytes → Ethernet
//! Geneve (UDP, 6081 by default, RFC 8926): ver, option length, protocol type, VNI, options → Ethernet/IP
//! ```
//! Each layer is checked before it is trusted; a malformed one is a counted reason, never a guess.
use crate::decode::linktype;
use crate::undecoded::Undecoded;

/// Encapsulations unwrapped from one frame at most (a mirror of a mirror is legitimate; an endless one
/// is not).
pub const DEPTH_MAX: usize = 4;

/// Which encapsulation a frame arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Gre,
    ErspanI,
    ErspanII,
    ErspanIII,
    Vxlan,
    Geneve,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gre => "gre",
            Kind::ErspanI => "erspan1",
            Kind::ErspanII => "erspan2",
            Kind::ErspanIII => "erspan3",
            Kind::Vxlan => "vxlan",
            Kind::Geneve => "geneve",
        }
    }
}

/// One unwrapped layer: what it was, the mirror session it names (ERSPAN session id, VXLAN/Geneve VNI,
/// GRE key; 0 when it names none), and the inner frame with its link type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer<'a> {
    pub kind: Kind,
    pub id: u32,
    pub linktype: i32,
    pub inner: &'a [u8],
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*data.get(at)?, *data.get(at + 1)?, *data.get(at + 2)?, *data.get(at + 3)?]))
}

/// A GRE packet (the IP payload of protocol 47).
pub fn gre(packet: &[u8]) -> Result<Layer<'_>, Undecoded> {
    let malformed = Undecoded::GreMalformed;
    let (&flags, &version) = (packet.first().ok_or(malformed)?, packet.get(1).ok_or(malformed)?);
    if version & 0x07 != 0 || flags & 0x40 != 0 {
        return Err(Undecoded::GreUnsupported); // enhanced GRE (PPTP) or source routing
    }
    let protocol = be16(packet, 2).ok_or(malformed)?;
    let mut at = 4;
    if flags & 0x80 != 0 {
        at += 4; // checksum + reserved
    }
    let mut key = 0;
    if flags & 0x20 != 0 {
        key = be32(packet, at).ok_or(malformed)?;
        at += 4;
    }
    let sequenced = flags & 0x10 != 0;
    if sequenced {
        at += 4;
    }
    let rest = packet.get(at..).ok_or(malformed)?;
    match protocol {
        0x6558 => Ok(Layer { kind: Kind::Gre, id: key, linktype: linktype::ETHERNET, inner: rest }),
        0x0800 | 0x86DD => Ok(Layer { kind: Kind::Gre, id: key, linktype: linktype::RAW, inner: rest }),
        0x88BE if !sequenced => Ok(Layer { kind: Kind::ErspanI, id: 0, linktype: linktype::ETHERNET, inner: rest }),
        0x88BE => {
            let bad = Undecoded::ErspanMalformed;
            let head = rest.get(..8).ok_or(bad)?;
            if head.first().map(|b| b >> 4) != Some(1) {
                return Err(bad);
            }
            let id = u32::from(be16(head, 2).ok_or(bad)? & 0x03FF);
            Ok(Layer { kind: Kind::ErspanII, id, linktype: linktype::ETHERNET, inner: rest.get(8..).ok_or(bad)? })
        }
        0x22EB => {
            let bad = Undecoded::ErspanMalformed;
            let head = rest.get(..12).ok_or(bad)?;
            if head.first().map(|b| b >> 4) != Some(2) {
                return Err(bad);
            }
            let id = u32::from(be16(head, 2).ok_or(bad)? & 0x03FF);
            // O: an 8-byte platform-specific subheader follows.
            let skip = if head.get(11).is_some_and(|b| b & 0x01 != 0) { 20 } else { 12 };
            Ok(Layer { kind: Kind::ErspanIII, id, linktype: linktype::ETHERNET, inner: rest.get(skip..).ok_or(bad)? })
        }
        _ => Err(Undecoded::GreUnsupported),
    }
}

/// A VXLAN datagram's payload.
pub fn vxlan(payload: &[u8]) -> Result<Layer<'_>, Undecoded> {
    let bad = Undecoded::VxlanMalformed;
    let head = payload.get(..8).ok_or(bad)?;
    if head.first().is_none_or(|flags| flags & 0x08 == 0) {
        return Err(bad); // the I flag says the VNI is valid
    }
    let id = be32(head, 4).ok_or(bad)? >> 8;
    Ok(Layer { kind: Kind::Vxlan, id, linktype: linktype::ETHERNET, inner: payload.get(8..).ok_or(bad)? })
}

/// A Geneve datagram's payload.
pub fn geneve(payload: &[u8]) -> Result<Layer<'_>, Undecoded> {
    let bad = Undecoded::GeneveMalformed;
    let first = *payload.first().ok_or(bad)?;
    if first >> 6 != 0 {
        return Err(bad); // version 0 only
    }
    let header_len = 8 + usize::from(first & 0x3F) * 4;
    let id = be32(payload, 4).ok_or(bad)? >> 8;
    let inner = payload.get(header_len..).ok_or(bad)?;
    let linktype = match be16(payload, 2).ok_or(bad)? {
        0x6558 => linktype::ETHERNET,
        0x0800 | 0x86DD => linktype::RAW,
        _ => return Err(Undecoded::GeneveUnsupported),
    };
    Ok(Layer { kind: Kind::Geneve, id, linktype, inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gre_variants() {
        let frame = [0xAAu8; 20];
        let mut teb = vec![0x20, 0, 0x65, 0x58, 0, 0, 0, 42];
        teb.extend_from_slice(&frame);
        assert_eq!(gre(&teb).unwrap(), Layer { kind: Kind::Gre, id: 42, linktype: 1, inner: &frame });

        let mut type1 = vec![0, 0, 0x88, 0xBE];
        type1.extend_from_slice(&frame);
        assert_eq!(gre(&type1).unwrap().kind, Kind::ErspanI);

        let mut type2 = vec![0x10, 0, 0x88, 0xBE, 0, 0, 0, 7, 0x10, 0x01, 0x03, 0x21, 0, 0, 0, 0];
        type2.extend_from_slice(&frame);
        let layer = gre(&type2).unwrap();
        assert_eq!((layer.kind, layer.id, layer.inner), (Kind::ErspanII, 0x321, &frame[..]));

        let mut type3 = vec![0x10, 0, 0x22, 0xEB, 0, 0, 0, 7, 0x20, 0x01, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0, 1];
        type3.extend_from_slice(&[0; 8]); // the platform subheader (O = 1)
        type3.extend_from_slice(&frame);
        let layer = gre(&type3).unwrap();
        assert_eq!((layer.kind, layer.id, layer.inner), (Kind::ErspanIII, 5, &frame[..]));

        for cut in 0..type3.len() - frame.len() {
            assert!(gre(&type3[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(gre(&[0, 1, 0x88, 0xBE]), Err(Undecoded::GreUnsupported), "version 1 (PPTP)");
        assert_eq!(gre(&[0, 0, 0x12, 0x34]), Err(Undecoded::GreUnsupported));
        let mut wrong_version = type2.clone();
        wrong_version[8] = 0x20;
        assert_eq!(gre(&wrong_version), Err(Undecoded::ErspanMalformed));
    }

    #[test]
    fn vxlan_and_geneve() {
        let frame = [0xBBu8; 16];
        let mut v = vec![0x08, 0, 0, 0, 0x01, 0x02, 0x03, 0];
        v.extend_from_slice(&frame);
        assert_eq!(vxlan(&v).unwrap(), Layer { kind: Kind::Vxlan, id: 0x010203, linktype: 1, inner: &frame });
        assert_eq!(vxlan(&[0, 0, 0, 0, 0, 0, 1, 0]), Err(Undecoded::VxlanMalformed), "no I flag");
        assert!(vxlan(&v[..7]).is_err());

        let mut g = vec![0x01, 0, 0x65, 0x58, 0, 0, 9, 0, 1, 2, 3, 4];
        g.extend_from_slice(&frame);
        assert_eq!(geneve(&g).unwrap(), Layer { kind: Kind::Geneve, id: 9, linktype: 1, inner: &frame });
        assert_eq!(geneve(&[0x40, 0, 0x65, 0x58, 0, 0, 9, 0]), Err(Undecoded::GeneveMalformed), "version 1");
        assert!(geneve(&g[..10]).is_err(), "options cut");
    }
}
