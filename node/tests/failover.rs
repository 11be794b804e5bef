//! Failover as clients see it: when the leader dies, requests a follower holds for it are
//! settled as soon as the cluster knows their fate (sent again, or answered), never held
//! to their deadline, and never applied twice. Real processes; the client timeout is set
//! far above how long an election takes, so an answer that waited for it cannot pass.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{count, until_ok, Cluster, Options};
use lightraft::protocol::PeerMessage;
use serde_json::Value;
use tokio::net::TcpStream;
use transport::handshake::{self, Challenge, Hello, Proof, Role};
use transport::{read_frame, write_frame, Secret};

/// Elections take well under a second here (50 ms ticks); a request held to its deadline
/// would take 60 s.
fn patient_clients() -> Options {
    Options {
        raft: Some("tickMs = 50\n".into()),
        client: Some("timeoutMs = 60000\nmaxLineBytes = 65536\n".into()),
        ..Options::default()
    }
}

fn is_ok(reply: &Value) -> bool {
    reply.get("error").is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_leader_that_dies_is_sent_again_and_applied_once() {
    // Nodes log each forward, so the test can wait for it rather than guess how long it
    // takes on a busy machine. A follower gives up on a silent leader after an election
    // timeout (40 ticks, 2 s, here): the forward must leave before that.
    let options = Options {
        raft: Some("tickMs = 50\nelectionTicks = 40\n".into()),
        log: Some("info,lightraft::core=debug".into()),
        ..patient_clients()
    };
    let mut cluster = Cluster::start_with(3, &options);
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut c = cluster.client(follower).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    until_ok(&mut c, "INSERT INTO t VALUES (0)").await;
    // A linearizable read through the follower: it has applied the table by now, so the
    // write below is classified at once, not held waiting for the schema.
    until_ok(&mut c, "SELECT count(*) FROM t").await;
    let mut reader = cluster.client(other).await;

    // The leader freezes: the write reaches its socket but it never proposes it. Then it
    // dies. Only the follower's own log can tell it the write was never committed.
    let forwarded = format!("to leader {leader} in term");
    let forwarded_before = cluster.log(follower).matches(&forwarded).count();
    cluster.signal(leader, libc::SIGSTOP);
    let started = Instant::now();
    let write = tokio::spawn(async move { c.request("INSERT INTO t VALUES (1)").await.expect("an answer") });
    let read = tokio::spawn(async move { reader.request("SELECT count(*) FROM t").await.expect("an answer") });
    while cluster.log(follower).matches(&forwarded).count() == forwarded_before {
        assert!(started.elapsed() < Duration::from_secs(20), "the follower forwarded the write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(leader);

    let reply = write.await.expect("the write task");
    assert!(is_ok(&reply), "the write must be sent to the new leader, not given up: {reply}");
    let seen = read.await.expect("the read task");
    assert!(is_ok(&seen), "the read must be retried with the new leader: {seen}");
    assert!(count(&seen) >= 1, "a linearizable read sees the acknowledged first row: {seen}");
    assert!(started.elapsed() < Duration::from_secs(30), "answered long before the 60 s deadline");
    assert!(
        cluster.log(follower).contains("never committed; sending it again"),
        "the write went the way this test means: forwarded, then proven lost"
    );
    let mut check = cluster.client(other).await;
    let rows = until_ok(&mut check, "SELECT count(*) FROM t WHERE x = 1").await;
    assert_eq!(count(&rows), 1, "applied exactly once");
}

/// Several clients write distinct values through one follower while the leader is taken
/// away by `remove`; every write must succeed, and each exactly once.
async fn writes_through_a_follower_survive_losing_the_leader(remove: impl FnOnce(&mut Cluster, usize)) {
    let mut cluster = Cluster::start_with(3, &patient_clients());
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut setup = cluster.client(follower).await;
    until_ok(&mut setup, "CREATE TABLE t (client INTEGER, n INTEGER)").await;

    let outcomes: Arc<Mutex<Vec<(usize, usize, Value)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..4 {
        let mut c = cluster.client(follower).await;
        let (outcomes, stop) = (outcomes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = c.request(&format!("INSERT INTO t VALUES ({client}, {n})")).await.expect("an answer");
                outcomes.lock().expect("lock").push((client, n, reply));
                n += 1;
            }
        }));
    }
    let acked = |outcomes: &Mutex<Vec<(usize, usize, Value)>>| outcomes.lock().expect("lock").len();
    while acked(&outcomes) < 40 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    remove(&mut cluster, leader);
    let at_removal = acked(&outcomes);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked(&outcomes) < at_removal + 80 {
        assert!(Instant::now() < deadline, "writes stopped after the leader went away");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().expect("lock"));
    let failed: Vec<&(usize, usize, Value)> = outcomes.iter().filter(|(_, _, r)| !is_ok(r)).collect();
    assert!(failed.is_empty(), "every write through the follower succeeds; these did not: {failed:?}");
    let mut check = cluster.client(follower).await;
    let rows = until_ok(&mut check, "SELECT client, n, count(*) FROM t GROUP BY client, n").await;
    let mut applied: HashMap<(u64, u64), i64> = HashMap::new();
    for row in rows["rows"].as_array().expect("rows") {
        let key = (row[0].as_u64().expect("client"), row[1].as_u64().expect("n"));
        applied.insert(key, row[2].as_i64().expect("count"));
    }
    for (client, n, _) in outcomes.iter() {
        assert_eq!(applied.get(&(*client as u64, *n as u64)), Some(&1), "write {client}/{n} applied exactly once");
    }
    assert_eq!(applied.len(), outcomes.len(), "nothing applied that no client asked for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_all_succeed_once_when_the_leader_is_killed() {
    writes_through_a_follower_survive_losing_the_leader(|cluster, leader| cluster.kill(leader)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_all_succeed_once_when_the_leader_shuts_down() {
    writes_through_a_follower_survive_losing_the_leader(|cluster, leader| cluster.stop(leader)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_proposes_a_forwarded_write_once_and_only_in_the_term_it_was_forwarded_for() {
    // A follower can prove a forwarded write lost only if the write can be an entry of
    // no other term than the one it was sent in. Speak as that follower, to the leader.
    const SECRET: &str = "a test secret that is long enough";
    let options = Options { secret: Some(SECRET.into()), ..patient_clients() };
    let mut cluster = Cluster::start_with(3, &options);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    let term = until_ok(&mut c, ".status").await["term"].as_u64().expect("term");
    cluster.kill(follower);

    let mut stream = TcpStream::connect(cluster.rpc_addrs[leader]).await.expect("connect");
    let hello = Hello::new("test", follower as u64, leader as u64);
    write_frame(&mut stream, &json(&hello)).await.expect("hello");
    let challenge: Challenge =
        serde_json::from_slice(&read_frame(&mut stream, 4096).await.expect("a challenge")).expect("json");
    let proof = handshake::prove(&Secret::new(SECRET.into()), Role::Dialer, &hello, &challenge.nonce);
    write_frame(&mut stream, &json(&Proof { proof })).await.expect("proof");
    // Two in the wrong terms, then one in the right term, sent twice (as after a lost
    // connection): it is proposed once.
    let forwards = [(1, term.saturating_sub(1), 666), (2, term + 1, 667), (3, term, 1), (3, term, 1)];
    for (id, term, x) in forwards {
        let forward = PeerMessage::Forward { id, term, settled_below: 1, sql: format!("INSERT INTO t VALUES ({x})") };
        write_frame(&mut stream, &json(&forward)).await.expect("forward");
    }
    // A fence: once it is applied, so is everything sent before it.
    let fence = PeerMessage::Forward { id: 4, term, settled_below: 1, sql: "INSERT INTO t VALUES (2)".into() };
    write_frame(&mut stream, &json(&fence)).await.expect("forward");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&until_ok(&mut c, "SELECT count(*) FROM t WHERE x = 2").await) != 1 {
        assert!(Instant::now() < deadline, "the forward in the leader's own term was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrong_term = until_ok(&mut c, "SELECT count(*) FROM t WHERE x IN (666, 667)").await;
    assert_eq!(count(&wrong_term), 0, "a write forwarded for another term was proposed");
    let resent = until_ok(&mut c, "SELECT count(*) FROM t WHERE x = 1").await;
    assert_eq!(count(&resent), 1, "a write sent twice was proposed once");
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("json")
}
