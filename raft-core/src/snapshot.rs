//! Log compaction and snapshots (§7, Figure 13).
//!
//! A log that only grows would fill memory and disk, and make every restart replay all of
//! history. Once the state machine is durable up to some index, the entries up to it carry
//! nothing the state machine lacks: the log is cut there, and the state machine *is* the
//! snapshot. The cut is remembered as a snapshot point (index and term of the last entry
//! removed), because the consistency check (§5.3) and the election restriction (§5.4.1)
//! still ask about that entry.
//!
//! A follower that needs entries the leader no longer holds is sent the leader's state
//! machine instead (InstallSnapshot). raft-core never touches the bytes: it asks the
//! driver to send them, and the receiving driver steps the message once it has them all
//! (the contract is in [`crate::ready`]). The follower then either already holds the
//! snapshot's last entry (it just commits up to it and applies its own entries), or
//! discards its whole log and installs the snapshot. It never goes back: a snapshot at
//! or below its commit index is acknowledged and ignored.

use crate::message::{AppendResult, MessageKind};
use crate::node::{Node, RoleState};
use crate::ready::ProposalOutcome;
use crate::types::{Index, NodeId, SnapshotMeta};

impl Node {
    /// Log compaction (§7), on the driver's word that the state machine is durable up to
    /// `index` or beyond: the entries up to `index` may go. The new snapshot point is
    /// reported in [`crate::Ready::compacted`] so the driver deletes the durable copies too.
    ///
    /// A driver that keeps a trailing window of entries (so that a follower slightly behind
    /// gets entries rather than a whole snapshot) passes an index below its durable one.
    /// Compacting at or below the current snapshot point changes nothing.
    pub fn compact(&mut self, index: Index) -> Result<(), String> {
        if index > self.applied {
            // Entries not yet applied are not in the state machine: they would be lost.
            return Err(format!("cannot compact up to {index}: only {} is applied", self.applied));
        }
        if let Some(snapshot) = self.log.compact(index) {
            self.ready.compacted = Some(snapshot);
        }
        Ok(())
    }

    /// The driver finished streaming a snapshot up to `index` to follower `to`, after a
    /// [`crate::ready::SnapshotRequest`]: `delivered` if every piece was written, false if
    /// the transfer failed. Replication to `to` resumes (see
    /// [`crate::progress::Progress::snapshot_reported`]).
    pub fn report_snapshot(&mut self, to: NodeId, index: Index, delivered: bool) {
        let commit = self.commit_index;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(pr) = leader.progress.get_mut(&to) else { return };
        // The driver's state machine can hold nothing that is not committed.
        pr.snapshot_reported(index.min(commit), delivered);
    }

    /// Figure 13, InstallSnapshot receiver. The message's term is already settled (rule 1).
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, mut snapshot: SnapshotMeta) {
        if matches!(self.role, RoleState::Leader(_)) {
            // Two leaders in one term is impossible (Election Safety, §5.2).
            return;
        }
        // Like an append, a snapshot is a sign of the leader.
        self.become_follower(self.term, Some(from));
        let accepted = MessageKind::AppendResp(AppendResult::Accepted { match_index: snapshot.index });
        if snapshot.index <= self.commit_index {
            // We already hold this much, committed: installing would move us back.
            return self.send(from, accepted);
        }
        if self.log.matches(snapshot.index, snapshot.term) {
            // Rule 6: our log holds the snapshot's last entry, so by Log Matching everything
            // up to it equals the leader's, and a leader sends only committed state. Commit
            // up to it and apply our own entries; the snapshot itself is not needed.
            self.commit_to(snapshot.index);
            return self.send(from, accepted);
        }
        // Rules 7 and 8: discard the entire log and reset the state machine to the snapshot.
        // Work queued for the old log in this ready is void: the install replaces it.
        if snapshot.membership.voters.is_empty() {
            // A state machine that never applied a configuration holds the initial one.
            snapshot.membership = crate::membership::Membership::initial(&self.config.voters);
        }
        self.log.reset_to(snapshot.clone());
        self.ready.entries.clear();
        self.ready.truncate_from = None;
        self.ready.compacted = None;
        self.ready.install_snapshot = Some(snapshot.clone());
        self.commit_index = snapshot.index;
        self.applied = snapshot.index;
        // Only a leader counts its durable index, and a leader never installs a snapshot.
        self.durable_index = snapshot.index;
        // Proposals we made up to here are inside the snapshot: whether they committed can
        // no longer be known here, since the entries to compare with are gone.
        let later = self.proposals.split_off(&(snapshot.index + 1, 0));
        for (index, term) in std::mem::replace(&mut self.proposals, later) {
            self.ready.proposals.push(ProposalOutcome::Unknown { term, index });
        }
        self.send(from, accepted);
    }
}
