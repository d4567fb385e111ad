//! Delivery of sightings to the billing API, losing nothing.
//!
//! The probe thread hands each sighting to a bounded crossbeam channel (policy: **block** — a full queue
//! makes the probe wait rather than drop; on a live interface libpcap's own drop counter then shows it).
//! The delivery thread groups sightings into batches (at most `batch_max`, or what arrived within
//! `batch_wait`), and writes each batch to the spool **before** sending it: one file per batch in the spool
//! directory, written, `fsync`ed, renamed into place and the directory `fsync`ed, so a batch survives a
//! crash of the probe from the moment it is accepted. A batch file is deleted only after the billing API
//! answered it. Batches are sent oldest first with exponential backoff (0.1 s to 5 s) while the API
//! cannot be reached; a probe restarted with the same spool directory sends what it finds there first.
//! Redelivery is safe: the API charges a token at most once.
//!
//! The spool is bounded (`spool_max_bytes`). When it is full the delivery thread logs a loud error,
//! counts `spool_full`, and stops taking new sightings until a batch is delivered; the probe then waits
//! on the channel. Nothing is dropped silently.
use anyhow::{Context, Result};
use gtpcharge_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SightingRecord {
    pub token: String,
    pub msisdn: String,
    pub imsi: String,
    pub ue_ip: String,
    pub carrier: String,
    pub seen_at_us: i64,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The billing API's replicas, in the order tried: a failed call moves to the next.
    pub urls: Vec<String>,
    pub probe_key: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub queue_max: usize,
    /// PEM CA to trust for an https:// URL (else the system roots are not used: give the CA).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// What delivery did, for the summary.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStats {
    pub submitted: u64,
    pub delivered: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub batches_sent: u64,
    pub send_failures: u64,
    pub spool_full: u64,
    pub recovered_from_spool: u64,
    pub left_in_spool: u64,
    pub spool_batches: u64,
    pub spool_bytes: u64,
    pub spool_write_failures: u64,
    /// Sightings that could neither be written to the spool (disk full) nor delivered before the end, or
    /// that the delivery thread could not take at all (it had stopped on an error).
    pub lost: u64,
    pub last_error: Option<String>,
}

impl DeliveryStats {
    pub fn summary(&self) -> String {
        let outcomes: Vec<String> = self.outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "delivery submitted {}  delivered {}  recovered-from-spool {}  batches {}  send-failures {}  spool-full {}  spool-write-failures {}  left-in-spool {}  lost {}  outcomes [{}]{}",
            self.submitted,
            self.delivered,
            self.recovered_from_spool,
            self.batches_sent,
            self.send_failures,
            self.spool_full,
            self.spool_write_failures,
            self.left_in_spool,
            self.lost,
            outcomes.join(" "),
            self.last_error.as_ref().map(|e| format!("  last-error {e}")).unwrap_or_default()
        )
    }
}

pub struct Delivery {
    /// The delivery thread's counters, refreshed after every batch (for metrics).
    pub shared: std::sync::Arc<std::sync::Mutex<DeliveryStats>>,
    sender: Option<crossbeam_channel::Sender<SightingRecord>>,
    thread: Option<std::thread::JoinHandle<DeliveryStats>>,
    stop_after: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    /// Sightings `submit` could not hand over because the delivery thread had ended (counted as lost).
    refused: std::sync::atomic::AtomicU64,
}

