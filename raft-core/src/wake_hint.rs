//! Which answers a leader may leave queued until its next turn: a driver's optimisation.
//!
//! Raft tolerates any delay of any message (see [`crate::message`]), so a driver may hold
//! a received message back and step it later. Holding it back is worth it when stepping
//! it changes nothing that anyone waits for: waking a sleeping thread costs more than
//! handling the message on a busy machine. In a steady cluster most answers a leader gets
//! are such:
//! - an acknowledgement that cannot advance the commit index, because a majority already
//!   holds what it acknowledges (in a cluster of three, the second answer to each append);
//! - a heartbeat's answer that can confirm no read (§6.4): while no read waits for a round,
//!   or for a round that a majority already confirmed (the second answer of a cluster of
//!   three). Most heartbeats start no round: a leader also sends one to say a new commit
//!   index, and every heartbeat is answered.
//!
//! Holding such an answer back delays only bookkeeping: the follower's match index and
//! read round, CheckQuorum's record of having heard from it, and the empty append with
//! which a heartbeat's answer from a follower that lacks entries starts its catch-up.
//!
//! A driver that receives messages on other threads can publish [`Node::wake_hint`] after
//! each [`Node::ready`], before sending that ready's messages, and let those threads
//! queue such messages without waking the thread that owns the node. It must step them
//! at the node's next turn, which must come within about a tick (its next tick at the
//! latest): a message held back is then no later than one the network delayed that long,
//! and CheckQuorum (§6.2) still hears from every follower that answers. A stale hint is
//! harmless: the commit index only grows, a read round is announced in the hint before
//! its heartbeats leave, and any other change that makes an answer matter also makes the
//! leader unsteady (it sends an append, or a follower's rejection arrives, neither of
//! which is ever held back), so from then on nothing more is held.

use crate::message::{AppendResult, Message, MessageKind};
use crate::node::{Node, RoleState};
use crate::progress::ProgressState;
use crate::types::{Index, Term};

/// Published by a driver after each ready; see the module docs. The default holds back
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeHint {
    term: Term,
    commit: Index,
    /// A leader with nothing that an answer could move on: every member streamed all of
    /// the log, no transfer, no configuration change under way, no learner to promote.
    steady: bool,
    /// Reads wait for a heartbeat round to be acknowledged.
    reads_waiting: bool,
    /// The newest read round a majority acknowledged (0 until the leader has committed an
    /// entry of its term, when none counts as confirmed, §6.4).
    confirmed_round: u64,
}

impl WakeHint {
    /// Whether `msg` changes nothing urgent at the node that published this hint, so that
    /// it may wait until the node's next turn.
    pub fn may_wait(&self, msg: &Message) -> bool {
        if !self.steady || msg.term != self.term {
            return false;
        }
        match msg.kind {
            // A majority holds the commit index already: this answer cannot raise it.
            MessageKind::AppendResp(AppendResult::Accepted { match_index }) => match_index <= self.commit,
            // It can confirm a read only if one waits for a round beyond those confirmed.
            MessageKind::HeartbeatResp { read_round } => !self.reads_waiting || read_round <= self.confirmed_round,
            _ => false,
        }
    }
}

impl Node {
    /// What this node would not need to be woken for now; see the module docs.
    pub fn wake_hint(&self) -> WakeHint {
        let RoleState::Leader(leader) = &self.role else { return WakeHint::default() };
        let last_index = self.log.last_index();
        let membership = self.log.membership();
        // An answer from a member still being probed, with entries left to send, or that a
        // transfer or a promotion waits for makes the leader act at once: no holding back.
        let steady = leader.transfer.is_none()
            && membership.learners.is_empty()
            && self.log.membership_index() <= self.commit_index
            && leader.progress.values().all(|pr| pr.state == ProgressState::Replicate && pr.next_index > last_index);
        WakeHint {
            term: self.term,
            commit: self.commit_index,
            steady,
            reads_waiting: !leader.reads.is_empty(),
            confirmed_round: self.confirmed_read_round().unwrap_or(0),
        }
    }
}
