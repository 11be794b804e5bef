//! The [`Node`]: one server's Raft state and the driver-facing API.
//!
//! This file holds the state of Figure 2 and the role transitions that every part of the
//! protocol shares. The protocol itself lives beside it, one concept per file:
//! [`crate::step`] (terms and dispatch), [`crate::election`], [`crate::replication`],
//! [`crate::read_index`], [`crate::transfer`] and [`crate::check_quorum`].

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::log::Log;
use crate::membership::Membership;
use crate::message::{Message, MessageKind, ReadId};
use crate::progress::Progress;
use crate::read_index::{FollowerRead, LeaderRead};
use crate::ready::{ProposalOutcome, Ready, SoftState};
use crate::rng::Rng;
use crate::types::{Entry, HardState, Index, NodeId, Payload, Role, SnapshotMeta, Term, Ticks, MAX_TERM};

/// What a restarting node reads back from durable storage.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// The last durable term and vote.
    pub hard_state: HardState,
    /// The durable snapshot point (§7): where the durable log begins.
    pub snapshot: SnapshotMeta,
    /// The durable log, contiguous from `snapshot.index + 1` (entries at or below the
    /// snapshot point, if any are left, are ignored).
    pub entries: Vec<Entry>,
    /// The last index the state machine applied (the driver stores it with the state
    /// machine). Applied entries were committed, so the node starts with this commit index.
    /// It is at least `snapshot.index`: a log is compacted only up to a durable state.
    pub applied: Index,
}

/// Why a proposal was refused. Nothing was appended; the driver may forward or retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader appends to the log (§5.3). `leader` is who to forward to, if known.
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The leader is handing over leadership and refuses new entries meanwhile (§3.10).
    TransferInProgress,
}

/// A snapshot of a node's state, for status displays and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows of in `term`.
    pub leader: Option<NodeId>,
    /// Who it voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// The highest index known to be committed.
    pub commit_index: Index,
    /// The highest index handed to the driver to apply.
    pub applied_index: Index,
    /// The last index in its log.
    pub last_index: Index,
    /// Where its log begins: entries up to here are compacted into a snapshot (§7).
    pub snapshot_index: Index,
    /// The index of the latest configuration entry (§4.1), or the snapshot point.
    pub membership_index: Index,
}

/// Per-role state. Roles differ only in this and in how they handle ticks and messages.
#[derive(Debug)]
pub(crate) enum RoleState {
    Follower,
    /// Granted pre-votes and rejections by voter, this node included (§9.6).
    PreCandidate {
        votes: BTreeMap<NodeId, bool>,
    },
    /// Granted votes and rejections by voter, this node included (§5.2).
    Candidate {
        votes: BTreeMap<NodeId, bool>,
    },
    Leader(Box<LeaderState>),
}

/// A leader's volatile state (Figure 2, "Volatile state on leaders", and more).
#[derive(Debug)]
pub(crate) struct LeaderState {
    /// Replication progress of every other member, voter or learner.
    pub progress: BTreeMap<NodeId, Progress>,
    /// Ticks since the last heartbeat.
    pub heartbeat_elapsed: Ticks,
    /// New entries wait to be sent at the next [`Node::ready`]: sending once per ready
    /// batches many proposals into one message per follower.
    pub broadcast_pending: bool,
    /// The commit index followers were last sent; a higher one is sent at the next ready.
    pub commit_sent: Index,
    /// The newest ReadIndex round started (§6.4).
    pub read_round: u64,
    /// Reads are waiting for a new round to start at the next [`Node::ready`].
    pub read_round_pending: bool,
    /// Reads waiting for their round to be confirmed by a quorum.
    pub reads: Vec<LeaderRead>,
    /// A leadership transfer in progress: (target, ticks elapsed) (§3.10).
    pub transfer: Option<(NodeId, Ticks)>,
}

