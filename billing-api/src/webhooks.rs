//! Signed webhooks: every purchase change POSTed to the SP's endpoint as JSON, signed like Stripe's
//! (`Gtpcharge-Signature: t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "<t>.<body>"))`, a second `v1` with the
//! previous secret while a rotation overlaps). At least once: the outbox is the ledger's change stream
//! (`ledger/webhooks.rs`); [`run`] queues what is new, claims what is due, sends each delivery on a task of
//! its own (at most [`IN_FLIGHT`] at once, each [`TIMEOUT`] at most), and records the attempt. Charging never
//! waits for any of it. The event id (`evt_<cursor>`) is the same on every retry, for the SP to deduplicate.
use crate::ledger::{AttemptResult, DueDelivery, Ledger, PurchaseRow, PurchaseState};
use crate::telemetry::Telemetry;
use http_body_util::Full;
use hyper::body::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deliveries sent at once, at most.
pub const IN_FLIGHT: usize = 16;
/// How long one attempt may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "gtpcharge-signature";

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// HMAC-SHA256 of `"<t>.<body>"` with `secret`, in lowercase hex.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(format!("{t}.").as_bytes());
    context.update(body);
    data_encoding::HEXLOWER.encode(context.sign().as_ref())
}

/// The signature header's value: `t=...` and a `v1=...` for each secret that signs now.
pub fn signature_header(t: i64, body: &[u8], secrets: &[&str]) -> String {
    let mut value = format!("t={t}");
    for secret in secrets {
        value.push_str(&format!(",v1={}", sign(secret, t, body)));
    }
    value
}

/// Whether a received body and signature header verify with `secret` (what an SP's endpoint does; also
/// the tests'): some `v1` of the header is the HMAC of `"<t>.<body>"`, compared in constant time.
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    signatures.iter().any(|hex| {
        data_encoding::HEXLOWER.decode(hex.as_bytes()).is_ok_and(|tag| ring::hmac::verify(&key, &message, &tag).is_ok())
    })
}

/// The event type of a change: `purchase.` and what happened.
pub fn event_type(purchase: &PurchaseRow) -> &'static str {
    match purchase.state {
        PurchaseState::Pending => "purchase.created",
        PurchaseState::Authorized => "purchase.authorized",
        PurchaseState::Charged if purchase.refunded_amount > 0 => "purchase.refunded",
        PurchaseState::Charged => "purchase.charged",
        PurchaseState::Declined => "purchase.declined",
        PurchaseState::Expired => "purchase.expired",
        PurchaseState::Cancelled => "purchase.cancelled",
        PurchaseState::Refunded => "purchase.refunded",
        PurchaseState::Voided => "purchase.voided",
    }
}

/// The JSON body of a delivery: `{"id", "type", "created", "data": {the purchase as the change left it}}`.
/// The consent nonce is not in it (it is for the SP's app, from CreatePurchase).
pub fn event_body(cursor: i64, at_us: i64, p: &PurchaseRow) -> Vec<u8> {
    let event = serde_json::json!({
        "id": format!("evt_{cursor}"),
        "type": event_type(p),
        "created": at_us.div_euclid(1_000_000),
        "data": {
            "id": p.id.to_string(),
            "token": p.token,
            "product_id": p.product_id,
            "description": p.description,
            "amount": p.amount,
            "currency": p.currency,
            "idempotency_key": p.idempotency_key,
            "state": p.state.as_str(),
            "created_at_us": p.created_at_us,
            "expires_at_us": p.expires_at_us,
            "charged_msisdn": p.charged_msisdn,
            "charged_at_us": p.charged_at_us,
            "refunded_amount": p.refunded_amount,
            "decline_reason": p.decline_reason.map(|r| r.as_str()),
            "consent": p.consent.as_str(),
            "capture_mode": p.capture_mode.as_str(),
            "authorized_amount": p.authorized_amount,
            "captured_amount": p.captured_amount,
        },
    });
    event.to_string().into_bytes()
}

