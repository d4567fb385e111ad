//! `gtpcharge`: the probe (replay, capture), the token tool and the capture generator.
//! See README.md for the commands and ARCHITECTURE.md for the code map.
#![deny(unsafe_code)]
mod billing;
mod config;
mod delivery;
mod evidence;
mod explain;
mod demo;
mod jsonl;
mod logging;
mod metrics;
mod pipeline;
mod prefetch;
mod probe;
mod run;
mod secrets;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gtpcharge_capture::{DecoderConfig, FileReading, FileSource, LiveConfig, LiveSource};
use gtpcharge_correlate::Config;
use probe::Probe;
use run::ProbeRun;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "gtpcharge", version, about = "Carrier-side DPI billing correlator for GTP (Gn, S5/S8)")]
struct Cli {
    /// TOML file: any flag as `name = value` (top level, or under [probe], [serve] ...); command-line flags
    /// and GTPCHARGE_* environment variables override it.
    #[arg(long, global = true, env = "GTPCHARGE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text", env = "GTPCHARGE_LOG_FORMAT")]
    log_format: logging::Format,
    /// Write MSISDN and IMSI in logs in full (masked by default; JSON events always carry them).
    #[arg(long, global = true, env = "GTPCHARGE_LOG_SUBSCRIBER_IDS")]
    log_subscriber_ids: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay capture files (pcap or pcapng), in order, as fast as possible.
    Replay {
        /// Capture files, read one after another as one stream; `-` is standard input (a capture piped
        /// in, e.g. `zcat day.pcap.gz | gtpcharge replay -`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        probe: ProbeArgs,
    },
    /// Capture live from a span/mirror interface until SIGINT or SIGTERM.
    Capture {
        /// Interface to capture on.
        #[arg(long, short = 'i', env = "GTPCHARGE_INTERFACE")]
        interface: String,
        /// Bytes kept of each frame.
        #[arg(long, default_value_t = 65535, env = "GTPCHARGE_SNAPLEN")]
        snaplen: i32,
        /// Kernel capture buffer (libpcap's ring) in bytes: what absorbs a burst while the probe catches
        /// up. The first thing to raise when `libpcap dropped` grows.
        #[arg(long, default_value_t = 256 << 20, env = "GTPCHARGE_BUFFER_SIZE")]
        buffer_size: i32,
        /// How long libpcap holds packets before handing over a partly filled block, in milliseconds: the
        /// most a token's packet waits before it is read. Lower it for a quicker sighting, raise it for
        /// fewer wake-ups on a quiet link.
        #[arg(long, default_value_t = 10, env = "GTPCHARGE_READ_TIMEOUT_MS")]
        read_timeout_ms: i32,
        /// Do not put the interface in promiscuous mode.
        #[arg(long, env = "GTPCHARGE_NO_PROMISCUOUS")]
        no_promiscuous: bool,
        /// Immediate mode: wake for every packet (the least delay to a sighting; drops packets under a
        /// load the default block-wise reading takes without loss).
        #[arg(long, env = "GTPCHARGE_IMMEDIATE")]
        immediate: bool,
        /// The default since immediate mode stopped being it; kept so older command lines still work.
        #[arg(long, hide = true, conflicts_with = "immediate")]
        no_immediate: bool,
        #[command(flatten)]
        probe: ProbeArgs,
    },
    /// Play capture files onto an interface (for test networks: a veth pair in a namespace).
    Inject {
        #[arg(long, short = 'i')]
        interface: String,
        /// Frames per second at most (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        pps: u64,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The libpcap floor: read capture files and only count their packets and bytes (for the replay
    /// benchmark's ratio).
    Floor {
        /// Read through the replay pipeline's reader thread instead (libpcap, plus the copy of each frame
        /// into a batch and the hand-over to a second thread, which only counts): the most the two-thread
        /// replay can reach on this machine, whatever the correlating thread does.
        #[arg(long)]
        pipeline: bool,
        /// Open the files exactly as `pcap_open_offline` does (stdio's default buffer, the file system's
        /// block size) instead of through the 64 KiB read buffer the probe uses: the loop any libpcap
        /// program gets without tuning.
        #[arg(long, conflicts_with = "pipeline")]
        plain: bool,
        /// With --pipeline: how the frames cross to the counting thread (see `replay --handover`).
        #[arg(long, value_enum, default_value_t = HandoverArg::Auto, requires = "pipeline")]
        handover: HandoverArg,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// An evidence file of `--evidence-dir` in words: each packet (frame, time, role, message, identity,
    /// tunnels, token), then what the packets alone give when replayed (exit 1 if they do not attribute
    /// the token to the subscriber recorded).
    Explain {
        /// The evidence pcap (its `.json` companion is read from beside it).
        file: PathBuf,
    },
    /// Write fuzzing seeds from capture files (one file per frame or GTP message, per fuzz target).
    #[command(hide = true)]
    FuzzCorpus {
        #[arg(long)]
        out: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Purchase tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The main job, end to end: replay the committed sample into the billing API on the embedded
    /// SQLite default and check every charge (see README).
    Demo {
        #[arg(default_value = "pcaps/sample.pcap")]
        sample: PathBuf,
        /// Working directory, emptied first: the ledger and the spool go here.
        #[arg(long, default_value = "gtpcharge-demo")]
        workdir: PathBuf,
    },
    /// Run the billing API (gRPC): an embedded SQLite file by default, PostgreSQL with --database-url.
    Serve {
        #[arg(long, default_value = "127.0.0.1:50051", env = "GTPCHARGE_LISTEN")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        database: DatabaseArgs,
        /// PEM certificate chain: serve TLS (with --tls-key).
        #[arg(long, env = "GTPCHARGE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, env = "GTPCHARGE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// PEM CA whose client certificates are accepted (probes with mutual TLS).
        #[arg(long, env = "GTPCHARGE_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Serve without TLS on an address off the loopback (a network you trust). Without it, `serve`
        /// refuses: API keys, probe keys, MSISDNs and tokens would cross the network in the clear.
        #[arg(long, env = "GTPCHARGE_ALLOW_PLAINTEXT")]
        allow_plaintext: bool,
    },
    /// An SP's view of the billing API over gRPC (a real client, for trying the flow by hand).
    Purchase {
        /// The billing API.
        #[arg(long, env = "GTPCHARGE_BILLING_URL", default_value = "http://127.0.0.1:50051", global = true)]
        billing_url: String,
        /// The SP's API key (`gtpcharge admin sp create`); better from a file or the environment.
        #[arg(long, env = "GTPCHARGE_API_KEY", hide_env_values = true, global = true)]
        api_key: Option<String>,
        /// A file holding the SP's API key (kept out of the process list).
        #[arg(long, env = "GTPCHARGE_API_KEY_FILE", global = true)]
        api_key_file: Option<PathBuf>,
        /// Allow an http:// billing URL off the loopback (a network you trust): keys cross it in clear.
        #[arg(long, global = true)]
        allow_plaintext: bool,
        #[command(subcommand)]
        command: PurchaseCommand,
    },
    /// Operator tasks on the billing database (service providers, credentials, accounts).
    Admin {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Write a deterministic synthetic Gn/S5 capture (see pcaps/).
    Generate {
        /// Output pcap file.
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long, default_value_t = 24)]
        subscribers: u32,
        /// Rounds of traffic per subscriber.
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Token-free packet pairs per subscriber per round (the bulk of a benchmark capture).
        #[arg(long, default_value_t = 2)]
        background: u32,
        /// Leave out the malformed packets and edge cases.
        #[arg(long)]
        no_edge_cases: bool,
        /// Also write the generator's truth (expected sightings) as JSON here.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Place these tokens (in order) wherever the capture carries one; the rest are random.
        #[arg(long = "token")]
        tokens: Vec<String>,
        /// Wrap every frame as a remote mirror delivers it: vxlan, geneve, gre (transparent Ethernet
        /// bridging), erspan1, erspan2 or erspan3.
        #[arg(long)]
        encap: Option<gtpcharge_pcapgen::encap::Encapsulation>,
        /// The mirror session id (ERSPAN), VNI (VXLAN, Geneve) or key (GRE) of --encap.
        #[arg(long, default_value_t = 1, requires = "encap")]
        encap_id: u32,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print fresh valid tokens, one per line.
    New {
        #[arg(short = 'n', long, default_value_t = 1)]
        count: u32,
    },
    /// Check tokens given as arguments; exit 1 if any is invalid.
    Check { tokens: Vec<String> },
}

#[derive(Args)]
struct DatabaseArgs {
    /// postgres://USER@HOST/DB or sqlite://FILE?mode=rwc. A URL with a password is better given with
    /// --database-url-file or the environment.
    #[arg(long, env = "GTPCHARGE_DATABASE_URL", default_value = gtpcharge_billing_api::db::DEFAULT_SQLITE_URL, global = true, hide_env_values = true)]
    database_url: String,
    /// A file holding the database URL (with its password; kept out of the process list).
    #[arg(long, env = "GTPCHARGE_DATABASE_URL_FILE", global = true)]
    database_url_file: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The URL, from the file when one is named; a password typed on the command line is warned about.
    fn url(&self) -> Result<String> {
        let has_password =
            self.database_url.split("://").nth(1).and_then(|rest| rest.split('@').next()).is_some_and(|user| {
                self.database_url.contains('@') && user.contains(':')
            });
        let from_line = has_password && given_on_command_line("database_url");
        Ok(secrets::secret("database-url", Some(self.database_url.clone()), from_line, self.database_url_file.as_deref())?
            .unwrap_or_default())
    }
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Service providers.
    Sp {
        #[command(subcommand)]
        command: SpCommand,
    },
    /// Probe credentials.
    Probe {
        #[command(subcommand)]
        command: NamedCreate,
    },
    /// Operator keys (for the AccountService).
    Operator {
        #[command(subcommand)]
        command: NamedCreate,
    },
    /// Revoke any key by its id.
    Revoke { key_id: String },
    /// Subscriber accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Check that the ledger balances: the sum of entries per currency is zero.
    CheckLedger,
}

#[derive(Subcommand)]
enum PurchaseCommand {
    /// Create a purchase; prints its id and token.
    Create {
        #[arg(long)]
        product_id: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Minor units.
        #[arg(long)]
        amount: i64,
        #[arg(long)]
        currency: String,
        /// Default: a fresh random key (no idempotency across calls).
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long, default_value_t = 900)]
        expires_in_s: i64,
    },
    /// Show a purchase by id or token.
    Get {
        /// A purchase id, or a token (starts with gc1).
        key: String,
    },
}

#[derive(Subcommand)]
enum SpCommand {
    /// Register an SP; prints its id, key id and API key (shown once).
    Create { name: String },
    /// A new API key for an SP.
    Key { service_provider_id: i64 },
}

#[derive(Subcommand)]
enum NamedCreate {
    /// Create one; prints its key id and secret (shown once).
    Create { name: String },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create or update a subscriber account (amounts in minor units).
    Set {
        msisdn: String,
        #[arg(long)]
        currency: String,
        /// Prepaid balance to set (a top-up or correction, recorded in the ledger).
        #[arg(long, conflicts_with = "credit_limit")]
        balance: Option<i64>,
        /// Postpaid credit limit.
        #[arg(long)]
        credit_limit: Option<i64>,
        #[arg(long)]
        daily_cap: Option<i64>,
        #[arg(long)]
        monthly_cap: Option<i64>,
        #[arg(long)]
        barred: Option<bool>,
    },
    /// Show an account with today's and this month's spending.
    Show { msisdn: String },
}

/// `--handover`: forced, or chosen by the round trip at start.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum HandoverArg {
    Auto,
    Cached,
    Streaming,
}

