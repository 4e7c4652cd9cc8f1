//! Operator tools and damage: a bit-flipped record stops the server (naming the revision) and
//! `ipam-bindings verify` reports the same; `export` then `import` rebuild identical state;
//! sled's file, zeroed ahead of its log, read back whole and cut only where it was written.

use std::process::Command;
use std::time::Duration;

use ipam_bindings::server::{ServerOptions, serve};

use crate::common::*;

fn tool(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run ipam-bindings");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

/// The data dir's sled database, opened directly (under the server's `EventLog`) to damage it
/// as a bad disk would; the mode must be the server's (`ipam_bindings::log`).
fn open_sled(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap()
}

async fn fill(server: &TestServer) {
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    server.bind(&prefix, "192.0.2.1/32", CDN).await;
    server.bind(&prefix, "192.0.2.2/32", SPECTRUM).await;
}

#[tokio::test]
async fn a_damaged_record_is_refused_by_the_server_and_by_verify() {
    let dir = stopped_after_fill().await;

    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("ok: 4 events, head revision 4"), "{stderr}");

    // Flip one bit of revision 3's record, as a bad disk would.
    {
        let db = open_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        let mut record = events.get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let last = record.len() - 1;
        record[last] ^= 0x04;
        events.insert(3u64.to_be_bytes(), record).unwrap();
        db.flush().unwrap();
    }
    wait_until_unlocked(dir.path()).await;
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(!ok);
    assert!(
        stderr.contains("damaged at revision 3") && stderr.contains("checksum"),
        "{stderr}"
    );

    let message = refused_start(dir.path()).await;
    assert!(message.contains("damaged at revision 3"), "{message}");
}

/// Starts a server on `dir`, which must refuse to start; returns why.
async fn refused_start(dir: &std::path::Path) -> String {
    wait_until_unlocked(dir).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = ServerOptions::new(dir.to_path_buf(), Duration::ZERO);
    let refused = tokio::time::timeout(PATIENCE, serve(options, listener, std::future::pending()))
        .await
        .unwrap();
    refused
        .expect_err("the server must refuse this data directory")
        .to_string()
}

/// A data directory with `fill`'s four events and a snapshot of revision 4 (a clean stop).
async fn stopped_after_fill() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    fill(&server).await;
    server.stop().await.unwrap();
    drop(server);
    wait_until_unlocked(dir.path()).await;
    dir
}

#[tokio::test]
async fn a_log_that_lost_its_last_events_is_refused_naming_the_revisions() {
    let dir = stopped_after_fill().await;
    {
        let db = open_sled(dir.path());
        let events = db.open_tree("events").unwrap();
        events.remove(4u64.to_be_bytes()).unwrap().unwrap();
        db.flush().unwrap();
    }
    // Both the length mark and the snapshot know that the log reached revision 4.
    let message = refused_start(dir.path()).await;
    assert!(
        message.contains("ends at revision 3") && message.contains("it had reached revision 4 (log.mark)"),
        "{message}"
    );
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(!ok && stderr.contains("ends at revision 3"), "{stderr}");
    std::fs::remove_file(dir.path().join("log.mark")).unwrap();
    let message = refused_start(dir.path()).await;
    assert!(
        message.contains("ends at revision 3") && message.contains("snapshot of revision 4"),
        "{message}"
    );
}

/// The prefix `fill` created first in the (stopped) server's data directory, read offline.
fn first_prefix(dir: &std::path::Path) -> ipam_bindings::domain::Prefix {
    let log = ipam_bindings::log::EventLog::open(dir).unwrap();
    match log.read_after(0).next().unwrap().unwrap().change {
        ipam_bindings::domain::Change::PrefixCreated(prefix) => prefix,
        other => panic!("fill starts with a prefix, not {other:?}"),
    }
}

