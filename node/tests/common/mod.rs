//! The harness for end-to-end tests: real `lightraft` processes on 127.0.0.1, ports
//! picked free at run time, each cluster in its own temporary directory. Every process is
//! killed when the test ends, also when it fails (the harness kills them on drop).
#![allow(dead_code)] // each test file uses a different part of it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lightraft::client::Client;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_lightraft");

/// The optional parts of a test cluster's config.
#[derive(Default)]
pub struct Options {
    /// `[cluster] secret`.
    pub secret: Option<String>,
    /// The body of `[client]` (default: a 4 s timeout and 64 KiB lines).
    pub client: Option<String>,
    /// The body of `[limits]`, if any.
    pub limits: Option<String>,
    /// The body of `[raft]` (default: 20 ms ticks).
    pub raft: Option<String>,
    /// Give node i the peer address 127.0.0.(10 + i), so that a firewall rule on that
    /// address cuts exactly its peer traffic (clients stay on 127.0.0.1).
    pub own_peer_address: bool,
    /// The nodes' `RUST_LOG` (default `info`).
    pub log: Option<String>,
    /// Give each node a `metricsBindPort`.
    pub metrics: bool,
}

/// A running cluster. Dropping it kills every node.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Option<Child>>,
    pub client_addrs: Vec<SocketAddr>,
    pub rpc_addrs: Vec<SocketAddr>,
    /// With `Options::metrics`, where each node serves `/metrics`.
    pub metrics_addrs: Vec<SocketAddr>,
    /// The nodes' `RUST_LOG`.
    log: String,
}

/// A port free right now, picked below Linux's ephemeral range (32768 and up). A port the
/// kernel hands out for `:0` is one it also hands out as the source port of outgoing
/// connections, so with many clusters under test a node sometimes found its port taken
/// by some client's connection before it could listen. Nothing listens on a port between
/// this call and the node's start, so the ports handed out are remembered: two random picks
/// once collided and gave two nodes of one cluster the same port.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(10_000..32_768);
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port below 32768 after 1000 tries");
}

impl Cluster {
    /// Writes a config for `size` nodes with fast timeouts and starts them all.
    pub fn start(size: usize) -> Cluster {
        Cluster::start_with(size, &Options::default())
    }

    /// Like `start`, with the config's optional sections chosen by the test.
    pub fn start_with(size: usize, options: &Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = String::from("[cluster]\nname = \"test\"\n");
        if let Some(secret) = &options.secret {
            config += &format!("secret = \"{secret}\"\n");
        }
        config += "\n";
        let mut client_addrs = Vec::new();
        let mut rpc_addrs = Vec::new();
        let mut metrics_addrs = Vec::new();
        for i in 0..size {
            let (client, rpc) = (free_port(), free_port());
            let rpc_ip = if options.own_peer_address { [127, 0, 0, 10 + i as u8] } else { [127, 0, 0, 1] };
            let rpc_host = std::net::Ipv4Addr::from(rpc_ip);
            config += &format!(
                "[[nodes]]\nclientBindAddress = \"127.0.0.1\"\nclientBindPort = {client}\nrpcBindAddress = \"{rpc_host}\"\nrpcBindPort = {rpc}\n\n"
            );
            if options.metrics {
                let port = free_port();
                config += &format!("metricsBindPort = {port}\n\n");
                metrics_addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
            }
            client_addrs.push(SocketAddr::from(([127, 0, 0, 1], client)));
            rpc_addrs.push(SocketAddr::from((rpc_ip, rpc)));
        }
        config += "[driver]\nname = \"sqlite\"\npathPrefix = \"db\"\n\n[raft]\n";
        config += options.raft.as_deref().unwrap_or("tickMs = 20\n");
        config += "\n[client]\n";
        config += options.client.as_deref().unwrap_or("timeoutMs = 4000\nmaxLineBytes = 65536\n");
        if let Some(limits) = &options.limits {
            config += &format!("\n[limits]\n{limits}");
        }
        std::fs::write(dir.path().join("lightraft.toml"), config).expect("config written");
        let log = options.log.clone().unwrap_or_else(|| "info".into());
        let mut cluster =
            Cluster { dir, nodes: (0..size).map(|_| None).collect(), client_addrs, rpc_addrs, metrics_addrs, log };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster
    }

    pub fn start_node(&mut self, i: usize) {
        self.start_node_with_env(i, &[]);
    }

