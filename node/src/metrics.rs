//! Metrics for operators. With `metricsBindPort` in its `[[nodes]]` entry, a node serves
//! `GET /metrics` in the Prometheus text format (OpenMetrics) on its client address:
//! its Raft state, requests by kind and outcome with their latency, the time to write
//! and sync each batch of Raft state, its peers' connections and its open sessions.
//!
//! The HTTP side is as small as the job: one request per connection, a head of at most
//! 8 KiB read within 2 seconds, at most 8 scrapes at once. It listens on loopback unless
//! `metricsBindAddress` says otherwise. Anything else is answered
//! with an error status and the connection closed; a scrape never waits on the Raft
//! thread for more than 2 seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tracing::warn;

use crate::core::Event;
use crate::protocol::Request;

/// The roles `.status` reports; each has its gauge, 1 for the current one.
const ROLES: [&str; 4] = ["follower", "pre-candidate", "candidate", "leader"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    peer: String,
}

/// Every metric of a node, shared by its sessions, its Raft core and its scrapes.
pub struct Metrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    latency: Family<Kind, Histogram>,
    persist: Histogram,
    sessions: Gauge,
    role: Family<Role, Gauge>,
    term: Gauge,
    commit: Gauge,
    applied: Gauge,
    snapshot: Gauge,
    log_entries: Gauge,
    peers: Family<Peer, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lightraft");
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "requests",
            "Client requests by kind (write, read, refused before running) and outcome (ok or the error code)",
            requests.clone(),
        );
        // 100 µs to about 13 s.
        let latency =
            Family::<Kind, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1e-4, 2.0, 18)));
        registry.register("request_seconds", "Time from a request's last line to its answer", latency.clone());
        let persist = Histogram::new(exponential_buckets(2e-5, 2.0, 16));
        registry.register(
            "persist_seconds",
            "Time to write one batch of Raft state (term, vote, log) and sync it to disk",
            persist.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions", "Open client sessions", sessions.clone());
        let role = Family::<Role, Gauge>::default();
        registry.register("role", "1 for this node's current Raft role", role.clone());
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let term = gauge(&mut registry, "term", "Current Raft term");
        let commit = gauge(&mut registry, "commit_index", "Highest log index known committed");
        let applied = gauge(&mut registry, "applied_index", "Highest log index applied to the state machine");
        let snapshot = gauge(&mut registry, "snapshot_index", "Log index the log was compacted up to");
        let log_entries = gauge(&mut registry, "log_entries", "Entries in the log after the snapshot point");
        let peers = Family::<Peer, Gauge>::default();
        registry.register("peer_connected", "1 while a connection to the peer is open", peers.clone());
        Metrics {
            registry,
            requests,
            latency,
            persist,
            sessions,
            role,
            term,
            commit,
            applied,
            snapshot,
            log_entries,
            peers,
        }
    }

    /// A request of `kind` answered with `outcome` (`ok` or an error code).
    pub fn request(&self, kind: &'static str, outcome: &'static str, started: Instant) {
        self.requests.get_or_create(&Outcome { kind, outcome }).inc();
        self.latency.get_or_create(&Kind { kind }).observe(started.elapsed().as_secs_f64());
    }

    /// One batch of Raft state written and synced.
    pub fn persisted(&self, took: Duration) {
        self.persist.observe(took.as_secs_f64());
    }

    /// A session opened; it counts until the guard is dropped (a panicking session too).
    pub fn open_session(&self) -> SessionGuard {
        self.sessions.inc();
        SessionGuard(self.sessions.clone())
    }

    /// The text a scrape returns, after asking the core for its state.
    async fn scrape(&self, core: &std::sync::mpsc::SyncSender<Event>, peers: &[(u64, bool)]) -> String {
        let (tx, rx) = oneshot::channel();
        if core.try_send(Event::Client(Request::Status(tx))).is_ok() {
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), rx).await {
                for role in ROLES.iter().copied().chain([status.role.as_str()]) {
                    let value = i64::from(role == status.role);
                    self.role.get_or_create(&Role { role: role.to_string() }).set(value);
                }
                let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                self.term.set(as_i64(status.term));
                self.commit.set(as_i64(status.commit_index));
                self.applied.set(as_i64(status.applied_index));
                self.snapshot.set(as_i64(status.snapshot_index));
                self.log_entries.set(as_i64((status.last_index + 1).saturating_sub(status.first_index)));
            }
        }
        // Only the current peers: a removed one's gauge goes away.
        self.peers.clear();
        for &(peer, connected) in peers {
            self.peers.get_or_create(&Peer { peer: peer.to_string() }).set(i64::from(connected));
        }
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Counts one open session while it lives.
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a scrape needs besides the metrics: the core, and who the peers are and whether
/// each is connected.
pub struct Scrapes {
    pub metrics: Arc<Metrics>,
    pub core: std::sync::mpsc::SyncSender<Event>,
    pub peers: Box<dyn Fn() -> Vec<(u64, bool)> + Send + Sync>,
}

/// Serves `GET /metrics` forever.
pub async fn serve(listener: TcpListener, scrapes: Arc<Scrapes>) {
    let slots = Arc::new(Semaphore::new(8));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("accepting a metrics scrape failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &scrapes)).await;
            drop(slot);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, scrapes: &Scrapes) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > 8192 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => {
                return respond(&mut stream, "400 Bad Request", "send GET /metrics HTTP/1.1\n").await;
            }
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    match (words.next(), words.next()) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let body = scrapes.metrics.scrape(&scrapes.core, &(scrapes.peers)()).await;
            respond(&mut stream, "200 OK", &body).await
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "only /metrics is served here\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "only GET /metrics is served here\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let kind = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
