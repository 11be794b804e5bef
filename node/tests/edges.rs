//! Trust at the edges, end to end: what a stranger at a peer port, a client line, or a
//! client that misbehaves can do to real `lightraft` processes. Each test is one way in
//! that used to crash, stall, diverge or take over a cluster.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, dump, free_port, until_ok, Cluster, Options, BIN};
use lightraft::client::Client;
use lightraft::protocol::PeerMessage;
use raft_core::{Entry, Message, MessageKind, Payload};
use serde_json::{json, Value};
use sqlite_sm::{Limits, WriteCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport::handshake::{self, Challenge, Hello, Proof, Role};
use transport::{read_frame, write_frame, Secret};

const SECRET: &str = "a test secret that is long enough";

fn with_secret() -> Options {
    Options { secret: Some(SECRET.into()), ..Options::default() }
}

/// Room for lines that run for seconds: a long timeout and a step budget to match.
fn slow_lines_allowed() -> Options {
    Options {
        client: Some("timeoutMs = 30000\nmaxLineBytes = 65536\n".into()),
        limits: Some("maxSteps = 100000000000\n".into()),
        ..with_secret()
    }
}

async fn status(cluster: &Cluster, i: usize) -> Value {
    until_ok(&mut cluster.client(i).await, ".status").await
}

/// Sends a frame of JSON.
async fn send_json<T: serde::Serialize>(stream: &mut TcpStream, value: &T) -> std::io::Result<()> {
    write_frame(stream, &serde_json::to_vec(value).expect("json")).await
}

/// Reads until the node closes the connection; panics if it stays open.
/// Reads from a raw session until `want` has arrived; panics with `failure` and what was
/// read if the session closes or 10 s pass first.
async fn read_until(stream: &mut TcpStream, want: &str, failure: &str) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(want) {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            other => panic!("{failure} ({other:?}): {}", String::from_utf8_lossy(&seen)),
        }
    }
}

async fn assert_closed(mut stream: TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("{what}: the node left the connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_who_knows_the_cluster_name_can_neither_append_nor_vote() {
    let cluster = Cluster::start_with(3, &with_secret());
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    let term = status(&cluster, 0).await["term"].as_u64().expect("term");
    let follower = (leader + 1) % 3;
    let pretend = (follower + 1) % 3;

    // What a peer would send: the leader's append of a line no leader proposed, and a
    // vote in the last possible term, behind a handshake made without the secret.
    let forged = WriteCommand {
        sql: "INSERT INTO t VALUES (666)".into(),
        time_ms: 0,
        seed: 0,
        limits: Limits::default(),
        origin: None,
    };
    let append = Message {
        from: pretend as u64,
        to: follower as u64,
        term: term + 1,
        kind: MessageKind::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry { index: 1, term: term + 1, payload: Payload::Command(forged.encode()) }],
            commit: 1,
        },
    };
    let vote = Message {
        from: pretend as u64,
        to: follower as u64,
        term: u64::MAX,
        kind: MessageKind::Vote { last_index: 1000, last_term: u64::MAX, transfer: true },
    };
    for guess in ["", "lightraft", "a wrong guess at the secret"] {
        let mut stream = TcpStream::connect(cluster.rpc_addrs[follower]).await.expect("connect");
        let hello = Hello::new("test", pretend as u64, follower as u64);
        send_json(&mut stream, &hello).await.expect("hello");
        let challenge: Challenge =
            serde_json::from_slice(&read_frame(&mut stream, 4096).await.expect("a challenge")).expect("json");
        assert!(
            !handshake::verify(&Secret::new(guess.into()), Role::Acceptor, &hello, &challenge.nonce, &challenge.proof),
            "the node's proof reveals nothing a guess could match"
        );
        let proof = handshake::prove(&Secret::new(guess.into()), Role::Dialer, &hello, &challenge.nonce);
        send_json(&mut stream, &Proof { proof }).await.expect("proof");
        let _ = send_json(&mut stream, &PeerMessage::Raft(append.clone())).await;
        let _ = send_json(&mut stream, &PeerMessage::Raft(vote.clone())).await;
        assert_closed(stream, &format!("secret guess {guess:?}")).await;
    }
    // Skipping the handshake altogether gets nowhere either.
    let mut stream = TcpStream::connect(cluster.rpc_addrs[follower]).await.expect("connect");
    let _ = send_json(&mut stream, &PeerMessage::Raft(append)).await;
    assert_closed(stream, "no handshake").await;

    until_ok(&mut c, "INSERT INTO t VALUES (1)").await;
    for i in 0..3 {
        let mut n = cluster.client(i).await;
        until_ok(&mut n, ".consistency local").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&until_ok(&mut n, "SELECT count(*) FROM t").await) != 1 {
            assert!(Instant::now() < deadline, "node {i} never applied the real write");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let forged = until_ok(&mut n, "SELECT count(*) FROM t WHERE x = 666").await;
        assert_eq!(count(&forged), 0, "node {i} applied a line no leader proposed");
        let now = status(&cluster, i).await["term"].as_u64().expect("term");
        assert!(now < term + 5, "node {i} jumped to term {now}");
    }
    assert!(cluster.log(follower).contains("could not prove it knows the cluster secret"), "{}", cluster.log(follower));
}

