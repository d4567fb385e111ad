//! The gRPC services: authentication, request limits and the conversion between protobuf messages and
//! the ledger's domain types (by hand, here and nowhere else).
use crate::audit::Action;
use crate::auth::{self, Caller, Kind};
use crate::group_commit::ReportQueue;
use crate::guard::AuthGuard;
use crate::ledger::{
    self, AccountKind, CaptureMode, Consent, DeclineReason, Ledger, LedgerError, Outcome, PurchaseState,
};
use gtpcharge_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Sightings in one ReportSightings call, at most.
pub const SIGHTINGS_PER_BATCH_MAX: usize = 1000;
const PAGE_SIZE_MAX: i64 = 500;

impl From<LedgerError> for Status {
    fn from(error: LedgerError) -> Status {
        match error {
            LedgerError::Invalid(m) => Status::invalid_argument(m),
            LedgerError::NotFound(what) => Status::not_found(format!("{what} not found")),
            LedgerError::Precondition(m) => Status::failed_precondition(m),
            LedgerError::AlreadyExists(m) => Status::already_exists(m),
            LedgerError::Unauthenticated => Status::unauthenticated("missing, unknown or revoked credential"),
            LedgerError::PermissionDenied(m) => Status::permission_denied(m),
            LedgerError::Database(e) => {
                tracing::error!(error = %e, "database error");
                Status::unavailable("the ledger is unavailable; retry")
            }
            LedgerError::Random => Status::internal("no randomness available"),
            LedgerError::Invariant(m) => {
                tracing::error!(invariant = %m, "refused to write a broken ledger");
                Status::internal("the ledger refused the change; nothing was written")
            }
            LedgerError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

pub(crate) async fn authenticate<T>(
    ledger: &Ledger,
    guard: &AuthGuard,
    request: &Request<T>,
    kind: Kind,
) -> Result<Caller, Status> {
    let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
    let checked = match auth::bearer(header) {
        None => Err(("no-key", Status::unauthenticated("send authorization: Bearer <key>"))),
        Some(secret) => match ledger.authenticate(secret).await {
            Ok(caller) => Ok(caller),
            Err(LedgerError::Unauthenticated) => Err(("unknown-key", LedgerError::Unauthenticated.into())),
            Err(other) => return Err(other.into()),
        },
    };
    let caller = match checked {
        Ok(caller) => caller,
        Err((why, status)) => {
            let now = u64::try_from(ledger::now_us()).unwrap_or(0);
            let delay = guard.failed(request.remote_addr().map(|a| a.ip()), now, why);
            tokio::time::sleep(delay).await;
            return Err(status);
        }
    };
    if caller.kind != kind {
        return Err(Status::permission_denied(format!("this service needs a {} credential", kind.as_str())));
    }
    Ok(caller)
}

/// Authenticates an SP call; returns the SP's id.
async fn authenticate_service_provider<T>(
    ledger: &Ledger,
    guard: &AuthGuard,
    request: &Request<T>,
) -> Result<i64, Status> {
    let caller = authenticate(ledger, guard, request, Kind::ServiceProvider).await?;
    caller.service_provider_id.ok_or_else(|| Status::permission_denied("key has no service provider"))
}

pub(crate) fn parse_id(text: &str) -> Result<i64, Status> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| Status::invalid_argument("id must be a positive decimal number"))
}

fn page(page_size: i32, page_token: &str) -> Result<(i64, Option<i64>), Status> {
    let size = match i64::from(page_size) {
        0 => 50,
        n if (1..=PAGE_SIZE_MAX).contains(&n) => n,
        _ => return Err(Status::invalid_argument(format!("page_size must be 1 to {PAGE_SIZE_MAX}"))),
    };
    let before = if page_token.is_empty() { None } else { Some(parse_id(page_token)?) };
    Ok((size, before))
}

pub(crate) fn state_to_pb(state: PurchaseState) -> pb::PurchaseState {
    match state {
        PurchaseState::Pending => pb::PurchaseState::Pending,
        PurchaseState::Charged => pb::PurchaseState::Charged,
        PurchaseState::Declined => pb::PurchaseState::Declined,
        PurchaseState::Expired => pb::PurchaseState::Expired,
        PurchaseState::Cancelled => pb::PurchaseState::Cancelled,
        PurchaseState::Refunded => pb::PurchaseState::Refunded,
        PurchaseState::Authorized => pb::PurchaseState::Authorized,
        PurchaseState::Voided => pb::PurchaseState::Voided,
    }
}

fn state_from_pb(state: pb::PurchaseState) -> Option<PurchaseState> {
    Some(match state {
        pb::PurchaseState::Unspecified => return None,
        pb::PurchaseState::Pending => PurchaseState::Pending,
        pb::PurchaseState::Charged => PurchaseState::Charged,
        pb::PurchaseState::Declined => PurchaseState::Declined,
        pb::PurchaseState::Expired => PurchaseState::Expired,
        pb::PurchaseState::Cancelled => PurchaseState::Cancelled,
        pb::PurchaseState::Refunded => PurchaseState::Refunded,
        pb::PurchaseState::Authorized => PurchaseState::Authorized,
        pb::PurchaseState::Voided => PurchaseState::Voided,
    })
}

pub(crate) fn decline_to_pb(reason: Option<DeclineReason>) -> pb::DeclineReason {
    match reason {
        Some(DeclineReason::InsufficientBalance) => pb::DeclineReason::InsufficientBalance,
        Some(DeclineReason::DailyCap) => pb::DeclineReason::DailyCap,
        Some(DeclineReason::MonthlyCap) => pb::DeclineReason::MonthlyCap,
        Some(DeclineReason::Barred) => pb::DeclineReason::Barred,
        Some(DeclineReason::UnknownSubscriber) => pb::DeclineReason::UnknownSubscriber,
        Some(DeclineReason::CurrencyMismatch) => pb::DeclineReason::CurrencyMismatch,
        Some(DeclineReason::SubscriberMismatch) => pb::DeclineReason::SubscriberMismatch,
        Some(DeclineReason::ConsentRefused) => pb::DeclineReason::ConsentRefused,
        Some(DeclineReason::PinLocked) => pb::DeclineReason::PinLocked,
        None => pb::DeclineReason::Unspecified,
    }
}

pub fn purchase_to_pb(p: &ledger::PurchaseRow) -> pb::Purchase {
    pb::Purchase {
        id: p.id.to_string(),
        token: p.token.clone(),
        product_id: p.product_id.clone(),
        description: p.description.clone(),
        amount: p.amount,
        currency: p.currency.clone(),
        idempotency_key: p.idempotency_key.clone(),
        state: state_to_pb(p.state) as i32,
        created_at_us: p.created_at_us,
        expires_at_us: p.expires_at_us,
        charged_msisdn: p.charged_msisdn.clone().unwrap_or_default(),
        charged_at_us: p.charged_at_us.unwrap_or(0),
        refunded_amount: p.refunded_amount,
        decline_reason: decline_to_pb(p.decline_reason) as i32,
        consent: match p.consent {
            Consent::Network => pb::Consent::Network,
            Consent::Device => pb::Consent::Device,
        } as i32,
        capture_mode: match p.capture_mode {
            CaptureMode::Automatic => pb::CaptureMode::Automatic,
            CaptureMode::Manual => pb::CaptureMode::Manual,
        } as i32,
        consent_nonce: p.consent_nonce.clone().unwrap_or_default(),
        authorized_amount: p.authorized_amount.unwrap_or(0),
        authorized_at_us: p.authorized_at_us.unwrap_or(0),
        hold_expires_at_us: p.hold_expires_at_us.unwrap_or(0),
        captured_amount: p.captured_amount.unwrap_or(0),
    }
}

fn webhook_to_pb(endpoint: &ledger::WebhookEndpoint) -> pb::Webhook {
    pb::Webhook {
        service_provider_id: endpoint.service_provider_id.to_string(),
        url: endpoint.url.clone(),
        secret: endpoint.secret.clone(),
        previous_secret_valid_until_us: endpoint.previous.as_ref().map_or(0, |(_, until)| *until),
    }
}

fn account_to_pb(a: &ledger::AccountRow) -> pb::Account {
    pb::Account {
        msisdn: a.msisdn.clone(),
        kind: match a.kind {
            AccountKind::Postpaid => pb::AccountKind::Postpaid,
            AccountKind::Prepaid => pb::AccountKind::Prepaid,
        } as i32,
        currency: a.currency.clone(),
        balance: a.balance,
        credit_limit: a.credit_limit,
        daily_cap: a.daily_cap,
        monthly_cap: a.monthly_cap,
        barred: a.barred,
        spent_today: a.spent_today,
        spent_this_month: a.spent_this_month,
    }
}

// -------------------------------------------------------------------------------------------- purchases

pub struct PurchaseApi {
    pub ledger: Ledger,
    pub guard: Arc<AuthGuard>,
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::PurchaseChange, Status>> + Send>>;

#[tonic::async_trait]
impl pb::purchase_service_server::PurchaseService for PurchaseApi {
    async fn create_purchase(
        &self,
        request: Request<pb::CreatePurchaseRequest>,
    ) -> Result<Response<pb::Purchase>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let r = request.into_inner();
        let consent = match pb::Consent::try_from(r.consent) {
            Ok(pb::Consent::Unspecified | pb::Consent::Network) => Consent::Network,
            Ok(pb::Consent::Device) => Consent::Device,
            Err(_) => return Err(Status::invalid_argument("unknown consent")),
        };
        let capture_mode = match pb::CaptureMode::try_from(r.capture_mode) {
            Ok(pb::CaptureMode::Unspecified | pb::CaptureMode::Automatic) => CaptureMode::Automatic,
            Ok(pb::CaptureMode::Manual) => CaptureMode::Manual,
            Err(_) => return Err(Status::invalid_argument("unknown capture mode")),
        };
        let new = ledger::NewPurchase {
            product_id: r.product_id,
            description: r.description,
            amount: r.amount,
            currency: r.currency,
            expires_in_s: r.expires_in_s,
            idempotency_key: r.idempotency_key,
            consent,
            capture_mode,
            authorization_ttl_s: r.authorization_ttl_s,
        };
        let purchase = self.ledger.create_purchase(sp, &new).await?;
        Ok(Response::new(purchase_to_pb(&purchase)))
    }

