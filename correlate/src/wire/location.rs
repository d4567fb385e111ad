//! Where a subscriber is attached: the PLMN (MCC + MNC) and the cell or area identities of a User Location
//! Information IE (GTPv1: TS 29.060 7.7.51, type 152; GTPv2: TS 29.274 8.21, type 86) and of GTPv1's
//! Routeing Area Identity (7.7.3, TV type 3). Copy values, no allocation.
//!
//! ```text
//! PLMN (3 octets): MCC2 MCC1 | MNC3 MCC3 | MNC2 MNC1      (MNC3 = 0xF for a two-digit MNC)
//! GTPv1 ULI: geographic location type (0 CGI, 1 SAI, 2 RAI), PLMN, LAC(2), CI / SAC / RAC(2)
//! GTPv2 ULI: flags (CGI 0x01, SAI 0x02, RAI 0x04, TAI 0x08, ECGI 0x10, LAI 0x20, ...), then each
//!            present identity in that order: CGI 7, SAI 7, RAI 7, TAI 5, ECGI 7, LAI 5 octets
//! ```
use super::{be_u16, be_u32, WireError};

/// A PLMN identity: MCC and MNC as digits (the MNC has 2 or 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Plmn {
    pub mcc: u16,
    pub mnc: u16,
    /// 2 or 3 (so "01" and "001" stay apart).
    pub mnc_digits: u8,
}

impl Plmn {
    /// Reads the 3-octet PLMN encoding; `None` when a digit is not a decimal digit.
    pub fn from_wire(bytes: &[u8]) -> Option<Plmn> {
        let (&b0, &b1, &b2) = (bytes.first()?, bytes.get(1)?, bytes.get(2)?);
        let digit = |nibble: u8| (nibble <= 9).then_some(u16::from(nibble));
        let mcc = digit(b0 & 0x0F)? * 100 + digit(b0 >> 4)? * 10 + digit(b1 & 0x0F)?;
        let (mnc1, mnc2) = (digit(b2 & 0x0F)?, digit(b2 >> 4)?);
        if b1 >> 4 == 0x0F {
            Some(Plmn { mcc, mnc: mnc1 * 10 + mnc2, mnc_digits: 2 })
        } else {
            Some(Plmn { mcc, mnc: mnc1 * 100 + mnc2 * 10 + digit(b1 >> 4)?, mnc_digits: 3 })
        }
    }

    pub fn mcc_text(&self) -> String {
        format!("{:03}", self.mcc)
    }

    pub fn mnc_text(&self) -> String {
        if self.mnc_digits == 3 {
            format!("{:03}", self.mnc)
        } else {
            format!("{:02}", self.mnc)
        }
    }
}

/// User Location Information: the PLMN of the first identity present, and each identity the IE carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uli {
    pub plmn: Plmn,
    /// Cell Global Identity: (LAC, CI).
    pub cgi: Option<(u16, u16)>,
    /// Service Area Identity: (LAC, SAC).
    pub sai: Option<(u16, u16)>,
    /// Routeing Area Identity: (LAC, RAC).
    pub rai: Option<(u16, u8)>,
    /// Tracking Area Identity: TAC.
    pub tai: Option<u16>,
    /// E-UTRAN Cell Global Identity: the 28-bit ECI.
    pub ecgi: Option<u32>,
    /// Location Area Identity: LAC.
    pub lai: Option<u16>,
}

impl Uli {
    /// GTPv1 ULI (type 152): one identity, chosen by the geographic location type.
    pub fn from_v1(value: &[u8]) -> Result<Uli, WireError> {
        let bad = WireError::BadIe("GTPv1-C User Location Information");
        let kind = *value.first().ok_or(bad)?;
        let plmn = value.get(1..4).and_then(Plmn::from_wire).ok_or(bad)?;
        let lac = be_u16(value, 4).ok_or(bad)?;
        let mut uli = Uli { plmn, ..Uli::default() };
        match kind {
            0 => uli.cgi = Some((lac, be_u16(value, 6).ok_or(bad)?)),
            1 => uli.sai = Some((lac, be_u16(value, 6).ok_or(bad)?)),
            // RAC is one octet, followed by a spare 0xFF octet (7.7.51).
            2 => uli.rai = Some((lac, *value.get(6).ok_or(bad)?)),
            _ => return Err(bad),
        }
        Ok(uli)
    }

    /// GTPv1 Routeing Area Identity (TV type 3, 6 octets: PLMN, LAC, RAC).
    pub fn from_v1_rai(value: &[u8]) -> Result<Uli, WireError> {
        let bad = WireError::BadIe("GTPv1-C Routeing Area Identity");
        let plmn = value.get(..3).and_then(Plmn::from_wire).ok_or(bad)?;
        let lac = be_u16(value, 3).ok_or(bad)?;
        let rac = *value.get(5).ok_or(bad)?;
        Ok(Uli { plmn, rai: Some((lac, rac)), ..Uli::default() })
    }

