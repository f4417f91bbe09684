//! Crash safety with real processes: kill -9 under write load, torn log tails, corrupted files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::GetOptions;

use crate::harness::{Member, Mounted};

/// Writers that record every acknowledged put (key → revision) until they meet an error.
async fn write_until_killed(
    member: &Member,
    writers: usize,
    acked: Arc<Mutex<BTreeMap<String, i64>>>,
    round: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let mut client = member.etcd_client().await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..1_000_000u64 {
                let key = format!("crash/{round}/{writer}/{seq:08}");
                match client.put(key.clone(), seq.to_string(), None).await {
                    Ok(response) => {
                        let revision = response.header().expect("header").revision();
                        acked.lock().expect("lock").insert(key, revision);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tasks
}

/// Goal: every write acknowledged before a kill -9 is present after restart, with the revision it
/// was acknowledged at, and the store revision never goes back; repeated over several crashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_no_acknowledged_write() {
    let root = tempfile::tempdir().expect("temp dir");
    // A small snapshot count makes log compaction and purging happen between the crashes.
    let mut member = Member::start(root.path(), &["--snapshot-count", "500"]);
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut last_revision = 1;
    for round in 0..5 {
        let tasks = write_until_killed(&member, 8, acked.clone(), round).await;
        // Let the load run, different lengths per round, then kill without warning.
        tokio::time::sleep(Duration::from_millis(300 + 250 * round as u64)).await;
        member.kill9();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        member.restart();
        let mut client = member.etcd_client().await;
        let all = client
            .get("crash/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read back");
        let revision = all.header().expect("header").revision();
        assert!(
            revision >= last_revision,
            "revision went back from {last_revision} to {revision}"
        );
        let present: BTreeMap<String, i64> = all
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().expect("utf8").to_owned(), kv.mod_revision()))
            .collect();
        let acked = acked.lock().expect("lock").clone();
        assert!(!acked.is_empty(), "the load wrote nothing");
        for (key, acked_revision) in &acked {
            assert_eq!(
                present.get(key),
                Some(acked_revision),
                "acknowledged write {key} lost or changed after crash {round}"
            );
        }
        let max_acked = acked.values().copied().max().unwrap_or(0);
        assert!(revision >= max_acked);
        last_revision = revision;
    }
    assert!(
        member.log().contains("compacting the raft log"),
        "the log was compacted between crashes"
    );
}