/// The HTTP client: https verified against the system's CA certificates (`SSL_CERT_FILE` or
/// `SSL_CERT_DIR` name others), http only where the URL check allows it.
fn client() -> Result<Client, rustls::Error> {
    let native = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!("no CA certificates found (install ca-certificates): https webhooks will fail to verify");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

/// One attempt: the HTTP status (0 when there was no answer) and why it failed.
async fn send(client: &Client, delivery: &DueDelivery) -> (u16, String) {
    if let Err(e) = crate::ledger::validate_webhook_url(&delivery.endpoint.url) {
        return (0, e.to_string());
    }
    let body = event_body(delivery.cursor, delivery.at_us, &delivery.purchase);
    let now_us = crate::ledger::now_us();
    let t = now_us.div_euclid(1_000_000);
    let mut secrets = vec![delivery.endpoint.secret.as_str()];
    if let Some((previous, until)) = &delivery.endpoint.previous {
        if *until > now_us {
            secrets.push(previous.as_str());
        }
    }
    let request = hyper::Request::post(&delivery.endpoint.url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("gtpcharge-webhooks/", env!("CARGO_PKG_VERSION")))
        .header(SIGNATURE_HEADER, signature_header(t, &body, &secrets))
        .header("gtpcharge-event-id", format!("evt_{}", delivery.cursor))
        .body(Full::new(Bytes::from(body)));
    let request = match request {
        Ok(request) => request,
        Err(e) => return (0, format!("bad request: {e}")),
    };
    match tokio::time::timeout(TIMEOUT, client.request(request)).await {
        Err(_) => (0, format!("no answer within {} s", TIMEOUT.as_secs())),
        Ok(Err(e)) => (0, format!("{e}")),
        Ok(Ok(response)) => {
            let status = response.status();
            // The body is not read: only the status counts. Dropping the response closes the stream.
            (status.as_u16(), if status.is_success() { String::new() } else { format!("HTTP {status}") })
        }
    }
}

/// The sender: every half second, or sooner (but not within 100 ms of the last round) when the ledger
/// commits a change, queue what is new and send what is due. Runs until the server stops.
pub async fn run(ledger: Ledger, telemetry: Arc<Telemetry>) {
    let client = match client() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "no TLS client for webhooks: none is sent (they wait in the outbox)");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut counted = Instant::now() - Duration::from_secs(60);
    loop {
        // At most ten rounds a second however fast charges commit (each commit wakes the sender).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let changed = ledger.changed.notified();
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep(Duration::from_millis(400)) => {}
        }
        if let Err(error) = ledger.queue_webhook_deliveries().await {
            tracing::warn!(%error, "queueing webhook deliveries failed; will retry");
            continue;
        }
        if counted.elapsed() >= Duration::from_secs(5) {
            if let Ok(backlog) = ledger.webhook_backlog().await {
                telemetry.webhook_backlog(u64::try_from(backlog).unwrap_or(0));
            }
            counted = Instant::now();
        }
        let free = permits.available_permits();
        if free == 0 {
            continue;
        }
        let due = match ledger.claim_webhook_deliveries(free as i64).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "claiming webhook deliveries failed; will retry");
                continue;
            }
        };
        for delivery in due {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (client, ledger, telemetry) = (client.clone(), ledger.clone(), telemetry.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, error) = send(&client, &delivery).await;
                let duration_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
                match ledger.record_webhook_attempt(&delivery, status, &error, duration_us).await {
                    Ok(AttemptResult::Delivered) => telemetry.webhook("delivered"),
                    Ok(AttemptResult::Retry(_)) => {
                        telemetry.webhook("retry");
                        tracing::info!(event = delivery.cursor, sp = delivery.endpoint.service_provider_id, status, %error, "webhook not delivered; will retry");
                    }
                    Ok(AttemptResult::Abandoned) => {
                        telemetry.webhook("abandoned");
                        tracing::warn!(
                            event = delivery.cursor,
                            sp = delivery.endpoint.service_provider_id,
                            "webhook abandoned after 72 hours of retries"
                        );
                    }
                    // The lease runs out and the delivery is tried again: at least once.
                    Err(error) => tracing::warn!(%error, "recording a webhook attempt failed"),
                }
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_either_secret_and_only_over_the_body() {
        let body = br#"{"id":"evt_1"}"#;
        let header = signature_header(1_700_000_000, body, &["whsec_new", "whsec_old"]);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.matches("v1=").count(), 2);
        assert!(verify("whsec_new", &header, body));
        assert!(verify("whsec_old", &header, body));
        assert!(!verify("whsec_other", &header, body));
        assert!(!verify("whsec_new", &header, br#"{"id":"evt_2"}"#));
        assert!(!verify("whsec_new", &header.replace("t=1700000000", "t=1700000001"), body));
        // The HMAC of a known input (RFC 4231 test case 2: key "Jefe").
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(data_encoding::HEXLOWER.encode(tag.as_ref()), expected);
    }
}