impl Delivery {
    /// Opens the spool and starts the delivery thread.
    pub fn start(config: DeliveryConfig) -> Result<Delivery> {
        // The spool holds MSISDNs, IMSIs and tokens: a directory the probe creates is owner-only, and so
        // is every file in it, whatever the umask.
        if !config.spool_dir.exists() {
            std::fs::create_dir_all(&config.spool_dir)
                .with_context(|| format!("creating the spool directory {}", config.spool_dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.spool_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making the spool directory {} private", config.spool_dir.display()))?;
        }
        let probe = config.spool_dir.join(".write-test");
        std::fs::write(&probe, b"")
            .with_context(|| format!("the spool directory {} is not writable", config.spool_dir.display()))?;
        let _ = std::fs::remove_file(probe);
        // The address and the TLS files are checked here, before any packet is read: a wrong path fails
        // the start with its name, instead of stopping delivery once sightings are being taken.
        let endpoints = config.urls.iter().map(|url| endpoint(&config, url)).collect::<Result<Vec<_>>>()?;
        anyhow::ensure!(!endpoints.is_empty(), "--billing-url names no billing API");
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_max);
        let stop_after = std::sync::Arc::new(std::sync::Mutex::new(None));
        let deadline = stop_after.clone();
        let shared = std::sync::Arc::new(std::sync::Mutex::new(DeliveryStats::default()));
        let published = shared.clone();
        let thread = std::thread::Builder::new()
            .name("delivery".into())
            .spawn(move || run(config, endpoints, receiver, deadline, published))
            .context("starting the delivery thread")?;
        Ok(Delivery {
            shared,
            sender: Some(sender),
            thread: Some(thread),
            stop_after,
            refused: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Queues a sighting; waits while the queue is full. A sighting the delivery thread can no longer
    /// take (it stopped on an error) is counted, and the run ends with it as lost.
    pub fn submit(&self, record: SightingRecord) {
        let taken = self.sender.as_ref().is_some_and(|sender| sender.send(record).is_ok());
        if !taken {
            self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Stops taking sightings, keeps delivering for at most `drain` (what is left stays in the spool),
    /// and returns the counters.
    pub fn finish(mut self, drain: Duration) -> DeliveryStats {
        if let Ok(mut deadline) = self.stop_after.lock() {
            *deadline = Some(Instant::now() + drain);
        }
        self.sender.take();
        let mut stats = self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default();
        stats.lost += self.refused.load(std::sync::atomic::Ordering::Relaxed);
        stats
    }
}

struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    next_sequence: u64,
    /// Batch files waiting for an answer, oldest first: (path, bytes, records).
    pending: std::collections::VecDeque<(PathBuf, u64, Vec<SightingRecord>)>,
    bytes: u64,
}

impl Spool {
    fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "batch"))
            .collect();
        files.sort();
        let mut spool = Spool { dir: dir.into(), max_bytes, next_sequence: 0, pending: Default::default(), bytes: 0 };
        for path in files {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let records: Vec<SightingRecord> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(serde_json::from_str)
                .collect::<std::result::Result<_, _>>()
                .with_context(|| format!("{}: not a spool batch", path.display()))?;
            let sequence = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            spool.next_sequence = spool.next_sequence.max(sequence + 1);
            spool.bytes += text.len() as u64;
            spool.pending.push_back((path, text.len() as u64, records));
        }
        // Leftovers of a write cut by a crash (never renamed into place) were never acknowledged.
        for entry in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
            if entry.path().extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(spool)
    }

    fn is_full_for(&self, bytes: u64) -> bool {
        self.bytes + bytes > self.max_bytes
    }

    /// Writes a batch durably (all or nothing: a failed write leaves no file behind).
    fn append(&mut self, records: &[SightingRecord]) -> Result<()> {
        let mut text = String::new();
        for record in records {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        let name = format!("{:020}", self.next_sequence);
        self.next_sequence += 1;
        let temporary = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(format!("{name}.batch"));
        let written = (|| -> std::io::Result<()> {
            let mut file = private_file(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(error.into());
        }
        self.bytes += text.len() as u64;
        self.pending.push_back((path, text.len() as u64, records.to_vec()));
        Ok(())
    }

    fn acknowledge_oldest(&mut self) -> Result<()> {
        if let Some((path, bytes, _)) = self.pending.pop_front() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            self.bytes -= bytes;
        }
        Ok(())
    }
}

fn outcome_name(outcome: i32) -> &'static str {
    match pb::SightingOutcome::try_from(outcome) {
        Ok(pb::SightingOutcome::Charged) => "charged",
        Ok(pb::SightingOutcome::AlreadyCharged) => "already-charged",
        Ok(pb::SightingOutcome::Declined) => "declined",
        Ok(pb::SightingOutcome::Expired) => "expired",
        Ok(pb::SightingOutcome::Cancelled) => "cancelled",
        Ok(pb::SightingOutcome::UnknownToken) => "unknown-token",
        Ok(pb::SightingOutcome::Refunded) => "refunded",
        Ok(pb::SightingOutcome::Authorized) => "authorized",
        Ok(pb::SightingOutcome::Voided) => "voided",
        Ok(pb::SightingOutcome::Enrollment) => "enrollment",
        _ => "unspecified",
    }
}

/// The replicas of a `--billing-url` list (comma-separated), each trimmed, empty ones left out.
pub fn replica_urls(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect()
}

/// One billing API replica's endpoint: its URL and, for https://, the CA and client identity read from
/// their files (each error names the file). Connecting is lazy, in the delivery thread.
fn endpoint(config: &DeliveryConfig, url: &str) -> Result<tonic::transport::Endpoint> {
    let client = config.tls_client.as_ref().map(|(certificate, key)| (certificate.as_path(), key.as_path()));
    endpoint_for(url, config.tls_ca.as_deref(), client)
}

/// An endpoint for `url`: for https://, with the CA and the client identity (certificate, key) read
/// from their files.
pub fn endpoint_for(
    url: &str,
    tls_ca: Option<&std::path::Path>,
    tls_client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<tonic::transport::Endpoint> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("--billing-url {url} must start with http:// or https://");
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("--billing-url {url} is not a valid URL"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30));
    if url.starts_with("https://") {
        use gtpcharge_billing_api::server::read_pem as read;
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = tls_ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca, "billing CA (--billing-ca)")?));
        }
        if let Some((certificate, key)) = tls_client {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(certificate, "client certificate (--billing-client-cert)")?,
                read(key, "client key (--billing-client-key)")?,
            ));
        }
        endpoint = endpoint.tls_config(tls).context("the billing API's TLS settings")?;
    }
    Ok(endpoint)
}

