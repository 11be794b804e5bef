//! Rules about time and about what a node may claim, checked by watching each node from
//! outside, the way a learner would state them:
//!
//! - Election timer (§5.2): a follower or candidate starts an election only after an
//!   election timeout without hearing from the leader of its term and without granting a
//!   vote, and always within the longest randomized timeout. The timeout is drawn from
//!   `[election_ticks, 2 * election_ticks)`. Adopting a later term from a vote request
//!   does not restart it (Figure 2): only a leader, a granted vote or a new campaign does.
//!   Only a timeout, or the leader's TimeoutNow, starts an election.
//! - Lease (§4.2.3): with CheckQuorum on, a node that heard from a leader less than an
//!   election timeout ago grants no PreVote and no vote for a later term, and does not
//!   even adopt that term; once the lease has run out it treats them as usual. A
//!   transfer's vote request (§3.10) passes the lease.
//! - CheckQuorum (§6.2): a leader that has had no answer from a majority of its voters
//!   (itself included, while a voter) for two election timeouts has stepped down.
//! - Only voters campaign (§4.2.1): a learner, or a server outside its own latest
//!   configuration, never starts an election, unless an uncommitted change removed it
//!   (§4.2.2: it may be needed to commit that change).
//! - Commit beyond a verified match (Figure 2, AppendEntries rule 5): a follower raises
//!   its commit index only as far as appends of its current term proved its log matches
//!   the leader's. Entries after that point may still be overwritten.
//!
//! Each rule is stated in terms of the messages and ticks a node saw, never in terms of
//! raft-core's internal counters, so a bug in those counters shows up here.

use std::collections::BTreeMap;

use raft_core::{Config, Index, Log, Membership, Message, MessageKind, NodeId, Role, Status, Term};

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
    /// The highest index it acknowledged (each once durable), and in which term.
    acked: (Term, Index),
    /// While leader: the tick it became leader.
    leader_since: Option<u64>,
    /// While leader: the last tick each peer answered in its term.
    heard: BTreeMap<NodeId, u64>,
    /// The configuration last seen, and the tick it was first seen at: CheckQuorum
    /// judges a configuration's majority only once it has been in force a whole window.
    membership: Option<(Membership, u64)>,
}

/// What a node's answer to a message must be, worked out when it stepped the message.
#[derive(Clone, Copy, Debug)]
pub enum Expected {
    /// A PreVote for a later term: granted exactly when the lease does not hold and the
    /// candidate's log is at least as up-to-date as ours (§9.6, §4.2.3, §5.4.1).
    PreVote {
        /// Whether it must be granted.
        grant: bool,
        /// Whether the lease held.
        in_lease: bool,
    },
    /// No rule here about the answer.
    Anything,
}

/// Role, term and leader: a change of any restarts the election timer.
fn soft(status: &Status) -> (Role, Term, Option<NodeId>) {
    (status.role, status.term, status.leader)
}

