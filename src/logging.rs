//! Logs on stderr through `tracing`: text or JSON lines, level from `RUST_LOG` (default `info`).
//! Subscriber identities are personal data: [`subscriber_id`] masks MSISDN and IMSI unless the operator
//! asked for them in full (`--log-subscriber-ids`). Secrets (API keys, probe keys, database passwords)
//! are never passed to a log call.
use std::sync::atomic::{AtomicBool, Ordering};

static SHOW_SUBSCRIBER_IDS: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn init(format: Format, show_subscriber_ids: bool) {
    SHOW_SUBSCRIBER_IDS.store(show_subscriber_ids, Ordering::Relaxed);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal: a pipe, a file or journald gets plain text (and NO_COLOR
    // turns them off, https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}

/// One log line per event at `debug` (sightings, unattributed tokens, session changes): the JSON events
/// are the record; these are for following a probe live (`RUST_LOG=debug`). Identities masked as
/// [`subscriber_id`] says.
pub fn event(event: &gtpcharge_correlate::Event) {
    use gtpcharge_correlate::Event;
    match event {
        Event::Sighting(s) => tracing::debug!(
            token = %s.token,
            msisdn = %subscriber_id(&s.identity.msisdn.to_string()),
            imsi = %subscriber_id(&s.identity.imsi.to_string()),
            r#where = s.carrier.as_str(),
            "sighting"
        ),
        Event::Unattributed(u) => {
            tracing::debug!(token = %u.token, reason = u.reason, r#where = u.carrier.as_str(), "unattributed token")
        }
        Event::SessionUp(e) | Event::SessionUpdate(e) | Event::SessionDown(e) => tracing::debug!(
            msisdn = %subscriber_id(&e.identity.msisdn.to_string()),
            imsi = %subscriber_id(&e.identity.imsi.to_string()),
            reason = e.reason,
            teid_up = e.teid_up,
            teid_down = e.teid_down,
            "session"
        ),
    }
}

/// An MSISDN or IMSI for a log line: the first 5 digits (country and network) and the last 2, the rest
/// replaced by `*`, unless full identities were asked for.
pub fn subscriber_id(digits: &str) -> String {
    if SHOW_SUBSCRIBER_IDS.load(Ordering::Relaxed) {
        return digits.to_owned();
    }
    mask(digits)
}

fn mask(digits: &str) -> String {
    let chars: Vec<char> = digits.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let (head, tail) = (&chars[..5], &chars[chars.len() - 2..]);
    format!("{}{}{}", head.iter().collect::<String>(), "*".repeat(chars.len() - 7), tail.iter().collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_the_middle() {
        assert_eq!(mask("46701234567"), "46701****67");
        assert_eq!(mask("001010000000001"), "00101********01");
        assert_eq!(mask("12345"), "*****");
        assert!(!mask("46701234567").contains("1234"));
    }
}
