//! Group commit for sightings. Every ReportSightings call, from every probe, goes through one queue; a
//! few workers each take whatever is waiting (whole calls, up to [`BATCH_SIGHTINGS`] sightings) and
//! report it in one ledger transaction ([`Ledger::report_batch`]). Under light load a call runs alone
//! as soon as it arrives, so batching adds no wait; under load many calls share one transaction, and
//! the database does one commit and a handful of statements for dozens of charges.
//!
//! A call is never split across transactions. A batch that fails is retried call by call, so one call's
//! failure (or a database error that hits one batch) is never reported to another call that would have
//! succeeded alone.
use crate::ledger::{Ledger, LedgerError, Result, SightingReport, SightingResult};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// By default, a worker stops taking calls into its batch once it holds this many sightings: the bound on
/// how long a call waits behind another's batch (`serve --group-commit-sightings`).
pub const BATCH_SIGHTINGS: usize = 32;
/// Transactions in flight at once by default: one can commit while the next is being decided. More workers make
/// smaller batches and more round trips; 2 gave the most charges per second on a 2-core machine
/// (`benches/billing-load.sh`; `serve --charging-workers`).
pub const WORKERS: usize = 2;
/// Calls waiting beyond this make new calls wait to be queued (backpressure on the probes).
const QUEUE_CALLS: usize = 4096;

struct Call {
    probe_key_id: String,
    sightings: Vec<SightingReport>,
    reply: oneshot::Sender<Result<Vec<SightingResult>>>,
}

/// The queue in front of the ledger's charging path. Workers stop when the queue is dropped.
#[derive(Clone)]
pub struct ReportQueue {
    sender: mpsc::Sender<Call>,
}

impl ReportQueue {
    /// Starts `workers` workers on the current tokio runtime, each taking waiting calls into one
    /// transaction up to `batch_sightings` sightings (a call is never split: one call always goes).
    pub fn start(ledger: Ledger, workers: usize, batch_sightings: usize) -> ReportQueue {
        let (sender, receiver) = mpsc::channel(QUEUE_CALLS);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(ledger.clone(), receiver.clone(), batch_sightings));
        }
        ReportQueue { sender }
    }

    /// Reports one call's sightings (validated by the caller); the results are in the same order.
    pub async fn report(&self, probe_key_id: String, sightings: Vec<SightingReport>) -> Result<Vec<SightingResult>> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Call { probe_key_id, sightings, reply })
            .await
            .map_err(|_| LedgerError::Unavailable("the charging queue has stopped"))?;
        answer.await.map_err(|_| LedgerError::Unavailable("the charging worker stopped"))?
    }
}

async fn work(ledger: Ledger, receiver: Arc<Mutex<mpsc::Receiver<Call>>>, batch_sightings: usize) {
    loop {
        let mut calls = Vec::new();
        {
            // One worker at a time waits for the next call and takes what is queued behind it.
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut sightings = first.sightings.len();
            calls.push(first);
            while sightings < batch_sightings {
                let Ok(call) = receiver.try_recv() else { break };
                sightings += call.sightings.len();
                calls.push(call);
            }
        }
        run(&ledger, calls).await;
    }
}

async fn run(ledger: &Ledger, calls: Vec<Call>) {
    let items: Vec<(&str, &SightingReport)> =
        calls.iter().flat_map(|c| c.sightings.iter().map(move |s| (c.probe_key_id.as_str(), s))).collect();
    match ledger.report_batch(&items).await {
        Ok(results) => {
            let mut results = results.into_iter();
            for call in calls {
                let mine: Vec<SightingResult> = results.by_ref().take(call.sightings.len()).collect();
                // A caller that went away has nothing to be told; its sightings are recorded all the same.
                let _ = call.reply.send(Ok(mine));
            }
        }
        Err(error) if calls.len() == 1 => {
            if let Some(call) = calls.into_iter().next() {
                let _ = call.reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(%error, calls = calls.len(), "a batch of sightings failed; reporting its calls one by one");
            for call in calls {
                let items: Vec<(&str, &SightingReport)> =
                    call.sightings.iter().map(|s| (call.probe_key_id.as_str(), s)).collect();
                let result = ledger.report_batch(&items).await;
                let _ = call.reply.send(result);
            }
        }
    }
}
