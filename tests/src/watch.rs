//! Rules about time and about what a node may claim, checked by watching each node from
//! outside, the way a learner would state them:
//!
//! - Election timer (§5.2): a follower or candidate starts an election only after an
//!   election timeout without hearing from the leader of its term and without granting a
//!   vote, and always within the longest randomized timeout. The timeout is drawn from
//!   `[election_ticks, 2 * election_ticks)`.
//! - Lease (§4.2.3): with CheckQuorum on, a node that heard from a leader less than an
//!   election timeout ago grants no PreVote and no vote for a later term, and does not
//!   even adopt that term. A transfer's vote request (§3.10) passes the lease.
//! - CheckQuorum (§6.2): a leader that has not heard from a majority (itself included)
//!   for two election timeouts has stepped down.
//! - Commit beyond a verified match (Figure 2, AppendEntries rule 5): a follower raises
//!   its commit index only as far as appends of its current term proved its log matches
//!   the leader's. Entries after that point may still be overwritten.
//!
//! Each rule is stated in terms of the messages and ticks a node saw, never in terms of
//! raft-core's internal counters, so a bug in those counters shows up here.

use std::collections::BTreeMap;

use raft_core::{Config, Index, Log, Message, MessageKind, NodeId, Role, Status, Term};

use crate::checker::Violation;

/// What the cluster remembers about one running node; reset when it restarts.
#[derive(Debug, Default)]
pub struct Watch {
    /// Ticks since the node (re)started.
    ticks: u64,
    /// The tick at which the rules say its election timer last restarted.
    quiet_since: u64,
    /// The highest index its log is known to match its leader's, and in which term.
    verified: (Term, Index),
    /// While leader: the tick it became leader.
    leader_since: Option<u64>,
    /// While leader: the last tick each peer was heard from in its term.
    heard: BTreeMap<NodeId, u64>,
}

/// Role, term and leader: a change of any restarts the election timer.
fn soft(status: &Status) -> (Role, Term, Option<NodeId>) {
    (status.role, status.term, status.leader)
}

impl Watch {
    /// Ticks since the election timer last restarted.
    fn quiet(&self) -> u64 {
        self.ticks - self.quiet_since
    }

    /// Whether the lease of §4.2.3 protects `status`'s leader from vote requests.
    fn in_lease(&self, config: &Config, status: &Status) -> bool {
        config.check_quorum
            && (status.role == Role::Leader || status.leader.is_some() && self.quiet() < config.election_ticks)
    }

    /// Restarts the timer on a role, term or leader change; tracks leadership.
    fn settle(&mut self, before: &Status, after: &Status) {
        if soft(before) != soft(after) {
            self.quiet_since = self.ticks;
        }
        if after.role != Role::Leader {
            self.leader_since = None;
            self.heard.clear();
        } else if self.leader_since.is_none() {
            self.leader_since = Some(self.ticks);
        }
    }

    /// The node restarted with `durable` entries on disk. Its timers start afresh, but
    /// what appends proved still holds for the part of its log that was durable: the
    /// leader counted only acknowledged, so durable, entries.
    pub fn restarted(&mut self, durable: Index) {
        let (term, index) = self.verified;
        *self = Watch { verified: (term, index.min(durable)), ..Watch::default() };
    }

    /// Something other than a tick or a message changed the node (a campaign asked for).
    pub fn changed(&mut self, before: &Status, after: &Status) {
        self.settle(before, after);
    }

    /// The node ticked once, going from `before` to `after` and sending `sent`.
    pub fn ticked(
        &mut self,
        config: &Config,
        before: &Status,
        after: &Status,
        sent: &[Message],
    ) -> Result<(), Violation> {
        let id = after.id;
        let et = config.election_ticks;
        self.ticks += 1;
        if before.role != Role::Leader {
            // A new round of (pre-)votes, or a lone node that won at once.
            let started = soft(before) != soft(after)
                || sent.iter().any(|m| matches!(m.kind, MessageKind::PreVote { .. } | MessageKind::Vote { .. }));
            let quiet = self.quiet();
            if started && quiet < et {
                return Err(format!(
                    "Election timer (§5.2): n{id} started an election after {quiet} quiet ticks; the timeout is at least {et}"
                ));
            }
            if !started && quiet >= 2 * et - 1 {
                return Err(format!(
                    "Election timer (§5.2): n{id} has been quiet for {quiet} ticks without starting an election; the randomized timeout is below {}",
                    2 * et
                ));
            }
            if started {
                self.quiet_since = self.ticks;
            }
        } else if after.role == Role::Leader && config.check_quorum {
            let since = self.leader_since.unwrap_or(self.ticks);
            if self.ticks - since >= 2 * et {
                let window = self.ticks - 2 * et;
                let heard = 1 + self.heard.values().filter(|&&t| t >= window).count();
                let quorum = raft_core::quorum::quorum_size(config.voters.len());
                if heard < quorum {
                    return Err(format!(
                        "CheckQuorum (§6.2): n{id} still leads term {} though only {heard} of {} nodes (itself included) were heard from in the last {} ticks",
                        after.term,
                        config.voters.len(),
                        2 * et
                    ));
                }
            }
        }
        self.settle(before, after);
        Ok(())
    }

