//! DNS queries (RFC 1035 4.1): the name of the first question, lowercased, dotted, into a fixed buffer.
//! Only queries (QR=0) are read; compression pointers do not occur in a query's first name and end it.
//! A question must be whole (its name, type and class) to be read.

/// The longest name we write: 255 octets on the wire become at most 253 characters of text.
pub const NAME_MAX: usize = 255;
const LABELS_MAX: usize = 127;

/// Why a datagram on the DNS port gave no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsError {
    NotAQuery,
    Malformed,
}

/// Writes the first question's name into `out`; returns its length.
pub fn query_name(message: &[u8], out: &mut [u8; NAME_MAX]) -> Result<usize, DnsError> {
    let Some(&[_, _, flags_high, flags_low, questions_high, questions_low, ..]) = message.first_chunk::<12>() else {
        return Err(DnsError::Malformed);
    };
    let flags = u16::from_be_bytes([flags_high, flags_low]);
    let questions = u16::from_be_bytes([questions_high, questions_low]);
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotAQuery);
    }
    if questions == 0 {
        return Err(DnsError::Malformed);
    }
    let mut at = 12usize;
    let mut len = 0usize;
    for _ in 0..LABELS_MAX {
        let label_len = usize::from(*message.get(at).ok_or(DnsError::Malformed)?);
        if label_len == 0 {
            // The question goes on with its type and class: a query cut before them is malformed.
            message.get(at + 1..at + 5).ok_or(DnsError::Malformed)?;
            return Ok(len);
        }
        if label_len > 63 {
            return Err(DnsError::Malformed); // a pointer or a reserved label type
        }
        let label = message.get(at + 1..at + 1 + label_len).ok_or(DnsError::Malformed)?;
        if len > 0 {
            *out.get_mut(len).ok_or(DnsError::Malformed)? = b'.';
            len += 1;
        }
        let target = out.get_mut(len..len + label_len).ok_or(DnsError::Malformed)?;
        for (slot, byte) in target.iter_mut().zip(label) {
            *slot = byte.to_ascii_lowercase();
        }
        len += label_len;
        at += 1 + label_len;
    }
    Err(DnsError::Malformed)
}

/// Builds a query for `name` (type A, class IN, recursion desired) with message id `id`; used by tests
/// here, the benches and the capture generator. Each dot-separated part of `name` becomes a label; a part
/// longer than 63 bytes is cut there (a label's length is 6 bits).
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let [id_high, id_low] = id.to_be_bytes();
    let mut message = vec![id_high, id_low, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        let label = label.as_bytes().get(..label.len().min(63)).unwrap_or_default();
        message.push(label.len() as u8);
        message.extend_from_slice(label);
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Vec<u8> {
        build_query(0x1234, name)
    }

    #[test]
    fn reads_and_lowercases() {
        let mut out = [0u8; NAME_MAX];
        let len = query_name(&query("GC1abc.Pay.Example"), &mut out).unwrap();
        assert_eq!(&out[..len], b"gc1abc.pay.example");
    }

    #[test]
    fn refuses_responses_and_garbage() {
        let mut out = [0u8; NAME_MAX];
        let mut response = query("a.b");
        response[2] |= 0x80;
        assert_eq!(query_name(&response, &mut out), Err(DnsError::NotAQuery));
        let full = query("a.b");
        for cut in 0..full.len() {
            assert_eq!(query_name(&full[..cut], &mut out), Err(DnsError::Malformed), "cut {cut}");
        }
        assert_eq!(query_name(&full, &mut out), Ok(3));
        let mut pointer = query("a");
        pointer[12] = 0xC0;
        assert_eq!(query_name(&pointer, &mut out), Err(DnsError::Malformed));
        // 200 one-byte labels would overflow the name buffer: refused, not panicked.
        let long = vec!["a"; 200].join(".");
        assert_eq!(query_name(&query(&long), &mut out), Err(DnsError::Malformed));
    }
}
