//! The Raft core: one thread that owns the raft-core [`Node`] and its durable store,
//! carries out every [`Ready`] in the order raft-core demands, and keeps every pending
//! client request until it can be answered.
//!
//! Nothing slow runs here. Committed entries go to the apply thread ([`crate::applier`]),
//! reads run on reader threads ([`crate::readers`]); this thread only waits for the disk
//! (one fsync per batch) and the network. So a long write or a heavy read never delays a
//! heartbeat, and a healthy leader never loses its leadership to one.
//!
//! Everything else talks to it through one channel of [`Event`]s. The loop takes every
//! event already waiting before it asks for a ready, so writes that arrive together share
//! one log append, one fsync and one append message.
//!
//! Client requests never get lost in here: each one is answered exactly once, either
//! with its outcome or, when its deadline passes, with `unavailable` (never proposed)
//! or `outcome_unknown` (proposed, fate unknown). (The outcome of a write proposed here
//! comes from the apply thread, which gets the write's answer channel with its entry.)
//! Nothing waits for its deadline once its fate is known: a write whose proposal was
//! lost, or forwarded to a leader that then lost its term without committing it
//! ([`crate::forwarding`]), is sent again at once, to whoever leads now.

mod admin;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft_core::{
    Index, Message, MessageKind, Node, NodeId, ProposalOutcome, ProposeError, ReadId, Ready, Role, SnapshotMeta, Term,
};
use sqlite_sm::{failpoint, Limits, LineResult, Origin, RaftStore, StorageError, WriteCommand};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use transport::Transport;

use crate::applier::{Applied, Job};
use crate::forwarding::{Forwarded, Taken};
use crate::members::Address;
use crate::protocol::{AdminResult, ErrorCode, PeerMessage, Reply, Request, StatusReport, Then};
use crate::snapshots::{self, Ack, Outgoing, Received, Receiving, Sent};
use crate::trace::{self, Tracers};
use admin::{AdminWaiter, Handover, Pending};

/// How long a follower holds committed entries before applying them, at most. A local
/// read on a follower may see the state this much later than otherwise; a linearizable
/// one never waits for it (a read that waits releases them at once).
const HOLD_APPLY: Duration = Duration::from_millis(5);

/// How many committed entries a follower holds at most: one apply group.
const HOLD_ENTRIES: usize = 256;

/// An input to the core.
#[derive(Debug)]
pub enum Event {
    /// A message from a peer (the transport authenticated the sender).
    Peer(NodeId, PeerMessage),
    /// A client request.
    Client(Request),
    /// The apply thread's progress.
    Applied(Applied),
    /// A snapshot transfer to a follower ended.
    SnapshotSent(Sent),
    /// A snapshot transfer asks where its snapshot ends: the term of the index it holds, and
    /// the configuration there (§4), from the Raft log.
    SnapshotTerm {
        /// The follower it is for.
        to: NodeId,
        /// The transfer.
        id: u64,
        /// The applied index of the state it reads.
        index: Index,
        /// The snapshot point, if the log still knows that index.
        reply: Sender<Option<SnapshotMeta>>,
    },
    /// A received snapshot was checked.
    SnapshotVerified {
        /// The leader that sent it.
        from: NodeId,
        /// The transfer.
        id: u64,
        /// Whether it is sound and durable.
        result: Result<(), String>,
    },
    /// Stop: hand over leadership if we have it, answer everyone, return.
    Shutdown,
    /// Members' addresses a join learned from the cluster (see `join.rs`).
    Learned(BTreeMap<NodeId, Address>),
}

/// Who is waiting for a write's outcome.
enum Waiter {
    /// A client session on this node.
    Client(oneshot::Sender<Reply>),
    /// Another node that forwarded its client's write to us.
    Peer { node: NodeId, id: u64 },
}

/// A client write and the time its client stops waiting for a leader or an outcome.
struct Write {
    sql: String,
    waiter: Waiter,
    deadline: Instant,
}

/// A linearizable read waiting for this node to be fresh enough.
struct Barrier {
    reply: Then,
    deadline: Instant,
}

/// The core's timing and the limits it writes into every entry.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// One Raft tick.
    pub tick: Duration,
    /// The minimum election timeout.
    pub election: Duration,
    /// How long a request may wait for a leader and an outcome.
    pub timeout: Duration,
    /// What one line may consume, fixed in each entry this node proposes.
    pub limits: Limits,
    /// When to compact the log (§7).
    pub compaction: Compaction,
    /// The state database, which snapshots read; received snapshots go beside it.
    pub state_path: PathBuf,
    /// The node's read connections, which a snapshot being read holds open.
    pub readers: std::sync::Arc<crate::readers::Connections>,
    /// The largest snapshot this node accepts.
    pub max_snapshot_bytes: u64,
    /// Where the nodes of `lightraft.toml` are: the initial members, whose configuration
    /// carries no addresses.
    pub known: BTreeMap<NodeId, Address>,
    /// What operators watch (`metricsBindPort`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Answers from peers that waited for our next turn instead of waking us.
    pub quiet: std::sync::Arc<crate::quiet::Quiet>,
}

/// When the log is compacted (§7): once it holds `entries` entries beyond its snapshot
/// point (plus `keep`), or `bytes` bytes of entries were applied since the last
/// compaction, the state database is made durable and the log cut there, keeping the last
/// `keep` entries for followers slightly behind.
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    /// Entries beyond the snapshot point that trigger a compaction (0: never).
    pub entries: u64,
    /// Bytes of entries applied since the last compaction that trigger one (0: never).
    pub bytes: u64,
    /// Entries kept after a compaction.
    pub keep: u64,
}

/// Request ids that never repeat, even across restarts: the durable count of this node's
/// starts in the high bits, a counter in the low bits. A late answer to a request sent
/// before a restart can never be taken for the answer to a new one.
struct Ids {
    incarnation: u64,
    next: u64,
}