    async fn get_purchase(&self, request: Request<pb::GetPurchaseRequest>) -> Result<Response<pb::Purchase>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let purchase = match request.into_inner().key {
            Some(pb::get_purchase_request::Key::Id(id)) => {
                self.ledger.get_purchase(sp, Some(parse_id(&id)?), None).await?
            }
            Some(pb::get_purchase_request::Key::Token(token)) => {
                self.ledger.get_purchase(sp, None, Some(&token)).await?
            }
            None => return Err(Status::invalid_argument("give an id or a token")),
        };
        Ok(Response::new(purchase_to_pb(&purchase)))
    }

    async fn list_purchases(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> Result<Response<pb::ListPurchasesResponse>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let r = request.into_inner();
        let (size, before) = page(r.page_size, &r.page_token)?;
        let state = pb::PurchaseState::try_from(r.state).map_err(|_| Status::invalid_argument("unknown state"))?;
        let filter = ledger::PurchaseFilter {
            state: state_from_pb(state),
            product_id: (!r.product_id.is_empty()).then_some(r.product_id),
        };
        let rows = self.ledger.list_purchases(sp, &filter, size, before).await?;
        let next_page_token = if rows.len() as i64 == size {
            rows.last().map(|p| p.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListPurchasesResponse {
            purchases: rows.iter().map(purchase_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn cancel_purchase(
        &self,
        request: Request<pb::CancelPurchaseRequest>,
    ) -> Result<Response<pb::Purchase>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let purchase = self.ledger.cancel(sp, parse_id(&request.into_inner().id)?).await?;
        Ok(Response::new(purchase_to_pb(&purchase)))
    }

    async fn refund_purchase(
        &self,
        request: Request<pb::RefundPurchaseRequest>,
    ) -> Result<Response<pb::RefundPurchaseResponse>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let r = request.into_inner();
        let (purchase, refunded_now) =
            self.ledger.refund(sp, parse_id(&r.id)?, r.amount, &r.refund_key, &r.reason).await?;
        Ok(Response::new(pb::RefundPurchaseResponse { purchase: Some(purchase_to_pb(&purchase)), refunded_now }))
    }

    async fn capture_purchase(
        &self,
        request: Request<pb::CapturePurchaseRequest>,
    ) -> Result<Response<pb::Purchase>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let r = request.into_inner();
        let purchase = self.ledger.capture(sp, parse_id(&r.id)?, r.amount).await?;
        Ok(Response::new(purchase_to_pb(&purchase)))
    }

    async fn void_purchase(&self, request: Request<pb::VoidPurchaseRequest>) -> Result<Response<pb::Purchase>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let purchase = self.ledger.void(sp, parse_id(&request.into_inner().id)?).await?;
        Ok(Response::new(purchase_to_pb(&purchase)))
    }

    type WatchPurchasesStream = ChangeStream;

    async fn watch_purchases(
        &self,
        request: Request<pb::WatchPurchasesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let sp = authenticate_service_provider(&self.ledger, &self.guard, &request).await?;
        let mut cursor = request.into_inner().after_cursor;
        if cursor < 0 {
            return Err(Status::invalid_argument("after_cursor must not be negative"));
        }
        let ledger = self.ledger.clone();
        // Bounded: a slow client holds at most 64 changes here; the task then waits for it (or for it to
        // go away, which ends the task).
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let notified = ledger.changed.notified();
                let batch = match ledger.changes_after(sp, cursor, 256).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                let empty = batch.is_empty();
                for (next, purchase) in batch {
                    cursor = next;
                    let change = pb::PurchaseChange { cursor: next, purchase: Some(purchase_to_pb(&purchase)) };
                    if sender.send(Ok(change)).await.is_err() {
                        return; // the client went away
                    }
                }
                if empty {
                    // Woken by a local commit, or every second for changes made by other servers.
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = sender.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

// -------------------------------------------------------------------------------------------- sightings

pub struct SightingApi {
    pub ledger: Ledger,
    pub guard: Arc<AuthGuard>,
    /// Where sightings go to be charged, batched with other calls' (group commit).
    pub queue: ReportQueue,
    /// Set when the server has a client CA: probes must then present a certificate it signed.
    pub require_client_certificate: bool,
    /// Counts each sighting's outcome.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

#[tonic::async_trait]
impl pb::sighting_service_server::SightingService for SightingApi {
    async fn report_sightings(
        &self,
        request: Request<pb::ReportSightingsRequest>,
    ) -> Result<Response<pb::ReportSightingsResponse>, Status> {
        if self.require_client_certificate && request.peer_certs().is_none_or(|certificates| certificates.is_empty()) {
            return Err(Status::unauthenticated("this billing API requires probes to present a client certificate"));
        }
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Probe).await?;
        let sightings = request.into_inner().sightings;
        if sightings.is_empty() || sightings.len() > SIGHTINGS_PER_BATCH_MAX {
            return Err(Status::invalid_argument(format!("send 1 to {SIGHTINGS_PER_BATCH_MAX} sightings")));
        }
        // Validate the whole batch before touching anything: a bad batch changes nothing.
        for (index, s) in sightings.iter().enumerate() {
            ledger::validate_msisdn(&s.msisdn)
                .map_err(|e| Status::invalid_argument(format!("sighting {index}: {e}")))?;
            if s.token.len() > 64 {
                return Err(Status::invalid_argument(format!("sighting {index}: token too long")));
            }
        }
        let reports = sightings
            .into_iter()
            .map(|s| ledger::SightingReport { token: s.token, msisdn: s.msisdn, seen_at_us: s.seen_at_us })
            .collect();
        let results = self
            .queue
            .report(caller.key_id, reports)
            .await?
            .into_iter()
            .map(|r| {
                self.telemetry.charge(r.outcome);
                let outcome = match r.outcome {
                    Outcome::Charged => pb::SightingOutcome::Charged,
                    Outcome::AlreadyCharged => pb::SightingOutcome::AlreadyCharged,
                    Outcome::Declined => pb::SightingOutcome::Declined,
                    Outcome::Expired => pb::SightingOutcome::Expired,
                    Outcome::Cancelled => pb::SightingOutcome::Cancelled,
                    Outcome::UnknownToken => pb::SightingOutcome::UnknownToken,
                    Outcome::Refunded => pb::SightingOutcome::Refunded,
                    Outcome::Authorized => pb::SightingOutcome::Authorized,
                    Outcome::Voided => pb::SightingOutcome::Voided,
                    Outcome::Enrollment => pb::SightingOutcome::Enrollment,
                };
                pb::SightingResult {
                    outcome: outcome as i32,
                    decline_reason: decline_to_pb(r.decline_reason) as i32,
                    purchase_id: r.purchase_id.map(|id| id.to_string()).unwrap_or_default(),
                    charged_msisdn: r.charged_msisdn.unwrap_or_default(),
                    other_subscriber: r.other_subscriber,
                }
            })
            .collect();
        Ok(Response::new(pb::ReportSightingsResponse { results }))
    }
}

// -------------------------------------------------------------------------------------------- accounts

pub struct AccountApi {
    pub ledger: Ledger,
    pub guard: Arc<AuthGuard>,
}

#[tonic::async_trait]
impl pb::account_service_server::AccountService for AccountApi {
    async fn set_account(&self, request: Request<pb::SetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let r = request.into_inner();
        let kind = match pb::AccountKind::try_from(r.kind) {
            Ok(pb::AccountKind::Prepaid) => Some(AccountKind::Prepaid),
            Ok(pb::AccountKind::Postpaid) => Some(AccountKind::Postpaid),
            Ok(pb::AccountKind::Unspecified) => None,
            Err(_) => return Err(Status::invalid_argument("unknown account kind")),
        };
        let update = ledger::AccountUpdate {
            msisdn: r.msisdn,
            kind,
            currency: r.currency,
            balance: r.balance,
            credit_limit: r.credit_limit,
            daily_cap: r.daily_cap,
            monthly_cap: r.monthly_cap,
            barred: r.barred,
        };
        let account = self.ledger.set_account(&update).await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        self.ledger.audit(&actor, Action::SetAccount, &update.msisdn, &update.describe()).await?;
        Ok(Response::new(account_to_pb(&account)))
    }

    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        Ok(Response::new(account_to_pb(&self.ledger.get_account(&request.into_inner().msisdn).await?)))
    }

    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::Statement>, Status> {
        authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let r = request.into_inner();
        let (size, before) = page(r.page_size, &r.page_token)?;
        let (account, entries) = self.ledger.statement(&r.msisdn, size, before).await?;
        let next_page_token = if entries.len() as i64 == size {
            entries.last().map(|e| e.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::Statement {
            account: Some(account_to_pb(&account)),
            entries: entries
                .iter()
                .map(|e| pb::LedgerEntry {
                    id: e.id,
                    at_us: e.at_us,
                    kind: e.kind.clone(),
                    amount: e.amount,
                    currency: e.currency.clone(),
                    purchase_id: e.purchase_id.map(|id| id.to_string()).unwrap_or_default(),
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn create_service_provider(
        &self,
        request: Request<pb::CreateServiceProviderRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let r = request.into_inner();
        let name = r.name;
        let (id, secret) = self.ledger.create_service_provider(&name, r.allow_network_consent).await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        let detail = format!("name={name:?} api key {} network consent {}", secret.key_id, r.allow_network_consent);
        self.ledger.audit(&actor, Action::CreateServiceProvider, &id.to_string(), &detail).await?;
        Ok(Response::new(pb::Credential {
            key_id: secret.key_id,
            secret: secret.secret,
            service_provider_id: id.to_string(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let sp = parse_id(&request.into_inner().service_provider_id)?;
        let secret = self.ledger.create_credential(Kind::ServiceProvider, Some(sp), "api key").await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        self.ledger.audit(&actor, Action::CreateKey, &secret.key_id, &format!("sp key for sp {sp}")).await?;
        Ok(Response::new(pb::Credential {
            key_id: secret.key_id,
            secret: secret.secret,
            service_provider_id: sp.to_string(),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let key_id = request.into_inner().key_id;
        self.ledger.revoke(&key_id).await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        self.ledger.audit(&actor, Action::RevokeKey, &key_id, "").await?;
        Ok(Response::new(pb::RevokeKeyResponse {}))
    }

    async fn set_webhook(&self, request: Request<pb::SetWebhookRequest>) -> Result<Response<pb::Webhook>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let r = request.into_inner();
        let sp = parse_id(&r.service_provider_id)?;
        let endpoint = self.ledger.set_webhook(sp, &r.url, r.overlap_s).await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        self.ledger.audit(&actor, Action::SetWebhook, &sp.to_string(), &format!("url={:?}", endpoint.url)).await?;
        Ok(Response::new(webhook_to_pb(&endpoint)))
    }

    async fn get_webhook_log(
        &self,
        request: Request<pb::GetWebhookLogRequest>,
    ) -> Result<Response<pb::WebhookLog>, Status> {
        authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let r = request.into_inner();
        let limit = if r.limit == 0 { 20 } else { i64::from(r.limit) };
        let attempts = self.ledger.webhook_log(parse_id(&r.service_provider_id)?, limit).await?;
        Ok(Response::new(pb::WebhookLog {
            attempts: attempts
                .iter()
                .map(|a| pb::WebhookAttempt {
                    event_id: format!("evt_{}", a.cursor),
                    at_us: a.at_us,
                    status: i32::try_from(a.status).unwrap_or(0),
                    error: a.error.clone(),
                    duration_us: a.duration_us,
                })
                .collect(),
        }))
    }

    async fn set_pin(&self, request: Request<pb::SetPinRequest>) -> Result<Response<pb::SetPinResponse>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let r = request.into_inner();
        self.ledger.set_pin(&r.msisdn, &r.pin).await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        self.ledger.audit(&actor, Action::SetPin, &r.msisdn, "payment PIN set (unlocked)").await?;
        Ok(Response::new(pb::SetPinResponse {}))
    }
}
