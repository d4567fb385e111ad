//! `gtpcharge serve`, `gtpcharge admin` and `gtpcharge purchase`: the billing API's process, its operator commands and an SP's client.
use crate::{AccountCommand, AdminCommand, DeviceCommand, NamedCreate, PurchaseCommand, SpCommand, WebhookCommand};
use anyhow::{Context, Result};
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::AccountKind;
use gtpcharge_billing_api::ledger::AccountUpdate;
use gtpcharge_billing_api::server::TlsFiles;
use gtpcharge_billing_api::Ledger;

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

async fn ledger(url: &str) -> Result<Ledger> {
    Ledger::open(url).await.with_context(|| format!("opening the ledger at {}", redact(url)))
}

pub fn serve(
    listen: std::net::SocketAddr,
    url: &str,
    tls: Option<TlsFiles>,
    charging: gtpcharge_billing_api::server::Charging,
    metrics_listen: Option<std::net::SocketAddr>,
) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    runtime()?.block_on(async {
        let ledger = ledger(url).await?;
        let listener =
            gtpcharge_billing_api::server::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
        tracing::info!(%listen, database = %redact(url), tls = tls.is_some(), "billing API serving");
        let guard = std::sync::Arc::new(gtpcharge_billing_api::guard::AuthGuard::default());
        let telemetry = std::sync::Arc::new(gtpcharge_billing_api::telemetry::Telemetry::default());
        if let Some(address) = metrics_listen {
            let exposition = crate::metrics::Exposition::default();
            crate::metrics::serve(address, exposition.clone())?;
            tracing::info!(%address, "metrics on /metrics");
            let (guard, telemetry, ledger) = (guard.clone(), telemetry.clone(), ledger.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    exposition.publish(telemetry.render(&ledger, &guard));
                }
            });
        }
        let shutdown = gtpcharge_billing_api::server::shutdown_signal();
        gtpcharge_billing_api::server::serve_with(ledger, listener, tls, shutdown, charging, guard, telemetry)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!("billing API stopped");
        Ok(())
    })
}

/// Who runs `admin`, for the audit trail: the Unix user (uid, and the login name the environment gives).
fn admin_actor() -> String {
    // /proc/self belongs to this process: its owner is the uid the process runs as.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok();
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_default();
    match uid {
        Some(uid) => format!("admin (uid {uid}{}{user})", if user.is_empty() { "" } else { ", " }),
        None => format!("admin ({user})"),
    }
}

