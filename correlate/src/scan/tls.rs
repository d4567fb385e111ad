//! TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3): the server_name of the first record of a flow.
//! Reads only what the segment holds; a ClientHello cut before its SNI extension is reported as such.
use super::dns::NAME_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsError {
    NotClientHello,
    /// The segment ends before the SNI extension (a ClientHello spread over segments).
    Truncated,
    NoServerName,
    Malformed,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], TlsError> {
        let out = self.data.get(self.at..self.at + len).ok_or(TlsError::Truncated)?;
        self.at += len;
        Ok(out)
    }
    fn u8(&mut self) -> Result<usize, TlsError> {
        Ok(usize::from(*self.bytes(1)?.first().ok_or(TlsError::Truncated)?))
    }
    fn u16(&mut self) -> Result<usize, TlsError> {
        let b = self.bytes(2)?;
        Ok(usize::from(u16::from_be_bytes([
            *b.first().ok_or(TlsError::Truncated)?,
            *b.get(1).ok_or(TlsError::Truncated)?,
        ])))
    }
}

/// Writes the lowercased host_name of a ClientHello into `out`; returns its length.
pub fn client_hello_sni(segment: &[u8], out: &mut [u8; NAME_MAX]) -> Result<usize, TlsError> {
    let mut r = Reader { data: segment, at: 0 };
    // Record header: handshake (22), legacy version 3.x, length.
    if r.u8().map_err(|_| TlsError::NotClientHello)? != 22 || r.u8().map_err(|_| TlsError::NotClientHello)? != 3 {
        return Err(TlsError::NotClientHello);
    }
    r.bytes(3)?; // minor version, record length
    if r.u8()? != 1 {
        return Err(TlsError::NotClientHello);
    }
    r.bytes(3)?; // handshake length
    r.bytes(2 + 32)?; // legacy_version, random
    let session_id = r.u8()?;
    r.bytes(session_id)?;
    let suites = r.u16()?;
    r.bytes(suites)?;
    let compression = r.u8()?;
    r.bytes(compression)?;
    let extensions_len = r.u16()?;
    let extensions_end = r.at + extensions_len;
    // Extensions are at least 4 bytes each; the loop is bounded by the extensions length.
    while r.at + 4 <= extensions_end {
        let ext_type = r.u16()?;
        let ext_len = r.u16()?;
        let ext = r.bytes(ext_len)?;
        if ext_type != 0 {
            continue;
        }
        let mut e = Reader { data: ext, at: 0 };
        let list_len = e.u16().map_err(|_| TlsError::Malformed)?;
        let list_end = (e.at + list_len).min(ext.len());
        while e.at + 3 <= list_end {
            let name_type = e.u8().map_err(|_| TlsError::Malformed)?;
            let name = {
                let len = e.u16().map_err(|_| TlsError::Malformed)?;
                e.bytes(len).map_err(|_| TlsError::Malformed)?
            };
            if name_type == 0 {
                let target = out.get_mut(..name.len()).ok_or(TlsError::Malformed)?;
                for (slot, byte) in target.iter_mut().zip(name) {
                    *slot = byte.to_ascii_lowercase();
                }
                return Ok(name.len());
            }
        }
        return Err(TlsError::NoServerName);
    }
    Err(TlsError::NoServerName)
}

/// Builds a minimal ClientHello with one SNI; used by tests here and by the capture generator.
pub fn build_client_hello(server_name: &[u8]) -> Vec<u8> {
    let mut sni = Vec::new();
    let name_len = server_name.len() as u16;
    sni.extend_from_slice(&(name_len + 3).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&name_len.to_be_bytes());
    sni.extend_from_slice(server_name);
    let mut extensions = vec![0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]; // ec_point_formats first
    extensions.extend_from_slice(&[0, 0]);
    extensions.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    extensions.extend_from_slice(&sni);
    let mut hello = vec![0x03, 0x03];
    hello.extend_from_slice(&[0x5a; 32]);
    hello.push(0); // no session id
    hello.extend_from_slice(&[0, 4, 0x13, 0x01, 0x13, 0x02]);
    hello.extend_from_slice(&[1, 0]);
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sni() {
        let hello = build_client_hello(b"GC1x.Pay.Example");
        let mut out = [0u8; NAME_MAX];
        let len = client_hello_sni(&hello, &mut out).unwrap();
        assert_eq!(&out[..len], b"gc1x.pay.example");
    }

    #[test]
    fn truncated_and_foreign() {
        let hello = build_client_hello(b"example.com");
        let mut out = [0u8; NAME_MAX];
        for cut in 0..hello.len() {
            assert!(client_hello_sni(&hello[..cut], &mut out).is_err(), "cut {cut}");
        }
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1", &mut out), Err(TlsError::NotClientHello));
        assert_eq!(client_hello_sni(&hello[..60], &mut out), Err(TlsError::Truncated));
    }
}
