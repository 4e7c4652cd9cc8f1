//! TLS and mutual TLS with the server's own certificates.

use std::time::Duration;

use ipam_bindings::server::{ServerOptions, serve};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// Starts a TLS server (mutual when `require_client_cert`); returns its address and a stopper.
async fn tls_server(
    pki: &Pki,
    dir: &std::path::Path,
    require_client_cert: bool,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut options = ServerOptions::new(dir.join("data"), Duration::from_secs(3600));
    options.tls_cert = Some(write("server.pem", &pki.server_cert));
    options.tls_key = Some(write("server.key", &pki.server_key));
    if require_client_cert {
        options.tls_client_ca = Some(write("ca.pem", &pki.ca));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(options, listener, async move {
        let _ = stopped.await;
    }));
    (address, stop)
}

async fn tls_check(address: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", address.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match health.check(HealthCheckRequest { service: String::new() }).await {
            Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                return Ok(response.get_ref().status);
            }
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(response) => return Ok(response.get_ref().status),
            Err(status) => return Err(format!("{status:?}")),
        }
    }
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let client_tls = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost")
    };

    let (address, _stop) = tls_server(&pki, &dir.path().join("tls"), false).await;
    assert_eq!(
        tls_check(address, Some(client_tls())).await,
        Ok(ServingStatus::Serving as i32)
    );
    assert!(
        tls_check(address, None).await.is_err(),
        "plaintext is refused on a TLS port"
    );

    let (address, _stop) = tls_server(&pki, &dir.path().join("mtls"), true).await;
    let with_cert = client_tls().identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    assert_eq!(
        tls_check(address, Some(with_cert)).await,
        Ok(ServingStatus::Serving as i32)
    );
    assert!(
        tls_check(address, Some(client_tls())).await.is_err(),
        "no client certificate, no service"
    );
}
