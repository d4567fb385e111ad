//! Serving the billing API: the three services plus gRPC health and reflection (so `grpcurl` works),
//! optional TLS (rustls) with optional client certificates, message size limits, a sweeper that expires
//! unseen purchases, and a graceful stop on SIGINT/SIGTERM.
use crate::consent_service::{ConsentApi, DeviceApi};
use crate::group_commit::{self, ReportQueue};
use crate::ledger::Ledger;
use crate::service::{AccountApi, PurchaseApi, SightingApi};
use gtpcharge_proto::v1 as pb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Requests larger than this are refused (RESOURCE_EXHAUSTED) before they are decoded.
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// When set, probes (SightingService) must present a certificate signed by this CA (mutual TLS);
    /// SPs and operators may connect without one.
    pub client_ca: Option<PathBuf>,
}

/// How ReportSightings calls reach the ledger (see `batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charging {
    /// Transactions in flight at once.
    pub workers: usize,
    /// Sightings one transaction takes from waiting calls at most (1: a call per transaction, no group
    /// commit beyond the call's own sightings).
    pub group_commit_sightings: usize,
}

impl Default for Charging {
    fn default() -> Self {
        Charging { workers: group_commit::WORKERS, group_commit_sightings: group_commit::BATCH_SIGHTINGS }
    }
}

/// Serves until `shutdown` resolves, charging as [`Charging::default`] says.
pub async fn serve(
    ledger: Ledger,
    listener: tokio::net::TcpListener,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    serve_with(ledger, listener, tls, shutdown, Charging::default(), Default::default(), Default::default()).await
}

/// [`serve`] with the charging path's settings, the guard against key guessing and the counters
/// (`telemetry.rs`) the caller exposes as metrics.
pub async fn serve_with(
    ledger: Ledger,
    listener: tokio::net::TcpListener,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    charging: Charging,
    guard: std::sync::Arc<crate::guard::AuthGuard>,
    telemetry: std::sync::Arc<crate::telemetry::Telemetry>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::purchase_service_server::PurchaseServiceServer<PurchaseApi>>().await;
    health_reporter.set_serving::<pb::sighting_service_server::SightingServiceServer<SightingApi>>().await;
    health_reporter.set_serving::<pb::account_service_server::AccountServiceServer<AccountApi>>().await;
    health_reporter.set_serving::<pb::consent_service_server::ConsentServiceServer<ConsentApi>>().await;
    health_reporter.set_serving::<pb::device_service_server::DeviceServiceServer<DeviceApi>>().await;
    // Reflection in both versions: grpcurl asks v1, Python's grpcio-reflection and other common clients
    // v1alpha first.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);

    let sweeper = {
        let ledger = ledger.clone();
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let swept = match ledger.expire_due().await {
                    Ok(expired) => ledger.expire_holds().await.map(|holds| expired + holds),
                    Err(error) => Err(error),
                };
                match swept {
                    Ok(expired) => telemetry.sweep(Ok(expired)),
                    Err(error) => {
                        telemetry.sweep(Err(()));
                        tracing::warn!(%error, "expiring purchases and holds failed; will retry");
                    }
                }
            }
        })
    };

    let webhooks = tokio::spawn(crate::webhooks::run(ledger.clone(), telemetry.clone()));

    let require_client_certificate = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let mut builder =
        Server::builder().timeout(Duration::from_secs(30)).http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = tls {
        let certificate = read_pem(&tls.certificate, "TLS certificate (--tls-cert)")?;
        let key = read_pem(&tls.key, "TLS key (--tls-key)")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(certificate, key));
        if let Some(ca) = &tls.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(read_pem(ca, "client CA (--tls-client-ca)")?))
                .client_auth_optional(true);
        }
        builder = builder.tls_config(config)?;
    }
    let purchases = pb::purchase_service_server::PurchaseServiceServer::new(PurchaseApi {
        ledger: ledger.clone(),
        guard: guard.clone(),
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let sightings = pb::sighting_service_server::SightingServiceServer::new(SightingApi {
        ledger: ledger.clone(),
        guard: guard.clone(),
        queue: ReportQueue::start(ledger.clone(), charging.workers, charging.group_commit_sightings),
        require_client_certificate,
        telemetry: telemetry.clone(),
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let consent = pb::consent_service_server::ConsentServiceServer::new(ConsentApi {
        ledger: ledger.clone(),
        guard: guard.clone(),
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let devices =
        pb::device_service_server::DeviceServiceServer::new(DeviceApi { ledger: ledger.clone(), guard: guard.clone() })
            .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let accounts = pb::account_service_server::AccountServiceServer::new(AccountApi { ledger, guard })
        .max_decoding_message_size(MESSAGE_BYTES_MAX);
    let incoming = accepted_without_delay(listener);
    let result = builder
        .layer(crate::telemetry::RpcLayer(telemetry))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(purchases)
        .add_service(sightings)
        .add_service(accounts)
        .add_service(consent)
        .add_service(devices)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    sweeper.abort();
    webhooks.abort();
    result?;
    Ok(())
}

/// The listener's connections, each with TCP_NODELAY. tonic sets it only on listeners it binds itself
/// (its `tcp_nodelay` is ignored with `serve_with_incoming`), and without it the last responses of a
/// burst of calls on one connection waited for the client's delayed ACK: 44-50 ms for the last calls of
/// every open-loop run of `benches/billing-load.sh`, against 3-5 ms for the calls before them (session
/// 17). A socket that refuses the option still works, only with that delay, so it is served either way.
fn accepted_without_delay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |accepted| {
        accepted.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Binds the listening address, with a clear error.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// A PEM file's bytes; the error names the file and what it is for. Also the probe's, for its client
/// certificates.
pub fn read_pem(path: &std::path::Path, what: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| std::io::Error::new(error.kind(), format!("reading the {what} {}: {error}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_wait_to_coalesce_small_writes() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = Box::pin(accepted_without_delay(listener));
        let client = tokio::net::TcpStream::connect(address).await.unwrap();
        let accepted = tokio_stream::StreamExt::next(&mut incoming).await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "the server's side of the connection has TCP_NODELAY");
        assert!(!client.nodelay().unwrap(), "a plain socket does not (so the check above can fail)");
    }
}
