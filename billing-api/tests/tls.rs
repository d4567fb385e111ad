//! TLS (rustls) with a client CA: probes must present a certificate it signed, SPs need none, plaintext
//! is refused; and gRPC reflection lists the services (what `grpcurl list` shows).
use gtpcharge_billing_api::auth::Kind;
use gtpcharge_billing_api::server::TlsFiles;
use gtpcharge_billing_api::Ledger;
use gtpcharge_proto::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn report() -> pb::ReportSightingsRequest {
    let token = gtpcharge_proto::Token::generate().unwrap().to_string();
    pb::ReportSightingsRequest {
        sightings: vec![pb::Sighting { token, msisdn: "46700000001".into(), ..Default::default() }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_for_probes_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert =
        CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    let probe_key_pair = KeyPair::generate().unwrap();
    let probe_cert =
        CertificateParams::new(vec!["probe-1".to_owned()]).unwrap().signed_by(&probe_key_pair, &issuer).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = TlsFiles {
        certificate: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
        client_ca: Some(write("ca.pem", ca_cert.pem())),
    };
    let url = format!("sqlite://{}/ledger.sqlite?mode=rwc", dir.path().display());
    let ledger = Ledger::open(&url).await.unwrap();
    let (_, sp) = ledger.create_service_provider("tls-sp", true).await.unwrap();
    let probe = ledger.create_credential(Kind::Probe, None, "tls-probe").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(gtpcharge_billing_api::server::serve(ledger, listener, Some(tls), std::future::pending()));

    let tls_channel = |identity: Option<Identity>| {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_cert.pem())).domain_name("localhost");
        if let Some(identity) = identity {
            config = config.identity(identity);
        }
        let endpoint =
            Channel::from_shared(format!("https://localhost:{}", address.port())).unwrap().tls_config(config).unwrap();
        async move { endpoint.connect().await.unwrap() }
    };
    // A probe with its certificate: served.
    let with_cert = tls_channel(Some(Identity::from_pem(probe_cert.pem(), probe_key_pair.serialize_pem()))).await;
    let result = pb::sighting_service_client::SightingServiceClient::new(with_cert.clone())
        .report_sightings(authed(&probe.secret, report()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result.results[0].outcome, pb::SightingOutcome::UnknownToken as i32);
    // A probe without a certificate: refused, even with a valid probe key.
    let without_cert = tls_channel(None).await;
    let refused = pb::sighting_service_client::SightingServiceClient::new(without_cert.clone())
        .report_sightings(authed(&probe.secret, report()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    // An SP needs no certificate.
    let list = pb::purchase_service_client::PurchaseServiceClient::new(without_cert.clone())
        .list_purchases(authed(&sp.secret, pb::ListPurchasesRequest::default()))
        .await;
    assert!(list.is_ok(), "{list:?}");
    // Plaintext to a TLS server fails.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", address.port())).unwrap().connect().await;
    let plain_result = match plain {
        Ok(channel) => pb::purchase_service_client::PurchaseServiceClient::new(channel)
            .list_purchases(authed(&sp.secret, pb::ListPurchasesRequest::default()))
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(plain_result, "plaintext must not be served");

    // Reflection: what `grpcurl list` asks.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(with_cert);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let listed = format!("{:?}", response.message_response);
    for service in [
        "gtpcharge.v1.PurchaseService",
        "gtpcharge.v1.SightingService",
        "gtpcharge.v1.AccountService",
        "grpc.health.v1.Health",
    ] {
        assert!(listed.contains(service), "{service} not listed: {listed}");
    }
}
