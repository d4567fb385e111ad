//! An SP's backend against the billing API, with the generated `gtpcharge-proto` crate: create a
//! purchase, hand its token to the app, and watch the purchase until it ends (charged, declined,
//! expired, cancelled, refunded). `--then-cancel` cancels it right after creating it, so the watch ends
//! without traffic. With GTPCHARGE_WEBHOOK_PORT and GTPCHARGE_WEBHOOK_SECRET set, it also receives the
//! purchase's webhooks on 127.0.0.1:PORT and verifies each signature (`webhook.rs`).
//! Run: examples/README.md.
use gtpcharge_proto::v1 as pb;
use pb::purchase_service_client::PurchaseServiceClient;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod webhook;

/// A request with the SP's key in the `authorization` metadata.
fn authed<T>(key: &str, message: T) -> Result<tonic::Request<T>, Box<dyn std::error::Error>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse()?);
    Ok(request)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("GTPCHARGE_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let key = std::env::var("GTPCHARGE_API_KEY").map_err(|_| "set GTPCHARGE_API_KEY to the SP's API key")?;
    let then_cancel = std::env::args().any(|arg| arg == "--then-cancel");
    let mut client = PurchaseServiceClient::connect(url).await?;
    let hooks = match (std::env::var("GTPCHARGE_WEBHOOK_PORT"), std::env::var("GTPCHARGE_WEBHOOK_SECRET")) {
        (Ok(port), Ok(secret)) => Some(webhook::receive(port.parse()?, secret)?),
        _ => None, // no webhook endpoint: the watch alone
    };

    // The idempotency key is the SP's own order reference: retrying with it never makes a second purchase.
    let order = format!("order-{}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros());
    let (product_id, description) = ("premium-week".into(), "Premium, one week".into());
    let (amount, currency, expires_in_s) = (299, "EUR".into(), 900);
    let create = pb::CreatePurchaseRequest {
        product_id,
        description,
        amount,
        currency,
        expires_in_s,
        idempotency_key: order,
        ..Default::default()
    };
    let purchase = client.create_purchase(authed(&key, create)?).await?.into_inner();
    println!("created purchase {} token {}", purchase.id, purchase.token);

    // Watch from the start; resume later with the last cursor seen.
    let mut changes =
        client.watch_purchases(authed(&key, pb::WatchPurchasesRequest { after_cursor: 0 })?).await?.into_inner();
    if then_cancel {
        client.cancel_purchase(authed(&key, pb::CancelPurchaseRequest { id: purchase.id.clone() })?).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    loop {
        let next = tokio::time::timeout_at(deadline, changes.message()).await.map_err(|_| "no end within 15 min")??;
        let Some(change) = next else { return Err("the watch ended before the purchase did".into()) };
        let Some(changed) = change.purchase.filter(|p| p.id == purchase.id) else { continue };
        let state = pb::PurchaseState::try_from(changed.state).unwrap_or(pb::PurchaseState::Unspecified);
        println!("cursor {} purchase {} {}", change.cursor, changed.id, state.as_str_name());
        if !matches!(state, pb::PurchaseState::Pending | pb::PurchaseState::Unspecified) {
            // The same end, pushed: wait for its verified webhook.
            while let Some(hooks) = &hooks {
                let event = hooks.recv_timeout(Duration::from_secs(30))?;
                if event["data"]["id"] == purchase.id.as_str() && event["data"]["state"] != "pending" {
                    println!(
                        "webhook {} {} verified",
                        event["id"].as_str().unwrap_or(""),
                        event["type"].as_str().unwrap_or("")
                    );
                    break;
                }
            }
            return Ok(());
        }
    }
}
