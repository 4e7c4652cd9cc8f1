//! The fuzz targets' properties (`ipam_bindings::robustness`) over their seed corpus
//! (`fuzz/corpus/<target>/`) and every input a fuzzer ever crashed on (`fuzz/regressions/
//! <target>/`), under stable `cargo test`: a finding, once fixed, stays fixed.
//!
//! The seeds are written by `cargo test --test integration write_fuzz_seeds -- --ignored`.

use std::path::{Path, PathBuf};

use ipam_bindings::domain::network::NetworkKey;
use ipam_bindings::domain::{
    AccountId, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service, State,
};
use ipam_bindings::log::codec;
use ipam_bindings::operations::page_token::{self, ListScope};
use ipam_bindings::pb::api;
use ipam_bindings::robustness::TARGETS;
use prost::Message;

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target)
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

#[test]
fn every_seed_and_every_past_finding_holds_its_property() {
    for (target, check) in TARGETS {
        let seeds = inputs(&fuzz_dir("corpus", target));
        assert!(
            !seeds.is_empty(),
            "no seeds for {target}: write them (see the module doc)"
        );
        for (path, bytes) in seeds.iter().chain(&inputs(&fuzz_dir("regressions", target))) {
            let held = std::panic::catch_unwind(|| check(bytes));
            assert!(held.is_ok(), "{target}: {} breaks the property", path.display());
        }
    }
}