/// One Raft server. See the crate docs for the contract with the driver.
#[derive(Debug)]
pub struct Node {
    pub(crate) config: Config,
    // Persistent state on all servers (Figure 2).
    pub(crate) term: Term,
    pub(crate) voted_for: Option<NodeId>,
    pub(crate) log: Log,
    // Volatile state on all servers (Figure 2).
    pub(crate) commit_index: Index,
    /// The last index handed to the driver in `Ready::committed`.
    pub(crate) applied: Index,
    /// The last index the driver confirmed durable; a leader counts itself only up to here.
    pub(crate) durable_index: Index,
    pub(crate) role: RoleState,
    /// The leader of the current term, if known.
    pub(crate) leader: Option<NodeId>,
    /// Ticks since the last sign of a leader (or, on a leader, since the last CheckQuorum).
    pub(crate) election_elapsed: Ticks,
    /// This round's randomized election timeout (§5.2).
    pub(crate) election_timeout: Ticks,
    pub(crate) rng: Rng,
    /// Proposals made on this node that await an outcome, as (index, term). One index
    /// may hold proposals from several of our terms: any one of them may yet commit.
    pub(crate) proposals: BTreeSet<(Index, Term)>,
    /// Linearizable reads requested on this node while a follower.
    pub(crate) follower_reads: Vec<FollowerRead>,
    /// Output accumulated since the last `ready()`.
    pub(crate) ready: Ready,
    /// What the driver was last told, to report only changes.
    last_hard_state: HardState,
    last_soft_state: SoftState,
    /// The term and vote the driver has made durable (`advance`); until they equal
    /// `last_hard_state`, no message may leave early (§10.2.1, see `ready`).
    durable_hard_state: HardState,
}

