//! Starting one node: open its databases, restore raft-core, listen for peers and
//! clients, run the Raft core until a signal asks it to stop.

use std::sync::mpsc::sync_channel;
use std::time::Duration;

use raft_core::{Node, Restored};
use sqlite_sm::{RaftStore, StateMachine};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{error, info, Instrument};
use transport::{Transport, TransportConfig, DEFAULT_MAX_FRAME};

use crate::config::Config;
use crate::core::{Core, Event};
use crate::session::{self, SessionConfig};

/// Bytes of entries per append message. JSON spells bytes as numbers, about 3.6 times
/// larger, which keeps frames well under the transport's 16 MiB limit.
const MAX_APPEND_BYTES: usize = 1 << 20;

/// Runs node `index` of `config` until SIGINT or SIGTERM. Errors are one sentence.
pub fn run(config: &Config, index: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let span = tracing::info_span!("node", id = index);
    runtime.block_on(serve(config, index).instrument(span))
}

async fn serve(config: &Config, index: usize) -> Result<(), String> {
    let id = index as u64;
    let client_addr = config.client_addr(index)?;
    let rpc_addr = config.rpc_addr(index)?;
    let peers = (0..config.nodes.len())
        .filter(|&i| i != index)
        .map(|i| Ok((i as u64, config.rpc_addr(i)?)))
        .collect::<Result<_, String>>()?;

    // Durable state first: a node that cannot read its disk must not join the cluster.
    let dir = &config.driver.data_dir;
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    }
    let store = RaftStore::open(&config.meta_path(index), &config.cluster.name, id)?;
    let (hard_state, entries) = store.load()?;
    let sm = StateMachine::open(&config.sm_path(index))?;
    let raft_config = raft_core::Config {
        id,
        voters: (0..config.nodes.len() as u64).collect(),
        election_ticks: config.raft.election_ticks,
        heartbeat_ticks: config.raft.heartbeat_ticks,
        pre_vote: config.raft.pre_vote,
        check_quorum: config.raft.check_quorum,
        max_append_bytes: MAX_APPEND_BYTES,
        seed: rand::random(),
    };
    let restored = Restored { hard_state, entries, applied: sm.applied_index() };
    let raft = Node::new(raft_config, restored).map_err(|e| format!("cannot restore the Raft state: {e}"))?;

    let clients =
        TcpListener::bind(client_addr).await.map_err(|e| format!("cannot listen for clients on {client_addr}: {e}"))?;
    let (peer_tx, mut peer_rx) = mpsc::channel(65_536);
    let transport_config = TransportConfig {
        cluster: config.cluster.name.clone(),
        me: id,
        listen: rpc_addr,
        peers,
        queue_capacity: 4096,
        max_frame: DEFAULT_MAX_FRAME,
    };
    let transport = Transport::start(transport_config, peer_tx)
        .await
        .map_err(|e| format!("cannot listen for peers on {rpc_addr}: {e}"))?;

    let (core_tx, core_rx) = sync_channel(65_536);
    let bridge = core_tx.clone();
    tokio::spawn(async move {
        while let Some((from, msg)) = peer_rx.recv().await {
            // A full core queue drops peer messages like a lossy network would.
            let _ = bridge.try_send(Event::Peer(from, msg));
        }
    });
    let core =
        Core::new(raft, store, sm, transport, config.tick(), config.raft.election_ticks, config.client_timeout());
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
        timeout: config.client_timeout(),
        core: core_tx.clone(),
    };
    tokio::spawn(session::serve(clients, session_config).in_current_span());
    info!("serving clients on {client_addr} (nc {} {}), peers on {rpc_addr}", client_addr.ip(), client_addr.port());

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
