//! The writer's groups: commands queued together are decided as one group, and each decision
//! sees the earlier ones it could depend on, whether or not the writer applied them.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures_util::future::join_all;
use ipnet::IpNet;

use super::Engine;
use crate::domain::{AccountId, Actor, BindingId, Command, Outcome, PrefixId, Reason, Service};
use crate::log::EventLog;
use crate::metrics::Metrics;

fn create(account_id: AccountId, prefix_id: PrefixId, cidr: &str, request_id: &str) -> Command {
    Command::CreateBinding {
        id: BindingId::generate(),
        account_id,
        prefix_id,
        cidr: cidr.parse().unwrap(),
        service: Service::Cdn,
        request_id: Some(request_id.into()),
    }
}

/// A first create keeps the writer busy with its fsync while the others queue behind it, so
/// that they are decided together: creates sharing a request id across eight CIDRs make one
/// binding, creates of one CIDR make one, and distinct /32s all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_sees_its_shared_request_ids_and_cidrs() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let metrics = Arc::clone(&Metrics::new().writes);
    let engine = tokio::task::spawn_blocking(move || Engine::start(log, metrics, 100_000, None))
        .await
        .unwrap()
        .unwrap();
    let actor = || Actor::system("test");
    let account_id = AccountId::generate();
    let prefix_id = PrefixId::generate();
    let cidr: IpNet = "192.0.2.0/24".parse().unwrap();
    let onboard = Command::CreatePrefix {
        id: prefix_id,
        account_id,
        cidr,
        asn: None,
        description: String::new(),
    };
    engine.execute(onboard, actor()).await.unwrap();
    let wide = Command::CreateBinding {
        id: BindingId::generate(),
        account_id,
        prefix_id,
        cidr,
        service: Service::MagicTransit,
        request_id: None,
    };
    engine.execute(wide, actor()).await.unwrap();

    for round in 0..4 {
        let first = format!("192.0.2.{}/32", 200 + round);
        let mut group = vec![create(account_id, prefix_id, &first, &format!("first-{round}"))];
        for index in 0..8 {
            // Eight CIDRs under one request id, then one CIDR under eight request ids, then
            // eight /32s of their own.
            let shared = format!("192.0.2.{}/32", 10 * round + index);
            group.push(create(account_id, prefix_id, &shared, &format!("shared-{round}")));
            let contested = format!("192.0.2.{}/32", 100 + round);
            group.push(create(
                account_id,
                prefix_id,
                &contested,
                &format!("contested-{round}-{index}"),
            ));
            let own = format!("192.0.2.{}/32", 120 + 8 * round + index);
            group.push(create(account_id, prefix_id, &own, &format!("own-{round}-{index}")));
        }
        let outcomes = join_all(group.into_iter().map(|command| engine.execute(command, actor()))).await;
        let (mut shared, mut contested, mut own) = (BTreeSet::new(), Vec::new(), 0);
        for (index, outcome) in outcomes.into_iter().enumerate() {
            match (index % 3, outcome) {
                (0, Ok(Outcome::Binding(_))) if index == 0 => {}
                (1, Ok(Outcome::Binding(binding))) => {
                    shared.insert(binding.id);
                }
                (1, Err(error)) => assert_eq!(error.reason, Reason::RequestIdReused),
                (2, Ok(Outcome::Binding(binding))) => contested.push(binding.id),
                (2, Err(error)) => assert_eq!(error.reason, Reason::BindingAlreadyExists),
                (0, Ok(Outcome::Binding(_))) => own += 1,
                (_, other) => panic!("command {index}: {other:?}"),
            }
        }
        assert_eq!(shared.len(), 1, "round {round}: one binding for the shared request id");
        assert_eq!(contested.len(), 1, "round {round}: one binding for the contested CIDR");
        assert_eq!(own, 8);
    }
    let n_bindings = engine.projections().read().state.n_bindings();
    // The prefix-wide binding, then each round's first, shared, contested and own ones.
    assert_eq!(n_bindings, 1 + 4 * (1 + 1 + 1 + 8));
    engine.stop().await;
}