impl HandoverArg {
    fn forced(self) -> Option<pipeline::Handover> {
        match self {
            HandoverArg::Auto => None,
            HandoverArg::Cached => Some(pipeline::Handover::Cached),
            HandoverArg::Streaming => Some(pipeline::Handover::Streaming),
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Emit {
    /// One JSON object per event on stdout.
    Jsonl,
    /// Only the summary.
    None,
}

#[derive(Args)]
struct ProbeArgs {
    /// What to write on stdout.
    #[arg(long, value_enum, default_value = "none", env = "GTPCHARGE_EMIT")]
    emit: Emit,
    /// BPF filter applied by libpcap.
    #[arg(long, env = "GTPCHARGE_FILTER")]
    filter: Option<String>,
    /// Extra UDP ports carrying GTP-C (2123 always does).
    #[arg(long = "gtpc-port", env = "GTPCHARGE_GTPC_PORTS", value_delimiter = ',')]
    gtpc_ports: Vec<u16>,
    /// Extra UDP ports carrying GTP-U (2152 always does).
    #[arg(long = "gtpu-port", env = "GTPCHARGE_GTPU_PORTS", value_delimiter = ',')]
    gtpu_ports: Vec<u16>,
    /// Live sessions kept at most; new contexts beyond are refused and counted.
    #[arg(long, default_value_t = 2_000_000, env = "GTPCHARGE_SESSIONS_MAX")]
    sessions_max: usize,
    /// Sessions with no signalling and no traffic for this long (packet time) are ended.
    #[arg(long, default_value_t = 86_400, env = "GTPCHARGE_SESSION_IDLE_TIMEOUT_S")]
    session_idle_timeout_s: u64,
    /// TCP flows tracked at most (for split tokens and retransmissions).
    #[arg(long, default_value_t = 1_000_000, env = "GTPCHARGE_FLOWS_MAX")]
    flows_max: usize,
    /// Fragmented outer packets reassembled at once at most.
    #[arg(long, default_value_t = 4096, env = "GTPCHARGE_FRAGMENTS_MAX")]
    fragments_max: usize,
    /// Bytes of each packet scanned for tokens.
    #[arg(long, default_value_t = 4096, env = "GTPCHARGE_SCAN_BYTES_MAX")]
    scan_bytes_max: usize,
    /// Report sightings to this billing API (http://HOST:PORT or https://...), which charges them.
    #[arg(long, env = "GTPCHARGE_BILLING_URL")]
    billing_url: Option<String>,
    /// The probe credential (`gtpcharge admin probe create`); better from --probe-key-file or the
    /// environment (on the command line every local user can read it).
    #[arg(long, env = "GTPCHARGE_PROBE_KEY", hide_env_values = true)]
    probe_key: Option<String>,
    /// A file holding the probe credential.
    #[arg(long, env = "GTPCHARGE_PROBE_KEY_FILE")]
    probe_key_file: Option<PathBuf>,
    /// Allow an http:// billing URL off the loopback (a network you trust). Without it the probe refuses
    /// to start: the probe key and subscribers' MSISDNs would cross the network in the clear.
    #[arg(long, env = "GTPCHARGE_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Where undelivered sightings are kept (survives a crash; sent first on the next start).
    #[arg(long, env = "GTPCHARGE_SPOOL_DIR", default_value = "gtpcharge-spool")]
    spool_dir: PathBuf,
    /// Spool size limit; when full the probe waits and says so loudly.
    #[arg(long, default_value_t = 256 << 20, env = "GTPCHARGE_SPOOL_MAX_BYTES")]
    spool_max_bytes: u64,
    /// At the end of a replay, how long to keep trying to deliver before leaving the rest in the spool.
    #[arg(long, default_value_t = 60, env = "GTPCHARGE_DRAIN_TIMEOUT_S")]
    drain_timeout_s: u64,
    /// PEM CA for an https:// billing URL.
    #[arg(long, env = "GTPCHARGE_BILLING_CA")]
    billing_ca: Option<PathBuf>,
    /// PEM client certificate and key (mutual TLS) for the billing API.
    #[arg(long, requires = "billing_client_key", env = "GTPCHARGE_BILLING_CLIENT_CERT")]
    billing_client_cert: Option<PathBuf>,
    #[arg(long, requires = "billing_client_cert", env = "GTPCHARGE_BILLING_CLIENT_KEY")]
    billing_client_key: Option<PathBuf>,
    /// Read, decode and correlate on one thread. Default: two threads (a reader thread runs libpcap while
    /// this one decodes and correlates) where the process has two cores and both threads run at once (a
    /// check at start, logged, which also picks the hand-over); one thread otherwise.
    #[arg(long, env = "GTPCHARGE_SINGLE_THREAD")]
    single_thread: bool,
    /// Always use the two threads, whatever the check at start finds.
    #[arg(long, conflicts_with = "single_thread", env = "GTPCHARGE_PIPELINE")]
    pipeline: bool,
    /// How the reader thread hands frames to the correlating thread: `cached` (ordinary stores: best
    /// where the two cores share a cache cheaply), `streaming` (non-temporal stores: best where a cache
    /// line between them is slow), or `auto` (by the cross-core round trip measured at start).
    #[arg(long, value_enum, default_value_t = HandoverArg::Auto, env = "GTPCHARGE_HANDOVER")]
    handover: HandoverArg,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "GTPCHARGE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Extra UDP ports carrying VXLAN from a remote mirror (4789 always does).
    #[arg(long = "vxlan-port", env = "GTPCHARGE_VXLAN_PORTS", value_delimiter = ',')]
    vxlan_ports: Vec<u16>,
    /// Extra UDP ports carrying Geneve (6081 always does).
    #[arg(long = "geneve-port", env = "GTPCHARGE_GENEVE_PORTS", value_delimiter = ',')]
    geneve_ports: Vec<u16>,
    /// Decode only frames that arrive in these mirror sessions (ERSPAN session id, VXLAN/Geneve VNI, GRE
    /// key of the outermost encapsulation); other encapsulated frames are dropped as
    /// `mirror-id-filtered`. Default: every session. Frames without an encapsulation are always decoded.
    #[arg(long = "mirror-id", env = "GTPCHARGE_MIRROR_IDS", value_delimiter = ',')]
    mirror_ids: Vec<u32>,
    /// T3-RESPONSE of the GTP-C peers, in milliseconds. A response pairs only with a request sent within
    /// T3-RESPONSE x N3-REQUESTS (the retransmission window).
    #[arg(long, default_value_t = 3_000, env = "GTPCHARGE_T3_RESPONSE_MS")]
    t3_response_ms: u64,
    /// N3-REQUESTS of the GTP-C peers: how many times a request is sent at most.
    #[arg(long, default_value_t = 5, env = "GTPCHARGE_N3_REQUESTS")]
    n3_requests: u64,
    /// For each sighting, write a pcap of the signalling that created and last updated its session and of
    /// the packet that carried the token (and a JSON file naming each packet) into this directory
    /// (created owner-only); `gtpcharge explain FILE` reads one back.
    #[arg(long, env = "GTPCHARGE_EVIDENCE_DIR")]
    evidence_dir: Option<PathBuf>,
    /// Size cap of the evidence directory: half for the evidence files (the oldest are removed beyond
    /// it, with a warning), half for the rotating signalling store the evidence is drawn from.
    #[arg(long, default_value_t = 1 << 30, env = "GTPCHARGE_EVIDENCE_MAX_BYTES")]
    evidence_max_bytes: u64,
}

impl ProbeArgs {
    /// One thread or two: what the flags force, or what this machine favours (logged when it decided).
    fn threads(&self) -> pipeline::Threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (threads, why) = pipeline::choose(
            self.single_thread,
            self.pipeline,
            self.handover.forced(),
            cores,
            pipeline::cross_core_round_trip,
        );
        let threads_text = match threads {
            pipeline::Threads::One => "one thread",
            pipeline::Threads::Two(_) => "two threads (reader + correlator)",
        };
        if self.single_thread || self.pipeline {
            tracing::debug!(threads = threads_text, why, "reading and correlating");
        } else {
            tracing::info!(threads = threads_text, why, "reading and correlating");
        }
        threads
    }

    /// The defaults of every flag (what `clap` gives when none is passed).
    fn defaults() -> ProbeArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            probe: ProbeArgs,
        }
        Only::parse_from(["gtpcharge"]).probe
    }

