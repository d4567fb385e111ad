//! The agent's HTTP side: `POST /v1/pay {"token", "consent_nonce"}` on 127.0.0.1 and [::1] only.
//!
//! A server on the loopback can be reached by any web page the handset shows: a cross-site form or
//! fetch, or a page whose own name is made to resolve to 127.0.0.1 (DNS rebinding). So a request is
//! served only when:
//! - its Host is a loopback literal (`127.0.0.1`, `[::1]`, with or without the port): a rebound
//!   name is refused;
//! - its Origin is absent (an app) or on `--allow-origin`;
//! - it is JSON (`Content-Type: application/json`) and carries `X-Gtpcharge-Pay: 1`, which no form can
//!   send and which makes a browser ask first (a CORS preflight, answered only for allowed origins);
//! - its body has exactly the token and the nonce (a PIN in it is refused: PINs go to the agent's own
//!   prompt, never through the app);
//! - no other payment is being confirmed (one prompt at a time), and the rate limit is not reached.
use super::{Agent, PayError};
use crate::cli::AgentServe;
use anyhow::Result;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The custom header an app must send (it forces a browser's preflight).
const PAY_HEADER: &str = "x-gtpcharge-pay";
/// The largest request body read.
const BODY_MAX: usize = 4096;

struct Shared {
    agent: Agent,
    origins: Vec<String>,
    /// Held while a payment is confirmed: one prompt at a time.
    busy: tokio::sync::Mutex<()>,
    limit: RateLimit,
}

/// At most `per_minute` requests in any 60 s.
struct RateLimit {
    recent: Mutex<VecDeque<Instant>>,
    per_minute: usize,
}

impl RateLimit {
    /// Counts a request; false when the limit is reached (the request is not counted then).
    fn admit(&self, now: Instant) -> bool {
        let Ok(mut recent) = self.recent.lock() else { return false };
        while recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            recent.pop_front();
        }
        if recent.len() >= self.per_minute {
            return false;
        }
        recent.push_back(now);
        true
    }
}

/// Serves until SIGINT or SIGTERM.
pub(super) async fn serve(agent: Agent, args: &AgentServe) -> Result<()> {
    let shared = Arc::new(Shared {
        agent,
        origins: args.allow_origins.clone(),
        busy: tokio::sync::Mutex::new(()),
        limit: RateLimit { recent: Mutex::new(VecDeque::new()), per_minute: args.requests_per_minute as usize },
    });
    let mut listeners = Vec::new();
    for ip in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
        let address = SocketAddr::new(ip, args.port);
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                tracing::info!(%address, "pay agent listening");
                listeners.push(listener);
            }
            Err(error) => tracing::warn!(%address, %error, "cannot listen here"),
        }
    }
    anyhow::ensure!(
        !listeners.is_empty(),
        "the pay agent could listen on neither 127.0.0.1 nor [::1] port {}",
        args.port
    );
    for listener in listeners {
        tokio::spawn(accept(listener, shared.clone()));
    }
    gtpcharge_billing_api::server::shutdown_signal().await;
    tracing::info!("pay agent stopped");
    Ok(())
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%error, "connection ended");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, origin: Option<&str>, body: serde_json::Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    headers.insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    if let Some(value) = origin.and_then(|o| hyper::header::HeaderValue::from_str(o).ok()) {
        headers.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(hyper::header::VARY, hyper::header::HeaderValue::from_static("Origin"));
    }
    response
}

fn refuse(status: StatusCode, why: &str) -> Reply {
    reply(status, None, serde_json::json!({ "error": why }))
}

/// Whether a Host header names the loopback by a literal address (any port).
pub(crate) fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(all_digits) => inside,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if all_digits(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The body an app sends.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    token: String,
    consent_nonce: String,
}

