//! The services the pay agent on the handset calls (ConsentService, DeviceService) and the operator's
//! device calls. The agent holds no API key: a call proves what it may do with what it holds (a token
//! and its nonce, a device key's signature, the payment PIN). Calls refused for a bad signature, a
//! wrong nonce or a wrong PIN are counted by the server's [`AuthGuard`] and slowed per peer, as failed
//! authentications are.
use crate::auth::Kind;
use crate::guard::AuthGuard;
use crate::ledger::{self, ConfirmOutcome, EnrollmentOutcome, Ledger, LedgerError};
use crate::service::{authenticate, decline_to_pb, parse_id, state_to_pb};
use gtpcharge_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ConsentApi {
    pub ledger: Ledger,
    pub guard: Arc<AuthGuard>,
}

pub struct DeviceApi {
    pub ledger: Ledger,
    pub guard: Arc<AuthGuard>,
}

/// A refusal that a guesser would get (wrong nonce, bad signature, wrong PIN): counted and slowed.
async fn slowed<T>(guard: &AuthGuard, request_peer: Option<std::net::IpAddr>, why: &'static str, status: T) -> T {
    let now = u64::try_from(ledger::now_us()).unwrap_or(0);
    tokio::time::sleep(guard.failed(request_peer, now, why)).await;
    status
}

fn device_to_pb(device: &ledger::DeviceRow, with_msisdn: bool) -> pb::Device {
    pb::Device {
        device_id: device.id.to_string(),
        label: device.label.clone(),
        enrolled_at_us: device.enrolled_at_us,
        revoked_at_us: device.revoked_at_us.unwrap_or(0),
        public_key: device.public_key.clone(),
        msisdn: if with_msisdn { device.msisdn.clone() } else { String::new() },
    }
}

#[tonic::async_trait]
impl pb::consent_service_server::ConsentService for ConsentApi {
    async fn get_consent_prompt(
        &self,
        request: Request<pb::GetConsentPromptRequest>,
    ) -> Result<Response<pb::ConsentPrompt>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        let prompt = match self.ledger.consent_prompt(&r.token, &r.consent_nonce).await {
            Ok(prompt) => prompt,
            Err(LedgerError::NotFound(what)) => {
                return Err(slowed(&self.guard, peer, "unknown-consent", LedgerError::NotFound(what).into()).await)
            }
            Err(other) => return Err(other.into()),
        };
        let p = &prompt.purchase;
        Ok(Response::new(pb::ConsentPrompt {
            purchase_id: p.id.to_string(),
            service_provider_id: p.service_provider_id.to_string(),
            service_provider_name: prompt.service_provider_name.clone(),
            product_id: p.product_id.clone(),
            description: p.description.clone(),
            amount: p.amount,
            currency: p.currency.clone(),
            state: state_to_pb(p.state) as i32,
            hold_expires_at_us: p.hold_expires_at_us.unwrap_or(0),
            decline_reason: decline_to_pb(p.decline_reason) as i32,
        }))
    }

    async fn confirm_purchase(
        &self,
        request: Request<pb::ConfirmPurchaseRequest>,
    ) -> Result<Response<pb::ConfirmPurchaseResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        let device = parse_id(&r.device_id)?;
        let outcome = match self.ledger.confirm(device, &r.statement, &r.signature, &r.pin).await {
            Ok(outcome) => outcome,
            Err(e @ (LedgerError::PermissionDenied(_) | LedgerError::NotFound(_))) => {
                return Err(slowed(&self.guard, peer, "bad-confirmation", e.into()).await)
            }
            Err(other) => return Err(other.into()),
        };
        let (purchase, wrong_pin, tries_left) = match outcome {
            ConfirmOutcome::Settled(purchase) => (purchase, false, 0),
            ConfirmOutcome::WrongPin { purchase, tries_left } => {
                (slowed(&self.guard, peer, "wrong-pin", purchase).await, true, tries_left)
            }
        };
        Ok(Response::new(pb::ConfirmPurchaseResponse {
            purchase_id: purchase.id.to_string(),
            state: state_to_pb(purchase.state) as i32,
            decline_reason: decline_to_pb(purchase.decline_reason) as i32,
            wrong_pin,
            pin_tries_left: i32::try_from(tries_left).unwrap_or(0),
        }))
    }
}

#[tonic::async_trait]
impl pb::device_service_server::DeviceService for DeviceApi {
    async fn begin_enrollment(
        &self,
        request: Request<pb::BeginEnrollmentRequest>,
    ) -> Result<Response<pb::Enrollment>, Status> {
        let r = request.into_inner();
        let enrollment = self.ledger.begin_enrollment(&r.public_key, &r.label).await?;
        Ok(Response::new(pb::Enrollment {
            enrollment_id: enrollment.id.to_string(),
            token: enrollment.token,
            expires_at_us: enrollment.expires_at_us,
        }))
    }

    async fn complete_enrollment(
        &self,
        request: Request<pb::CompleteEnrollmentRequest>,
    ) -> Result<Response<pb::CompleteEnrollmentResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let r = request.into_inner();
        let id = parse_id(&r.enrollment_id)?;
        match self.ledger.complete_enrollment(id, &r.pin, &r.signature).await {
            Ok(EnrollmentOutcome::Enrolled(device)) => Ok(Response::new(pb::CompleteEnrollmentResponse {
                device: Some(device_to_pb(&device, false)),
                wrong_pin: false,
                pin_tries_left: 0,
            })),
            Ok(EnrollmentOutcome::WrongPin { tries_left }) => {
                let response = pb::CompleteEnrollmentResponse {
                    device: None,
                    wrong_pin: true,
                    pin_tries_left: i32::try_from(tries_left).unwrap_or(0),
                };
                Ok(Response::new(slowed(&self.guard, peer, "wrong-pin", response).await))
            }
            Err(e @ LedgerError::PermissionDenied(_)) => {
                Err(slowed(&self.guard, peer, "bad-enrollment", e.into()).await)
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let devices = self.ledger.list_devices(&request.into_inner().msisdn).await?;
        Ok(Response::new(pb::ListDevicesResponse { devices: devices.iter().map(|d| device_to_pb(d, true)).collect() }))
    }

    async fn revoke_device(&self, request: Request<pb::RevokeDeviceRequest>) -> Result<Response<pb::Device>, Status> {
        let caller = authenticate(&self.ledger, &self.guard, &request, Kind::Operator).await?;
        let id = parse_id(&request.into_inner().device_id)?;
        let device = self.ledger.revoke_device(id).await?;
        let actor = crate::audit::operator_key(&caller.key_id);
        self.ledger.audit(&actor, crate::audit::Action::RevokeDevice, &id.to_string(), "").await?;
        Ok(Response::new(device_to_pb(&device, true)))
    }
}
