//! GTPv0 (GSM 09.60), still seen on old Gn links: a 20-byte header whose Tunnel Identifier (TID) carries
//! the IMSI (15 TBCD digits) and the NSAPI (the 16th nibble) of the context, so every message names its
//! subscriber. IEs have the GTPv1 shape with a few TV lengths of their own.
//!
//! ```text
//!  0      1     2..3    4..5  6..7        8       9..11  12..19
//! |0|1|111|S| type | length | seq | flow label | N-PDU | spare | TID (IMSI + NSAPI) |
//! ```
use super::gtpv1::{ControlFields, IeIter};
use super::{be_u16, need, Tbcd, WireError};

pub const HEADER_LEN: usize = field::TID.end;

/// Where the header's fields are (GSM 09.60 6), in the manner of smoltcp's `mod field`.
mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const MESSAGE_TYPE: usize = 1;
    /// Counts the bytes after the 20-byte header.
    pub const LENGTH: Range<usize> = 2..4;
    pub const SEQUENCE: Range<usize> = 4..6;
    pub const FLOW_LABEL: Range<usize> = 6..8;
    pub const TID: Range<usize> = 12..20;
}

/// The bits of the header's first byte.
mod flag {
    pub const VERSION_SHIFT: u8 = 5;
    /// PT: set for GTP, clear for GTP' (charging).
    pub const PROTOCOL_TYPE: u8 = 0x10;
}

/// A checked GTPv0 header and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub message_type: u8,
    pub sequence: u16,
    pub flow_label: u16,
    /// The TID as on the wire: IMSI digits and NSAPI in the last nibble.
    pub tid: [u8; 8],
    pub body: &'a [u8],
}

impl<'a> Header<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Header<'a>, WireError> {
        need("GTPv0 header", data, HEADER_LEN)?;
        let field16 = |at: std::ops::Range<usize>| be_u16(data, at.start).unwrap_or(0);
        let (length, sequence, flow_label) =
            (usize::from(field16(field::LENGTH)), field16(field::SEQUENCE), field16(field::FLOW_LABEL));
        #[allow(clippy::indexing_slicing)] // checked: data.len() >= HEADER_LEN
        let (flags, message_type) = (data[field::FLAGS], data[field::MESSAGE_TYPE]);
        if flags >> flag::VERSION_SHIFT != 0 {
            return Err(WireError::Version("GTPv0"));
        }
        if flags & flag::PROTOCOL_TYPE == 0 {
            return Err(WireError::GtpPrime);
        }
        need("GTPv0 message", data, HEADER_LEN + length)?;
        let mut tid = [0u8; 8];
        tid.copy_from_slice(data.get(field::TID).unwrap_or(&[0; 8]));
        let body = data.get(HEADER_LEN..HEADER_LEN + length).unwrap_or_default();
        Ok(Header { message_type, sequence, flow_label, tid, body })
    }

    /// The subscriber's IMSI from the TID (the first 15 digits).
    pub fn imsi(&self) -> Tbcd {
        let mut packed = self.tid;
        if let Some(last) = packed.last_mut() {
            *last |= 0xF0; // the 16th nibble is the NSAPI, not a digit of the IMSI
        }
        Tbcd::from_wire(&packed).unwrap_or(Tbcd::EMPTY)
    }

    /// The NSAPI from the TID's last nibble.
    pub fn nsapi(&self) -> u8 {
        self.tid[7] >> 4
    }

    /// The TID as one number (a key for G-PDU attribution).
    pub fn tid_key(&self) -> u64 {
        u64::from_be_bytes(self.tid)
    }
}

/// TV lengths that GTPv0 defines differently from GTPv1 (GSM 09.60 7.9), else GTPv1's.
fn tv_value_len_v0(ie_type: u8) -> Option<usize> {
    match ie_type {
        6 => Some(3),  // Quality of Service Profile
        16 => Some(2), // Flow Label Data I
        17 => Some(2), // Flow Label Signalling
        18 => Some(3), // Flow Label Data II
        _ => super::gtpv1::tv_value_len(ie_type),
    }
}

/// Reads a GTPv0 message body with GTPv0's TV table.
pub fn control_fields(body: &[u8]) -> Result<ControlFields, WireError> {
    ControlFields::parse_with(IeIter::with_tv_table(body, tv_value_len_v0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_pdp_request_v0() {
        // Modelled on zeek's gtp_control_prime.pcap frame 5: TID 2400101234567890, MSISDN 46702123456.
        let mut data = vec![0x1E, 0x10, 0, 0, 0x10, 0x01, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        data.extend_from_slice(&[0x42, 0x00, 0x01, 0x21, 0x43, 0x65, 0x87, 0x09]);
        let ies = [
            &[6u8, 1, 2, 3][..], // QoS profile (v0: 3 bytes)
            &[16, 0, 1],         // Flow label data I (v0: 2 bytes)
            &[131, 0, 9, 8, b'i', b'n', b't', b'e', b'r', b'n', b'e', b't'],
            &[134, 0, 7, 0x91, 0x64, 0x07, 0x12, 0x32, 0x54, 0xF6],
        ]
        .concat();
        data[2..4].copy_from_slice(&(ies.len() as u16).to_be_bytes());
        data.extend_from_slice(&ies);
        let header = Header::parse(&data).unwrap();
        assert_eq!(header.imsi().to_string(), "240010123456789");
        assert_eq!(header.nsapi(), 0);
        let fields = control_fields(header.body).unwrap();
        assert_eq!(fields.msisdn.unwrap().to_string(), "46702123456");
        assert_eq!(fields.apn.unwrap().as_str(), "internet");
        // Read with GTPv1's TV table the same bytes are misframed: the v0 table matters.
        assert!(ControlFields::parse(header.body).is_err());
        for cut in 0..data.len() {
            assert!(Header::parse(&data[..cut]).is_err());
        }
        // The length field true to a cut: a cut inside an IE is `TruncatedIe`, one between IEs reads.
        use crate::wire::gtpv1::{cut_inside, ie_ends};
        let ends = ie_ends(IeIter::with_tv_table(&data[HEADER_LEN..], tv_value_len_v0), HEADER_LEN);
        assert_eq!(ends.last(), Some(&data.len()));
        for cut in HEADER_LEN..data.len() {
            let message = cut_inside(&data, cut, HEADER_LEN);
            let result = control_fields(Header::parse(&message).unwrap().body);
            match result {
                Ok(_) => assert!(ends.contains(&cut), "cut {cut} inside an IE parsed"),
                Err(WireError::TruncatedIe { .. }) => assert!(!ends.contains(&cut), "cut {cut} between IEs failed"),
                Err(other) => panic!("cut {cut}: {other:?}"),
            }
        }
    }
}