#[test]
fn a_peer_port_beyond_loopback_needs_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[cluster]\nname = \"c\"\n[[nodes]]\nclientBindAddress = \"127.0.0.1\"\nclientBindPort = {}\nrpcBindAddress = \"0.0.0.0\"\nrpcBindPort = {}\n[driver]\nname = \"sqlite\"\npathPrefix = \"db\"\n",
        free_port(),
        free_port()
    );
    std::fs::write(dir.path().join("lightraft.toml"), config).expect("write");
    let run = |secret: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .arg("0")
            .current_dir(dir.path())
            .env_remove("LIGHTRAFT_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(secret) = secret {
            command.env("LIGHTRAFT_SECRET", secret);
        }
        command.spawn().expect("starts")
    };
    let out = run(None).wait_with_output().expect("exits");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(!out.status.success() && last.contains("no cluster secret is set") && last.contains("secretFile"), "{err}");
    let out = run(Some("short")).wait_with_output().expect("exits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at least 16"), "{err}");
    assert!(!err.contains("short"), "the secret itself is never printed: {err}");
    // With a secret it starts (and keeps running until killed).
    let mut child = run(Some(SECRET));
    std::thread::sleep(Duration::from_millis(700));
    let still_running = child.try_wait().expect("wait").is_none();
    let _ = child.kill();
    let out = child.wait_with_output().expect("exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(still_running, "{log}");
    assert!(!log.contains(SECRET), "the secret is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_makes_a_secret_for_its_cluster_so_strangers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = String::from("[cluster]\nname = \"up\"\n");
    let mut clients = Vec::new();
    let mut rpcs = Vec::new();
    for _ in 0..3 {
        let (client, rpc) = (free_port(), free_port());
        config += &format!("[[nodes]]\nclientBindAddress = \"127.0.0.1\"\nclientBindPort = {client}\nrpcBindAddress = \"127.0.0.1\"\nrpcBindPort = {rpc}\n");
        clients.push(std::net::SocketAddr::from(([127, 0, 0, 1], client)));
        rpcs.push(std::net::SocketAddr::from(([127, 0, 0, 1], rpc)));
    }
    config += "[driver]\nname = \"sqlite\"\npathPrefix = \"db\"\n[raft]\ntickMs = 20\n";
    std::fs::write(dir.path().join("lightraft.toml"), config).expect("write");
    let child = Command::new(BIN)
        .arg("up")
        .current_dir(dir.path())
        .env_remove("LIGHTRAFT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("up starts");
    struct Up(std::process::Child);
    impl Drop for Up {
        fn drop(&mut self) {
            // SAFETY: kill(2) with our child's pid and a valid signal.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let up = Up(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        match Client::connect(clients[0]).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "up's node 0 never served: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let created = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = c.request("CREATE TABLE t (x)").await.expect("answer");
            if reply.get("error").is_none() || Instant::now() > deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(created.get("error").is_none(), "the cluster works: {created}");
    // A process that knows the cluster name but not up's secret (as with no secret at all).
    let mut stream = TcpStream::connect(rpcs[1]).await.expect("connect");
    let hello = Hello::new("up", 0, 1);
    send_json(&mut stream, &hello).await.expect("hello");
    let challenge: Challenge =
        serde_json::from_slice(&read_frame(&mut stream, 4096).await.expect("challenge")).expect("json");
    let proof = handshake::prove(&Secret::default(), Role::Dialer, &hello, &challenge.nonce);
    send_json(&mut stream, &Proof { proof }).await.expect("proof");
    assert_closed(stream, "empty secret").await;
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_control_characters_as_long_as_allowed_replicates_and_later_writes_commit() {
    let options = Options { client: Some("timeoutMs = 10000\nmaxLineBytes = 1048576\n".into()), ..with_secret() };
    let cluster = Cluster::start_with(3, &options);
    let leader = cluster.leader().await;
    let mut c = cluster.client((leader + 1) % 3).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    // Every control character but newline and carriage return, which end a line: as JSON,
    // each one is six bytes (\u0001).
    let filler: Vec<u8> = (0..(1 << 20) - 40).map(|i| [1u8, 2, 3, 7, 8, 11, 12, 27, 31][i % 9]).collect();
    let mut line = b"INSERT INTO t VALUES ('".to_vec();
    line.extend_from_slice(&filler);
    line.extend_from_slice(b"')");
    assert!(line.len() <= 1 << 20);
    let reply = c.send_raw(&line).await.expect("answer");
    assert_eq!(
        reply["rows_affected"],
        json!(1),
        "the line was accepted and committed: {}",
        &reply.to_string()[..200.min(reply.to_string().len())]
    );
    until_ok(&mut c, "INSERT INTO t VALUES ('after')").await;
    for i in 0..3 {
        let mut n = cluster.client(i).await;
        until_ok(&mut n, ".consistency local").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = until_ok(&mut n, "SELECT count(*), max(length(x)) FROM t").await;
            if seen["rows"][0] == json!([2, filler.len()]) {
                break;
            }
            assert!(Instant::now() < deadline, "node {i} never got both rows: {seen}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_reads_delay_neither_status_nor_writes_nor_heartbeats() {
    let cluster = Cluster::start_with(3, &slow_lines_allowed());
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    let term = status(&cluster, leader).await["term"].clone();
    // Two reads that run for many seconds, on the leader.
    let heavy =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 400000000) SELECT count(*) FROM c";
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut r = cluster.client(leader).await;
        readers.push(tokio::spawn(async move { r.request(heavy).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        until_ok(&mut c, &format!("INSERT INTO t VALUES ({i})")).await;
        assert_eq!(count(&until_ok(&mut c, "SELECT count(*) FROM t").await), i + 1);
        let s = status(&cluster, leader).await;
        assert_eq!(s["role"], json!("leader"));
        assert_eq!(s["term"], term, "no election happened");
    }
    assert!(readers.iter().all(|r| !r.is_finished()), "the heavy reads were still running all along");
    for r in readers {
        r.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_runs_long_does_not_cost_the_leader_its_leadership() {
    let cluster = Cluster::start_with(3, &slow_lines_allowed());
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    let before = status(&cluster, leader).await;
    // Seconds of work on every replica: all three apply it at once.
    let slow = "INSERT INTO t SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 40000000) SELECT x FROM c)";
    let mut w = cluster.client(leader).await;
    let writer = tokio::spawn(async move { w.request(slow).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut polls = 0;
    while !writer.is_finished() {
        let s = status(&cluster, leader).await;
        assert_eq!((s["role"].clone(), s["term"].clone()), (json!("leader"), before["term"].clone()), "{s}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(polls >= 3, "the write took long enough to matter ({polls} polls)");
    let reply = writer.await.expect("joined").expect("answer");
    assert_eq!(reply["rows_affected"], json!(1), "{reply}");
    let after = status(&cluster, leader).await;
    assert_eq!(after["term"], before["term"], "no election while it applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_tables_and_clients_that_never_read_cost_bounded_memory() {
    let options = Options {
        client: Some("timeoutMs = 10000\nmaxLineBytes = 65536\nwriteTimeoutMs = 6000\n".into()),
        limits: Some("maxResultBytes = 16777216\n".into()),
        ..with_secret()
    };
    let cluster = Cluster::start_with(3, &options);
    let leader = cluster.leader().await;
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    until_ok(&mut c, "INSERT INTO t SELECT hex(zeroblob(500000))").await;
    until_ok(&mut c, "INSERT INTO t SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000) SELECT x FROM c)").await;
    // One 1 MB cell padded into 3000 rows would be 3 GB of table.
    let mut table = TcpStream::connect(cluster.client_addrs[leader]).await.expect("connect");
    table.write_all(b"SELECT * FROM t\n").await.expect("write");
    read_until(&mut table, "as shown in table mode", "no clear error for a table too wide").await;
    // Fifty clients ask for 4 MB each and never read a byte of it.
    until_ok(&mut c, "CREATE TABLE big (x)").await;
    for _ in 0..4 {
        until_ok(&mut c, "INSERT INTO big SELECT hex(randomblob(500)) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c)").await;
    }
    let mut silent = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(cluster.client_addrs[leader]).await.expect("connect");
        let mode = if i % 2 == 0 { ".mode json\n" } else { "" };
        // 12 MB each, more than the kernel's socket buffers hold; JSON spells each control
        // character in six bytes, which the limits count.
        let line = "SELECT * FROM big; SELECT * FROM big; SELECT * FROM big; SELECT printf('%.*c', 100000, char(1))";
        s.write_all(format!("{mode}{line}\n").as_bytes()).await.expect("write");
        silent.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everyone else is still served, promptly, while the silent clients hold their answers.
    let started = Instant::now();
    let mut other = cluster.client(leader).await;
    assert_eq!(count(&until_ok(&mut other, "SELECT count(*) FROM big").await), 4000);
    assert_eq!(until_ok(&mut other, "SELECT 1").await["rows"], json!([[1]]));
    // Well before the silent clients are dropped: reads did not wait for that (the bound
    // is loose, as a CI machine busy serving fifty 12 MB answers on two cores is slow).
    assert!(started.elapsed() < Duration::from_secs(4), "reads waited {:?} behind silent clients", started.elapsed());
    // Longer than the write timeout: a client silent that long is dropped.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Fifty answers of 12 MB would be 600 MB (3.6 GB as JSON); the node holds at most its
    // answer budget (32 results: 512 MiB here), and refuses further reads meanwhile.
    let peak = cluster.peak_memory_mib(leader);
    assert!(peak < 1024, "the leader peaked at {peak} MiB");
    // Each silent client was dropped (after the bytes its socket buffered, the stream
    // ends), or, while the budget was spent, told so at once, or (read here, one after
    // another, while the node kept writing to the others) got its whole answer.
    let mut dropped = 0;
    for (i, mut s) in silent.into_iter().enumerate() {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => {
                    dropped += 1;
                    break;
                }
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) if String::from_utf8_lossy(&seen).contains("have not read yet") => break,
                // The whole answer (12 MB or more, then the prompt or the JSON line's end).
                Err(_) if seen.len() > 12_000_000 && (seen.ends_with(b"lightraft=# ") || seen.ends_with(b"\n")) => {
                    break
                }
                Err(_) => panic!("silent client {i} was neither dropped nor refused ({} bytes read)", seen.len()),
            }
        }
    }
    assert!(dropped > 0, "no silent client was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_idle_ones_closed_and_peers_keep_working() {
    let options = Options {
        client: Some("timeoutMs = 4000\nmaxLineBytes = 65536\nmaxClients = 20\nidleTimeoutMs = 1500\n".into()),
        ..with_secret()
    };
    let cluster = Cluster::start_with(3, &options);
    let leader = cluster.leader().await;
    let full = (leader + 1) % 3;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(Client::connect(cluster.client_addrs[full]).await.expect("a slot"));
    }
    let mut turned_away = TcpStream::connect(cluster.client_addrs[full]).await.expect("connect");
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), turned_away.read_to_string(&mut text)).await;
    assert!(text.contains("too many connections (maxClients is 20)"), "{text:?}");
    // The full node still takes part: a write through another node commits, and is
    // applied on the full node too.
    let mut c = cluster.client(leader).await;
    until_ok(&mut c, "CREATE TABLE t (x)").await;
    until_ok(&mut c, "INSERT INTO t VALUES (1)").await;
    until_ok(&mut held[0], ".consistency local").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while until_ok(&mut held[0], "SELECT count(*) FROM t").await["rows"] != json!([[1]]) {
        assert!(Instant::now() < deadline, "the full node never applied the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A session watching `.trace` may sit silent, but a line it began must end within
    // the idle timeout, or the session is closed like any other.
    let mut watcher = TcpStream::connect(cluster.client_addrs[leader]).await.expect("connect");
    watcher.write_all(b".trace on\n").await.expect("write");
    let mut partial = TcpStream::connect(cluster.client_addrs[leader]).await.expect("connect");
    partial.write_all(b".trace on\nSELECT").await.expect("write");
    // Idle sessions are closed, which frees their slots.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut text = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), partial.read_to_string(&mut text)).await;
    assert!(text.contains("nothing was received"), "a half line kept a tracing session open: {text:?}");
    watcher.write_all(b".trace\n").await.expect("the silent watcher is still served");
    read_until(&mut watcher, "tracing is on", "the silent watcher was closed or stalled").await;
    let closed = held[1].request("SELECT 1").await;
    assert!(
        closed.is_err()
            || closed.as_ref().is_ok_and(|r| r["error"].as_str().is_some_and(|e| e.contains("nothing was received"))),
        "{closed:?}"
    );
    let mut fresh = cluster.client(full).await;
    assert_eq!(until_ok(&mut fresh, "SELECT 1").await["rows"], json!([[1]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisonous_lines_leave_every_replica_serving_and_identical_across_restarts() {
    let mut cluster = Cluster::start_with(3, &with_secret());
    let leader = cluster.leader().await;
    let mut c = cluster.client((leader + 2) % 3).await;
    until_ok(&mut c, "CREATE TABLE a (id INTEGER PRIMARY KEY AUTOINCREMENT, v); INSERT INTO a (v) VALUES (1)").await;
    until_ok(&mut c, "CREATE VIRTUAL TABLE ft USING fts5(body); CREATE VIRTUAL TABLE rt USING rtree(id, x0, x1); INSERT INTO ft VALUES ('hello'); INSERT INTO rt VALUES (1, 0, 1)").await;
    until_ok(
        &mut c,
        "CREATE TABLE p (id PRIMARY KEY); CREATE TABLE ch (pid REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .await;
    until_ok(&mut c, "UPDATE sqlite_sequence SET seq = 9223372036854775807").await;
    until_ok(&mut c, "CREATE INDEX av ON a(v); ANALYZE").await;
    let concat = format!("INSERT INTO a (v) VALUES (length(concat({})))", vec!["zeroblob(8388608)"; 256].join(", "));
    let grind = "INSERT INTO a (v) SELECT count(*) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 6000) SELECT i FROM c) WHERE length(hex(zeroblob(4000000 + i))) > 0";
    let poison = [
        (concat.as_str(), "at once"),
        (grind, "large values"),
        ("UPDATE sqlite_stat1 SET stat = '1000 1'", "only through ANALYZE"),
        ("INSERT INTO a (v) VALUES (2)", "AUTOINCREMENT"),
        ("INSERT INTO ft_data VALUES (99, x'00')", "may not be modified"),
        ("UPDATE rt_node SET data = x'00'", "may not be modified"),
        ("INSERT INTO ch VALUES (5)", "FOREIGN KEY"),
        ("CREATE TEMP TABLE _lightraft_applied (id, applied_index)", "TEMP"),
        ("CREATE TEMP VIEW v AS SELECT 1", "TEMP"),
        ("CREATE TRIGGER tr AFTER UPDATE ON _lightraft_applied BEGIN SELECT 1; END", "lightraft"),
        ("INSERT INTO a (id, v) VALUES (9223372036854775807, 3)", "largest rowid"),
        ("SELECT * FROM pragma_database_list", "depends on this node"),
        ("INSERT INTO a (v) VALUES (zeroblob(400000000))", "too big"),
        ("INSERT INTO a (v) SELECT printf('%.*c', 100000000, 'x')", "too big"),
    ];
    for (line, why) in poison {
        let reply = c.request(line).await.expect("answer");
        assert_eq!(reply["code"], json!("sql_error"), "{line}: {reply}");
        assert!(reply["error"].as_str().unwrap_or_default().contains(why), "{line}: {reply}");
    }
    until_ok(&mut c, "INSERT INTO ft VALUES ('after'); INSERT INTO a (id, v) VALUES (7, 4)").await;
    let mut commit = 0;
    for i in 0..3 {
        commit = commit.max(status(&cluster, i).await["commit_index"].as_u64().expect("commit"));
    }
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(&cluster, i).await["applied_index"].as_u64().unwrap_or(0) < commit {
            assert!(Instant::now() < deadline, "node {i} stopped applying");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every node restarts and re-reads (or re-applies) all of it without failing.
    for i in 0..3 {
        cluster.kill(i);
    }
    let dumps: Vec<Vec<String>> = (0..3).map(|i| dump(&cluster.db_path(i))).collect();
    assert_eq!(dumps[0], dumps[1]);
    assert_eq!(dumps[0], dumps[2]);
    for i in 0..3 {
        cluster.start_node(i);
    }
    cluster.leader().await;
    let mut c = cluster.client(0).await;
    until_ok(&mut c, "INSERT INTO a (id, v) VALUES (8, 5)").await;
    assert_eq!(count(&until_ok(&mut c, "SELECT count(*) FROM a").await), 3);
    assert_eq!(count(&until_ok(&mut c, "SELECT count(*) FROM ft WHERE ft MATCH 'after'").await), 1);
}
