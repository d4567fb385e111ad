//! What the API counts for its Prometheus exposition (`serve --metrics-listen`): every call by method and
//! gRPC status, with a latency histogram per method ([`RpcLayer`], a tower layer around the services);
//! charges by outcome; the expiry sweeper's runs; the database pool; the key-guessing guard's refusals.
//!
//! A call's status is the one its response headers carry (tonic answers an error "trailers-only", with
//! `grpc-status` in the headers), else OK; its latency is the time to the response headers. For the one
//! streaming method, `WatchPurchases`, both are those of the stream's opening.
use crate::guard::AuthGuard;
use crate::ledger::{Ledger, Outcome};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS_S: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct Method {
    /// Calls by gRPC status name.
    by_status: BTreeMap<&'static str, u64>,
    /// Calls whose latency was at most each bound (not cumulative here; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

/// The API's counters, shared by the services, the sweeper and the exposition.
#[derive(Default)]
pub struct Telemetry {
    methods: Mutex<BTreeMap<String, Method>>,
    charges: Mutex<BTreeMap<&'static str, u64>>,
    sweeps: AtomicU64,
    sweep_failures: AtomicU64,
    expired: AtomicU64,
    /// Webhook attempts by result (delivered, retry, abandoned).
    webhooks: Mutex<BTreeMap<&'static str, u64>>,
    /// Deliveries waiting (neither delivered nor abandoned), as last counted by the sender.
    webhook_backlog: AtomicU64,
}

impl Telemetry {
    fn call(&self, method: &str, status: &'static str, seconds: f64) {
        let Ok(mut methods) = self.methods.lock() else { return };
        let entry = match methods.get_mut(method) {
            Some(entry) => entry,
            None => methods.entry(method.to_owned()).or_default(),
        };
        *entry.by_status.entry(status).or_default() += 1;
        entry.count += 1;
        entry.sum_s += seconds;
        if let Some(bucket) = LATENCY_BUCKETS_S.iter().position(|&bound| seconds <= bound) {
            if let Some(count) = entry.buckets.get_mut(bucket) {
                *count += 1;
            }
        }
    }

    /// A sighting's outcome, as ReportSightings answered it.
    pub fn charge(&self, outcome: Outcome) {
        if let Ok(mut charges) = self.charges.lock() {
            *charges.entry(outcome.as_str()).or_default() += 1;
        }
    }

    /// One run of the expiry sweeper: how many purchases it expired, or that it failed.
    pub fn sweep(&self, result: Result<u64, ()>) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(expired) => {
                self.expired.fetch_add(expired, Ordering::Relaxed);
            }
            Err(()) => {
                self.sweep_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One webhook attempt's result.
    pub fn webhook(&self, result: &'static str) {
        if let Ok(mut webhooks) = self.webhooks.lock() {
            *webhooks.entry(result).or_default() += 1;
        }
    }

    /// The webhook backlog, as just counted.
    pub fn webhook_backlog(&self, deliveries: u64) {
        self.webhook_backlog.store(deliveries, Ordering::Relaxed);
    }

    /// The exposition text of every counter, the pool's and the guard's included.
    pub fn render(&self, ledger: &Ledger, guard: &AuthGuard) -> String {
        let mut out = String::new();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        if let Ok(methods) = self.methods.lock() {
            head(&mut out, "gtpcharge_api_requests_total", "counter", "Calls answered, by method and gRPC status.");
            for (method, calls) in methods.iter() {
                for (status, count) in &calls.by_status {
                    let _ = writeln!(
                        out,
                        "gtpcharge_api_requests_total{{method=\"{}\",status=\"{status}\"}} {count}",
                        label(method)
                    );
                }
            }
            let name = "gtpcharge_api_request_duration_seconds";
            head(&mut out, name, "histogram", "Time from a call's arrival to its response headers, by method.");
            for (method, calls) in methods.iter() {
                let method = label(method);
                let mut cumulative = 0;
                for (bound, count) in LATENCY_BUCKETS_S.iter().zip(calls.buckets) {
                    cumulative += count;
                    let _ = writeln!(out, "{name}_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_bucket{{method=\"{method}\",le=\"+Inf\"}} {}", calls.count);
                let _ = writeln!(out, "{name}_sum{{method=\"{method}\"}} {}", calls.sum_s);
                let _ = writeln!(out, "{name}_count{{method=\"{method}\"}} {}", calls.count);
            }
        }
        if let Ok(charges) = self.charges.lock() {
            head(&mut out, "gtpcharge_api_charges_total", "counter", "Sightings reported, by the ledger's outcome.");
            for (outcome, count) in charges.iter() {
                let _ = writeln!(out, "gtpcharge_api_charges_total{{outcome=\"{outcome}\"}} {count}");
            }
        }
        let counters = [
            ("gtpcharge_api_expiry_sweeps_total", "Runs of the expiry sweeper.", self.sweeps.load(Ordering::Relaxed)),
            (
                "gtpcharge_api_expiry_sweep_failures_total",
                "Runs of the expiry sweeper that failed (retried a second later).",
                self.sweep_failures.load(Ordering::Relaxed),
            ),
            (
                "gtpcharge_api_expired_purchases_total",
                "Purchases the sweeper expired.",
                self.expired.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        head(
            &mut out,
            "gtpcharge_api_webhook_attempts_total",
            "counter",
            "Webhook attempts, by result (delivered, retry, abandoned).",
        );
        if let Ok(webhooks) = self.webhooks.lock() {
            for result in ["delivered", "retry", "abandoned"] {
                let count = webhooks.get(result).copied().unwrap_or(0);
                let _ = writeln!(out, "gtpcharge_api_webhook_attempts_total{{result=\"{result}\"}} {count}");
            }
        }
        let name = "gtpcharge_api_webhook_backlog";
        head(
            &mut out,
            name,
            "gauge",
            "Webhook deliveries waiting: queued or retrying, neither delivered nor abandoned.",
        );
        let _ = writeln!(out, "{name} {}", self.webhook_backlog.load(Ordering::Relaxed));
        let (size, idle) = ledger.pool_connections();
        head(&mut out, "gtpcharge_api_db_connections", "gauge", "Database connections open in the pool.");
        let _ = writeln!(out, "gtpcharge_api_db_connections {size}");
        head(&mut out, "gtpcharge_api_db_connections_idle", "gauge", "Of those, idle.");
        let _ = writeln!(out, "gtpcharge_api_db_connections_idle {idle}");
        let (failures, delayed) = guard.failures();
        head(
            &mut out,
            "gtpcharge_api_auth_failures_total",
            "counter",
            "Calls refused for a missing, unknown or revoked key.",
        );
        let _ = writeln!(out, "gtpcharge_api_auth_failures_total {failures}");
        let name = "gtpcharge_api_auth_failures_delayed_total";
        head(&mut out, name, "counter", "Of those, answered late because the peer had failed too often.");
        let _ = writeln!(out, "{name} {delayed}");
        out
    }
}

/// A label value as the exposition format allows it.
fn label(value: &str) -> String {
    value.replace(['"', '\\', '\n'], "_")
}

/// The gRPC status a response's headers carry, by its canonical name; OK when they carry none.
fn status_of<B>(response: &http::Response<B>) -> &'static str {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .unwrap_or(0);
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts every call through the services it wraps.
#[derive(Clone)]
pub struct RpcLayer(pub Arc<Telemetry>);

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = Rpc<S>;
    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc { inner, telemetry: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Rpc<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The service that was made ready is the one that takes the call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let telemetry = self.telemetry.clone();
        // "/gtpcharge.v1.PurchaseService/CreatePurchase" → "PurchaseService/CreatePurchase"
        let path = request.uri().path();
        let method = path.trim_start_matches('/').rsplit_once('.').map_or(path, |(_, method)| method).to_owned();
        let started = Instant::now();
        Box::pin(async move {
            let result = inner.call(request).await;
            let status = match &result {
                Ok(response) => status_of(response),
                Err(_) => "UNAVAILABLE",
            };
            telemetry.call(&method, status, started.elapsed().as_secs_f64());
            result
        })
    }
}
