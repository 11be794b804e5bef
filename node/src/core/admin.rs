//! Operators' commands: `.cluster`, `.add`, `.remove` and `.transfer` (dissertation
//! chapter 4, §3.10). The leader carries them out; a follower passes its client's command
//! to the leader and the answer back. raft-core allows one membership change at a time,
//! and only once a new leader has committed an entry of its term; a command that comes
//! too early is refused with that reason, and the operator tries again.
//!
//! A change is answered once its configuration entry is committed. An added node joins
//! as a learner, and the leader promotes it once its log has caught up; `.cluster` shows
//! the role. The transport follows the configuration ([`Core::sync_peers`]): new members
//! are dialed, removed ones are refused at the handshake.

use std::time::Instant;

use raft_core::{ChangeError, MembershipChange, NodeId, ProposalOutcome, Role, SoftState, TransferError};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::Core;
use crate::members::{self, Address};
use crate::protocol::{AdminCommand, AdminOk, AdminResult, ClusterReport, ErrorCode, MemberReport, PeerMessage};

/// Who waits for a command's answer.
pub(crate) enum AdminWaiter {
    /// A client session on this node.
    Client(oneshot::Sender<AdminResult>),
    /// A follower that passed on its client's command.
    Peer { node: NodeId, id: u64 },
}

/// A command waiting for its outcome.
pub(crate) struct Pending {
    pub waiter: AdminWaiter,
    pub deadline: Instant,
    /// What was asked, for the answer.
    pub what: String,
}

/// A leadership transfer waiting for the target to take over.
pub(crate) struct Handover {
    pub target: NodeId,
    pub pending: Pending,
}

fn unavailable(message: impl Into<String>) -> AdminResult {
    Err((ErrorCode::Unavailable, message.into()))
}

impl Core {
    /// A command from a client of ours (`Client`) or from a follower (`Peer`).
    pub(crate) fn admin(&mut self, command: AdminCommand, waiter: AdminWaiter) {
        if self.stopping.is_some() {
            return self.answer_admin(waiter, unavailable("the node is shutting down"));
        }
        if self.raft.role() == Role::Leader {
            return self.carry_out(command, waiter);
        }
        let AdminWaiter::Client(reply) = waiter else {
            // A follower thought we lead (leadership just moved, say): its client retries.
            let leader = match self.raft.status().leader {
                Some(l) => format!(" (node {l} is)"),
                None => String::new(),
            };
            let message = format!("node {} is no longer the leader{leader}; try again", self.id);
            return self.answer_admin(waiter, unavailable(message));
        };
        let leader = self.raft.status().leader.filter(|&l| l != self.id);
        let Some(leader) = leader.filter(|&l| self.transport.is_connected(l)) else {
            let _ = reply.send(unavailable("no leader is reachable right now; try again shortly"));
            return;
        };
        let id = self.fresh_id();
        if self.transport.send(leader, PeerMessage::Admin { id, command }).is_err() {
            let _ = reply.send(unavailable(format!("the leader (node {leader}) could not be reached; try again")));
            return;
        }
        self.admin_forwarded.insert(id, (leader, reply, Instant::now() + self.config.timeout));
    }

    /// The leader's answer to a command we passed on.
    pub(crate) fn admin_answered(&mut self, from: NodeId, id: u64, result: AdminResult) {
        match self.admin_forwarded.remove(&id) {
            Some((leader, reply, _)) if leader == from => {
                let _ = reply.send(result);
            }
            Some(entry) => {
                warn!("node {from} answered command {id}, which was sent to node {}; ignored", entry.0);
                self.admin_forwarded.insert(id, entry);
            }
            None => {}
        }
    }