    /// The node just stepped `msg`, going from `before` to `after`, and its log is now
    /// `log`. Returns whether the lease held when the message arrived, for [`Watch::answered`].
    pub fn stepped(
        &mut self,
        config: &Config,
        msg: &Message,
        before: &Status,
        after: &Status,
        log: &Log,
    ) -> Result<bool, Violation> {
        let id = after.id;
        let in_lease = self.in_lease(config, before);
        if matches!(msg.kind, MessageKind::Vote { transfer: true, .. })
            && msg.term > before.term
            && after.term != msg.term
        {
            return Err(format!(
                "Lease (§3.10): n{id} ignored a transfer's vote request {msg}; transfers pass the lease"
            ));
        }

        // What this append proved about the log: it matches the leader's up to the
        // append's last entry.
        if let MessageKind::Append { prev_index, prev_term, entries, .. } = &msg.kind {
            let proved = log.matches(*prev_index, *prev_term) && entries.iter().all(|e| log.matches(e.index, e.term));
            if msg.term == after.term && after.role != Role::Leader && proved {
                let upto = prev_index + entries.len() as Index;
                let known = if self.verified.0 == after.term { self.verified.1 } else { 0 };
                self.verified = (after.term, known.max(upto));
            }
        }
        if after.role != Role::Leader && after.commit_index > before.commit_index {
            let verified = if self.verified.0 == after.term { self.verified.1 } else { 0 };
            if after.commit_index > verified {
                return Err(format!(
                    "Commit beyond a verified match (Figure 2, AppendEntries rule 5): n{id} raised its commit index from {} to {} on {msg}, but appends of term {} proved its log only up to {verified}",
                    before.commit_index, after.commit_index, after.term
                ));
            }
        }

        // The election timer restarts on a leader's append or heartbeat of the current
        // term (Figure 2, "Rules for Servers", Followers), and on any change of role,
        // term or leader.
        let from_leader = matches!(msg.kind, MessageKind::Append { .. } | MessageKind::Heartbeat { .. })
            && msg.term >= before.term
            && after.role != Role::Leader;
        if from_leader {
            self.quiet_since = self.ticks;
        }
        self.settle(before, after);
        if after.role == Role::Leader && msg.term == after.term {
            self.heard.insert(msg.from, self.ticks);
        }
        Ok(in_lease)
    }

    /// The ready that followed sent `sent` (vote requests and answers only). `in_lease` is
    /// what [`Watch::stepped`] returned for `msg`.
    pub fn answered(
        &mut self,
        config: &Config,
        msg: &Message,
        before: &Status,
        after: &Status,
        in_lease: bool,
        sent: &[Message],
    ) -> Result<(), Violation> {
        let id = after.id;
        let granted = |m: &Message| {
            m.to == msg.from
                && matches!(
                    m.kind,
                    MessageKind::PreVoteResp { granted: true } | MessageKind::VoteResp { granted: true }
                )
        };
        // Lease: vote requests for a later term, other than a transfer's, are refused
        // while a leader is heard from.
        let asks_vote = matches!(msg.kind, MessageKind::PreVote { .. } | MessageKind::Vote { transfer: false, .. });
        if asks_vote && msg.term > before.term && in_lease && (sent.iter().any(granted) || after.term != before.term) {
            return Err(format!(
                "Lease (§4.2.3): n{id} had heard from leader {:?} within the election timeout ({} ticks), yet on {msg} it granted or moved from term {} to {}",
                before.leader, config.election_ticks, before.term, after.term
            ));
        }
        // Granting a vote restarts the election timer (§5.2).
        if matches!(msg.kind, MessageKind::Vote { .. })
            && sent.iter().any(|m| m.to == msg.from && m.kind == MessageKind::VoteResp { granted: true })
        {
            self.quiet_since = self.ticks;
        }
        Ok(())
    }
}