/// The replicas' clients and the one in use: a failed call moves on to the next, round the list (every
/// replica charges against the same ledger, so a batch retried on another one is charged once).
struct Replicas {
    clients: Vec<pb::sighting_service_client::SightingServiceClient<tonic::transport::Channel>>,
    urls: Vec<String>,
    current: usize,
}

impl Replicas {
    fn failed(&mut self) {
        if self.clients.len() > 1 {
            let from = self.current;
            self.current = (self.current + 1) % self.clients.len();
            tracing::info!(from = %self.urls[from], to = %self.urls[self.current], "billing API call failed; trying the next replica");
        }
    }
}

fn run(
    config: DeliveryConfig,
    endpoints: Vec<tonic::transport::Endpoint>,
    receiver: crossbeam_channel::Receiver<SightingRecord>,
    stop_after: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
    published: std::sync::Arc<std::sync::Mutex<DeliveryStats>>,
) -> DeliveryStats {
    let mut stats = DeliveryStats::default();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gtpcharge: ERROR: delivery runtime: {error}");
            stats.last_error = Some(format!("runtime: {error}"));
            // Nothing can be spooled or sent: every sighting the run hands over is lost, and counted.
            stats.lost = receiver.iter().count() as u64;
            return stats;
        }
    };
    let mut spool = match Spool::open(&config.spool_dir, config.spool_max_bytes) {
        Ok(spool) => spool,
        Err(error) => {
            eprintln!("gtpcharge: ERROR: spool {}: {error:#}", config.spool_dir.display());
            stats.last_error = Some(format!("{error:#}"));
            // Without a spool nothing can be kept: every sighting the run hands over is lost, and
            // counted as such (the run then ends in an error).
            stats.lost = receiver.iter().count() as u64;
            return stats;
        }
    };
    stats.recovered_from_spool = spool.pending.iter().map(|(_, _, r)| r.len() as u64).sum();
    let mut replicas = {
        // connect_lazy starts each channel's worker task on the current runtime.
        let _inside = runtime.enter();
        Replicas {
            clients: endpoints
                .iter()
                .map(|endpoint| pb::sighting_service_client::SightingServiceClient::new(endpoint.connect_lazy()))
                .collect(),
            urls: config.urls.clone(),
            current: 0,
        }
    };
    let mut batch: Vec<SightingRecord> = Vec::new();
    // Set while the spool cannot be written (disk full): no new sightings are taken, the batch in memory
    // is retried, and sent directly when the API is up (it is not durable meanwhile, and says so).
    let mut spool_blocked = false;
    let mut closed = false;
    let mut backoff = Duration::from_millis(100);
    let mut retry_at = Instant::now();
    loop {
        // 1. Take sightings while the spool has room.
        if !closed && !spool_blocked {
            let wait = if spool.pending.is_empty() { config.batch_wait } else { Duration::from_millis(5) };
            let room = !spool.is_full_for(256 * batch.len().max(1) as u64);
            if room {
                match receiver.recv_timeout(wait) {
                    Ok(record) => {
                        stats.submitted += 1;
                        batch.push(record);
                        while batch.len() < config.batch_max {
                            match receiver.try_recv() {
                                Ok(record) => {
                                    stats.submitted += 1;
                                    batch.push(record);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => closed = true,
                }
            } else if stats.spool_full == 0 || stats.spool_full % 1000 == 0 {
                tracing::error!(
                    spool = %config.spool_dir.display(),
                    bytes = spool.bytes,
                    max_bytes = spool.max_bytes,
                    "spool full: waiting for the billing API before taking more sightings"
                );
                stats.spool_full += 1;
            } else {
                stats.spool_full += 1;
            }
        }
        // 2. A full batch, or whatever is there when the queue is idle or closed, goes to the spool.
        if !batch.is_empty() && (spool_blocked || batch.len() >= config.batch_max || closed || receiver.is_empty()) {
            match spool.append(&batch) {
                Ok(()) => {
                    batch.clear();
                    spool_blocked = false;
                }
                Err(error) => {
                    if stats.spool_write_failures % 50 == 0 {
                        tracing::error!(error = %format!("{error:#}"), sightings = batch.len(), "cannot write the spool; holding the batch in memory and taking no more sightings");
                    }
                    stats.spool_write_failures += 1;
                    stats.last_error = Some(format!("spool write: {error:#}"));
                    spool_blocked = true;
                    if spool.pending.is_empty() {
                        // Nothing on disk to deliver first: try the batch straight from memory.
                        if send(&runtime, &mut replicas, &config, &batch, &mut stats).is_ok() {
                            batch.clear();
                            spool_blocked = false;
                        } else {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            }
        }
        // 3. Send the oldest batch when the backoff allows.
        if let Some((_, _, records)) = spool.pending.front() {
            if Instant::now() >= retry_at {
                match send(&runtime, &mut replicas, &config, records, &mut stats) {
                    Ok(()) => {
                        if let Err(error) = spool.acknowledge_oldest() {
                            stats.last_error = Some(format!("{error:#}"));
                        }
                        backoff = Duration::from_millis(100);
                    }
                    Err(()) => {
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            } else {
                std::thread::sleep(Duration::from_millis(10).min(retry_at.saturating_duration_since(Instant::now())));
            }
        }
        stats.spool_batches = spool.pending.len() as u64;
        stats.spool_bytes = spool.bytes;
        if let Ok(mut shared) = published.try_lock() {
            shared.clone_from(&stats);
        }
        // 4. Done when closed and drained, or when the drain time is over.
        if closed {
            let deadline = stop_after.lock().ok().and_then(|d| *d);
            let drained = spool.pending.is_empty() && batch.is_empty();
            if drained || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
    }
    stats.left_in_spool = spool.pending.iter().map(|(_, _, r)| r.len() as u64).sum();
    if !batch.is_empty() {
        stats.lost = batch.len() as u64;
        tracing::error!(
            sightings = batch.len(),
            "LOST: these sightings could not be written to the spool (disk full) nor delivered"
        );
    }
    stats
}

/// One ReportSightings call for `records` to the replica in use; counts outcomes on success, moves to the
/// next replica on failure.
fn send(
    runtime: &tokio::runtime::Runtime,
    replicas: &mut Replicas,
    config: &DeliveryConfig,
    records: &[SightingRecord],
    stats: &mut DeliveryStats,
) -> Result<(), ()> {
    let sightings = records
        .iter()
        .map(|r| pb::Sighting {
            token: r.token.clone(),
            msisdn: r.msisdn.clone(),
            imsi: r.imsi.clone(),
            ue_ip: r.ue_ip.clone(),
            r#where: r.carrier.clone(),
            seen_at_us: r.seen_at_us,
            probe_sighting_id: String::new(),
        })
        .collect();
    let mut request = tonic::Request::new(pb::ReportSightingsRequest { sightings });
    if let Ok(value) = format!("Bearer {}", config.probe_key).parse() {
        request.metadata_mut().insert("authorization", value);
    }
    let Some(client) = replicas.clients.get_mut(replicas.current) else { return Err(()) };
    match runtime.block_on(client.report_sightings(request)) {
        Ok(response) => {
            for (result, record) in response.get_ref().results.iter().zip(records) {
                *stats.outcomes.entry(outcome_name(result.outcome)).or_default() += 1;
                tracing::debug!(
                    token = %record.token,
                    msisdn = %crate::logging::subscriber_id(&record.msisdn),
                    outcome = outcome_name(result.outcome),
                    "billing outcome"
                );
            }
            stats.delivered += records.len() as u64;
            stats.batches_sent += 1;
            Ok(())
        }
        Err(status) => {
            stats.send_failures += 1;
            let message = format!("{:?}: {}", status.code(), status.message());
            let refused = matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
            );
            if stats.send_failures == 1 || stats.send_failures % 20 == 0 {
                if refused {
                    // A configuration problem (the probe key): nothing is dropped; fix and restart.
                    tracing::error!(error = %message, "the billing API refused the batch; keeping it (check --probe-key)");
                } else {
                    tracing::warn!(error = %message, "billing API unavailable; keeping sightings in the spool and retrying");
                }
            }
            stats.last_error = Some(message);
            replicas.failed();
            Err(())
        }
    }
}

/// Creates (or truncates) a file readable and writable by the owner only, whatever the umask.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SightingRecord {
        SightingRecord {
            token: "token".into(),
            msisdn: "46701234567".into(),
            imsi: String::new(),
            ue_ip: String::new(),
            carrier: "http-url".into(),
            seen_at_us: 1,
        }
    }

    /// A delivery thread that has stopped (here: none at all) takes nothing; what the run still hands
    /// over is counted as lost, so the run ends in an error instead of dropping it unseen.
    #[test]
    fn sightings_no_thread_takes_are_counted_lost() {
        let stopped = |sender| Delivery {
            shared: Default::default(),
            sender,
            thread: None,
            stop_after: Default::default(),
            refused: std::sync::atomic::AtomicU64::new(0),
        };
        let delivery = stopped(None);
        delivery.submit(record());
        delivery.submit(record());
        assert_eq!(delivery.finish(Duration::ZERO).lost, 2);
        // A thread that ended and dropped its receiver: the same.
        let (sender, receiver) = crossbeam_channel::bounded(4);
        drop(receiver);
        let delivery = stopped(Some(sender));
        delivery.submit(record());
        assert_eq!(delivery.finish(Duration::ZERO).lost, 1);
    }
}
