//! GTPv2-C (TS 29.274): header and the IEs of Create Session, Modify Bearer and Delete Session.
//!
//! ```text
//!  0          1      2..3     4..7 (if T)   then 3-byte sequence, 1 spare
//! |V=2|P|T|MP| type | length | TEID        | seq | spare |
//! IE: type(1) length(2) spare|instance(1) value(length); Bearer Context (93) is grouped (IEs inside).
//! ```
//! A piggybacked message (P flag) follows its carrier in the same datagram; [`Header::parse`] reports
//! the carrier and where the next message starts.
use super::location::Uli;
use super::{be_u16, be_u32, need, Apn, Tbcd, WireError, IES_MAX};
use std::net::IpAddr;

/// Where the header's fields are (TS 29.274 5.1), in the manner of smoltcp's `mod field`. The TEID is
/// there only with the T flag; the sequence number follows it, or the length field without it.
mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const MESSAGE_TYPE: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    /// The length field counts the bytes after it.
    pub const LENGTH_END: usize = 4;
    pub const TEID: Range<usize> = 4..8;
    /// The sequence number takes 3 bytes, then one spare.
    pub const SEQUENCE_LEN: usize = 3;
    pub const HEADER_LEN: usize = 8;
    pub const HEADER_WITH_TEID_LEN: usize = 12;
}

/// The bits of the header's first byte.
mod flag {
    pub const VERSION_SHIFT: u8 = 5;
    /// P: a piggybacked message follows this one.
    pub const PIGGYBACK: u8 = 0x10;
    /// T: the header carries a TEID.
    pub const TEID: u8 = 0x08;
}

/// An IE's fields (TS 29.274 8.2).
mod ie_field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const LENGTH: Range<usize> = 1..3;
    /// Spare bits (high nibble) and the instance (low nibble).
    pub const INSTANCE: usize = 3;
    pub const INSTANCE_MASK: u8 = 0x0F;
    pub const VALUE: usize = 4;
}

pub mod message {
    pub const ECHO_REQUEST: u8 = 1;
    pub const ECHO_RESPONSE: u8 = 2;
    pub const CREATE_SESSION_REQUEST: u8 = 32;
    pub const CREATE_SESSION_RESPONSE: u8 = 33;
    pub const MODIFY_BEARER_REQUEST: u8 = 34;
    pub const MODIFY_BEARER_RESPONSE: u8 = 35;
    pub const DELETE_SESSION_REQUEST: u8 = 36;
    pub const DELETE_SESSION_RESPONSE: u8 = 37;
}

mod ie {
    pub const IMSI: u8 = 1;
    pub const CAUSE: u8 = 2;
    pub const APN: u8 = 71;
    pub const EBI: u8 = 73;
    pub const MEI: u8 = 75;
    pub const MSISDN: u8 = 76;
    pub const PAA: u8 = 79;
    pub const RAT_TYPE: u8 = 82;
    pub const ULI: u8 = 86;
    pub const F_TEID: u8 = 87;
    pub const BEARER_CONTEXT: u8 = 93;
    pub const CHARGING_ID: u8 = 94;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub message_type: u8,
    pub teid: Option<u32>,
    pub sequence: u32,
    pub body: &'a [u8],
    /// The rest of the datagram after this message (a piggybacked message when the P flag is set).
    pub next: &'a [u8],
    pub piggybacked: bool,
}

impl<'a> Header<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Header<'a>, WireError> {
        need("GTPv2-C header", data, field::HEADER_LEN)?;
        #[allow(clippy::indexing_slicing)] // checked: data.len() >= HEADER_LEN
        let (flags, message_type) = (data[field::FLAGS], data[field::MESSAGE_TYPE]);
        let length = usize::from(be_u16(data, field::LENGTH.start).unwrap_or(0));
        if flags >> flag::VERSION_SHIFT != 2 {
            return Err(WireError::Version("GTPv2-C"));
        }
        let has_teid = flags & flag::TEID != 0;
        let total = field::LENGTH_END + length;
        let header_len = if has_teid { field::HEADER_WITH_TEID_LEN } else { field::HEADER_LEN };
        if total < header_len {
            return Err(WireError::Truncated { layer: "GTPv2-C length field", needed: header_len, have: total });
        }
        need("GTPv2-C message", data, total)?;
        let teid = if has_teid { be_u32(data, field::TEID.start) } else { None };
        let seq_at = if has_teid { field::TEID.end } else { field::LENGTH_END };
        let sequence = match data.get(seq_at..seq_at + field::SEQUENCE_LEN) {
            Some(&[s1, s2, s3]) => u32::from_be_bytes([0, s1, s2, s3]),
            _ => 0, // not reached: total >= header_len = seq_at + 4
        };
        Ok(Header {
            message_type,
            teid,
            sequence,
            body: data.get(header_len..total).unwrap_or_default(),
            next: data.get(total..).unwrap_or_default(),
            piggybacked: flags & flag::PIGGYBACK != 0,
        })
    }
}

