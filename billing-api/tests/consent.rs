//! Consent on the handset and two-phase purchases, through real tonic clients against a real server, on
//! SQLite and PostgreSQL: device enrollment bound by a sighting, holds that count against the balance
//! and the caps, confirmation by a signed statement and the PIN, the PIN's lock, a key of another
//! subscriber, manual capture and void, hold expiry. Every test ends with the ledger balanced.
use gtpcharge_billing_api::signing::{enrollment_statement, ConsentStatement, DeviceKey};
use gtpcharge_proto::v1 as pb;
use pb::consent_service_client::ConsentServiceClient;
use pb::device_service_client::DeviceServiceClient;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

mod harness;
use harness::*;

const PIN: &str = "4711";

fn consent(h: &Harness) -> ConsentServiceClient<Channel> {
    ConsentServiceClient::new(h.channel.clone())
}

fn devices(h: &Harness) -> DeviceServiceClient<Channel> {
    DeviceServiceClient::new(h.channel.clone())
}

/// An account with a balance and a payment PIN.
async fn subscriber(h: &Harness, msisdn: &str, balance: i64) {
    h.account(msisdn, balance).await;
    h.ledger.set_pin(msisdn, PIN).await.unwrap();
}

/// A device key enrolled for `msisdn`: its enrollment token seen from that MSISDN, then completed
/// with the PIN. Returns the key and the device id.
async fn enrolled(h: &Harness, msisdn: &str, seed: u8) -> (DeviceKey, String) {
    let key = DeviceKey::from_seed([seed; 32]);
    let begin = pb::BeginEnrollmentRequest { public_key: key.public_key().to_vec(), label: "phone".into() };
    let enrollment = devices(h).begin_enrollment(begin).await.unwrap().into_inner();
    let id: i64 = enrollment.enrollment_id.parse().unwrap();
    let signature = key.sign(&enrollment_statement(id, &enrollment.token)).to_vec();
    let complete = |pin: &str, signature: Vec<u8>| pb::CompleteEnrollmentRequest {
        enrollment_id: enrollment.enrollment_id.clone(),
        pin: pin.into(),
        signature,
    };
    // Before the network has seen the token: nothing to bind yet.
    let early = devices(h).complete_enrollment(complete(PIN, signature.clone())).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{}", early.message());
    let seen = h.report(&enrollment.token, msisdn).await;
    assert_eq!(outcome(&seen), pb::SightingOutcome::Enrollment);
    // Another key's signature proves nothing.
    let forged = DeviceKey::from_seed([seed.wrapping_add(100); 32]).sign(&enrollment_statement(id, &enrollment.token));
    let refused = devices(h).complete_enrollment(complete(PIN, forged.to_vec())).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let done = devices(h).complete_enrollment(complete(PIN, signature.clone())).await.unwrap().into_inner();
    let device = done.device.expect("enrolled");
    assert!(device.msisdn.is_empty(), "the MSISDN is never told to the device");
    // Completing again returns the same device.
    let again = devices(h).complete_enrollment(complete(PIN, signature)).await.unwrap().into_inner();
    assert_eq!(again.device.unwrap().device_id, device.device_id);
    (key, device.device_id)
}

async fn create_device_purchase(h: &Harness, amount: i64, key: &str, ttl_s: i64) -> pb::Purchase {
    let request = pb::CreatePurchaseRequest {
        product_id: "level-5".into(),
        description: "Level 5".into(),
        amount,
        currency: "EUR".into(),
        expires_in_s: 600,
        idempotency_key: key.into(),
        consent: pb::Consent::Device as i32,
        authorization_ttl_s: ttl_s,
        ..Default::default()
    };
    h.purchases().create_purchase(authed(&h.sp_key, request)).await.unwrap().into_inner()
}

fn statement(purchase: &pb::Purchase, sp: &str, approve: bool) -> Vec<u8> {
    ConsentStatement {
        purchase_id: purchase.id.parse().unwrap(),
        amount: purchase.amount,
        currency: purchase.currency.clone(),
        service_provider_id: sp.parse().unwrap(),
        nonce: purchase.consent_nonce.clone(),
        approve,
        at_us: 1,
    }
    .to_bytes()
}

