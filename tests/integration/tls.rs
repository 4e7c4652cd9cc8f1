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
    /// Client certificates (PEM cert, PEM key) with the URI SANs asked of [`pki_with`].
    clients_with_uris: Vec<(String, String)>,
}

fn pki() -> Pki {
    pki_with(&[])
}

fn pki_with(client_uris: &[&[&str]]) -> Pki {
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
    let clients_with_uris = (client_uris.iter())
        .map(|uris| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["client".to_string()]).unwrap();
            for uri in *uris {
                params
                    .subject_alt_names
                    .push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*uri).unwrap()));
            }
            (params.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
        })
        .collect();
    Pki {
        clients_with_uris,
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
    tls_server_with(pki, dir, require_client_cert, |_| {}).await
}

/// [`tls_server`] with more options set by `configure`.
async fn tls_server_with(
    pki: &Pki,
    dir: &std::path::Path,
    require_client_cert: bool,
    configure: impl FnOnce(&mut ServerOptions),
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
    configure(&mut options);
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

/// Handshakes run apart: clients that connect and never say a word (or send garbage) hold up
/// no one, and a connection whose handshake failed leaves the server serving.
#[tokio::test]
async fn a_stalled_handshake_holds_up_no_one() {
    use tokio::io::AsyncWriteExt;
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (address, _stop) = tls_server(&pki, dir.path(), false).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    let mut garbage = tokio::net::TcpStream::connect(address).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let checked = tokio::time::timeout(Duration::from_secs(5), tls_check(address, Some(client_tls))).await;
    assert_eq!(
        checked.expect("served while others stall"),
        Ok(ServingStatus::Serving as i32)
    );
    drop(silent);
}

/// Once the server is stopping it takes no new connections: one that arrives while a call is
/// still being drained is refused, not handshaken and then left unserved until the exit.
#[tokio::test]
async fn a_stopping_server_refuses_new_connections_while_it_drains() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (address, stop) = tls_server(&pki, dir.path(), false).await;
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    assert_eq!(
        tls_check(address, Some(client_tls.clone())).await,
        Ok(ServingStatus::Serving as i32)
    );
    let channel = Channel::from_shared(format!("https://localhost:{}", address.port()))
        .unwrap()
        .tls_config(client_tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A call that waits for a revision the server will not reach before its deadline: it is in
    // flight while the server drains.
    let mut services = ipam_bindings::pb::api::services_client::ServicesClient::new(channel);
    let mut request = tonic::Request::new(ipam_bindings::pb::api::ListServicesRequest::default());
    request
        .metadata_mut()
        .insert("x-ipam-min-revision", "1000000".parse().unwrap());
    request.set_timeout(Duration::from_secs(3));
    let waiting = tokio::spawn(async move { services.list_services(request).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the waiting call is still being drained");
    let connected = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address))
        .await
        .expect("a connection attempt is answered at once");
    assert!(
        connected.is_err(),
        "a new connection is refused while the server drains"
    );
    let _ = waiting.await;
}

/// A key that is not a PEM private key stops the start with a message naming the file.
#[tokio::test]
async fn an_unusable_key_is_a_start_up_error_naming_it() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("server.key");
    std::fs::write(&key, "not a key").unwrap();
    let cert = dir.path().join("server.pem");
    std::fs::write(&cert, &pki.server_cert).unwrap();
    let mut options = ServerOptions::new(dir.path().join("data"), Duration::from_secs(3600));
    options.tls_cert = Some(cert);
    options.tls_key = Some(key.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = serve(options, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("server.key") && error.contains("private key"), "{error}");
}

/// With mutual TLS and a policy, a client certificate's one URI SAN is the caller's SPIFFE id;
/// a certificate with none or two is refused, and a token over it acts as the token's
/// principal (the certificate's identity is recorded as `via`).
#[tokio::test]
async fn client_certificates_name_their_spiffe_id() {
    let router = "spiffe://test/ns/edge/sa/router";
    let pki = pki_with(&[&[router], &[], &[router, "spiffe://test/ns/edge/sa/other"]]);
    let dir = tempfile::tempdir().unwrap();
    let (token, hash) = {
        let token = ipam_bindings::auth::credentials::new_token("ci1").unwrap();
        let hash = ipam_bindings::hex::encode(&ipam_bindings::auth::credentials::sha256(token.as_bytes()));
        (token, hash)
    };
    let policy = format!(
        "[[principal]]\nid = \"{router}\"\ngrants = [ {{ permission = \"routing.lookup\" }} ]\n\
         [[token]]\nid = \"ci1\"\nsha256 = \"{hash}\"\nprincipal = \"ci-bot\"\n\
         grants = [ {{ permission = \"ip_prefixes.edit\", accounts = [\"*\"] }} ]\n"
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let policy_path = dir.path().join("policy.toml");
    let data = dir.path().join("mtls").join("data");
    let (address, stop) = tls_server_with(&pki, &dir.path().join("mtls"), true, |options| {
        options.auth_policy = Some(policy_path);
    })
    .await;
    let channel = |client: usize| {
        let (cert, key) = &pki.clients_with_uris[client];
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost")
            .identity(Identity::from_pem(cert, key));
        Channel::from_shared(format!("https://localhost:{}", address.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy()
    };
    wait_until_serving(&channel(0)).await;
    let lookup = |client: usize| {
        let mut routing = ipam_bindings::pb::api::routing_client::RoutingClient::new(channel(client));
        async move {
            let request = ipam_bindings::pb::api::LookupAddressRequest {
                address: "192.0.2.1".into(),
                active_only: false,
            };
            routing.lookup_address(request).await.unwrap_err()
        }
    };
    // The router may look up (the address is simply not covered).
    assert_eq!(lookup(0).await.code(), tonic::Code::NotFound);
    for client in [1, 2] {
        let refused = lookup(client).await;
        assert_error(
            &refused,
            tonic::Code::Unauthenticated,
            "CREDENTIALS_INVALID",
            1401,
            None,
        );
        assert!(refused.message().contains("exactly one URI SAN"), "{refused:?}");
    }
    // A token over the router's connection: the token's principal acts, via the router.
    let mut request = tonic::Request::new(ipam_bindings::pb::api::CreatePrefixRequest {
        account_id: account(),
        cidr: "192.0.2.0/24".into(),
        asn: None,
        description: String::new(),
        validate_only: false,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut prefixes = ipam_bindings::pb::api::prefixes_client::PrefixesClient::new(channel(0));
    prefixes.create_prefix(request).await.unwrap();
    let _ = stop.send(());
    wait_until_unlocked(&data).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_until_unlocked(&data).await;
    let log = ipam_bindings::log::EventLog::open(&data).unwrap();
    let events: Vec<_> = log.read_after(0).collect::<Result<_, _>>().unwrap();
    let actor = events[0].actor.as_deref().unwrap();
    assert_eq!((actor.principal.as_str(), actor.via.as_str()), ("ci-bot", router));
    assert_eq!(actor.credential, "token:ci1");
}
