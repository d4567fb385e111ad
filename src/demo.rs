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
//! 5. a report: every purchase charged to the subscriber who sent its token, unattributed ones still
//!    pending, the ledger balanced. Exit 0 only if all of that holds.
use crate::driver::replay;
use crate::{Emit, ProbeArgs};
use anyhow::{bail, ensure, Context, Result};
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::ledger::{AccountUpdate, NewPurchase};
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
    SAMPLE_PLACES.iter().map(std::path::PathBuf::from).find(|path| path.is_file()).with_context(|| {
        format!("no sample capture at {} (name one: gtpcharge demo PATH)", SAMPLE_PLACES.join(" or "))
    })
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
    let truth = gtpcharge_pcapgen::generate(&gtpcharge_pcapgen::Scenario::sample(), &mut Vec::<(u64, Vec<u8>)>::new());

    let database = format!("sqlite://{}/ledger.sqlite?mode=rwc", workdir.display());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (ledger, probe_key, sp, address) = runtime.block_on(async {
        let ledger = Ledger::open(&database).await?;
        let (sp, _) = ledger.create_service_provider("demo games", true).await?;
        let probe = ledger.create_credential(Kind::Probe, None, "demo probe").await?;
        for (_, msisdn) in &truth.sightings {
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
        anyhow::Ok((ledger, probe.secret, sp, address))
    })?;
    eprintln!(
        "demo: billing API on {address} (ledger {}), {} accounts, {} purchases; replaying {}",
        workdir.join("ledger.sqlite").display(),
        truth.sightings.iter().map(|(_, m)| m).collect::<std::collections::BTreeSet<_>>().len(),
        truth.sightings.len() + truth.unattributed.len(),
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

    runtime.block_on(async {
        let mut wrong = 0;
        for (token, msisdn) in &truth.sightings {
            let p = ledger.get_purchase(sp, None, Some(&token.to_string())).await?;
            if p.state != gtpcharge_billing_api::ledger::PurchaseState::Charged || p.charged_msisdn.as_deref() != Some(msisdn.as_str()) {
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
            "demo: {} of {} purchases charged to the subscriber who sent the token; {} unattributed tokens left uncharged; ledger {}",
            truth.sightings.len() - wrong.min(truth.sightings.len()),
            truth.sightings.len(),
            truth.unattributed.len(),
            if balanced { "balanced" } else { "NOT BALANCED" }
        );
        Ok(wrong == 0 && balanced)
    })
}