/// Valid inputs for each target, and a few damaged ones, as seed files.
#[test]
#[ignore = "writes the seed corpus into fuzz/corpus"]
fn write_fuzz_seeds() {
    let owner = Prefix {
        id: PrefixId::generate(),
        account_id: AccountId::generate(),
        cidr: "192.0.2.0/24".parse().unwrap(),
        asn: Some(64_496),
        description: "seed".into(),
        created_at: Micros(1),
        modified_at: Micros(1),
    };
    let bound = Binding {
        id: BindingId::generate(),
        account_id: owner.account_id,
        prefix_id: owner.id,
        cidr: "192.0.2.0/25".parse().unwrap(),
        service: Service::Cdn,
        state: ProvisioningState::Active,
        created_at: Micros(1),
        modified_at: Micros(2),
    };
    let events = vec![
        Event {
            revision: 41,
            time: Micros(5),
            change: Change::PrefixCreated(owner.clone()),
            actor: None,
        },
        Event {
            revision: 42,
            time: Micros(7),
            change: Change::BindingCreated {
                binding: bound.clone(),
                request_id: Some("retry-1".into()),
            },
            actor: None,
        },
        Event {
            revision: 43,
            time: Micros(8),
            change: Change::BindingDeleted(bound),
            actor: None,
        },
    ];
    let group = codec::encode_group(&events);
    let mut record = 43u64.to_le_bytes().to_vec();
    record.extend_from_slice(&group);
    let single = codec::encode(&events[0]);
    let mut single_record = 41u64.to_le_bytes().to_vec();
    single_record.extend_from_slice(&single);

    let mut state = State::default();
    for event in &events[..2] {
        state.apply(event);
    }
    let snapshot = codec::encode_snapshot(42, Some(0xdead_beef), &state);
    let mark = codec::encode_mark(43, 0x0bad_f00d);
    // A delta file: the changes after the snapshot (the binding deleted), then a cut record.
    let after = ipam_bindings::log::LogPosition {
        revision: 42,
        log_record_checksum: Some(0xdead_beef),
    };
    let changes = ipam_bindings::domain::state::Changes::of(&events[2..]);
    let delta = codec::encode_delta(after, 43, 0x0bad_f00d, &changes);
    let mut delta_file = Vec::new();
    for record in [&delta[..], &delta[..delta.len() / 2]] {
        delta_file.extend_from_slice(&(record.len() as u32).to_le_bytes());
        delta_file.extend_from_slice(record);
    }

    let message = |first: u64, last: u64, payload: &[u8]| {
        let mut bytes =
            format!("Ipam-First-Revision: {first}\nIpam-Last-Revision: {last}\nNats-Msg-Id: writer-1\n\n").into_bytes();
        bytes.extend_from_slice(payload);
        bytes
    };
    let scope = ListScope {
        list: "bindings",
        scope: b"0123456789abcdef",
    };
    let key = NetworkKey::of(&"192.0.2.0/25".parse().unwrap());
    let token = page_token::encode(&scope, key);

    // lookup_batch: four commands (192.0.2.0/24, bound whole to Magic Transit and .1/32 to the
    // CDN, the first activated), then addresses inside in three spellings and one anywhere; a
    // second with an IPv6 prefix bound whole; a third with text that is no address.
    let inside = |choice: u8, last_octet: u8| {
        let mut bytes = vec![choice, 0, 0, 0, 0, last_octet];
        bytes.extend_from_slice(&[0; 12]);
        bytes
    };
    let mut ipv4_batch = vec![4, 0, 0, 192, 0, 2, 0, 8, 0];
    ipv4_batch.extend_from_slice(&[1, 0, 0]);
    ipv4_batch.extend_from_slice(&[0; 16]);
    ipv4_batch.push(0);
    ipv4_batch.extend_from_slice(&[1, 0, 8, 0, 0, 0, 1]);
    ipv4_batch.extend_from_slice(&[0; 12]);
    ipv4_batch.push(1);
    ipv4_batch.extend_from_slice(&[2, 0]);
    ipv4_batch.push(0);
    for (choice, last_octet) in [(1, 1), (9, 7), (17, 1), (1, 200)] {
        ipv4_batch.extend(inside(choice, last_octet));
    }
    ipv4_batch.extend_from_slice(&[0, 0, 198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut ipv6_batch = vec![2, 0, 1, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1];
    ipv6_batch.extend_from_slice(&[1, 0, 0]);
    ipv6_batch.extend_from_slice(&[0; 16]);
    ipv6_batch.extend_from_slice(&[2, 1]);
    for choice in [1, 9, 17] {
        ipv6_batch.extend(inside(choice, 9));
    }
    let mut text_batch = ipv4_batch[..ipv4_batch.len() - 18].to_vec();
    text_batch.extend_from_slice(&[24, 0, 7]);
    text_batch.extend_from_slice(b"2001:db");

    // LookupAddresses requests (after the byte that picks where the buffer splits): a whole
    // one, one with an address that is not UTF-8, one cut short.
    let request = api::LookupAddressesRequest::new(["192.0.2.1", "2001:db8::1", "x"], true, api::LookupView::Compact);
    let mut whole = vec![7];
    whole.extend(request.encode_to_vec());
    let mut not_utf8 = vec![3, 10, 2, 0xc3, 0x28];
    not_utf8.extend(request.encode_to_vec());
    let cut = whole[..whole.len() - 4].to_vec();

    // Batch answers as a client receives them (after the byte that picks where the buffer
    // splits): one laid out as a server writes it (results, then listed bindings), the same
    // with its listed binding first, with a field this version does not know, and cut short.
    let listed = api::ServiceBinding {
        id: "b".repeat(32),
        cidr: "192.0.2.0/24".into(),
        ..Default::default()
    };
    let result = |binding_index| api::LookupAddressResult {
        found: true,
        prefix_id: "p".repeat(32),
        binding_index,
        ..Default::default()
    };
    let results = ipam_bindings::api::wire::Decoded {
        results: vec![result(Some(0)), api::LookupAddressResult::default(), result(None)],
        bindings: Vec::new(),
    }
    .encode_to_vec();
    let bindings = ipam_bindings::api::wire::Decoded {
        results: Vec::new(),
        bindings: vec![listed],
    }
    .encode_to_vec();
    let as_written = [&[5][..], &results, &bindings].concat();
    let reordered = [&[0][..], &bindings, &results].concat();
    let unknown_field = [&[7][..], &results, &[9 << 3, 1], &bindings].concat();
    let answer_cut = as_written[..as_written.len() - 3].to_vec();

    let seeds: [(&str, Vec<Vec<u8>>); 8] = [
        (
            "record",
            vec![record.clone(), single_record, record[..record.len() - 3].to_vec()],
        ),
        (
            "snapshot",
            vec![
                snapshot.clone(),
                mark,
                snapshot[..snapshot.len() / 2].to_vec(),
                snapshot.clone(),
                delta_file,
            ],
        ),
        (
            "stream_message",
            vec![
                message(41, 43, &group),
                message(40, 43, &group),
                message(41, 43, &single),
            ],
        ),
        (
            "page_token",
            vec![
                token.clone().into_bytes(),
                token.to_uppercase().into_bytes(),
                key.to_bytes().to_vec(),
            ],
        ),
        (
            "fields",
            [
                "192.0.2.0/24",
                "2001:DB8::/32",
                "10.0.0.1/8",
                "0123456789abcdef0123456789abcdef",
                "magic-transit",
                "::ffff:1.2.3.4",
                "retry-\u{7}",
            ]
            .map(|text| text.as_bytes().to_vec())
            .to_vec(),
        ),
        ("lookup_batch", vec![ipv4_batch, ipv6_batch, text_batch]),
        ("lookup_request", vec![whole, not_utf8, cut]),
        ("lookup_answer", vec![as_written, reordered, unknown_field, answer_cut]),
    ];
    for (target, inputs) in seeds {
        let dir = fuzz_dir("corpus", target);
        std::fs::create_dir_all(&dir).unwrap();
        for (index, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{index}")), input).unwrap();
        }
    }
}
