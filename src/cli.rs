//! The command line: clap's types for every subcommand, and the probe's options (`ProbeArgs`), which
//! build the correlator's, the decoder's and delivery's configuration from them.
use crate::probe::Probe;
use crate::secrets::given_on_command_line;
use crate::{delivery, evidence, logging, metrics, pipeline, secrets};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gtpcharge_capture::DecoderConfig;
use gtpcharge_correlate::Config;
use std::path::PathBuf;

mod admin;
mod agent;
pub use admin::*;
pub use agent::*;

#[derive(Parser)]
#[command(name = "gtpcharge", version, about = "Carrier-side DPI billing correlator for GTP (Gn, S5/S8)")]
pub struct Cli {
    /// TOML file: any flag as `name = value` (top level, or under [probe], [serve] ...); command-line flags
    /// and GTPCHARGE_* environment variables override it.
    #[arg(long, global = true, env = "GTPCHARGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text", env = "GTPCHARGE_LOG_FORMAT")]
    pub log_format: logging::Format,
    /// Write MSISDN and IMSI in logs in full (masked by default; JSON events always carry them).
    #[arg(long, global = true, env = "GTPCHARGE_LOG_SUBSCRIBER_IDS")]
    pub log_subscriber_ids: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// The memory a probe's copy of the cluster's session view takes: builds a view of N sessions (each
    /// started, a third moved to another tunnel) and prints the resident bytes it added, per session.
    ClusterViewBytes {
        #[arg(long, default_value_t = 1_000_000)]
        sessions: u32,
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
        /// The committed sample: `pcaps/sample.pcap` from the repository's root, else the installed
        /// package's `/usr/share/gtpcharge/sample.pcap`.
        sample: Option<PathBuf>,
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
        /// Charging transactions in flight at once.
        #[arg(long, default_value_t = gtpcharge_billing_api::group_commit::WORKERS as u64, env = "GTPCHARGE_CHARGING_WORKERS",
              value_parser = clap::value_parser!(u64).range(1..=64))]
        charging_workers: u64,
        /// Sightings one charging transaction takes from the calls waiting (group commit); 1 gives each
        /// call a transaction of its own.
        #[arg(long, default_value_t = gtpcharge_billing_api::group_commit::BATCH_SIGHTINGS as u64,
              env = "GTPCHARGE_GROUP_COMMIT_SIGHTINGS", value_parser = clap::value_parser!(u64).range(1..=1024))]
        group_commit_sightings: u64,
        /// Serve Prometheus metrics on this address (GET /metrics): failed authentications so far.
        #[arg(long, env = "GTPCHARGE_API_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
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
    /// The pay agent on the handset: serves apps on the loopback (127.0.0.1 and [::1], port 7353),
    /// asks the subscriber for the payment PIN and confirms purchases that need consent; `agent enroll`
    /// binds the device's key first.
    Agent(AgentCli),
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
pub enum TokenCommand {
    /// Print fresh valid tokens, one per line.
    New {
        #[arg(short = 'n', long, default_value_t = 1)]
        count: u32,
    },
    /// Check tokens given as arguments; exit 1 if any is invalid.
    Check { tokens: Vec<String> },
}

#[derive(Args)]
pub struct DatabaseArgs {
    /// postgres://USER@HOST/DB or sqlite://FILE?mode=rwc. A URL with a password is better given with
    /// --database-url-file or the environment.
    #[arg(long, env = "GTPCHARGE_DATABASE_URL", default_value = gtpcharge_billing_api::db::DEFAULT_SQLITE_URL, global = true, hide_env_values = true)]
    pub database_url: String,
    /// A file holding the database URL (with its password; kept out of the process list).
    #[arg(long, env = "GTPCHARGE_DATABASE_URL_FILE", global = true)]
    pub database_url_file: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The URL, from the file when one is named; a password typed on the command line is warned about.
    pub fn url(&self) -> Result<String> {
        let has_password = self
            .database_url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('@').next())
            .is_some_and(|user| self.database_url.contains('@') && user.contains(':'));
        let from_line = has_password && given_on_command_line("database_url");
        Ok(secrets::secret(
            "database-url",
            Some(self.database_url.clone()),
            from_line,
            self.database_url_file.as_deref(),
        )?
        .unwrap_or_default())
    }
}

/// `--handover`: forced, or chosen by the round trip at start.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum HandoverArg {
    Auto,
    Cached,
    Streaming,
}

