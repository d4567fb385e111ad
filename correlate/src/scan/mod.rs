//! Finding purchase tokens in a subscriber's uplink traffic.
//!
//! Carriers, one file each: [`http`] (request line and headers of HTTP/1.x), [`dns`] (query names),
//! [`tls`] (ClientHello server name); `segment` dispatches a TCP flow's segments to them.
//! [`TokenFinder`] finds candidate tokens in bytes and checks them with the shared token syntax
//! ([`gtpcharge_proto::token`]); look-alikes fail the check part and are counted.
//! What it does not do: decrypt, reassemble whole TCP streams, or look at downlink traffic.
pub mod dns;
pub mod http;
pub(crate) mod segment;
pub mod tls;

use gtpcharge_proto::token::{self, Token};
use memchr::memmem;

/// Where in the subscriber's traffic a token was found (the `where` field of a sighting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    HttpUrl,
    HttpHeader,
    Dns,
    TlsSni,
}

impl Carrier {
    pub fn as_str(&self) -> &'static str {
        match self {
            Carrier::HttpUrl => "http-url",
            Carrier::HttpHeader => "http-header",
            Carrier::Dns => "dns",
            Carrier::TlsSni => "tls-sni",
        }
    }
}

/// Finds tokens by their prefix, then checks each candidate. Holds a prebuilt substring searcher.
pub struct TokenFinder {
    prefix: memmem::Finder<'static>,
}

impl Default for TokenFinder {
    fn default() -> Self {
        TokenFinder { prefix: memmem::Finder::new(token::PREFIX) }
    }
}

/// Result of one scan: valid tokens go to the callback, look-alikes are counted here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanCounts {
    pub candidates: u32,
    pub rejected: u32,
}

impl TokenFinder {
    /// Calls `found(offset, token)` for each valid token in `haystack` (expected lowercase prefix).
    pub fn scan(&self, haystack: &[u8], mut found: impl FnMut(usize, Token)) -> ScanCounts {
        let mut counts = ScanCounts::default();
        for start in self.prefix.find_iter(haystack) {
            let Some(candidate) = haystack.get(start..start + token::TEXT_LEN) else {
                // A prefix too close to the end: the flow's carry will see it again with the next segment.
                continue;
            };
            counts.candidates += 1;
            match Token::parse(candidate) {
                Ok(token) => found(start, token),
                Err(_) => counts.rejected += 1,
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_valid_and_rejects_look_alikes() {
        let good = Token::from_random([3; 16]);
        let mut look_alike = good.to_string().into_bytes();
        look_alike[20] = if look_alike[20] == b'a' { b'b' } else { b'a' };
        let mut hay = b"x=gc1short&t=".to_vec();
        hay.extend_from_slice(good.to_string().as_bytes());
        hay.extend_from_slice(b"&u=");
        hay.extend_from_slice(&look_alike);
        hay.extend_from_slice(b"&end=gc1");
        let mut found = Vec::new();
        let counts = TokenFinder::default().scan(&hay, |at, t| found.push((at, t)));
        assert_eq!(found, vec![(13, good)]);
        // "gc1short&t=gc1..." is 35 bytes long: a candidate, rejected like the altered one.
        assert_eq!(counts, ScanCounts { candidates: 3, rejected: 2 });
    }
}
