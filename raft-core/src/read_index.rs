//! Linearizable reads without writing to the log: ReadIndex (dissertation §6.4).
//!
//! A read must see every write acknowledged before it began. Serving it from the leader's
//! state machine is not enough on its own: a leader cut off from the others may have been
//! replaced and not know it. So the leader:
//! 1. must have committed an entry of its current term (its no-op), so that its commit
//!    index is at least that of any earlier leader;
//! 2. starts a new heartbeat round after the read arrives, and waits until a majority
//!    acknowledges it, which proves no newer leader existed when the read arrived;
//! 3. then serves the read at its commit index, once applied that far.
//!
//! A follower asks the leader for a read index (§6.4.1), waits until it has itself
//! committed and applied that index, and then serves the read from its own copy.
//! Many reads share one heartbeat round: a round starts at the next `ready()`.

use crate::message::{MessageKind, ReadId};
use crate::node::{Node, RoleState};
use crate::quorum::voters_index;
use crate::ready::{ReadError, ReadOutcome};
use crate::types::{Index, NodeId, Ticks};

/// Who asked the leader for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requester {
    /// A client of this node.
    Local(ReadId),
    /// A follower, on behalf of its client.
    Follower(NodeId, ReadId),
}

/// A read waiting at the leader for its heartbeat round to be confirmed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaderRead {
    /// The heartbeat round that must be acknowledged by a majority.
    pub round: u64,
    pub requester: Requester,
}

/// A read requested on a follower, waiting for the leader's read index and then for the
/// follower's own commit index to reach it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FollowerRead {
    pub id: ReadId,
    /// The leader asked; only its answer counts.
    pub leader: NodeId,
    /// The read index from the leader, once it has answered.
    pub index: Option<Index>,
    /// Ticks since the request; an unanswered read is abandoned after a while.
    pub elapsed: Ticks,
}

impl FollowerRead {
    /// §6.4.1: the follower serves the read once it has committed the leader's read
    /// index; its state machine then holds every write acknowledged before the read began.
    fn servable(&self, commit: Index) -> bool {
        self.index.is_some_and(|i| i <= commit)
    }
}

impl Node {
    /// Starts a linearizable read on whatever role this node has.
    pub(crate) fn request_read(&mut self, id: ReadId) {
        if matches!(self.role, RoleState::Leader(_)) {
            return self.queue_leader_read(Requester::Local(id));
        }
        match self.leader {
            Some(leader) => {
                self.follower_reads.push(FollowerRead { id, leader, index: None, elapsed: 0 });
                self.send(leader, MessageKind::ReadIndex { id });
            }
            None => self.ready.reads.push(ReadOutcome { id, result: Err(ReadError::NoLeader) }),
        }
    }

    /// Step 2: the read waits for the next heartbeat round, started at the next ready.
    fn queue_leader_read(&mut self, requester: Requester) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        leader.reads.push(LeaderRead { round: leader.read_round + 1, requester });
        leader.read_round_pending = true;
    }

    /// The leader gets a follower's read request (§6.4.1).
    pub(crate) fn handle_read_index(&mut self, from: NodeId, id: ReadId) {
        if matches!(self.role, RoleState::Leader(_)) {
            self.queue_leader_read(Requester::Follower(from, id));
        } else {
            self.send(from, MessageKind::ReadIndexResp { id, index: None });
        }
    }

    /// A follower gets the leader's answer.
    pub(crate) fn handle_read_index_resp(&mut self, from: NodeId, id: ReadId, index: Option<Index>) {
        let Some(pos) = self.follower_reads.iter().position(|r| r.id == id && r.index.is_none()) else {
            return; // Already answered or abandoned: a duplicate or a late reply.
        };
        if self.follower_reads[pos].leader != from {
            let reason = format!("it answers read {id}, which was sent to node {}", self.follower_reads[pos].leader);
            return self.refuse(from, self.term, reason);
        }
        match index {
            Some(index) => self.follower_reads[pos].index = Some(index),
            None => {
                self.follower_reads.remove(pos);
                self.ready.reads.push(ReadOutcome { id, result: Err(ReadError::Aborted) });
            }
        }
    }

    /// The heartbeat round a majority (this leader included) has acknowledged, if the
    /// leader has committed an entry of its term (step 1); `None` otherwise.
    pub(crate) fn confirmed_read_round(&self) -> Option<u64> {
        let RoleState::Leader(leader) = &self.role else { return None };
        if self.log.term_at(self.commit_index) != Some(self.term) {
            return None;
        }
        // A majority of the voters (this leader, while it is one, §4.2.2).
        let id = self.id();
        let round_of =
            |v| if v == id { Some(leader.read_round) } else { leader.progress.get(&v).map(|p| p.read_round) };
        Some(voters_index(&self.log.membership().voters, round_of))
    }

    /// Whether some read can be answered now.
    pub(crate) fn reads_servable(&self) -> bool {
        match &self.role {
            RoleState::Leader(leader) => {
                let confirmed = self.confirmed_read_round();
                leader.reads.iter().any(|r| confirmed.is_some_and(|c| r.round <= c))
            }
            _ => self.follower_reads.iter().any(|r| r.servable(self.commit_index)),
        }
    }

    /// Answers every read that is now safe (step 3). Called by `ready()` after the
    /// committed entries are taken, so the driver applies them before serving the reads.
    pub(crate) fn serve_reads(&mut self) {
        let commit = self.commit_index;
        if let Some(confirmed) = self.confirmed_read_round() {
            let RoleState::Leader(leader) = &mut self.role else { return };
            let (done, waiting) = leader.reads.drain(..).partition(|r| r.round <= confirmed);
            leader.reads = waiting;
            for read in done {
                match read.requester {
                    Requester::Local(id) => self.ready.reads.push(ReadOutcome { id, result: Ok(commit) }),
                    Requester::Follower(to, id) => {
                        self.send(to, MessageKind::ReadIndexResp { id, index: Some(commit) })
                    }
                }
            }
        }
        let (done, waiting): (Vec<FollowerRead>, _) = self.follower_reads.drain(..).partition(|r| r.servable(commit));
        self.follower_reads = waiting;
        for read in done {
            self.ready.reads.push(ReadOutcome { id: read.id, result: Ok(read.index.unwrap_or(commit)) });
        }
    }

    /// A follower gives up on reads the leader has not answered within two election
    /// timeouts: the request or the answer was probably lost.
    pub(crate) fn tick_follower_reads(&mut self) {
        let limit = 2 * self.config.election_ticks;
        for read in &mut self.follower_reads {
            read.elapsed += 1;
        }
        let (expired, waiting): (Vec<FollowerRead>, _) =
            self.follower_reads.drain(..).partition(|r| r.elapsed >= limit);
        self.follower_reads = waiting;
        for read in expired {
            self.ready.reads.push(ReadOutcome { id: read.id, result: Err(ReadError::Aborted) });
        }
    }

    /// Leadership is lost: no pending read can be confirmed any more.
    pub(crate) fn abort_leader_reads(&mut self) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        for read in std::mem::take(&mut leader.reads) {
            match read.requester {
                Requester::Local(id) => self.ready.reads.push(ReadOutcome { id, result: Err(ReadError::Aborted) }),
                Requester::Follower(to, id) => self.send(to, MessageKind::ReadIndexResp { id, index: None }),
            }
        }
    }

    /// The leader changed: reads sent to the old one may never be answered.
    pub(crate) fn abort_follower_reads(&mut self) {
        for read in std::mem::take(&mut self.follower_reads) {
            self.ready.reads.push(ReadOutcome { id: read.id, result: Err(ReadError::Aborted) });
        }
    }
}
