//! Which answers a leader may leave queued until its next turn, and which heartbeats a
//! follower's driver may answer by itself: a driver's optimisation.
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
//!
//! A follower's part is the mirror image. Most heartbeats it gets bring no new commit
//! index: its only duty then is the answer, which tells the leader that this follower has
//! not moved on to a later term (the leader counts such answers to confirm a read round,
//! §6.4). The driver may send that answer at once, from the hint ([`WakeHint::answer`]),
//! and hand the heartbeat to the node later with [`Node::step_answered`], which records
//! that the leader lives (§5.2) without answering twice. This is safe because the hint is
//! published before the messages of each ready leave. An answer taken from a hint is the
//! one the follower would have given had it stepped the heartbeat when the hint was read:
//! after the heartbeat was sent, and before any vote for a later term left this follower.
//! A leader elected with that vote was elected after the heartbeat's round began, so the
//! round still proves what §6.4 needs: no other leader existed when the reads it confirms
//! arrived. (Stepped then, the heartbeat would also have renewed the follower's lease of
//! §4.2.3, and it might have refused the vote; granting it costs no safety, as that lease
//! only keeps a working leader from being disrupted.) So the driver must send the node's
//! messages only as a ready gives them, each ready's after publishing the hint, and start
//! a restarted node from the default hint, which answers nothing.

use crate::message::{AppendResult, Message, MessageKind};
use crate::node::{Node, RoleState};
use crate::progress::ProgressState;
use crate::types::{Index, NodeId, Term};

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
    /// The node that published the hint.
    id: NodeId,
    /// The leader this node follows, if it is a follower that knows one.
    leader: Option<NodeId>,
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

    /// The answer a follower that published this hint gives `msg`, if the driver may give
    /// it at once and step `msg` later with [`Node::step_answered`]: a heartbeat from its
    /// leader, of its term, that brings no commit index it does not know (that one it must
    /// learn now). See the module docs for why an answer from a stale hint is safe.
    pub fn answer(&self, msg: &Message) -> Option<Message> {
        let MessageKind::Heartbeat { commit, read_round } = msg.kind else { return None };
        let from_leader = self.leader.is_some_and(|leader| leader == msg.from);
        if !from_leader || msg.term != self.term || msg.to != self.id || commit > self.commit {
            return None;
        }
        let kind = MessageKind::HeartbeatResp { read_round };
        Some(Message { from: self.id, to: msg.from, term: self.term, kind })
    }
}

impl Node {
    /// What this node would not need to be woken for now; see the module docs.
    pub fn wake_hint(&self) -> WakeHint {
        let RoleState::Leader(leader) = &self.role else {
            let leader = if matches!(self.role, RoleState::Follower) { self.leader } else { None };
            return WakeHint {
                term: self.term,
                commit: self.commit_index,
                id: self.id(),
                leader,
                ..WakeHint::default()
            };
        };
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
            id: self.id(),
            leader: None,
        }
    }
}
