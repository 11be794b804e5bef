//! The Raft core: one thread that owns the raft-core [`Node`], its durable store and the
//! SQLite state machine, and carries out every [`Ready`] in the order raft-core demands.
//!
//! Everything else (client sessions, the transport) talks to it through one channel of
//! [`Event`]s. The loop takes every event already waiting before it asks for a ready, so
//! writes that arrive together share one log append, one fsync and one append message.
//!
//! Client requests never get lost in here: each one is answered exactly once, either
//! with its outcome or, when its deadline passes, with `unavailable` (never proposed)
//! or `outcome_unknown` (proposed, fate unknown).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raft_core::{Index, Node, NodeId, ProposalOutcome, ProposeError, ReadId, Ready, Role, Term};
use sqlite_sm::{Kind, LineResult, RaftStore, StateMachine, StorageError, WriteCommand};
use tokio::sync::oneshot;
use tracing::{info, warn};
use transport::Transport;

use crate::protocol::{Consistency, ErrorCode, PeerMessage, Reply, Request, StatusReport};

/// An input to the core.
#[derive(Debug)]
pub enum Event {
    /// A message from a peer.
    Peer(NodeId, PeerMessage),
    /// A client request.
    Client(Request),
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

/// A client write and the time its client stops waiting.
struct Write {
    sql: String,
    waiter: Waiter,
    deadline: Instant,
}

/// A linearizable read waiting for its read index.
struct Read {
    sql: String,
    waiter: Waiter,
    deadline: Instant,
}

/// The Raft core's state.
pub struct Core {
    id: NodeId,
    raft: Node,
    store: RaftStore,
    sm: StateMachine,
    transport: Transport<PeerMessage>,
    tick: Duration,
    election: Duration,
    timeout: Duration,
    /// Writes proposed here, by (term, index).
    proposed: HashMap<(Term, Index), Write>,
    /// Writes forwarded to the leader, by our id for them.
    forwarded: HashMap<u64, Write>,
    /// Writes waiting for a leader.
    parked: Vec<Write>,
    /// Reads waiting for their read index.
    reads: HashMap<ReadId, Read>,
    /// Reads waiting for a leader.
    parked_reads: Vec<Read>,
    /// Results of applied entries that a waiter here will collect.
    results: HashMap<Index, LineResult>,
    next_id: u64,
    /// When shutdown began.
    stopping: Option<Instant>,
}

impl Core {
    /// Assembles the core around a node restored from `store` and `sm`.
    pub fn new(
        raft: Node,
        store: RaftStore,
        sm: StateMachine,
        transport: Transport<PeerMessage>,
        tick: Duration,
        election_ticks: u64,
        timeout: Duration,
    ) -> Core {
        Core {
            id: raft.id(),
            raft,
            store,
            sm,
            transport,
            tick,
            election: tick * election_ticks as u32,
            timeout,
            proposed: HashMap::new(),
            forwarded: HashMap::new(),
            parked: Vec::new(),
            reads: HashMap::new(),
            parked_reads: Vec::new(),
            results: HashMap::new(),
            next_id: 1,
            stopping: None,
        }
    }