    fn probe(&self) -> Result<Probe> {
        let mut config = Config::default();
        config.gtpc_ports.extend(&self.gtpc_ports);
        config.gtpu_ports.extend(&self.gtpu_ports);
        config.sessions_max = self.sessions_max;
        config.session_idle_timeout_s = self.session_idle_timeout_s;
        config.flows_max = self.flows_max;
        config.scan_bytes_max = self.scan_bytes_max;
        config.t3_response_ms = self.t3_response_ms;
        config.n3_requests = self.n3_requests;
        let mut probe = Probe::new(config, self.decoder());
        if let Some(dir) = &self.evidence_dir {
            probe.evidence = Some(
                evidence::Evidence::open(dir, self.evidence_max_bytes)
                    .with_context(|| format!("opening the evidence directory {}", dir.display()))?,
            );
        }
        Ok(probe)
    }

    fn decoder(&self) -> DecoderConfig {
        let mut config = DecoderConfig { fragments_max: self.fragments_max, ..DecoderConfig::default() };
        config.vxlan_ports.extend(&self.vxlan_ports);
        config.geneve_ports.extend(&self.geneve_ports);
        config.mirror_ids.clone_from(&self.mirror_ids);
        config
    }

    fn metrics(&self) -> Result<Option<metrics::Exposition>> {
        let Some(address) = self.metrics_listen else { return Ok(None) };
        let exposition = metrics::Exposition::default();
        metrics::serve(address, exposition.clone())?;
        tracing::info!(%address, "metrics on /metrics");
        Ok(Some(exposition))
    }

