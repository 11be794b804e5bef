//! Starting one node: open its databases, restore raft-core, listen for peers and
//! clients, run the Raft core until a signal asks it to stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use raft_core::{Node, Restored};
use sqlite_sm::{RaftStore, StateMachine};
use tokio::net::TcpListener;
use tracing::{error, info, warn, Instrument};
use transport::{Secret, Transport, TransportConfig};

use crate::applier;
use crate::config::{Config, SECRET_ENV};
use crate::core::{Core, CoreConfig, Event};
use crate::members::Address;
use crate::metrics::{self, Metrics, Scrapes};
use crate::protocol::PeerMessage;
use crate::quiet::Quiet;
use crate::readers::ReadPool;
use crate::session::{self, SessionConfig};

/// Bytes of entries per append message (see `raft_core::Entry::size`): a few entries
/// of any size, or many small ones, well under the frame limit.
const MAX_APPEND_BYTES: usize = 1 << 20;

/// Descriptors kept free for peers, database files, readers and the log, whatever the
/// clients do.
const RESERVED_DESCRIPTORS: u64 = 256;

/// A node outside `lightraft.toml`: where it listens, and the member it asks to add it
/// (see [`crate::join`]).
#[derive(Clone, Debug)]
pub struct Join {
    /// A member's client address.
    pub member: String,
    /// Where this node listens for peers.
    pub rpc: SocketAddr,
    /// Where this node listens for clients.
    pub client: SocketAddr,
}

/// Runs node `index` of `config` (or, with `join`, a node joining the cluster) until
/// SIGINT or SIGTERM. Errors are one sentence.
pub fn run(config: &Config, index: usize, join: Option<Join>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let span = tracing::info_span!("node", id = index);
    runtime.block_on(serve(config, index, join).instrument(span))
}

/// The cluster secret, or none on loopback (with a warning); refuses to run a peer port
/// reachable from other machines without one.
fn cluster_secret(config: &Config, index: usize, rpc: SocketAddr) -> Result<Secret, String> {
    match config.secret()? {
        Some((secret, source)) => {
            info!("peers authenticate with the cluster secret from {source}");
            Ok(secret)
        }
        None if rpc.ip().is_loopback() => {
            warn!(
                "no cluster secret is set: any process on this machine that knows the cluster name can act as a peer; \
                 set [cluster] secretFile (or {SECRET_ENV}) before exposing nodes beyond loopback"
            );
            Ok(Secret::default())
        }
        None => Err(format!(
            "node {index}'s peer port {rpc} is reachable beyond loopback, but no cluster secret is set: \
             put the same secret (16 bytes or more) on every node with [cluster] secretFile = \"path\", \
             [cluster] secret, or the {SECRET_ENV} environment variable"
        )),
    }
}

/// Raises the soft limit on open files to the hard limit, and returns how many clients
/// fit while `RESERVED_DESCRIPTORS` stay free for everything else.
fn client_capacity(wanted: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    let available = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let room = available.saturating_sub(RESERVED_DESCRIPTORS) as usize;
    if room < wanted {
        warn!("only {available} file descriptors are allowed; serving at most {room} clients instead of {wanted}");
    }
    room.clamp(1, wanted)
}