/// The Raft core's state.
pub struct Core {
    id: NodeId,
    raft: Node,
    store: RaftStore,
    transport: Transport<PeerMessage>,
    applier: Sender<Job>,
    /// Our own queue, for the threads we start (snapshot transfers).
    events: SyncSender<Event>,
    config: CoreConfig,
    /// Writes proposed here, by (term, index), waiting for their fate.
    proposed: HashMap<(Term, Index), Write>,
    /// Writes committed, waiting for the apply thread's result: forwarded ones, and this
    /// node's own until their entries are handed to the apply thread, which answers them.
    committed: HashMap<Index, Write>,
    /// Writes forwarded to a leader, waiting for its answer or for our log to tell.
    forwarded: Forwarded<Write>,
    /// As leader: the forwarded writes taken in this term.
    taken: Taken,
    /// Writes waiting for a leader.
    parked: Vec<Write>,
    /// Reads waiting for their read index.
    reads: HashMap<ReadId, Barrier>,
    /// Reads whose index is known, waiting for the apply thread to reach it.
    confirmed: Vec<(Index, Barrier)>,
    /// Reads waiting for a leader.
    parked_reads: Vec<Barrier>,
    /// The last index the apply thread reported applied.
    applied: Index,
    /// Committed entries not yet handed to the apply thread, and since when. A leader
    /// hands them over at once; nothing waits for a follower's apply (the leader answers
    /// writes), so it applies in larger groups: fewer transactions and wakeups per entry.
    held: Vec<raft_core::Entry>,
    held_since: Option<Instant>,
    ids: Ids,
    /// A storage failure met outside `process_ready`; the loop stops on it.
    failed: Option<StorageError>,
    /// When shutdown began.
    stopping: Option<Instant>,
    /// Log compaction: a checkpoint was asked of the apply thread and not yet answered.
    checkpoint_pending: bool,
    /// When it was asked for.
    checkpoint_started: Instant,
    /// Log compaction: no checkpoint is asked for before this time (after one that could
    /// not compact anything).
    compact_after: Instant,
    /// Snapshot transfers: per follower, the failures in a row and when to try again.
    snapshot_backoff: HashMap<NodeId, (u32, Instant)>,
    /// Events that arrived while an install held the loop, handled next.
    deferred: Vec<Event>,
    /// Followers whose snapshot has started but not yet asked its term: the log is not
    /// compacted meanwhile, so it still knows the term of the index the snapshot ends at.
    copying: std::collections::HashSet<NodeId>,
    /// Followers catching up from a snapshot: the index it ends at, and until when (set
    /// once it was delivered). The log keeps the entries after it meanwhile, or a busy
    /// leader would have compacted them away by the time the snapshot is installed, and
    /// send another, forever. A follower that then fails does not hold the log for long.
    pinned: HashMap<NodeId, (Index, Option<Instant>)>,
    /// Bytes of entries handed to the apply thread since the last compaction.
    bytes_since_compaction: u64,
    /// Snapshot transfers to followers: the transfer id and where its acks go.
    outgoing: HashMap<NodeId, (u64, Sender<Ack>)>,
    /// The snapshot transfer being received.
    receiving: Receiving,
    /// Received snapshots, verified and durable, that Raft may ask to install, by their
    /// (index, term), each in a file of its own.
    installable: std::collections::BTreeMap<(Index, Term), PathBuf>,
    /// Every node whose address we know outside the log (see `members::directory`).
    known: BTreeMap<NodeId, Address>,
    /// What the transport's peers were last computed from: the latest configuration's
    /// index, and the commit index if that was lower (a change pending), else the same.
    membership_seen: Option<(Index, Index)>,
    /// As leader: membership changes proposed, by (term, index), waiting to commit.
    changes: HashMap<(Term, Index), Pending>,
    /// As leader: a leadership transfer asked for by an operator.
    handover: Option<Handover>,
    /// Operators' commands passed to the leader: id -> (leader, answer, deadline).
    admin_forwarded: HashMap<u64, (NodeId, oneshot::Sender<AdminResult>, Instant)>,
    /// When each peer was last heard from, for `.cluster`.
    last_heard: HashMap<NodeId, Instant>,
    /// Sessions watching this node's Raft events (`.trace on`).
    tracers: Tracers,
}

impl Core {
    /// Assembles the core around a node restored from `store`, whose state machine (on
    /// the apply thread) has applied up to `applied`.
    pub fn new(
        raft: Node,
        mut store: RaftStore,
        applied: Index,
        transport: Transport<PeerMessage>,
        applier: Sender<Job>,
        events: SyncSender<Event>,
        config: CoreConfig,
    ) -> Result<Core, StorageError> {
        let incarnation = store.next_incarnation()?;
        let mut incoming = config.state_path.as_os_str().to_owned();
        incoming.push(".incoming");
        let receiving = Receiving::new(PathBuf::from(incoming), config.max_snapshot_bytes);
        // Transfer files left by an earlier run are incomplete or stale.
        remove_transfer_files(&config.state_path);
        Ok(Core {
            events,
            checkpoint_pending: false,
            checkpoint_started: Instant::now(),
            compact_after: Instant::now(),
            snapshot_backoff: HashMap::new(),
            deferred: Vec::new(),
            copying: std::collections::HashSet::new(),
            pinned: HashMap::new(),
            bytes_since_compaction: 0,
            outgoing: HashMap::new(),
            receiving,
            installable: std::collections::BTreeMap::new(),
            known: config.known.clone(),
            membership_seen: None,
            changes: HashMap::new(),
            handover: None,
            admin_forwarded: HashMap::new(),
            last_heard: HashMap::new(),
            tracers: Tracers::default(),
            id: raft.id(),
            forwarded: Forwarded::new(raft.id()),
            taken: Taken::default(),
            raft,
            store,
            transport,
            applier,
            config,
            proposed: HashMap::new(),
            committed: HashMap::new(),
            parked: Vec::new(),
            reads: HashMap::new(),
            confirmed: Vec::new(),
            parked_reads: Vec::new(),
            applied,
            held: Vec::new(),
            held_since: None,
            ids: Ids { incarnation, next: 0 },
            failed: None,
            stopping: None,
        })
    }

    /// Runs until shutdown. Returns an error only if the disk fails: continuing would
    /// risk acknowledging what is not durable, so the node stops (fail-stop).
    pub fn run(mut self, events: Receiver<Event>) -> Result<(), StorageError> {
        let result = self.run_loop(&events);
        if result.is_err() {
            self.answer_everyone_on_shutdown();
        }
        result
    }

