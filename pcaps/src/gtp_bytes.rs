//! The GTP bytes the generator writes that `gtpcharge_correlate::wire` has no emit side for: TBCD
//! digits, APN labels, GTPv1 TLVs, G-PDUs, User Location Information and F-TEIDs; and thin wrappers
//! over the wire builders.
use crate::Subscriber;
use std::net::Ipv4Addr;

pub(crate) fn tbcd(digits: &str) -> Vec<u8> {
    let d: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
    d.chunks(2).map(|pair| pair[0] | (pair.get(1).copied().unwrap_or(0xF) << 4)).collect()
}

pub(crate) fn apn_labels(apn: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in apn.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out
}

pub(crate) fn v1_tlv(out: &mut Vec<u8>, ie_type: u8, value: &[u8]) {
    out.push(ie_type);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

pub(crate) use gtpcharge_correlate::wire::gtpv1::message as v1_message;

pub(crate) fn g_pdu(teid: u32, inner: &[u8], extension: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(inner.len() + 16);
    if extension {
        // E flag, one PDU Session Container (0x85) of one 4-byte unit, then no more.
        m.extend_from_slice(&[0x34, 0xFF]);
        m.extend_from_slice(&((inner.len() + 8) as u16).to_be_bytes());
        m.extend_from_slice(&teid.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0x85, 1, 0x10, 0x09, 0x00]);
    } else {
        m.extend_from_slice(&[0x30, 0xFF]);
        m.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        m.extend_from_slice(&teid.to_be_bytes());
    }
    m.extend_from_slice(inner);
    m
}

pub(crate) fn v2_ie(out: &mut Vec<u8>, ie_type: u8, instance: u8, value: &[u8]) {
    out.extend_from_slice(&gtpcharge_correlate::wire::gtpv2::ie(ie_type, instance, value));
}

/// The test PLMN (MCC 001, MNC 01) as it is encoded on the wire.
pub(crate) const TEST_PLMN: [u8; 3] = [0x00, 0xF1, 0x10];

/// A number from the subscriber's IMSI (its last four digits), for location codes: no random draw, so
/// the rest of the capture does not move when location is added.
pub(crate) fn area_code(sub: &Subscriber) -> u16 {
    sub.imsi.get(sub.imsi.len().saturating_sub(4)..).and_then(|d| d.parse().ok()).unwrap_or(0)
}

/// GTPv1 User Location Information (TS 29.060 7.7.51): a Service Area Identity.
pub(crate) fn v1_uli(sub: &Subscriber) -> Vec<u8> {
    let mut uli = vec![1];
    uli.extend_from_slice(&TEST_PLMN);
    uli.extend_from_slice(&(0x100 + area_code(sub) / 8).to_be_bytes()); // LAC
    uli.extend_from_slice(&(0x1000 + area_code(sub)).to_be_bytes()); // SAC
    uli
}

/// GTPv2 User Location Information (TS 29.274 8.21): TAI and ECGI.
pub(crate) fn v2_uli(sub: &Subscriber) -> Vec<u8> {
    let mut uli = vec![0x18];
    uli.extend_from_slice(&TEST_PLMN);
    uli.extend_from_slice(&(0x200 + area_code(sub) / 8).to_be_bytes()); // TAC
    uli.extend_from_slice(&TEST_PLMN);
    uli.extend_from_slice(&(0x0010_0000 + u32::from(area_code(sub))).to_be_bytes()); // ECI
    uli
}

pub(crate) fn v2_fteid(interface: u8, teid: u32, address: Ipv4Addr) -> Vec<u8> {
    let mut v = vec![0x80 | interface];
    v.extend_from_slice(&teid.to_be_bytes());
    v.extend_from_slice(&address.octets());
    v
}

/// A GTPv2-C message with a TEID (every one the generator writes has one).
pub(crate) fn v2_message(message_type: u8, teid: u32, sequence: u32, ies: &[u8]) -> Vec<u8> {
    gtpcharge_correlate::wire::gtpv2::message(message_type, Some(teid), sequence, ies)
}
