//! GTPv1 header (TS 29.060 6 / TS 29.281 5), shared by GTPv1-C and GTP-U, and the GTPv1-C information
//! elements the correlator reads (TS 29.060 7.7).
//!
//! ```text
//!  0        1        2        3        4 .. 7     8..9   10     11
//! |V|P|-|E|S|N| type | length (after byte 8) | TEID | seq | N-PDU | next ext |  (last 4 only if E|S|N)
//! ```
use super::location::Uli;
use super::{be_u16, be_u32, ip_from, Apn, Tbcd, WireError, GTPU_EXT_HDRS_MAX, IES_MAX};
use std::net::IpAddr;

/// Where the header's fields are (TS 29.060 6), in the manner of smoltcp's `mod field`.
mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const MESSAGE_TYPE: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const TEID: Range<usize> = 4..8;
    /// The end of the mandatory part; the length field counts the bytes after it.
    pub const MANDATORY_END: usize = 8;
    pub const SEQUENCE: Range<usize> = 8..10;
    pub const N_PDU: usize = 10;
    pub const NEXT_EXTENSION: usize = 11;
    /// The end of the optional part, there when any of E, S and PN is set.
    pub const OPTIONAL_END: usize = 12;
    pub const OPTIONAL_LEN: usize = OPTIONAL_END - MANDATORY_END;
}

/// The bits of the header's first byte.
mod flag {
    pub const VERSION_SHIFT: u8 = 5;
    /// PT: set for GTP, clear for GTP' (charging).
    pub const PROTOCOL_TYPE: u8 = 0x10;
    pub const EXTENSION: u8 = 0x04;
    pub const SEQUENCE: u8 = 0x02;
    pub const N_PDU: u8 = 0x01;
    pub const OPTIONAL: u8 = EXTENSION | SEQUENCE | N_PDU;
}

pub mod message {
    pub const ECHO_REQUEST: u8 = 1;
    pub const ECHO_RESPONSE: u8 = 2;
    pub const CREATE_PDP_REQUEST: u8 = 16;
    pub const CREATE_PDP_RESPONSE: u8 = 17;
    pub const UPDATE_PDP_REQUEST: u8 = 18;
    pub const UPDATE_PDP_RESPONSE: u8 = 19;
    pub const DELETE_PDP_REQUEST: u8 = 20;
    pub const DELETE_PDP_RESPONSE: u8 = 21;
    pub const ERROR_INDICATION: u8 = 26;
    pub const END_MARKER: u8 = 254;
    pub const G_PDU: u8 = 255;
}

/// A checked GTPv1 header and the message body it frames (extension headers skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub message_type: u8,
    pub teid: u32,
    pub sequence: Option<u16>,
    pub n_pdu: Option<u8>,
    /// Number of extension headers walked.
    pub extensions: u8,
    /// The bytes after the header and its extension headers, cut to the length field.
    pub body: &'a [u8],
    /// Bytes after this message in the same datagram (GTP allows none, but they are reported).
    pub trailing: usize,
}

impl<'a> Header<'a> {
    pub const FIXED_LEN: usize = field::MANDATORY_END;

