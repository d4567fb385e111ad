//! `gtpcharge agent`: the pay agent's options (serving on the loopback, and `agent enroll`).
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentCli {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub serve: AgentServe,
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Enroll this device: make its key, get an enrollment token, send it over mobile data (a DNS
    /// lookup), and once the network has seen it, bind the key with the account's payment PIN.
    Enroll(AgentEnroll),
}

/// What both the agent and its enrollment need.
#[derive(Args, Clone)]
pub struct AgentCommon {
    /// The billing API.
    #[arg(long, env = "GTPCHARGE_BILLING_URL", default_value = "http://127.0.0.1:50051")]
    pub billing_url: String,
    /// PEM CA that signed the billing API's certificate (https://).
    #[arg(long, env = "GTPCHARGE_BILLING_CA")]
    pub billing_ca: Option<PathBuf>,
    /// Allow an http:// billing URL off the loopback (a network you trust): PINs cross it in clear.
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Where the device key (`device.key`, the Ed25519 seed, mode 0600) and its enrollment
    /// (`device.json`) are kept.
    #[arg(long, env = "GTPCHARGE_AGENT_DIR", default_value = "gtpcharge-agent")]
    pub state_dir: PathBuf,
    /// Read the payment PIN from this file's first line each time one is needed (for tests and kiosks);
    /// an empty line refuses. Without it, and without --pin-fd, the agent asks on its terminal.
    #[arg(long, conflicts_with = "pin_fd")]
    pub pin_file: Option<PathBuf>,
    /// Read the payment PIN from this open file descriptor, a line each time one is needed.
    #[arg(long)]
    pub pin_fd: Option<u32>,
}

#[derive(Args)]
pub struct AgentServe {
    #[command(flatten)]
    pub common: AgentCommon,
    /// The port on 127.0.0.1 and [::1] (the agent listens on the loopback only).
    #[arg(long, default_value_t = 7353)]
    pub port: u16,
    /// An Origin allowed to call the agent (an SP's web page, `https://shop.example`); repeatable.
    /// A request with any other Origin is refused; one without an Origin (an app) is accepted.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<String>,
    /// How long to wait for the network to see a purchase's token before answering `not-seen`.
    #[arg(long, default_value_t = 30)]
    pub seen_wait_s: u64,
    /// Payment requests accepted per minute at most (others: 429).
    #[arg(long, default_value_t = 10)]
    pub requests_per_minute: u32,
}

#[derive(Args)]
pub struct AgentEnroll {
    #[command(flatten)]
    pub common: AgentCommon,
    /// The device's name, shown to the operator.
    #[arg(long, default_value = "handset")]
    pub label: String,
    /// Send the token as a DNS lookup of TOKEN.DOMAIN (the SP's or operator's token domain).
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// How long to wait for the network to see the token.
    #[arg(long, default_value_t = 300)]
    pub wait_s: u64,
}
