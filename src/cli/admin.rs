//! The billing API's commands: `admin` (on the database directly) and `purchase` (an SP's client).
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AdminCommand {
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
    /// Devices enrolled for consent on the handset.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Check that the ledger balances: the sum of entries per currency is zero.
    CheckLedger,
    /// The audit trail of operator actions (keys, SPs, accounts; through `admin` or the AccountService),
    /// newest first: id, time, actor, action, subject, detail, tab-separated.
    Audit {
        /// Records at most.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Only records older than this id (to page back).
        #[arg(long)]
        before: Option<i64>,
    },
}

#[derive(Subcommand)]
pub enum PurchaseCommand {
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
        /// Who must agree: `network` (the sighting charges) or `device` (the subscriber confirms on the
        /// handset; prints the consent nonce for the SP's app).
        #[arg(long, default_value = "network", value_parser = ["network", "device"])]
        consent: String,
        /// NETWORK only: the sighting authorizes, and the SP captures or voids (`purchase capture|void`).
        #[arg(long)]
        manual_capture: bool,
        /// Seconds a hold lives once authorized (0: 300).
        #[arg(long, default_value_t = 0)]
        authorization_ttl_s: i64,
    },
    /// Capture an authorized purchase (amount 0: all of it).
    Capture {
        id: String,
        #[arg(long, default_value_t = 0)]
        amount: i64,
    },
    /// Void an authorized purchase: the hold goes back to the subscriber.
    Void { id: String },
    /// Show a purchase by id or token.
    Get {
        /// A purchase id, or a token (starts with gc1).
        key: String,
    },
}

#[derive(Subcommand)]
pub enum SpCommand {
    /// Register an SP; prints its id, key id and API key (shown once).
    Create {
        name: String,
        /// Let the SP create NETWORK purchases (charged on the network's proof of the line alone);
        /// without it the SP's purchases need the subscriber's consent on the handset (DEVICE).
        #[arg(long)]
        allow_network_consent: bool,
    },
    /// A new API key for an SP.
    Key { service_provider_id: i64 },
    /// The SP's signed webhooks.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
}

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Register or change the SP's endpoint; prints its new signing secret (shown once). The previous
    /// secret keeps signing for --overlap-hours.
    Set {
        service_provider_id: i64,
        /// https://... (http:// only to a loopback address).
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 24)]
        overlap_hours: i64,
    },
    /// Recent attempts, newest first: event id, time, HTTP status (0: no answer), duration, error.
    Log {
        service_provider_id: i64,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Subcommand)]
pub enum NamedCreate {
    /// Create one; prints its key id and secret (shown once).
    Create { name: String },
}

#[derive(Subcommand)]
pub enum AccountCommand {
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
    /// Set the account's payment PIN (4 to 12 digits; unlocks a locked one), read from a file or, with
    /// `-`, from standard input: never from the command line.
    Pin {
        msisdn: String,
        #[arg(long, value_name = "FILE")]
        pin_file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// An account's enrolled devices: id, label, enrolled, revoked, public key (hex).
    List { msisdn: String },
    /// Revoke a device: its confirmations are refused from then on.
    Revoke { device_id: i64 },
}