    /// Parses a GTPv1 header (version 1, PT=1) and walks the extension header chain, bounded by
    /// [`GTPU_EXT_HDRS_MAX`].
    // Always inlined: every G-PDU comes through here, and as a call the `Result<Header>` went through memory
    // (callgrind, bench capture: 38 fewer instructions per frame with this and `gtpu::inner_packet` inlined).
    #[inline(always)]
    pub fn parse(data: &'a [u8]) -> Result<Header<'a>, WireError> {
        // The mandatory part at once, in `field`'s order: FLAGS, MESSAGE_TYPE, LENGTH, TEID.
        let Some(&[flags, message_type, length_high, length_low, t0, t1, t2, t3]) =
            data.first_chunk::<{ field::MANDATORY_END }>()
        else {
            return Err(WireError::Truncated { layer: "GTPv1 header", needed: Self::FIXED_LEN, have: data.len() });
        };
        if flags >> flag::VERSION_SHIFT != 1 {
            return Err(WireError::Version("GTPv1"));
        }
        if flags & flag::PROTOCOL_TYPE == 0 {
            return Err(WireError::GtpPrime);
        }
        let length = usize::from(u16::from_be_bytes([length_high, length_low]));
        let teid = u32::from_be_bytes([t0, t1, t2, t3]);
        let total = Self::FIXED_LEN + length;
        let message = data.get(..total).ok_or(WireError::Truncated {
            layer: "GTPv1 message",
            needed: total,
            have: data.len(),
        })?;
        let (mut sequence, mut n_pdu, mut extensions) = (None, None, 0u8);
        let mut at = Self::FIXED_LEN;
        if flags & flag::OPTIONAL != 0 {
            // In `field`'s order: SEQUENCE, N_PDU, NEXT_EXTENSION.
            let Some(&[s0, s1, n, next_type]) =
                message.get(field::MANDATORY_END..).and_then(|rest| rest.first_chunk::<{ field::OPTIONAL_LEN }>())
            else {
                return Err(WireError::Truncated {
                    layer: "GTPv1 optional fields",
                    needed: field::OPTIONAL_END,
                    have: message.len(),
                });
            };
            if flags & flag::SEQUENCE != 0 {
                sequence = Some(u16::from_be_bytes([s0, s1]));
            }
            if flags & flag::N_PDU != 0 {
                n_pdu = Some(n);
            }
            let mut next = if flags & flag::EXTENSION != 0 { next_type } else { 0 };
            at = field::OPTIONAL_END;
            while next != 0 {
                if usize::from(extensions) >= GTPU_EXT_HDRS_MAX {
                    return Err(WireError::TooManyExtensions);
                }
                let units = usize::from(*message.get(at).ok_or(WireError::Truncated {
                    layer: "GTP extension header",
                    needed: at + 1,
                    have: message.len(),
                })?);
                if units == 0 {
                    return Err(WireError::ZeroLengthExtension);
                }
                let end = at + units * 4;
                // The last octet of an extension header names the next one.
                next = *message.get(end - 1).ok_or(WireError::Truncated {
                    layer: "GTP extension header",
                    needed: end,
                    have: message.len(),
                })?;
                at = end;
                extensions += 1;
            }
        }
        Ok(Header {
            message_type,
            teid,
            sequence,
            n_pdu,
            extensions,
            body: message.get(at..).unwrap_or_default(),
            trailing: data.len() - total,
        })
    }
}

/// A GTPv1-C message with a sequence number (flags 0x32: version 1, PT 1, S 1; N-PDU and next extension
/// zero) around `ies`: the emit side of [`Header::parse`], for the capture generator, tests, benches and
/// fuzz targets. The length field saturates at its 16 bits.
pub fn message(message_type: u8, teid: u32, sequence: u16, ies: &[u8]) -> Vec<u8> {
    let length = u16::try_from(field::OPTIONAL_LEN + ies.len()).unwrap_or(u16::MAX);
    let mut m = vec![0u8; field::OPTIONAL_END];
    if let Some(header) = m.first_chunk_mut::<{ field::OPTIONAL_END }>() {
        header[field::FLAGS] = 1 << flag::VERSION_SHIFT | flag::PROTOCOL_TYPE | flag::SEQUENCE;
        header[field::MESSAGE_TYPE] = message_type;
        header[field::LENGTH].copy_from_slice(&length.to_be_bytes());
        header[field::TEID].copy_from_slice(&teid.to_be_bytes());
        header[field::SEQUENCE].copy_from_slice(&sequence.to_be_bytes());
        // PN and E clear: no N-PDU number, no extension header.
        header[field::N_PDU] = 0;
        header[field::NEXT_EXTENSION] = 0;
    }
    m.extend_from_slice(ies);
    m
}

/// Length of a TV information element's value, by type (TS 29.060 7.7); `None` for unknown types.
pub fn tv_value_len(ie_type: u8) -> Option<usize> {
    Some(match ie_type {
        1 => 1,   // Cause
        2 => 8,   // IMSI
        3 => 6,   // Routeing Area Identity
        4 => 4,   // TLLI
        5 => 4,   // P-TMSI
        8 => 1,   // Reordering Required
        9 => 28,  // Authentication Triplet
        11 => 1,  // MAP Cause
        12 => 3,  // P-TMSI Signature
        13 => 1,  // MS Validated
        14 => 1,  // Recovery
        15 => 1,  // Selection Mode
        16 => 4,  // TEID Data I
        17 => 4,  // TEID Control Plane
        18 => 5,  // TEID Data II
        19 => 1,  // Teardown Ind
        20 => 1,  // NSAPI
        21 => 1,  // RANAP Cause
        22 => 9,  // RAB Context
        23 => 1,  // Radio Priority SMS
        24 => 1,  // Radio Priority
        25 => 2,  // Packet Flow Id
        26 => 2,  // Charging Characteristics
        27 => 2,  // Trace Reference
        28 => 2,  // Trace Type
        29 => 1,  // MS Not Reachable Reason
        127 => 4, // Charging ID
        _ => return None,
    })
}

/// One information element: its type and value bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ie<'a> {
    pub ie_type: u8,
    pub value: &'a [u8],
}