fn newest_log_file(member: &Member) -> PathBuf {
    let dir = member.data_dir.join("member/raft");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("raft dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".raftlog"))
        .collect();
    files.sort();
    files.pop().expect("a raft log file")
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

/// Goal: a log whose last write was torn (cut short) still starts, says so in its log, and keeps
/// everything before the torn write.
#[tokio::test]
async fn torn_log_tail_is_truncated_and_reported() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    for i in 0..50 {
        client
            .put(format!("torn/{i:03}"), "v", None)
            .await
            .expect("put");
    }
    assert!(
        member.terminate(),
        "graceful stop trims the log file to its data"
    );
    let file = newest_log_file(&member);
    let length = file_len(&file);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open")
        .set_len(length - 7)
        .expect("tear the last write");
    member.restart();
    let log = member.log();
    assert_eq!(
        log.matches("torn tail").count(),
        1,
        "the torn tail is reported once:\n{log}"
    );
    assert!(
        !log.lines().any(|line| line.contains("ERROR")),
        "a routine recovery logs no ERROR:\n{log}"
    );
    assert!(
        member.log().contains("torn tail"),
        "the log reports the torn tail:\n{}",
        member.log()
    );
    let mut client = member.etcd_client().await;
    let kept = client
        .get(
            "torn/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("read");
    assert!(
        kept.count() >= 49,
        "only the torn last write may be missing, found {}",
        kept.count()
    );
    client
        .put("after-torn", "ok", None)
        .await
        .expect("the member serves writes");
}

/// Goal: corruption that is not a torn tail (a damaged byte far from the end of the log, or a
/// damaged state-machine file) stops the member at start with a message naming the file,
/// instead of serving wrong data, and leaves the files as they were for an operator.
#[tokio::test]
async fn corruption_elsewhere_refuses_to_start() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let value = "x".repeat(2000);
    for i in 0..2000 {
        client
            .put(format!("c/{i:04}"), value.clone(), None)
            .await
            .expect("put");
    }
    assert!(member.terminate());
    let file = newest_log_file(&member);
    let original = std::fs::read(&file).expect("read log");
    let mut damaged = original.clone();
    let middle = damaged.len() / 3;
    for byte in &mut damaged[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    std::fs::write(&file, &damaged).expect("damage the log");
    let (status, log) = member.start_expecting_failure();
    assert!(!status.success());
    assert!(
        log.contains("member/raft") && log.contains("corrupt") && log.contains("entry "),
        "the message says where:\n{log}"
    );
    assert_eq!(
        std::fs::read(&file).expect("read log").len(),
        damaged.len(),
        "a refused start leaves the log untouched"
    );

    std::fs::write(&file, &original).expect("repair the log");
    member.restart();
    assert!(member.terminate());
    let db = member.data_dir.join("member/db");
    let mut bytes = std::fs::read(&db).expect("read db");
    // Where the live pages sit depends on redb's allocator (free regions are not corruption), so
    // one byte is flipped in every 4 KiB page past the header region: every live page is hit.
    for page in bytes.chunks_mut(4096).skip(16) {
        page[page.len() / 2] ^= 0xff;
    }
    std::fs::write(&db, &bytes).expect("damage the state machine");
    let (status, log) = member.start_expecting_failure();
    assert!(!status.success());
    assert!(
        log.contains("member/db") || log.contains("state-machine"),
        "the message names the state-machine file:\n{log}"
    );
}

/// Goal: when the disk fills up, the member stops (it never continues after a failed log or
/// state-machine write), and every write it acknowledged is there when it restarts with room.
/// Needs root to mount a small tmpfs as the data directory; skips with a message otherwise.
#[tokio::test]
async fn full_disk_stops_the_member_and_loses_nothing_acknowledged() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let Some(_unmount) = Mounted::tmpfs(
        &data,
        "8m",
        "full_disk_stops_the_member_and_loses_nothing_acknowledged",
    ) else {
        return;
    };
    // The free-space alarm would stop writes before the disk fills; this test is about the
    // write that fails anyway.
    let mut member = Member::start(root.path(), &["--disk-space-reserve-bytes", "0"]);
    let mut client = member.etcd_client().await;
    let value = "f".repeat(16 * 1024);
    let mut acked = BTreeMap::new();
    for i in 0..2_000 {
        let key = format!("full/{i:05}");
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.put(key.clone(), value.clone(), None),
        )
        .await
        {
            Ok(Ok(response)) => {
                acked.insert(key, response.header().expect("header").revision());
            }
            _ => break,
        }
    }
    let status = member
        .wait_exit(Duration::from_secs(20))
        .expect("the member stops when its disk is full");
    assert_eq!(
        status.code(),
        Some(70),
        "stopped by the fail-stop path:\n{}",
        member.log()
    );
    assert!(member.log().contains("storage failure"), "{}", member.log());
    assert!(
        acked.len() > 10,
        "some writes were acknowledged before the disk filled"
    );

    // Give the member room: copy its data off the full disk and start it there.
    let copy = root.path().join("copy");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(copied.success());
    member.data_dir = copy;
    member.restart();
    let mut client = member.etcd_client().await;
    let all = client
        .get(
            "full/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("read back");
    let present: BTreeMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().expect("utf8").to_owned(), kv.mod_revision()))
        .collect();
    for (key, revision) in &acked {
        assert_eq!(
            present.get(key),
            Some(revision),
            "acknowledged write {key} lost on a full disk"
        );
    }
}

