//! The leader's clock: heartbeats (§5.2) and CheckQuorum (dissertation §6.2).
//!
//! A leader cut off from a majority cannot commit anything, yet without CheckQuorum it
//! would stay leader forever, and clients talking to it would wait in vain. So once per
//! election timeout the leader checks that a majority (itself included) was heard from;
//! if not, it steps down. Together with the followers' lease (they ignore vote requests
//! while they hear from a leader) this also keeps one flaky node from forcing elections.

use std::collections::BTreeSet;

use crate::node::{Node, RoleState};
use crate::quorum::is_quorum;
use crate::types::NodeId;

impl Node {
    /// A leader's tick.
    pub(crate) fn tick_leader(&mut self) {
        self.tick_transfer();
        let heartbeat_due = {
            let RoleState::Leader(leader) = &mut self.role else { return };
            leader.heartbeat_elapsed += 1;
            leader.heartbeat_elapsed >= self.config.heartbeat_ticks
        };
        if heartbeat_due {
            self.broadcast_heartbeat();
        }
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_active() {
                self.become_follower(self.term, None);
            }
        }
    }

    /// Whether a majority of the voters (the leader itself, if it is one) was heard from
    /// since the last check; resets the marks.
    fn quorum_active(&mut self) -> bool {
        let id = self.id();
        let RoleState::Leader(leader) = &mut self.role else { return false };
        let active: BTreeSet<NodeId> = leader
            .progress
            .iter_mut()
            .filter_map(|(&peer, pr)| std::mem::take(&mut pr.recent_active).then_some(peer))
            .chain([id])
            .collect();
        is_quorum(&self.log.membership().voters, |v| active.contains(&v))
    }
}