    /// Runs until shutdown. Returns an error only if the disk fails: continuing would
    /// risk acknowledging what is not durable, so the node stops (fail-stop).
    pub fn run(mut self, events: Receiver<Event>) -> Result<(), StorageError> {
        let mut next_tick = Instant::now() + self.tick;
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
            let now = Instant::now();
            if now >= next_tick {
                self.raft.tick();
                next_tick = (next_tick + self.tick).max(now);
                self.on_tick(now);
            }
            self.process_ready()?;
            if let Some(since) = self.stopping {
                if self.raft.role() != Role::Leader || since.elapsed() > 2 * self.election {
                    self.answer_everyone_on_shutdown();
                    return Ok(());
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer(from, PeerMessage::Raft(msg)) => {
                // The transport vouched for `from`; the message must agree.
                if msg.from == from {
                    self.raft.step(msg);
                }
            }
            Event::Peer(from, PeerMessage::Forward { id, sql }) => self.forwarded_request(from, id, sql),
            Event::Peer(_, PeerMessage::ForwardReply { id, reply }) => {
                if let Some(write) = self.forwarded.remove(&id) {
                    self.answer(write.waiter, reply);
                }
            }
            Event::Peer(_, PeerMessage::ForwardRefused { id }) => {
                // Not proposed anywhere: safe to try again once we know a leader.
                if let Some(write) = self.forwarded.remove(&id) {
                    self.parked.push(write);
                }
            }
            Event::Client(Request::Status(reply)) => {
                let _ = reply.send(self.status());
            }
            Event::Client(Request::Sql { sql, consistency, reply }) => self.client_sql(sql, consistency, reply),
            Event::Shutdown => self.begin_shutdown(),
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
            applied_index: self.sm.applied_index(),
        }
    }

    fn client_sql(&mut self, sql: String, consistency: Consistency, reply: oneshot::Sender<Reply>) {
        if self.stopping.is_some() {
            let _ = reply.send(Reply::error(ErrorCode::Unavailable, "the node is shutting down"));
            return;
        }
        let waiter = Waiter::Client(reply);
        let deadline = Instant::now() + self.timeout;
        match self.sm.classify(&sql) {
            Ok(Kind::Read) if consistency == Consistency::Local => {
                let reply = reply_of(self.sm.query(&sql));
                self.answer(waiter, reply);
            }
            Ok(Kind::Read) => self.submit_read(Read { sql, waiter, deadline }),
            Ok(Kind::Write) => self.submit_write(Write { sql, waiter, deadline }),
            // This replica's schema may lag the leader's (a table created a moment ago),
            // so unless the answer is final, let the leader judge the line.
            Err(e) if e.is_final() || self.raft.role() == Role::Leader || consistency == Consistency::Local => {
                self.answer(waiter, Reply::error(ErrorCode::SqlError, e.message()))
            }
            Err(_) => self.submit_write(Write { sql, waiter, deadline }),
        }
    }

    /// A follower's client line, forwarded to us as the leader. We judge it against our
    /// (freshest) state: errors are answered at once, reads served by ReadIndex, writes
    /// proposed. If we are not the leader, we refuse and the follower tries again.
    fn forwarded_request(&mut self, from: NodeId, id: u64, sql: String) {
        let waiter = Waiter::Peer { node: from, id };
        if self.raft.role() != Role::Leader || self.stopping.is_some() {
            return self.send(from, PeerMessage::ForwardRefused { id });
        }
        let deadline = Instant::now() + self.timeout;
        match self.sm.classify(&sql) {
            Err(e) => self.answer(waiter, Reply::error(ErrorCode::SqlError, e.message())),
            Ok(Kind::Read) => self.submit_read(Read { sql, waiter, deadline }),
            Ok(Kind::Write) => self.submit_write(Write { sql, waiter, deadline }),
        }
    }

    /// Proposes a write here if we lead; otherwise forwards it to the leader, or waits
    /// for one. A write forwarded to us is never forwarded again: we refuse it instead,
    /// and its node retries, so a request cannot circle between confused nodes.
    fn submit_write(&mut self, write: Write) {
        let command = WriteCommand { sql: write.sql.clone(), time_ms: unix_ms(), seed: rand::random() };
        match self.raft.propose(command.encode()) {
            Ok(key) => {
                self.proposed.insert(key, write);
            }
            Err(err) => match write.waiter {
                Waiter::Peer { node, id } => self.send(node, PeerMessage::ForwardRefused { id }),
                Waiter::Client(_) => match err {
                    ProposeError::NotLeader { leader: Some(leader) } => {
                        let id = self.next_id;
                        self.next_id += 1;
                        let forward = PeerMessage::Forward { id, sql: write.sql.clone() };
                        if self.transport.send(leader, forward).is_ok() {
                            self.forwarded.insert(id, write);
                        } else {
                            self.parked.push(write);
                        }
                    }
                    _ => self.parked.push(write),
                },
            },
        }
    }

    fn submit_read(&mut self, read: Read) {
        if self.raft.status().leader.is_none() {
            return self.park_read(read);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.raft.read(id);
        self.reads.insert(id, read);
    }

    /// Keeps a read for a retry once a leader is known; a follower's read forwarded to us
    /// goes back to that follower instead.
    fn park_read(&mut self, read: Read) {
        match read.waiter {
            Waiter::Peer { node, id } => self.send(node, PeerMessage::ForwardRefused { id }),
            Waiter::Client(_) => self.parked_reads.push(read),
        }
    }

    /// Deadlines and retries, once per tick.
    fn on_tick(&mut self, now: Instant) {
        let expired: Vec<(Term, Index)> =
            self.proposed.iter().filter(|(_, w)| w.deadline <= now).map(|(&k, _)| k).collect();
        for key in expired {
            if let Some(write) = self.proposed.remove(&key) {
                let message = "the write was proposed but its outcome is unknown (leadership changed or no quorum)";
                self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
            }
        }
        let expired: Vec<u64> = self.forwarded.iter().filter(|(_, w)| w.deadline <= now).map(|(&k, _)| k).collect();
        for id in expired {
            if let Some(write) = self.forwarded.remove(&id) {
                let message =
                    "the write was forwarded to the leader, which did not answer in time; it may have been applied";
                self.answer(write.waiter, Reply::error(ErrorCode::OutcomeUnknown, message));
            }
        }
        let expired: Vec<ReadId> = self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(&k, _)| k).collect();
        for id in expired {
            if let Some(read) = self.reads.remove(&id) {
                self.answer(
                    read.waiter,
                    Reply::error(ErrorCode::Unavailable, "the leader did not confirm the read in time"),
                );
            }
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
        for read in std::mem::take(&mut self.parked_reads) {
            if read.deadline <= now {
                self.answer(read.waiter, Reply::error(ErrorCode::Unavailable, "no leader could be reached in time"));
            } else {
                self.submit_read(read);
            }
        }
    }

    /// Carries out readies until raft-core has nothing more, in the documented order.
    fn process_ready(&mut self) -> Result<(), StorageError> {
        while self.raft.has_ready() {
            let ready = self.raft.ready();
            self.log_status(&ready);
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
            // 4. Apply, keeping the results someone here waits for.
            for entry in &ready.committed {
                let result = self.sm.apply(entry)?;
                if let Some(result) = result {
                    if self.proposed.contains_key(&(entry.term, entry.index)) {
                        self.results.insert(entry.index, result);
                    }
                }
            }
            // 5. Answer clients.
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
                    let Some(write) = self.proposed.remove(&(term, index)) else { continue };
                    let reply = match self.results.remove(&index) {
                        Some(result) => reply_of(result),
                        None => Reply::Results(Vec::new()),
                    };
                    self.answer(write.waiter, reply);
                }
                ProposalOutcome::Lost { term, index } => {
                    // Another entry took the index: this write will never apply. Retry it.
                    let Some(write) = self.proposed.remove(&(term, index)) else { continue };
                    match write.waiter {
                        Waiter::Peer { node, id } => self.send(node, PeerMessage::ForwardRefused { id }),
                        Waiter::Client(_) => self.parked.push(write),
                    }
                }
            }
        }
    }

