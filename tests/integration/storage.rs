//! Storage faults: with the disk full (injected at the log, where sled would report ENOSPC),
//! writes fail UNAVAILABLE saying why (alone or decided together in a group), nothing unstored
//! is acknowledged or seen by reads, reads keep working, and writes resume once the disk
//! recovers, without a restart and without a gap in the revisions.

use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::server::ServerOptions;
use tonic::Code;

use crate::common::*;

async fn service_at(server: &TestServer, address: &str) -> String {
    let request = api::LookupAddressRequest {
        address: address.into(),
        active_only: false,
    };
    let found = server.routing().lookup_address(request).await.unwrap().into_inner();
    found.binding.map(|binding| binding.service_name).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_they_resume_when_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let options = ServerOptions::new(dir.path().to_path_buf(), Duration::from_secs(3600));
    let disk = options.storage_faults.clone();
    let server = TestServer::start_with_options(options).await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    assert_eq!(list_revision(&server.channel, &prefix).await, 2);

    disk.set_disk_full(true);
    for _ in 0..3 {
        let refused = server.try_bind(&prefix, "192.0.2.1/32", CDN).await.unwrap_err();
        assert_error(&refused, Code::Unavailable, "STORAGE_UNAVAILABLE", 1300, None);
        assert!(
            refused.message().contains("No space left on device"),
            "{}",
            refused.message()
        );
    }
    let refused = server
        .try_create_prefix(&account(), "198.51.100.0/24")
        .await
        .unwrap_err();
    assert_error(&refused, Code::Unavailable, "STORAGE_UNAVAILABLE", 1300, None);

    // Concurrent ones, decided together in groups (each seeing the ones before it), are
    // refused alike and leave nothing behind.
    let mut concurrent = tokio::task::JoinSet::new();
    for host in 10..42 {
        let (api, prefix) = (Api::new(server.channel.clone()), prefix.clone());
        concurrent.spawn(async move {
            api.try_bind(&prefix, &format!("192.0.2.{host}/32"), CDN)
                .await
                .map(|_| ())
        });
    }
    for round in 0..8 {
        let (api, prefix) = (Api::new(server.channel.clone()), prefix.clone());
        concurrent.spawn(async move {
            let update = api::UpdatePrefixRequest {
                account_id: prefix.account_id.clone(),
                prefix_id: prefix.id.clone(),
                description: format!("update {round}"),
                ..Default::default()
            };
            api.prefixes().update_prefix(update).await.map(|_| ())
        });
    }
    while let Some(refused) = concurrent.join_next().await {
        assert_error(
            &refused.unwrap().unwrap_err(),
            Code::Unavailable,
            "STORAGE_UNAVAILABLE",
            1300,
            None,
        );
    }

    // Reads are served from the projections, untouched by the failed writes.
    assert_eq!(server.list_all_bindings(&prefix, 0).await.len(), 1);
    let described = (server.prefixes())
        .get_prefix(api::GetPrefixRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.description, prefix.description);
    assert_eq!(service_at(&server, "192.0.2.1").await, "Magic Transit");
    assert_eq!(list_revision(&server.channel, &prefix).await, 2);

    disk.set_disk_full(false);
    let recovered = server.bind(&prefix, "192.0.2.1/32", CDN).await;
    assert_eq!(service_at(&server, "192.0.2.1").await, "CDN");
    assert_eq!(
        list_revision(&server.channel, &prefix).await,
        3,
        "failed writes used up no revision"
    );

    // Exactly the acknowledged changes are stored.
    let server = server.restart().await;
    let ids: Vec<String> = server
        .list_all_bindings(&prefix, 0)
        .await
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&recovered.id));
    assert_eq!(list_revision(&server.channel, &prefix).await, 3);
    assert!(server.try_create_prefix(&account(), "198.51.100.0/24").await.is_ok());
}
