//! Log compaction and snapshot benchmarks (§7). They measure and print; the results are
//! written down in docs/PERFORMANCE.md. Not part of the suite (timings belong in
//! benchmarks, not in tests that flake on a busy machine):
//!
//! ```text
//! cargo test --release -p lightraft --test snapshot_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `bench_memory_disk_and_restart_as_history_grows`: 2 million single-row writes (64
//!   clients on the leader), with the default compaction policy and with compaction off;
//!   at 100k, 500k, 1M and 2M writes: every node's RSS, the Raft log's size on disk, a
//!   follower's restart time, and the write rate. `LIGHTRAFT_BENCH_WRITES` scales it
//!   (the checkpoints are 5%, 25%, 50% and 100% of it).
//! - `bench_catch_up_by_snapshot`: a follower whose state is 500 MB behind catches up by
//!   snapshot while the leader serves writes; prints its rate, the disk's sequential
//!   write rate, and the leader's write latencies meanwhile. `LIGHTRAFT_BENCH_MB` scales it.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{until_ok, Cluster, Options};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn options(compaction: bool) -> Options {
    let raft = if compaction { "tickMs = 100\n" } else { "tickMs = 100\ncompactEntries = 0\ncompactBytes = 0\n" };
    Options {
        raft: Some(raft.into()),
        client: Some("timeoutMs = 10000\nmaxLineBytes = 1048576\n".into()),
        ..Options::default()
    }
}

/// A node's resident memory now, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    kib / 1024
}

/// The size of a database and its WAL, in MiB.
fn db_mib(path: &Path) -> f64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    (size(path) + size(Path::new(&wal))) as f64 / (1 << 20) as f64
}

/// The size of node `i`'s Raft state: its meta database, that database's WAL and the
/// log segments, all named `test-<i>.meta.*`, in MiB.
fn raft_mib(dir: &Path, i: usize) -> f64 {
    let prefix = format!("test-{i}.meta.");
    let bytes: u64 = std::fs::read_dir(dir)
        .map(|list| {
            list.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    bytes as f64 / (1 << 20) as f64
}

/// Clients writing single rows through `node` until `total` writes are acknowledged.
struct Load {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<(Instant, Duration)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(cluster: &Cluster, node: usize, clients: usize, total: u64, sql: &'static str) -> Load {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let mut c = cluster.client(node).await;
            let (done, stop, latencies) = (done.clone(), stop.clone(), latencies.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < total {
                    let started = Instant::now();
                    let Ok(reply) = c.request(sql).await else { return };
                    if reply.get("error").is_none() {
                        done.fetch_add(1, Ordering::Relaxed);
                        latencies.lock().expect("lock").push((started, started.elapsed()));
                    }
                }
            }));
        }
        Load { done, stop, latencies, tasks }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Vec<(Instant, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let latencies = self.latencies.lock().expect("lock").clone();
        latencies
    }
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    samples[((samples.len() - 1) as f64 * q) as usize]
}