/// Walks TV and TLV IEs. Yields an error (and then stops) on an unknown TV type or a truncated IE.
pub struct IeIter<'a> {
    data: &'a [u8],
    at: usize,
    walked: usize,
    tv_len: fn(u8) -> Option<usize>,
    done: bool,
}

impl<'a> IeIter<'a> {
    pub fn new(data: &'a [u8]) -> IeIter<'a> {
        IeIter::with_tv_table(data, tv_value_len)
    }

    pub(crate) fn with_tv_table(data: &'a [u8], tv_len: fn(u8) -> Option<usize>) -> IeIter<'a> {
        IeIter { data, at: 0, walked: 0, tv_len, done: false }
    }

    fn step(&mut self) -> Result<Ie<'a>, WireError> {
        let rest = self.data.get(self.at..).unwrap_or_default();
        let ie_type = *rest.first().ok_or(WireError::BadIe("GTPv1-C"))?;
        let (header_len, value_len) = if ie_type >= 128 {
            let len = be_u16(rest, 1).ok_or(WireError::TruncatedIe {
                layer: "GTPv1-C TLV IE",
                needed: 3,
                have: rest.len(),
            })?;
            (3, usize::from(len))
        } else {
            (1, (self.tv_len)(ie_type).ok_or(WireError::UnknownTv(ie_type))?)
        };
        let value = rest.get(header_len..header_len + value_len).ok_or(WireError::TruncatedIe {
            layer: "GTPv1-C IE",
            needed: header_len + value_len,
            have: rest.len(),
        })?;
        self.at += header_len + value_len;
        Ok(Ie { ie_type, value })
    }
}

impl<'a> Iterator for IeIter<'a> {
    type Item = Result<Ie<'a>, WireError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.data.len() {
            return None;
        }
        self.walked += 1;
        if self.walked > IES_MAX {
            self.done = true;
            return Some(Err(WireError::BadIe("GTPv1-C: too many IEs")));
        }
        let item = self.step();
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

/// The fields of a GTPv1-C Create/Update/Delete message that the session table needs. Every field is
/// optional on the wire; absent ones stay `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlFields {
    pub cause: Option<u8>,
    pub imsi: Option<Tbcd>,
    pub msisdn: Option<Tbcd>,
    pub imei: Option<Tbcd>,
    pub apn: Option<Apn>,
    pub nsapi: Option<u8>,
    /// The second NSAPI IE: a secondary context's Linked NSAPI (its primary).
    pub linked_nsapi: Option<u8>,
    pub teardown: bool,
    pub teid_data: Option<u32>,
    pub teid_control: Option<u32>,
    pub ue_ipv4: Option<std::net::Ipv4Addr>,
    pub ue_ipv6: Option<std::net::Ipv6Addr>,
    /// First GSN Address IE: the sender's control-plane address.
    pub gsn_control: Option<IpAddr>,
    /// Second GSN Address IE: the sender's user-plane address.
    pub gsn_user: Option<IpAddr>,
    /// RAT Type (7.7.50): 1 UTRAN, 2 GERAN, 3 WLAN, 4 GAN, 5 HSPA Evolution, 6 EUTRAN.
    pub rat_type: Option<u8>,
    /// User Location Information (7.7.51), with the Routeing Area Identity IE (7.7.3) as its RAI when
    /// the ULI has none.
    pub uli: Option<Uli>,
    /// Charging ID (7.7.26): the GGSN's, in a Create response.
    pub charging_id: Option<u32>,
}

impl ControlFields {
    /// Reads the IEs of one message body. A malformed IE fails the whole message: half a context
    /// would attribute traffic on partial information.
    pub fn parse(body: &[u8]) -> Result<ControlFields, WireError> {
        Self::parse_with(IeIter::new(body))
    }