pub fn admin(url: &str, command: AdminCommand) -> Result<()> {
    use gtpcharge_billing_api::audit::Action;
    runtime()?.block_on(async {
        let ledger = ledger(url).await?;
        let actor = admin_actor();
        match command {
            AdminCommand::Sp { command: SpCommand::Create { name, allow_network_consent } } => {
                let (id, secret) = ledger.create_service_provider(&name, allow_network_consent).await?;
                let detail = format!("name={name:?} api key {} network consent {allow_network_consent}", secret.key_id);
                ledger.audit(&actor, Action::CreateServiceProvider, &id.to_string(), &detail).await?;
                println!("service_provider_id\t{id}\nkey_id\t{}\napi_key\t{}", secret.key_id, secret.secret);
            }
            AdminCommand::Sp { command: SpCommand::Key { service_provider_id } } => {
                let secret = ledger.create_credential(Kind::ServiceProvider, Some(service_provider_id), "api key").await?;
                let detail = format!("sp key for sp {service_provider_id}");
                ledger.audit(&actor, Action::CreateKey, &secret.key_id, &detail).await?;
                println!("key_id\t{}\napi_key\t{}", secret.key_id, secret.secret);
            }
            AdminCommand::Sp { command: SpCommand::Webhook { command: WebhookCommand::Set { service_provider_id, url, overlap_hours } } } => {
                let endpoint = ledger.set_webhook(service_provider_id, &url, overlap_hours.saturating_mul(3600)).await?;
                ledger.audit(&actor, Action::SetWebhook, &service_provider_id.to_string(), &format!("url={url:?}")).await?;
                println!("webhook_url\t{}\nwebhook_secret\t{}", endpoint.url, endpoint.secret);
                if let Some((_, until)) = endpoint.previous {
                    println!("previous_secret_until\t{}", crate::jsonl::rfc3339(u64::try_from(until).unwrap_or(0)));
                }
            }
            AdminCommand::Sp { command: SpCommand::Webhook { command: WebhookCommand::Log { service_provider_id, limit } } } => {
                for a in ledger.webhook_log(service_provider_id, limit).await? {
                    let at = crate::jsonl::rfc3339(u64::try_from(a.at_us).unwrap_or(0));
                    println!("evt_{}\t{at}\t{}\t{}ms\t{}", a.cursor, a.status, a.duration_us / 1000, a.error);
                }
            }
            AdminCommand::Probe { command: NamedCreate::Create { name } } => {
                let secret = ledger.create_credential(Kind::Probe, None, &name).await?;
                ledger.audit(&actor, Action::CreateKey, &secret.key_id, &format!("probe key {name:?}")).await?;
                println!("key_id\t{}\nprobe_key\t{}", secret.key_id, secret.secret);
            }
            AdminCommand::Operator { command: NamedCreate::Create { name } } => {
                let secret = ledger.create_credential(Kind::Operator, None, &name).await?;
                ledger.audit(&actor, Action::CreateKey, &secret.key_id, &format!("operator key {name:?}")).await?;
                println!("key_id\t{}\noperator_key\t{}", secret.key_id, secret.secret);
            }
            AdminCommand::Revoke { key_id } => {
                ledger.revoke(&key_id).await?;
                ledger.audit(&actor, Action::RevokeKey, &key_id, "").await?;
                println!("revoked\t{key_id}");
            }
            AdminCommand::Audit { limit, before } => {
                for r in ledger.audit_records(limit.clamp(1, 100_000), before).await? {
                    let at = crate::jsonl::rfc3339(u64::try_from(r.at_us).unwrap_or(0));
                    println!("{}\t{at}\t{}\t{}\t{}\t{}", r.id, r.actor, r.action, r.subject, r.detail);
                }
            }
            AdminCommand::Account { command: AccountCommand::Set { msisdn, currency, balance, credit_limit, daily_cap, monthly_cap, barred } } => {
                let update = AccountUpdate {
                    msisdn,
                    kind: if credit_limit.is_some() { Some(AccountKind::Postpaid) } else if balance.is_some() { Some(AccountKind::Prepaid) } else { None },
                    currency,
                    balance,
                    credit_limit,
                    daily_cap,
                    monthly_cap,
                    barred,
                };
                let account = ledger.set_account(&update).await?;
                ledger.audit(&actor, Action::SetAccount, &update.msisdn, &update.describe()).await?;
                print_account(&account);
            }
            AdminCommand::Account { command: AccountCommand::Show { msisdn } } => print_account(&ledger.get_account(&msisdn).await?),
            AdminCommand::Account { command: AccountCommand::Pin { msisdn, pin_file } } => {
                let pin = read_pin(&pin_file)?;
                ledger.set_pin(&msisdn, &pin).await?;
                ledger.audit(&actor, Action::SetPin, &msisdn, "payment PIN set (unlocked)").await?;
                println!("pin_set\t{}", crate::logging::subscriber_id(&msisdn));
            }
            AdminCommand::Device { command: DeviceCommand::List { msisdn } } => {
                for d in ledger.list_devices(&msisdn).await? {
                    let revoked = d.revoked_at_us.map(|t| crate::jsonl::rfc3339(u64::try_from(t).unwrap_or(0)));
                    let enrolled = crate::jsonl::rfc3339(u64::try_from(d.enrolled_at_us).unwrap_or(0));
                    let key: String = d.public_key.iter().map(|b| format!("{b:02x}")).collect();
                    println!("{}\t{}\t{enrolled}\t{}\t{key}", d.id, d.label, revoked.as_deref().unwrap_or("-"));
                }
            }
            AdminCommand::Device { command: DeviceCommand::Revoke { device_id } } => {
                ledger.revoke_device(device_id).await?;
                ledger.audit(&actor, Action::RevokeDevice, &device_id.to_string(), "").await?;
                println!("revoked\tdevice {device_id}");
            }
            AdminCommand::CheckLedger => {
                let sums = ledger.sums_by_currency().await?;
                let mut balanced = true;
                for (currency, sum) in &sums {
                    println!("{currency}\t{sum}");
                    balanced &= *sum == 0;
                }
                anyhow::ensure!(balanced, "the ledger does not balance");
                println!("balanced");
            }
        }
        Ok(())
    })
}

