//! `gtpcharge agent`: the pay agent on the handset. An app asks it, on the loopback, to pay for a
//! purchase (its token and consent nonce); the agent fetches what to show from the billing API (never
//! from the app), asks the subscriber for the payment PIN, signs the answer with the device key and
//! sends it, then tells the app how the purchase settled, and nothing about the subscriber. The HTTP
//! side and its checks against web pages are `agent/http.rs`; enrollment of the device key is
//! [`enroll`].
use crate::cli::{AgentCommon, AgentEnroll, AgentServe};
use anyhow::{bail, Context, Result};
use gtpcharge_billing_api::signing::{self, ConsentStatement, DeviceKey};
use gtpcharge_proto::v1 as pb;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

mod http;

/// What the agent keeps in its state directory once enrolled.
#[derive(serde::Serialize, serde::Deserialize)]
struct Enrolled {
    device_id: String,
}

fn key_path(dir: &Path) -> PathBuf {
    dir.join("device.key")
}

fn device_path(dir: &Path) -> PathBuf {
    dir.join("device.json")
}

/// The device key: read from the state directory, or made and written there (0600) when `create`.
fn device_key(dir: &Path, create: bool) -> Result<DeviceKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = key_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = data_encoding::HEXLOWER
                .decode(text.trim().as_bytes())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .with_context(|| format!("{} is not a device key (64 hex digits)", path.display()))?;
            Ok(DeviceKey::from_seed(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = DeviceKey::generate().map_err(|e| anyhow::anyhow!("no randomness for a device key: {e}"))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(file, "{}", data_encoding::HEXLOWER.encode(&key.seed()))?;
            file.sync_all()?;
            Ok(key)
        }
        Err(e) => {
            Err(e).with_context(|| format!("reading the device key {} (run `gtpcharge agent enroll`)", path.display()))
        }
    }
}

/// Where PINs come from.
pub(crate) enum PinSource {
    /// The controlling terminal, without echo.
    Terminal,
    /// A file's first line, read again each time.
    File(PathBuf),
    /// A line at a time from an open descriptor.
    Descriptor(std::io::BufReader<std::fs::File>),
}

impl PinSource {
    fn new(common: &AgentCommon) -> Result<PinSource> {
        Ok(match (&common.pin_file, common.pin_fd) {
            (Some(path), _) => PinSource::File(path.clone()),
            (None, Some(fd)) => {
                // The descriptor through /dev/fd, which needs no unsafe code.
                let path = format!("/dev/fd/{fd}");
                PinSource::Descriptor(std::io::BufReader::new(
                    std::fs::File::open(&path).with_context(|| format!("--pin-fd {fd}: opening {path}"))?,
                ))
            }
            (None, None) => PinSource::Terminal,
        })
    }