    fn run_loop(&mut self, events: &Receiver<Event>) -> Result<(), StorageError> {
        // The first tick comes after a random part of a tick. Nodes started together would
        // otherwise tick in step, and two followers drawing the same election timeout
        // (1 in 10 with the defaults) would then campaign at the same instant after the
        // leader dies, and split the vote: a whole extra election timeout.
        let mut next_tick = Instant::now() + self.config.tick.mul_f64(rand::random::<f64>());
        loop {
            // Events that arrived while a snapshot install held the loop: handle them, and
            // their readies, at once.
            let deferred = std::mem::take(&mut self.deferred);
            let wake = self.held_since.map_or(next_tick, |since| next_tick.min(since + HOLD_APPLY));
            let wait =
                if deferred.is_empty() { wake.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
            for event in deferred {
                self.handle(event);
            }
            match events.recv_timeout(wait) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Everyone who could send us work is gone: finish up, without spinning.
                    self.begin_shutdown();
                    std::thread::sleep(wait);
                }
            }
            // Take everything already queued before persisting: this is the batching.
            for _ in 0..4096 {
                match events.try_recv() {
                    Ok(event) => self.handle(event),
                    Err(_) => break,
                }
            }
            // What was kept without waking us (answers that change nothing urgent, and
            // heartbeats answered already): before the tick, which must see them (see
            // `raft_core::wake_hint`).
            for kept in self.config.quiet.take() {
                if kept.answered {
                    self.last_heard.insert(kept.from, Instant::now());
                    self.tracers.emit(|| format!("recv {} (answered at once)", trace::message(&kept.msg)));
                    self.raft.step_answered(kept.msg);
                } else {
                    self.handle(Event::Peer(kept.from, PeerMessage::Raft(kept.msg)));
                }
            }
            let quietly = self.config.quiet.applied();
            if quietly > self.applied {
                self.reached(quietly);
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raft.tick();
                next_tick = (next_tick + self.config.tick).max(now);
                self.on_tick(now);
            }
            self.process_ready(events)?;
            self.release_held(false)?;
            if let Some(since) = self.stopping {
                if self.raft.role() != Role::Leader || since.elapsed() > 2 * self.config.election {
                    self.release_held(true)?;
                    self.answer_everyone_on_shutdown();
                    return Ok(());
                }
            }
            // Last, before we sleep: what changed this turn may be waiting for the apply thread.
            self.want_applied();
        }
    }

    fn handle(&mut self, event: Event) {
        if let Event::Peer(from, _) = &event {
            self.last_heard.insert(*from, Instant::now());
        }
        match event {
            Event::Peer(from, PeerMessage::Raft(msg)) => {
                // The transport proved who `from` is; the message must agree.
                if msg.from == from {
                    self.tracers.emit(|| format!("recv {}", trace::message(&msg)));
                    self.raft.step(msg);
                } else {
                    warn!("node {from} sent a Raft message claiming to be from node {}; dropped", msg.from);
                }
            }
            Event::Peer(from, PeerMessage::Forward { id, term, settled_below, sql }) => {
                self.forwarded_write(from, id, term, settled_below, sql)
            }
            Event::Peer(from, PeerMessage::ForwardReply { id, reply }) => {
                if let Some(write) = self.take_forwarded(from, id) {
                    self.answer(write.waiter, reply);
                }
            }
            Event::Peer(from, PeerMessage::ForwardRefused { id }) => match self.forwarded.refused(from, id) {
                // Not proposed anywhere: safe to try again once we know a leader.
                Ok(Some(write)) => self.parked.push(write),
                Ok(None) => debug!("node {from} refused request {id}, which a refusal does not settle"),
                Err(target) => warn!("node {from} refused request {id}, which was sent to node {target}; ignored"),
            },
            Event::Client(Request::Status(reply)) => {
                let _ = reply.send(self.status());
            }
            Event::Client(Request::Trace(tx)) => {
                // The new watcher's first line says where the node stands (or why it
                // may not watch); the others are not told.
                let s = self.raft.status();
                let leader = s.leader.map_or("none".to_string(), |l| format!("n{l}"));
                let first = format!(
                    "n{} is {} term={} leader={leader} last={} commit={} applied={}",
                    s.id, s.role, s.term, s.last_index, s.commit_index, self.applied
                );
                self.tracers.add(tx, first);
            }
            Event::Client(Request::Write { sql, reply }) => {
                if self.stopping.is_some() {
                    let _ = reply.send(Reply::error(ErrorCode::Unavailable, "the node is shutting down"));
                    return;
                }
                let deadline = Instant::now() + self.config.timeout;
                self.submit_write(Write { sql, waiter: Waiter::Client(reply), deadline });
            }
            Event::Client(Request::ReadBarrier(reply)) => {
                if self.stopping.is_some() {
                    reply.passed(Err(Reply::error(ErrorCode::Unavailable, "the node is shutting down")));
                    return;
                }
                let deadline = Instant::now() + self.config.timeout;
                self.submit_read(Barrier { reply, deadline });
            }
            Event::Applied(Applied::Up { index, results }) => self.applied(index, results),
            Event::Applied(Applied::Durable(index)) => self.durable(index),
            Event::Applied(Applied::Failed(e)) => self.failed = Some(StorageError(e)),
            Event::Peer(from, PeerMessage::SnapshotChunk(chunk)) => self.snapshot_chunk(from, chunk),
            Event::Peer(from, PeerMessage::SnapshotAck { id, received, verified, error }) => {
                match self.outgoing.get(&from) {
                    Some((current, acks)) if *current == id => {
                        let _ = acks.send(Ack { received, verified, error });
                    }
                    _ => debug!("node {from} acknowledged snapshot transfer {id}, which is not under way"),
                }
            }
            Event::SnapshotSent(sent) => {
                if self.outgoing.get(&sent.to).is_some_and(|(id, _)| *id == sent.id) {
                    self.outgoing.remove(&sent.to);
                    self.copying.remove(&sent.to);
                    if sent.delivered {
                        self.snapshot_backoff.remove(&sent.to);
                        // Long enough for the follower to install it (about as long as
                        // checking it took) and answer.
                        let install = Duration::from_secs(sent.bytes / snapshots::CHECK_BYTES_PER_SEC);
                        let until = Instant::now() + 2 * self.config.election + install;
                        if let Some(pin) = self.pinned.get_mut(&sent.to) {
                            pin.1 = Some(until);
                        }
                    } else {
                        self.pinned.remove(&sent.to);
                        // Back off: 1 s, 2 s, 4 s ... up to 32 s between full copies.
                        let failures = self.snapshot_backoff.get(&sent.to).map_or(0, |b| b.0) + 1;
                        let wait = Duration::from_secs(1 << failures.min(6).saturating_sub(1));
                        self.snapshot_backoff.insert(sent.to, (failures, Instant::now() + wait));
                    }
                    self.raft.report_snapshot(sent.to, sent.index, sent.delivered);
                }
            }
            Event::SnapshotTerm { to, id, index, reply } => {
                if self.outgoing.get(&to).is_none_or(|(current, _)| *current != id) {
                    // A transfer already replaced by a newer one: let it end.
                    let _ = reply.send(None);
                    return;
                }
                self.copying.remove(&to);
                self.pinned.insert(to, (index, None));
                let log = self.raft.log();
                let meta = log.term_at(index).map(|term| SnapshotMeta {
                    index,
                    term,
                    membership: log.membership_at(index).clone(),
                });
                let _ = reply.send(meta);
            }
            Event::SnapshotVerified { from, id, result } => self.snapshot_verified(from, id, result),
            Event::Shutdown => self.begin_shutdown(),
            Event::Client(Request::Admin { command, reply }) => self.admin(command, AdminWaiter::Client(reply)),
            Event::Peer(from, PeerMessage::Admin { id, command }) => {
                self.admin(command, AdminWaiter::Peer { node: from, id })
            }
            Event::Peer(from, PeerMessage::AdminReply { id, result }) => self.admin_answered(from, id, result),
            Event::Learned(addresses) => self.learned(addresses),
        }
    }

    /// Answers to a forwarded write count only from the node it was sent to: any other
    /// peer is confused or lying, and its answer is ignored.
    fn take_forwarded(&mut self, from: NodeId, id: u64) -> Option<Write> {
        match self.forwarded.answered(from, id) {
            Ok(Some(write)) => Some(write),
            Ok(None) => {
                debug!("node {from} answered request {id}, which is no longer waiting");
                None
            }
            Err(target) => {
                warn!("node {from} answered request {id}, which was sent to node {target}; ignored");
                None
            }
        }
    }

    fn status(&self) -> StatusReport {
        let s = self.raft.status();
        StatusReport {
            node: self.id,
            role: s.role.to_string(),
            term: s.term,
            leader: s.leader,
            commit_index: s.commit_index,
            applied_index: self.applied.max(self.config.quiet.applied()),
            snapshot_index: s.snapshot_index,
            first_index: s.snapshot_index + 1,
            last_index: s.last_index,
        }
    }

    /// Asks the apply thread to make the state durable once the log has grown past the
    /// compaction policy; [`Core::durable`] then compacts (§7).
    fn maybe_compact(&mut self) {
        let c = self.config.compaction;
        let beyond = self.applied.saturating_sub(self.raft.log().snapshot().index);
        let due =
            (c.entries > 0 && beyond >= c.entries + c.keep) || (c.bytes > 0 && self.bytes_since_compaction >= c.bytes);
        if due
            && !self.checkpoint_pending
            && Instant::now() >= self.compact_after
            && self.applier.send(Job::Checkpoint).is_ok()
        {
            self.checkpoint_pending = true;
            self.checkpoint_started = Instant::now();
        }
    }

    /// The state database is durable up to `index`: compact the log (see
    /// [`compaction_target`] for how far).
    fn durable(&mut self, index: Index) {
        self.checkpoint_pending = false;
        let before = self.raft.log().snapshot().index;
        let took = self.checkpoint_started.elapsed();
        let target = compaction_target(index, self.config.compaction.keep, &[]);
        if target <= before {
            // Nothing to drop yet (the byte trigger fired within the kept window): wait
            // before asking again rather than checkpoint in a loop.
            self.compact_after = Instant::now() + self.config.election;
            return;
        }
        if !self.copying.is_empty() {
            // A snapshot being read will ask the term of its last index, which may be this one.
            self.compact_after = Instant::now() + self.config.election;
            return;
        }
        // Keep what followers catching up from a snapshot need next, until they have
        // caught up past what we would drop.
        let raft = &self.raft;
        let now = Instant::now();
        let floors: Vec<(NodeId, Index)> = self
            .pinned
            .iter()
            .filter(|(_, (_, until))| until.is_none_or(|until| now < until))
            .filter_map(|(&peer, &(at, _))| raft.match_index(peer).map(|m| (peer, m.max(at))))
            .filter(|&(_, floor)| floor < target)
            .collect();
        self.pinned.retain(|peer, _| floors.iter().any(|(p, _)| p == peer));
        let floors: Vec<Index> = floors.iter().map(|&(_, floor)| floor).collect();
        let target = compaction_target(index, self.config.compaction.keep, &floors);
        if target <= before {
            self.compact_after = Instant::now() + self.config.election;
            return;
        }
        match self.raft.compact(target) {
            Ok(()) => {
                self.bytes_since_compaction = 0;
                info!(
                    "compacted the log up to index {target}: {} entries dropped, {} kept; the state was made durable up to {index} in {} ms",
                    target - before,
                    self.raft.log().last_index() - target,
                    took.as_millis()
                );
            }
            Err(e) => warn!("log compaction refused: {e}"),
        }
    }

    /// A piece of a snapshot from `from` (§7).
    fn snapshot_chunk(&mut self, from: NodeId, chunk: crate::protocol::Chunk) {
        if chunk.term < self.raft.status().term {
            // From a leader of an earlier term: Raft would refuse it anyway, so do not
            // let it replace a transfer under way.
            let error = Some(format!("term {} is behind this node's {}", chunk.term, self.raft.status().term));
            return self.send(from, PeerMessage::SnapshotAck { id: chunk.id, received: 0, verified: false, error });
        }
        let first = chunk.offset == 0;
        let (id, total) = (chunk.id, chunk.total);
        match self.receiving.chunk(from, chunk) {
            Received::Ack(ack) => {
                if first {
                    info!("receiving a snapshot of {total} bytes from node {from}");
                }
                self.send(from, ack);
            }
            Received::Complete { id: done, meta, total, flusher, .. } => {
                debug_assert_eq!(id, done);
                // All arrived: say so now, and the verdict once checked.
                self.send(from, PeerMessage::SnapshotAck { id, received: total, verified: false, error: None });
                let path = self.receiving.path().to_path_buf();
                if let Err(e) = snapshots::verify(path, from, done, meta, flusher, self.events.clone()) {
                    warn!("{e}");
                    self.receiving.finish();
                    self.send(from, PeerMessage::SnapshotAck { id, received: 0, verified: false, error: Some(e) });
                }
            }
        }
    }

    /// A received snapshot was checked: hand it to Raft, or refuse it.
    fn snapshot_verified(&mut self, from: NodeId, id: u64, result: Result<(), String>) {
        let Some((term, meta, total)) = self.receiving.current(from, id) else { return };
        self.receiving.finish();
        match result {
            Ok(()) => {
                info!("received a snapshot of {total} bytes at index {} from node {from}", meta.index);
                // Set apart, so the next transfer cannot overwrite what Raft may install.
                let path = verified_path(&self.config.state_path, &meta);
                if let Err(e) = std::fs::rename(self.receiving.path(), &path) {
                    warn!("cannot keep the received snapshot: {e}");
                    let error = Some(e.to_string());
                    self.send(from, PeerMessage::SnapshotAck { id, received: 0, verified: false, error });
                    return;
                }
                self.installable.insert((meta.index, meta.term), path);
                let snapshot =
                    Message { from, to: self.id, term, kind: MessageKind::InstallSnapshot { snapshot: meta } };
                self.raft.step(snapshot);
                self.send(from, PeerMessage::SnapshotAck { id, received: total, verified: true, error: None });
            }
            Err(e) => {
                warn!("refused a snapshot from node {from}: {e}");
                self.send(from, PeerMessage::SnapshotAck { id, received: 0, verified: false, error: Some(e) });
            }
        }
    }

    /// Ready step 1 for snapshots: start a transfer to each follower Raft names. A newer
    /// request replaces an older transfer to the same follower (its thread then stops).
    fn start_snapshots(&mut self, ready: &Ready) {
        for request in &ready.send_snapshots {
            let waiting = self.snapshot_backoff.get(&request.to).is_some_and(|b| Instant::now() < b.1);
            if waiting || !self.transport.is_connected(request.to) {
                // No full copy for a follower we cannot reach, or soon after a failure:
                // tell Raft at once; it asks again after a heartbeat.
                self.raft.report_snapshot(request.to, 0, false);
                continue;
            }
            let id = self.fresh_id();
            let (to, transport) = (request.to, self.transport.clone());
            let mut spool = self.config.state_path.as_os_str().to_owned();
            spool.push(format!(".outgoing-{}-{id}", request.to));
            let (acks_tx, acks) = snapshots::ack_channel();
            self.outgoing.insert(request.to, (id, acks_tx));
            self.copying.insert(request.to);
            info!("node {} needs entries this node has compacted: sending it a snapshot", request.to);
            let started = snapshots::start(Outgoing {
                to: request.to,
                id,
                term: request.term,
                state: self.config.state_path.clone(),
                spool: PathBuf::from(spool),
                readers: self.config.readers.clone(),
                to_follower: Box::new(move |message| transport.send(to, message).map_err(|e| format!("{e:?}"))),
                acks,
                core: self.events.clone(),
                timeout: self.config.timeout,
                read_hold: snapshots::READ_HOLD,
            });
            if let Err(e) = started {
                warn!("{e}");
                self.outgoing.remove(&request.to);
                self.copying.remove(&request.to);
                self.raft.report_snapshot(request.to, 0, false);
            }
        }
    }

    /// Ready step 2 for an install (§7): replace the state database, then (in `persist`)
    /// the log. The Raft store records the install first, so that a crash in between is
    /// finished, or forgotten, at restart (see `RaftStore::resume_install`).
    fn install(
        &mut self,
        meta: SnapshotMeta,
        hard_state: Option<raft_core::HardState>,
        events: &Receiver<Event>,
    ) -> Result<(), StorageError> {
        let Some(path) = self.installable.remove(&(meta.index, meta.term)) else {
            return Err(StorageError(format!(
                "Raft asked to install a snapshot at {}@{} that this node does not hold",
                meta.index, meta.term
            )));
        };
        let started = Instant::now();
        failpoint("install-before-record");
        // The term and vote go first: the new state is from the snapshot's term.
        self.store.begin_install(meta.clone(), hard_state)?;
        failpoint("install-recorded");
        let (tx, rx) = std::sync::mpsc::channel();
        // Entries committed before it are applied first, in order, as always.
        self.release_held(true)?;
        if self.applier.send(Job::Install { path: path.clone(), reply: tx }).is_err() {
            return Err(StorageError("the apply thread stopped".to_string()));
        }
        // The apply thread finishes earlier entries first, reporting each batch on our
        // bounded queue: keep emptying it meanwhile, or a full queue would stop both.
        let applied = loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(result) => break result.map_err(StorageError)?,
                Err(RecvTimeoutError::Timeout) => {
                    for event in events.try_iter().take(4096) {
                        match event {
                            // A transfer of this node's (from when it led) must not wait
                            // for the install, which waits for it to stop reading.
                            Event::SnapshotTerm { reply, .. } => {
                                let _ = reply.send(None);
                            }
                            other => self.deferred.push(other),
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(StorageError("the apply thread stopped".into())),
            }
        };
        if applied != meta.index {
            return Err(StorageError(format!("the installed snapshot holds index {applied}, not {}", meta.index)));
        }
        failpoint("install-state-replaced");
        let _ = std::fs::remove_file(&path);
        // Writes committed here before were applied before the install (the apply thread
        // works in order), and their results were queued before its answer: handle them
        // first, so each write gets its own result.
        self.deferred.extend(events.try_iter());
        let (results, others): (Vec<Event>, Vec<Event>) =
            std::mem::take(&mut self.deferred).into_iter().partition(|e| matches!(e, Event::Applied(_)));
        self.deferred = others;
        for event in results {
            self.handle(event);
        }
        self.applied(applied, Vec::new());
        self.bytes_since_compaction = 0;
        info!("installed the snapshot at index {} in {:.1} s", meta.index, started.elapsed().as_secs_f64());
        Ok(())
    }

    /// A follower's client write, forwarded to us as the leader of `term`: propose it,
    /// tagged with its origin. If we do not lead in that term, refuse, and the follower
    /// tries again elsewhere: its write must only ever become an entry of `term`.
    fn forwarded_write(&mut self, from: NodeId, id: u64, term: Term, settled_below: u64, sql: String) {
        if self.raft.role() != Role::Leader || self.raft.status().term != term || self.stopping.is_some() {
            return self.send(from, PeerMessage::ForwardRefused { id });
        }
        if !self.taken.take(term, from, id, settled_below) {
            // A copy sent again after a lost connection: the first is proposed already,
            // and its answer comes from us or from the follower's own log.
            return;
        }
        let deadline = Instant::now() + self.config.timeout;
        self.submit_write(Write { sql, waiter: Waiter::Peer { node: from, id }, deadline });
    }

    /// Proposes a write here if we lead; otherwise forwards it to the leader, or waits
    /// for one. A write forwarded to us is never forwarded again: we refuse it instead,
    /// and its node retries, so a request cannot circle between confused nodes.
    fn submit_write(&mut self, write: Write) {
        if let Some(message) = self.outsider() {
            return self.answer(write.waiter, Reply::error(ErrorCode::Unavailable, message));
        }
        if self.raft.role() != Role::Leader {
            // Not worth encoding an entry only to be told so (parked writes come back
            // here every tick).
            let leader = self.raft.status().leader;
            return self.not_leader(write, leader);
        }
        let origin = match write.waiter {
            Waiter::Peer { node, id } => Some(Origin { node, request: id }),
            Waiter::Client(_) => None,
        };
        let command = WriteCommand {
            sql: write.sql.clone(),
            time_ms: unix_ms(),
            seed: rand::random(),
            limits: self.config.limits,
            origin,
        };
        match self.raft.propose(command.encode()) {
            Ok(key) => {
                self.proposed.insert(key, write);
            }
            Err(ProposeError::NotLeader { leader }) => self.not_leader(write, leader),
            // Not now (a transfer is under way, say): the follower tries again, our own
            // client's write waits for the next try.
            Err(_) => match write.waiter {
                Waiter::Peer { node, id } => self.refuse_forward(node, id),
                Waiter::Client(_) => self.parked.push(write),
            },
        }
    }

    /// Refuses a forwarded write we took but could not propose; a copy may come again.
    fn refuse_forward(&mut self, node: NodeId, id: u64) {
        self.taken.release(node, id);
        self.send(node, PeerMessage::ForwardRefused { id });
    }

    /// Someone else leads (or no one): forward our client's write there, or wait.
    fn not_leader(&mut self, write: Write, leader: Option<NodeId>) {
        if let Waiter::Peer { node, id } = write.waiter {
            return self.refuse_forward(node, id);
        }
        let Some(leader) = leader.filter(|&l| l != self.id) else { return self.parked.push(write) };
        let id = self.fresh_id();
        let term = self.raft.status().term;
        let settled_below = self.forwarded.settled_below(id);
        let forward = PeerMessage::Forward { id, term, settled_below, sql: write.sql.clone() };
        // Refused at once when the leader is not connected: then it was surely not sent,
        // and waits for a leader we can reach.
        if self.send_peer(leader, forward).is_ok() {
            debug!("forwarded write {id} to leader {leader} in term {term}");
            self.forwarded.sent(id, leader, term, write, Instant::now());
        } else {
            self.parked.push(write);
        }
    }

    /// Sends forwarded writes again that have waited a while for a leader still leading
    /// the same term: the first copy may have been lost with a connection. The leader
    /// proposes each at most once ([`crate::forwarding::Taken`]).
    fn resend_forwards(&mut self, now: Instant) {
        let status = self.raft.status();
        let Some(leader) = status.leader.filter(|&l| l != self.id && self.transport.is_connected(l)) else { return };
        for id in self.forwarded.due(leader, status.term, now, self.config.election) {
            let Some(write) = self.forwarded.write(id) else { continue };
            let settled_below = self.forwarded.settled_below(id);
            let forward = PeerMessage::Forward { id, term: status.term, settled_below, sql: write.sql.clone() };
            self.send(leader, forward);
        }
    }

    /// Starts a ReadIndex round (§6.4) for a linearizable read, or waits for a leader.
    /// A read already asked of a leader that then fails is aborted by raft-core when the
    /// leader changes or this node starts an election, and comes back here.
    fn submit_read(&mut self, barrier: Barrier) {
        if let Some(message) = self.outsider() {
            barrier.reply.passed(Err(Reply::error(ErrorCode::Unavailable, message)));
            return;
        }
        let reachable = match self.raft.status().leader {
            None => false,
            Some(leader) => leader == self.id || self.transport.is_connected(leader),
        };
        if !reachable {
            // Its question would be dropped: wait for a leader we can reach.
            return self.parked_reads.push(barrier);
        }
        let id = self.fresh_id();
        self.raft.read(id);
        self.reads.insert(id, barrier);
    }

    /// Why this node cannot serve requests, if it is outside the configuration: it was
    /// removed, or is waiting to be added. Its log may be stale and no leader talks to it.
    fn outsider(&self) -> Option<String> {
        if self.raft.membership().is_member(self.id) {
            return None;
        }
        let voters: Vec<String> = self.raft.membership().voters.iter().map(|v| v.to_string()).collect();
        Some(format!(
            "this node is not a member of the cluster (it was removed, or has not been added yet); connect to a member: nodes {}",
            voters.join(", ")
        ))
    }

    fn fresh_id(&mut self) -> u64 {
        if self.ids.next > u32::MAX as u64 {
            // Four billion requests since the last start: count a new start, durably.
            match self.store.next_incarnation() {
                Ok(incarnation) => self.ids = Ids { incarnation, next: 0 },
                Err(e) => self.failed = Some(e),
            }
        }
        let id = (self.ids.incarnation << 32) | self.ids.next;
        self.ids.next += 1;
        id
    }

    /// The apply thread reached `index`: answer the writes and reads waiting for it.
    fn applied(&mut self, index: Index, results: Vec<(Index, LineResult)>) {
        self.reached(index);
        for (at, result) in results {
            if let Some(write) = self.committed.remove(&at).or_else(|| self.forwarded.applied(at)) {
                self.answer(write.waiter, reply_of(result));
            }
        }
        // A committed proposal always has a result; this only guards against waiting
        // forever. Applied, but not necessarily successfully: say so, never claim success.
        let done: Vec<Index> = self.committed.keys().copied().filter(|&at| at <= index).collect();
        for at in done.into_iter().chain(self.forwarded.committed_up_to(index)) {
            if let Some(write) = self.committed.remove(&at).or_else(|| self.forwarded.applied(at)) {
                let message =
                    "the write reached the state machine but its result was not kept; check whether it took effect";
                self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
            }
        }
    }

    /// The apply thread reached `index`: serve the reads waiting for it. (Writes wait for
    /// their results, which come in order, with the report that carries them.)
    fn reached(&mut self, index: Index) {
        if index > self.applied {
            let id = self.id;
            self.tracers.emit(|| format!("n{id} applied up to {index}"));
        }
        self.applied = self.applied.max(index);
        let (fresh, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.confirmed).into_iter().partition(|(at, _)| *at <= index);
        self.confirmed = waiting;
        for (_, barrier) in fresh {
            barrier.reply.passed(Ok(()));
        }
    }

    /// Tells the apply thread the first index that something here waits for, so that it
    /// wakes us when it gets there; then takes what it reported without waking us.
    fn want_applied(&mut self) {
        self.publish_wanted();
        let quietly = self.config.quiet.applied();
        if quietly > self.applied {
            self.reached(quietly);
        }
    }

    /// The first applied index that a read or a write's result here waits for.
    fn publish_wanted(&self) {
        let first = self.confirmed.iter().map(|(at, _)| *at).chain(self.committed.keys().copied()).min();
        self.config.quiet.want_applied(first.unwrap_or(Index::MAX));
    }

    /// Deadlines and retries, once per tick.
    fn on_tick(&mut self, now: Instant) {
        let expired: Vec<(Term, Index)> =
            self.proposed.iter().filter(|(_, w)| w.deadline <= now).map(|(&k, _)| k).collect();
        for key in expired {
            let Some(write) = self.proposed.remove(&key) else { continue };
            // A forwarding node keeps its own deadline and reads the fate in its own log,
            // which is better than our guess: tell it nothing.
            if let Waiter::Client(_) = write.waiter {
                let message = format!(
                    "the write was proposed but not committed within {:?} (too few nodes answered, or leadership \
                     changed); it may still be applied",
                    self.config.timeout
                );
                self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
            }
        }
        self.resend_forwards(now);
        for write in self.forwarded.expired(|w| w.deadline <= now) {
            let message = format!(
                "the write was forwarded to the leader, which did not answer within {:?}; it may still be applied",
                self.config.timeout
            );
            self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
        }
        let expired: Vec<ReadId> = self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(&k, _)| k).collect();
        for id in expired {
            if let Some(barrier) = self.reads.remove(&id) {
                let error = Reply::error(ErrorCode::Unavailable, "the leader did not confirm the read in time");
                barrier.reply.passed(Err(error));
            }
        }
        let (late, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.confirmed).into_iter().partition(|(_, b)| b.deadline <= now);
        self.confirmed = waiting;
        for (_, barrier) in late {
            let message = "this node did not apply the writes the read must see in time (it is busy applying)";
            barrier.reply.passed(Err(Reply::error(ErrorCode::Unavailable, message)));
        }
        self.retry_parked(now);
        self.expire_admin(now);
    }

    /// Tries parked requests again, or gives up on them at their deadline.
    fn retry_parked(&mut self, now: Instant) {
        for write in std::mem::take(&mut self.parked) {
            if write.deadline <= now {
                self.answer(write.waiter, Reply::error(ErrorCode::Unavailable, "no leader could be reached in time"));
            } else {
                self.submit_write(write);
            }
        }
        for barrier in std::mem::take(&mut self.parked_reads) {
            if barrier.deadline <= now {
                let error = Reply::error(ErrorCode::Unavailable, "no leader could be reached in time");
                barrier.reply.passed(Err(error));
            } else {
                self.submit_read(barrier);
            }
        }
    }

    /// Carries out readies until raft-core has nothing more, in the documented order.
    fn process_ready(&mut self, events: &Receiver<Event>) -> Result<(), StorageError> {
        while self.raft.has_ready() {
            let ready = self.raft.ready();
            // Before this ready's messages leave, so that the answers to a read round's
            // heartbeats are never left waiting.
            self.config.quiet.publish(self.raft.wake_hint());
            self.log_status(&ready);
            for refusal in &ready.refused {
                warn!("{refusal}");
            }
            // Committed entries that were durable here before this ready may be applied
            // before steps 1 to 3, so that their clients need not wait for this ready's
            // messages and disk write. Every earlier ready was persisted (and advanced)
            // before this one was taken, so those not among its own entries are; a
            // leader's always are, as it counts its own copy only once durable.
            let durable_already = ready.install_snapshot.is_none()
                && ready
                    .committed
                    .last()
                    .is_some_and(|last| ready.entries.first().is_none_or(|e| e.index > last.index));
            if durable_already {
                self.hand_over(&ready)?;
            }
            // 1. A leader's appends and heartbeats leave before its own write (§10.2.1).
            for msg in &ready.messages {
                self.tracers.emit(|| format!("send {}", trace::message(msg)));
                self.send(msg.to, PeerMessage::Raft(msg.clone()));
            }
            self.start_snapshots(&ready);
            // 2. Durable, with one fsync (an install first replaces the state database).
            if let Some(meta) = ready.install_snapshot.clone() {
                self.install(meta, ready.hard_state, events)?;
            }
            let started = Instant::now();
            self.store.persist(&ready)?;
            let wrote = ready.hard_state.is_some()
                || !ready.entries.is_empty()
                || ready.truncate_from.is_some()
                || ready.compacted.is_some()
                || ready.install_snapshot.is_some();
            if wrote {
                self.config.metrics.persisted(started.elapsed());
            }
            if ready.install_snapshot.is_some() {
                failpoint("install-done");
            }
            self.trace_persisted(&ready);
            if let Some(meta) = ready.compacted.clone() {
                debug!("log compacted up to {}@{} on disk", meta.index, meta.term);
            }
            // 3. Messages that promise durable state.
            for msg in &ready.persisted_messages {
                self.tracers.emit(|| format!("send {}", trace::message(msg)));
                self.send(msg.to, PeerMessage::Raft(msg.clone()));
            }
            if !durable_already {
                self.hand_over(&ready)?;
            }
            // Forwarded writes our log proves lost go again, to whoever leads now.
            for write in self.forwarded.committed(&ready.committed) {
                info!("a write forwarded to an earlier term's leader was never committed; sending it again");
                self.submit_write(write);
            }
            // 5. Answer clients: writes once applied, reads once applied far enough.
            self.answer_reads(&ready);
            // 6.
            self.raft.advance(&ready);
        }
        // Received snapshots Raft did not want (stale, or no newer than what we hold).
        let commit = self.raft.status().commit_index;
        self.installable.retain(|meta, path| {
            let keep = meta.0 > commit;
            if !keep {
                let _ = std::fs::remove_file(path);
            }
            keep
        });
        self.maybe_compact();
        self.sync_peers();
        Ok(())
    }

    /// Step 4 of a ready: its committed entries go to the apply thread, in order (a
    /// follower holds them a moment first, see `release_held`), with the answer channels
    /// of the writes proposed here. Other results come back as events.
    fn hand_over(&mut self, ready: &Ready) -> Result<(), StorageError> {
        // Writes whose entries committed now wait for the apply thread's result.
        self.answer_proposals(ready);
        if !ready.committed.is_empty() {
            self.bytes_since_compaction += ready.committed.iter().map(|e| e.size() as u64).sum::<u64>();
            self.held.extend(ready.committed.iter().cloned());
            self.held_since.get_or_insert_with(Instant::now);
            self.release_held(false)?;
        }
        Ok(())
    }

    /// Hands held entries to the apply thread: always (`now`) on a leader, whose clients
    /// wait for their results, and whenever a read waits for them; otherwise once enough
    /// are held, or they were held for long enough.
    fn release_held(&mut self, now: bool) -> Result<(), StorageError> {
        let Some(since) = self.held_since else { return Ok(()) };
        let due = now
            || self.raft.role() == Role::Leader
            || !self.confirmed.is_empty()
            // A client of this node's (proposed when it led) waits for one of them.
            || self.committed.values().any(|w| matches!(w.waiter, Waiter::Client(_)))
            || self.held.len() >= HOLD_ENTRIES
            || since.elapsed() >= HOLD_APPLY;
        if !due {
            return Ok(());
        }
        self.held_since = None;
        // The clients of writes proposed here get their answers from the apply thread.
        let mut waiting = Vec::new();
        for entry in &self.held {
            if let Some(write) = self.committed.remove(&entry.index) {
                match write.waiter {
                    Waiter::Client(client) => waiting.push((entry.index, client)),
                    Waiter::Peer { .. } => {
                        self.committed.insert(entry.index, write);
                    }
                }
            }
        }
        // Before the entries go: a result the apply thread owes us for one of them must
        // wake us, even if it reaches that index before this turn ends.
        self.publish_wanted();
        if self.applier.send(Job::Entries(std::mem::take(&mut self.held), waiting)).is_err() {
            return Err(StorageError("the apply thread stopped".to_string()));
        }
        Ok(())
    }

    fn answer_proposals(&mut self, ready: &Ready) {
        for outcome in &ready.proposals {
            if self.change_outcome(outcome) {
                continue;
            }
            match *outcome {
                ProposalOutcome::Committed { term, index } => {
                    if let Some(write) = self.proposed.remove(&(term, index)) {
                        self.committed.insert(index, write);
                    }
                }
                ProposalOutcome::Lost { term, index } => {
                    // Another entry took the index: this write will never apply. Retry it.
                    let Some(write) = self.proposed.remove(&(term, index)) else { continue };
                    match write.waiter {
                        Waiter::Peer { node, id } => self.send(node, PeerMessage::ForwardRefused { id }),
                        Waiter::Client(_) => self.parked.push(write),
                    }
                }
                ProposalOutcome::Unknown { term, index } => {
                    // A snapshot replaced the entries that would tell. As at the deadline,
                    // a forwarding node reads the fate in its own log: tell it nothing.
                    let Some(write) = self.proposed.remove(&(term, index)) else { continue };
                    if let Waiter::Client(_) = write.waiter {
                        let message = "the write was proposed, then this node installed a snapshot that covers it; its outcome is unknown";
                        self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
                    }
                }
            }
        }
    }

    /// Tells `.trace` watchers what step 2 of `ready` made durable, and what committed.
    fn trace_persisted(&mut self, ready: &Ready) {
        let id = self.id;
        if let Some(hs) = ready.hard_state {
            let vote = hs.voted_for.map_or("none".to_string(), |v| format!("n{v}"));
            self.tracers.emit(|| format!("n{id} persist term={} vote={vote}", hs.term));
        }
        if let Some(meta) = &ready.install_snapshot {
            self.tracers.emit(|| format!("n{id} persist install snapshot {}@{}", meta.index, meta.term));
        }
        if let Some(meta) = &ready.compacted {
            self.tracers.emit(|| format!("n{id} persist compact to {}@{}", meta.index, meta.term));
        }
        if let Some(from) = ready.truncate_from {
            self.tracers.emit(|| format!("n{id} persist truncate {from}.."));
        }
        let range = |first: &raft_core::Entry, last: &raft_core::Entry| match first.index == last.index {
            true => format!("{}@{}", first.index, first.term),
            false => format!("{}@{}..{}@{}", first.index, first.term, last.index, last.term),
        };
        if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last()) {
            self.tracers.emit(|| format!("n{id} persist append {}", range(first, last)));
        }
        if let (Some(first), Some(last)) = (ready.committed.first(), ready.committed.last()) {
            self.tracers.emit(|| format!("n{id} committed {}, to apply", range(first, last)));
        }
    }

    fn answer_reads(&mut self, ready: &Ready) {
        for outcome in &ready.reads {
            let id = self.id;
            self.tracers.emit(|| match outcome.result {
                Ok(index) => format!("n{id} read {} confirmed at index {index}", outcome.id),
                Err(e) => format!("n{id} read {} failed: {e:?}", outcome.id),
            });
            let Some(barrier) = self.reads.remove(&outcome.id) else { continue };
            match outcome.result {
                Ok(index) if index <= self.applied => {
                    barrier.reply.passed(Ok(()));
                }
                Ok(index) => self.confirmed.push((index, barrier)),
                Err(_) => self.parked_reads.push(barrier),
            }
        }
    }

    fn log_status(&mut self, ready: &Ready) {
        let Some(s) = ready.status_change else { return };
        let id = self.id;
        self.tracers.emit(|| {
            let leader = s.leader.map_or("none".to_string(), |l| format!("n{l}"));
            format!("n{id} is {} term={} leader={leader}", s.role, s.term)
        });
        self.transfer_progress(&s);
        match (s.role, s.leader) {
            (Role::Leader, _) => info!("became leader of term {}", s.term),
            (Role::Follower, Some(leader)) => info!("following leader {leader} in term {}", s.term),
            (Role::Follower, None) => info!("follower in term {}, no leader known", s.term),
            (role, _) => info!("{role} for term {}: election started", s.term + u64::from(role == Role::PreCandidate)),
        }
        if s.leader.is_some() {
            // A leader is known: requests waiting for one can go now.
            self.retry_parked(Instant::now());
        }
    }

    fn answer(&mut self, waiter: Waiter, reply: Reply) {
        match waiter {
            Waiter::Client(tx) => {
                let _ = tx.send(reply);
            }
            Waiter::Peer { node, id } => self.send(node, PeerMessage::ForwardReply { id, reply }),
        }
    }

    fn send(&self, to: NodeId, msg: PeerMessage) {
        // Refused when the peer is not connected or its queue is full (it is slow): Raft
        // retries what matters.
        let _ = self.send_peer(to, msg);
    }

    /// Raft's own messages (bounded by the append size) and short forwarded lines are
    /// encoded and written from this thread; the rest may carry a client's line or its
    /// results, megabytes of JSON, and are encoded by the peer's task, so that no client
    /// can stall this loop with them.
    fn send_peer(&self, to: NodeId, msg: PeerMessage) -> Result<(), transport::SendError> {
        const DIRECT_LINE: usize = 64 << 10;
        match &msg {
            PeerMessage::Raft(_) => self.transport.send(to, msg),
            PeerMessage::Forward { sql, .. } if sql.len() <= DIRECT_LINE => self.transport.send(to, msg),
            _ => self.transport.send_queued(to, msg),
        }
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        if self.raft.role() == Role::Leader {
            // Hand over leadership so the cluster does not wait an election timeout (§3.10).
            let voters = &self.raft.membership().voters;
            let connected =
                self.transport.peers().into_iter().find(|&p| voters.contains(&p) && self.transport.is_connected(p));
            if let Some(peer) = connected {
                info!("shutting down: transferring leadership to node {peer}");
                let _ = self.raft.transfer_leadership(peer);
            }
        }
    }

    fn answer_everyone_on_shutdown(&mut self) {
        let unknown = || Reply::error(ErrorCode::OutcomeUnknown, "the node shut down before the outcome was known");
        let gone = || Reply::error(ErrorCode::Unavailable, "the node shut down");
        let writes: Vec<Write> = std::mem::take(&mut self.proposed)
            .into_values()
            .chain(std::mem::take(&mut self.committed).into_values())
            .chain(self.forwarded.drain())
            .collect();
        for write in writes {
            match write.waiter {
                // The node that forwarded it learns its fate from its own log, which is
                // better than our guess: stay silent.
                Waiter::Peer { .. } => {}
                Waiter::Client(_) => self.answer(write.waiter, unknown()),
            }
        }
        for write in std::mem::take(&mut self.parked) {
            self.answer(write.waiter, gone());
        }
        let reads = self
            .reads
            .drain()
            .map(|(_, r)| r)
            .chain(std::mem::take(&mut self.confirmed).into_iter().map(|(_, r)| r))
            .chain(std::mem::take(&mut self.parked_reads));
        for barrier in reads {
            barrier.reply.passed(Err(gone()));
        }
        self.answer_admin_on_shutdown();
        if self.raft.role() == Role::Leader {
            warn!("shutting down while still leader: the others will elect a new one");
        }
    }
}