/// `(term, index)` raised to `index` if in the same term, else replaced.
fn raise(mark: (Term, Index), term: Term, index: Index) -> (Term, Index) {
    if mark.0 == term {
        (term, mark.1.max(index))
    } else {
        (term, index)
    }
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

    /// Restarts the timer when a campaign round starts, when leadership is won or lost,
    /// and when a leader becomes known; not when a follower merely adopts a later term
    /// (Figure 2). Tracks leadership.
    fn settle(&mut self, before: &Status, after: &Status) {
        let campaign = matches!(after.role, Role::PreCandidate | Role::Candidate);
        let leadership = (before.role == Role::Leader) != (after.role == Role::Leader);
        let new_leader = after.leader.is_some() && after.leader != before.leader;
        if soft(before) != soft(after) && (campaign || leadership || new_leader) {
            self.quiet_since = self.ticks;
        }
        if after.role != Role::Leader {
            self.leader_since = None;
            self.heard.clear();
        } else if self.leader_since.is_none() {
            self.leader_since = Some(self.ticks);
        }
    }

    /// The node acknowledged entries up to `index` in `term`; its log is durable that far.
    pub fn acknowledged(&mut self, term: Term, index: Index) {
        self.acked = raise(self.acked, term, index);
    }

    /// The node restarted. Its timers start afresh. Of what appends proved, only what it
    /// acknowledged is sure to have survived (acknowledgements leave once durable), and
    /// that is all a leader can have counted.
    pub fn restarted(&mut self) {
        let acked = self.acked;
        *self = Watch { verified: acked, acked, ..Watch::default() };
    }

    /// The node was asked to campaign now: its election timer restarts.
    pub fn campaigned(&mut self, before: &Status, after: &Status) {
        self.quiet_since = self.ticks;
        self.settle(before, after);
    }

    /// The node ticked once, going from `before` to `after` and sending `sent`.
    pub fn ticked(
        &mut self,
        config: &Config,
        membership: &Membership,
        may_campaign: bool,
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
            if started && !may_campaign {
                return Err(format!(
                    "Only voters campaign (§4.2.1): n{id} started an election, but its configuration is {membership}"
                ));
            }
            if started && quiet < et {
                return Err(format!(
                    "Election timer (§5.2): n{id} started an election after {quiet} quiet ticks; the timeout is at least {et}"
                ));
            }
            if !started && quiet >= 2 * et - 1 && may_campaign {
                return Err(format!(
                    "Election timer (§5.2): n{id} has been quiet for {quiet} ticks without starting an election; the randomized timeout is below {}",
                    2 * et
                ));
            }
            if started {
                self.quiet_since = self.ticks;
            }
        } else if after.role == Role::Leader && config.check_quorum {
            if self.membership.as_ref().is_none_or(|(m, _)| m != membership) {
                self.membership = Some((membership.clone(), self.ticks));
            }
            let changed = self.membership.as_ref().map_or(0, |(_, at)| *at);
            let since = self.leader_since.unwrap_or(self.ticks).max(changed);
            if self.ticks - since >= 2 * et {
                let window = self.ticks - 2 * et;
                let answered = |v: &NodeId| *v == id || self.heard.get(v).is_some_and(|&t| t >= window);
                let heard = membership.voters.iter().filter(|v| answered(v)).count();
                let quorum = raft_core::quorum::quorum_size(membership.voters.len());
                if heard < quorum {
                    return Err(format!(
                        "CheckQuorum (§6.2): n{id} still leads term {} though only {heard} of its voters ({membership}) answered in the last {} ticks",
                        after.term,
                        2 * et
                    ));
                }
            }
        }
        self.settle(before, after);
        Ok(())
    }

    /// The node just stepped `msg`, going from `before` to `after`, and its log is now
    /// `log`. Returns what its answer must be, for [`Watch::answered`].
    pub fn stepped(
        &mut self,
        config: &Config,
        msg: &Message,
        before: &Status,
        after: &Status,
        log: &Log,
    ) -> Result<Expected, Violation> {
        let id = after.id;
        let in_lease = self.in_lease(config, before);
        let later = msg.term > before.term;
        // Lease: a vote request for a later term, other than a transfer's, is ignored
        // while a leader is heard from, and handled as usual once the lease has run out.
        if let MessageKind::Vote { transfer, .. } = msg.kind {
            let ignored = after.term == before.term && after.voted_for == before.voted_for;
            if later && !transfer && in_lease && !ignored {
                return Err(format!(
                    "Lease (§4.2.3): n{id} had heard from leader {:?} within the election timeout ({} ticks), yet on {msg} it went from term {} vote {:?} to term {} vote {:?}",
                    before.leader, config.election_ticks, before.term, before.voted_for, after.term, after.voted_for
                ));
            }
            if later && (transfer || !in_lease) && after.term != msg.term {
                let why =
                    if transfer { "transfers pass the lease (§3.10)" } else { "its lease had run out (§4.2.3)" };
                return Err(format!("Lease: n{id} ignored the vote request {msg}, but {why}"));
            }
        }
        // Only a timeout, or the leader's TimeoutNow, starts an election (§5.2, §3.10).
        let campaigning = matches!(after.role, Role::PreCandidate | Role::Candidate);
        if before.role == Role::Follower && campaigning && msg.kind != MessageKind::TimeoutNow {
            return Err(format!("Election timer (§5.2): n{id} started an election on receiving {msg}"));
        }
        let expected = match msg.kind {
            MessageKind::PreVote { last_index, last_term } if later => {
                Expected::PreVote { grant: !in_lease && log.is_up_to_date(last_index, last_term), in_lease }
            }
            _ => Expected::Anything,
        };

        // What this append proved about the log: it matches the leader's up to the
        // append's last entry. Entries before the snapshot point are committed, so they
        // match any leader's (§5.4); a snapshot proves the state up to its last entry.
        let holds = |index: Index, term: Term| index < log.snapshot().index || log.matches(index, term);
        let proved_up_to = match &msg.kind {
            MessageKind::Append { prev_index, prev_term, entries, .. } => {
                let proved = holds(*prev_index, *prev_term) && entries.iter().all(|e| holds(e.index, e.term));
                proved.then_some(prev_index + entries.len() as Index)
            }
            MessageKind::InstallSnapshot { snapshot } => holds(snapshot.index, snapshot.term).then_some(snapshot.index),
            _ => None,
        };
        if let Some(index) = proved_up_to.filter(|_| msg.term == after.term && after.role != Role::Leader) {
            self.verified = raise(self.verified, after.term, index);
        }
        // (A leader that removed itself commits that change as leader, then steps down.)
        if before.role != Role::Leader && after.role != Role::Leader && after.commit_index > before.commit_index {
            let verified = if self.verified.0 == after.term { self.verified.1 } else { 0 };
            if after.commit_index > verified {
                return Err(format!(
                    "Commit beyond a verified match (Figure 2, AppendEntries rule 5): n{id} raised its commit index from {} to {} on {msg}, but appends of term {} proved its log only up to {verified}",
                    before.commit_index, after.commit_index, after.term
                ));
            }
        }

        // The election timer restarts on a leader's append, heartbeat or snapshot of the
        // current term (Figure 2, "Rules for Servers", Followers), and as `settle` says.
        let from_leader = matches!(
            msg.kind,
            MessageKind::Append { .. } | MessageKind::Heartbeat { .. } | MessageKind::InstallSnapshot { .. }
        ) && msg.term >= before.term
            && after.role != Role::Leader;
        if from_leader {
            self.quiet_since = self.ticks;
        }
        self.settle(before, after);
        // CheckQuorum counts answers to the leader's appends and heartbeats.
        let answer = matches!(msg.kind, MessageKind::AppendResp(_) | MessageKind::HeartbeatResp { .. });
        if after.role == Role::Leader && msg.term == after.term && answer {
            self.heard.insert(msg.from, self.ticks);
        }
        Ok(expected)
    }

    /// The ready that followed sent `sent` (vote requests and answers only). `expected`
    /// is what [`Watch::stepped`] returned for `msg`; `alone` says `msg` was the only
    /// message from its sender in the batch, so the answers to that sender are its own.
    pub fn answered(
        &mut self,
        config: &Config,
        msg: &Message,
        before: &Status,
        expected: Expected,
        alone: bool,
        sent: &[Message],
    ) -> Result<(), Violation> {
        if let (Expected::PreVote { grant, in_lease }, true) = (expected, alone) {
            let granted = sent.iter().any(|m| {
                m.to == msg.from && m.term == msg.term && m.kind == MessageKind::PreVoteResp { granted: true }
            });
            if granted != grant {
                let lease = if in_lease { "had heard from a leader within" } else { "had not heard from a leader for" };
                return Err(format!(
                    "Lease (§4.2.3, §9.6): n{} {lease} the election timeout ({} ticks) and {} the PreVote {msg} (its leader {:?}, term {})",
                    before.id,
                    config.election_ticks,
                    if granted { "granted" } else { "refused" },
                    before.leader,
                    before.term
                ));
            }
        }
        // Granting a vote restarts the election timer (§5.2).
        let vote_granted =
            |m: &Message| m.to == msg.from && m.term == msg.term && m.kind == MessageKind::VoteResp { granted: true };
        if matches!(msg.kind, MessageKind::Vote { .. }) && sent.iter().any(vote_granted) {
            self.quiet_since = self.ticks;
        }
        Ok(())
    }
}
