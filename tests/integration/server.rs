//! The server as a whole: health per service, a second server refused.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use ipam_bindings::pb::api;

use crate::common::*;

#[tokio::test]
async fn health_reports_the_server_and_each_service() {
    let server = TestServer::start().await;
    let mut health = server.health();
    for name in [
        "",
        "addressing.v1.Prefixes",
        "addressing.v1.ServiceBindings",
        "addressing.v1.Services",
        "addressing.v1.Routing",
    ] {
        let request = HealthCheckRequest { service: name.into() };
        let status = health.check(request).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{name:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    // What a drain does to health: lifecycle.rs.
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = TestServer::start_on(dir.path(), Duration::from_secs(60)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = ipam_bindings::server::ServerOptions::new(dir.path().to_path_buf(), Duration::ZERO);
    let second = tokio::time::timeout(
        PATIENCE,
        ipam_bindings::server::serve(options, listener, std::future::pending()),
    )
    .await
    .expect("refused at once");
    let message = second.unwrap_err().to_string();
    assert_eq!(
        message,
        format!("{} is in use by another ipam-bindings process", dir.path().display())
    );
    // The binary says it once, on stderr, in one line.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("ipam-bindings: {message}"),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A service this server does not offer, or a method its service does not have, is
/// UNIMPLEMENTED; the service's own methods on either side of it still answer.
#[tokio::test]
async fn a_service_or_method_not_served_is_unimplemented() {
    let server = TestServer::start().await;
    for path in [
        "/addressing.v1.Nowhere/CreatePrefix",
        "/addressing.v1.Prefixes/Nowhere",
        "/grpc.health.v1.Health/Nowhere",
        "/grpc.health.v1.Health",
        "/addressing.v1.Prefixes.CreatePrefix",
    ] {
        let status = raw_call(&server, path, tonic::Request::new(Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{path}: {status:?}");
    }
    let mut services = server.services();
    let request = api::ListServicesRequest { account_id: account() };
    let listed = services.list_services(request).await;
    assert!(!listed.unwrap().into_inner().services.is_empty());
}