impl Node {
    /// Creates a node from its config and whatever it persisted before (use
    /// `Restored::default()` for a brand-new node). Fails on an invalid config or a
    /// durable state that cannot be right (e.g. applied beyond the log).
    pub fn new(config: Config, restored: Restored) -> Result<Node, String> {
        config.validate()?;
        if restored.hard_state.term > MAX_TERM {
            return Err(format!(
                "the durable term {} is beyond the highest possible term {MAX_TERM}; this node's Raft state is damaged",
                restored.hard_state.term
            ));
        }
        let mut snapshot = restored.snapshot;
        if snapshot.membership.voters.is_empty() {
            // No configuration was ever recorded: the initial one holds.
            snapshot.membership = Membership::initial(&config.voters);
        }
        let log = Log::restore(snapshot, restored.entries)?;
        if log.last_term() > restored.hard_state.term {
            // Entries come from leaders of terms this node has seen, and the term is made
            // durable before the entries (ready.rs, step 2).
            return Err(format!(
                "the log ends in term {} but the durable term is {}; this node's Raft state is damaged",
                log.last_term(),
                restored.hard_state.term
            ));
        }
        if restored.applied < log.snapshot().index {
            return Err(format!(
                "applied index {} is below the snapshot point {}: the state machine lacks compacted entries",
                restored.applied,
                log.snapshot().index
            ));
        }
        if restored.applied > log.last_index() {
            return Err(format!(
                "applied index {} is beyond the last log index {}",
                restored.applied,
                log.last_index()
            ));
        }
        let hard = restored.hard_state;
        let soft = SoftState { role: Role::Follower, term: hard.term, leader: None };
        let mut node = Node {
            rng: Rng::new(config.seed),
            term: hard.term,
            voted_for: hard.voted_for,
            durable_index: log.last_index(),
            log,
            commit_index: restored.applied,
            applied: restored.applied,
            role: RoleState::Follower,
            leader: None,
            election_elapsed: 0,
            election_timeout: 0,
            proposals: BTreeSet::new(),
            follower_reads: Vec::new(),
            ready: Ready::default(),
            last_hard_state: hard,
            last_soft_state: soft,
            durable_hard_state: hard,
            config,
        };
        node.reset_election_timer();
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The node's current state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id(),
            role: self.role(),
            term: self.term,
            leader: self.leader,
            voted_for: self.voted_for,
            commit_index: self.commit_index,
            applied_index: self.applied,
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot().index,
            membership_index: self.log.membership_index(),
        }
    }

    /// On a leader, the highest index known to be replicated on follower `peer` (its
    /// `matchIndex`, Figure 2); `None` elsewhere. A driver uses it to keep the entries a
    /// follower catching up from a snapshot will need next.
    pub fn match_index(&self, peer: NodeId) -> Option<Index> {
        match &self.role {
            RoleState::Leader(leader) => leader.progress.get(&peer).map(|pr| pr.match_index),
            _ => None,
        }
    }

    /// The in-memory log, for inspection.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The node's role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate { .. } => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// Advances logical time by one tick. Elections and heartbeats happen here.
    pub fn tick(&mut self) {
        if matches!(self.role, RoleState::Leader(_)) {
            self.tick_leader();
        } else {
            self.tick_election();
            self.tick_follower_reads();
        }
    }

    /// Proposes a command. On the leader it is appended to the log and will be sent at
    /// the next [`Node::ready`]; the returned (term, index) identifies it in
    /// [`ProposalOutcome`]. Elsewhere it is refused with the leader to forward to.
    pub fn propose(&mut self, command: Vec<u8>) -> Result<(Term, Index), ProposeError> {
        let RoleState::Leader(leader) = &mut self.role else {
            return Err(ProposeError::NotLeader { leader: self.leader });
        };
        if leader.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let entry = self.append_as_leader(Payload::Command(command));
        self.proposals.insert((entry.index, entry.term));
        Ok((entry.term, entry.index))
    }

    /// Starts an election now, as if the election timeout had elapsed. For tests, and for
    /// operators who want to pick a leader.
    pub fn campaign(&mut self) {
        if !matches!(self.role, RoleState::Leader(_)) {
            self.start_election(false);
        }
    }

    /// Whether [`Node::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
            || self.commit_index > self.applied
            || self.hard_state() != self.last_hard_state
            || self.soft_state() != self.last_soft_state
            || self.reads_servable()
            || match &self.role {
                RoleState::Leader(l) => {
                    l.broadcast_pending || l.read_round_pending || self.commit_index > l.commit_sent
                }
                _ => false,
            }
    }

    /// Takes the accumulated output. Carry it out in the order described in [`Ready`],
    /// then call [`Node::advance`].
    pub fn ready(&mut self) -> Ready {
        self.flush_leader_sends();
        // Committed entries go out exactly once, in order (Figure 2: "If commitIndex >
        // lastApplied: increment lastApplied, apply log[lastApplied] to state machine").
        if self.commit_index > self.applied {
            let entries = self.log.slice(self.applied + 1, self.commit_index);
            for entry in &entries {
                self.resolve_proposals_at(entry);
            }
            self.applied = self.commit_index;
            self.ready.committed.extend(entries);
        }
        self.serve_reads();
        let hard = self.hard_state();
        if hard != self.last_hard_state {
            self.ready.hard_state = Some(hard);
            self.last_hard_state = hard;
        }
        // No message leaves before the term it carries is durable. A leader's messages
        // normally may (§10.2.1): its term was durable before anyone voted for it. A sole
        // voter elects itself in the ready that starts its term, and a driver may take
        // further readies before that write is done; were its appends to reach a learner
        // and the node crash before the term is durable, it could lead that term again
        // with different entries at the same indexes. So until the term is durable, every
        // message waits for its ready's disk write, which follows the earlier ones.
        if self.last_hard_state != self.durable_hard_state {
            let early = std::mem::take(&mut self.ready.messages);
            self.ready.persisted_messages.splice(0..0, early);
        }
        let soft = self.soft_state();
        if soft != self.last_soft_state {
            self.ready.status_change = Some(soft);
            self.last_soft_state = soft;
        }
        debug_assert_eq!(self.check_invariants(), Ok(()));
        std::mem::take(&mut self.ready)
    }

    /// Tells the node that a ready's durable work (step 2) is done. A leader may now count
    /// its own copy of those entries towards a quorum (§10.2.1).
    pub fn advance(&mut self, ready: &Ready) {
        if let Some(hard) = ready.hard_state {
            self.durable_hard_state = hard;
        }
        if let Some(last) = ready.entries.last() {
            // Only if the entry is still in the log: a later truncation may have removed it.
            if self.log.matches(last.index, last.term) {
                self.durable_index = self.durable_index.max(last.index);
            }
        }
        if matches!(self.role, RoleState::Leader(_)) {
            self.maybe_commit();
        }
    }

    // ---- shared helpers -------------------------------------------------------------

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, voted_for: self.voted_for }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role(), term: self.term, leader: self.leader }
    }

    /// The other voters, in id order: who to ask for votes.
    pub(crate) fn other_voters(&self) -> Vec<NodeId> {
        let id = self.id();
        self.log.membership().voters.iter().copied().filter(|&v| v != id).collect()
    }

    /// Every other member, voters and learners, in id order: who receives the log.
    pub(crate) fn other_members(&self) -> Vec<NodeId> {
        let id = self.id();
        self.log.membership().members().filter(|&m| m != id).collect()
    }

    /// Queues a message in the current term.
    pub(crate) fn send(&mut self, to: NodeId, kind: MessageKind) {
        self.send_with_term(to, self.term, kind);
    }

    /// Queues a message. A leader's messages may leave before its disk write (§10.2.1);
    /// everyone else's speak for durable state and wait for it.
    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, kind: MessageKind) {
        let msg = Message { from: self.id(), to, term, kind };
        if matches!(self.role, RoleState::Leader(_)) {
            self.ready.messages.push(msg);
        } else {
            self.ready.persisted_messages.push(msg);
        }
    }

    /// Picks a new randomized election timeout and restarts the count (§5.2).
    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let min = self.config.election_ticks;
        self.election_timeout = self.rng.in_range(min, 2 * min);
    }

    /// Moves to `term` (clearing the vote if it is new) and becomes a follower of `leader`.
    /// Every role change shares this bookkeeping, like etcd's `reset(term)`.
    ///
    /// The election timer restarts only on hearing from a leader (or on leaving
    /// leadership, whose counter meant something else). Figure 2 restarts it on "receiving
    /// AppendEntries RPC from current leader or granting vote to candidate", not on merely
    /// learning a higher term: a candidate whose log is too stale to win must not keep
    /// resetting the timers of the nodes that could win, or without PreVote it can stall
    /// elections for as long as it keeps timing out first (as LogCabin does, unlike etcd).
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was_leader = matches!(self.role, RoleState::Leader(_));
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        if was_leader {
            self.abort_leader_reads();
        }
        if self.leader != leader {
            // Reads forwarded to the old leader may never be answered.
            self.abort_follower_reads();
        }
        self.role = RoleState::Follower;
        self.leader = leader;
        if was_leader || leader.is_some() {
            self.reset_election_timer();
        }
    }

    /// Appends an entry in the leader's term and schedules it to be sent.
    pub(crate) fn append_as_leader(&mut self, payload: Payload) -> Entry {
        let entry = self.log.append(self.term, payload);
        self.ready.entries.push(entry.clone());
        if let RoleState::Leader(leader) = &mut self.role {
            leader.broadcast_pending = true;
        }
        // A single-node cluster commits once the entry is durable (see `advance`).
        entry
    }

    /// Records entries a follower stored. A truncated suffix is gone from this log, so
    /// the durable copy must follow, and a leader must not count our copy of it.
    ///
    /// Our proposals in that suffix are NOT reported lost here: another node may still
    /// hold the entry, become leader and commit it. Only a different entry committed at
    /// the same index proves a proposal lost (see `resolve_proposals_at`).
    pub(crate) fn record_store(&mut self, outcome: crate::log::StoreOutcome) {
        if let Some(from) = outcome.truncated_from {
            self.ready.entries.retain(|e| e.index < from);
            self.ready.truncate_from = Some(self.ready.truncate_from.map_or(from, |t| t.min(from)));
            self.durable_index = self.durable_index.min(from - 1);
        }
        self.ready.entries.extend(outcome.appended);
    }

    /// Reports the fate of our proposals at a newly committed index: committed if the
    /// entry there is ours (same term, so the same entry, by Log Matching), lost if an
    /// entry of another term was committed there (it can never be replaced, §5.4).
    fn resolve_proposals_at(&mut self, entry: &Entry) {
        let index = entry.index;
        let ours: Vec<(Index, Term)> = self.proposals.range((index, 0)..=(index, Term::MAX)).copied().collect();
        for key in ours {
            self.proposals.remove(&key);
            let term = key.1;
            self.ready.proposals.push(if term == entry.term {
                ProposalOutcome::Committed { term, index }
            } else {
                ProposalOutcome::Lost { term, index }
            });
        }
    }

    /// Requests a linearizable read (§6.4). The outcome arrives in [`Ready::reads`].
    pub fn read(&mut self, id: ReadId) {
        self.request_read(id);
    }
}