    pub(crate) fn parse_with(ies: IeIter<'_>) -> Result<ControlFields, WireError> {
        let mut fields = ControlFields::default();
        let mut gsn_addresses = 0;
        let mut rai = None;
        for ie in ies {
            let Ie { ie_type, value } = ie?;
            match ie_type {
                1 => fields.cause = value.first().copied(),
                2 => fields.imsi = Tbcd::from_wire(value),
                3 => rai = Some(Uli::from_v1_rai(value)?),
                // GTPv0 carries 2-byte flow labels under the same types; they play the TEIDs' part.
                16 => fields.teid_data = be_u32(value, 0).or(be_u16(value, 0).map(u32::from)),
                17 => fields.teid_control = be_u32(value, 0).or(be_u16(value, 0).map(u32::from)),
                19 => fields.teardown = value.first().is_some_and(|b| b & 1 == 1),
                // NSAPI: low 4 bits. A second NSAPI IE is the Linked NSAPI of a secondary context.
                20 => {
                    let nsapi = value.first().map(|b| b & 0x0F);
                    if fields.nsapi.is_none() {
                        fields.nsapi = nsapi;
                    } else if fields.linked_nsapi.is_none() {
                        fields.linked_nsapi = nsapi;
                    }
                }
                128 => fields.read_end_user_address(value)?,
                131 => fields.apn = Some(Apn::from_wire(value).ok_or(WireError::BadIe("GTPv1-C APN"))?),
                133 => {
                    let address = ip_from(value).ok_or(WireError::BadIe("GTPv1-C GSN Address"))?;
                    match gsn_addresses {
                        0 => fields.gsn_control = Some(address),
                        1 => fields.gsn_user = Some(address),
                        _ => {}
                    }
                    gsn_addresses += 1;
                }
                // MSISDN: one octet of nature of address / numbering plan, then TBCD digits.
                127 => fields.charging_id = be_u32(value, 0),
                134 => fields.msisdn = value.get(1..).and_then(Tbcd::from_wire),
                151 => fields.rat_type = value.first().copied(),
                152 => fields.uli = Some(Uli::from_v1(value)?),
                154 => fields.imei = Tbcd::from_wire(value),
                _ => {}
            }
        }
        fields.uli = match fields.uli {
            Some(uli) => Some(uli.with_rai_from(rai)),
            None => rai,
        };
        Ok(fields)
    }

    /// End User Address (TS 29.060 7.7.27): spare/PDP type organisation, PDP type number, address.
    fn read_end_user_address(&mut self, value: &[u8]) -> Result<(), WireError> {
        let organisation = value.first().ok_or(WireError::BadIe("End User Address"))? & 0x0F;
        let number = *value.get(1).ok_or(WireError::BadIe("End User Address"))?;
        let address = value.get(2..).unwrap_or_default();
        if organisation != 1 {
            return Ok(()); // ETSI (PPP) or other: no IP address to learn
        }
        match (number, address.len()) {
            (0x21, 4) | (0x8D, 4) => self.ue_ipv4 = <[u8; 4]>::try_from(address).ok().map(Into::into),
            (0x57, 16) | (0x8D, 16) => self.ue_ipv6 = <[u8; 16]>::try_from(address).ok().map(Into::into),
            (0x8D, 20) => {
                self.ue_ipv4 = address.get(..4).and_then(|a| <[u8; 4]>::try_from(a).ok()).map(Into::into);
                self.ue_ipv6 = address.get(4..).and_then(|a| <[u8; 16]>::try_from(a).ok()).map(Into::into);
            }
            // No address yet (a request asking for dynamic allocation), or an unknown PDP type.
            (_, 0) => {}
            _ => return Err(WireError::BadIe("End User Address")),
        }
        Ok(())
    }
}

/// Whether a GTPv1 cause value means the request was accepted (TS 29.060 7.7.1: 128-191 acceptance).
pub fn cause_accepted(cause: u8) -> bool {
    (128..=191).contains(&cause)
}

/// Message fixtures the other parsers' and the engine's tests use.
#[cfg(test)]
pub(crate) use tests::{create_pdp_request, cut_inside, g_pdu_with_extensions, ie_ends};

#[cfg(test)]
mod tests {
    use super::*;

