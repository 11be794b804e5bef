//! Membership changes (dissertation chapter 4): servers join and leave while the cluster
//! keeps serving.
//!
//! A configuration says which servers vote and which only learn. It lives in the log, as
//! a [`Payload::Membership`] entry, and at the snapshot point (§7), where the entries
//! that set it may be gone. The rules, each enforced in this file or the one named:
//!
//! 1. A server uses the latest configuration in its log, committed or not (§4.1), from
//!    the moment the entry is appended; a truncation that removes the entry takes the
//!    server back to the one before ([`crate::Log::membership`] keeps track).
//! 2. One voter at a time (§4.1): a change adds or removes at most one voter. Then any
//!    majority of the old voters and any majority of the new ones share a server, so two
//!    leaders can never be elected in one term, even while servers disagree on which of
//!    the two configurations is current. (Changing several voters at once needs the joint
//!    consensus of §4.3; one at a time is simpler, and can do the same in several steps.)
//! 3. A change starts only once the previous one is committed, so no server ever sees
//!    configurations more than one step apart (§4.1).
//! 4. A new leader starts a change only after it has committed an entry of its own term.
//!    Without this, an uncommitted change from an older term and a new leader's change
//!    can each be one step from their common ancestor but two steps from each other, and
//!    a committed entry can be lost (the bug Ongaro reported on raft-dev in 2015; see
//!    `docs/raft-core.md` and the scenario `membership_new_leader_rule`). The leader's
//!    no-op (§8) makes the wait short.
//! 5. New servers join as learners (§4.2.1): they receive the log and snapshots but never
//!    vote, count towards a quorum or campaign. The leader promotes a learner once it is
//!    within [`crate::Config::promote_lag`] entries of the leader's log, so a newcomer
//!    with an empty log never becomes a voter that every commit has to wait for.
//! 6. A leader may remove itself (§4.2.2). It keeps leading while the change is
//!    uncommitted, without counting itself in any majority, then steps down and asks a
//!    caught-up voter to take over at once (TimeoutNow, §3.10).
//! 7. Only voters campaign, and a server that an uncommitted change removes (§4.2.2): it
//!    may be the only one holding that change. (A leader that removed itself, crashed
//!    and restarted, beside a follower that never got the entry, would otherwise wait
//!    forever: the follower needs its vote, and it would never ask.) It counts the votes
//!    of the configuration that removes it. A removed server that never learned of its
//!    removal times out and campaigns too; PreVote (§9.6) and the followers' lease
//!    (§4.2.3) keep it from disrupting the cluster, and its driver stops talking to it.
//!
//! Messages are accepted from servers outside a node's configuration (§4.1): a new voter
//! may campaign before every server has its entry, and a learner hears from a leader
//! before it knows the configuration that added it. Only votes and acknowledgements from
//! members of the current configuration are counted.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::node::{Node, RoleState};
use crate::progress::Progress;
use crate::types::{Entry, Index, NodeId, Payload, Term};

/// A configuration (§4): who votes, who only learns, and how the drivers reach each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The servers whose votes and acknowledgements make majorities.
    pub voters: BTreeSet<NodeId>,
    /// Servers that receive the log but do not vote (§4.2.1), on their way to voting.
    pub learners: BTreeSet<NodeId>,
    /// Each member's addresses, opaque to raft-core: the drivers' way to reach it. The
    /// initial members may have none; their drivers know them from their own config.
    #[serde(default)]
    pub addresses: BTreeMap<NodeId, String>,
}

/// A change an operator asks for. Promotion is not among them: the leader promotes a
/// learner itself once it has caught up (rule 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a new server as a learner, reachable at `address` (opaque to raft-core).
    AddLearner {
        /// The new server.
        id: NodeId,
        /// How drivers reach it.
        address: String,
    },
    /// Remove a voter or a learner.
    Remove {
        /// The server to remove.
        id: NodeId,
    },
}

