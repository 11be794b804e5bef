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
//! or `outcome_unknown` (proposed, fate unknown). Nothing waits for its deadline once
//! its fate is known: a write whose proposal was lost, or forwarded to a leader that
//! then lost its term without committing it ([`crate::forwarding`]), is sent again at
//! once, to whoever leads now.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft_core::{Entry, Index, Node, NodeId, ProposalOutcome, ProposeError, ReadId, Ready, Role, Term};
use sqlite_sm::{Limits, LineResult, Origin, RaftStore, StorageError, WriteCommand};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use transport::Transport;

use crate::applier::Applied;
use crate::forwarding::{Forwarded, Taken};
use crate::protocol::{ErrorCode, PeerMessage, Reply, Request, StatusReport};

/// An input to the core.
#[derive(Debug)]
pub enum Event {
    /// A message from a peer (the transport authenticated the sender).
    Peer(NodeId, PeerMessage),
    /// A client request.
    Client(Request),
    /// The apply thread's progress.
    Applied(Applied),
    /// Stop: hand over leadership if we have it, answer everyone, return.
    Shutdown,
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
    reply: oneshot::Sender<Result<(), Reply>>,
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
    applier: Sender<Vec<Entry>>,
    config: CoreConfig,
    /// Writes proposed here, by (term, index), waiting for their fate.
    proposed: HashMap<(Term, Index), Write>,
    /// Writes committed, waiting for the apply thread's result.
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
    ids: Ids,
    /// A storage failure met outside `process_ready`; the loop stops on it.
    failed: Option<StorageError>,
    /// When shutdown began.
    stopping: Option<Instant>,
}

