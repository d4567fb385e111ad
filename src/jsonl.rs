//! The JSON lines contract (DESIGN.md section 3): one object per event, field names fixed, more fields
//! may be added. Absent identity values are `null`, never made up.
use gtpcharge_correlate::wire::location::Uli;
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

/// User Location Information as JSON: MCC and MNC as digit strings, then each identity the message had.
fn uli_json(uli: &Uli) -> Value {
    let mut map = Map::new();
    map.insert("mcc".into(), uli.plmn.mcc_text().into());
    map.insert("mnc".into(), uli.plmn.mnc_text().into());
    if let Some((lac, ci)) = uli.cgi {
        map.insert("cgi".into(), json!({"lac": lac, "ci": ci}));
    }
    if let Some((lac, sac)) = uli.sai {
        map.insert("sai".into(), json!({"lac": lac, "sac": sac}));
    }
    if let Some((lac, rac)) = uli.rai {
        map.insert("rai".into(), json!({"lac": lac, "rac": rac}));
    }
    if let Some(tac) = uli.tai {
        map.insert("tai".into(), json!({"tac": tac}));
    }
    if let Some(eci) = uli.ecgi {
        map.insert("ecgi".into(), json!({"eci": eci}));
    }
    if let Some(lac) = uli.lai {
        map.insert("lai".into(), json!({"lac": lac}));
    }
    Value::Object(map)
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
    map.insert("interface".into(), event.interface.as_str().into());
    if kind != "session_down" {
        // Where and how the subscriber is attached, from this event's own exchange (null: not in it).
        let a = &event.attachment;
        let imei = &event.identity.imei;
        let imeisv = (imei.digits().count() == 16).then(|| imei.to_string());
        map.insert("imeisv".into(), imeisv.map_or(Value::Null, Value::String));
        map.insert("rat_type".into(), a.rat_type.map_or(Value::Null, Value::from));
        map.insert("uli".into(), a.uli.as_ref().map_or(Value::Null, uli_json));
        map.insert("charging_id".into(), a.charging_id.map_or(Value::Null, Value::from));
        map.insert("serving_node".into(), a.serving_node.map_or(Value::Null, |ip| Value::String(ip.to_string())));
    }
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
            if let Some(file) = &s.evidence {
                map.insert("evidence".into(), file.as_str().into());
            }
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
