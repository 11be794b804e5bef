//! Leadership transfer (dissertation §3.10), for maintenance and clean shutdown.
//!
//! 1. The leader stops accepting proposals, so the target can catch up.
//! 2. It brings the target's log up to date with ordinary appends.
//! 3. It sends TimeoutNow; the target starts an election at once, skipping PreVote, and
//!    its vote requests are marked so that followers' leases do not refuse them.
//! 4. If the target has not taken over within an election timeout, the leader gives up
//!    and accepts proposals again.

use crate::message::MessageKind;
use crate::node::{Node, RoleState};
use crate::types::NodeId;

/// Why a transfer could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferError {
    /// Only a leader can hand over leadership.
    NotLeader,
    /// The target is this node or not a voter (a learner cannot lead, §4.2.1).
    InvalidTarget,
}

impl Node {
    /// Asks this leader to hand leadership to `target`. Watch `Ready::status_change` for
    /// the result; proposals are refused meanwhile.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        let RoleState::Leader(leader) = &mut self.role else {
            return Err(TransferError::NotLeader);
        };
        if !leader.progress.contains_key(&target) || !self.log.membership().is_voter(target) {
            return Err(TransferError::InvalidTarget);
        }
        leader.transfer = Some((target, 0));
        self.maybe_send_timeout_now(target);
        // Step 2. Sent even if we believe nothing is missing: if an earlier append was
        // lost, the target's rejection reveals it now rather than at the next heartbeat.
        self.send_append(target, true);
        Ok(())
    }

    /// Step 3, once the target holds our whole log.
    pub(crate) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &self.role else { return };
        let caught_up = leader.progress.get(&peer).is_some_and(|p| p.match_index == last_index);
        if leader.transfer.is_some_and(|(target, _)| target == peer) && caught_up {
            self.send(peer, MessageKind::TimeoutNow);
        }
    }

    /// Step 4: abandon a transfer that has taken longer than an election timeout.
    pub(crate) fn tick_transfer(&mut self) {
        let election_ticks = self.config.election_ticks;
        let RoleState::Leader(leader) = &mut self.role else { return };
        if let Some((target, elapsed)) = leader.transfer {
            leader.transfer = (elapsed + 1 < election_ticks).then_some((target, elapsed + 1));
        }
    }
}