/// What the headers allow: the Origin to echo back (CORS), or the refusal.
fn check_headers(request: &Request<Incoming>, origins: &[String]) -> Result<Option<String>, &'static str> {
    let header = |name| request.headers().get(name).map(|v| v.to_str().unwrap_or("\u{0}"));
    if !header(hyper::header::HOST).is_some_and(loopback_host) {
        return Err("the Host must be a loopback address (127.0.0.1 or [::1])");
    }
    let origin = match header(hyper::header::ORIGIN) {
        None => None,
        Some(origin) if origins.iter().any(|allowed| allowed == origin) => Some(origin.to_owned()),
        Some(_) => return Err("this Origin may not ask for payments"),
    };
    Ok(origin)
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Reply {
    let origin = match check_headers(&request, &shared.origins) {
        Ok(origin) => origin,
        Err(why) => return refuse(StatusCode::FORBIDDEN, why),
    };
    if request.uri().path() != "/v1/pay" {
        return refuse(StatusCode::NOT_FOUND, "not found");
    }
    if request.method() == Method::OPTIONS {
        // A preflight: only an allowed Origin (checked above) gets here with one.
        let Some(origin) = origin else { return refuse(StatusCode::FORBIDDEN, "a preflight needs an Origin") };
        let mut response = reply(StatusCode::NO_CONTENT, Some(&origin), serde_json::Value::Null);
        *response.body_mut() = Full::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(hyper::header::ACCESS_CONTROL_ALLOW_METHODS, hyper::header::HeaderValue::from_static("POST"));
        headers.insert(
            hyper::header::ACCESS_CONTROL_ALLOW_HEADERS,
            hyper::header::HeaderValue::from_static("content-type, x-gtpcharge-pay"),
        );
        headers.insert(hyper::header::ACCESS_CONTROL_MAX_AGE, hyper::header::HeaderValue::from_static("60"));
        return response;
    }
    if request.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    let json = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json");
    }
    if request.headers().get(PAY_HEADER).is_none_or(|v| v.as_bytes() != b"1") {
        return refuse(StatusCode::FORBIDDEN, "send X-Gtpcharge-Pay: 1");
    }
    if !shared.limit.admit(Instant::now()) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, "too many payment requests; wait a minute");
    }
    let body = match Limited::new(request.into_body(), BODY_MAX).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large or broken"),
    };
    if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.get("pin").is_some()) {
        return refuse(StatusCode::BAD_REQUEST, "never send a PIN: the agent asks the subscriber itself");
    }
    let pay: PayRequest = match serde_json::from_slice(&body) {
        Ok(pay) => pay,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "the body is {\"token\": ..., \"consent_nonce\": ...}"),
    };
    let Ok(_one_at_a_time) = shared.busy.try_lock() else {
        return refuse(StatusCode::CONFLICT, "another payment is being confirmed");
    };
    match shared.agent.pay(&pay.token, &pay.consent_nonce).await {
        Ok(outcome) => reply(StatusCode::OK, origin.as_deref(), serde_json::json!(outcome)),
        Err(PayError::Unknown) => refuse(StatusCode::NOT_FOUND, "no such purchase"),
        Err(PayError::Unavailable(why)) => {
            tracing::warn!(%why, "the billing API could not be asked");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "the payment server is unavailable; try again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{loopback_host, RateLimit};
    use std::time::{Duration, Instant};

    #[test]
    fn the_rate_limit_counts_a_sliding_minute() {
        let limit = RateLimit { recent: Default::default(), per_minute: 3 };
        let start = Instant::now();
        assert!((0..3).all(|i| limit.admit(start + Duration::from_secs(i))));
        assert!(!limit.admit(start + Duration::from_secs(10)), "the fourth in a minute");
        assert!(limit.admit(start + Duration::from_secs(60)), "the first one has left the minute");
        assert!(!limit.admit(start + Duration::from_secs(60)));
    }

    #[test]
    fn only_loopback_literals_are_hosts() {
        for host in ["127.0.0.1", "127.0.0.1:7353", "[::1]", "[::1]:7353", "127.8.9.10:1"] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "localhost",
            "localhost:7353",
            "evil.example:7353",
            "127.0.0.1.evil.example",
            "10.0.0.1:7353",
            "[::1]x",
            "[::1]:",
            "127.0.0.1:",
            "::1",
            "[fe80::1]:7353",
            "",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