async fn serve(config: &Config, index: usize, join: Option<Join>) -> Result<(), String> {
    let id = index as u64;
    let (client_addr, rpc_addr) = match &join {
        Some(join) => (join.client, join.rpc),
        None => (config.client_addr(index)?, config.rpc_addr(index)?),
    };
    let secret = cluster_secret(config, index, rpc_addr)?;
    let max_clients = client_capacity(config.client.max_clients);
    // The nodes of lightraft.toml: the initial configuration, whose entries carry no
    // addresses. Later members' addresses travel in the configuration itself.
    let known: BTreeMap<u64, Address> = (0..config.nodes.len())
        .map(|i| Ok((i as u64, Address { rpc: config.rpc_addr(i)?, client: config.client_addr(i)? })))
        .collect::<Result<_, String>>()?;
    let peers = known.iter().filter(|(&i, _)| i != id).map(|(&i, a)| (i, a.rpc)).collect();

    // Durable state first: a node that cannot read its disk must not join the cluster.
    let dir = &config.driver.data_dir;
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    }
    let mut store = RaftStore::open(&config.meta_path(index), &config.cluster.name, id)?;
    sqlite_sm::snapshot::check_pages_readable()?;
    let sm = StateMachine::open(&config.sm_path(index))?;
    let applied = sm.applied_index();
    // A snapshot install the node crashed in the middle of is finished or forgotten here.
    if let Some(pending) = store.load()?.pending_install {
        if pending.index == applied {
            info!("finishing the install of the snapshot at index {applied}, interrupted by a crash");
        } else {
            info!(
                "forgetting the install of the snapshot at index {}, interrupted before the state changed",
                pending.index
            );
        }
    }
    let stored = store.resume_install(applied)?;
    // Nothing durable yet: a brand-new node (or one whose disk was lost).
    let fresh = stored.hard_state == raft_core::HardState::default()
        && stored.entries.is_empty()
        && stored.snapshot.index == 0
        && applied == 0;
    info!(
        "restored: term {}, log {}..={} after snapshot point {}@{}, state applied up to {applied}",
        stored.hard_state.term,
        stored.snapshot.index + 1,
        stored.snapshot.index + stored.entries.len() as u64,
        stored.snapshot.index,
        stored.snapshot.term
    );
    let raft_config = raft_core::Config {
        id,
        voters: (0..config.nodes.len() as u64).collect(),
        election_ticks: config.raft.election_ticks,
        heartbeat_ticks: config.raft.heartbeat_ticks,
        pre_vote: config.raft.pre_vote,
        check_quorum: config.raft.check_quorum,
        max_append_bytes: MAX_APPEND_BYTES,
        promote_lag: config.raft.promote_lag,
        seed: rand::random(),
    };
    let restored =
        Restored { hard_state: stored.hard_state, snapshot: stored.snapshot, entries: stored.entries, applied };
    let raft = Node::new(raft_config, restored).map_err(|e| format!("cannot restore the Raft state: {e}"))?;
    let (core_tx, core_rx) = sync_channel(65_536);
    let quiet = Arc::new(Quiet::new(config.tick() * config.raft.election_ticks as u32));
    let readers = ReadPool::start(
        &config.sm_path(index),
        core_tx.clone(),
        config.client.readers,
        config.line_limits(),
        config.client_timeout(),
        config.answer_budget(),
    )?;

    let clients =
        TcpListener::bind(client_addr).await.map_err(|e| format!("cannot listen for clients on {client_addr}: {e}"))?;
    let transport_config = TransportConfig {
        cluster: config.cluster.name.clone(),
        secret,
        me: id,
        listen: rpc_addr,
        peers,
        queue_capacity: 4096,
        max_frame: config.max_frame(),
        // A peer silent for a whole election timeout is lost to Raft too: redial it.
        peer_timeout: config.tick() * config.raft.election_ticks as u32,
    };
    let answers = Arc::new(OnceLock::new());
    let inbox = PeerInbox { core: core_tx.clone(), quiet: quiet.clone(), answers: answers.clone() };
    let transport = Transport::start(transport_config, inbox)
        .await
        .map_err(|e| format!("cannot listen for peers on {rpc_addr}: {e}"))?;
    let _ = answers.set(transport.clone());

    let metrics = Arc::new(Metrics::new());
    // A node that joined is not in the config, so it has no metrics port.
    let metrics_addr = if join.is_none() { config.metrics_addr(index)? } else { None };
    if let Some(addr) = metrics_addr {
        let listener = TcpListener::bind(addr).await.map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let peers_of = transport.clone();
        let scrapes = Scrapes {
            metrics: metrics.clone(),
            core: core_tx.clone(),
            peers: Box::new(move || peers_of.peers().into_iter().map(|p| (p, peers_of.is_connected(p))).collect()),
        };
        tokio::spawn(metrics::serve(listener, Arc::new(scrapes)).in_current_span());
        info!("serving metrics on http://{addr}/metrics");
    }

    let applier = applier::start(sm, core_tx.clone(), readers.connections(), quiet.clone())?;
    let core_config = CoreConfig {
        tick: config.tick(),
        election: config.tick() * config.raft.election_ticks as u32,
        timeout: config.client_timeout(),
        limits: config.line_limits(),
        compaction: config.compaction(),
        state_path: config.sm_path(index),
        readers: readers.connections(),
        max_snapshot_bytes: config.max_snapshot_bytes(),
        known,
        metrics: metrics.clone(),
        quiet,
    };
    let core =
        Core::new(raft, store, applied, transport, applier, core_tx.clone(), core_config).map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("raft-core".into())
        .spawn(move || {
            let _enter = span.enter();
            let _ = done_tx.send(core.run(core_rx));
        })
        .map_err(|e| format!("cannot start the Raft thread: {e}"))?;
    let session_config = SessionConfig {
        node: id,
        max_line: config.client.max_line_bytes,
        max_clients,
        idle_timeout: Duration::from_millis(config.client.idle_timeout_ms),
        write_timeout: Duration::from_millis(config.client.write_timeout_ms),
        max_result_bytes: config.limits.max_result_bytes,
        core: core_tx.clone(),
        readers,
        metrics,
    };
    tokio::spawn(session::serve(clients, session_config).in_current_span());
    info!("serving clients on {client_addr} (nc {} {}), peers on {rpc_addr}", client_addr.ip(), client_addr.port());
    if let Some(join) = join {
        let address = Address { rpc: rpc_addr, client: client_addr };
        tokio::spawn(crate::join::run(join.member, id, address, fresh, core_tx.clone()).in_current_span());
    }

    let mut done_rx = done_rx;
    let result = tokio::select! {
        signal = shutdown_signal() => {
            info!("{signal}: shutting down");
            let _ = core_tx.try_send(Event::Shutdown);
            match tokio::time::timeout(Duration::from_secs(10), &mut done_rx).await {
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(_) => Ok(()),
                Err(_) => Err("the Raft core did not stop within 10 seconds".to_string()),
            }
        }
        finished = &mut done_rx => match finished {
            Ok(Err(e)) => Err(e.to_string()),
            _ => Err("the Raft core stopped unexpectedly".to_string()),
        },
    };
    if let Err(e) = &result {
        error!("{e}");
    }
    result
}