    fn delivery(&self) -> Result<Option<delivery::Delivery>> {
        let Some(url) = self.billing_url.as_ref().filter(|u| !u.is_empty()) else { return Ok(None) };
        let probe_key = secrets::secret(
            "probe-key",
            self.probe_key.clone(),
            given_on_command_line("probe_key"),
            self.probe_key_file.as_deref(),
        )?
        .context("--billing-url needs --probe-key-file (or GTPCHARGE_PROBE_KEY, or --probe-key)")?;
        let config = delivery::DeliveryConfig {
            url: url.clone(),
            probe_key,
            spool_dir: self.spool_dir.clone(),
            spool_max_bytes: self.spool_max_bytes,
            batch_max: 200,
            batch_wait: std::time::Duration::from_millis(50),
            queue_max: 10_000,
            tls_ca: self.billing_ca.clone(),
            tls_client: self.billing_client_cert.clone().zip(self.billing_client_key.clone()),
        };
        Ok(Some(delivery::Delivery::start(config)?))
    }
}

fn replay(files: &[PathBuf], args: &ProbeArgs) -> Result<bool> {
    // Open every file before writing anything: a bad name fails the run with nothing half-written.
    let mut sources = Vec::with_capacity(files.len());
    let mut total_bytes = 0u64;
    for path in files {
        sources.push(FileSource::open(path, args.filter.as_deref())?);
        total_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    // Standard input has no length: its progress is bytes and rate, without a bar.
    let piped = files.iter().any(|path| path == Path::new(gtpcharge_capture::source::STDIN_NAME));
    let progress = if std::io::stderr().is_terminal() {
        let (bar, template) = if piped {
            (indicatif::ProgressBar::new_spinner(), "{spinner} {bytes} {bytes_per_sec} {msg}")
        } else {
            (indicatif::ProgressBar::new(total_bytes), "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut run = ProbeRun::start(args)?;
    // After the run's clock has started: the check (1-8 ms on the test VM) counts in its elapsed time.
    let threads = args.threads();
    let report = |error: &gtpcharge_capture::CaptureError| match &progress {
        // A file cut short mid-record (a capture killed while writing): keep what was read, go on.
        Some(bar) => bar.suspend(|| eprintln!("gtpcharge: {error}")),
        None => eprintln!("gtpcharge: {error}"),
    };
    let mut all_read = true;
    if let pipeline::Threads::Two(handover) = threads {
        let reader = pipeline::read_files(sources, handover).context("starting the reader thread")?;
        while let Some(batch) = reader.next() {
            run.batch(&batch);
            if let Some(bar) = &progress {
                bar.set_position(batch.position);
            }
            run.publish(None, false);
            reader.recycle(batch);
        }
        let errors = reader.join().map_err(|_| anyhow::anyhow!("the reader thread failed"))?;
        for error in &errors {
            report(error);
        }
        all_read = errors.is_empty();
    } else {
        let mut position = 0u64;
        for source in &mut sources {
            if let Some(bar) = &progress {
                bar.set_message(source.path().display().to_string());
            }
            let result = source.for_each(|frame| {
                position += 16 + frame.data.len() as u64;
                run.frame(frame);
                if run.probe.packets % 8192 == 0 {
                    if let Some(bar) = &progress {
                        bar.set_position(position);
                    }
                    run.publish(None, false);
                }
            });
            if let Err(error) = result {
                report(&error);
                all_read = false;
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let delivered = run.finish(None, std::time::Duration::from_secs(args.drain_timeout_s))?;
    Ok(all_read && delivered)
}

fn capture(live: LiveConfig, args: &ProbeArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut source = LiveSource::open(&live)?;
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the SIGINT/SIGTERM handler")?;
    let mut run = ProbeRun::start(args)?;
    run.measure_sighting_delay();
    tracing::info!(
        interface = %live.interface,
        buffer_bytes = live.buffer_size_bytes,
        read_timeout_ms = live.read_timeout_ms,
        immediate = live.immediate,
        "capturing (stop with SIGINT or SIGTERM)"
    );
    let libpcap = if let pipeline::Threads::Two(handover) = args.threads() {
        live_pipeline(source, &mut run, &stop, handover)?
    } else {
        let mut checked = std::time::Instant::now();
        let mut stopping = pipeline::Stopping::default();
        loop {
            let stop_now = stop.load(Ordering::SeqCst);
            let read = source.dispatch(|frame| run.frame(frame))?;
            if stopping.done(stop_now, read) {
                break;
            }
            if checked.elapsed() >= std::time::Duration::from_secs(1) {
                checked = std::time::Instant::now();
                let libpcap = source.stats().ok();
                run.watch_drops(libpcap);
                run.publish(libpcap, false);
            }
        }
        source.stats()?
    };
    // Whatever could not be delivered within the drain time stays in the spool for the next start.
    run.finish(Some(libpcap), std::time::Duration::from_secs(args.drain_timeout_s.min(10)))?;
    Ok(())
}

/// The live capture on two threads until `stop`; libpcap's last counters.
fn live_pipeline(
    source: LiveSource,
    run: &mut ProbeRun,
    stop: &Arc<AtomicBool>,
    handover: pipeline::Handover,
) -> Result<gtpcharge_capture::LiveStats> {
    let shared = Arc::new(std::sync::Mutex::new(None));
    let reader =
        pipeline::read_live(source, stop.clone(), shared.clone(), handover).context("starting the reader thread")?;
    // Wake at least every 200 ms so the metrics and the drop watch stay fresh while the link is quiet.
    let mut checked = std::time::Instant::now();
    loop {
        match reader.next_timeout(std::time::Duration::from_millis(200)) {
            Ok(batch) => {
                run.batch(&batch);
                reader.recycle(batch);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
        if checked.elapsed() >= std::time::Duration::from_secs(1) {
            checked = std::time::Instant::now();
            let libpcap = shared.lock().ok().and_then(|s| *s);
            run.watch_drops(libpcap);
            run.publish(libpcap, false);
        }
    }
    if let Ok(Some(error)) = reader.join() {
        return Err(error.into());
    }
    let last = shared.lock().ok().and_then(|s| *s);
    Ok(last.unwrap_or_default())
}

/// The secret arguments that were typed on the command line (not taken from the environment or a file).
static FROM_COMMAND_LINE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();

fn record_command_line_sources(matches: &clap::ArgMatches) {
    let mut given = Vec::new();
    let mut level = Some(matches);
    while let Some(m) = level {
        for id in ["probe_key", "api_key", "database_url"] {
            if let Ok(Some(clap::parser::ValueSource::CommandLine)) = m.try_get_raw(id).map(|_| m.value_source(id)) {
                given.push(id);
            }
        }
        level = m.subcommand().map(|(_, sub)| sub);
    }
    let _ = FROM_COMMAND_LINE.set(given);
}

fn given_on_command_line(id: &str) -> bool {
    FROM_COMMAND_LINE.get().is_some_and(|ids| ids.contains(&id))
}

fn main() -> std::process::ExitCode {
    if let Err(error) = config::load_from_args() {
        eprintln!("gtpcharge: {error:#}");
        return std::process::ExitCode::from(2);
    }
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    record_command_line_sources(&matches);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    logging::init(cli.log_format, cli.log_subscriber_ids);
    let result = match cli.command {
        Command::Replay { files, probe } => replay(&files, &probe),
        Command::Capture {
            interface, snaplen, buffer_size, read_timeout_ms, no_promiscuous, immediate, no_immediate, probe
        } => {
            let live = LiveConfig {
                interface,
                snaplen,
                buffer_size_bytes: buffer_size,
                promiscuous: !no_promiscuous,
                immediate: immediate && !no_immediate,
                filter: probe.filter.clone(),
                read_timeout_ms: read_timeout_ms.max(1),
            };
            capture(live, &probe).map(|()| true)
        }
        Command::Explain { file } => explain::explain(&file),
        Command::Demo { sample, workdir } => {
            let _ = std::fs::remove_dir_all(&workdir);
            std::fs::create_dir_all(&workdir)
                .with_context(|| format!("creating {}", workdir.display()))
                .and_then(|()| demo::demo(&sample, &workdir))
        }
        Command::Serve { listen, database, tls_cert, tls_key, tls_client_ca, allow_plaintext } => {
            let tls = match (tls_cert, tls_key) {
                (Some(certificate), Some(key)) => {
                    Some(gtpcharge_billing_api::server::TlsFiles { certificate, key, client_ca: tls_client_ca })
                }
                _ => None,
            };
            secrets::check_listen(listen, tls.is_some(), allow_plaintext)
                .and_then(|()| database.url())
                .and_then(|url| billing::serve(listen, &url, tls))
                .map(|()| true)
        }
        Command::Admin { database, command } => {
            database.url().and_then(|url| billing::admin(&url, command)).map(|()| true)
        }
        Command::Purchase { billing_url, api_key, api_key_file, allow_plaintext, command } => {
            let key = secrets::check_client_url(&billing_url, allow_plaintext).and_then(|_| {
                secrets::secret("api-key", api_key, given_on_command_line("api_key"), api_key_file.as_deref())
            });
            match key {
                Ok(Some(key)) => billing::purchase(&billing_url, &key, command).map(|()| true),
                Ok(None) => Err(anyhow::anyhow!("--api-key-file (or GTPCHARGE_API_KEY, or --api-key) is required")),
                Err(error) => Err(error),
            }
        }
        Command::Inject { interface, pps, files } => inject(&interface, pps, &files).map(|()| true),
        Command::Floor { pipeline, plain, handover, files } => {
            floor(&files, pipeline, handover.forced(), plain).map(|()| true)
        }
        Command::FuzzCorpus { out, files } => fuzz_corpus(&out, &files).map(|()| true),
        Command::Token { command: TokenCommand::New { count } } => token_new(count).map(|()| true),
        Command::Token { command: TokenCommand::Check { tokens } } => Ok(token_check(&tokens)),
        Command::Generate { out, seed, subscribers, rounds, background, no_edge_cases, truth, tokens, encap, encap_id } => {
            match tokens.iter().map(|t| t.parse::<gtpcharge_proto::Token>()).collect::<Result<Vec<_>, _>>() {
                Ok(tokens) => {
                    let scenario = gtpcharge_pcapgen::Scenario {
                        seed,
                        subscribers,
                        traffic_rounds: rounds,
                        background_per_round: background,
                        edge_cases: !no_edge_cases,
                        tokens,
                    };
                    generate(&scenario, &out, truth.as_deref(), encap.map(|e| (e, encap_id))).map(|()| true)
                }
                Err(error) => Err(anyhow::anyhow!("--token: {error}")),
            }
        }
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("gtpcharge: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn fuzz_corpus(out: &std::path::Path, files: &[PathBuf]) -> Result<()> {
    use gtpcharge_capture::decode::linktype;
    for target in ["link_decode", "reassembly", "gtpv1c", "gtpv2c", "gtpu_inner", "carriers", "correlate"] {
        std::fs::create_dir_all(out.join(target))?;
    }
    let mut written = 0u64;
    for (file_index, path) in files.iter().enumerate() {
        let mut decoder = gtpcharge_capture::Decoder::new(&DecoderConfig::default());
        let mut sequence = Vec::new();
        let mut index = 0u64;
        let mut write = |target: &str, index: u64, bytes: &[u8]| {
            let name = out.join(target).join(format!("{file_index}-{index}"));
            if std::fs::write(name, bytes).is_ok() {
                written += 1;
            }
        };
        FileSource::open(path, None)?.for_each(|frame| {
            index += 1;
            if index > 2000 {
                return;
            }
            let selector = match frame.linktype {
                linktype::ETHERNET => 0u8,
                linktype::LINUX_SLL => 1,
                linktype::LINUX_SLL2 => 2,
                _ => 3,
            };
            write("link_decode", index, &[&[selector][..], frame.data].concat());
            if let Ok(Some(udp)) = decoder.decode(frame.linktype, frame.ts_us, frame.data) {
                let ports = [udp.source.port(), udp.destination.port()];
                let payload = udp.payload;
                let (target, kind) = if ports.contains(&2152) {
                    ("gtpu_inner", 1u8)
                } else if ports.contains(&2123) {
                    (if payload.first().map(|f| f >> 5) == Some(2) { "gtpv2c" } else { "gtpv1c" }, 0)
                } else {
                    ("gtpv1c", 2)
                };
                write(target, index, payload);
                if sequence.len() < 60_000 {
                    sequence.push(kind | if udp.source.ip() < udp.destination.ip() { 0 } else { 4 });
                    sequence.extend_from_slice(&(payload.len().min(65535) as u16).to_be_bytes());
                    sequence.extend_from_slice(&payload[..payload.len().min(65535)]);
                }
                if let Ok(header) = gtpcharge_correlate::wire::gtpv1::Header::parse(payload) {
                    if let Ok(inner) = gtpcharge_correlate::wire::gtpu::inner_packet(header.body) {
                        if let gtpcharge_correlate::wire::gtpu::Transport::Tcp { payload, .. }
                        | gtpcharge_correlate::wire::gtpu::Transport::Udp { payload, .. } = inner.transport
                        {
                            if !payload.is_empty() {
                                write("carriers", index, payload);
                            }
                        }
                    }
                }
            }
        })?;
        write("correlate", 0, &sequence);
    }
    eprintln!("gtpcharge: wrote {written} seeds under {}", out.display());
    Ok(())
}

/// `forced`: the pipeline's hand-over, when not chosen as the replay chooses it.
fn floor(files: &[PathBuf], through_pipeline: bool, forced: Option<pipeline::Handover>, plain: bool) -> Result<()> {
    // Before the clock starts: what each hand-over between the two threads costs on this machine, and
    // so which hand-over the replay would use.
    let handover = through_pipeline.then(|| {
        let trip = pipeline::cross_core_round_trip();
        let handover = forced.unwrap_or(pipeline::Handover::for_round_trip(trip));
        eprintln!("{}", pipeline::describe(trip, Some(handover)));
        handover
    });
    let started = std::time::Instant::now();
    let (mut packets, mut bytes) = (0u64, 0u64);
    if let Some(handover) = handover {
        let sources = files.iter().map(|path| FileSource::open(path, None)).collect::<Result<Vec<_>, _>>()?;
        let reader = pipeline::read_files(sources, handover).context("starting the reader thread")?;
        while let Some(batch) = reader.next() {
            for frame in batch.frames() {
                packets += 1;
                bytes += u64::from(frame.wire_len);
            }
            reader.recycle(batch);
        }
        if let Some(error) = reader.join().map_err(|_| anyhow::anyhow!("the reader thread failed"))?.into_iter().next()
        {
            return Err(error.into());
        }
    } else {
        let reading = if plain { FileReading::Plain } else { FileReading::Buffered };
        for path in files {
            FileSource::open_with(path, None, reading)?.for_each(|frame| {
                packets += 1;
                bytes += u64::from(frame.wire_len);
            })?;
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "{} packets {packets}  bytes {bytes}  elapsed {elapsed:.3}s  {:.0} packets/s  {:.3} Gbit/s",
        match (handover.is_some(), plain) {
            (true, _) => "floor-pipeline",
            (false, true) => "floor-plain",
            (false, false) => "floor",
        },
        packets as f64 / elapsed,
        bytes as f64 * 8.0 / elapsed / 1e9
    );
    Ok(())
}

fn inject(interface: &str, pps: u64, files: &[PathBuf]) -> Result<()> {
    let mut injector = gtpcharge_capture::Injector::open(interface)?;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut failure = None;
    for path in files {
        let mut source = FileSource::open(path, None)?;
        source.for_each(|frame| {
            if failure.is_some() {
                return;
            }
            if pps > 0 {
                let due = started + std::time::Duration::from_secs_f64(sent as f64 / pps as f64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
            match injector.send(frame.data) {
                Ok(()) => sent += 1,
                Err(error) => failure = Some(error),
            }
        })?;
        if let Some(error) = failure.take() {
            return Err(error.into());
        }
    }
    eprintln!("gtpcharge: injected {sent} frames on {interface} in {:.3}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn token_new(count: u32) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    for _ in 0..count {
        let token = gtpcharge_proto::Token::generate().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        writeln!(stdout, "{token}")?;
    }
    Ok(())
}

fn token_check(tokens: &[String]) -> bool {
    let mut all_valid = true;
    for text in tokens {
        match text.parse::<gtpcharge_proto::Token>() {
            Ok(token) => println!("{text}\tvalid\t{token}"),
            Err(error) => {
                println!("{text}\tinvalid\t{error}");
                all_valid = false;
            }
        }
    }
    all_valid
}

fn generate(
    scenario: &gtpcharge_pcapgen::Scenario,
    out: &std::path::Path,
    truth_path: Option<&std::path::Path>,
    encap: Option<(gtpcharge_pcapgen::encap::Encapsulation, u32)>,
) -> Result<()> {
    let file =
        gtpcharge_pcapgen::PcapFile::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let (truth, file) = match encap {
        None => {
            let mut file = file;
            (gtpcharge_pcapgen::generate(scenario, &mut file), file)
        }
        Some((kind, id)) => {
            let mut wrapping = gtpcharge_pcapgen::encap::Encapsulating::new(file, kind, id);
            (gtpcharge_pcapgen::generate(scenario, &mut wrapping), wrapping.inner)
        }
    };
    file.finish().with_context(|| format!("{}: write failed", out.display()))?;
    if let Some(path) = truth_path {
        let value = serde_json::json!({
            "frames": truth.frames,
            "sightings": truth.sightings.iter().map(|(t, m)| serde_json::json!({"token": t.to_string(), "msisdn": m})).collect::<Vec<_>>(),
            "unattributed": truth.unattributed.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "sessions_up": truth.sessions_up,
            "sessions_down": truth.sessions_down,
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    eprintln!("gtpcharge: wrote {} frames to {}", truth.frames, out.display());
    if truth.sightings.is_empty() {
        bail!("the scenario produced no sightings");
    }
    Ok(())
}
