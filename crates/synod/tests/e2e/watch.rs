//! Watch through the `etcd-client` crate and raw streams: ordering, replay, prev_kv, ids, cancel,
//! compaction, progress, and clients that stop reading.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse, WatchStream};

use crate::harness::Member;

const WAIT: Duration = Duration::from_secs(10);

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response in time")
        .expect("stream ok")
        .expect("stream open")
}

/// Reads responses until `count` events arrived; returns them as (type, key, value, mod revision).
async fn collect(stream: &mut WatchStream, count: usize) -> Vec<(EventType, String, String, i64)> {
    let mut events = Vec::new();
    while events.len() < count {
        let response = next(stream).await;
        for event in response.events() {
            let kv = event.kv().expect("event kv");
            events.push((
                event.event_type(),
                kv.key_str().expect("utf8").to_owned(),
                kv.value_str().expect("utf8").to_owned(),
                kv.mod_revision(),
            ));
        }
    }
    events
}

/// Goal: a prefix watch sees every change once, in revision order, with prev_kv when asked, and a
/// watch from an old revision replays history first.
#[tokio::test]
async fn watch_delivers_ordered_events_and_replays_history() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let mut live = client
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    let created = next(&mut live).await;
    assert!(created.created());
    assert_eq!(
        created.watch_id(),
        0,
        "automatic watch ids start at 0, as in etcd"
    );

    let start = client
        .put("w/a", "1", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client.put("w/a", "2", None).await.expect("put");
    client
        .put("other", "x", None)
        .await
        .expect("put outside the prefix");
    client.delete("w/a", None).await.expect("delete");
    let events = collect(&mut live, 3).await;
    assert_eq!(
        events
            .iter()
            .map(|(t, k, v, _)| (*t, k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (EventType::Put, "w/a", "1"),
            (EventType::Put, "w/a", "2"),
            (EventType::Delete, "w/a", "")
        ]
    );
    assert_eq!(
        events[2].3,
        start + 3,
        "a delete event carries the delete's revision"
    );

    let mut replay = client
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start)
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch from history");
    assert!(next(&mut replay).await.created());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let response = next(&mut replay).await;
        for event in response.events() {
            seen.push((
                event.event_type(),
                event.prev_kv().map(|kv| kv.value().to_vec()),
            ));
        }
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put, None),
            (EventType::Put, Some(b"1".to_vec())),
            (EventType::Delete, Some(b"2".to_vec()))
        ]
    );
}

