//! What must hold of one node's state between any two calls, each check named for the
//! rule it guards.
//!
//! The messages a peer sends cannot break these: a message that would (an
//! acknowledgement of entries the leader never sent, an append that would truncate
//! committed entries) is refused before it changes anything ([`crate::refusal`]). So a
//! broken invariant here is a bug in raft-core itself. Debug builds check them after
//! every [`Node::ready`]; the simulator checks them after every step of every run, in
//! every build, and names the rule in its failure.

use crate::node::{Node, RoleState};

impl Node {
    /// Checks this node's state against raft-core's invariants; the first broken one is
    /// returned, named for its rule.
    pub fn check_invariants(&self) -> Result<(), String> {
        let last = self.log.last_index();
        let snapshot = self.log.snapshot().index;
        let broken = |rule: &str| Err(format!("invariant broken: {rule}"));
        // An entry is committed only once it is in the log (Figure 2: commitIndex is the
        // highest log entry known to be committed).
        if self.commit_index > last {
            return broken(&format!("commitIndex {} is beyond the last log index {last}", self.commit_index));
        }
        // Only committed entries are applied (Figure 2, all servers).
        if self.applied > self.commit_index {
            return broken(&format!("lastApplied {} is beyond commitIndex {}", self.applied, self.commit_index));
        }
        // Only applied entries are compacted into the snapshot (§7).
        if snapshot > self.applied {
            return broken(&format!("the snapshot point {snapshot} is beyond lastApplied {}", self.applied));
        }
        // What the driver confirmed durable is still in the log (a truncation lowers it).
        if self.durable_index > last {
            return broken(&format!("the durable index {} is beyond the last log index {last}", self.durable_index));
        }
        // A log holds no entry of a term this node has not reached: entries come from
        // leaders of terms it has seen.
        if self.log.last_term() > self.term {
            return broken(&format!("the log ends in term {}, after currentTerm {}", self.log.last_term(), self.term));
        }
        match &self.role {
            // A candidate and a leader voted for themselves in their term (Figure 2,
            // candidates: "Vote for self").
            RoleState::Candidate { .. } | RoleState::Leader(_) if self.voted_for != Some(self.id()) => {
                broken(&format!("a {} of term {} did not vote for itself", self.role(), self.term))
            }
            RoleState::Leader(leader) => {
                for (id, progress) in &leader.progress {
                    // A follower cannot hold more of the leader's log than the leader
                    // has (Figure 2: matchIndex counts entries replicated from it).
                    if progress.match_index > last {
                        return broken(&format!(
                            "matchIndex {} of node {id} is beyond the leader's last index {last}",
                            progress.match_index
                        ));
                    }
                    // nextIndex is past what is known to match (Figure 2: nextIndex).
                    if progress.next_index <= progress.match_index {
                        return broken(&format!(
                            "nextIndex {} of node {id} is not after its matchIndex {}",
                            progress.next_index, progress.match_index
                        ));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