impl HandoverArg {
    pub fn forced(self) -> Option<pipeline::Handover> {
        match self {
            HandoverArg::Auto => None,
            HandoverArg::Cached => Some(pipeline::Handover::Cached),
            HandoverArg::Streaming => Some(pipeline::Handover::Streaming),
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Emit {
    /// One JSON object per event on stdout.
    Jsonl,
    /// Only the summary.
    None,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// What to write on stdout.
    #[arg(long, value_enum, default_value = "none", env = "GTPCHARGE_EMIT")]
    pub emit: Emit,
    /// BPF filter applied by libpcap.
    #[arg(long, env = "GTPCHARGE_FILTER")]
    pub filter: Option<String>,
    /// Extra UDP ports carrying GTP-C (2123 always does).
    #[arg(long = "gtpc-port", env = "GTPCHARGE_GTPC_PORTS", value_delimiter = ',')]
    pub gtpc_ports: Vec<u16>,
    /// Extra UDP ports carrying GTP-U (2152 always does).
    #[arg(long = "gtpu-port", env = "GTPCHARGE_GTPU_PORTS", value_delimiter = ',')]
    pub gtpu_ports: Vec<u16>,
    /// Live sessions kept at most; new contexts beyond are refused and counted.
    #[arg(long, default_value_t = 2_000_000, env = "GTPCHARGE_SESSIONS_MAX")]
    pub sessions_max: usize,
    /// Sessions with no signalling and no traffic for this long (packet time) are ended.
    #[arg(long, default_value_t = 86_400, env = "GTPCHARGE_SESSION_IDLE_TIMEOUT_S")]
    pub session_idle_timeout_s: u64,
    /// TCP flows tracked at most (for split tokens and retransmissions).
    #[arg(long, default_value_t = 1_000_000, env = "GTPCHARGE_FLOWS_MAX")]
    pub flows_max: usize,
    /// Fragmented outer packets reassembled at once at most.
    #[arg(long, default_value_t = 4096, env = "GTPCHARGE_FRAGMENTS_MAX")]
    pub fragments_max: usize,
    /// Bytes of each packet scanned for tokens.
    #[arg(long, default_value_t = 4096, env = "GTPCHARGE_SCAN_BYTES_MAX")]
    pub scan_bytes_max: usize,
    /// Report sightings to this billing API (http://HOST:PORT or https://...), which charges them.
    /// Replicas of one API (several `serve` on one PostgreSQL) as a comma-separated list: a failed call
    /// is retried on the next.
    #[arg(long, env = "GTPCHARGE_BILLING_URL")]
    pub billing_url: Option<String>,
    /// The probe credential (`gtpcharge admin probe create`); better from --probe-key-file or the
    /// environment (on the command line every local user can read it).
    #[arg(long, env = "GTPCHARGE_PROBE_KEY", hide_env_values = true)]
    pub probe_key: Option<String>,
    /// A file holding the probe credential.
    #[arg(long, env = "GTPCHARGE_PROBE_KEY_FILE")]
    pub probe_key_file: Option<PathBuf>,
    /// Allow an http:// billing URL off the loopback (a network you trust). Without it the probe refuses
    /// to start: the probe key and subscribers' MSISDNs would cross the network in the clear.
    #[arg(long, env = "GTPCHARGE_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    /// Where undelivered sightings are kept (survives a crash; sent first on the next start).
    #[arg(long, env = "GTPCHARGE_SPOOL_DIR", default_value = "gtpcharge-spool")]
    pub spool_dir: PathBuf,
    /// Spool size limit; when full the probe waits and says so loudly.
    #[arg(long, default_value_t = 256 << 20, env = "GTPCHARGE_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: u64,
    /// At the end of a replay, how long to keep trying to deliver before leaving the rest in the spool.
    #[arg(long, default_value_t = 60, env = "GTPCHARGE_DRAIN_TIMEOUT_S")]
    pub drain_timeout_s: u64,
    /// Share subscriber state with other probes through this NATS JetStream server (README, "Running a
    /// cluster"): session changes are published, and tokens on tunnels this probe has no signalling for
    /// are attributed by them.
    #[arg(long, value_name = "nats://HOST:PORT", env = "GTPCHARGE_CLUSTER")]
    pub cluster: Option<String>,
    /// The cluster's name: probes with the same name share one stream.
    #[arg(long, default_value = "gtpcharge", env = "GTPCHARGE_CLUSTER_NAME")]
    pub cluster_name: String,
    /// This probe's name in the cluster (default: host name and process id).
    #[arg(long, env = "GTPCHARGE_PROBE_ID")]
    pub probe_id: Option<String>,
    /// How long a token on a tunnel the cluster does not know yet waits before it is unattributed.
    #[arg(long, default_value_t = 5000, env = "GTPCHARGE_CLUSTER_GRACE_MS")]
    pub cluster_grace_ms: u64,
    /// PEM CA for an https:// billing URL.
    #[arg(long, env = "GTPCHARGE_BILLING_CA")]
    pub billing_ca: Option<PathBuf>,
    /// PEM client certificate and key (mutual TLS) for the billing API.
    #[arg(long, requires = "billing_client_key", env = "GTPCHARGE_BILLING_CLIENT_CERT")]
    pub billing_client_cert: Option<PathBuf>,
    #[arg(long, requires = "billing_client_cert", env = "GTPCHARGE_BILLING_CLIENT_KEY")]
    pub billing_client_key: Option<PathBuf>,
    /// Read, decode and correlate on one thread. Default: two threads (a reader thread runs libpcap while
    /// this one decodes and correlates) where the process has two cores and both threads run at once (a
    /// check at start, logged, which also picks the hand-over); one thread otherwise.
    #[arg(long, env = "GTPCHARGE_SINGLE_THREAD")]
    pub single_thread: bool,
    /// Correlate on N shard threads: this thread decodes and dispatches (G-PDUs by their inner source
    /// address, everything else to every shard), the shards' events come back in capture order, the same
    /// as one thread's. Default: the cores less one (one where there are two); one with --evidence-dir,
    /// which needs a single correlating thread. More than one always reads on a thread of its own.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256), conflicts_with = "single_thread",
          env = "GTPCHARGE_WORKERS")]
    pub workers: Option<u16>,
    /// Always use the two threads, whatever the check at start finds.
    #[arg(long, conflicts_with = "single_thread", env = "GTPCHARGE_PIPELINE")]
    pub pipeline: bool,
    /// How the reader thread hands frames to the correlating thread: `cached` (ordinary stores: best
    /// where the two cores share a cache cheaply), `streaming` (non-temporal stores: best where a cache
    /// line between them is slow), or `auto` (by the cross-core round trip measured at start).
    #[arg(long, value_enum, default_value_t = HandoverArg::Auto, env = "GTPCHARGE_HANDOVER")]
    pub handover: HandoverArg,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, env = "GTPCHARGE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Extra UDP ports carrying VXLAN from a remote mirror (4789 always does).
    #[arg(long = "vxlan-port", env = "GTPCHARGE_VXLAN_PORTS", value_delimiter = ',')]
    pub vxlan_ports: Vec<u16>,
    /// Extra UDP ports carrying Geneve (6081 always does).
    #[arg(long = "geneve-port", env = "GTPCHARGE_GENEVE_PORTS", value_delimiter = ',')]
    pub geneve_ports: Vec<u16>,
    /// Decode only frames that arrive in these mirror sessions (ERSPAN session id, VXLAN/Geneve VNI, GRE
    /// key of the outermost encapsulation); other encapsulated frames are dropped as
    /// `mirror-id-filtered`. Default: every session. Frames without an encapsulation are always decoded.
    #[arg(long = "mirror-id", env = "GTPCHARGE_MIRROR_IDS", value_delimiter = ',')]
    pub mirror_ids: Vec<u32>,
    /// T3-RESPONSE of the GTP-C peers, in milliseconds. A response pairs only with a request sent within
    /// T3-RESPONSE x N3-REQUESTS (the retransmission window).
    #[arg(long, default_value_t = 3_000, env = "GTPCHARGE_T3_RESPONSE_MS")]
    pub t3_response_ms: u64,
    /// N3-REQUESTS of the GTP-C peers: how many times a request is sent at most.
    #[arg(long, default_value_t = 5, env = "GTPCHARGE_N3_REQUESTS")]
    pub n3_requests: u64,
    /// Attribute a token on a tunnel no signalling explains to the one live session holding the
    /// packet's source address at the same GSN. Off by default: such a tunnel means the probe missed
    /// signalling, and a missed Delete followed by a missed Create hands the address, and the bill, to
    /// the wrong subscriber. Counted either way (`attributed-by-ue-ip`, `unknown-tunnel-ue-ip-held`).
    #[arg(long, env = "GTPCHARGE_ATTRIBUTE_BY_UE_IP")]
    pub attribute_by_ue_ip: bool,
    /// For each sighting, write a pcap of the signalling that created and last updated its session and of
    /// the packet that carried the token (and a JSON file naming each packet) into this directory
    /// (created owner-only); `gtpcharge explain FILE` reads one back.
    #[arg(long, env = "GTPCHARGE_EVIDENCE_DIR")]
    pub evidence_dir: Option<PathBuf>,
    /// Size cap of the evidence directory: half for the evidence files (the oldest are removed beyond
    /// it, with a warning), half for the rotating signalling store the evidence is drawn from.
    #[arg(long, default_value_t = 1 << 30, env = "GTPCHARGE_EVIDENCE_MAX_BYTES")]
    pub evidence_max_bytes: u64,
}

impl ProbeArgs {
    /// One thread or two: what the flags force, or what this machine favours (logged when it decided).
    pub fn threads(&self) -> pipeline::Threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Shards need this thread for decoding and dispatching: libpcap reads on another.
        let sharded = self.workers().unwrap_or(1) > 1;
        let (threads, why) = pipeline::choose(
            self.single_thread,
            self.pipeline || sharded,
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
    pub fn defaults() -> ProbeArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            probe: ProbeArgs,
        }
        Only::parse_from(["gtpcharge"]).probe
    }

