//! Prometheus metrics that move as calls are made.

use std::collections::HashMap;

use ipam_bindings::pb::api;

use crate::common::*;

async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    scrape_metrics(server.metrics_address).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_calls_are_made() {
    let server = TestServer::start().await;
    let key = r#"ipam_grpc_calls_total{method="CreatePrefix",code="OK"}"#;
    let before = scrape(&server).await.get(key).copied().unwrap_or(0.0);
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    server.bind(&prefix, &prefix.cidr, CDN).await;
    server.try_create_prefix(&account(), "192.0.2.0/24").await.unwrap_err();
    let after = scrape(&server).await;
    assert_eq!(after[key], before + 1.0);
    assert_eq!(
        after[r#"ipam_grpc_calls_total{method="CreatePrefix",code="ALREADY_EXISTS"}"#],
        1.0
    );
    assert!(after[r#"ipam_grpc_call_seconds_count{method="CreateServiceBinding"}"#] >= 1.0);
    assert_eq!(after["ipam_log_revision"], 2.0);
    assert_eq!(after["ipam_log_events_appended_total"], 2.0);
    assert_eq!(after["ipam_projection_prefixes"], 1.0);
    assert_eq!(after["ipam_projection_bindings"], 1.0);
    assert_eq!(after["ipam_rollout_backlog"], 1.0);
    assert!(after["ipam_log_fsync_seconds_count"] >= 2.0);
    let _stream = server
        .bindings()
        .watch_service_bindings(api::WatchServiceBindingsRequest::default())
        .await
        .unwrap();
    assert_eq!(scrape(&server).await["ipam_watch_streams_open"], 1.0);
}
