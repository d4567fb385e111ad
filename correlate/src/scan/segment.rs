//! The carrier dispatch of a TCP segment: which carrier a flow is (decided on its first bytes: TLS,
//! HTTP or other), the regions of an HTTP request a token may be in (request line, headers), the join of
//! a token split across two segments (the flow's carry), the scan budget, and the token finder over each
//! region. Notes (look-alikes, TLS without a server name) go to the caller's counter.
use super::{dns, http, tls, Carrier, TokenFinder};
use crate::flow::{FlowKind, FlowState, CARRY_LEN};
use crate::reason::Note;
use gtpcharge_proto::Token;

/// The token finder and its per-packet budget.
pub(crate) struct Scanner {
    pub(crate) finder: TokenFinder,
    pub(crate) bytes_max: usize,
}

/// The distinct tokens of one packet, four at most, with where each was.
pub(crate) type Found = [Option<(Token, Carrier)>; 4];

pub(crate) fn scan_segment(
    scanner: &Scanner,
    note: &mut impl FnMut(Note),
    state: &mut FlowState,
    payload: &[u8],
    skip: usize,
    contiguous: bool,
    found: &mut Found,
) {
    let fresh = payload.get(skip..).unwrap_or_default();
    if state.kind == FlowKind::Undecided {
        // A fresh `HttpState` yields a region exactly when the segment starts with a request method, so
        // the method test decides without walking the request's lines twice.
        state.kind = if fresh.starts_with(&[0x16, 0x03]) {
            FlowKind::Tls
        } else if http::starts_request(fresh) {
            FlowKind::Http
        } else {
            FlowKind::Other
        };
        if state.kind == FlowKind::Tls {
            let mut name = [0u8; dns::NAME_MAX];
            match tls::client_hello_sni(fresh, &mut name) {
                Ok(len) => collect(scanner, note, name.get(..len).unwrap_or_default(), Carrier::TlsSni, found),
                Err(tls::TlsError::Truncated) => note(Note::TlsClientHelloTruncated),
                Err(_) => note(Note::TlsNoServerName),
            }
            return;
        }
    }
    if state.kind != FlowKind::Http {
        return;
    }
    if !contiguous {
        state.carry_len = 0;
    }
    let budget = scanner.bytes_max;
    let mut regions: [Option<(Carrier, std::ops::Range<usize>)>; 8] = Default::default();
    let mut count = 0usize;
    state.http.regions(fresh, |carrier, range| {
        if let Some(slot) = regions.get_mut(count) {
            *slot = Some((carrier, range));
            count += 1;
        }
    });
    // A token that began in the previous segment: join the carry with the head of this one.
    if state.carry_len > 0 {
        let carry = state.carry();
        let head = fresh.get(..CARRY_LEN.min(fresh.len())).unwrap_or_default();
        let carry_len = carry.len();
        let mut joined = [0u8; 2 * CARRY_LEN];
        if let Some(slot) = joined.get_mut(..carry_len) {
            slot.copy_from_slice(carry);
        }
        if let Some(slot) = joined.get_mut(carry_len..carry_len + head.len()) {
            slot.copy_from_slice(head);
        }
        let carrier = state.carry_carrier;
        let joined = joined.get(..carry_len + head.len()).unwrap_or_default();
        // Only tokens that start in the carry are new here; look-alikes are counted in their segment.
        scanner.finder.scan(joined, |at, token| {
            if at < carry_len {
                push_token(found, token, carrier)
            }
        });
    }
    state.carry_len = 0;
    for (carrier, range) in regions.iter().flatten().cloned() {
        let start = range.start.min(budget);
        let end = range.end.min(budget);
        let Some(bytes) = fresh.get(start..end) else { continue };
        collect(scanner, note, bytes, carrier, found);
        if range.end == fresh.len() {
            state.keep_tail(fresh.get(range.clone()).unwrap_or_default(), carrier);
        }
    }
}

pub(crate) fn collect(
    scanner: &Scanner,
    note: &mut impl FnMut(Note),
    haystack: &[u8],
    carrier: Carrier,
    found: &mut Found,
) {
    let haystack = haystack.get(..scanner.bytes_max).unwrap_or(haystack);
    let counts = scanner.finder.scan(haystack, |_, token| push_token(found, token, carrier));
    for _ in 0..counts.rejected {
        note(Note::TokenLookAlike);
    }
}

pub(crate) fn push_token(found: &mut Found, token: Token, carrier: Carrier) {
    if found.iter().flatten().any(|(t, _)| *t == token) {
        return;
    }
    if let Some(slot) = found.iter_mut().find(|s| s.is_none()) {
        *slot = Some((token, carrier));
    }
}