    pub fn probe(&self) -> Result<Probe> {
        let mut config = Config::default();
        config.gtpc_ports.extend(&self.gtpc_ports);
        config.gtpu_ports.extend(&self.gtpu_ports);
        config.sessions_max = self.sessions_max;
        config.session_idle_timeout_s = self.session_idle_timeout_s;
        config.flows_max = self.flows_max;
        config.scan_bytes_max = self.scan_bytes_max;
        config.t3_response_ms = self.t3_response_ms;
        config.attribute_by_ue_ip = self.attribute_by_ue_ip;
        config.n3_requests = self.n3_requests;
        let workers = self.workers()?;
        let mut probe = if workers > 1 {
            Probe::sharded(config, self.decoder(), workers).context("starting the correlating shards")?
        } else {
            Probe::new(config, self.decoder())
        };
        if let Some(dir) = &self.evidence_dir {
            probe.evidence = Some(
                evidence::Evidence::open(dir, self.evidence_max_bytes)
                    .with_context(|| format!("opening the evidence directory {}", dir.display()))?,
            );
        }
        Ok(probe)
    }

    /// How many threads correlate: `--workers`, else the cores less one; one with `--single-thread` or
    /// `--evidence-dir` (refused with more, said so).
    pub fn workers(&self) -> Result<usize> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self.workers.map(usize::from) {
            Some(n) if n > 1 && self.evidence_dir.is_some() => anyhow::bail!(
                "--evidence-dir needs one correlating thread (it tags sessions as their events pass): \
                 use --workers 1 or leave --workers out"
            ),
            Some(n) => Ok(n),
            None if self.single_thread || self.evidence_dir.is_some() => Ok(1),
            None => Ok(cores.saturating_sub(1).max(1)),
        }
    }

    /// `--cluster`'s configuration, when given.
    pub fn cluster(&self) -> Option<crate::cluster::ClusterConfig> {
        let url = self.cluster.clone()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Some(crate::cluster::ClusterConfig {
            url,
            name: self.cluster_name.clone(),
            probe_id: self.probe_id.clone().unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id())),
            grace: std::time::Duration::from_millis(self.cluster_grace_ms),
        })
    }

    pub fn decoder(&self) -> DecoderConfig {
        let mut config = DecoderConfig { fragments_max: self.fragments_max, ..DecoderConfig::default() };
        config.vxlan_ports.extend(&self.vxlan_ports);
        config.geneve_ports.extend(&self.geneve_ports);
        config.mirror_ids.clone_from(&self.mirror_ids);
        config
    }

    pub fn metrics(&self) -> Result<Option<metrics::Exposition>> {
        let Some(address) = self.metrics_listen else { return Ok(None) };
        let exposition = metrics::Exposition::default();
        metrics::serve(address, exposition.clone())?;
        tracing::info!(%address, "metrics on /metrics");
        Ok(Some(exposition))
    }

    /// The billing API's replicas `--billing-url` names (comma-separated).
    pub fn billing_urls(&self) -> Vec<String> {
        self.billing_url.as_deref().map(delivery::replica_urls).unwrap_or_default()
    }

    pub fn delivery(&self) -> Result<Option<delivery::Delivery>> {
        let Some(url) = self.billing_url.as_ref().filter(|u| !u.is_empty()) else { return Ok(None) };
        let probe_key = secrets::secret(
            "probe-key",
            self.probe_key.clone(),
            given_on_command_line("probe_key"),
            self.probe_key_file.as_deref(),
        )?
        .context("--billing-url needs --probe-key-file (or GTPCHARGE_PROBE_KEY, or --probe-key)")?;
        let config = delivery::DeliveryConfig {
            urls: delivery::replica_urls(url),
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