    /// As leader: does what `command` asks, or proposes the change and waits for it.
    fn carry_out(&mut self, command: AdminCommand, waiter: AdminWaiter) {
        let deadline = Instant::now() + self.config.timeout;
        let (change, what) = match command {
            AdminCommand::Cluster => {
                let report = self.cluster_report();
                return self.answer_admin(waiter, Ok(AdminOk::Cluster(report)));
            }
            AdminCommand::Transfer { node } => return self.start_transfer(node, waiter, deadline),
            AdminCommand::Add { node, rpc, client } => {
                let directory = members::directory(self.raft.membership(), &self.known);
                match members::check_add(node, &rpc, &client, &directory) {
                    Ok(address) => {
                        let what = format!("node {node} added as a learner; it becomes a voter once it has caught up");
                        (MembershipChange::AddLearner { id: node, address: address.encode() }, what)
                    }
                    Err(e) => return self.answer_admin(waiter, Err((ErrorCode::BadRequest, e))),
                }
            }
            AdminCommand::Remove { node } => {
                (MembershipChange::Remove { id: node }, format!("node {node} removed from the cluster"))
            }
        };
        match self.raft.propose_membership(change) {
            Ok(key) => {
                info!("proposed a membership change at index {}: {what}", key.1);
                self.changes.insert(key, Pending { waiter, deadline, what });
            }
            Err(ChangeError::Invalid(reason)) => self.answer_admin(waiter, Err((ErrorCode::BadRequest, reason))),
            Err(e) => self.answer_admin(waiter, unavailable(e.to_string())),
        }
    }

    fn start_transfer(&mut self, node: NodeId, waiter: AdminWaiter, deadline: Instant) {
        if node == self.id {
            let term = self.raft.status().term;
            return self.answer_admin(waiter, Ok(AdminOk::Done(format!("node {node} already leads term {term}"))));
        }
        if self.handover.is_some() {
            return self.answer_admin(waiter, unavailable("a leadership transfer is already under way"));
        }
        match self.raft.transfer_leadership(node) {
            Ok(()) => {
                let what = format!("node {node} now leads");
                self.handover = Some(Handover { target: node, pending: Pending { waiter, deadline, what } });
            }
            Err(TransferError::InvalidTarget) => {
                let message = format!("node {node} is not a voter of the cluster (see .cluster)");
                self.answer_admin(waiter, Err((ErrorCode::BadRequest, message)));
            }
            Err(TransferError::NotLeader) => {
                self.answer_admin(waiter, unavailable("this node is no longer the leader"))
            }
        }
    }

    /// The fate of a configuration entry we proposed; false if `outcome` is not one.
    pub(crate) fn change_outcome(&mut self, outcome: &ProposalOutcome) -> bool {
        let (term, index) = match *outcome {
            ProposalOutcome::Committed { term, index }
            | ProposalOutcome::Lost { term, index }
            | ProposalOutcome::Unknown { term, index } => (term, index),
        };
        let Some(pending) = self.changes.remove(&(term, index)) else { return false };
        let result = match outcome {
            ProposalOutcome::Committed { .. } => Ok(AdminOk::Done(pending.what)),
            ProposalOutcome::Lost { .. } => unavailable("leadership changed before the change committed; try again"),
            ProposalOutcome::Unknown { .. } => Err((
                ErrorCode::OutcomeUnknown,
                "this node installed a snapshot covering the change; see .cluster".to_string(),
            )),
        };
        self.answer_admin(pending.waiter, result);
        true
    }

    /// Role, term or leader changed: a transfer under way may have succeeded.
    pub(crate) fn transfer_progress(&mut self, soft: &SoftState) {
        let done = self.handover.as_ref().is_some_and(|h| soft.leader == Some(h.target));
        if done {
            if let Some(h) = self.handover.take() {
                let what = format!("{} (term {})", h.pending.what, soft.term);
                self.answer_admin(h.pending.waiter, Ok(AdminOk::Done(what)));
            }
        }
    }

