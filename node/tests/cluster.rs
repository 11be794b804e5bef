//! End-to-end tests: real `lightraft` processes on 127.0.0.1, ports picked free at run
//! time, each in its own temporary directory. Every process is killed when the test ends,
//! also when it fails (the harness kills them on drop).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{count, dump, free_port, until_ok, Cluster, BIN};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_every_node_are_seen_by_linearizable_reads_on_every_node() {
    let cluster = Cluster::start(3);
    cluster.leader().await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    until_ok(&mut clients[0], "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)").await;
    for round in 0..5 {
        for (i, client) in clients.iter_mut().enumerate() {
            let reply = until_ok(client, &format!("INSERT INTO kv VALUES ('n{i}-{round}', {round})")).await;
            assert_eq!(reply["rows_affected"], json!(1), "{reply}");
            // A linearizable read on every node sees the write just acknowledged.
            for j in 0..3 {
                let seen = until_ok(&mut cluster.client(j).await, "SELECT count(*) FROM kv").await;
                assert_eq!(count(&seen), (round * 3 + i + 1) as i64, "node {j} after write {i}/{round}");
            }
        }
    }
    // Local reads are possibly stale, but converge.
    for (j, client) in clients.iter_mut().enumerate() {
        assert_eq!(until_ok(client, ".consistency local").await, json!({"consistency": "local"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&until_ok(client, "SELECT count(*) FROM kv").await) != 15 {
            assert!(Instant::now() < deadline, "node {j}'s local copy never converged");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A line of several statements is one transaction: all or nothing.
    let failed =
        clients[1].request("INSERT INTO kv VALUES ('x', 1); INSERT INTO kv VALUES ('n0-0', 2)").await.expect("answer");
    assert_eq!(failed["code"], json!("sql_error"), "{failed}");
    let x = until_ok(&mut clients[2], "SELECT count(*) FROM kv WHERE k = 'x'").await;
    assert_eq!(count(&x), 0, "the first statement of the failed line was rolled back");
}

/// A follower applies committed writes by itself, with no read to prompt it: it holds
/// them only a moment, to apply them in larger groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_writes_with_no_read_to_prompt_it() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let mut writer = cluster.client(leader).await;
    let mut watcher = cluster.client((leader + 1) % 3).await;
    until_ok(&mut watcher, ".consistency local").await;
    until_ok(&mut writer, "CREATE TABLE t (x)").await;
    for written in 1..=3 {
        until_ok(&mut writer, &format!("INSERT INTO t VALUES ({written})")).await;
        // A local read asks nothing of the leader or the apply thread.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = watcher.request("SELECT count(*) FROM t").await.expect("session stays open");
            if reply.get("error").is_none() && count(&reply) == written {
                break;
            }
            assert!(Instant::now() < deadline, "the follower never applied write {written}: {reply}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes through the leader share apply groups, and the apply thread answers their
/// clients itself; each client still gets its own line's result: its rows from
/// RETURNING, or its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_the_leader_each_get_their_own_result() {
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let mut setup = cluster.client(leader).await;
    until_ok(&mut setup, "CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)").await;
    until_ok(&mut setup, "INSERT INTO t VALUES ('taken', 0)").await;
    let mut sessions = tokio::task::JoinSet::new();
    for s in 0..6 {
        let mut client = cluster.client(leader).await;
        sessions.spawn(async move {
            for j in 0..40 {
                if j % 5 == 4 {
                    let line = format!("INSERT INTO t VALUES ('taken', {j}) RETURNING k");
                    let reply = client.request(&line).await.expect("an answer");
                    assert_eq!(reply["code"], json!("sql_error"), "session {s}, line {j}: {reply}");
                } else {
                    let tag = format!("s{s}-{j}");
                    let line = format!("INSERT INTO t VALUES ('{tag}', {j}) RETURNING k, v");
                    let reply = client.request(&line).await.expect("an answer");
                    assert_eq!(reply["rows"], json!([[tag, j]]), "session {s}, line {j}: {reply}");
                }
            }
        });
    }
    while let Some(session) = sessions.join_next().await {
        session.expect("every answer was the session's own");
    }
    let count = until_ok(&mut setup, "SELECT count(*) FROM t").await;
    assert_eq!(count["rows"], json!([[1 + 6 * 32]]), "{count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_the_leader_writes_continue_and_the_node_catches_up_on_restart() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let mut c = cluster.client((leader + 1) % 3).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    for i in 0..10 {
        until_ok(&mut c, &format!("INSERT INTO t VALUES ({i})")).await;
    }
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let survivor = (leader + 2) % 3;
    let mut s = cluster.client(survivor).await;
    for i in 10..20 {
        until_ok(&mut s, &format!("INSERT INTO t VALUES ({i})")).await;
    }
    cluster.start_node(leader);
    let mut back = cluster.client(leader).await;
    until_ok(&mut back, ".consistency local").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&until_ok(&mut back, "SELECT count(*) FROM t").await) != 20 {
        assert!(Instant::now() < deadline, "the restarted node never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_every_node_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    cluster.leader().await;
    let mut acknowledged = 0;
    {
        let mut c = cluster.client(0).await;
        until_ok(&mut c, "CREATE TABLE t (x)").await;
        for i in 0..30 {
            let reply = c.request(&format!("INSERT INTO t VALUES ({i})")).await.expect("answer");
            if reply.get("error").is_none() {
                acknowledged += 1;
            }
        }
    }
    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.start_node(i);
    }
    cluster.leader().await;
    let mut c = cluster.client(1).await;
    let seen = count(&until_ok(&mut c, "SELECT count(*) FROM t").await);
    assert_eq!(seen, acknowledged, "every acknowledged write survives, and nothing else appears");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_now_leave_every_database_identical() {
    let mut cluster = Cluster::start(3);
    cluster.leader().await;
    let mut c = cluster.client(2).await;
    until_ok(
        &mut c,
        "CREATE TABLE r (id INTEGER PRIMARY KEY, a, b, c, at DEFAULT CURRENT_TIMESTAMP, d DEFAULT (random())); \
         CREATE TABLE audit (at, r); \
         CREATE TRIGGER tr AFTER INSERT ON r BEGIN INSERT INTO audit VALUES (datetime('now'), randomblob(4)); END",
    )
    .await;
    for _ in 0..5 {
        until_ok(&mut c, "INSERT INTO r (a, b, c) VALUES (random(), randomblob(8), datetime('now', 'localtime'))")
            .await;
    }
    // Wait until every node applied everything, then stop them and compare the files.
    // The leader's commit index covers every acknowledged write; followers may lag.
    let mut target = 0;
    for i in 0..3 {
        let status = until_ok(&mut cluster.client(i).await, ".status").await;
        target = target.max(status["commit_index"].as_u64().expect("commit index"));
    }
    for i in 0..3 {
        let mut n = cluster.client(i).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while until_ok(&mut n, ".status").await["applied_index"].as_u64().unwrap_or(0) < target {
            assert!(Instant::now() < deadline, "node {i} never applied up to {target}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for i in 0..3 {
        cluster.kill(i);
    }
    let dumps: Vec<Vec<String>> = (0..3).map(|i| dump(&cluster.db_path(i))).collect();
    assert!(dumps[0].len() > 10, "the dump holds the rows: {:?}", dumps[0]);
    assert_eq!(dumps[0], dumps[1]);
    assert_eq!(dumps[0], dumps[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_long_lines_and_strangers_get_clear_errors_and_the_cluster_keeps_serving() {
    let cluster = Cluster::start(3);
    cluster.leader().await;
    let mut c = cluster.client(0).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;

    // Binary garbage and invalid UTF-8 on the client port: an error each, session lives.
    let reply = c.send_raw(&[0xff, 0xfe, 0x00, 0x80]).await.expect("answer");
    assert_eq!(reply["code"], json!("bad_request"), "{reply}");
    let reply = c.send_raw(b"\x01\x02\x03 DROP TABLE t \x04").await.expect("answer");
    assert_eq!(reply["code"], json!("sql_error"), "{reply}");
    // An over-long line (the test config allows 64 KiB).
    let long = format!("SELECT '{}'", "x".repeat(100_000));
    let reply = c.request(&long).await.expect("answer");
    assert_eq!(reply["code"], json!("bad_request"), "{reply}");
    assert!(reply["error"].as_str().unwrap_or_default().contains("longer than 65536"), "{reply}");
    let reply = c.request(".nonsense").await.expect("answer");
    assert_eq!(reply["code"], json!("bad_request"));
    until_ok(&mut c, "INSERT INTO t VALUES (1)").await;

    // Garbage on the RPC port, an oversized frame, and a handshake from another cluster:
    // each connection is closed.
    for i in 0..3 {
        let mut junk = TcpStream::connect(cluster.rpc_addrs[i]).await.expect("connect");
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut huge = TcpStream::connect(cluster.rpc_addrs[i]).await.expect("connect");
        huge.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut stranger = TcpStream::connect(cluster.rpc_addrs[i]).await.expect("connect");
        let hello = br#"{"cluster":"someone-else","from":1,"to":0}"#;
        stranger.write_all(&(hello.len() as u32).to_be_bytes()).await.expect("write");
        stranger.write_all(hello).await.expect("write");
        for mut conn in [junk, huge, stranger] {
            let mut byte = [0u8; 1];
            let read =
                tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte)).await.expect("closed in time");
            assert!(matches!(read, Ok(0) | Err(_)), "node {i} left a bad peer connection open");
        }
    }
    // The cluster still serves, on every node.
    for i in 0..3 {
        let mut n = cluster.client(i).await;
        until_ok(&mut n, "INSERT INTO t VALUES (2)").await;
    }
    let total = count(&until_ok(&mut c, "SELECT count(*) FROM t").await);
    assert_eq!(total, 4);
}

#[test]
fn bad_invocations_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).current_dir(dir.path()).output().expect("runs");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    let (ok, err) = run(&["0"]);
    assert!(!ok && err.contains("cannot read config") && err.lines().count() == 1, "{err}");
    std::fs::write(dir.path().join("lightraft.toml"), "[cluster\nname=").expect("write");
    let (ok, err) = run(&["0"]);
    assert!(!ok && err.contains("malformed"), "{err}");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../lightraft.toml"), dir.path().join("lightraft.toml"))
        .expect("copy");
    let (ok, err) = run(&["7"]);
    assert!(!ok && err.contains("node 7 is not in lightraft.toml") && err.contains("--join"), "{err}");
    let (ok, err) = run(&["1", "--join", "127.0.0.1:6453"]);
    assert!(!ok && err.contains("node 1 is in lightraft.toml") && err.lines().count() == 1, "{err}");
    let (ok, err) = run(&["7", "--join", "127.0.0.1:6453"]);
    assert!(!ok && err.contains("needs --rpc"), "{err}");
    let (ok, err) = run(&["7", "--join", "127.0.0.1:6453", "--rpc", "nowhere", "--client", "127.0.0.1:1"]);
    assert!(!ok && err.contains("--rpc \"nowhere\" is not HOST:PORT"), "{err}");
    let (ok, err) = run(&["abc"]);
    assert!(!ok && err.contains("not a node index"), "{err}");
    let (ok, out) = {
        let out = Command::new(BIN).arg("--help").output().expect("runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    assert!(ok && out.contains("up") && out.contains("bench"), "{out}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let config = format!(
        "[cluster]\nname = \"c\"\n[[nodes]]\nclientBindAddress = \"127.0.0.1\"\nclientBindPort = {port}\nrpcBindAddress = \"127.0.0.1\"\nrpcBindPort = {}\n[driver]\nname = \"sqlite\"\npathPrefix = \"db\"\n",
        free_port()
    );
    std::fs::write(dir.path().join("lightraft.toml"), config).expect("write");
    let out = Command::new(BIN).arg("0").current_dir(dir.path()).output().expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let last = err.lines().last().unwrap_or_default();
    assert!(last.contains("cannot listen for clients") && last.contains(&port.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_through_one_node_is_usable_at_once_through_the_others() {
    let cluster = Cluster::start(3);
    cluster.leader().await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    for k in 0..6 {
        let (a, b, c) = (k % 3, (k + 1) % 3, (k + 2) % 3);
        let created = clients[a].request(&format!("CREATE TABLE t{k} (x)")).await.expect("answer");
        assert!(created.get("error").is_none(), "{created}");
        // No retries: a replica whose copy lags must still not call the table missing.
        let inserted = clients[b].request(&format!("INSERT INTO t{k} VALUES ({k})")).await.expect("answer");
        assert_eq!(inserted["rows_affected"], json!(1), "{inserted}");
        let read = clients[c].request(&format!("SELECT x FROM t{k}")).await.expect("answer");
        assert_eq!(read["rows"], json!([[k]]), "{read}");
    }
    let missing = clients[1].request("SELECT * FROM nowhere").await.expect("answer");
    assert_eq!(missing["code"], json!("sql_error"), "{missing}");
}

/// Reads lines from a raw session until one contains `want`, or panics after 10 s.
/// Returns every line read.
async fn lines_until(
    reader: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
    want: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.next_line()).await {
            Ok(Ok(Some(line))) => {
                let found = line.contains(want);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            other => panic!("no line with {want:?} within 10 s ({other:?}); read:\n{}", seen.join("\n")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_on_streams_this_nodes_raft_events_off_stops_them_and_a_watcher_that_never_reads_stalls_nothing() {
    use tokio::io::AsyncBufReadExt;
    let cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    // A watcher on the leader that never reads a byte of what it asked for.
    let mut lazy = TcpStream::connect(cluster.client_addrs[leader]).await.expect("connect");
    lazy.write_all(b".trace on\n").await.expect("write");
    // A watcher on a follower, in JSON mode.
    let stream = TcpStream::connect(cluster.client_addrs[follower]).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let mut watch = tokio::io::BufReader::new(read).lines();
    write.write_all(b".mode json\n.trace on\n").await.expect("write");
    let first = lines_until(&mut watch, r#"{"tracing":"on"}"#).await;
    assert!(first.iter().any(|l| l.contains(r#"{"mode":"json"}"#)), "{first:?}");
    // The first event says where the node stands.
    let status = lines_until(&mut watch, "\"trace\"").await;
    let status = status.last().cloned().unwrap_or_default();
    assert!(
        status.contains(&format!("n{follower} is follower")) && status.contains(&format!("leader=n{leader}")),
        "{status}"
    );

    let mut client = cluster.client(leader).await;
    until_ok(&mut client, "CREATE TABLE t (x INTEGER)").await;
    // The follower's part in one write: the append arrives, is made durable, is
    // acknowledged, and the entry commits and is applied.
    let started = Instant::now();
    for i in 0..300 {
        let reply = client.request(&format!("INSERT INTO t VALUES ({i})")).await.expect("answer");
        assert!(reply.get("error").is_none(), "{reply}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "300 writes took {:?} with a stalled watcher",
        started.elapsed()
    );
    let wants = [
        format!("recv {leader}->{follower} t"),
        format!("n{follower} persist append"),
        format!("send {follower}->{leader} t"),
        "AppendResp ok match=".to_string(),
    ];
    // Up to each application of a group of entries (the first may be of an entry from
    // before tracing began), until the trace shows the whole part; a missing event makes
    // `lines_until` fail once no more entries are applied.
    let mut text = String::new();
    while !wants.iter().all(|want| text.contains(want)) {
        text.push_str(&lines_until(&mut watch, "applied up to").await.join("\n"));
        text.push('\n');
    }
    // Off: the reply, then nothing more, though the cluster keeps working (heartbeats
    // alone would show every tick).
    write.write_all(b".trace off\n").await.expect("write");
    lines_until(&mut watch, r#"{"tracing":"off"}"#).await;
    until_ok(&mut client, "INSERT INTO t VALUES (1000)").await;
    match tokio::time::timeout(Duration::from_millis(800), watch.next_line()).await {
        Err(_) => {}
        Ok(line) => panic!("a trace line after .trace off: {line:?}"),
    }
    // At most eight sessions trace one node (the first watcher above stopped); the
    // ninth is told so.
    let mut more = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(cluster.client_addrs[follower]).await.expect("connect");
        s.write_all(b".trace on\n").await.expect("write");
        more.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ninth = TcpStream::connect(cluster.client_addrs[follower]).await.expect("connect");
    let (read, mut write) = ninth.into_split();
    let mut ninth = tokio::io::BufReader::new(read).lines();
    write.write_all(b".mode json\n.trace on\n").await.expect("write");
    let refused = lines_until(&mut ninth, "sessions are already tracing this node").await;
    assert!(refused.last().is_some_and(|l| l.contains("\"error\"")), "{refused:?}");
    assert!(!refused.iter().any(|l| l.contains(r#"{"tracing":"on"}"#)), "{refused:?}");
    drop(lazy);
}