    fn answer_reads(&mut self, ready: &Ready) {
        for outcome in &ready.reads {
            let Some(read) = self.reads.remove(&outcome.id) else { continue };
            match outcome.result {
                // Step 4 applied at least up to `index`, so the state machine is fresh enough.
                Ok(_index) => {
                    let reply = reply_of(self.sm.query(&read.sql));
                    self.answer(read.waiter, reply);
                }
                Err(_) => self.park_read(read),
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
        // A full queue means the peer is unreachable or slow; Raft retries what matters.
        let _ = self.transport.send(to, msg);
    }

    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        if self.raft.role() == Role::Leader {
            // Hand over leadership so the cluster does not wait an election timeout (§3.10).
            if let Some(&peer) = self.transport.peers().first() {
                info!("shutting down: transferring leadership to node {peer}");
                let _ = self.raft.transfer_leadership(peer);
            }
        }
    }

    fn answer_everyone_on_shutdown(&mut self) {
        let unknown = || Reply::error(ErrorCode::OutcomeUnknown, "the node shut down before the outcome was known");
        let gone = || Reply::error(ErrorCode::Unavailable, "the node shut down");
        for (_, write) in std::mem::take(&mut self.proposed) {
            self.answer(write.waiter, unknown());
        }
        for (_, write) in std::mem::take(&mut self.forwarded) {
            self.answer(write.waiter, unknown());
        }
        for write in std::mem::take(&mut self.parked) {
            self.answer(write.waiter, gone());
        }
        let reads: Vec<Read> =
            self.reads.drain().map(|(_, r)| r).chain(std::mem::take(&mut self.parked_reads)).collect();
        for read in reads {
            self.answer(read.waiter, gone());
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