/// Restarts follower `i` and returns (time until it serves clients, until caught up).
async fn restart_follower(cluster: &mut Cluster, i: usize, leader: usize) -> (Duration, Duration) {
    cluster.stop(i);
    let started = Instant::now();
    cluster.start_node(i);
    // Poll finely: the harness's own connect loop waits 50 ms between tries.
    let mut client = loop {
        if let Ok(client) = lightraft::client::Client::connect(cluster.client_addrs[i]).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let serving = started.elapsed();
    let mut leader_client = cluster.client(leader).await;
    let commit = until_ok(&mut leader_client, ".status").await["commit_index"].as_u64().unwrap_or(0);
    loop {
        let status = until_ok(&mut client, ".status").await;
        if status["applied_index"].as_u64().unwrap_or(0) >= commit {
            return (serving, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored"]
async fn bench_memory_disk_and_restart_as_history_grows() {
    let total = env_u64("LIGHTRAFT_BENCH_WRITES", 2_000_000);
    let checkpoints = [total / 20, total / 4, total / 2, total];
    println!("| compaction | writes | writes/s since last | RSS MiB (n0, n1, n2) | log on disk MiB (n0, n1, n2) | state MiB | follower restart: serving, caught up |");
    println!("|---|---|---|---|---|---|---|");
    for compaction in [true, false] {
        let mut cluster = Cluster::start_with(3, &options(compaction));
        let leader = cluster.leader().await;
        until_ok(&mut cluster.client(leader).await, "CREATE TABLE load (v INTEGER)").await;
        let load = Load::start(&cluster, leader, 64, total, "INSERT INTO load VALUES (random())").await;
        let mut last = (Instant::now(), 0u64);
        for &at in &checkpoints {
            while load.done() < at {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let now = (Instant::now(), load.done());
            let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
            last = now;
            let rss: Vec<u64> = (0..3).map(|i| rss_mib(cluster.pid(i))).collect();
            let log: Vec<String> = (0..3).map(|i| format!("{:.1}", raft_mib(cluster.dir.path(), i))).collect();
            let state = db_mib(&cluster.db_path(leader));
            let follower = (leader + 1) % 3;
            let (serving, caught_up) = restart_follower(&mut cluster, follower, leader).await;
            println!(
                "| {} | {at} | {rate:.0} | {rss:?} | {} | {state:.1} | {} ms, {} ms |",
                if compaction { "on (defaults)" } else { "off" },
                log.join(", "),
                serving.as_millis(),
                caught_up.as_millis()
            );
        }
        let _ = load.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored"]
async fn bench_catch_up_by_snapshot() {
    let megabytes = env_u64("LIGHTRAFT_BENCH_MB", 500);
    // The disk's own sequential write rate, for comparison.
    let probe = std::env::temp_dir().join("lightraft-disk-probe");
    let data = vec![0x5au8; 64 << 20];
    let started = Instant::now();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&probe).expect("probe file");
        for _ in 0..4 {
            file.write_all(&data).expect("write");
        }
        file.sync_all().expect("sync");
    }
    let disk_rate = 256.0 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&probe);

    let mut cluster = Cluster::start_with(3, &options(true));
    let leader = cluster.leader().await;
    let behind = (leader + 1) % 3;
    until_ok(&mut cluster.client(leader).await, "CREATE TABLE big (b BLOB); CREATE TABLE small (v INTEGER)").await;
    cluster.stop(behind);
    let leader = cluster.leader().await;
    // 100 KB rows until the state holds `megabytes` MB.
    let fill = Load::start(&cluster, leader, 8, megabytes * 10, "INSERT INTO big VALUES (randomblob(100000))").await;
    while fill.done() < megabytes * 10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = fill.finish().await;
    let state = db_mib(&cluster.db_path(leader));
    // The leader keeps serving small writes while the follower catches up.
    let load = Load::start(&cluster, leader, 16, u64::MAX, "INSERT INTO small VALUES (random())").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    cluster.start_node(behind);
    let mut client = cluster.client(behind).await;
    let mut leader_client = cluster.client(leader).await;
    let commit = until_ok(&mut leader_client, ".status").await["commit_index"].as_u64().unwrap_or(0);
    loop {
        let status = until_ok(&mut client, ".status").await;
        if status["applied_index"].as_u64().unwrap_or(0) >= commit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let latencies = load.finish().await;
    let mut during: Vec<Duration> =
        latencies.iter().filter(|(at, _)| *at >= started && *at <= started + took).map(|(_, d)| *d).collect();
    let mut before: Vec<Duration> = latencies.iter().filter(|(at, _)| *at < started).map(|(_, d)| *d).collect();
    let installed = cluster.log(behind).contains("installed the snapshot");
    // Where the time went, from both nodes' logs.
    for (who, i) in [("leader", leader), ("follower", behind)] {
        for line in cluster.log(i).lines().filter(|l| l.contains("snapshot")) {
            println!("  {who}: {line}");
        }
    }
    println!(
        "state {state:.0} MiB; follower caught up in {:.1} s ({:.0} MiB/s; disk sequential write {disk_rate:.0} MiB/s); by snapshot: {installed}",
        took.as_secs_f64(),
        state / took.as_secs_f64()
    );
    println!(
        "leader write latency before: p50 {:?} p99 {:?}; during catch-up ({} writes): p50 {:?} p99 {:?}",
        percentile(&mut before, 0.5),
        percentile(&mut before, 0.99),
        during.len(),
        percentile(&mut during, 0.5),
        percentile(&mut during, 0.99)
    );
}