/// Goal: a history of concurrent puts, linearizable gets and compare-and-swaps on a few keys,
/// across several kill -9 restarts, is linearizable (checked with synod-sim's checker). Calls
/// that failed or were cut off by a crash are recorded as indeterminate: they may or may not have
/// taken effect, but nothing acknowledged may be lost and no read may be stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_across_kill9_is_linearizable() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    use synod_sim::linearizability::{
        KvInput, KvModel, KvOutput, Operation, Verdict, check_partitioned,
    };

    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start(root.path(), &[]);
    let started = std::time::Instant::now();
    let now = move || started.elapsed().as_nanos() as u64;
    let history: Arc<Mutex<Vec<Operation<KvInput, KvOutput>>>> = Arc::new(Mutex::new(Vec::new()));
    let keys = ["x", "y", "z"];
    for round in 0..3u64 {
        let mut tasks = Vec::new();
        for client in 0..4u64 {
            let mut etcd = member.etcd_client().await;
            let history = history.clone();
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                loop {
                    seq += 1;
                    let key = keys[((seq + client) % 3) as usize].to_owned();
                    let value = format!("r{round}c{client}s{seq}");
                    let call = now();
                    let (input, result) = match seq % 3 {
                        0 => {
                            let outcome = etcd
                                .put(key.clone(), value.clone(), None)
                                .await
                                .map(|_| KvOutput::Done);
                            (KvInput::Put { key, value }, outcome)
                        }
                        1 => {
                            let outcome = etcd.get(key.clone(), None).await.map(|r| {
                                KvOutput::Value(
                                    r.kvs()
                                        .first()
                                        .map(|kv| kv.value_str().expect("utf8").to_owned()),
                                )
                            });
                            (KvInput::Get { key }, outcome)
                        }
                        _ => {
                            // Swap from whatever this client read last time: often stale, so
                            // both outcomes of the compare happen.
                            let expected =
                                format!("r{round}c{}s{}", (client + 1) % 4, seq.saturating_sub(3));
                            let txn = Txn::new()
                                .when([Compare::value(
                                    key.clone(),
                                    CompareOp::Equal,
                                    expected.clone(),
                                )])
                                .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
                            let outcome = etcd
                                .txn(txn)
                                .await
                                .map(|r| KvOutput::Swapped(r.succeeded()));
                            (
                                KvInput::Cas {
                                    key,
                                    expected: Some(expected),
                                    new: value,
                                },
                                outcome,
                            )
                        }
                    };
                    let failed = result.is_err();
                    let result = result.ok().map(|output| (now(), output));
                    history.lock().expect("lock").push(Operation {
                        client: client + 10 * round,
                        input,
                        call,
                        result,
                    });
                    if failed {
                        return;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        member.kill9();
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        member.restart();
    }
    // Final reads after the last restart.
    let mut etcd = member.etcd_client().await;
    for key in keys {
        let call = now();
        let value = etcd
            .get(key, None)
            .await
            .expect("final read")
            .kvs()
            .first()
            .map(|kv| kv.value_str().expect("utf8").to_owned());
        history.lock().expect("lock").push(Operation {
            client: 99,
            input: KvInput::Get {
                key: key.to_owned(),
            },
            call,
            result: Some((now(), KvOutput::Value(value))),
        });
    }
    let history = history.lock().expect("lock").clone();
    let completed = history.iter().filter(|op| op.result.is_some()).count();
    assert!(
        completed > 300,
        "the load ran: {completed} operations completed"
    );
    let (verdict, key) = check_partitioned(
        &KvModel,
        &history,
        |input| input.key().to_owned(),
        50_000_000,
    );
    assert_eq!(
        verdict,
        Verdict::Linearizable,
        "history on key {key:?} is not linearizable ({} operations)",
        history.len()
    );
}