/// Goal: client-chosen ids, duplicates (created+canceled, not a stream error), cancel, filters,
/// compaction and progress requests behave as in etcd.
#[tokio::test]
async fn watch_ids_cancel_compaction_and_progress() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let mut stream = client
        .watch("k", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("watch");
    let created = next(&mut stream).await;
    assert_eq!((created.created(), created.watch_id()), (true, 7));

    stream
        .watch("k2", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .expect("send duplicate");
    let duplicate = next(&mut stream).await;
    assert!(duplicate.created() && duplicate.canceled());
    assert_eq!(
        duplicate.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    stream
        .watch(
            "k",
            Some(
                WatchOptions::new()
                    .with_watch_id(8)
                    .with_filters([etcd_client::WatchFilterType::NoPut]),
            ),
        )
        .await
        .expect("filtered watch");
    assert_eq!(next(&mut stream).await.watch_id(), 8);
    client.put("k", "v", None).await.expect("put");
    client.delete("k", None).await.expect("delete");
    let mut by_watcher: Vec<(i64, EventType)> = Vec::new();
    while by_watcher.len() < 3 {
        let response = next(&mut stream).await;
        by_watcher.extend(
            response
                .events()
                .iter()
                .map(|e| (response.watch_id(), e.event_type())),
        );
    }
    by_watcher.sort_by_key(|(id, _)| *id);
    assert_eq!(
        by_watcher,
        vec![
            (7, EventType::Put),
            (7, EventType::Delete),
            (8, EventType::Delete)
        ]
    );

    stream.cancel(7).await.expect("cancel");
    let canceled = next(&mut stream).await;
    assert_eq!((canceled.canceled(), canceled.watch_id()), (true, 7));

    stream.request_progress().await.expect("progress request");
    let progress = next(&mut stream).await;
    assert_eq!(
        progress.watch_id(),
        -1,
        "stream-wide progress carries watch id -1"
    );
    assert!(progress.events().is_empty());
    let current = client
        .get("k", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    assert_eq!(progress.header().expect("header").revision(), current);

    client.put("k", "again", None).await.expect("put");
    client.compact(current, None).await.expect("compact");
    let mut old = client
        .watch("k", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .expect("watch compacted");
    let mut compacted = next(&mut old).await;
    if compacted.created() && !compacted.canceled() {
        compacted = next(&mut old).await;
    }
    assert!(compacted.canceled());
    assert_eq!(compacted.compact_revision(), current);
}

/// Goal: 10,000 watchers on one stream all get the event, and a stream whose client stops
/// reading neither blocks writers nor loses events once it reads again.
#[tokio::test]
async fn many_watchers_and_a_client_that_stops_reading() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;

    // The crowd gets a connection of its own: the client library pays per open stream on a
    // connection, which would slow the writes below for reasons that are not the server's.
    let mut crowd_client = member.etcd_client().await;
    let mut crowd = crowd_client
        .watch("hot", Some(WatchOptions::new()))
        .await
        .expect("watch");
    for _ in 1..10_000 {
        crowd.watch("hot", None).await.expect("add watcher");
    }
    let mut created = 0;
    while created < 10_000 {
        if next(&mut crowd).await.created() {
            created += 1;
        }
    }
    client.put("hot", "1", None).await.expect("put hot");
    let mut notified = std::collections::HashSet::new();
    while notified.len() < 10_000 {
        let response = next(&mut crowd).await;
        assert_eq!(response.events().len(), 1);
        assert!(
            notified.insert(response.watch_id()),
            "one event per watcher"
        );
    }

    // A stalled reader: create the watch, then write far more than its queues hold.
    let mut stalled = client
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(next(&mut stalled).await.created());
    let value = "v".repeat(1024);
    let writes = 3_000;
    for i in 0..writes {
        client
            .put(format!("s/{}", i % 50), value.clone(), None)
            .await
            .expect("writes are not blocked by a slow watcher");
    }
    let latest = client
        .get(
            "s/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("get");
    let last_revision = latest.header().expect("header").revision();
    let mut revisions = Vec::new();
    while revisions.last().copied().unwrap_or(0) < last_revision {
        let response = next(&mut stalled).await;
        revisions.extend(
            response
                .events()
                .iter()
                .map(|e| e.kv().expect("kv").mod_revision()),
        );
    }
    assert_eq!(revisions.len(), writes, "every event arrives exactly once");
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "in revision order, with no gaps"
    );
}

/// Goal: watchers that ask for progress notifications get empty responses carrying the current
/// revision, at the configured interval; large revisions are fragmented when asked.
#[tokio::test]
async fn progress_notifications_and_fragments() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(
        root.path(),
        &[
            "--watch-progress-notify-interval",
            "300ms",
            "--max-request-bytes",
            "65536",
        ],
    );
    let mut client = member.etcd_client().await;
    client.put("p", "1", None).await.expect("put");
    let mut stream = client
        .watch("p", Some(WatchOptions::new().with_progress_notify()))
        .await
        .expect("watch");
    assert!(next(&mut stream).await.created());
    let progress = next(&mut stream).await;
    assert!(
        progress.events().is_empty(),
        "a progress notification has no events"
    );
    assert_eq!(
        progress.watch_id(),
        0,
        "periodic progress names its watcher"
    );
    assert_eq!(progress.header().expect("header").revision(), 2);

    // Deleting 20 keys of 8 KiB is one revision; with prev_kv its events hold 160 KiB, more than
    // one 64 KiB message, while the delete request itself is tiny.
    for i in 0..20 {
        client
            .put(format!("big/{i:02}"), vec![b'x'; 8 * 1024], None)
            .await
            .expect("put");
    }
    let mut fragmented = client
        .watch(
            "big/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_fragment()
                    .with_prev_key(),
            ),
        )
        .await
        .expect("watch");
    assert!(next(&mut fragmented).await.created());
    client
        .delete(
            "big/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete");
    let mut events = 0;
    let mut responses = 0;
    while events < 20 {
        let response = next(&mut fragmented).await;
        assert!(
            response
                .events()
                .iter()
                .all(|e| e.prev_kv().is_some_and(|kv| kv.value().len() == 8 * 1024))
        );
        events += response.events().len();
        responses += 1;
    }
    assert_eq!(events, 20);
    assert!(responses > 1, "the revision was split into fragments");
}

/// Regression (found in review): events queued for a canceled watcher were sent under its watch
/// id, so a new watcher the client created with the same id received the old key's events.
#[tokio::test]
async fn a_reused_watch_id_never_gets_the_canceled_watchers_events() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let mut writer = member.etcd_client().await;
    let mut stream = client
        .watch("old", Some(WatchOptions::new().with_watch_id(5)))
        .await
        .expect("watch");
    assert!(next(&mut stream).await.created());
    // Not reading: 300 events of 16 KiB overflow the connection's flow-control window and the
    // stream's output queue, so events for watch 5 on "old" are still queued at the cancel.
    let value = "o".repeat(16 * 1024);
    for _ in 0..300 {
        writer.put("old", value.clone(), None).await.expect("put");
    }
    stream.cancel(5).await.expect("cancel");
    stream
        .watch("new", Some(WatchOptions::new().with_watch_id(5)))
        .await
        .expect("re-create 5");
    let mut recreated = false;
    loop {
        let response = next(&mut stream).await;
        if response.created() && response.watch_id() == 5 {
            recreated = true;
            // Written once the new watcher exists, so it must arrive.
            writer.put("new", "first", None).await.expect("put new");
            continue;
        }
        let keys: Vec<Vec<u8>> = response
            .events()
            .iter()
            .map(|e| e.kv().expect("kv").key().to_vec())
            .collect();
        if recreated {
            assert!(
                keys.iter().all(|k| k == b"new"),
                "after watch 5 was re-created, only its own key's events arrive"
            );
            if !keys.is_empty() {
                break;
            }
        } else {
            assert!(keys.iter().all(|k| k == b"old"));
        }
    }
}

