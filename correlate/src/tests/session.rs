//! The session table's tests: keys, eviction, tombstones, interning, and the record's size.
#![cfg(test)]
use super::*;
use crate::reason::DropReason;

fn key(address: [u8; 4], teid: u32) -> TunnelKey {
    TunnelKey { address: IpAddr::from(address), teid }
}

fn session(ue: [u8; 4], up: u32, down: u32) -> Session {
    Session {
        id: 0,
        gtp_version: 1,
        imsi: Tbcd::from_digits("001011234567890").unwrap(),
        msisdn: Tbcd::from_digits("46701234567").unwrap(),
        imei: Tbcd::EMPTY,
        apn: None,
        ue_ipv4: Some(ue.into()),
        ue_ipv6: None,
        nsapi: 5,
        tid: None,
        access: Endpoint { control: Some(key([10, 0, 0, 1], down)), user: Some(key([10, 0, 0, 2], down)) },
        core: Endpoint { control: Some(key([10, 0, 1, 1], up)), user: Some(key([10, 0, 1, 2], up)) },
        last_seen_us: 0,
        interface: Interface::Gn,
        evidence_tag: 0,
    }
}

#[test]
fn a_record_is_80_bytes() {
    assert_eq!(std::mem::size_of::<Record>(), 80);
}

#[test]
fn what_goes_in_comes_out() {
    let mut table = SessionTable::new(10);
    let mut wide = session([10, 9, 0, 1], 100, 200);
    wide.apn = table.intern_apn(Apn::from_text("internet"));
    wide.ue_ipv6 = Some("2001:db8::1".parse().unwrap());
    wide.imei = Tbcd::from_digits("3534900698733190").unwrap();
    wide.last_seen_us = 77;
    let (id, _) = table.insert(wide.clone()).unwrap();
    assert_eq!(table.get(id), Some(Session { id, ..wide }));
    assert_eq!(table.by_ue_ip("2001:db8::1".parse().unwrap()), Some(id));
}