    /// Commands past their deadline.
    pub(crate) fn expire_admin(&mut self, now: Instant) {
        let late: Vec<_> = self.changes.iter().filter(|(_, p)| p.deadline <= now).map(|(&k, _)| k).collect();
        for key in late {
            if let Some(p) = self.changes.remove(&key) {
                let message = "the change was proposed but not committed in time; it may still be (see .cluster)";
                self.answer_admin(p.waiter, Err((ErrorCode::OutcomeUnknown, message.to_string())));
            }
        }
        if self.handover.as_ref().is_some_and(|h| h.pending.deadline <= now) {
            if let Some(h) = self.handover.take() {
                let message = format!("node {} did not take over in time (see .status)", h.target);
                self.answer_admin(h.pending.waiter, unavailable(message));
            }
        }
        let late: Vec<u64> = self.admin_forwarded.iter().filter(|(_, e)| e.2 <= now).map(|(&id, _)| id).collect();
        for id in late {
            if let Some((leader, reply, _)) = self.admin_forwarded.remove(&id) {
                let message =
                    format!("the leader (node {leader}) did not answer in time; the command may have taken effect");
                let _ = reply.send(Err((ErrorCode::OutcomeUnknown, message)));
            }
        }
    }

    /// Shutting down: everyone waiting is told.
    pub(crate) fn answer_admin_on_shutdown(&mut self) {
        let pending: Vec<Pending> =
            self.changes.drain().map(|(_, p)| p).chain(self.handover.take().map(|h| h.pending)).collect();
        for p in pending {
            let message = "the node shut down before the outcome was known".to_string();
            self.answer_admin(p.waiter, Err((ErrorCode::OutcomeUnknown, message)));
        }
        for (_, (_, reply, _)) in self.admin_forwarded.drain() {
            let _ = reply.send(Err((ErrorCode::OutcomeUnknown, "the node shut down".to_string())));
        }
    }

    fn answer_admin(&mut self, waiter: AdminWaiter, result: AdminResult) {
        match waiter {
            AdminWaiter::Client(reply) => {
                let _ = reply.send(result);
            }
            AdminWaiter::Peer { node, id } => self.send(node, PeerMessage::AdminReply { id, result }),
        }
    }

    /// The members as this leader sees them.
    fn cluster_report(&self) -> ClusterReport {
        let status = self.raft.status();
        let membership = self.raft.membership();
        let directory = members::directory(membership, &self.known);
        let now = Instant::now();
        let members = membership
            .members()
            .map(|node| {
                let me = node == self.id;
                let match_index = if me { status.last_index } else { self.raft.match_index(node).unwrap_or(0) };
                let address = directory.get(&node);
                MemberReport {
                    node,
                    role: if membership.is_voter(node) { "voter" } else { "learner" }.to_string(),
                    leader: me,
                    rpc: address.map(|a| a.rpc.to_string()),
                    client: address.map(|a| a.client.to_string()),
                    match_index,
                    lag: status.last_index.saturating_sub(match_index),
                    last_contact_ms: (!me)
                        .then(|| self.last_heard.get(&node).map(|t| now.duration_since(*t).as_millis() as u64))
                        .flatten(),
                }
            })
            .collect();
        ClusterReport { leader: self.id, term: status.term, last_index: status.last_index, members }
    }

    /// Points the transport at the members of the latest configuration, once it changed.
    pub(crate) fn sync_peers(&mut self) {
        let status = self.raft.status();
        let index = status.membership_index;
        // While a change is pending, the configuration in force at the commit index keeps
        // the nodes it removes as peers (see `members::peers`); it is looked up again as
        // the commit index moves.
        let seen = (index, index.min(status.commit_index));
        if self.membership_seen == Some(seen) {
            return;
        }
        let membership = self.raft.membership();
        let committed = self.raft.log().membership_at(seen.1.max(status.snapshot_index));
        let (peers, open) = members::peers(self.id, membership, committed, &self.known);
        let role = match (membership.is_voter(self.id), membership.is_learner(self.id)) {
            (true, _) => "a voter",
            (_, true) => "a learner",
            _ => "not a member",
        };
        if self.membership_seen.is_none_or(|(i, _)| i != index) {
            info!("configuration at index {index}: {membership}; this node is {role}");
        }
        self.transport.set_peers(peers, open);
        self.membership_seen = Some(seen);
    }

    /// Addresses learned from outside the log (a join asked a member for them).
    pub(crate) fn learned(&mut self, addresses: std::collections::BTreeMap<NodeId, Address>) {
        for (node, address) in addresses {
            self.known.entry(node).or_insert(address);
        }
        self.membership_seen = None;
        self.sync_peers();
    }
}
