//! Signed webhooks against a real HTTP server (hyper, on an ephemeral loopback port), with the endpoint
//! registered through the AccountService over gRPC, on SQLite and PostgreSQL: every change delivered and
//! signed with the secret SetWebhook returned, a failed answer retried with the same event id, both
//! secrets signing while a rotation overlaps, nothing lost across a restart of the API, and charging not
//! held up by an endpoint that does not answer.
use bytes::Bytes;
use gtpcharge_billing_api::webhooks::{verify, SIGNATURE_HEADER};
use gtpcharge_proto::v1 as pb;
use http_body_util::{BodyExt, Full};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod harness;
use harness::*;

/// What the receiver does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Answer(u16),
    /// Keep the request until `release` is called.
    Hold,
}

/// A request as received: its signature header and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Clone)]
struct Receiver {
    url: String,
    /// Every request: its signature header and body.
    received: Received,
    behaviour: Arc<Mutex<Behaviour>>,
    held: Arc<Mutex<usize>>,
    release: Arc<tokio::sync::Notify>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            url: format!("http://{}/hooks/gtpcharge", listener.local_addr().unwrap()),
            received: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            held: Arc::default(),
            release: Arc::default(),
        };
        let shared = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let header = request
                                .headers()
                                .get(SIGNATURE_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes().to_vec();
                            shared.received.lock().unwrap().push((header, body));
                            let behaviour = *shared.behaviour.lock().unwrap();
                            let status = match behaviour {
                                Behaviour::Answer(status) => status,
                                Behaviour::Hold => {
                                    *shared.held.lock().unwrap() += 1;
                                    shared.release.notified().await;
                                    *shared.held.lock().unwrap() -= 1;
                                    200
                                }
                            };
                            let mut response = hyper::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        receiver
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// The events received so far: (signature header, body as JSON).
    fn events(&self) -> Vec<(String, Vec<u8>, serde_json::Value)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(header, body)| (header.clone(), body.clone(), serde_json::from_slice(body).unwrap()))
            .collect()
    }

    /// Waits up to 20 s until `condition` holds for the events received.
    async fn wait_for(&self, what: &str, condition: impl Fn(&[(String, Vec<u8>, serde_json::Value)]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !condition(&self.events()) {
            assert!(std::time::Instant::now() < deadline, "waited 20 s for {what}; got {:?}", self.types());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn types(&self) -> Vec<String> {
        self.events().iter().map(|(_, _, e)| format!("{} {}", e["id"], e["type"])).collect()
    }
}

async fn set_webhook(h: &Harness, url: &str, overlap_s: i64) -> pb::Webhook {
    let request = pb::SetWebhookRequest { service_provider_id: h.sp_id.to_string(), url: url.into(), overlap_s };
    h.accounts().set_webhook(authed(&h.operator_key, request)).await.unwrap().into_inner()
}

fn purchase(key: &str) -> pb::CreatePurchaseRequest {
    pb::CreatePurchaseRequest {
        product_id: "song".into(),
        amount: 99,
        currency: "EUR".into(),
        expires_in_s: 600,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_change_is_posted_signed_with_the_secret_set_webhook_returned() {
    for (backend, h) in Harness::each_backend().await {
        let receiver = Receiver::start(Behaviour::Answer(200)).await;
        let webhook = set_webhook(&h, &receiver.url, 0).await;
        assert!(webhook.secret.starts_with("whsec_"), "{backend}");
        h.account("46700000011", 1_000).await;
        let created = h.purchases().create_purchase(authed(&h.sp_key, purchase("w-1"))).await.unwrap().into_inner();
        h.report(&created.token, "46700000011").await;
        receiver.wait_for("created and charged", |events| events.len() >= 2).await;
        // Deliveries run concurrently and are not ordered: in the order of the changes (the event ids).
        let mut events = receiver.events();
        events.sort_by_key(|(_, _, e)| {
            e["id"].as_str().unwrap_or_default().trim_start_matches("evt_").parse::<i64>().ok()
        });
        for (header, body, event) in &events {
            assert!(verify(&webhook.secret, header, body), "{backend}: {header}");
            assert!(!verify("whsec_wrong", header, body));
            assert!(event["id"].as_str().unwrap().starts_with("evt_"));
            assert!(event["created"].as_i64().unwrap() > 1_700_000_000);
            assert_eq!(event["data"]["id"], created.id.as_str());
            assert!(event["data"].get("consent_nonce").is_none());
        }
        let types: Vec<&str> = events.iter().map(|(_, _, e)| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["purchase.created", "purchase.charged"], "{backend}");
        assert_eq!(events[1].2["data"]["charged_msisdn"], "46700000011");
        let log = h
            .accounts()
            .get_webhook_log(authed(
                &h.operator_key,
                pb::GetWebhookLogRequest { service_provider_id: webhook.service_provider_id.clone(), limit: 0 },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(log.attempts.iter().filter(|a| a.status == 200).count() >= 2, "{backend}");
        // https or a loopback address only.
        let refused = h
            .accounts()
            .set_webhook(authed(
                &h.operator_key,
                pb::SetWebhookRequest {
                    service_provider_id: webhook.service_provider_id.clone(),
                    url: "http://sp.example/hooks".into(),
                    overlap_s: 0,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_500_is_retried_with_the_same_event_id_and_a_rotation_signs_with_both_secrets() {
    for (backend, h) in Harness::each_backend().await {
        let receiver = Receiver::start(Behaviour::Answer(500)).await;
        let first = set_webhook(&h, &receiver.url, 0).await;
        h.purchases().create_purchase(authed(&h.sp_key, purchase("r-1"))).await.unwrap();
        receiver.wait_for("a first attempt", |events| !events.is_empty()).await;
        receiver.set(Behaviour::Answer(200));
        receiver.wait_for("the retry", |events| events.len() >= 2).await;
        let events = receiver.events();
        assert_eq!(events[0].2["id"], events[1].2["id"], "{backend}: one event id across retries");
        let log = h.ledger.webhook_log(first.service_provider_id.parse().unwrap(), 10).await.unwrap();
        let statuses: Vec<i64> = log.iter().rev().map(|a| a.status).collect();
        assert_eq!(&statuses[..2], [500, 200], "{backend}");
        assert_eq!(h.ledger.webhook_backlog().await.unwrap(), 0);

        // Rotation: the new secret and, during the overlap, the old one both sign.
        let rotated = set_webhook(&h, &receiver.url, 3600).await;
        assert_ne!(rotated.secret, first.secret);
        assert!(rotated.previous_secret_valid_until_us > 0);
        let before = receiver.events().len();
        h.purchases().create_purchase(authed(&h.sp_key, purchase("r-2"))).await.unwrap();
        receiver.wait_for("the rotated event", |events| events.len() > before).await;
        let (header, body, _) = receiver.events().pop().unwrap();
        assert!(
            verify(&rotated.secret, &header, &body) && verify(&first.secret, &header, &body),
            "{backend}: {header}"
        );
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_in_the_outbox_survive_a_restart_of_the_api() {
    for (backend, mut h) in Harness::each_backend().await {
        let receiver = Receiver::start(Behaviour::Answer(503)).await;
        set_webhook(&h, &receiver.url, 0).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let p = h.purchases().create_purchase(authed(&h.sp_key, purchase(&format!("o-{i}")))).await.unwrap();
            ids.push(p.into_inner().id);
        }
        receiver.wait_for("failed attempts", |events| events.len() >= 3).await;
        h.restart().await;
        receiver.set(Behaviour::Answer(200));
        // Every purchase's creation delivered after the restart (the failed ones retried by the new server).
        receiver
            .wait_for("all three after the restart", |events| {
                ids.iter().all(|id| {
                    events.iter().any(|(_, _, e)| e["data"]["id"] == id.as_str() && e["type"] == "purchase.created")
                })
            })
            .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while h.ledger.webhook_backlog().await.unwrap() != 0 {
            assert!(std::time::Instant::now() < deadline, "{backend}: the backlog did not drain");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_that_does_not_answer_does_not_hold_up_charging() {
    for (backend, h) in Harness::each_backend().await {
        let receiver = Receiver::start(Behaviour::Hold).await;
        set_webhook(&h, &receiver.url, 0).await;
        h.account("46700000012", 10_000).await;
        let first = h.purchases().create_purchase(authed(&h.sp_key, purchase("s-0"))).await.unwrap().into_inner();
        receiver.wait_for("a held request", |events| !events.is_empty()).await;
        // While the endpoint sits on its requests, purchases are created and charged.
        let mut charged = 0;
        for i in 1..=5 {
            let p = h
                .purchases()
                .create_purchase(authed(&h.sp_key, purchase(&format!("s-{i}"))))
                .await
                .unwrap()
                .into_inner();
            if outcome(&h.report(&p.token, "46700000012").await) == pb::SightingOutcome::Charged {
                charged += 1;
            }
        }
        assert_eq!(charged, 5, "{backend}");
        assert!(*receiver.held.lock().unwrap() >= 1, "{backend}: the endpoint still holds a request");
        receiver.set(Behaviour::Answer(200));
        receiver.release.notify_waiters();
        receiver
            .wait_for("the first purchase's creation", |events| {
                events.iter().any(|(_, _, e)| e["data"]["id"] == first.id.as_str())
            })
            .await;
        h.finish().await;
    }
}