impl Core {
    /// Assembles the core around a node restored from `store`, whose state machine (on
    /// the apply thread) has applied up to `applied`.
    pub fn new(
        raft: Node,
        mut store: RaftStore,
        applied: Index,
        transport: Transport<PeerMessage>,
        applier: Sender<Vec<Entry>>,
        config: CoreConfig,
    ) -> Result<Core, StorageError> {
        let incarnation = store.next_incarnation()?;
        Ok(Core {
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
            let wait = next_tick.saturating_duration_since(Instant::now());
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
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raft.tick();
                next_tick = (next_tick + self.config.tick).max(now);
                self.on_tick(now);
            }
            self.process_ready()?;
            if let Some(since) = self.stopping {
                if self.raft.role() != Role::Leader || since.elapsed() > 2 * self.config.election {
                    self.answer_everyone_on_shutdown();
                    return Ok(());
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer(from, PeerMessage::Raft(msg)) => {
                // The transport proved who `from` is; the message must agree.
                if msg.from == from {
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
                    let _ = reply.send(Err(Reply::error(ErrorCode::Unavailable, "the node is shutting down")));
                    return;
                }
                let deadline = Instant::now() + self.config.timeout;
                self.submit_read(Barrier { reply, deadline });
            }
            Event::Applied(Applied::Up { index, results }) => self.applied(index, results),
            Event::Applied(Applied::Failed(e)) => self.failed = Some(StorageError(e)),
            Event::Shutdown => self.begin_shutdown(),
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
            applied_index: self.applied,
        }
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
        if self.transport.send(leader, forward).is_ok() {
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
        self.applied = self.applied.max(index);
        for (at, result) in results {
            if let Some(write) = self.committed.remove(&at).or_else(|| self.forwarded.applied(at)) {
                self.answer(write.waiter, reply_of(result));
            }
        }
        // A committed proposal always has a result; this only guards against waiting forever.
        let done: Vec<Index> = self.committed.keys().copied().filter(|&at| at <= index).collect();
        for at in done.into_iter().chain(self.forwarded.committed_up_to(index)) {
            if let Some(write) = self.committed.remove(&at).or_else(|| self.forwarded.applied(at)) {
                self.answer(write.waiter, Reply::Results(Vec::new()));
            }
        }
        let (fresh, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.confirmed).into_iter().partition(|(at, _)| *at <= index);
        self.confirmed = waiting;
        for (_, barrier) in fresh {
            let _ = barrier.reply.send(Ok(()));
        }
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
                let message = "the write was proposed but its outcome is unknown (leadership changed or no quorum)";
                self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
            }
        }
        self.resend_forwards(now);
        for write in self.forwarded.expired(|w| w.deadline <= now) {
            let message =
                "the write was forwarded to the leader, which did not answer in time; it may have been applied";
            self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
        }
        let expired: Vec<ReadId> = self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(&k, _)| k).collect();
        for id in expired {
            if let Some(barrier) = self.reads.remove(&id) {
                let error = Reply::error(ErrorCode::Unavailable, "the leader did not confirm the read in time");
                let _ = barrier.reply.send(Err(error));
            }
        }
        let (late, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.confirmed).into_iter().partition(|(_, b)| b.deadline <= now);
        self.confirmed = waiting;
        for (_, barrier) in late {
            let message = "this node did not apply the writes the read must see in time (it is busy applying)";
            let _ = barrier.reply.send(Err(Reply::error(ErrorCode::Unavailable, message)));
        }
        self.retry_parked(now);
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
                let _ = barrier.reply.send(Err(error));
            } else {
                self.submit_read(barrier);
            }
        }
    }

    /// Carries out readies until raft-core has nothing more, in the documented order.
    fn process_ready(&mut self) -> Result<(), StorageError> {
        while self.raft.has_ready() {
            let ready = self.raft.ready();
            self.log_status(&ready);
            for refusal in &ready.refused {
                warn!("{refusal}");
            }
            // 1. A leader's appends and heartbeats leave before its own write (§10.2.1).
            for msg in &ready.messages {
                self.send(msg.to, PeerMessage::Raft(msg.clone()));
            }
            // 2. Durable, with one fsync.
            self.store.persist(ready.hard_state, ready.truncate_from, &ready.entries)?;
            // 3. Messages that promise durable state.
            for msg in &ready.persisted_messages {
                self.send(msg.to, PeerMessage::Raft(msg.clone()));
            }
            // 4. Apply, in order, on the apply thread. Results come back as events.
            if !ready.committed.is_empty() && self.applier.send(ready.committed.clone()).is_err() {
                return Err(StorageError("the apply thread stopped".to_string()));
            }
            // Forwarded writes our log proves lost go again, to whoever leads now.
            for write in self.forwarded.committed(&ready.committed) {
                info!("a write forwarded to an earlier term's leader was never committed; sending it again");
                self.submit_write(write);
            }
            // 5. Answer clients: writes once applied, reads once applied far enough.
            self.answer_proposals(&ready);
            self.answer_reads(&ready);
            // 6.
            self.raft.advance(&ready);
        }
        Ok(())
    }

    fn answer_proposals(&mut self, ready: &Ready) {
        for outcome in &ready.proposals {
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

    fn answer_reads(&mut self, ready: &Ready) {
        for outcome in &ready.reads {
            let Some(barrier) = self.reads.remove(&outcome.id) else { continue };
            match outcome.result {
                Ok(index) if index <= self.applied => {
                    let _ = barrier.reply.send(Ok(()));
                }
                Ok(index) => self.confirmed.push((index, barrier)),
                Err(_) => self.parked_reads.push(barrier),
            }
        }
    }

    fn log_status(&mut self, ready: &Ready) {
        let Some(s) = ready.status_change else { return };
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
        let _ = self.transport.send(to, msg);
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        if self.raft.role() == Role::Leader {
            // Hand over leadership so the cluster does not wait an election timeout (§3.10).
            let connected = self.transport.peers().into_iter().find(|&p| self.transport.is_connected(p));
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
            let _ = barrier.reply.send(Err(gone()));
        }
        if self.raft.role() == Role::Leader {
            warn!("shutting down while still leader: the others will elect a new one");
        }
    }
}

fn reply_of(result: LineResult) -> Reply {
    match result {
        Ok(results) => Reply::Results(results),
        Err(message) => Reply::error(ErrorCode::SqlError, message),
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