pub(crate) fn reply_of(result: LineResult) -> Reply {
    match result {
        Ok(results) => Reply::Results(results),
        Err(message) => Reply::error(ErrorCode::SqlError, message),
    }
}

/// How far the log may be compacted (§7) once the state database is durable up to
/// `durable`: never beyond it, since the log must keep every entry the durable state
/// lacks (the state commits with `synchronous = NORMAL`; after a power failure only what
/// was synced survives, and the log must still hold the rest to apply it again). Less
/// `keep` entries, so a follower slightly behind gets entries, and no further than any
/// `floors` (followers catching up from a snapshot).
fn compaction_target(durable: Index, keep: u64, floors: &[Index]) -> Index {
    floors.iter().copied().fold(durable.saturating_sub(keep), Index::min)
}

/// Where a received, verified snapshot waits to be installed.
fn verified_path(state: &std::path::Path, meta: &SnapshotMeta) -> PathBuf {
    let mut path = state.as_os_str().to_owned();
    path.push(format!(".snapshot-{}-{}", meta.index, meta.term));
    PathBuf::from(path)
}

/// Removes the snapshot files an earlier run left beside the state database: transfers
/// under way then are incomplete or stale now.
fn remove_transfer_files(state: &std::path::Path) {
    let (Some(dir), Some(name)) = (state.parent(), state.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let name = name.to_string_lossy();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let leftover = [".snapshot-", ".outgoing-", ".incoming"]
            .iter()
            .any(|suffix| file.strip_prefix(name.as_ref()).is_some_and(|rest| rest.starts_with(suffix)));
        if leftover {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::compaction_target;

    #[test]
    fn the_log_is_compacted_only_up_to_what_the_state_holds_durably() {
        assert_eq!(compaction_target(5000, 0, &[]), 5000);
        assert_eq!(compaction_target(5000, 1000, &[]), 4000, "a trailing window is kept");
        assert_eq!(compaction_target(500, 1000, &[]), 0, "nothing, while within the window");
        assert_eq!(compaction_target(5000, 1000, &[4500, 3000]), 3000, "a follower catching up holds it back");
        for durable in 0..50 {
            for keep in 0..5 {
                assert!(compaction_target(durable, keep, &[durable + 7]) <= durable);
            }
        }
    }
}