#[test]
fn tunnel_keys_never_point_at_two_sessions() {
    let mut table = SessionTable::new(10);
    let (a, displaced) = table.insert(session([10, 9, 0, 1], 100, 200)).unwrap();
    assert!(displaced.is_empty());
    // The GGSN reuses TEID 100 for a new subscriber: the old context must be gone.
    let (b, displaced) = table.insert(session([10, 9, 0, 2], 100, 300)).unwrap();
    assert_eq!(displaced.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(table.by_user(key([10, 0, 1, 2], 100)), Some((b, Direction::Uplink)));
    assert_eq!(table.by_user(key([10, 0, 0, 2], 300)), Some((b, Direction::Downlink)));
    assert_eq!(table.by_user(key([10, 0, 0, 2], 200)), None);
    assert!(table.is_tombstone(key([10, 0, 0, 2], 200), 0), "the displaced session's other tunnel end");
    assert!(!table.is_tombstone(key([10, 0, 1, 2], 100), 0), "taken over, not ended");
    assert_eq!(table.by_ue_ip(IpAddr::from([10, 9, 0, 1])), None);
    assert_eq!(table.get(a), None);
    assert_eq!(table.len(), 1);
}

#[test]
fn an_id_is_never_another_sessions() {
    let mut table = SessionTable::new(10);
    let (a, _) = table.insert(session([10, 9, 0, 1], 1, 2)).unwrap();
    table.remove(a).unwrap();
    let (b, _) = table.insert(session([10, 9, 0, 2], 3, 4)).unwrap();
    assert_ne!(a, b, "the slot is reused, the id is not");
    assert_eq!(table.get(a), None);
    assert!(!table.touch(a, 5));
    assert!(table.touch(b, 5));
}

#[test]
fn touch_from_marks_the_session_seen_and_says_what_may_send_from_says() {
    let mut table = SessionTable::new(10);
    let (v4, _) = table.insert(session([10, 9, 0, 1], 1, 2)).unwrap();
    let mut dual = session([10, 9, 0, 2], 3, 4);
    dual.ue_ipv6 = Some("2001:db8::2".parse().unwrap());
    let (dual, _) = table.insert(dual).unwrap();
    let mut none = session([0, 0, 0, 0], 5, 6);
    none.ue_ipv4 = None;
    let (none, _) = table.insert(none).unwrap();
    let ips: [IpAddr; 4] =
        [[10, 9, 0, 1].into(), [10, 9, 0, 2].into(), "2001:db8::2".parse().unwrap(), "2001:db8::9".parse().unwrap()];
    for (id, ts) in [(v4, 10), (dual, 20), (none, 30)] {
        for ip in ips {
            let expected = table.may_send_from(id, ip);
            assert_eq!(table.touch_from(id, ts, ip), expected, "session {id:x} from {ip}");
        }
        assert_eq!(table.get(id).map(|s| s.last_seen_us), Some(ts), "touched even from a stranger's address");
    }
    assert!(table.touch_from(v4, 11, ips[0]) && !table.touch_from(v4, 12, ips[1]));
    assert!(table.touch_from(dual, 21, ips[2]) && table.touch_from(dual, 21, ips[1]));
    assert!(!table.touch_from(dual, 21, ips[3]), "another IPv6 address");
    assert!(table.touch_from(none, 31, ips[3]), "no UE address to compare with");
    assert_eq!(table.get(v4).map(|s| s.last_seen_us), Some(12));
    table.remove(v4).unwrap();
    assert!(!table.touch_from(v4, 13, ips[0]), "a session that ended");
}

#[test]
fn a_shared_ue_ip_answers_only_when_one_holder_is_left() {
    let mut table = SessionTable::new(10);
    let (a, _) = table.insert(session([10, 9, 0, 1], 1, 2)).unwrap();
    let (b, _) = table.insert(session([10, 9, 0, 1], 3, 4)).unwrap();
    let ip = IpAddr::from([10, 9, 0, 1]);
    assert_eq!(table.by_ue_ip(ip), None, "two APNs share the private address: no fallback");
    table.remove(b);
    assert_eq!(table.by_ue_ip(ip), Some(a), "exactly one live session holds it again");
    table.remove(a);
    assert_eq!(table.by_ue_ip(ip), None);
}

#[test]
fn crowded_keys_are_bounded_and_stay_ambiguous() {
    let mut table = SessionTable::new(100);
    let ip = IpAddr::from([10, 9, 0, 1]);
    let mut ids = Vec::new();
    for i in 0..20u32 {
        // Same UE address and same control keys for all: only the user-plane TEIDs differ.
        let mut s = session([10, 9, 0, 1], 1000 + i, 2000 + i);
        s.access.control = Some(key([10, 0, 0, 1], 7));
        s.core.control = Some(key([10, 0, 1, 1], 8));
        ids.push(table.insert(s).unwrap().0);
    }
    assert_eq!(table.crowded(), (2 * 12, 12));
    assert_eq!(table.by_ue_ip(ip), None);
    // Remove every indexed holder but one: the unindexed ones still make the address ambiguous.
    for &id in ids.iter().take(SHARED_KEY_MAX - 1) {
        table.remove(id);
    }
    assert_eq!(table.by_ue_ip(ip), None);
    for &id in ids.iter().skip(SHARED_KEY_MAX - 1) {
        table.remove(id);
    }
    assert!(table.is_empty());
    assert!(table.ue_ip_crowded.is_empty());
    assert_eq!(table.index.len(), 0, "every entry went with its session");
    assert!(table.store.gsns.ids.is_empty(), "every GSN address was given back");
}

#[test]
fn control_lookup_prefers_the_sender_then_the_newest() {
    let mut table = SessionTable::new(10);
    let shared = key([10, 0, 1, 1], 9);
    let mut s11 = session([10, 9, 0, 1], 1, 2);
    s11.core.control = Some(shared);
    let mut s5 = session([10, 9, 0, 2], 3, 4);
    s5.core.control = Some(shared);
    s5.access.control = Some(key([10, 0, 0, 77], 4));
    let (a, _) = table.insert(s11).unwrap();
    let (b, _) = table.insert(s5).unwrap();
    assert_eq!(table.by_control(shared, 5, IpAddr::from([10, 0, 0, 1])), Some(a));
    assert_eq!(table.by_control(shared, 5, IpAddr::from([10, 0, 0, 77])), Some(b));
    assert_eq!(table.by_control(shared, 5, IpAddr::from([1, 1, 1, 1])), Some(b));
    assert_eq!(table.by_control(shared, 6, IpAddr::from([10, 0, 0, 1])), None, "another NSAPI");
}

#[test]
fn every_nsapi_lookup_agrees_with_the_lookup_per_nsapi() {
    let mut table = SessionTable::new(20);
    let shared = key([10, 0, 1, 1], 9);
    // NSAPI 5: two holders (the sender's and another's); NSAPIs 6 and 15: one each; a control key
    // equal to a user key (address and TEID) of another session; and a different key.
    for (i, nsapi, access) in [(1u8, 5u8, 1u8), (2, 5, 77), (3, 6, 1), (4, 15, 1)] {
        let mut s = session([10, 9, 0, i], u32::from(i) * 10, u32::from(i) * 10 + 1);
        s.nsapi = nsapi;
        s.core.control = Some(shared);
        s.access.control = Some(key([10, 0, 0, access], 4));
        table.insert(s).unwrap();
    }
    let mut same_as_user = session([10, 9, 1, 1], 50, 51);
    same_as_user.core.user = Some(shared);
    table.insert(same_as_user).unwrap();
    table.insert(session([10, 9, 1, 2], 60, 61)).unwrap();
    for peer in [[10, 0, 0, 1], [10, 0, 0, 77], [1, 1, 1, 1]] {
        let peer = IpAddr::from(peer);
        let each: Vec<u64> = (0..16).filter_map(|nsapi| table.by_control(shared, nsapi, peer)).collect();
        assert_eq!(each.len(), 3, "NSAPIs 5, 6 and 15");
        assert_eq!(table.by_control_every_nsapi(shared, peer), each);
    }
    assert_eq!(table.by_control_every_nsapi(key([10, 0, 1, 1], 12345), IpAddr::from([10, 0, 0, 1])), []);
}

#[test]
fn capacity_refuses_and_expiry_frees() {
    let mut table = SessionTable::new(1);
    let mut first = session([10, 9, 0, 1], 1, 2);
    first.last_seen_us = 5;
    table.insert(first).unwrap();
    assert_eq!(table.insert(session([10, 9, 0, 2], 3, 4)).err(), Some(DropReason::SessionTableFull));
    let idle = table.idle(10);
    assert_eq!(idle.iter().filter_map(|&id| table.remove(id)).count(), 1);
    assert!(table.is_empty());
    assert!(table.by_user(key([10, 0, 1, 2], 1)).is_none());
}

#[test]
fn update_moves_keys_and_addresses() {
    let mut table = SessionTable::new(10);
    let (a, _) = table.insert(session([10, 9, 0, 1], 1, 2)).unwrap();
    let displaced = table
        .update(a, |s| {
            s.access.user = Some(key([10, 0, 0, 99], 77));
            s.ue_ipv4 = Some([10, 9, 9, 9].into());
        })
        .unwrap();
    assert!(displaced.is_empty());
    assert_eq!(table.by_user(key([10, 0, 0, 2], 2)), None);
    assert!(!table.is_tombstone(key([10, 0, 0, 2], 2), 0), "moved, not ended");
    assert_eq!(table.by_user(key([10, 0, 0, 99], 77)), Some((a, Direction::Downlink)));
    assert_eq!(table.by_ue_ip(IpAddr::from([10, 9, 0, 1])), None);
    assert_eq!(table.by_ue_ip(IpAddr::from([10, 9, 9, 9])), Some(a));
    assert_eq!(table.by_control(key([10, 0, 1, 1], 1), 5, IpAddr::from([10, 0, 0, 1])), Some(a));
}

#[test]
fn gtpv0_contexts_are_found_by_tid_only() {
    let mut table = SessionTable::new(10);
    let mut v0 = session([10, 9, 0, 1], 1, 2);
    v0.tid = Some(0x1234);
    let (a, _) = table.insert(v0).unwrap();
    assert_eq!(table.by_tid(0x1234), Some(a));
    assert_eq!(table.by_user(key([10, 0, 1, 2], 1)), None);
    let mut again = session([10, 9, 0, 2], 3, 4);
    again.tid = Some(0x1234);
    let (b, displaced) = table.insert(again).unwrap();
    assert_eq!(displaced.len(), 1);
    assert_eq!(table.by_tid(0x1234), Some(b));
}

#[test]
fn the_index_survives_growth() {
    let mut table = SessionTable::new(100_000);
    for i in 0..20_000u32 {
        let mut s = session((0x0A00_0000 + i).to_be_bytes(), i, i);
        s.access.user = Some(key([10, 0, 0, (i % 7) as u8], i));
        s.core.user = Some(key([10, 0, 1, (i % 5) as u8], i));
        s.access.control = None;
        s.core.control = None;
        table.insert(s).unwrap();
    }
    for i in (0..20_000u32).step_by(97) {
        let (id, direction) = table.by_user(key([10, 0, 1, (i % 5) as u8], i)).unwrap();
        assert_eq!(direction, Direction::Uplink);
        assert_eq!(table.by_ue_ip(IpAddr::from((0x0A00_0000 + i).to_be_bytes())), Some(id));
    }
}
