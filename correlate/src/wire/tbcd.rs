//! Telephony BCD (TS 29.002): two digits per octet, low nibble first, `0xF` as filler.
//! IMSI, MSISDN and IMEI(SV) are kept in this packed form (8 bytes, no allocation) and turned into text
//! only when an event is written.
use std::fmt;

/// Up to 16 digits, packed as on the wire. Unused nibbles are `0xF`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tbcd([u8; 8]);

impl Tbcd {
    /// No digits.
    pub const EMPTY: Tbcd = Tbcd([0xFF; 8]);

    /// Takes up to 8 octets of TBCD. Digits after the first filler nibble are ignored; a value longer
    /// than 8 octets is refused.
    pub fn from_wire(value: &[u8]) -> Option<Tbcd> {
        if value.len() > 8 {
            return None;
        }
        let mut packed = [0xFF; 8];
        packed.get_mut(..value.len())?.copy_from_slice(value);
        Some(Tbcd(packed))
    }

    /// Packs a string of decimal digits (at most 16); anything else is refused.
    pub fn from_digits(digits: &str) -> Option<Tbcd> {
        if digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut packed = [0xFF; 8];
        for (index, digit) in digits.bytes().enumerate() {
            let byte = packed.get_mut(index / 2)?;
            let value = digit - b'0';
            *byte = if index % 2 == 0 { (*byte & 0xF0) | value } else { (*byte & 0x0F) | (value << 4) };
        }
        Some(Tbcd(packed))
    }

    /// The packed octets, as on the wire (filler `0xF`).
    pub fn packed(&self) -> [u8; 8] {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.digits().next().is_none()
    }

    /// The decimal digits, stopping at the first nibble that is not 0-9.
    pub fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().flat_map(|b| [b & 0x0F, b >> 4]).take_while(|d| *d <= 9).map(|d| b'0' + d)
    }

    /// The digits written into a fixed buffer; returns the text.
    pub fn write<'b>(&self, buffer: &'b mut [u8; 16]) -> &'b str {
        let mut len = 0;
        for (slot, digit) in buffer.iter_mut().zip(self.digits()) {
            *slot = digit;
            len += 1;
        }
        std::str::from_utf8(buffer.get(..len).unwrap_or_default()).unwrap_or_default()
    }
}

impl fmt::Display for Tbcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0u8; 16];
        f.write_str(self.write(&mut buffer))
    }
}

impl fmt::Debug for Tbcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tbcd({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imsi_from_wire() {
        // IMSI 460004100000101 as in a real Create PDP Context Request (zeek's gtp_create_pdp_ctx.pcap).
        let wire = [0x64, 0x00, 0x40, 0x01, 0x00, 0x00, 0x01, 0xF1];
        assert_eq!(Tbcd::from_wire(&wire).unwrap().to_string(), "460004100000101");
    }

    #[test]
    fn digits_round_trip_and_refusals() {
        let t = Tbcd::from_digits("8615221000101").unwrap();
        assert_eq!(t.to_string(), "8615221000101");
        assert!(Tbcd::from_digits("12a").is_none());
        assert!(Tbcd::from_digits("12345678901234567").is_none());
        assert!(Tbcd::from_wire(&[0; 9]).is_none());
        assert!(Tbcd::EMPTY.is_empty());
    }
}
