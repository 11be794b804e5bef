//! Membership changes with real processes (dissertation chapter 4): the cluster grows,
//! shrinks, replaces a node that lost its disk and removes its own leader while clients
//! keep writing; every acknowledged write ends up on every final member, and the
//! members' databases are identical.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{dump, until_ok, Cluster};

/// Keeps writing rows (ids 1, 2, ...) through node `via` until `stop`; collects the ids
/// whose write was acknowledged. Unacknowledged ones may or may not be in the table.
fn start_writer(cluster: &Cluster, via: usize, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<i64>> {
    let addr = cluster.client_addrs[via];
    tokio::spawn(async move {
        let mut client = lightraft::client::Client::connect(addr).await.expect("writer connects");
        let mut acked = Vec::new();
        let mut id = 0;
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            // The session ends only if the test failed and its cluster is gone.
            let Ok(reply) = client.request(&format!("INSERT INTO t VALUES ({id})")).await else { break };
            if reply.get("error").is_none() {
                acked.push(id);
            }
        }
        acked
    })
}

/// The ids in node `i`'s table, read from its database file (the node is stopped).
fn ids(cluster: &Cluster, i: usize) -> Vec<i64> {
    let conn = rusqlite::Connection::open(cluster.db_path(i)).expect("database opens");
    let mut stmt = conn.prepare("SELECT id FROM t ORDER BY id").expect("query");
    stmt.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("row")).collect()
}

