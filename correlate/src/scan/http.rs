//! HTTP/1.x requests: which bytes of an uplink TCP segment are the request line (`http-url`) and which
//! are header lines (`http-header`). Bodies are not scanned: an SP carries its token in the URL, a
//! header, a hostname or the SNI (README, "Token carriers").
//!
//! State per flow is two bytes ([`HttpState`]); a request split over many segments is followed line by
//! line, and a new request on a kept-alive connection is recognised by its method.
use super::Carrier;
use std::ops::Range;

const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

/// Whether `data` begins with an HTTP/1.x request method (and its space): how a flow's first segment is
/// recognised as HTTP, and a new request on a kept-alive connection.
pub fn starts_request(data: &[u8]) -> bool {
    METHODS.iter().any(|method| data.starts_with(method))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Stage {
    /// Nothing seen yet on this flow.
    #[default]
    Start,
    RequestLine,
    Headers,
    Body,
    /// The flow did not start like an HTTP request: it is not scanned.
    NotHttp,
}

/// Where a flow is within its current HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpState {
    stage: Stage,
    /// The header line being read has a byte other than CR so far (it is not the empty line).
    line_has_content: bool,
}

impl HttpState {
    /// Whether the flow has been classified as not HTTP.
    pub fn is_not_http(&self) -> bool {
        self.stage == Stage::NotHttp
    }

    /// Splits the next in-order segment into scanned regions, calling `region` for each, in order.
    pub fn regions(&mut self, segment: &[u8], mut region: impl FnMut(Carrier, Range<usize>)) {
        let mut at = 0usize;
        // Each turn of the loop consumes at least one byte or returns; bounded by the segment length.
        while at < segment.len() {
            let rest = segment.get(at..).unwrap_or_default();
            match self.stage {
                Stage::NotHttp => return,
                Stage::Start | Stage::Body => {
                    if starts_request(rest) {
                        self.stage = Stage::RequestLine;
                    } else {
                        if self.stage == Stage::Start {
                            self.stage = Stage::NotHttp;
                        }
                        return; // body bytes (or not HTTP): not scanned
                    }
                }
                Stage::RequestLine => match memchr::memchr(b'\n', rest) {
                    Some(newline) => {
                        region(Carrier::HttpUrl, at..at + newline);
                        self.stage = Stage::Headers;
                        self.line_has_content = false;
                        at += newline + 1;
                    }
                    None => {
                        region(Carrier::HttpUrl, at..segment.len());
                        return;
                    }
                },
                Stage::Headers => {
                    let mut line_start = 0usize;
                    let mut end_of_headers = None;
                    for newline in memchr::memchr_iter(b'\n', rest) {
                        let line = rest.get(line_start..newline).unwrap_or_default();
                        let has_content = self.line_has_content || line.iter().any(|b| *b != b'\r');
                        if !has_content {
                            end_of_headers = Some(newline);
                            break;
                        }
                        self.line_has_content = false;
                        line_start = newline + 1;
                    }
                    match end_of_headers {
                        Some(end) => {
                            region(Carrier::HttpHeader, at..at + end);
                            self.stage = Stage::Body;
                            at += end + 1;
                        }
                        None => {
                            let tail = rest.get(line_start..).unwrap_or_default();
                            self.line_has_content |= tail.iter().any(|b| *b != b'\r');
                            region(Carrier::HttpHeader, at..segment.len());
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(state: &mut HttpState, segment: &[u8]) -> Vec<(Carrier, String)> {
        let mut out = Vec::new();
        state.regions(segment, |carrier, range| {
            out.push((carrier, String::from_utf8_lossy(&segment[range]).into_owned()))
        });
        out
    }

    #[test]
    fn request_line_headers_and_body() {
        let mut state = HttpState::default();
        let got = regions(&mut state, b"GET /pay?t=x HTTP/1.1\r\nHost: a\r\nX-T: y\r\n\r\nbody gc1");
        assert_eq!(
            got,
            vec![
                (Carrier::HttpUrl, "GET /pay?t=x HTTP/1.1\r".into()),
                (Carrier::HttpHeader, "Host: a\r\nX-T: y\r\n\r".into())
            ]
        );
        // A second request on the same connection.
        let got = regions(&mut state, b"POST /b HTTP/1.1\r\n");
        assert_eq!(got[0], (Carrier::HttpUrl, "POST /b HTTP/1.1\r".into()));
    }

    #[test]
    fn split_across_segments() {
        let mut state = HttpState::default();
        assert_eq!(regions(&mut state, b"GET /very/long")[0].0, Carrier::HttpUrl);
        assert_eq!(regions(&mut state, b"/url HTTP/1.1\r\nHost: a\r")[1], (Carrier::HttpHeader, "Host: a\r".into()));
        // The empty line arrives split: "\n" ends "Host: a", then "\r\n" is the empty line.
        assert_eq!(regions(&mut state, b"\n\r\nbody").len(), 1);
        assert!(regions(&mut state, b"more body").is_empty());
    }

    #[test]
    fn a_fresh_flow_has_regions_exactly_when_it_starts_with_a_method() {
        // The engine classifies a flow's first segment with `starts_request` alone; this is what makes
        // that the same decision as walking the segment with a fresh state.
        let segments: [&[u8]; 10] = [
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET ",
            b"GET",
            b"get / HTTP/1.1\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n",
            b"POST",
            b"\r\nGET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x00",
            b"",
        ];
        for segment in segments {
            let walked = !regions(&mut HttpState::default(), segment).is_empty();
            assert_eq!(walked, starts_request(segment), "{:?}", String::from_utf8_lossy(segment));
        }
        assert!(starts_request(b"GET /"));
        assert!(!starts_request(b"GETX /"));
    }

    #[test]
    fn not_http_is_never_scanned() {
        let mut state = HttpState::default();
        assert!(regions(&mut state, b"\x16\x03\x01 binary").is_empty());
        assert!(state.is_not_http());
        assert!(regions(&mut state, b"GET / HTTP/1.1\r\n").is_empty());
    }
}