    /// The Create PDP Context Request of zeek's gtp_create_pdp_ctx.pcap (frame 2), GTP part, rebuilt field
    /// by field from the trace.
    pub(crate) fn create_pdp_request() -> Vec<u8> {
        let mut ies = Vec::new();
        ies.extend_from_slice(&[2, 0x64, 0x00, 0x40, 0x01, 0x00, 0x00, 0x01, 0xF1]); // IMSI 460004100000101
        ies.extend_from_slice(&[14, 0x05]); // Recovery
        ies.extend_from_slice(&[15, 0xFC]); // Selection mode
        ies.extend_from_slice(&[16, 0x32, 0xF0, 0x2B, 0xF9]); // TEID Data I
        ies.extend_from_slice(&[17, 0x32, 0xF0, 0x2B, 0xF9]); // TEID C-plane
        ies.extend_from_slice(&[20, 0x05]); // NSAPI 5
        ies.extend_from_slice(&[128, 0, 2, 0xF1, 0x21]); // End User Address: IPv4, dynamic
        ies.extend_from_slice(&[131, 0, 7, 6, b'e', b'e', b't', b'e', b's', b't']); // APN eetest
        ies.extend_from_slice(&[133, 0, 4, 192, 169, 100, 1]); // SGSN address for signalling
        ies.extend_from_slice(&[133, 0, 4, 192, 169, 100, 2]); // SGSN address for user traffic
        ies.extend_from_slice(&[134, 0, 8, 0x91, 0x68, 0x51, 0x22, 0x01, 0x00, 0x01, 0xF1]); // MSISDN
        let mut message = vec![0x32, 16];
        message.extend_from_slice(&((ies.len() + 4) as u16).to_be_bytes());
        message.extend_from_slice(&[0, 0, 0, 0]); // TEID 0: no context yet
        message.extend_from_slice(&[0x13, 0x0B, 0, 0]); // sequence 0x130b
        message.extend_from_slice(&ies);
        message
    }

    /// parse(emit(x)) == x for the GTPv1-C header.
    #[test]
    fn emitted_messages_parse_back() {
        let ies = [14u8, 0x05, 17, 0, 0, 0, 7];
        let bytes = message(16, 0x0102_0304, 0xBEEF, &ies);
        let header = Header::parse(&bytes).unwrap();
        assert_eq!((header.message_type, header.teid, header.sequence), (16, 0x0102_0304, Some(0xBEEF)));
        assert_eq!((header.body, header.trailing, header.extensions), (&ies[..], 0, 0));
    }

    #[test]
    fn create_pdp_request_fields() {
        let data = create_pdp_request();
        let header = Header::parse(&data).unwrap();
        assert_eq!(header.message_type, message::CREATE_PDP_REQUEST);
        assert_eq!(header.sequence, Some(0x130B));
        let fields = ControlFields::parse(header.body).unwrap();
        assert_eq!(fields.imsi.unwrap().to_string(), "460004100000101");
        assert_eq!(fields.msisdn.unwrap().to_string(), "8615221000101");
        assert_eq!(fields.apn.unwrap().as_str(), "eetest");
        assert_eq!(fields.teid_data, Some(0x32F0_2BF9));
        assert_eq!(fields.nsapi, Some(5));
        assert_eq!(fields.gsn_user, Some("192.169.100.2".parse().unwrap()));
        assert_eq!(fields.ue_ipv4, None);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let data = create_pdp_request();
        for cut in 0..data.len() {
            let result = Header::parse(&data[..cut]).and_then(|h| ControlFields::parse(h.body));
            assert!(result.is_err(), "cut at {cut} parsed");
        }
    }

    /// `data` cut to `cut` bytes with its length field (at bytes 2..4, counting from byte `counted_from`)
    /// saying so: the header checks pass, and the IE walk meets the cut.
    pub(crate) fn cut_inside(data: &[u8], cut: usize, counted_from: usize) -> Vec<u8> {
        let mut message = data[..cut].to_vec();
        message[2..4].copy_from_slice(&((cut - counted_from) as u16).to_be_bytes());
        message
    }

    /// Where each IE of a GTPv1/v0 body ends, from `start` (the body's offset in the message).
    pub(crate) fn ie_ends(ies: IeIter<'_>, start: usize) -> Vec<usize> {
        let mut at = start;
        let mut ends = vec![start];
        for ie in ies {
            let ie = ie.unwrap();
            at += if ie.ie_type >= 128 { 3 } else { 1 } + ie.value.len();
            ends.push(at);
        }
        ends
    }