    /// The subscriber's PIN, or `None` for a refusal (an empty line, or the end of the input).
    fn ask(&mut self, prompt: &str) -> Result<Option<String>> {
        let line = match self {
            PinSource::Terminal => rpassword::prompt_password(format!("{prompt}\nPIN (empty to refuse): "))
                .context("reading the PIN from the terminal")?,
            PinSource::File(path) => std::fs::read_to_string(&*path)
                .with_context(|| format!("reading the PIN from {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            PinSource::Descriptor(reader) => {
                let mut line = String::new();
                reader.read_line(&mut line).context("reading the PIN from --pin-fd")?;
                line
            }
        };
        let pin = line.trim();
        Ok((!pin.is_empty()).then(|| pin.to_owned()))
    }
}

/// A channel to the billing API (https:// with --billing-ca; http:// only on the loopback unless allowed).
fn channel(common: &AgentCommon) -> Result<Channel> {
    crate::secrets::check_client_url(&common.billing_url, common.allow_plaintext)?;
    let endpoint = crate::delivery::endpoint_for(&common.billing_url, common.billing_ca.as_deref(), None)?;
    Ok(endpoint.connect_lazy())
}

fn status(context: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{context}: {:?}: {}", status.code(), status.message())
}

/// `gtpcharge agent enroll`.
pub fn enroll(args: AgentEnroll) -> Result<()> {
    let dir = &args.common.state_dir;
    if let Ok(text) = std::fs::read_to_string(device_path(dir)) {
        let enrolled: Enrolled = serde_json::from_str(&text).context("reading device.json")?;
        println!("device_id\t{}\nalready_enrolled\ttrue", enrolled.device_id);
        return Ok(());
    }
    let key = device_key(dir, true)?;
    let mut pins = PinSource::new(&args.common)?;
    let runtime = crate::api_commands::runtime()?;
    // The channel's connection task needs the runtime.
    let _entered = runtime.enter();
    let channel = channel(&args.common)?;
    runtime.block_on(async {
        let mut devices = pb::device_service_client::DeviceServiceClient::new(channel);
        let begin = pb::BeginEnrollmentRequest { public_key: key.public_key().to_vec(), label: args.label.clone() };
        let enrollment = devices.begin_enrollment(begin).await.map_err(|s| status("BeginEnrollment", s))?.into_inner();
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "enrollment_id\t{}\nenrollment_token\t{}", enrollment.enrollment_id, enrollment.token)?;
            out.flush()?;
        }
        if let Some(domain) = &args.dns_domain {
            // The lookup itself is the message: the probe sees the token in the query. The answer
            // (most likely NXDOMAIN) does not matter.
            let name = format!("{}.{domain}", enrollment.token);
            let lookup = tokio::net::lookup_host((name.as_str(), 0)).await;
            tracing::info!(resolved = lookup.is_ok(), "enrollment token sent as a DNS lookup");
        }
        let id: i64 = enrollment.enrollment_id.parse().context("the server's enrollment id")?;
        let signature = key.sign(&signing::enrollment_statement(id, &enrollment.token)).to_vec();
        let deadline = Instant::now() + Duration::from_secs(args.wait_s);
        let mut pin = None;
        loop {
            if pin.is_none() {
                let asked = pins.ask("Enroll this device for payments: enter your payment PIN.")?;
                pin = Some(asked.context("enrollment refused (no PIN given)")?);
            }
            let request = pb::CompleteEnrollmentRequest {
                enrollment_id: enrollment.enrollment_id.clone(),
                pin: pin.clone().unwrap_or_default(),
                signature: signature.clone(),
            };
            match devices.complete_enrollment(request).await {
                Ok(response) => {
                    let response = response.into_inner();
                    if let Some(device) = response.device {
                        let text = serde_json::to_string(&Enrolled { device_id: device.device_id.clone() })?;
                        std::fs::write(device_path(dir), text).context("writing device.json")?;
                        println!("device_id\t{}", device.device_id);
                        return Ok(());
                    }
                    eprintln!("wrong PIN: {} tries left", response.pin_tries_left);
                    pin = None;
                }
                Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("not been seen") => {
                    if Instant::now() >= deadline {
                        bail!("the network did not see the enrollment token within {} s", args.wait_s);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(s) => return Err(status("CompleteEnrollment", s)),
            }
        }
    })
}

/// `gtpcharge agent`: serve the app on the loopback until SIGINT or SIGTERM.
pub fn serve(args: AgentServe) -> Result<()> {
    let dir = &args.common.state_dir;
    let key = device_key(dir, false)?;
    let enrolled: Enrolled = serde_json::from_str(
        &std::fs::read_to_string(device_path(dir)).context("reading device.json (run `gtpcharge agent enroll`)")?,
    )
    .context("reading device.json")?;
    let pins = PinSource::new(&args.common)?;
    let runtime = crate::api_commands::runtime()?;
    let _entered = runtime.enter();
    let channel = channel(&args.common)?;
    let agent = Agent::new(channel, key, enrolled.device_id, pins, Duration::from_secs(args.seen_wait_s));
    runtime.block_on(http::serve(agent, &args))
}

/// What a payment request needs: the server, the key, and the subscriber (one prompt at a time is the
/// HTTP side's lock).
pub(crate) struct Agent {
    consent: pb::consent_service_client::ConsentServiceClient<Channel>,
    key: DeviceKey,
    device_id: String,
    pins: std::sync::Mutex<PinSource>,
    seen_wait: Duration,
}

/// How a payment request ended, for the app: the purchase id and state, and why where declined.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PayOutcome {
    pub outcome: &'static str,
    pub purchase_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<&'static str>,
}

fn state_name(state: i32) -> &'static str {
    match pb::PurchaseState::try_from(state) {
        Ok(pb::PurchaseState::Pending) => "not-seen",
        Ok(pb::PurchaseState::Authorized) => "authorized",
        Ok(pb::PurchaseState::Charged) => "charged",
        Ok(pb::PurchaseState::Declined) => "declined",
        Ok(pb::PurchaseState::Expired) => "expired",
        Ok(pb::PurchaseState::Cancelled) => "cancelled",
        Ok(pb::PurchaseState::Refunded) => "refunded",
        Ok(pb::PurchaseState::Voided) => "voided",
        _ => "unknown",
    }
}

fn decline_name(reason: i32) -> Option<&'static str> {
    match pb::DeclineReason::try_from(reason) {
        Ok(pb::DeclineReason::Unspecified) | Err(_) => None,
        Ok(reason) => Some(match reason {
            pb::DeclineReason::SubscriberMismatch => "subscriber-mismatch",
            pb::DeclineReason::ConsentRefused => "consent-refused",
            pb::DeclineReason::PinLocked => "pin-locked",
            pb::DeclineReason::InsufficientBalance => "insufficient-balance",
            pb::DeclineReason::DailyCap => "daily-cap",
            pb::DeclineReason::MonthlyCap => "monthly-cap",
            pb::DeclineReason::Barred => "barred",
            pb::DeclineReason::UnknownSubscriber => "unknown-subscriber",
            pb::DeclineReason::CurrencyMismatch => "currency-mismatch",
            pb::DeclineReason::Unspecified => "unspecified",
        }),
    }
}

