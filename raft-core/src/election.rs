//! Leader election (§5.2), with the election restriction (§5.4.1) and PreVote (§9.6).
//!
//! A follower that hears nothing from a leader for its randomized election timeout starts
//! an election. With PreVote it first asks, without changing its term, whether a majority
//! would vote for it; only then does it increment its term, vote for itself and request
//! votes. PreVote keeps a node that was cut off (and so timed out again and again) from
//! forcing a new term on a healthy cluster when it returns.
//!
//! A server grants at most one vote per term, first come first served, and only to a
//! candidate whose log is at least as up-to-date as its own. Both facts must be durable
//! before the vote leaves the node, which the driver guarantees by sending votes from
//! `Ready::persisted_messages` only after persisting `Ready::hard_state`.

use std::collections::BTreeMap;

use crate::message::MessageKind;
use crate::node::{LeaderState, Node, RoleState};
use crate::quorum::{vote_result, VoteResult};
use crate::types::{Index, NodeId, Payload, Term, MAX_TERM};

impl Node {
    /// A non-leader's tick: start an election when the timeout elapses (§5.2).
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        // Learners and removed servers never campaign (§4.2.1, rule 7 of `membership`).
        if self.election_elapsed >= self.election_timeout && self.may_campaign() {
            self.start_election(false);
        }
    }

    /// Whether a leader was heard from within the minimum election timeout; while so, vote
    /// requests are refused (§4.2.3). A leader is itself in lease until CheckQuorum fails.
    pub(crate) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum && self.leader.is_some() && self.election_elapsed < self.config.election_ticks
    }

    /// Starts an election: a PreVote round if configured, else a real one. `transfer`
    /// skips PreVote: the leader asked us to take over (§3.10).
    pub(crate) fn start_election(&mut self, transfer: bool) {
        if !self.may_campaign() {
            // A learner, or a server removed from the configuration (§4.2.1, §4.2.3).
            return self.reset_election_timer();
        }
        if self.term >= MAX_TERM {
            // Unreachable by honest nodes (see MAX_TERM); terms must never overflow.
            self.reset_election_timer();
            let reason = format!("this node's term reached the highest possible term {MAX_TERM}; it cannot campaign");
            return self.refuse(self.id(), self.term, reason);
        }
        if self.config.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    /// §9.6: ask for pre-votes for term + 1 without touching our own term or vote.
    fn become_pre_candidate(&mut self) {
        self.abort_follower_reads();
        self.role = RoleState::PreCandidate { votes: BTreeMap::from([(self.id(), true)]) };
        self.leader = None;
        self.reset_election_timer();
        if self.count_votes() == Some(true) {
            return self.become_candidate(false);
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.other_voters() {
            self.send_with_term(peer, self.term + 1, MessageKind::PreVote { last_index, last_term });
        }
    }

    /// §5.2: "increment currentTerm, vote for self, reset election timer, send
    /// RequestVote RPCs to all other servers".
    fn become_candidate(&mut self, transfer: bool) {
        self.abort_follower_reads();
        self.term += 1;
        self.voted_for = Some(self.id());
        self.role = RoleState::Candidate { votes: BTreeMap::from([(self.id(), true)]) };
        self.leader = None;
        self.reset_election_timer();
        if self.count_votes() == Some(true) {
            return self.become_leader();
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer in self.other_voters() {
            self.send(peer, MessageKind::Vote { last_index, last_term, transfer });
        }
    }

    /// §5.2: a candidate with votes from a majority becomes leader. It appends a no-op in
    /// its own term: committing it commits every earlier entry too (§5.4.2, §8), and until
    /// then the leader does not know its commit index (which ReadIndex relies on, §6.4).
    fn become_leader(&mut self) {
        self.role = RoleState::Leader(Box::new(LeaderState {
            progress: BTreeMap::new(),
            heartbeat_elapsed: 0,
            broadcast_pending: true,
            commit_sent: self.commit_index,
            read_round: 0,
            read_round_pending: false,
            reads: Vec::new(),
            transfer: None,
        }));
        self.leader = Some(self.id());
        self.election_elapsed = 0;
        // Every other member gets the log: learners too (§4.2.1), and a member that an
        // uncommitted change removes (see `membership`).
        self.sync_progress();
        self.append_as_leader(Payload::Noop);
    }

    /// Tallies the current (pre-)vote among the voters of our configuration:
    /// `Some(true)` won, `Some(false)` lost, `None` open.
    fn count_votes(&self) -> Option<bool> {
        let votes = match &self.role {
            RoleState::PreCandidate { votes } | RoleState::Candidate { votes } => votes,
            _ => return None,
        };
        match vote_result(&self.log.membership().voters, votes) {
            VoteResult::Won => Some(true),
            VoteResult::Lost => Some(false),
            VoteResult::Pending => None,
        }
    }

    /// §9.6: grant a pre-vote if we would grant the real vote: the candidate's log is at
    /// least as up-to-date as ours (§5.4.1), we have not heard from a leader recently
    /// (§4.2.3), and its proposed term is ahead of ours (or equal, with our vote free).
    pub(crate) fn handle_pre_vote(&mut self, from: NodeId, term: Term, last_index: Index, last_term: Term) {
        let vote_free = self.voted_for.is_none_or(|v| v == from) && self.leader.is_none();
        let granted =
            (term > self.term || vote_free) && !self.in_leader_lease() && self.log.is_up_to_date(last_index, last_term);
        // A grant echoes the candidate's term; a refusal carries ours, so a candidate that
        // is behind catches up.
        let reply_term = if granted { term } else { self.term };
        self.send_with_term(from, reply_term, MessageKind::PreVoteResp { granted });
    }

    /// Counts a pre-vote; a majority of grants starts the real election.
    pub(crate) fn handle_pre_vote_resp(&mut self, from: NodeId, term: Term, granted: bool) {
        let RoleState::PreCandidate { votes } = &mut self.role else { return };
        // A grant must be for the term we asked about; a refusal arrives in our term.
        let expected = if granted { self.term + 1 } else { self.term };
        if term != expected {
            return;
        }
        votes.insert(from, granted);
        match self.count_votes() {
            Some(true) => self.become_candidate(false),
            Some(false) => self.become_follower(self.term, None),
            None => {}
        }
    }

    /// Figure 2, RequestVote receiver: grant if we have not voted for someone else this
    /// term and the candidate's log is at least as up-to-date as ours (§5.4.1).
    pub(crate) fn handle_vote(&mut self, from: NodeId, last_index: Index, last_term: Term) {
        let granted = self.voted_for.is_none_or(|v| v == from) && self.log.is_up_to_date(last_index, last_term);
        if granted {
            self.voted_for = Some(from);
            // §5.2: granting a vote resets the election timer.
            self.reset_election_timer();
        }
        self.send(from, MessageKind::VoteResp { granted });
    }

    /// Counts a vote; a majority makes us leader, a majority of refusals a follower.
    pub(crate) fn handle_vote_resp(&mut self, from: NodeId, granted: bool) {
        let RoleState::Candidate { votes } = &mut self.role else { return };
        votes.insert(from, granted);
        match self.count_votes() {
            Some(true) => self.become_leader(),
            Some(false) => self.become_follower(self.term, None),
            None => {}
        }
    }

    /// §3.10: the leader asks us to take over, so campaign at once, skipping PreVote.
    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.leader == Some(from) && !matches!(self.role, RoleState::Leader(_)) {
            self.start_election(true);
        }
    }
}
