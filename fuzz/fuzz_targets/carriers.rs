//! Token carriers: HTTP request regions over two segments, DNS query names, TLS ClientHello SNI, and
//! the token finder over all of it.
#![no_main]
use gtpcharge_correlate::scan::{dns, http::HttpState, tls, TokenFinder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let finder = TokenFinder::default();
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut state = HttpState::default();
    for segment in [&data[..split], &data[split..]] {
        state.regions(segment, |_, range| {
            if let Some(bytes) = segment.get(range) {
                finder.scan(bytes, |_, _| {});
            }
        });
    }
    let mut name = [0u8; dns::NAME_MAX];
    if let Ok(len) = dns::query_name(data, &mut name) {
        finder.scan(&name[..len], |_, _| {});
    }
    if let Ok(len) = tls::client_hello_sni(data, &mut name) {
        finder.scan(&name[..len], |_, _| {});
    }
    finder.scan(data, |_, _| {});
});