/// Why a membership change was refused. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeError {
    /// Only the leader appends to the log. `leader` is who to ask, if known.
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The leader is handing over leadership (§3.10).
    TransferInProgress,
    /// Rule 4: this leader has not yet committed an entry of its own term.
    NewLeader,
    /// Rule 3: the change at `index` is not yet committed.
    ChangeInProgress {
        /// The uncommitted configuration entry.
        index: Index,
    },
    /// The change makes no sense for the current configuration.
    Invalid(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::NotLeader { leader: Some(l) } => write!(f, "this node is not the leader; node {l} is"),
            ChangeError::NotLeader { leader: None } => f.write_str("there is no leader right now; try again shortly"),
            ChangeError::TransferInProgress => f.write_str("the leader is handing over leadership; try again shortly"),
            ChangeError::NewLeader => {
                f.write_str("the leader was just elected and has not committed an entry of its term; try again shortly")
            }
            ChangeError::ChangeInProgress { index } => {
                write!(f, "the membership change at index {index} is not committed yet; one change at a time")
            }
            ChangeError::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl Membership {
    /// A configuration of `voters` without addresses: a cluster's initial one.
    pub fn initial(voters: &[NodeId]) -> Membership {
        Membership { voters: voters.iter().copied().collect(), ..Membership::default() }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Voters and learners, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.union(&self.learners).copied()
    }

    /// An upper bound on the configuration's size in JSON, for capping append messages:
    /// `{"voters":[..],"learners":[..],"addresses":{"id":"text",..}}`, each id at most 20
    /// digits and a comma, each address as a JSON string.
    pub fn size(&self) -> usize {
        const ID: usize = 21;
        let lists = ID * (self.voters.len() + self.learners.len());
        let addresses: usize = self.addresses.values().map(|a| ID + 3 + json_string_len(a)).sum();
        48 + lists + addresses
    }

    /// The configuration after `change`, if it makes sense here.
    pub fn with_change(&self, change: &MembershipChange) -> Result<Membership, String> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner { id, address } => {
                if self.is_member(*id) {
                    let role = if self.is_voter(*id) { "a voter" } else { "a learner" };
                    return Err(format!("node {id} is already {role}"));
                }
                next.learners.insert(*id);
                next.addresses.insert(*id, address.clone());
            }
            MembershipChange::Remove { id } => {
                if !self.is_member(*id) {
                    return Err(format!("node {id} is not a member"));
                }
                if self.voters.len() == 1 && self.is_voter(*id) {
                    return Err(format!("node {id} is the last voter; a cluster needs at least one"));
                }
                next.voters.remove(id);
                next.learners.remove(id);
                next.addresses.remove(id);
            }
        }
        Ok(next)
    }

    /// The configuration with learner `id` made a voter (rule 5).
    fn promoted(&self, id: NodeId) -> Membership {
        let mut next = self.clone();
        if next.learners.remove(&id) {
            next.voters.insert(id);
        }
        next
    }

    /// How many voters differ between two configurations (rule 2 allows one).
    pub fn voter_changes(&self, other: &Membership) -> usize {
        self.voters.symmetric_difference(&other.voters).count()
    }
}

/// The most bytes `text` takes as a JSON string: quotes, and escapes for quotes,
/// backslashes and control characters (`\u0001`, 6 bytes, the longest).
fn json_string_len(text: &str) -> usize {
    let escaped = |c: char| match c {
        '"' | '\\' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    };
    2 + text.chars().map(escaped).sum::<usize>()
}

impl std::fmt::Display for Membership {
    /// `voters 1 2 3 learners 4`, as transcripts show it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("voters")?;
        for v in &self.voters {
            write!(f, " {v}")?;
        }
        if !self.learners.is_empty() {
            f.write_str(" learners")?;
            for l in &self.learners {
                write!(f, " {l}")?;
            }
        }
        Ok(())
    }
}

impl Node {
    /// The configuration this node uses: the latest in its log, committed or not (rule 1).
    pub fn membership(&self) -> &Membership {
        self.log.membership()
    }

    /// Whether this node counts itself in majorities: it is a voter.
    pub(crate) fn is_voter(&self) -> bool {
        self.log.membership().is_voter(self.id())
    }

    /// Rule 7: a voter, or a voter that an uncommitted change removes.
    pub(crate) fn may_campaign(&self) -> bool {
        let (id, latest) = (self.id(), self.log.membership_index());
        self.is_voter()
            || !self.log.membership().is_member(id)
                && latest > self.commit_index
                && self.log.membership_at(latest - 1).is_voter(id)
    }

    /// Asks the leader to change the configuration. On success the change is appended and
    /// the returned (term, index) identifies it in [`crate::ProposalOutcome`], like a
    /// proposal; the new configuration is in force at once (rule 1).
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<(Term, Index), ChangeError> {
        self.may_change_membership()?;
        let next = self.log.membership().with_change(&change).map_err(ChangeError::Invalid)?;
        let entry = self.append_membership(next);
        self.proposals.insert((entry.index, entry.term));
        Ok((entry.term, entry.index))
    }

    /// Rules 3 and 4, and no change while leadership is being handed over.
    fn may_change_membership(&self) -> Result<(), ChangeError> {
        let RoleState::Leader(leader) = &self.role else {
            return Err(ChangeError::NotLeader { leader: self.leader });
        };
        if leader.transfer.is_some() {
            return Err(ChangeError::TransferInProgress);
        }
        if self.log.term_at(self.commit_index) != Some(self.term) {
            return Err(ChangeError::NewLeader);
        }
        let index = self.log.membership_index();
        if index > self.commit_index {
            return Err(ChangeError::ChangeInProgress { index });
        }
        Ok(())
    }

    /// Appends a configuration entry as leader and starts or stops replicating to the
    /// servers it adds or removes.
    fn append_membership(&mut self, next: Membership) -> Entry {
        let entry = self.append_as_leader(Payload::Membership(next));
        self.sync_progress();
        entry
    }

