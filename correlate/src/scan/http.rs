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
                Stage::Headers => match end_of_headers(rest, self.line_has_content) {
                    Some(end) => {
                        region(Carrier::HttpHeader, at..at + end);
                        self.stage = Stage::Body;
                        self.line_has_content = false;
                        at += end + 1;
                    }
                    None => {
                        // The line the segment ends in continues in the next one: whether it has content.
                        self.line_has_content = match memchr::memrchr(b'\n', rest) {
                            // It began in this segment, after its last newline.
                            Some(newline) => rest.get(newline + 1..).unwrap_or_default().iter().any(|b| *b != b'\r'),
                            // The whole segment continues the line the previous one ended in.
                            None => self.line_has_content || rest.iter().any(|b| *b != b'\r'),
                        };
                        region(Carrier::HttpHeader, at..segment.len());
                        return;
                    }
                },
            }
        }
    }
}

/// Where the headers end in `rest` (the segment from the headers on): the index of the `\n` that ends
/// the first line holding nothing but CRs (the empty line), or `None` when it is not in `rest`.
/// `line_has_content`: the line `rest` starts in (begun in an earlier segment) already has a byte other
/// than CR.
///
/// A header line starts right after a `\n`, so after the first line an empty line can only begin where a
/// `\n` is followed by `\r` or `\n`: one substring search for each pair over the segment (prebuilt
/// searchers), instead of a search per line. On the bench's request with six header lines (criterion
/// `g-pdu/decode+correlate/uplink-http-no-token`) 105 ns became 97-104 ns; searchers built per call
/// made it slower (115-120 ns). A test compares this with the line walk on every split of many inputs.
static NEWLINE_CR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\r"));
static NEWLINE_NEWLINE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));

fn end_of_headers(rest: &[u8], line_has_content: bool) -> Option<usize> {
    let first_newline = memchr::memchr(b'\n', rest)?;
    let first_line = rest.get(..first_newline).unwrap_or_default();
    if !line_has_content && first_line.iter().all(|b| *b == b'\r') {
        return Some(first_newline);
    }
    let mut from = first_newline;
    loop {
        let after = rest.get(from..).unwrap_or_default();
        // The first `\n` followed by `\r` or `\n`, as an index into `rest`.
        let cr = NEWLINE_CR.find(after);
        let bound = cr.map_or(after.len(), |i| i + 1);
        let lf = NEWLINE_NEWLINE.find(after.get(..bound).unwrap_or_default());
        let newline = from + lf.or(cr)?;
        // The line after that `\n`: CRs, then a `\n` (empty: the end), or anything else (go on).
        let line_start = newline + 1;
        let crs = rest.get(line_start..).unwrap_or_default().iter().take_while(|b| **b == b'\r').count();
        match rest.get(line_start + crs) {
            Some(b'\n') => return Some(line_start + crs),
            Some(_) => from = line_start + crs,
            None => return None,
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

    /// The headers walked line by line, as before `end_of_headers`: the reference it must agree with.
    fn reference_regions(state: &mut (Stage, bool), segment: &[u8]) -> Vec<(Carrier, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < segment.len() {
            let rest = &segment[at..];
            match state.0 {
                Stage::NotHttp => break,
                Stage::Start | Stage::Body => {
                    if starts_request(rest) {
                        state.0 = Stage::RequestLine;
                    } else {
                        if state.0 == Stage::Start {
                            state.0 = Stage::NotHttp;
                        }
                        break;
                    }
                }
                Stage::RequestLine => match memchr::memchr(b'\n', rest) {
                    Some(newline) => {
                        out.push((Carrier::HttpUrl, at..at + newline));
                        state.0 = Stage::Headers;
                        state.1 = false;
                        at += newline + 1;
                    }
                    None => {
                        out.push((Carrier::HttpUrl, at..segment.len()));
                        break;
                    }
                },
                Stage::Headers => {
                    let mut line_start = 0usize;
                    let mut end_of_headers = None;
                    for newline in memchr::memchr_iter(b'\n', rest) {
                        let line = &rest[line_start..newline];
                        if !(state.1 || line.iter().any(|b| *b != b'\r')) {
                            end_of_headers = Some(newline);
                            break;
                        }
                        state.1 = false;
                        line_start = newline + 1;
                    }
                    match end_of_headers {
                        Some(end) => {
                            out.push((Carrier::HttpHeader, at..at + end));
                            state.0 = Stage::Body;
                            at += end + 1;
                        }
                        None => {
                            state.1 |= rest[line_start..].iter().any(|b| *b != b'\r');
                            out.push((Carrier::HttpHeader, at..segment.len()));
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_header_search_agrees_with_the_line_walk_on_every_split() {
        let requests: [&[u8]; 9] = [
            b"GET /a HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nbodyGET /b HTTP/1.1\r\nHost: b\r\n\r\n",
            b"GET /a HTTP/1.1\nHost: a\nX: y\n\nbody\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: \r\r\n\r\r\r\nB: after\r\n\r\n",
            b"GET / HTTP/1.1\r\n\rX: starts with CR\r\n\r\n",
            b"POST / HTTP/1.1\r\nA: 1\r\n\n",
            b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n",
            b"GET / HTTP/1.1\r\nA\n\r\rB\n\r\n",
            b"GET / HTTP/1.1\r\n\r\r",
        ];
        for request in requests {
            // Every way of cutting the request into two and three segments.
            for i in 0..=request.len() {
                for j in i..=request.len() {
                    let cuts = [&request[..i], &request[i..j], &request[j..]];
                    let mut state = HttpState::default();
                    let mut reference = (Stage::Start, false);
                    for (n, segment) in cuts.iter().enumerate() {
                        let mut got = Vec::new();
                        state.regions(segment, |carrier, range| got.push((carrier, range)));
                        let want = reference_regions(&mut reference, segment);
                        assert_eq!(got, want, "{:?} cut at {i}, {j}: segment {n}", String::from_utf8_lossy(request));
                        assert_eq!((state.stage, state.line_has_content), reference, "state after segment {n}");
                    }
                }
            }
        }
    }
}