/// A GTPv2-C message (no piggybacking) around `ies`, with a TEID when `teid` is `Some` (the T flag):
/// the emit side of [`Header::parse`], for the capture generator, tests, benches and fuzz targets. The
/// sequence number keeps its low 24 bits; the length field saturates at its 16 bits.
pub fn message(message_type: u8, teid: Option<u32>, sequence: u32, ies: &[u8]) -> Vec<u8> {
    let header_len = if teid.is_some() { field::HEADER_WITH_TEID_LEN } else { field::HEADER_LEN };
    let length = u16::try_from(header_len - field::LENGTH_END + ies.len()).unwrap_or(u16::MAX);
    let mut m = Vec::with_capacity(header_len + ies.len());
    let t_flag = if teid.is_some() { flag::TEID } else { 0 };
    m.extend_from_slice(&[2 << flag::VERSION_SHIFT | t_flag, message_type]);
    m.extend_from_slice(&length.to_be_bytes());
    if let Some(teid) = teid {
        m.extend_from_slice(&teid.to_be_bytes());
    }
    let [_, s1, s2, s3] = sequence.to_be_bytes();
    m.extend_from_slice(&[s1, s2, s3, 0]);
    m.extend_from_slice(ies);
    m
}

/// One IE: type, length, instance (the spare bits zero), value: the emit side of [`IeIter`]. The length
/// field saturates at its 16 bits.
pub fn ie(ie_type: u8, instance: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ie_field::VALUE + value.len());
    out.push(ie_type);
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.push(instance & ie_field::INSTANCE_MASK);
    out.extend_from_slice(value);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ie<'a> {
    pub ie_type: u8,
    pub instance: u8,
    pub value: &'a [u8],
}

/// Walks one level of IEs; stops with an error on a truncated IE.
pub struct IeIter<'a> {
    data: &'a [u8],
    at: usize,
    walked: usize,
    done: bool,
}

impl<'a> IeIter<'a> {
    pub fn new(data: &'a [u8]) -> IeIter<'a> {
        IeIter { data, at: 0, walked: 0, done: false }
    }
}

impl<'a> Iterator for IeIter<'a> {
    type Item = Result<Ie<'a>, WireError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at >= self.data.len() {
            return None;
        }
        self.walked += 1;
        let rest = self.data.get(self.at..).unwrap_or_default();
        let item = match (rest.get(ie_field::TYPE), be_u16(rest, ie_field::LENGTH.start), rest.get(ie_field::INSTANCE))
        {
            _ if self.walked > IES_MAX => Err(WireError::BadIe("GTPv2-C: too many IEs")),
            (Some(&ie_type), Some(len), Some(&spare_instance)) => {
                let end = ie_field::VALUE + usize::from(len);
                match rest.get(ie_field::VALUE..end) {
                    Some(value) => {
                        self.at += end;
                        Ok(Ie { ie_type, instance: spare_instance & ie_field::INSTANCE_MASK, value })
                    }
                    None => Err(WireError::TruncatedIe { layer: "GTPv2-C IE", needed: end, have: rest.len() }),
                }
            }
            _ => Err(WireError::TruncatedIe { layer: "GTPv2-C IE header", needed: ie_field::VALUE, have: rest.len() }),
        };
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

/// A Fully Qualified TEID (TS 29.274 8.22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FTeid {
    pub interface_type: u8,
    pub teid: u32,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

impl FTeid {
    pub fn parse(value: &[u8]) -> Result<FTeid, WireError> {
        let bad = WireError::BadIe("GTPv2-C F-TEID");
        let flags = *value.first().ok_or(bad)?;
        let teid = be_u32(value, 1).ok_or(bad)?;
        let mut at = 5;
        let mut fteid = FTeid { interface_type: flags & 0x3F, teid, ipv4: None, ipv6: None };
        if flags & 0x80 != 0 {
            fteid.ipv4 = value.get(at..at + 4).and_then(|a| <[u8; 4]>::try_from(a).ok()).map(Into::into);
            fteid.ipv4.ok_or(bad)?;
            at += 4;
        }
        if flags & 0x40 != 0 {
            fteid.ipv6 = value.get(at..at + 16).and_then(|a| <[u8; 16]>::try_from(a).ok()).map(Into::into);
            fteid.ipv6.ok_or(bad)?;
        }
        Ok(fteid)
    }