    /// A message whose length field is true to a cut inside its IEs: the walk fails at the cut IE with
    /// `TruncatedIe` (counted as `gtpc-ie-truncated`), and a cut between IEs reads the IEs before it.
    #[test]
    fn truncation_inside_the_ie_walk() {
        let data = create_pdp_request();
        let ends = ie_ends(IeIter::new(&data[12..]), 12);
        assert_eq!((ends.len(), ends.last()), (12, Some(&data.len())), "11 IEs walked to the end");
        let mut cut_inside_an_ie = 0;
        for cut in 12..data.len() {
            let message = cut_inside(&data, cut, 8);
            let header = Header::parse(&message).unwrap();
            assert_eq!(header.body.len(), cut - 12);
            let result = ControlFields::parse(header.body);
            if ends.contains(&cut) {
                let fields = result.unwrap_or_else(|e| panic!("cut {cut} between IEs: {e}"));
                assert_eq!(fields.imsi.is_some(), cut > 12, "cut {cut}");
            } else {
                cut_inside_an_ie += 1;
                match result {
                    Err(error @ WireError::TruncatedIe { .. }) => {
                        assert_eq!(error.reason().name(), "gtpc-ie-truncated")
                    }
                    other => panic!("cut {cut} inside an IE: {other:?}"),
                }
            }
        }
        assert_eq!(cut_inside_an_ie, data.len() - 12 - 11);
    }

    #[test]
    fn unknown_tv_stops_the_message() {
        let body = [14, 0x05, 100, 1, 2, 3];
        assert_eq!(ControlFields::parse(&body), Err(WireError::UnknownTv(100)));
    }

    #[test]
    fn end_user_address_kinds() {
        let v4 = ControlFields::parse(&[128, 0, 6, 0xF1, 0x21, 10, 0, 0, 7]).unwrap();
        assert_eq!(v4.ue_ipv4, Some("10.0.0.7".parse().unwrap()));
        let mut dual = vec![128, 0, 22, 0xF1, 0x8D, 10, 0, 0, 8];
        dual.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let dual = ControlFields::parse(&dual).unwrap();
        assert_eq!(dual.ue_ipv4, Some("10.0.0.8".parse().unwrap()));
        assert_eq!(dual.ue_ipv6, Some("2001:db8::1".parse().unwrap()));
        assert!(ControlFields::parse(&[128, 0, 5, 0xF1, 0x21, 10, 0, 0]).is_err());
    }

    #[test]
    fn extension_headers_are_walked_and_bounded() {
        // G-PDU, E flag, one PDU session container (type 0x85, 1 unit), then the payload "xy".
        let mut data = vec![0x34, 0xFF, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0x85, 1, 0x10, 0x09, 0x00, b'x', b'y'];
        let header = Header::parse(&data).unwrap();
        assert_eq!((header.extensions, header.body), (1, &b"xy"[..]));
        data[15] = 0x85; // the extension now claims another one follows, which runs past the end
        assert!(Header::parse(&data).is_err());
        let mut zero = data.clone();
        zero[12] = 0;
        assert_eq!(Header::parse(&zero), Err(WireError::ZeroLengthExtension));
    }

    /// A G-PDU whose extension headers each name another: eight are walked, a ninth is refused.
    pub(crate) fn g_pdu_with_extensions(count: usize) -> Vec<u8> {
        let mut data = vec![0x34, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0x85];
        for i in 0..count {
            let next = if i + 1 == count { 0 } else { 0x85 };
            data.extend_from_slice(&[1, 0x10, 0x09, next]);
        }
        data.extend_from_slice(b"xy");
        let length = (data.len() - 8) as u16;
        data[2..4].copy_from_slice(&length.to_be_bytes());
        data
    }

    #[test]
    fn the_extension_chain_is_capped() {
        let eight = g_pdu_with_extensions(GTPU_EXT_HDRS_MAX);
        let most = Header::parse(&eight).unwrap();
        assert_eq!((usize::from(most.extensions), most.body), (GTPU_EXT_HDRS_MAX, &b"xy"[..]));
        let error = Header::parse(&g_pdu_with_extensions(GTPU_EXT_HDRS_MAX + 1)).unwrap_err();
        assert_eq!((error, error.reason().name()), (WireError::TooManyExtensions, "gtpu-too-many-extensions"));
        // An endless chain: 4,000 headers that each name another, in one 16 KB message.
        assert_eq!(Header::parse(&g_pdu_with_extensions(4000)), Err(WireError::TooManyExtensions));
    }

    #[test]
    fn version_and_prime_are_refused() {
        assert_eq!(Header::parse(&[0x48, 1, 0, 0, 0, 0, 0, 0]), Err(WireError::Version("GTPv1")));
        assert_eq!(Header::parse(&[0x20, 1, 0, 0, 0, 0, 0, 0]), Err(WireError::GtpPrime));
    }
}