    /// GTPv2 ULI (type 86): a flags octet, then each flagged identity in order. Identities after LAI
    /// (macro eNodeB ids) are not read.
    pub fn from_v2(value: &[u8]) -> Result<Uli, WireError> {
        let bad = WireError::BadIe("GTPv2-C User Location Information");
        let flags = *value.first().ok_or(bad)?;
        let mut uli = Uli::default();
        let mut plmn = None;
        let mut at = 1usize;
        // (flag, length) in the order of TS 29.274 8.21.
        for (flag, len) in [(0x01u8, 7usize), (0x02, 7), (0x04, 7), (0x08, 5), (0x10, 7), (0x20, 5)] {
            if flags & flag == 0 {
                continue;
            }
            let part = value.get(at..at + len).ok_or(bad)?;
            at += len;
            let this = Plmn::from_wire(part).ok_or(bad)?;
            plmn.get_or_insert(this);
            let word = be_u16(part, 3).ok_or(bad)?;
            match flag {
                0x01 => uli.cgi = Some((word, be_u16(part, 5).ok_or(bad)?)),
                0x02 => uli.sai = Some((word, be_u16(part, 5).ok_or(bad)?)),
                0x04 => uli.rai = Some((word, *part.get(5).ok_or(bad)?)),
                0x08 => uli.tai = Some(word),
                0x10 => uli.ecgi = Some(be_u32(part, 3).ok_or(bad)? & 0x0FFF_FFFF),
                _ => uli.lai = Some(word),
            }
        }
        uli.plmn = plmn.ok_or(bad)?;
        Ok(uli)
    }

    /// Adds a Routeing Area Identity from another IE when this ULI has none.
    pub fn with_rai_from(mut self, other: Option<Uli>) -> Uli {
        if self.rai.is_none() {
            self.rai = other.and_then(|o| o.rai);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plmn_two_and_three_digit_mnc() {
        // MCC 460, MNC 00 (two digits): 64 F0 00.
        assert_eq!(Plmn::from_wire(&[0x64, 0xF0, 0x00]), Some(Plmn { mcc: 460, mnc: 0, mnc_digits: 2 }));
        // MCC 310, MNC 410 (three digits): 13 00 14.
        let plmn = Plmn::from_wire(&[0x13, 0x00, 0x14]).unwrap();
        assert_eq!((plmn.mcc_text(), plmn.mnc_text()), ("310".to_string(), "410".to_string()));
        assert_eq!(Plmn::from_wire(&[0x6A, 0xF0, 0x00]), None, "a nibble that is no digit");
        assert_eq!(Plmn::from_wire(&[0x64, 0xF0]), None);
    }

    #[test]
    fn v2_tai_and_ecgi() {
        // TAI + ECGI, MCC 001 MNC 01: 00 F1 10.
        let value = [0x18, 0x00, 0xF1, 0x10, 0x00, 0x01, 0x00, 0xF1, 0x10, 0x00, 0x00, 0x01, 0x9B];
        let uli = Uli::from_v2(&value).unwrap();
        assert_eq!((uli.plmn.mcc, uli.plmn.mnc, uli.plmn.mnc_digits), (1, 1, 2));
        assert_eq!(uli.tai, Some(1));
        assert_eq!(uli.ecgi, Some(0x19B));
        assert_eq!((uli.cgi, uli.sai, uli.rai, uli.lai), (None, None, None, None));
        for cut in 0..value.len() {
            assert!(Uli::from_v2(&value[..cut]).is_err(), "cut {cut}");
        }
        assert!(Uli::from_v2(&[0x00]).is_err(), "no identity at all");
    }

    #[test]
    fn v1_kinds() {
        let sai = Uli::from_v1(&[1, 0x64, 0xF0, 0x00, 0x12, 0x34, 0x56, 0x78]).unwrap();
        assert_eq!(sai.sai, Some((0x1234, 0x5678)));
        let rai = Uli::from_v1(&[2, 0x64, 0xF0, 0x00, 0x12, 0x34, 0x09, 0xFF]).unwrap();
        assert_eq!(rai.rai, Some((0x1234, 9)));
        assert!(Uli::from_v1(&[7, 0x64, 0xF0, 0x00, 0x12, 0x34, 0x56, 0x78]).is_err(), "unknown type");
        assert!(Uli::from_v1(&[0, 0x64, 0xF0, 0x00, 0x12]).is_err(), "truncated");
        let from_ie3 = Uli::from_v1_rai(&[0x64, 0xF0, 0x00, 0x00, 0x01, 0x02]).unwrap();
        assert_eq!(from_ie3.rai, Some((1, 2)));
        assert_eq!(sai.with_rai_from(Some(from_ie3)).rai, Some((1, 2)));
    }
}