    /// The address, IPv4 preferred.
    pub fn address(&self) -> Option<IpAddr> {
        self.ipv4.map(IpAddr::V4).or(self.ipv6.map(IpAddr::V6))
    }

    /// Whether this F-TEID receives uplink user traffic (the network side of a GTP-U tunnel):
    /// S1-U SGW (1), S12 SGW (3), S5/S8 PGW (5), S4 SGW (16).
    pub fn is_uplink_receiver(&self) -> bool {
        matches!(self.interface_type, 1 | 3 | 5 | 16)
    }

    /// Whether this F-TEID receives downlink user traffic (the access side): S1-U eNodeB (0), S12 RNC (2),
    /// S5/S8 SGW (4), S4 SGSN (15).
    pub fn is_downlink_receiver(&self) -> bool {
        matches!(self.interface_type, 0 | 2 | 4 | 15)
    }
}

/// Bearer F-TEIDs kept from one message (bounded; more are counted as ignored).
pub const BEARER_FTEIDS_MAX: usize = 4;

/// The fields of a Create Session / Modify Bearer / Delete Session message that the session table needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlFields {
    pub cause: Option<u8>,
    pub imsi: Option<Tbcd>,
    pub msisdn: Option<Tbcd>,
    pub mei: Option<Tbcd>,
    pub apn: Option<Apn>,
    pub ue_ipv4: Option<std::net::Ipv4Addr>,
    pub ue_ipv6: Option<std::net::Ipv6Addr>,
    /// The sender's control-plane F-TEID: the top-level F-TEID of instance 0 (TS 29.274), or, when a
    /// message has none (some PGWs send only instance 1, "PGW S5/S8 F-TEID for control plane"), the first
    /// top-level F-TEID.
    pub sender_control: Option<FTeid>,
    /// The EBI of the first bearer context (the default bearer of a Create Session).
    pub ebi: Option<u8>,
    /// User-plane F-TEIDs found in bearer contexts.
    pub bearer_fteids: [Option<FTeid>; BEARER_FTEIDS_MAX],
    /// RAT Type (8.17): 1 UTRAN, 2 GERAN, 3 WLAN, 4 GAN, 5 HSPA Evolution, 6 EUTRAN, 10 NR ...
    pub rat_type: Option<u8>,
    /// User Location Information (8.21).
    pub uli: Option<Uli>,
    /// Charging ID (8.30): the PGW's, top level or in the first bearer context that has one.
    pub charging_id: Option<u32>,
}

impl ControlFields {
    pub fn parse(body: &[u8]) -> Result<ControlFields, WireError> {
        let mut fields = ControlFields::default();
        for ie in IeIter::new(body) {
            let ie = ie?;
            match (ie.ie_type, ie.instance) {
                (ie::IMSI, _) => fields.imsi = Tbcd::from_wire(ie.value),
                (ie::CAUSE, _) => fields.cause = ie.value.first().copied(),
                (ie::APN, _) => fields.apn = Some(Apn::from_wire(ie.value).ok_or(WireError::BadIe("GTPv2-C APN"))?),
                (ie::MEI, _) => fields.mei = Tbcd::from_wire(ie.value),
                (ie::MSISDN, _) => fields.msisdn = Tbcd::from_wire(ie.value),
                (ie::PAA, _) => fields.read_paa(ie.value)?,
                (ie::RAT_TYPE, _) => fields.rat_type = ie.value.first().copied(),
                (ie::ULI, _) => fields.uli = Some(Uli::from_v2(ie.value)?),
                (ie::CHARGING_ID, _) => fields.charging_id = fields.charging_id.or(be_u32(ie.value, 0)),
                (ie::F_TEID, instance) => {
                    let fteid = FTeid::parse(ie.value)?;
                    if instance == 0 || fields.sender_control.is_none() {
                        fields.sender_control = Some(fteid);
                    }
                }
                (ie::BEARER_CONTEXT, _) => fields.read_bearer_context(ie.value)?,
                _ => {}
            }
        }
        Ok(fields)
    }

