//! `lightraft bench`: concurrent client sessions against a running cluster, reporting
//! acknowledged single-row INSERTs per second and linearizable reads per second, with
//! latency percentiles. Every write is acknowledged only after a majority fsynced it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::config::Config;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// The cluster's config file.
    pub config: PathBuf,
    /// Concurrent sessions.
    pub clients: usize,
    /// Seconds per phase (writes, then reads).
    pub seconds: u64,
    /// Spread sessions over all nodes (followers forward) instead of using the leader.
    pub spread: bool,
}

/// What one phase measured.
struct Phase {
    ok: usize,
    errors: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// Runs the benchmark and prints a report.
pub fn run(args: &BenchArgs) -> Result<(), String> {
    let config = Config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let addrs: Vec<SocketAddr> =
            (0..config.nodes.len()).map(|i| config.client_addr(i)).collect::<Result<_, _>>()?;
        let leader = find_leader(&addrs).await?;
        let targets: Vec<SocketAddr> = if args.spread { addrs.clone() } else { vec![addrs[leader]] };
        let mut setup = Client::connect(targets[0]).await.map_err(|e| format!("cannot connect: {e}"))?;
        let created = setup
            .request(
                "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, client INTEGER, seq INTEGER, payload TEXT)",
            )
            .await
            .map_err(|e| e.to_string())?;
        if created.get("error").is_some() {
            return Err(format!("cannot create the bench table: {created}"));
        }
        println!(
            "lightraft bench: {} clients, {} s per phase, sessions on {}",
            args.clients,
            args.seconds,
            if args.spread { "every node".to_string() } else { format!("the leader (node {leader})") }
        );
        println!("durability: every write acknowledged after a majority made it durable (the Raft log's segment files, one fdatasync per batch)");
        let duration = Duration::from_secs(args.seconds);
        let writes = phase(&targets, args.clients, duration, |c, i| {
            format!("INSERT INTO bench (client, seq, payload) VALUES ({c}, {i}, 'payload-{c}-{i}')")
        })
        .await;
        report("writes (single-row INSERT)", &writes);
        let max_id = setup.request("SELECT max(id) FROM bench").await.map_err(|e| e.to_string())?;
        let max_id = max_id["rows"][0][0].as_i64().unwrap_or(1).max(1);
        let reads = phase(&targets, args.clients, duration, move |c, i| {
            let id = (c as i64 * 7919 + i as i64 * 104_729) % max_id + 1;
            format!("SELECT payload FROM bench WHERE id = {id}")
        })
        .await;
        report("linearizable reads (point SELECT)", &reads);
        Ok(())
    })
}

/// The index of the node that reports itself leader, waiting up to ten seconds.
async fn find_leader(addrs: &[SocketAddr]) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for addr in addrs {
            let Ok(mut client) = Client::connect(*addr).await else { continue };
            if let Ok(status) = client.request(".status").await {
                if let Some(leader) = status["leader"].as_u64() {
                    return Ok(leader as usize);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("no leader: is the cluster running (lightraft up)?".to_string())
}

async fn phase(
    targets: &[SocketAddr],
    clients: usize,
    duration: Duration,
    line: impl Fn(usize, usize) -> String + Clone + Send + 'static,
) -> Phase {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = targets[c % targets.len()];
        let line = line.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = Phase { ok: 0, errors: 0, latencies: Vec::new(), elapsed: Duration::ZERO };
            let Ok(mut client) = Client::connect(addr).await else {
                result.errors += 1;
                return result;
            };
            let mut i = 0;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match client.request(&line(c, i)).await {
                    Ok(reply) if reply.get("error").is_none() => {
                        result.ok += 1;
                        result.latencies.push(sent.elapsed());
                    }
                    Ok(_) => result.errors += 1,
                    Err(_) => {
                        result.errors += 1;
                        break;
                    }
                }
                i += 1;
            }
            result
        }));
    }
    let mut total = Phase { ok: 0, errors: 0, latencies: Vec::new(), elapsed: Duration::ZERO };
    for task in tasks {
        if let Ok(r) = task.await {
            total.ok += r.ok;
            total.errors += r.errors;
            total.latencies.extend(r.latencies);
        }
    }
    total.elapsed = start.elapsed();
    total
}

fn report(name: &str, phase: &Phase) {
    let mut latencies = phase.latencies.clone();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    let rate = phase.ok as f64 / phase.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{name}: {rate:.0}/s ({} ok, {} errors in {:.1} s), latency p50 {:.2} ms, p99 {:.2} ms",
        phase.ok,
        phase.errors,
        phase.elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}
