//! Log compaction and snapshots (§7) with real processes: the log stays bounded, a
//! follower that fell behind the leader's compacted log catches up by snapshot, a node
//! whose data directory was deleted comes back, and a node killed at any step of
//! installing a snapshot restarts with the old state or the new, never a mix.

mod common;

use std::time::{Duration, Instant};

use common::{dump, until_ok, Cluster, Options};
use serde_json::Value;

/// Compact every 40 entries, keeping 10: a few hundred writes compact many times.
fn options() -> Options {
    Options { raft: Some("tickMs = 20\ncompactEntries = 40\ncompactKeep = 10\n".into()), ..Options::default() }
}

async fn status(cluster: &Cluster, i: usize) -> Value {
    until_ok(&mut cluster.client(i).await, ".status").await
}

/// Writes `count` rows through node `via`, one line each.
async fn write_rows(cluster: &Cluster, via: usize, from: u64, count: u64) {
    let mut c = cluster.client(via).await;
    for k in from..from + count {
        until_ok(&mut c, &format!("INSERT INTO t VALUES ({k}, randomblob(16), datetime('now'))")).await;
    }
}

/// Waits until every running node has applied everything the leader committed.
async fn caught_up(cluster: &Cluster, running: &[usize]) -> u64 {
    let leader = cluster.leader().await;
    let target = status(cluster, leader).await["commit_index"].as_u64().expect("commit index");
    for &i in running {
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(cluster, i).await["applied_index"].as_u64().unwrap_or(0) < target {
            assert!(Instant::now() < deadline, "node {i} never applied up to {target}: {}", cluster.log(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    target
}

/// Stops every node and checks their databases hold the same rows.
fn same_everywhere(cluster: &mut Cluster, size: usize) -> Vec<String> {
    for i in 0..size {
        cluster.kill(i);
    }
    let dumps: Vec<Vec<String>> = (0..size).map(|i| dump(&cluster.db_path(i))).collect();
    for (i, d) in dumps.iter().enumerate().skip(1) {
        assert_eq!(&dumps[0], d, "node {i} differs from node 0");
    }
    dumps[0].clone()
}

/// A cluster with table t, where node 2 is stopped and misses `missed` writes: far more
/// than the leader keeps in its log.
async fn follower_left_behind(missed: u64) -> (Cluster, u64) {
    let mut cluster = Cluster::start_with(3, &options());
    let leader = cluster.leader().await;
    let via = if leader == 2 { 0 } else { leader };
    until_ok(&mut cluster.client(via).await, "CREATE TABLE t (k INTEGER PRIMARY KEY, v, at)").await;
    write_rows(&cluster, via, 0, 20).await;
    caught_up(&cluster, &[0, 1, 2]).await;
    cluster.stop(2);
    let leader = cluster.leader().await;
    write_rows(&cluster, leader, 20, missed).await;
    let s = status(&cluster, leader).await;
    let snapshot = s["snapshot_index"].as_u64().expect("snapshot index");
    assert!(snapshot > 40, "the leader compacted its log: {s}");
    assert!(s["first_index"].as_u64().expect("first index") > 20, "the entries node 2 lacks are gone: {s}");
    (cluster, 20 + missed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_by_the_compaction_policy() {
    let mut cluster = Cluster::start_with(3, &options());
    let leader = cluster.leader().await;
    until_ok(&mut cluster.client(leader).await, "CREATE TABLE t (k INTEGER PRIMARY KEY, v, at)").await;
    write_rows(&cluster, leader, 0, 300).await;
    caught_up(&cluster, &[0, 1, 2]).await;
    for i in 0..3 {
        let s = status(&cluster, i).await;
        let first = s["first_index"].as_u64().expect("first index");
        let last = s["last_index"].as_u64().expect("last index");
        // 40 beyond the kept 10 trigger a compaction, so at most about 50 remain.
        assert!(last + 1 - first <= 60, "node {i} holds {} entries: {s}", last + 1 - first);
        assert!(s["snapshot_index"].as_u64().expect("snapshot index") >= 240, "node {i}: {s}");
    }
    assert!(cluster.log(leader).contains("compacted the log up to index"), "compactions are logged");
    // A restart continues from the snapshot point and the entries after it, also after
    // kill -9: the log was cut only where the state database was durable, so the state
    // a node restarts with always reaches its log's snapshot point.
    cluster.stop(1);
    cluster.start_node(1);
    cluster.kill(2);
    cluster.start_node(2);
    write_rows(&cluster, cluster.leader().await, 300, 10).await;
    caught_up(&cluster, &[0, 1, 2]).await;
    let rows = same_everywhere(&mut cluster, 3);
    assert_eq!(rows.iter().filter(|r| r.starts_with("t: ")).count(), 310);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let (mut cluster, rows) = follower_left_behind(200).await;
    cluster.start_node(2);
    caught_up(&cluster, &[0, 1, 2]).await;
    let log = cluster.log(2);
    assert!(log.contains("installed the snapshot at index"), "node 2 caught up by snapshot: {log}");
    // Writes after the snapshot reach it as entries.
    five_more_writes_reach_every_node(&mut cluster, rows).await;
}

/// Five more writes, then every node holds all `rows + 5` rows, identically.
async fn five_more_writes_reach_every_node(cluster: &mut Cluster, rows: u64) {
    write_rows(cluster, cluster.leader().await, rows, 5).await;
    caught_up(cluster, &[0, 1, 2]).await;
    let dumped = same_everywhere(cluster, 3);
    assert_eq!(dumped.iter().filter(|r| r.starts_with("t: ")).count() as u64, rows + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_was_deleted_comes_back_with_the_same_index() {
    let (mut cluster, rows) = follower_left_behind(100).await;
    for entry in std::fs::read_dir(cluster.dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("db-2.") || name.starts_with("test-2.") {
            std::fs::remove_file(&path).expect("delete");
        }
    }
    cluster.start_node(2);
    caught_up(&cluster, &[0, 1, 2]).await;
    five_more_writes_reach_every_node(&mut cluster, rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_any_step_of_an_install_restarts_with_the_old_state_or_the_new() {
    let (mut cluster, mut rows) = follower_left_behind(100).await;
    let points = [
        "install-before-record",
        "install-recorded",
        "install-state-closed",
        "install-renamed",
        "install-state-replaced",
        "install-done",
    ];
    for point in points {
        // Node 2 is down and behind. It starts, receives the snapshot and dies at `point`.
        cluster.start_node_with_env(2, &[("LIGHTRAFT_FAILPOINT", point)]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let exited = cluster.nodes[2].as_mut().and_then(|c| c.try_wait().ok()).flatten();
            if exited.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "node 2 never reached {point}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cluster.nodes[2] = None;
        assert!(cluster.log(2).contains(&format!("failpoint {point} reached")), "{}", cluster.log(2));
        // Whatever it left on disk, it restarts consistent and catches up: before the
        // state changed, by a new snapshot; after, by finishing the install it began.
        let expected = match point {
            "install-recorded" | "install-state-closed" => "forgetting the install of the snapshot",
            "install-renamed" | "install-state-replaced" => "finishing the install of the snapshot",
            _ => "restored:",
        };
        let before = cluster.log(2).matches(expected).count();
        cluster.start_node(2);
        let held = caught_up(&cluster, &[0, 1, 2]).await;
        let log = cluster.log(2);
        assert_eq!(log.matches(expected).count(), before + 1, "after {point}: {log}");
        cluster.stop(2);
        // Fall behind again for the next step, until the leader no longer holds the
        // entries node 2 needs (it keeps them a moment for a follower just caught up).
        let leader = cluster.leader().await;
        while status(&cluster, leader).await["first_index"].as_u64().unwrap_or(0) <= held + 1 {
            write_rows(&cluster, leader, rows, 20).await;
            rows += 20;
        }
    }
    cluster.start_node(2);
    caught_up(&cluster, &[0, 1, 2]).await;
    let dumped = same_everywhere(&mut cluster, 3);
    assert_eq!(dumped.iter().filter(|r| r.starts_with("t: ")).count() as u64, rows);
}