/// Peer messages go straight from the connection's task to the Raft core's queue, or
/// wait for its next turn if raft-core's hint allows; a follower's task answers its
/// leader's heartbeats that bring nothing new itself ([`crate::quiet`]).
struct PeerInbox {
    core: SyncSender<Event>,
    quiet: Arc<Quiet>,
    /// Where a follower's answers from the hint go (set once the transport runs).
    answers: Arc<OnceLock<Transport<PeerMessage>>>,
}

impl transport::Inbox<PeerMessage> for PeerInbox {
    fn deliver(&self, from: u64, msg: PeerMessage) -> transport::Delivery {
        let msg = match msg {
            // Only a message that names its real sender may be answered for the Raft thread.
            PeerMessage::Raft(msg) if msg.from == from => match self.quiet.answer(from, msg) {
                Ok(answer) => {
                    if let Some(transport) = self.answers.get() {
                        let _ = transport.send(answer.to, PeerMessage::Raft(answer));
                    }
                    return transport::Delivery::Taken;
                }
                Err(msg) => match self.quiet.offer(from, msg) {
                    Ok(()) => return transport::Delivery::Taken,
                    Err(msg) => PeerMessage::Raft(msg),
                },
            },
            other => other,
        };
        match self.core.try_send(Event::Peer(from, msg)) {
            Ok(()) => transport::Delivery::Taken,
            // A full core queue drops peer messages like a lossy network would.
            Err(TrySendError::Full(_)) => transport::Delivery::Dropped,
            Err(TrySendError::Disconnected(_)) => transport::Delivery::Closed,
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM and names it.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "interrupted",
                _ = term.recv() => "terminated",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}
