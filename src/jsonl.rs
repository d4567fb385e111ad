//! The JSON lines contract (DESIGN.md section 3): one object per event, field names fixed, more fields
//! may be added. Absent identity values are `null`, never made up.
use gtpcharge_correlate::{Event, Identity, SessionEvent};
use serde_json::{json, Map, Value};
use std::time::{Duration, UNIX_EPOCH};

/// RFC 3339 with microseconds, UTC, from a packet timestamp.
pub fn rfc3339(ts_us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(ts_us)).to_string()
}

fn digits(tbcd: &gtpcharge_correlate::wire::Tbcd) -> Value {
    if tbcd.is_empty() {
        Value::Null
    } else {
        Value::String(tbcd.to_string())
    }
}

fn identity_fields(map: &mut Map<String, Value>, identity: &Identity) {
    map.insert("imsi".into(), digits(&identity.imsi));
    map.insert("msisdn".into(), digits(&identity.msisdn));
    map.insert("imei".into(), digits(&identity.imei));
    map.insert("apn".into(), identity.apn.as_deref().map_or(Value::Null, |a| Value::String(a.into())));
    map.insert("ue_ip".into(), identity.ue_ip().map_or(Value::Null, |ip| Value::String(ip.to_string())));
    if let (Some(_), Some(v6)) = (identity.ue_ipv4, identity.ue_ipv6) {
        map.insert("ue_ipv6".into(), Value::String(v6.to_string()));
    }
}

fn session(kind: &str, event: &SessionEvent) -> Value {
    let mut map = Map::new();
    map.insert("event".into(), kind.into());
    map.insert("ts".into(), rfc3339(event.ts_us).into());
    identity_fields(&mut map, &event.identity);
    map.insert("teid_up".into(), event.teid_up.into());
    map.insert("teid_down".into(), event.teid_down.into());
    map.insert("gtp_version".into(), event.gtp_version.into());
    map.insert("reason".into(), event.reason.into());
    Value::Object(map)
}

/// The JSON object of one event.
pub fn to_json(event: &Event) -> Value {
    match event {
        Event::SessionUp(e) => session("session_up", e),
        Event::SessionUpdate(e) => session("session_update", e),
        Event::SessionDown(e) => session("session_down", e),
        Event::Sighting(s) => {
            let mut map = Map::new();
            map.insert("event".into(), "sighting".into());
            map.insert("ts".into(), rfc3339(s.ts_us).into());
            map.insert("token".into(), s.token.to_string().into());
            identity_fields(&mut map, &s.identity);
            map.insert("where".into(), s.carrier.as_str().into());
            map.insert("src".into(), s.source.to_string().into());
            map.insert("dst".into(), s.destination.to_string().into());
            let via = match s.attribution {
                gtpcharge_correlate::Attribution::Tunnel => "tunnel",
                gtpcharge_correlate::Attribution::UeIp => "ue-ip",
            };
            map.insert("via".into(), via.into());
            Value::Object(map)
        }
        Event::Unattributed(u) => json!({
            "event": "unattributed",
            "ts": rfc3339(u.ts_us),
            "token": u.token.to_string(),
            "ue_ip": u.ue_ip.to_string(),
            "reason": u.reason,
            "where": u.carrier.as_str(),
            "src": u.source.to_string(),
            "dst": u.destination.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_267_091_876_294_807), "2010-02-25T09:57:56.294807Z");
    }
}
