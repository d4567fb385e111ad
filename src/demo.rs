//! `gtpcharge demo`: the main job on a fresh machine, in one command. It replays the committed sample
//! capture (`pcaps/sample.pcap`) through the probe and into the billing API running on the embedded
//! SQLite default, then checks the result:
//!
//! 1. a fresh ledger in `gtpcharge-demo/ledger.sqlite`, a demo SP and probe credential;
//! 2. a prepaid account for every subscriber of the sample, and a pending purchase for every token the
//!    sample carries, imported with that token (the sample was generated from a fixed seed, so its tokens
//!    are known; the demo checks the file is that sample);
//! 3. `gtpcharge serve` in this process on a free local port;
//! 4. the replay with `--emit jsonl --billing-url`, exactly as an operator would run it;
//! 5. one purchase needs the subscriber's consent on the handset (DEVICE): the subscriber's first token
//!    in the sample is a device enrollment's, the second that purchase's; after the replay the demo
//!    completes the enrollment with the payment PIN and pays through the pay agent's own code (prompt
//!    from the API, PIN, signed statement, ConfirmPurchase), as an app would through `gtpcharge agent`;
//! 6. a report: every purchase charged to the subscriber who sent its token (the DEVICE one once
//!    confirmed), unattributed ones still pending, the ledger balanced. Exit 0 only if all of that holds.
use crate::driver::replay;
use crate::{Emit, ProbeArgs};
use anyhow::{bail, ensure, Context, Result};
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::{AccountUpdate, Consent, NewPurchase};
use gtpcharge_billing_api::Ledger;
use std::path::Path;

/// Where the sample is looked for when none is named: the repository's copy (run from its root), then
/// the Debian package's.
pub const SAMPLE_PLACES: [&str; 2] = ["pcaps/sample.pcap", "/usr/share/gtpcharge/sample.pcap"];

/// The sample named, or the first of [`SAMPLE_PLACES`] that exists.
pub fn sample_path(named: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    if let Some(path) = named {
        return Ok(path);
    }
    SAMPLE_PLACES
        .iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.is_file())
        .with_context(|| format!("no sample capture at {} (name one: gtpcharge demo PATH)", SAMPLE_PLACES.join(" or ")))
}

