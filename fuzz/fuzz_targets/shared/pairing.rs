//! The pairing rule, checked by the correlation targets on every session the correlator creates: the
//! Create response that made it carries the sequence number of its request, in the same GTP version,
//! sent within the retransmission window, and, where the request announced a control TEID (GTPv1 TEID-C
//! IE, GTPv2 Sender F-TEID) or a TID (GTPv0), the response's header names that very one.
use gtpcharge_correlate::wire::{gtpv0, gtpv1, gtpv2};
use gtpcharge_correlate::SessionEvent;

/// (version, sequence, announced proof if any, header TEID or TID) of a GTP-C message.
fn pairing_facts(payload: &[u8]) -> Option<(u8, u32, Option<u64>, Option<u64>)> {
    match payload.first()? >> 5 {
        0 => {
            let header = gtpv0::Header::parse(payload).ok()?;
            let tid = Some(header.tid_key());
            Some((0, u32::from(header.sequence), tid, tid))
        }
        1 => {
            let header = gtpv1::Header::parse(payload).ok()?;
            let fields = gtpv1::ControlFields::parse(header.body).ok()?;
            Some((1, u32::from(header.sequence?), fields.teid_control.map(u64::from), Some(u64::from(header.teid))))
        }
        2 => {
            if payload.first()? & 0x10 != 0 {
                return None; // piggybacked: the message that paired may be the second one
            }
            let header = gtpv2::Header::parse(payload).ok()?;
            let fields = gtpv2::ControlFields::parse(header.body).ok()?;
            Some((2, header.sequence, fields.sender_control.map(|f| u64::from(f.teid)), header.teid.map(u64::from)))
        }
        _ => None,
    }
}

/// Panics unless `up`'s request and response (frames numbered from 1 in `sent`: time and UDP payload)
/// obey the pairing rule.
pub fn check_pairing<T: AsRef<[u8]>>(up: &SessionEvent, sent: &[(u64, T)], window_us: u64) {
    let [request, response] = up.frames;
    let at = |n: u64| sent.get(usize::try_from(n).ok()?.checked_sub(1)?);
    let (Some((request_ts, request)), Some((response_ts, response))) = (at(request), at(response)) else {
        panic!("a session names frames {request} and {response} that were not sent");
    };
    assert!(response_ts - request_ts <= window_us, "paired outside the retransmission window");
    if let (Some(q), Some(r)) = (pairing_facts(request.as_ref()), pairing_facts(response.as_ref())) {
        assert_eq!((q.0, q.1), (r.0, r.1), "paired across versions or sequence numbers");
        if let Some(announced) = q.2 {
            assert_eq!(Some(announced), r.3, "the response does not carry the announced TEID");
        }
    }
}
