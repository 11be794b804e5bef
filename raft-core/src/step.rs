//! Every message enters through [`Node::step`], which settles terms first and only then
//! hands the message to the handler for its kind, as in etcd's raft.
//!
//! The term rules (Figure 2, "Rules for Servers", "All Servers"):
//! - A message from a higher term means we are behind: adopt the term and become a
//!   follower before handling it. Two exceptions keep elections from being disrupted:
//!   a PreVote and its grant change no term (§9.6), and a vote request that reaches a
//!   node which recently heard from a leader is ignored (the lease of §4.2.3).
//! - A message from a lower term is stale: requests get a reply carrying our term so the
//!   sender learns it is behind; stale responses are dropped.

use crate::message::{AppendResult, Message, MessageKind};
use crate::node::Node;

impl Node {
    /// Handles a message from another node. A message that no correct peer could send
    /// (misaddressed, from a stranger, from an impossible term; see [`crate::refusal`]) is
    /// dropped without effect and reported in [`crate::Ready::refused`].
    pub fn step(&mut self, msg: Message) {
        if let Err(reason) = self.check_message(&msg) {
            return self.refuse(msg.from, msg.term, reason);
        }
        if msg.term > self.term {
            match msg.kind {
                // §9.6: a PreVote asks about a future term; answering changes nothing.
                MessageKind::PreVote { .. } | MessageKind::PreVoteResp { granted: true } => {}
                // §4.2.3: while we hear from a leader, a vote request comes from a server
                // that is merely cut off; ignoring it keeps it from deposing a working
                // leader. A transfer (§3.10) was asked for by the leader, so it passes.
                MessageKind::Vote { transfer: false, .. } if self.in_leader_lease() => return,
                // A leader's messages carry its term: follow it.
                MessageKind::Append { .. }
                | MessageKind::Heartbeat { .. }
                | MessageKind::TimeoutNow
                | MessageKind::InstallSnapshot { .. } => {
                    self.become_follower(msg.term, Some(msg.from));
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            self.reply_to_stale(&msg);
            return;
        }

        match msg.kind {
            MessageKind::PreVote { last_index, last_term } => {
                self.handle_pre_vote(msg.from, msg.term, last_index, last_term)
            }
            MessageKind::PreVoteResp { granted } => self.handle_pre_vote_resp(msg.from, msg.term, granted),
            MessageKind::Vote { last_index, last_term, .. } => self.handle_vote(msg.from, last_index, last_term),
            MessageKind::VoteResp { granted } => self.handle_vote_resp(msg.from, granted),
            MessageKind::Append { prev_index, prev_term, entries, commit } => {
                self.handle_append(msg.from, prev_index, prev_term, &entries, commit)
            }
            MessageKind::AppendResp(result) => self.handle_append_resp(msg.from, result),
            MessageKind::Heartbeat { commit, read_round } => self.handle_heartbeat(msg.from, commit, read_round),
            MessageKind::HeartbeatResp { read_round } => self.handle_heartbeat_resp(msg.from, read_round),
            MessageKind::ReadIndex { id } => self.handle_read_index(msg.from, id),
            MessageKind::ReadIndexResp { id, index } => self.handle_read_index_resp(msg.from, id, index),
            MessageKind::TimeoutNow => self.handle_timeout_now(msg.from),
            MessageKind::InstallSnapshot { snapshot } => self.handle_install_snapshot(msg.from, snapshot),
        }
    }

    /// Steps a heartbeat that the driver has already answered from this node's hint
    /// ([`crate::WakeHint::answer`]): it has the effect [`Node::step`] would (the leader
    /// lives, §5.2), but no second answer is sent. Anything else, or a heartbeat whose term
    /// has passed since, is stepped as usual.
    pub fn step_answered(&mut self, msg: Message) {
        match msg.kind {
            MessageKind::Heartbeat { commit, .. } if msg.term == self.term && self.check_message(&msg).is_ok() => {
                self.heed_heartbeat(msg.from, commit);
            }
            _ => self.step(msg),
        }
    }

    /// Answers a request from an older term with our term, so a stale leader or candidate
    /// steps down (Figure 2: "Reply false if term < currentTerm").
    fn reply_to_stale(&mut self, msg: &Message) {
        let reply = match msg.kind {
            MessageKind::PreVote { .. } => MessageKind::PreVoteResp { granted: false },
            MessageKind::Vote { .. } => MessageKind::VoteResp { granted: false },
            MessageKind::Append { prev_index, .. } => MessageKind::AppendResp(AppendResult::Rejected {
                rejected: prev_index,
                hint_index: prev_index,
                hint_term: None,
            }),
            MessageKind::InstallSnapshot { ref snapshot } => MessageKind::AppendResp(AppendResult::Rejected {
                rejected: snapshot.index,
                hint_index: snapshot.index,
                hint_term: None,
            }),
            MessageKind::Heartbeat { .. } => MessageKind::HeartbeatResp { read_round: 0 },
            MessageKind::ReadIndex { id } => MessageKind::ReadIndexResp { id, index: None },
            // Responses and TimeoutNow from an old term need no answer.
            _ => return,
        };
        self.send(msg.from, reply);
    }
}