pub fn demo(sample: &Path, workdir: &Path) -> Result<bool> {
    let expected_bytes = {
        let reference = workdir.join("reference.pcap");
        let mut file = gtpcharge_pcapgen::PcapFile::create(&reference).context("writing the reference sample")?;
        gtpcharge_pcapgen::generate(&gtpcharge_pcapgen::Scenario::sample(), &mut file);
        file.finish()?;
        let bytes = std::fs::read(&reference)?;
        std::fs::remove_file(&reference)?;
        bytes
    };
    let actual = std::fs::read(sample).with_context(|| {
        format!(
            "{}: cannot read (the sample is in the repository: run from its root, or name it: gtpcharge demo PATH)",
            sample.display()
        )
    })?;
    if actual != expected_bytes {
        bail!("{} is not the committed sample (the demo knows the sample's tokens only)", sample.display());
    }
    let mut truth =
        gtpcharge_pcapgen::generate(&gtpcharge_pcapgen::Scenario::sample(), &mut Vec::<(u64, Vec<u8>)>::new());
    // The consent part: the first subscriber that sends two tokens enrolls with the first and pays the
    // second with DEVICE consent.
    let pair = (0..truth.sightings.len()).find_map(|i| {
        let msisdn = &truth.sightings[i].1;
        (i + 1..truth.sightings.len()).find(|j| truth.sightings[*j].1 == *msisdn).map(|j| (i, j))
    });
    let Some((first, second)) = pair else { bail!("no subscriber of the sample sends two tokens") };
    let payer = truth.sightings[first].1.clone();
    let device_token = truth.sightings.remove(second).0;
    let enrollment_token = truth.sightings.remove(first).0;
    let key = gtpcharge_billing_api::signing::DeviceKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let pin_file = workdir.join("demo-pin");
    std::fs::write(&pin_file, "1234\n")?;

    let database = format!("sqlite://{}/ledger.sqlite?mode=rwc", workdir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (ledger, probe_key, sp, address, device_purchase, enrollment) = runtime.block_on(async {
        let ledger = Ledger::open(&database).await?;
        let (sp, _) = ledger.create_service_provider("demo games", true).await?;
        let probe = ledger.create_credential(Kind::Probe, None, "demo probe").await?;
        for msisdn in truth.sightings.iter().map(|(_, m)| m).chain([&payer]) {
            let update = AccountUpdate {
                msisdn: msisdn.clone(),
                currency: "EUR".into(),
                balance: Some(10_000),
                ..Default::default()
            };
            ledger.set_account(&update).await?;
        }
        for (index, token) in
            truth.sightings.iter().map(|(t, _)| *t).chain(truth.unattributed.iter().copied()).enumerate()
        {
            let new = NewPurchase {
                product_id: format!("demo-item-{index}"),
                description: "demo purchase".into(),
                amount: 199,
                currency: "EUR".into(),
                expires_in_s: 3600,
                idempotency_key: format!("demo-{index}"),
                ..Default::default()
            };
            ledger.import_purchase(sp, &new, token).await?;
        }
        let device_purchase = NewPurchase {
            product_id: "demo-consent".into(),
            description: "a purchase the subscriber confirms on the handset".into(),
            amount: 199,
            currency: "EUR".into(),
            expires_in_s: 3600,
            idempotency_key: "demo-consent".into(),
            consent: Consent::Device,
            ..Default::default()
        };
        let device_purchase = ledger.import_purchase(sp, &device_purchase, device_token).await?;
        let enrollment = ledger.import_enrollment(&key.public_key(), "demo handset", enrollment_token).await?;
        ledger.set_pin(&payer, "1234").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server_ledger = ledger.clone();
        tokio::spawn(async move {
            if let Err(error) =
                gtpcharge_billing_api::server::serve(server_ledger, listener, None, std::future::pending()).await
            {
                eprintln!("gtpcharge: demo server: {error}");
            }
        });
        anyhow::Ok((ledger, probe.secret, sp, address, device_purchase, enrollment))
    })?;
    eprintln!(
        "demo: billing API on {address} (ledger {}), {} accounts, {} purchases; replaying {}",
        workdir.join("ledger.sqlite").display(),
        truth.sightings.iter().map(|(_, m)| m).collect::<std::collections::BTreeSet<_>>().len(),
        truth.sightings.len() + truth.unattributed.len() + 1,
        sample.display()
    );
    let args = ProbeArgs {
        emit: Emit::Jsonl,
        billing_url: Some(format!("http://{address}")),
        probe_key: Some(probe_key),
        spool_dir: workdir.join("spool"),
        ..ProbeArgs::defaults()
    };
    let replayed = replay(&[sample.to_path_buf()], &args)?;
    ensure!(replayed, "the replay did not deliver everything");

    // The handset's part, through the API as the pay agent does it: the enrollment completed with the PIN,
    // then the payment (prompt, PIN, signed statement).
    let confirmed = runtime.block_on(async {
        use gtpcharge_proto::v1 as pb;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?.connect().await?;
        let mut devices = pb::device_service_client::DeviceServiceClient::new(channel.clone());
        let statement = gtpcharge_billing_api::signing::enrollment_statement(enrollment.id, &enrollment.token);
        let request = pb::CompleteEnrollmentRequest {
            enrollment_id: enrollment.id.to_string(),
            pin: "1234".into(),
            signature: key.sign(&statement).to_vec(),
        };
        let device = devices.complete_enrollment(request).await?.into_inner().device.context("the enrollment")?;
        let agent = crate::agent::Agent::new(
            channel,
            key,
            device.device_id,
            crate::agent::PinSource::File(pin_file),
            std::time::Duration::from_secs(10),
        );
        let nonce = device_purchase.consent_nonce.clone().unwrap_or_default();
        let outcome = agent.pay(&device_purchase.token, &nonce).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let p = ledger.get_purchase(sp, Some(device_purchase.id), None).await?;
        let right = outcome.outcome == "charged"
            && p.state == gtpcharge_billing_api::ledger::PurchaseState::Charged
            && p.charged_msisdn.as_deref() == Some(payer.as_str());
        eprintln!(
            "demo: DEVICE purchase {}: enrollment bound by the probe's sighting, PIN, signed consent: {}{}",
            p.id,
            outcome.outcome,
            if right { "" } else { " (WRONG: expected charged to the subscriber who sent the token)" }
        );
        anyhow::Ok(right)
    })?;

    runtime.block_on(async {
        let mut wrong = usize::from(!confirmed);
        for (token, msisdn) in &truth.sightings {
            let p = ledger.get_purchase(sp, None, Some(&token.to_string())).await?;
            if p.state != gtpcharge_billing_api::ledger::PurchaseState::Charged
                || p.charged_msisdn.as_deref() != Some(msisdn.as_str())
            {
                eprintln!("demo: WRONG: {token} expected charged to {msisdn}, is {} {:?}", p.state, p.charged_msisdn);
                wrong += 1;
            }
        }
        for token in &truth.unattributed {
            let p = ledger.get_purchase(sp, None, Some(&token.to_string())).await?;
            if p.state != gtpcharge_billing_api::ledger::PurchaseState::Pending {
                eprintln!("demo: WRONG: unattributed {token} is {}", p.state);
                wrong += 1;
            }
        }
        let sums = ledger.sums_by_currency().await?;
        let balanced = sums.iter().all(|(_, s)| *s == 0);
        eprintln!(
            "demo: {} of {} purchases charged to the subscriber who sent the token (1 confirmed on the handset); \
             1 device enrolled; {} unattributed tokens left uncharged; ledger {}",
            truth.sightings.len() + 1 - wrong.min(truth.sightings.len() + 1),
            truth.sightings.len() + 1,
            truth.unattributed.len(),
            if balanced { "balanced" } else { "NOT BALANCED" }
        );
        Ok(wrong == 0 && balanced)
    })
}
