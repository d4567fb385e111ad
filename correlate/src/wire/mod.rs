//! Zero-copy views of the GTP protocols, in the smoltcp shape: each message type is a borrowed view whose
//! constructor checks lengths once, after which no accessor panics; IEs are walked by bounded iterators.
//!
//! Why our own parser: the only GTP crate named for Rust (gtp-rs) is not published on crates.io, builds
//! owned structs (allocating per message), and its README calls its GTPv1-C part incomplete. A probe on a
//! carrier mirror needs an allocation-free parser that never panics, so this one is written here.
//!
//! What it deliberately does not do: build or emit messages (the generator in `pcaps/` writes its own
//! bytes), or interpret IEs the correlator does not need (they are skipped by length).
pub mod gtpu;
pub mod gtpv0;
pub mod gtpv1;
pub mod gtpv2;
pub mod location;
pub mod tbcd;

pub use tbcd::Tbcd;

use crate::reason::DropReason;

/// Why a GTP message could not be parsed. Small and `Copy`: it is counted, then dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{layer}: needed {needed} bytes, have {have}")]
    Truncated { layer: &'static str, needed: usize, have: usize },
    /// The message's length field holds the element, but the element runs past the message's end.
    #[error("{layer}: information element needs {needed} bytes, {have} left in the message")]
    TruncatedIe { layer: &'static str, needed: usize, have: usize },
    #[error("{0}: unsupported version")]
    Version(&'static str),
    #[error("GTPv1-C: unknown TV information element type {0} (its length is not on the wire)")]
    UnknownTv(u8),
    #[error("{0}: information element is malformed")]
    BadIe(&'static str),
    #[error("GTP-U: more than {GTPU_EXT_HDRS_MAX} extension headers")]
    TooManyExtensions,
    #[error("GTP-U: extension header with zero length")]
    ZeroLengthExtension,
    #[error("GTP: protocol type is GTP' (charging), not GTP")]
    GtpPrime,
}

impl WireError {
    /// A short stable name for counters.
    pub fn reason(&self) -> DropReason {
        match self {
            WireError::Truncated { .. } => DropReason::GtpTruncated,
            WireError::TruncatedIe { .. } => DropReason::GtpcIeTruncated,
            WireError::Version(_) => DropReason::GtpBadVersion,
            WireError::UnknownTv(_) => DropReason::GtpcUnknownTvIe,
            WireError::BadIe(_) => DropReason::GtpcBadIe,
            WireError::TooManyExtensions => DropReason::GtpuTooManyExtensions,
            WireError::ZeroLengthExtension => DropReason::GtpuZeroLengthExtension,
            WireError::GtpPrime => DropReason::GtpPrime,
        }
    }
}

/// At most this many GTP extension headers are walked before the packet is refused.
pub const GTPU_EXT_HDRS_MAX: usize = 8;
/// At most this many IEs are walked in one message (a 64 KiB message of 3-byte IEs would be ~21k).
pub const IES_MAX: usize = 512;

pub(crate) fn need(layer: &'static str, data: &[u8], needed: usize) -> Result<(), WireError> {
    if data.len() < needed {
        Err(WireError::Truncated { layer, needed, have: data.len() })
    } else {
        Ok(())
    }
}

pub(crate) fn be_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]))
}

pub(crate) fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*data.get(at)?, *data.get(at + 1)?, *data.get(at + 2)?, *data.get(at + 3)?]))
}

/// An IPv4 or IPv6 address from 4 or 16 bytes (GSN Address, F-TEID, End User Address parts).
pub(crate) fn ip_from(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// An access point name: length-prefixed labels on the wire (TS 23.003 9.1), dotted text here.
/// Holds at most [`Apn::MAX`] bytes inline; longer names are refused as malformed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Apn {
    bytes: [u8; Apn::MAX],
    len: u8,
}

impl Apn {
    pub const MAX: usize = 100;

    /// Decodes the label form. Some equipment sends the APN as plain text; if the first length byte
    /// does not fit, the value is taken as text when it is printable.
    pub fn from_wire(value: &[u8]) -> Option<Apn> {
        if value.len() > Apn::MAX || value.is_empty() {
            return None;
        }
        let mut apn = Apn { bytes: [0; Apn::MAX], len: 0 };
        let mut at = 0usize;
        let mut out = 0usize;
        while at < value.len() {
            let label_len = usize::from(*value.get(at)?);
            let label = value.get(at + 1..at + 1 + label_len)?;
            if out > 0 {
                *apn.bytes.get_mut(out)? = b'.';
                out += 1;
            }
            for &byte in label {
                if !byte.is_ascii_graphic() {
                    return None;
                }
                *apn.bytes.get_mut(out)? = byte.to_ascii_lowercase();
                out += 1;
            }
            at += 1 + label_len;
        }
        apn.len = u8::try_from(out).ok()?;
        Some(apn)
    }

    /// From dotted text (an APN already decoded once).
    pub fn from_text(text: &str) -> Option<Apn> {
        if text.len() > Apn::MAX || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut apn = Apn { bytes: [0; Apn::MAX], len: u8::try_from(text.len()).ok()? };
        apn.bytes.get_mut(..text.len())?.copy_from_slice(text.as_bytes());
        Some(apn)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.bytes.get(..usize::from(self.len)).unwrap_or_default()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Apn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Apn({:?})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apn_labels() {
        // "internet.mnc001.mcc001.gprs" as labels
        let wire = b"\x08internet\x06mnc001\x06mcc001\x04gprs";
        assert_eq!(Apn::from_wire(wire).unwrap().as_str(), "internet.mnc001.mcc001.gprs");
        assert_eq!(Apn::from_wire(b"\x06eetest").unwrap().as_str(), "eetest");
        // A label length that runs past the value.
        assert!(Apn::from_wire(b"\x09eetest").is_none());
        assert!(Apn::from_wire(b"").is_none());
        assert!(Apn::from_wire(&[5u8; 101]).is_none());
    }

    #[test]
    fn ip_lengths() {
        assert_eq!(ip_from(&[10, 0, 0, 1]), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(ip_from(&[0; 16]), Some("::".parse().unwrap()));
        assert_eq!(ip_from(&[1, 2, 3]), None);
    }
}