    /// PDN Address Allocation (TS 29.274 8.14): PDN type, then IPv6 prefix length + address and/or IPv4.
    fn read_paa(&mut self, value: &[u8]) -> Result<(), WireError> {
        let bad = WireError::BadIe("GTPv2-C PAA");
        let pdn_type = value.first().ok_or(bad)? & 0x07;
        let v4 = |at: usize| value.get(at..at + 4).and_then(|a| <[u8; 4]>::try_from(a).ok()).map(Into::into);
        let v6 = value.get(2..18).and_then(|a| <[u8; 16]>::try_from(a).ok()).map(Into::into);
        match pdn_type {
            1 => self.ue_ipv4 = Some(v4(1).ok_or(bad)?),
            2 => self.ue_ipv6 = Some(v6.ok_or(bad)?),
            3 => {
                self.ue_ipv6 = Some(v6.ok_or(bad)?);
                self.ue_ipv4 = Some(v4(18).ok_or(bad)?);
            }
            _ => {} // non-IP PDN: nothing to learn
        }
        // 0.0.0.0 in a request means "allocate one": it is not an address.
        if self.ue_ipv4.is_some_and(|a| a.is_unspecified()) {
            self.ue_ipv4 = None;
        }
        if self.ue_ipv6.is_some_and(|a| a.is_unspecified()) {
            self.ue_ipv6 = None;
        }
        Ok(())
    }

    fn read_bearer_context(&mut self, value: &[u8]) -> Result<(), WireError> {
        let mut first_ebi = None;
        for ie in IeIter::new(value) {
            let ie = ie?;
            match ie.ie_type {
                ie::EBI => first_ebi = first_ebi.or(ie.value.first().map(|b| b & 0x0F)),
                ie::CHARGING_ID => self.charging_id = self.charging_id.or(be_u32(ie.value, 0)),
                ie::F_TEID => {
                    let fteid = FTeid::parse(ie.value)?;
                    if let Some(slot) = self.bearer_fteids.iter_mut().find(|s| s.is_none()) {
                        *slot = Some(fteid);
                    }
                }
                _ => {}
            }
        }
        if self.ebi.is_none() {
            self.ebi = first_ebi;
        }
        Ok(())
    }

    /// The user-plane F-TEID receiving uplink (network side), if the message carried one.
    pub fn uplink_fteid(&self) -> Option<FTeid> {
        self.bearer_fteids.iter().flatten().copied().find(FTeid::is_uplink_receiver)
    }

    /// The user-plane F-TEID receiving downlink (access side), if the message carried one.
    pub fn downlink_fteid(&self) -> Option<FTeid> {
        self.bearer_fteids.iter().flatten().copied().find(FTeid::is_downlink_receiver)
    }
}

/// Whether a GTPv2 cause means accepted (TS 29.274 8.4: 16 accepted, 17-19 partially accepted...).
pub fn cause_accepted(cause: u8) -> bool {
    (16..=63).contains(&cause)
}

/// A Create Session Request fixture the engine's tests use.
#[cfg(test)]
pub(crate) use tests::create_session_request;

#[cfg(test)]
mod tests {
    use super::*;

    /// parse(emit(x)) == x: the header with and without a TEID, and every IE of a message.
    #[test]
    fn emitted_messages_parse_back() {
        let ies = [ie(1, 0, &[0x89, 0x67, 0x45]), ie(87, 1, &[0x86, 0, 0, 0, 9, 10, 0, 0, 1]), ie(3, 0, &[])].concat();
        for teid in [None, Some(0xDEAD_BEEF)] {
            let bytes = message(33, teid, 0x00AB_CDEF, &ies);
            let header = Header::parse(&bytes).unwrap();
            assert_eq!((header.message_type, header.teid, header.sequence), (33, teid, 0x00AB_CDEF));
            assert_eq!((header.body, header.next.len(), header.piggybacked), (&ies[..], 0, false));
            let walked: Vec<(u8, u8, Vec<u8>)> = IeIter::new(header.body)
                .map(|i| i.unwrap())
                .map(|i| (i.ie_type, i.instance, i.value.to_vec()))
                .collect();
            assert_eq!(
                walked,
                [(1, 0, vec![0x89, 0x67, 0x45]), (87, 1, vec![0x86, 0, 0, 0, 9, 10, 0, 0, 1]), (3, 0, vec![])]
            );
        }
    }