/// [`first_prefix`] as the API names it (the fields a bind needs).
fn first_api_prefix(dir: &std::path::Path) -> ipam_bindings::pb::api::Prefix {
    let prefix = first_prefix(dir);
    ipam_bindings::pb::api::Prefix {
        id: prefix.id.to_string(),
        account_id: prefix.account_id.to_string(),
        cidr: prefix.cidr.to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_snapshot_behind_the_log_is_caught_up_for_reads_and_writes() {
    // A snapshot of revision 4 (fill's events), then two more events, then a start from that
    // older snapshot: the tail is replayed into the reads and into the writer's state.
    let dir = stopped_after_fill().await;
    let behind = std::fs::read(dir.path().join("state.snapshot")).unwrap();
    let prefix = first_api_prefix(dir.path());
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    let tail = server.bind(&prefix, "192.0.2.128/25", CDN).await;
    server.bind(&prefix, "192.0.2.64/26", SPECTRUM).await;
    server.stop().await.unwrap();
    drop(server);
    std::fs::write(dir.path().join("state.snapshot"), behind).unwrap();

    wait_until_unlocked(dir.path()).await;
    let server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(
        server.list_all_bindings(&prefix, 0).await.len(),
        5,
        "reads see the tail"
    );
    let again = server.try_bind(&prefix, &tail.cidr, CDN).await.unwrap_err();
    assert_error(
        &again,
        tonic::Code::AlreadyExists,
        "BINDING_ALREADY_EXISTS",
        1108,
        Some("cidr"),
    );
    server.bind(&prefix, "192.0.2.32/27", CDN).await;
    assert_eq!(list_revision(&server.channel, &prefix).await, 7, "no revision reused");
}

#[tokio::test]
async fn a_start_applies_the_deltas_that_follow_its_snapshot_and_refuses_one_beyond_the_log() {
    // A snapshot of revision 4 (fill's events), then a tail (a binding created, another created
    // and deleted), stored as a delta after that snapshot: a start restores the snapshot, applies
    // the delta and serves the same state as the log's. A delta that does not follow the
    // snapshot is not used, and one beyond the log's head means the log lost events.
    use ipam_bindings::domain::state::Changes;
    use ipam_bindings::log::{EventLog, LogPosition, codec};
    let dir = stopped_after_fill().await;
    let snapshot = std::fs::read(dir.path().join("state.snapshot")).unwrap();
    let prefix = first_api_prefix(dir.path());
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    server.bind(&prefix, "192.0.2.128/25", CDN).await;
    let deleted = server.bind(&prefix, "192.0.2.64/26", SPECTRUM).await;
    server.delete_binding(&deleted).await.unwrap();
    let listed = server.list_all_bindings(&prefix, 0).await;
    server.stop().await.unwrap();
    drop(server);
    wait_until_unlocked(dir.path()).await;

    let (after, tail, head) = {
        let log = EventLog::open(dir.path()).unwrap();
        let position = |revision| LogPosition {
            revision,
            log_record_checksum: log.record_checksum(revision).unwrap(),
        };
        let tail: Vec<_> = log.read_after(4).map(Result::unwrap).collect();
        (position(4), Changes::of(&tail), position(7))
    };
    let delta_file = |after: LogPosition, revision: u64| {
        let record = codec::encode_delta(after, revision, head.log_record_checksum.unwrap(), &tail);
        let mut file = (record.len() as u32).to_le_bytes().to_vec();
        file.extend(record);
        file
    };
    let start_with = |deltas: Vec<u8>| {
        std::fs::write(dir.path().join("state.snapshot"), &snapshot).unwrap();
        std::fs::write(dir.path().join("state.deltas"), deltas).unwrap();
    };

    start_with(delta_file(after, head.revision));
    wait_until_unlocked(dir.path()).await;
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(
        ok && stderr.contains("snapshot at revision 4, then 1 delta to revision 7"),
        "{stderr}"
    );
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(server.list_all_bindings(&prefix, 0).await, listed);
    assert!(
        server.try_bind(&prefix, &deleted.cidr, SPECTRUM).await.is_ok(),
        "the deletion holds"
    );
    assert_eq!(list_revision(&server.channel, &prefix).await, 8, "no revision reused");
    server.stop().await.unwrap();
    drop(server);
    assert!(
        !dir.path().join("state.deltas").exists(),
        "the stop's snapshot drops the deltas of the one it replaced"
    );

    // A delta that does not follow the snapshot is not read further (were it, its revision,
    // beyond the log's head, would refuse the start).
    wait_until_unlocked(dir.path()).await;
    let another = LogPosition {
        log_record_checksum: after.log_record_checksum.map(|checksum| checksum ^ 1),
        ..after
    };
    start_with(delta_file(another, 9));
    wait_until_unlocked(dir.path()).await;
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(
        ok && stderr.contains("snapshot at revision 4 (1 stored delta not used"),
        "{stderr}"
    );
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(list_revision(&server.channel, &prefix).await, 8);
    assert_eq!(server.list_all_bindings(&prefix, 0).await.len(), listed.len() + 1);
    server.stop().await.unwrap();
    drop(server);

    // Beyond the log's head: the log lost events the delta saw.
    wait_until_unlocked(dir.path()).await;
    start_with(delta_file(after, 9));
    std::fs::remove_file(dir.path().join("log.mark")).unwrap();
    let message = refused_start(dir.path()).await;
    assert!(
        message.contains("ends at revision 8") && message.contains("snapshot delta up to revision 9"),
        "{message}"
    );
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(!ok && stderr.contains("snapshot delta up to revision 9"), "{stderr}");
}

#[tokio::test]
async fn a_snapshot_and_a_mark_from_another_log_are_not_used() {
    // Two logs of the same length; one's snapshot put beside the other's records.
    let (ours, theirs) = (stopped_after_fill().await, stopped_after_fill().await);
    let (our_prefix, their_prefix) = (first_prefix(ours.path()), first_prefix(theirs.path()));
    for checkpoint in ["state.snapshot", "log.mark"] {
        std::fs::copy(theirs.path().join(checkpoint), ours.path().join(checkpoint)).unwrap();
    }
    wait_until_unlocked(ours.path()).await;
    let (ok, _, stderr) = tool(ours.path(), &["verify"]);
    assert!(ok && stderr.contains("taken from another log"), "{stderr}");
    assert!(stderr.contains("the length mark is another log's"), "{stderr}");

    wait_until_unlocked(ours.path()).await;
    let server = TestServer::start_on(ours.path(), Duration::from_secs(3600)).await;
    let listed = |prefix: &ipam_bindings::domain::Prefix| ipam_bindings::pb::api::ListPrefixesRequest {
        account_id: prefix.account_id.to_string(),
        page_size: 0,
        page_token: String::new(),
    };
    let mut client = server.prefixes();
    let mut list = async |prefix| {
        client
            .list_prefixes(listed(prefix))
            .await
            .unwrap()
            .into_inner()
            .prefixes
    };
    let ours_listed = list(&our_prefix).await;
    let theirs_listed = list(&their_prefix).await;
    // Rebuilt from our log, not loaded from their snapshot.
    assert_eq!(ours_listed.len(), 1);
    assert_eq!(ours_listed[0].id, our_prefix.id.to_string());
    assert!(theirs_listed.is_empty());
}

#[tokio::test]
async fn damaged_database_files_are_refused() {
    // Every stored copy of one binding's CIDR, bit-flipped in the file itself: sled's own page
    // checksums catch it, and the start names the revision it could not read (or, if sled took
    // it for a torn write at the end of its log, the revisions the snapshot says are missing).
    let dir = stopped_after_fill().await;
    let file = dir.path().join("db");
    let mut bytes = std::fs::read(&file).unwrap();
    let needle = b"192.0.2.2/32";
    let at: Vec<usize> = (0..bytes.len() - needle.len())
        .filter(|&i| &bytes[i..i + needle.len()] == needle)
        .collect();
    assert!(!at.is_empty(), "the record is stored as written");
    for i in at {
        bytes[i + 4] ^= 0x01;
    }
    std::fs::write(&file, &bytes).unwrap();
    let message = refused_start(dir.path()).await;
    assert!(message.contains("revision"), "{message}");
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(!ok && stderr.contains("revision"), "{stderr}");

    // Half of the written file cut off.
    let dir = stopped_after_fill().await;
    cut_sled_file(dir.path(), |written| written / 2);
    let message = refused_start(dir.path()).await;
    assert!(message.contains("truncated"), "{message}");
}

/// sled's file in `dir`: its length, and where its last byte that is not zero ends.
fn sled_file_extent(dir: &std::path::Path) -> (u64, u64) {
    let bytes = std::fs::read(dir.join("db")).unwrap();
    let written = bytes.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    (bytes.len() as u64, written as u64)
}

#[tokio::test]
async fn sleds_file_is_zeroed_ahead_of_its_log_and_a_start_reads_past_the_zeroes() {
    // Past its log's tip sled keeps its file written with zeroes (vendor/sled/PATCHES.md), so
    // that a durable write overwrites blocks the file has instead of growing it.
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    fill(&server).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    let zeroed = loop {
        let (length, written) = sled_file_extent(dir.path());
        let zeroed = length - written;
        if zeroed >= 4 << 20 || std::time::Instant::now() > deadline {
            break zeroed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(zeroed >= 4 << 20, "only {zeroed} bytes zeroed past the log");
    // A start that finds the zeroes (here after a stop without the final checkpoint, as
    // after a crash) reads every event and takes the zeroes for free space.
    server.stop().await.unwrap();
    drop(server);
    wait_until_unlocked(dir.path()).await;
    for checkpoint in ["state.snapshot", "state.deltas", "log.mark"] {
        let _ = std::fs::remove_file(dir.path().join(checkpoint));
    }
    let (ok, _, stderr) = tool(dir.path(), &["verify"]);
    assert!(ok && stderr.contains("ok: 4 events, head revision 4"), "{stderr}");
    let server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    let prefix = server.create_prefix(&account(), "198.51.100.0/24").await;
    assert_eq!(
        server.bind(&prefix, "198.51.100.0/24", CDN).await.cidr,
        "198.51.100.0/24"
    );
}

/// Cuts sled's file in `dir` to `new_length(written)` bytes, `written` being where its last
/// byte that is not zero ends: past the log, sled keeps the file zeroed ahead of its writes
/// (vendor/sled/PATCHES.md), and cutting only zeroes loses nothing.
fn cut_sled_file(dir: &std::path::Path, new_length: impl FnOnce(u64) -> u64) {
    let file = dir.join("db");
    let (_, written) = sled_file_extent(dir);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(new_length(written))
        .unwrap();
}

#[tokio::test]
async fn a_log_cut_short_without_a_snapshot_is_refused_or_complete() {
    // After a crash there may be no snapshot to say how long the log was: sled's own checks or
    // the length mark (`log.mark`) must catch a cut. Each length is either refused as damage
    // or a truncated log, or still holds every event; never a start with fewer events.
    for percent_kept in [10, 30, 50, 70, 90, 99] {
        let dir = stopped_after_fill().await;
        std::fs::remove_file(dir.path().join("state.snapshot")).unwrap();
        cut_sled_file(dir.path(), |written| written * percent_kept / 100);
        let (ok, _, stderr) = tool(dir.path(), &["verify"]);
        if ok {
            assert!(
                stderr.contains("4 events, head revision 4"),
                "{percent_kept}% kept: {stderr}"
            );
        } else {
            assert!(
                stderr.contains("damaged") || stderr.contains("it had reached revision 4 (log.mark)"),
                "{percent_kept}% kept: {stderr}"
            );
            assert!(!stderr.contains("panicked at"), "no panic report: {stderr}");
        }
    }
}

#[tokio::test]
async fn export_and_import_round_trip_state_and_revisions() {
    let source_dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_on(source_dir.path(), Duration::from_secs(3600)).await;
    fill(&server).await;
    let prefix = server.create_prefix(&account(), "198.51.100.0/24").await;
    let wide = server.bind(&prefix, &prefix.cidr, CDN).await;
    server.delete_binding(&wide).await.unwrap();
    server.stop().await.unwrap();
    drop(server);
    wait_until_unlocked(source_dir.path()).await;

    let export_file = source_dir.path().join("export.jsonl");
    let (ok, _, stderr) = tool(
        source_dir.path(),
        &["export", "--output", export_file.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("exported 7 events"), "{stderr}");
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&export_file).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["revision"].as_u64(), first["change"]["type"].as_str()),
        (Some(1), Some("prefix_created"))
    );

    let target_dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = tool(target_dir.path(), &["import", "--input", export_file.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    wait_until_unlocked(target_dir.path()).await;
    let (ok, _, stderr) = tool(target_dir.path(), &["import", "--input", export_file.to_str().unwrap()]);
    assert!(!ok && stderr.contains("import needs an empty one"), "{stderr}");

    // Same data, same revisions: both servers answer alike.
    let source = TestServer::start_on(source_dir.path(), Duration::from_secs(3600)).await;
    let target = TestServer::start_on(target_dir.path(), Duration::from_secs(3600)).await;
    for server in [&source, &target] {
        assert_eq!(server.list_all_bindings(&prefix, 0).await.len(), 0);
    }
    let request = ipam_bindings::pb::api::WatchServiceBindingsRequest {
        after_revision: Some(0),
        ..Default::default()
    };
    let mut histories = Vec::new();
    for server in [&source, &target] {
        let mut stream = server
            .bindings()
            .watch_service_bindings(request.clone())
            .await
            .unwrap()
            .into_inner();
        let mut history = Vec::new();
        for _ in 0..5 {
            history.push(
                tokio::time::timeout(PATIENCE, stream.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        histories.push(history);
    }
    assert_eq!(histories[0], histories[1]);
    assert_eq!(histories[0].last().unwrap().revision, 7);
}

#[tokio::test]
async fn a_damaged_snapshot_falls_back_to_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    fill(&server).await;
    let prefix = server.create_prefix(&account(), "198.51.100.0/24").await;
    let before = server.list_all_bindings(&prefix, 0).await;
    server.stop().await.unwrap();
    drop(server);
    wait_until_unlocked(dir.path()).await;
    // A clean stop wrote a snapshot; damage it.
    let file = dir.path().join("state.snapshot");
    let mut record = std::fs::read(&file).expect("a snapshot after a clean stop");
    record[10] ^= 0xff;
    std::fs::write(&file, record).unwrap();
    let server = TestServer::start_on(dir.path(), Duration::from_secs(3600)).await;
    assert_eq!(server.list_all_bindings(&prefix, 0).await, before);
    let request = ipam_bindings::pb::api::ListPrefixesRequest {
        account_id: prefix.account_id.clone(),
        page_size: 0,
        page_token: String::new(),
    };
    assert_eq!(
        server
            .prefixes()
            .list_prefixes(request)
            .await
            .unwrap()
            .into_inner()
            .prefixes,
        vec![prefix]
    );
}

#[tokio::test]
async fn background_snapshots_and_deltas_taken_during_writes_hold_the_state_at_their_revision() {
    // A checkpoint every 100 events while eight writers create and delete bindings and the
    // rollout activates them: a snapshot (the writer copies the state between commits and the
    // snapshot thread completes the copy with the events since it started), then deltas (what
    // the events since the last checkpoint changed). The snapshot, and the snapshot with the
    // deltas that follow it, must be the state the log folds into at their revisions.
    use ipam_bindings::domain::{Binding, Prefix, State};
    use ipam_bindings::log::codec;
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().to_path_buf(), Duration::ZERO);
    options.snapshot_every = 100;
    let mut server = TestServer::start_with_options(options).await;
    let account_id = account();
    let mut prefixes = Vec::new();
    for i in 0..8 {
        let prefix = server.create_prefix(&account_id, &format!("10.{i}.0.0/16")).await;
        server.bind(&prefix, &prefix.cidr, MAGIC_TRANSIT).await;
        prefixes.push(prefix);
    }
    let writers = prefixes.iter().enumerate().map(|(i, prefix)| {
        let server = &server;
        async move {
            for n in 0..60 {
                let binding = server.bind(prefix, &format!("10.{i}.{n}.1/32"), CDN).await;
                if n % 3 == 0 {
                    server.delete_binding(&binding).await.unwrap();
                }
            }
        }
    });
    futures_util::future::join_all(writers).await;
    // The last snapshot and its deltas, read while the server still runs (a stop writes a
    // snapshot of the final state and drops the deltas). A snapshot written between the two
    // reads leaves deltas that do not follow it: read again.
    let (mut snapshot, mut deltas, mut snapshot_record) = (None, Vec::new(), Vec::new());
    for _ in 0..200 {
        let deltas_file = std::fs::read(dir.path().join("state.deltas")).unwrap_or_default();
        if let Ok(record) = std::fs::read(dir.path().join("state.snapshot")) {
            let base = codec::decode_snapshot(&record).unwrap();
            let read: Vec<codec::Delta> = ipam_bindings::log::delta_records(&deltas_file)
                .map(|(record, _)| codec::decode_delta(record).unwrap())
                .collect();
            if read.first().is_some_and(|delta| delta.after == base.position()) {
                (snapshot, deltas, snapshot_record) = (Some(base), read, record);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot = snapshot.expect("a background snapshot and a delta after it were written");
    server.stop().await.unwrap();
    drop(server);
    wait_until_unlocked(dir.path()).await;

    let log = ipam_bindings::log::EventLog::open(dir.path()).unwrap();
    let head = log.head().unwrap();
    assert!(
        snapshot.revision >= 100 && snapshot.revision < head,
        "{} of {head}",
        snapshot.revision
    );
    let state_at = |revision: u64| {
        let up_to = log
            .read_after(0)
            .take_while(move |event| event.as_ref().map_or(true, |event| event.revision <= revision));
        let (replayed, replayed_head) = State::replay(up_to).unwrap();
        assert_eq!(replayed_head, revision);
        replayed
    };
    let contents = |state: &State| {
        let mut prefixes: Vec<Prefix> = state.prefixes().cloned().collect();
        prefixes.sort_by_key(|prefix| prefix.id);
        let mut bindings: Vec<Binding> = state.bindings().cloned().collect();
        bindings.sort_by_key(|binding| binding.id);
        let mut requests: Vec<String> = (state.remembered_requests()).map(|(_, id, _)| id.to_string()).collect();
        requests.sort();
        (prefixes, bindings, requests, state.n_provisioning())
    };
    let snapshot_revision = snapshot.revision;
    let expected = contents(&state_at(snapshot_revision));
    assert!(expected.1.len() > 8, "bindings were written before the snapshot");
    let alone = codec::decode_snapshot(&snapshot_record).unwrap().records.into_state();
    assert_eq!(contents(&alone), expected);
    let mut tip = snapshot.position();
    let mut records = snapshot.records;
    for delta in deltas {
        assert_eq!(delta.after, tip, "each delta follows the one before");
        tip = delta.position;
        records.apply(delta.changes);
    }
    assert!(tip.revision > snapshot_revision && tip.revision <= head);
    assert_eq!(contents(&records.into_state()), contents(&state_at(tip.revision)));
}

#[tokio::test]
async fn tools_refuse_a_missing_directory_and_a_live_one_and_export_stops_quietly_for_head() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("missing");
    for tool_name in ["verify", "export"] {
        let (ok, _, stderr) = tool(&missing, &[tool_name]);
        assert!(!ok, "{tool_name}");
        assert!(stderr.contains("does not exist"), "{tool_name}: {stderr}");
        assert!(!missing.exists(), "{tool_name} created the directory");
    }

    let mut server = TestServer::start_on(parent.path(), Duration::from_secs(3600)).await;
    // Enough events that the export outgrows a pipe's buffer (64 KiB).
    let prefix = server.create_prefix(&account(), "10.0.0.0/15").await;
    server.bind(&prefix, "10.0.0.0/15", MAGIC_TRANSIT).await;
    for index in 0..300 {
        server
            .bind(&prefix, &format!("10.{}.{}.0/24", index / 256, index % 256), CDN)
            .await;
    }
    let (ok, _, stderr) = tool(parent.path(), &["verify"]);
    assert!(!ok);
    assert!(
        stderr.contains("is in use by another ipam-bindings process") && stderr.lines().count() == 1,
        "{stderr}"
    );
    server.stop().await.unwrap();
    wait_until_unlocked(parent.path()).await;

    // `export | head -1`: the reader goes away; the export ends quietly and successfully.
    let mut export = Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .arg("--data-dir")
        .arg(parent.path())
        .arg("export")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = export.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = export.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}