/// `gtpcharge purchase ...`: a tonic client calling PurchaseService as an SP would.
pub fn purchase(url: &str, api_key: &str, command: PurchaseCommand) -> Result<()> {
    use gtpcharge_proto::v1 as pb;
    fn with_key<T>(api_key: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {api_key}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }
    runtime()?.block_on(async {
        let mut client = pb::purchase_service_client::PurchaseServiceClient::connect(url.to_owned())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let purchase = match command {
            PurchaseCommand::Create {
                product_id,
                description,
                amount,
                currency,
                idempotency_key,
                expires_in_s,
                consent,
                manual_capture,
                authorization_ttl_s,
            } => {
                let idempotency_key = match idempotency_key {
                    Some(key) => key,
                    None => gtpcharge_proto::Token::generate().map_err(|e| anyhow::anyhow!("{e}"))?.to_string(),
                };
                let request = pb::CreatePurchaseRequest {
                    product_id,
                    description,
                    amount,
                    currency,
                    expires_in_s,
                    idempotency_key,
                    consent: if consent == "device" { pb::Consent::Device } else { pb::Consent::Network } as i32,
                    capture_mode: if manual_capture { pb::CaptureMode::Manual } else { pb::CaptureMode::Automatic }
                        as i32,
                    authorization_ttl_s,
                };
                client.create_purchase(with_key(api_key, request)).await
            }
            PurchaseCommand::Capture { id, amount } => {
                client.capture_purchase(with_key(api_key, pb::CapturePurchaseRequest { id, amount })).await
            }
            PurchaseCommand::Void { id } => {
                client.void_purchase(with_key(api_key, pb::VoidPurchaseRequest { id })).await
            }
            PurchaseCommand::Get { key } => {
                let key = if key.starts_with("gc1") {
                    pb::get_purchase_request::Key::Token(key)
                } else {
                    pb::get_purchase_request::Key::Id(key)
                };
                let request = pb::GetPurchaseRequest { key: Some(key) };
                client.get_purchase(with_key(api_key, request)).await
            }
        };
        let p = purchase.map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?.into_inner();
        let state = pb::PurchaseState::try_from(p.state).map(|s| s.as_str_name()).unwrap_or("?");
        println!(
            "id\t{}\ntoken\t{}\nstate\t{state}\namount\t{} {}\ncharged_msisdn\t{}",
            p.id, p.token, p.amount, p.currency, p.charged_msisdn
        );
        if !p.consent_nonce.is_empty() {
            println!("consent_nonce\t{}", p.consent_nonce);
        }
        if p.authorized_amount > 0 {
            println!("authorized_amount\t{}\ncaptured_amount\t{}", p.authorized_amount, p.captured_amount);
        }
        Ok(())
    })
}

/// A PIN from a file (its first line), or standard input with `-`.
pub fn read_pin(path: &std::path::Path) -> Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the PIN from standard input")?;
        line
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading the PIN from {}", path.display()))?
    };
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

fn print_account(a: &gtpcharge_billing_api::ledger::AccountRow) {
    println!(
        "msisdn\t{}\nkind\t{}\ncurrency\t{}\nbalance\t{}\ncredit_limit\t{}\ndaily_cap\t{}\nmonthly_cap\t{}\nbarred\t{}\nspent_today\t{}\nspent_this_month\t{}",
        a.msisdn, a.kind, a.currency, a.balance, a.credit_limit, a.daily_cap, a.monthly_cap, a.barred, a.spent_today, a.spent_this_month
    );
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
        assert_eq!(redact("sqlite://ledger.sqlite?mode=rwc"), "sqlite://ledger.sqlite?mode=rwc");
    }
}