    /// A Create Session Request shaped like nDPI's gtp_c.pcap frame 1.
    pub(crate) fn create_session_request() -> Vec<u8> {
        let bearer = [ie(73, 0, &[5]), ie(87, 0, &[0x84, 0x35, 0x52, 0x92, 0x05, 10, 101, 0, 2])].concat();
        let body = [
            ie(1, 0, &[0x89, 0x67, 0x45, 0x11, 0x22, 0x33, 0x44, 0xF5]), // IMSI 987654112233445
            ie(76, 0, &[0x98, 0x76, 0x54, 0x12, 0x34, 0x56]),            // MSISDN 896745214365
            ie(75, 0, &[0x34, 0x56, 0x78, 0x90, 0x12, 0x01, 0x02, 0xF3]), // MEI
            ie(87, 0, &[0x86, 0x35, 0x52, 0x92, 0x04, 10, 101, 0, 2]),   // sender F-TEID (S5/S8 SGW GTP-C)
            ie(71, 0, b"\x08internet"),
            ie(79, 0, &[1, 33, 23, 23, 1]),
            ie(93, 0, &bearer),
        ]
        .concat();
        message(32, Some(0), 0x4B5462, &body)
    }

    #[test]
    fn create_session_request_fields() {
        let data = create_session_request();
        let header = Header::parse(&data).unwrap();
        assert_eq!((header.message_type, header.teid, header.sequence), (32, Some(0), 0x4B5462));
        let fields = ControlFields::parse(header.body).unwrap();
        assert_eq!(fields.imsi.unwrap().to_string(), "987654112233445");
        assert_eq!(fields.msisdn.unwrap().to_string(), "896745214365");
        assert_eq!(fields.mei.unwrap().to_string(), "436587092110203");
        assert_eq!(fields.apn.unwrap().as_str(), "internet");
        assert_eq!(fields.ue_ipv4, Some("33.23.23.1".parse().unwrap()));
        assert_eq!(fields.sender_control.unwrap().teid, 0x3552_9204);
        assert_eq!(fields.ebi, Some(5));
        let down = fields.downlink_fteid().unwrap();
        assert_eq!((down.interface_type, down.teid), (4, 0x3552_9205));
        assert!(fields.uplink_fteid().is_none());
    }

    #[test]
    fn truncations_fail_cleanly() {
        let data = create_session_request();
        for cut in 0..data.len() {
            assert!(Header::parse(&data[..cut]).and_then(|h| ControlFields::parse(h.body)).is_err(), "cut {cut}");
        }
    }

    /// A Create Session Request whose length field is true to a cut inside its IEs (grouped ones
    /// included): the walk fails with `TruncatedIe` (`gtpc-ie-truncated`); a cut between top-level IEs
    /// reads the ones before it.
    #[test]
    fn truncation_inside_the_ie_walk() {
        let data = create_session_request();
        let mut ends = vec![12];
        for ie in IeIter::new(&data[12..]) {
            ends.push(ends.last().unwrap() + 4 + ie.unwrap().value.len());
        }
        assert_eq!(ends.last(), Some(&data.len()));
        let mut cut_inside_an_ie = 0;
        for cut in 12..data.len() {
            let message = crate::wire::gtpv1::cut_inside(&data, cut, 4);
            let header = Header::parse(&message).unwrap();
            let result = ControlFields::parse(header.body);
            if ends.contains(&cut) {
                assert!(result.is_ok(), "cut {cut} between IEs: {result:?}");
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
        assert_eq!(cut_inside_an_ie, data.len() - 12 - (ends.len() - 1));
    }

    #[test]
    fn bad_fteid_and_paa() {
        assert!(FTeid::parse(&[0x80, 0, 0, 0, 1, 10, 0]).is_err(), "IPv4 flag but 2 address bytes");
        assert!(ControlFields::parse(&ie(79, 0, &[1, 10, 0])).is_err());
        let unspecified = ControlFields::parse(&ie(79, 0, &[1, 0, 0, 0, 0])).unwrap();
        assert_eq!(unspecified.ue_ipv4, None);
    }
}