    /// Starts node `i` with extra environment variables (a failpoint, say).
    pub fn start_node_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        self.spawn(i, &[], env);
    }

    /// Runs `lightraft i ARGS` in the cluster's directory, logging to `node-i.log`.
    fn spawn(&mut self, i: usize, args: &[String], env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{i}.log")))
            .expect("log file");
        // LIGHTRAFT_BIN runs another build (a benchmark comparing two versions).
        let binary = std::env::var_os("LIGHTRAFT_BIN").unwrap_or_else(|| BIN.into());
        let child = Command::new(binary)
            .arg(i.to_string())
            .args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", &self.log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("node starts");
        self.nodes[i] = Some(child);
    }

    /// Starts a new node `index` (beyond the config's nodes) with fresh ports, asking
    /// node `via` to add it to the cluster (`--join`).
    pub fn join(&mut self, index: usize, via: usize) {
        assert_eq!(index, self.nodes.len(), "joining nodes take the next index");
        let (client, rpc) = (free_port(), free_port());
        self.client_addrs.push(SocketAddr::from(([127, 0, 0, 1], client)));
        self.rpc_addrs.push(SocketAddr::from(([127, 0, 0, 1], rpc)));
        self.nodes.push(None);
        let args = [
            "--join".to_string(),
            self.client_addrs[via].to_string(),
            "--rpc".to_string(),
            self.rpc_addrs[index].to_string(),
            "--client".to_string(),
            self.client_addrs[index].to_string(),
        ];
        self.spawn(index, &args, &[]);
    }

    /// Asks the running nodes for `.cluster` until one answers with exactly these voters
    /// and no learner; returns that answer.
    pub async fn until_members(&self, voters: &[u64]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()) {
                let Ok(mut c) = Client::connect(self.client_addrs[i]).await else { continue };
                let Ok(reply) = c.request(".cluster").await else { continue };
                if let Some(members) = reply["cluster"]["members"].as_array() {
                    let mut found: Vec<u64> =
                        members.iter().filter(|m| m["role"] == "voter").filter_map(|m| m["node"].as_u64()).collect();
                    found.sort_unstable();
                    if found == voters && members.len() == voters.len() {
                        return reply;
                    }
                }
                last = reply;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("the cluster never had exactly the voters {voters:?}; last .cluster: {last}");
    }

    /// The running node's process id.
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].as_ref().map(Child::id).unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// The most memory node `i` has held so far (VmHWM), in MiB.
    pub fn peak_memory_mib(&self, i: usize) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i))).expect("/proc status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number");
        kib / 1024
    }

    /// What node `i` logged so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log"))).unwrap_or_default()
    }

    /// Sends `signal` to node `i` (SIGSTOP pauses it, SIGCONT resumes it).
    pub fn signal(&self, i: usize, signal: i32) {
        // SAFETY: kill(2) with our running child's pid and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(i) as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal {signal} to node {i}");
    }

    /// SIGTERM, then waits for the node to finish its shutdown.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGTERM);
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.wait();
        }
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn db_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("db-{i}.sqlite"))
    }

    pub async fn client(&self, i: usize) -> Client {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Client::connect(self.client_addrs[i]).await {
                Ok(client) => return client,
                Err(e) if Instant::now() > deadline => panic!("node {i} does not accept clients: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until the running nodes agree on a leader; returns it.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut seen = Vec::new();
            for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()) {
                let Ok(mut c) = Client::connect(self.client_addrs[i]).await else { continue };
                if let Ok(status) = c.request(".status").await {
                    seen.push(status["leader"].as_u64());
                }
            }
            let running = self.nodes.iter().filter(|n| n.is_some()).count();
            if seen.len() == running && seen.iter().all(|l| l.is_some() && *l == seen[0]) {
                if let Some(&Some(leader)) = seen.first() {
                    // A node that was just killed may still be believed in for a moment.
                    if self.nodes.get(leader as usize).is_some_and(|n| n.is_some()) {
                        return leader as usize;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no agreed leader within 20 s; logs in {}", self.dir.path().display());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            // Leave the logs for whoever reads the failure.
            for i in 0..self.nodes.len() {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- node {i} log (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Retries `request` until it succeeds (no "error" key) or 10 s pass.
pub async fn until_ok(client: &mut Client, line: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.request(line).await.expect("session stays open");
        if reply.get("error").is_none() {
            return reply;
        }
        assert!(Instant::now() < deadline, "{line} kept failing: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn count(reply: &Value) -> i64 {
    reply["rows"][0][0].as_i64().unwrap_or_else(|| panic!("expected a count, got {reply}"))
}

/// Every table's rows, in order, as read from a node's database file. The applied-index
/// bookkeeping is left out: a node may apply a later no-op just before it is stopped.
pub fn dump(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).expect("database opens");
    let mut out = Vec::new();
    let mut tables = conn
        .prepare(
            "SELECT name, sql FROM sqlite_schema WHERE type IN ('table', 'trigger') AND name NOT LIKE 'sqlite_%' \
             AND name <> '_lightraft_applied' ORDER BY name",
        )
        .expect("schema query");
    let tables: Vec<(String, String)> =
        tables.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("schema").map(|r| r.expect("row")).collect();
    for (name, sql) in tables {
        // Triggers have no rows; virtual tables keep theirs in shadow tables, dumped too.
        let skip = sql.starts_with("CREATE TRIGGER") || sql.starts_with("CREATE VIRTUAL");
        let order = if sql.contains("WITHOUT ROWID") { "" } else { " ORDER BY rowid" };
        out.push(sql);
        if skip {
            continue;
        }
        let mut rows = conn.prepare(&format!("SELECT * FROM \"{name}\"{order}")).expect("select");
        let columns = rows.column_count();
        let dumped: Vec<String> = rows
            .query_map([], |r| {
                let values: Vec<String> =
                    (0..columns).map(|i| format!("{:?}", r.get_ref(i).map(|v| v.data_type()).ok())).collect();
                let raw: Vec<String> = (0..columns).map(|i| format!("{:?}", r.get_ref(i).ok())).collect();
                Ok(format!("{name}: {} {}", values.join(","), raw.join(",")))
            })
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect();
        out.extend(dumped);
    }
    out
}