    /// A leader replicates to every member but itself: new members get a fresh progress
    /// (they start with a probe). A member the latest change removes keeps receiving the
    /// log until that change commits, so it learns it was removed (it neither votes nor
    /// counts meanwhile); then it is forgotten.
    pub(crate) fn sync_progress(&mut self) {
        let id = self.id();
        let last_index = self.log.last_index();
        let committed = self.log.membership_at(self.commit_index.max(self.log.snapshot().index));
        let members: BTreeSet<NodeId> =
            self.log.membership().members().chain(committed.members()).filter(|&m| m != id).collect();
        let RoleState::Leader(leader) = &mut self.role else { return };
        leader.progress.retain(|peer, _| members.contains(peer));
        for m in members {
            leader.progress.entry(m).or_insert_with(|| Progress::new(last_index));
        }
        if leader.transfer.is_some_and(|(target, _)| !leader.progress.contains_key(&target)) {
            leader.transfer = None;
        }
    }

    /// Rule 5: promote learner `id` once it is in Replicate within `promote_lag` entries
    /// of our log, if a change may start now.
    pub(crate) fn maybe_promote(&mut self, id: NodeId) {
        if !self.log.membership().is_learner(id) || self.may_change_membership().is_err() {
            return;
        }
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &self.role else { return };
        let Some(pr) = leader.progress.get(&id) else { return };
        let caught_up = pr.state == crate::progress::ProgressState::Replicate
            && pr.match_index.saturating_add(self.config.promote_lag) >= last_index;
        if caught_up {
            let next = self.log.membership().promoted(id);
            self.append_membership(next);
        }
    }

    /// After a commit: forget members whose removal committed, promote the first learner
    /// that is ready (a change may have just committed, freeing the way), and rule 6.
    pub(crate) fn after_leader_commit(&mut self) {
        let latest = self.log.membership();
        let removed_still_replicated =
            matches!(&self.role, RoleState::Leader(l) if l.progress.keys().any(|&p| !latest.is_member(p)));
        if removed_still_replicated && self.log.membership_index() <= self.commit_index {
            self.sync_progress();
        }
        let learners: Vec<NodeId> = self.log.membership().learners.iter().copied().collect();
        for learner in learners {
            self.maybe_promote(learner);
        }
        self.step_down_if_removed();
    }

    /// Rule 6: a leader that is no longer a voter leaves once that is committed, handing
    /// over to a voter that holds its whole log, so the cluster need not wait for an
    /// election timeout.
    fn step_down_if_removed(&mut self) {
        if self.is_voter() || self.log.membership_index() > self.commit_index {
            return;
        }
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &self.role else { return };
        let successor = leader
            .progress
            .iter()
            .find(|(&peer, pr)| pr.match_index == last_index && self.log.membership().is_voter(peer))
            .map(|(&peer, _)| peer);
        if let Some(peer) = successor {
            self.send(peer, crate::message::MessageKind::TimeoutNow);
        }
        self.become_follower(self.term, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_adds_a_learner_or_removes_a_member_never_the_last_voter() {
        let m = Membership::initial(&[1, 2]);
        let add = MembershipChange::AddLearner { id: 3, address: "a3".into() };
        let with3 = m.with_change(&add).expect("3 is new");
        assert_eq!(with3.to_string(), "voters 1 2 learners 3");
        assert_eq!(with3.voter_changes(&m), 0, "a learner is no voter");
        assert!(with3.with_change(&add).is_err(), "3 is already a learner");
        let promoted = with3.promoted(3);
        assert_eq!(promoted.to_string(), "voters 1 2 3");
        assert_eq!(promoted.voter_changes(&with3), 1);
        let without1 = promoted.with_change(&MembershipChange::Remove { id: 1 }).expect("1 is a voter");
        assert_eq!(without1.to_string(), "voters 2 3");
        assert!(!without1.addresses.contains_key(&1));
        assert!(without1.with_change(&MembershipChange::Remove { id: 1 }).is_err(), "1 is gone");
        let alone = Membership::initial(&[2]);
        assert!(alone.with_change(&MembershipChange::Remove { id: 2 }).is_err(), "the last voter stays");
    }

    #[test]
    fn refusals_say_why_and_what_to_do() {
        let says = |e: ChangeError, what: &str| assert!(e.to_string().contains(what), "{e}: expected {what:?}");
        says(ChangeError::NotLeader { leader: Some(3) }, "node 3 is");
        says(ChangeError::NotLeader { leader: None }, "no leader");
        says(ChangeError::TransferInProgress, "handing over");
        says(ChangeError::NewLeader, "has not committed an entry of its term");
        says(ChangeError::ChangeInProgress { index: 7 }, "index 7 is not committed");
        says(ChangeError::Invalid("node 4 is not a member".into()), "node 4 is not a member");
    }
}