/// Why a payment request got no outcome.
#[derive(Debug)]
pub(crate) enum PayError {
    /// No purchase with this token and nonce (the same answer for both).
    Unknown,
    /// The billing API could not be asked.
    Unavailable(String),
}

impl Agent {
    /// An agent for an enrolled device (the demo plays the app's part with it, without the HTTP door).
    pub(crate) fn new(
        channel: Channel,
        key: DeviceKey,
        device_id: String,
        pins: PinSource,
        seen_wait: Duration,
    ) -> Agent {
        Agent {
            consent: pb::consent_service_client::ConsentServiceClient::new(channel),
            key,
            device_id,
            pins: std::sync::Mutex::new(pins),
            seen_wait,
        }
    }

    /// The whole payment: prompt from the server, wait until the network has seen the token, ask the
    /// subscriber, sign, confirm, and the outcome.
    pub(crate) async fn pay(&self, token: &str, nonce: &str) -> Result<PayOutcome, PayError> {
        let mut consent = self.consent.clone();
        let deadline = Instant::now() + self.seen_wait;
        let prompt = loop {
            let request = pb::GetConsentPromptRequest { token: token.to_owned(), consent_nonce: nonce.to_owned() };
            let prompt = match consent.get_consent_prompt(request).await {
                Ok(prompt) => prompt.into_inner(),
                Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => return Err(PayError::Unknown),
                Err(s) => return Err(PayError::Unavailable(format!("{:?}: {}", s.code(), s.message()))),
            };
            if prompt.state != pb::PurchaseState::Pending as i32 || Instant::now() >= deadline {
                break prompt;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        if prompt.state != pb::PurchaseState::Authorized as i32 {
            // Not seen in time, or settled already (a repeated request after a crash): no prompt.
            return Ok(PayOutcome {
                outcome: state_name(prompt.state),
                purchase_id: prompt.purchase_id,
                decline_reason: decline_name(prompt.decline_reason),
            });
        }
        let text = format!(
            "Pay {} {} to {} for {:?} ({})?",
            amount_text(prompt.amount, &prompt.currency),
            prompt.currency,
            prompt.service_provider_name,
            prompt.description,
            prompt.product_id
        );
        tracing::info!(purchase = %prompt.purchase_id, prompt = %text, "consent prompt shown");
        let parse =
            |text: &str| text.parse::<i64>().map_err(|_| PayError::Unavailable("the server sent a bad id".into()));
        loop {
            let pin = self.ask(&text).await?;
            let statement = ConsentStatement {
                purchase_id: parse(&prompt.purchase_id)?,
                amount: prompt.amount,
                currency: prompt.currency.clone(),
                service_provider_id: parse(&prompt.service_provider_id)?,
                nonce: nonce.to_owned(),
                approve: pin.is_some(),
                at_us: gtpcharge_billing_api::ledger::now_us(),
            }
            .to_bytes();
            let request = pb::ConfirmPurchaseRequest {
                device_id: self.device_id.clone(),
                signature: self.key.sign(&statement).to_vec(),
                statement,
                pin: pin.unwrap_or_default(),
            };
            let response = match consent.confirm_purchase(request).await {
                Ok(response) => response.into_inner(),
                Err(s) => return Err(PayError::Unavailable(format!("{:?}: {}", s.code(), s.message()))),
            };
            if response.wrong_pin {
                tracing::info!(tries_left = response.pin_tries_left, "wrong PIN");
                continue;
            }
            return Ok(PayOutcome {
                outcome: state_name(response.state),
                purchase_id: response.purchase_id,
                decline_reason: decline_name(response.decline_reason),
            });
        }
    }

    /// The PIN for this prompt, asked on a blocking thread (a terminal read blocks).
    async fn ask(&self, text: &str) -> Result<Option<String>, PayError> {
        let text = text.to_owned();
        tokio::task::block_in_place(|| {
            let mut pins = self.pins.lock().map_err(|_| PayError::Unavailable("the PIN source is broken".into()))?;
            pins.ask(&text).map_err(|e| PayError::Unavailable(format!("{e:#}")))
        })
    }
}

/// Minor units as the currency writes them (two decimals; the ledger stores minor units only).
fn amount_text(amount: i64, currency: &str) -> String {
    let decimals = if matches!(currency, "JPY" | "KRW" | "ISK" | "CLP" | "VND") { 0 } else { 2 };
    if decimals == 0 {
        return amount.to_string();
    }
    format!("{}.{:02}", amount / 100, (amount % 100).abs())
}