/// Goal: one connection carries many more streams than hyper's default of 200 (etcd allows
/// 2^32 - 1), as kube-apiserver multiplexes its watches: 300 watch streams on one client all
/// open and see a write, and a unary call on the same connection is answered meanwhile.
#[tokio::test]
async fn one_connection_carries_hundreds_of_watch_streams() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let mut streams = Vec::new();
    for _ in 0..300 {
        let stream = tokio::time::timeout(WAIT, client.watch("many", None))
            .await
            .expect("a watch stream opens in time")
            .expect("watch");
        streams.push(stream);
    }
    tokio::time::timeout(WAIT, client.put("many", "v", None))
        .await
        .expect("a unary call beside 300 streams is answered")
        .expect("put");
    for stream in &mut streams {
        let events = collect(stream, 1).await;
        assert_eq!(events[0].1, "many");
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .expect("VmRSS")
}

/// Goal: a watch whose client never reads holds a bounded amount of memory whatever the size of
/// the values (before, about 1,000 events of any size per stream: 1.4 GB for 1.4 MB values),
/// and still gets every event, in order, once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watch_of_large_values_holds_bounded_memory() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let pid = member.pid().expect("running");
    let mut writer = member.etcd_client().await;
    let mut reader = member.etcd_client().await;
    let mut stalled = reader
        .watch("big/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    assert!(next(&mut stalled).await.created());
    let before = rss_mib(pid);
    let value = vec![b'x'; 1 << 20];
    let writes = 400;
    for i in 0..writes {
        writer
            .put(format!("big/{}", i % 8), value.clone(), None)
            .await
            .expect("put");
    }
    let grown = rss_mib(pid).saturating_sub(before);
    // 400 MiB written; the stream's two queues hold at most 32 MiB each (plus one item). With
    // only the count bounds, the member grew by all it wrote and more (292 MiB for 240 writes).
    assert!(
        grown < 220,
        "the member grew by {grown} MiB with a stalled watcher"
    );
    let mut revisions = Vec::new();
    while revisions.len() < writes {
        let response = next(&mut stalled).await;
        revisions.extend(
            response
                .events()
                .iter()
                .map(|e| e.kv().expect("kv").mod_revision()),
        );
    }
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "every event once, in revision order"
    );
}