/// Waits until `members` have all applied the same index, then stops them and checks
/// each holds every acknowledged write and all are identical.
async fn assert_final_members_agree(cluster: &mut Cluster, members: &[usize], acked: &[i64]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut applied = Vec::new();
        for &i in members {
            let mut client = cluster.client(i).await;
            applied.push(until_ok(&mut client, ".status").await["applied_index"].as_u64());
        }
        if applied.iter().all(|a| a.is_some() && *a == applied[0]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the members never caught up: {applied:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &i in members {
        cluster.stop(i);
    }
    let first = dump(&cluster.db_path(members[0]));
    for &i in members {
        let held = ids(cluster, i);
        let missing: Vec<&i64> = acked.iter().filter(|id| held.binary_search(id).is_err()).collect();
        assert!(missing.is_empty(), "node {i} lacks acknowledged writes {missing:?}");
        assert!(held.first().is_none_or(|&first| first > 0), "node {i} holds a removed node's write");
        assert_eq!(dump(&cluster.db_path(i)), first, "node {i} differs from node {}", members[0]);
    }
}

/// A fresh 3-node cluster with an empty table `t`; its leader and a session with it.
async fn start_with_table() -> (Cluster, usize, lightraft::client::Client) {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let mut client = cluster.client(leader).await;
    until_ok(&mut client, "CREATE TABLE t (id INTEGER PRIMARY KEY)").await;
    (cluster, leader, client)
}

async fn leader_of(cluster: &Cluster, via: usize) -> u64 {
    let mut client = cluster.client(via).await;
    let status = until_ok(&mut client, ".status").await;
    status["leader"].as_u64().unwrap_or_else(|| panic!("no leader known: {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_from_three_to_five_under_writes_and_shrinks_back() {
    let (mut cluster, leader, _client) = start_with_table().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(&cluster, leader, stop.clone());

    // Grow: nodes 3 and 4 join through node 0; each is added as a learner, catches up,
    // and is promoted.
    cluster.join(3, 0);
    cluster.until_members(&[0, 1, 2, 3]).await;
    cluster.join(4, 1);
    let report = cluster.until_members(&[0, 1, 2, 3, 4]).await;
    for member in report["cluster"]["members"].as_array().expect("members") {
        assert!(member["rpc"].is_string() && member["client"].is_string(), "{member}");
    }

    // Shrink: one removal asked of a follower (passed on to the leader), one of the leader.
    let leader = leader_of(&cluster, 0).await as usize;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    let mut at_follower = cluster.client(follower).await;
    let removed = at_follower.request(".remove 3").await.expect("answers");
    assert_eq!(removed["done"], "node 3 removed from the cluster", "{removed}");
    let mut at_leader = cluster.client(leader).await;
    let removed = until_ok(&mut at_leader, ".remove 4").await;
    assert!(removed["done"].is_string(), "{removed}");
    cluster.until_members(&[0, 1, 2]).await;

    // The removed nodes are shut out: the leader refuses their connections, so node 4
    // (which need not know it was removed) gets no write through; the row never appears.
    let mut at_removed = cluster.client(4).await;
    let refused = at_removed.request("INSERT INTO t VALUES (-1)").await.expect("answers");
    assert!(refused.get("error").is_some(), "a removed node's write went through: {refused}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 20, "too few writes went through: {}", acked.len());
    cluster.kill(3);
    cluster.kill(4);
    assert_final_members_agree(&mut cluster, &[0, 1, 2], &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_replaced_leadership_moves_and_the_leader_removes_itself() {
    let (mut cluster, leader, mut client) = start_with_table().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for id in 1..=20 {
        until_ok(&mut client, &format!("INSERT INTO t VALUES ({id})")).await;
        acked.lock().expect("lock").push(id);
    }

    // Node 2 (a follower, or made one) loses its disk: remove it, join a fresh node 3.
    let lost = if leader == 2 { 1 } else { 2 };
    cluster.kill(lost);
    for entry in std::fs::read_dir(cluster.dir.path()).expect("data dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("db-{lost}.")) || name.starts_with(&format!("test-{lost}.")) {
            std::fs::remove_file(entry.path()).expect("wiped");
        }
    }
    let removed = until_ok(&mut client, &format!(".remove {lost}")).await;
    assert!(removed["done"].is_string(), "{removed}");
    cluster.join(3, leader);
    let mut survivors: Vec<u64> = (0..3).filter(|&i| i != lost).map(|i| i as u64).collect();
    survivors.push(3);
    cluster.until_members(&survivors).await;

    // Mistakes get clear errors; nothing changes.
    let clash = client.request(&format!(".add 9 {} 127.0.0.1:1", cluster.rpc_addrs[leader])).await.expect("answers");
    assert_eq!(clash["code"], "bad_request", "{clash}");
    let stranger = client.request(".remove 42").await.expect("answers");
    assert_eq!(stranger["code"], "bad_request", "{stranger}");
    assert!(stranger["error"].as_str().unwrap_or_default().contains("not a member"), "{stranger}");
    let not_voter = client.request(".transfer 42").await.expect("answers");
    assert_eq!(not_voter["code"], "bad_request", "{not_voter}");

    // Leadership moves to the new node on request.
    let moved = until_ok(&mut client, ".transfer 3").await;
    assert!(moved["done"].as_str().unwrap_or_default().contains("node 3 now leads"), "{moved}");
    assert_eq!(leader_of(&cluster, leader).await, 3);

    // The leader removes itself: it leads until the change commits, then hands over.
    let mut at_new = cluster.client(3).await;
    for id in 21..=30 {
        until_ok(&mut at_new, &format!("INSERT INTO t VALUES ({id})")).await;
        acked.lock().expect("lock").push(id);
    }
    let removed = until_ok(&mut at_new, ".remove 3").await;
    assert!(removed["done"].is_string(), "{removed}");
    let rest: Vec<u64> = survivors.iter().copied().filter(|&n| n != 3).collect();
    cluster.until_members(&rest).await;
    cluster.kill(3);
    let next = rest[0] as usize;
    let mut at_next = cluster.client(next).await;
    for id in 31..=40 {
        until_ok(&mut at_next, &format!("INSERT INTO t VALUES ({id})")).await;
        acked.lock().expect("lock").push(id);
    }
    let acked: Vec<i64> = acked.lock().expect("lock").clone();
    let members: Vec<usize> = rest.iter().map(|&n| n as usize).collect();
    assert_final_members_agree(&mut cluster, &members, &acked).await;
}
