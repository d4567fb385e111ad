//! Keeping secrets and subscriber data off the wire and out of sight: the plaintext rule (no gRPC in the
//! clear off the loopback unless the operator says the network is trusted) and where secrets come from
//! (a file, the environment, or, with a warning, the command line, where every local user can read them
//! in the process list).
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::Path;

/// The flag that overrides the plaintext rule, for a network the operator trusts.
pub const ALLOW_PLAINTEXT: &str = "--allow-plaintext";

/// Whether a host (an IP literal, `[v6]`, or a name) is this machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The host of an `http://` or `https://` URL, and whether it is plaintext.
fn url_host(url: &str) -> Option<(bool, &str)> {
    let (plaintext, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else {
        (false, url.strip_prefix("https://")?)
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if authority.starts_with('[') {
        authority.split(']').next().map(|h| h.trim_start_matches('['))?
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    Some((plaintext, host))
}

/// The client side of the rule: an `http://` billing URL must name the loopback, unless allowed.
/// Returns whether plaintext off the loopback was allowed (to be said at start and in the summary).
pub fn check_client_url(url: &str, allow_plaintext: bool) -> Result<bool> {
    let Some((plaintext, host)) = url_host(url) else { return Ok(false) };
    if !plaintext || is_loopback_host(host) {
        return Ok(false);
    }
    if !allow_plaintext {
        bail!(
            "refusing to send keys and subscriber data in the clear to {url}: use https:// (with --billing-ca), \
             or {ALLOW_PLAINTEXT} on a network you trust"
        );
    }
    tracing::warn!(%url, "plaintext to a billing API off the loopback, allowed by {ALLOW_PLAINTEXT}: keys and subscriber data cross the network in the clear");
    Ok(true)
}

/// The server side: no listening without TLS off the loopback, unless allowed.
pub fn check_listen(listen: std::net::SocketAddr, tls: bool, allow_plaintext: bool) -> Result<()> {
    if tls || listen.ip().is_loopback() {
        return Ok(());
    }
    if !allow_plaintext {
        bail!(
            "refusing to serve without TLS on {listen}, off the loopback: give --tls-cert and --tls-key, \
             or {ALLOW_PLAINTEXT} on a network you trust"
        );
    }
    tracing::warn!(%listen, "serving without TLS off the loopback, allowed by {ALLOW_PLAINTEXT}: API keys, probe keys, MSISDNs and tokens cross the network in the clear");
    Ok(())
}

/// A secret from, in order: `--NAME-file PATH` (trailing newline dropped), then the flag or its
/// environment variable. A value typed on the command line works, with a warning; `from_command_line`
/// says whether clap took it from there.
pub fn secret(
    name: &str,
    value: Option<String>,
    from_command_line: bool,
    file: Option<&Path>,
) -> Result<Option<String>> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading --{name}-file {}", path.display()))?;
        let text = text.trim_end_matches(['\n', '\r']).to_string();
        if text.is_empty() {
            bail!("--{name}-file {} is empty", path.display());
        }
        return Ok(Some(text));
    }
    if value.is_some() && from_command_line {
        tracing::warn!(
            "--{name} was given on the command line, where every local user can read it in the process list: \
             use --{name}-file or the environment instead"
        );
    }
    Ok(value)
}

/// The secret arguments that were typed on the command line (not taken from the environment or a file).
static FROM_COMMAND_LINE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();

pub fn record_command_line_sources(matches: &clap::ArgMatches) {
    let mut given = Vec::new();
    let mut level = Some(matches);
    while let Some(m) = level {
        for id in ["probe_key", "api_key", "database_url"] {
            if let Ok(Some(clap::parser::ValueSource::CommandLine)) = m.try_get_raw(id).map(|_| m.value_source(id)) {
                given.push(id);
            }
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    let _ = FROM_COMMAND_LINE.set(given);
}

pub fn given_on_command_line(id: &str) -> bool {
    FROM_COMMAND_LINE.get().is_some_and(|ids| ids.contains(&id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_urls() {
        for host in ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["0.0.0.0", "192.0.2.1", "billing.example", "::", "10.0.0.1"] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert_eq!(url_host("http://127.0.0.1:50051"), Some((true, "127.0.0.1")));
        assert_eq!(url_host("http://[::1]:50051/x"), Some((true, "::1")));
        assert_eq!(url_host("https://billing.example"), Some((false, "billing.example")));
        assert!(check_client_url("http://127.0.0.1:50051", false).is_ok());
        assert!(check_client_url("https://192.0.2.1:50051", false).is_ok());
        let refused = check_client_url("http://192.0.2.1:50051", false).unwrap_err().to_string();
        assert!(refused.contains("--allow-plaintext"), "{refused}");
        assert!(check_client_url("http://192.0.2.1:50051", true).unwrap());
        assert!(check_listen("0.0.0.0:50051".parse().unwrap(), false, false).is_err());
        assert!(check_listen("0.0.0.0:50051".parse().unwrap(), true, false).is_ok());
        assert!(check_listen("127.0.0.1:50051".parse().unwrap(), false, false).is_ok());
        assert!(check_listen("[::]:50051".parse().unwrap(), false, true).is_ok());
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(secret("probe-key", None, false, Some(&file)).unwrap().as_deref(), Some("s3cret"));
        assert_eq!(secret("probe-key", Some("x".into()), true, None).unwrap().as_deref(), Some("x"));
        std::fs::write(&file, "\n").unwrap();
        assert!(secret("probe-key", None, false, Some(&file)).is_err());
        assert!(secret("probe-key", None, false, Some(&dir.path().join("missing"))).is_err());
    }
}
