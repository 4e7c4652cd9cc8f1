//! The server's life as a mesh sees it: health NOT_SERVING while loading and through a
//! drain, still serving during the drain delay, then stopping.

use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::services_client::ServicesClient;
use ipam_bindings::server::{ServerOptions, serve};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reports_not_serving_while_still_serving_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    options.drain_delay = Duration::from_millis(800);
    let mut server = TestServer::start_with_options(options).await;
    let mut health = server.health();
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "addressing.v1.Routing".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let channel = server.channel.clone();
    let http_address = server.http_address;
    let stopping = tokio::spawn(async move { server.stop().await });
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Still serving during the drain delay, so calls routed here before the mesh noticed succeed.
    let request = api::ListServicesRequest { account_id: account() };
    ServicesClient::new(channel)
        .list_services(request)
        .await
        .expect("served during the drain delay");
    let services = format!("/client/v4/accounts/{}/addressing/services", account());
    let reply = http(http_address, "GET", &services, &[], None).await;
    assert_eq!(reply.status, 200, "the v4 JSON API too: {}", reply.body);
    // The open Watch stream does not hold the shutdown open: the stop completes and ends it.
    stopping.await.unwrap().unwrap();
    let end = tokio::time::timeout(PATIENCE, watch.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "the Watch stream ended: {end:?}");
    // Stopped: the v4 JSON API's listener is closed too.
    assert!(tokio::net::TcpStream::connect(http_address).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_projections_load() {
    use ipam_bindings::domain::{AccountId, Change, Event, Micros, Prefix, PrefixId};
    let dir = tempfile::tempdir().unwrap();
    {
        // A log long enough that loading it takes a while (in a debug build, about a second).
        let log = ipam_bindings::log::EventLog::open(dir.path()).unwrap();
        let account_id = AccountId::generate();
        let events: Vec<Event> = (0..80_000u32)
            .map(|i| {
                let prefix = Prefix {
                    id: PrefixId::generate(),
                    account_id,
                    cidr: format!("{}.{}.{}.0/24", 1 + i / 65_536, (i / 256) % 256, i % 256)
                        .parse()
                        .unwrap(),
                    asn: None,
                    description: String::new(),
                    created_at: Micros(1),
                    modified_at: Micros(1),
                };
                Event {
                    revision: u64::from(i) + 1,
                    time: Micros(1),
                    change: Change::PrefixCreated(prefix),
                    actor: None,
                }
            })
            .collect();
        for chunk in events.chunks(10_000) {
            log.append(chunk).unwrap();
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    let server = tokio::spawn(serve(options, listener, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut watch = loop {
        match health
            .watch(HealthCheckRequest {
                service: "addressing.v1.Prefixes".into(),
            })
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32, "loading");
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::Serving as i32, "loaded");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