async fn confirm(
    h: &Harness,
    key: &DeviceKey,
    device: &str,
    statement: Vec<u8>,
    pin: &str,
) -> Result<pb::ConfirmPurchaseResponse, tonic::Status> {
    let request = pb::ConfirmPurchaseRequest {
        device_id: device.into(),
        signature: key.sign(&statement).to_vec(),
        statement,
        pin: pin.into(),
    };
    consent(h).confirm_purchase(request).await.map(|r| r.into_inner())
}

async fn prompt(h: &Harness, purchase: &pb::Purchase) -> pb::ConsentPrompt {
    let request =
        pb::GetConsentPromptRequest { token: purchase.token.clone(), consent_nonce: purchase.consent_nonce.clone() };
    consent(h).get_consent_prompt(request).await.unwrap().into_inner()
}

async fn balance(h: &Harness, msisdn: &str) -> i64 {
    h.ledger.get_account(msisdn).await.unwrap().balance
}

async fn state(h: &Harness, purchase: &pb::Purchase) -> pb::Purchase {
    let request = pb::GetPurchaseRequest { key: Some(pb::get_purchase_request::Key::Id(purchase.id.clone())) };
    h.purchases().get_purchase(authed(&h.sp_key, request)).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_purchase_is_held_then_captured_by_the_subscribers_signed_consent() {
    for (backend, h) in Harness::each_backend().await {
        subscriber(&h, "46700000001", 1_000).await;
        let (key, device) = enrolled(&h, "46700000001", 1).await;
        let purchase = create_device_purchase(&h, 250, "device-1", 0).await;
        assert_eq!(purchase.consent, pb::Consent::Device as i32);
        assert!(purchase.consent_nonce.len() >= 26, "{backend}: a nonce for the SP's app");
        let sp = prompt(&h, &purchase).await.service_provider_id;

        // A token alone (the nonce wrong or missing) prompts nobody.
        for nonce in ["", "not-the-nonce"] {
            let request = pb::GetConsentPromptRequest { token: purchase.token.clone(), consent_nonce: nonce.into() };
            let refused = consent(&h).get_consent_prompt(request).await.unwrap_err();
            assert_eq!(refused.code(), Code::NotFound, "{backend}");
        }
        // Before the sighting: pending, and a confirmation cannot settle it.
        assert_eq!(prompt(&h, &purchase).await.state, pb::PurchaseState::Pending as i32);
        let early = confirm(&h, &key, &device, statement(&purchase, &sp, true), PIN).await.unwrap_err();
        assert_eq!(early.code(), Code::FailedPrecondition, "{backend}");

        // The sighting authorizes: the amount is held, off the balance.
        let seen = h.report(&purchase.token, "46700000001").await;
        assert_eq!(outcome(&seen), pb::SightingOutcome::Authorized, "{backend}");
        assert_eq!(balance(&h, "46700000001").await, 750, "{backend}: the hold counts against the balance");
        let shown = prompt(&h, &purchase).await;
        assert_eq!(
            (shown.state, shown.amount, shown.currency.as_str(), shown.service_provider_name.as_str()),
            (pb::PurchaseState::Authorized as i32, 250, "EUR", "games")
        );
        assert!(shown.hold_expires_at_us > 0);
        // A statement that does not describe the purchase, or bytes other than those signed: refused.
        let mut wrong_amount = statement(&purchase, &sp, true);
        wrong_amount = String::from_utf8(wrong_amount).unwrap().replace("amount=250", "amount=1").into_bytes();
        let refused = confirm(&h, &key, &device, wrong_amount, PIN).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{backend}");
        let signed = statement(&purchase, &sp, true);
        let mut request = pb::ConfirmPurchaseRequest {
            device_id: device.clone(),
            signature: key.sign(&signed).to_vec(),
            statement: signed.clone(),
            pin: PIN.into(),
        };
        request.statement = String::from_utf8(signed).unwrap().replace("at_us=1", "at_us=2").into_bytes();
        let refused = consent(&h).confirm_purchase(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{backend}: the signature covers the exact bytes");

        // The right answer captures the hold once.
        let done = confirm(&h, &key, &device, statement(&purchase, &sp, true), PIN).await.unwrap();
        assert_eq!(done.state, pb::PurchaseState::Charged as i32, "{backend}");
        let again = confirm(&h, &key, &device, statement(&purchase, &sp, true), PIN).await.unwrap();
        assert_eq!(again.state, pb::PurchaseState::Charged as i32, "{backend}: repeated, the same outcome");
        let charged = state(&h, &purchase).await;
        assert_eq!((charged.captured_amount, charged.authorized_amount), (250, 250));
        assert_eq!(charged.charged_msisdn, "46700000001");
        assert_eq!(balance(&h, "46700000001").await, 750, "{backend}: charged once");
        let statement = h.ledger.statement("46700000001", 50, None).await.unwrap().1;
        let kinds: Vec<&str> = statement.iter().map(|e| e.kind.as_str()).collect();
        assert!(kinds.contains(&"hold") && !kinds.contains(&"release"), "{backend}: {kinds:?}");
        assert_eq!(h.count("consents").await, 1, "{backend}: one decision kept as evidence");
        // The SP's stream shows every transition: created, authorized, charged.
        let mut watch = h
            .purchases()
            .watch_purchases(authed(&h.sp_key, pb::WatchPurchasesRequest { after_cursor: 0 }))
            .await
            .unwrap()
            .into_inner();
        let mut states = Vec::new();
        while states.len() < 3 {
            let change = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
            let p = change.purchase.unwrap();
            if p.id == purchase.id {
                states.push(pb::PurchaseState::try_from(p.state).unwrap());
            }
        }
        use pb::PurchaseState::{Authorized, Charged, Pending};
        assert_eq!(states, [Pending, Authorized, Charged], "{backend}");
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_wrong_pins_lock_the_pin_and_void_the_hold() {
    for (backend, h) in Harness::each_backend().await {
        subscriber(&h, "46700000002", 1_000).await;
        let (key, device) = enrolled(&h, "46700000002", 2).await;
        let purchase = create_device_purchase(&h, 300, "device-2", 0).await;
        let sp = prompt(&h, &purchase).await.service_provider_id;
        h.report(&purchase.token, "46700000002").await;
        assert_eq!(balance(&h, "46700000002").await, 700);
        for tries_left in (1..=4).rev() {
            let wrong = confirm(&h, &key, &device, statement(&purchase, &sp, true), "0000").await.unwrap();
            assert!(wrong.wrong_pin, "{backend}");
            assert_eq!(wrong.pin_tries_left, tries_left, "{backend}");
            assert_eq!(wrong.state, pb::PurchaseState::Authorized as i32);
        }
        let locked = confirm(&h, &key, &device, statement(&purchase, &sp, true), "0000").await.unwrap();
        assert_eq!(locked.state, pb::PurchaseState::Declined as i32, "{backend}");
        assert_eq!(locked.decline_reason, pb::DeclineReason::PinLocked as i32);
        assert_eq!(balance(&h, "46700000002").await, 1_000, "{backend}: the hold went back");
        // Locked: even the right PIN approves nothing until the operator sets a new one.
        let next = create_device_purchase(&h, 100, "device-2b", 0).await;
        h.report(&next.token, "46700000002").await;
        let still = confirm(&h, &key, &device, statement(&next, &sp, true), PIN).await.unwrap();
        assert_eq!(still.decline_reason, pb::DeclineReason::PinLocked as i32, "{backend}");
        h.ledger.set_pin("46700000002", "9999").await.unwrap();
        let third = create_device_purchase(&h, 100, "device-2c", 0).await;
        h.report(&third.token, "46700000002").await;
        let paid = confirm(&h, &key, &device, statement(&third, &sp, true), "9999").await.unwrap();
        assert_eq!(paid.state, pb::PurchaseState::Charged as i32, "{backend}");
        assert_eq!(balance(&h, "46700000002").await, 900);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_of_another_subscriber_or_a_refusal_declines_and_releases_the_hold() {
    for (backend, h) in Harness::each_backend().await {
        subscriber(&h, "46700000003", 1_000).await;
        subscriber(&h, "46700000004", 1_000).await;
        let (own_key, own_device) = enrolled(&h, "46700000003", 3).await;
        let (other_key, other_device) = enrolled(&h, "46700000004", 4).await;
        let purchase = create_device_purchase(&h, 200, "device-3", 0).await;
        let sp = prompt(&h, &purchase).await.service_provider_id;
        h.report(&purchase.token, "46700000003").await;
        // The other subscriber's device, with the other subscriber's right PIN: declined.
        let mismatch = confirm(&h, &other_key, &other_device, statement(&purchase, &sp, true), PIN).await.unwrap();
        assert_eq!(mismatch.state, pb::PurchaseState::Declined as i32, "{backend}");
        assert_eq!(mismatch.decline_reason, pb::DeclineReason::SubscriberMismatch as i32);
        assert_eq!(balance(&h, "46700000003").await, 1_000, "{backend}");
        assert_eq!(balance(&h, "46700000004").await, 1_000, "{backend}");
        // The own device refusing: declined, consent refused, nothing moved.
        let refused_one = create_device_purchase(&h, 200, "device-3b", 0).await;
        h.report(&refused_one.token, "46700000003").await;
        let refusal = confirm(&h, &own_key, &own_device, statement(&refused_one, &sp, false), "").await.unwrap();
        assert_eq!(refusal.decline_reason, pb::DeclineReason::ConsentRefused as i32, "{backend}");
        assert_eq!(balance(&h, "46700000003").await, 1_000);
        // A revoked device confirms nothing.
        let revoke = pb::RevokeDeviceRequest { device_id: own_device.clone() };
        devices(&h).revoke_device(authed(&h.operator_key, revoke)).await.unwrap();
        let after = create_device_purchase(&h, 200, "device-3c", 0).await;
        h.report(&after.token, "46700000003").await;
        let revoked = confirm(&h, &own_key, &own_device, statement(&after, &sp, true), PIN).await.unwrap_err();
        assert_eq!(revoked.code(), Code::PermissionDenied, "{backend}");
        let listed = devices(&h)
            .list_devices(authed(&h.operator_key, pb::ListDevicesRequest { msisdn: "46700000003".into() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.devices.len(), 1);
        assert!(listed.devices[0].revoked_at_us > 0);
        // The device calls need an operator key.
        let anonymous = devices(&h).list_devices(pb::ListDevicesRequest { msisdn: "46700000003".into() }).await;
        assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enrollment_token_seen_from_two_lines_binds_nothing() {
    for (backend, h) in Harness::each_backend().await {
        subscriber(&h, "46700000005", 1_000).await;
        subscriber(&h, "46700000006", 1_000).await;
        let key = DeviceKey::from_seed([5; 32]);
        let begin = pb::BeginEnrollmentRequest { public_key: key.public_key().to_vec(), label: "x".into() };
        let enrollment = devices(&h).begin_enrollment(begin).await.unwrap().into_inner();
        h.report(&enrollment.token, "46700000005").await;
        h.report(&enrollment.token, "46700000006").await;
        let id: i64 = enrollment.enrollment_id.parse().unwrap();
        let request = pb::CompleteEnrollmentRequest {
            enrollment_id: enrollment.enrollment_id.clone(),
            pin: PIN.into(),
            signature: key.sign(&enrollment_statement(id, &enrollment.token)).to_vec(),
        };
        let refused = devices(&h).complete_enrollment(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{backend}: {}", refused.message());
        assert_eq!(h.count("devices").await, 0);
        // A PIN that is not digits is refused before any lookup; a key that is not one too.
        let bad = pb::BeginEnrollmentRequest { public_key: vec![1, 2, 3], label: "x".into() };
        assert_eq!(devices(&h).begin_enrollment(bad).await.unwrap_err().code(), Code::InvalidArgument);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_purchases_with_manual_capture_are_captured_up_to_the_hold_or_voided() {
    for (backend, h) in Harness::each_backend().await {
        h.capped_account("46700000007", 1_000, Some(500)).await;
        let manual = |key: &str, amount: i64| pb::CreatePurchaseRequest {
            product_id: "ride".into(),
            amount,
            currency: "EUR".into(),
            idempotency_key: key.into(),
            capture_mode: pb::CaptureMode::Manual as i32,
            ..Default::default()
        };
        let first = h.purchases().create_purchase(authed(&h.sp_key, manual("m-1", 300))).await.unwrap().into_inner();
        let seen = h.report(&first.token, "46700000007").await;
        assert_eq!(outcome(&seen), pb::SightingOutcome::Authorized, "{backend}");
        // The hold counts against the daily cap: 300 held + 300 more is over 500.
        let second = h.purchases().create_purchase(authed(&h.sp_key, manual("m-2", 300))).await.unwrap().into_inner();
        let capped = h.report(&second.token, "46700000007").await;
        assert_eq!(capped.decline_reason, pb::DeclineReason::DailyCap as i32, "{backend}");
        // More than the hold: refused. Part of it: captured, the rest back.
        let capture = |id: &str, amount: i64| pb::CapturePurchaseRequest { id: id.into(), amount };
        let over = h.purchases().capture_purchase(authed(&h.sp_key, capture(&first.id, 301))).await.unwrap_err();
        assert_eq!(over.code(), Code::FailedPrecondition, "{backend}");
        let captured =
            h.purchases().capture_purchase(authed(&h.sp_key, capture(&first.id, 200))).await.unwrap().into_inner();
        assert_eq!((captured.state, captured.captured_amount), (pb::PurchaseState::Charged as i32, 200));
        let repeated =
            h.purchases().capture_purchase(authed(&h.sp_key, capture(&first.id, 200))).await.unwrap().into_inner();
        assert_eq!(repeated.captured_amount, 200, "{backend}: idempotent");
        assert_eq!(balance(&h, "46700000007").await, 800, "{backend}: 100 of the hold came back");
        // A refund gives back at most what was captured.
        let refund = |amount: i64, key: &str| pb::RefundPurchaseRequest {
            id: first.id.clone(),
            amount,
            refund_key: key.into(),
            reason: String::new(),
        };
        let too_much = h.purchases().refund_purchase(authed(&h.sp_key, refund(250, "r1"))).await.unwrap_err();
        assert_eq!(too_much.code(), Code::FailedPrecondition, "{backend}");
        let all = h.purchases().refund_purchase(authed(&h.sp_key, refund(0, "r2"))).await.unwrap().into_inner();
        assert_eq!((all.refunded_now, all.purchase.unwrap().state), (200, pb::PurchaseState::Refunded as i32));
        // Void: the whole hold back, once.
        let third = h.purchases().create_purchase(authed(&h.sp_key, manual("m-3", 150))).await.unwrap().into_inner();
        h.report(&third.token, "46700000007").await;
        assert_eq!(balance(&h, "46700000007").await, 850);
        let void = |id: &str| pb::VoidPurchaseRequest { id: id.into() };
        let voided = h.purchases().void_purchase(authed(&h.sp_key, void(&third.id))).await.unwrap().into_inner();
        assert_eq!(voided.state, pb::PurchaseState::Voided as i32, "{backend}");
        h.purchases().void_purchase(authed(&h.sp_key, void(&third.id))).await.unwrap();
        assert_eq!(balance(&h, "46700000007").await, 1_000, "{backend}");
        let late = h.purchases().capture_purchase(authed(&h.sp_key, capture(&third.id, 0))).await.unwrap_err();
        assert_eq!(late.code(), Code::FailedPrecondition);
        // A device purchase is captured only by its subscriber.
        let device = create_device_purchase(&h, 100, "m-4", 0).await;
        h.report(&device.token, "46700000007").await;
        let by_sp = h.purchases().capture_purchase(authed(&h.sp_key, capture(&device.id, 0))).await.unwrap_err();
        assert_eq!(by_sp.code(), Code::FailedPrecondition, "{backend}");
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_that_expires_is_released() {
    for (backend, h) in Harness::each_backend().await {
        subscriber(&h, "46700000008", 1_000).await;
        let purchase = create_device_purchase(&h, 400, "expiring", 1).await;
        h.report(&purchase.token, "46700000008").await;
        assert_eq!(balance(&h, "46700000008").await, 600);
        // The server's sweeper runs every second; the hold lives one.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state(&h, &purchase).await.state != pb::PurchaseState::Expired as i32 {
            assert!(std::time::Instant::now() < deadline, "{backend}: the hold did not expire");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(balance(&h, "46700000008").await, 1_000, "{backend}: the balance is restored");
        assert_eq!(state(&h, &purchase).await.hold_expires_at_us, 0);
        h.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn network_consent_is_for_sps_the_operator_allowed() {
    for (backend, h) in Harness::each_backend().await {
        let (_, key) = h.ledger.create_service_provider("device-only", false).await.unwrap();
        let network = pb::CreatePurchaseRequest {
            product_id: "p".into(),
            amount: 10,
            currency: "EUR".into(),
            idempotency_key: "n".into(),
            ..Default::default()
        };
        let refused = h.purchases().create_purchase(authed(&key.secret, network.clone())).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{backend}");
        let device = pb::CreatePurchaseRequest { consent: pb::Consent::Device as i32, ..network };
        let created = h.purchases().create_purchase(authed(&key.secret, device)).await.unwrap().into_inner();
        assert_eq!(created.consent, pb::Consent::Device as i32);
        h.finish().await;
    }
}
