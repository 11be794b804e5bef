//! What a leader knows about each follower (Figure 2, "Volatile state on leaders":
//! `nextIndex[]` and `matchIndex[]`), plus the flow control that decides when to send.
//!
//! A follower is in one of three states, as in etcd's raft:
//! - `Probe`: we do not know where its log matches ours. Send one append, wait for the
//!   answer (or a heartbeat interval), step back on rejection (§5.3).
//! - `Replicate`: its log matches up to `match_index`; stream new entries optimistically,
//!   advancing `next_index` without waiting for acknowledgements.
//! - `Snapshot`: it needs entries we compacted away (§7); our driver is streaming it a
//!   snapshot. Send no appends until the driver reports the stream ended; then probe from
//!   just after the snapshot, or wait for its acknowledgement, which means Replicate.

use crate::types::Index;

/// How the leader is replicating to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Finding the point where the follower's log matches ours.
    Probe,
    /// Streaming entries after a known match.
    Replicate,
    /// A snapshot is on its way; no appends until it is reported sent.
    Snapshot,
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be replicated on the follower (Figure 2 `matchIndex`).
    pub match_index: Index,
    /// The index of the next entry to send (Figure 2 `nextIndex`).
    pub next_index: Index,
    /// Probe or replicate.
    pub state: ProgressState,
    /// In `Probe`, an append is outstanding: wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// The highest index sent to the follower in this term (the last entry of an append,
    /// or its `prev_index` if empty). No correct follower answers for anything beyond it.
    pub sent_up_to: Index,
    /// The newest read round (§6.4) the follower has acknowledged.
    pub read_round: u64,
    /// Heard from since the last CheckQuorum (§6.2).
    pub recent_active: bool,
    /// A snapshot was requested for this follower in this term. Our driver sends the state
    /// machine as far as it has applied, so the follower may answer for anything up to
    /// our commit index, beyond `sent_up_to`, even after we left the Snapshot state.
    pub snapshot_requested: bool,
}

impl Progress {
    /// A fresh leader knows nothing: "initialized to leader last log index + 1" (Figure 2).
    pub fn new(last_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            sent_up_to: 0,
            read_round: 0,
            recent_active: false,
            snapshot_requested: false,
        }
    }

    /// Whether the leader may send an append now.
    pub fn can_send(&self) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => true,
            ProgressState::Snapshot => false,
        }
    }

    /// The follower needs a snapshot: the driver starts one transfer, and only one.
    pub fn request_snapshot(&mut self) {
        self.state = ProgressState::Snapshot;
        self.snapshot_requested = true;
    }

    /// The highest index the follower may answer for (see `sent_up_to`), given our
    /// commit index.
    pub fn answerable(&self, commit_index: Index) -> Index {
        if self.snapshot_requested {
            self.sent_up_to.max(commit_index)
        } else {
            self.sent_up_to
        }
    }

    /// The driver finished streaming a snapshot up to `index`, `delivered` or not. Either
    /// way the follower may hold it, so answers up to `index` become plausible. Then probe:
    /// after the snapshot if it was delivered, else from where we were, which asks for a
    /// new snapshot. Both wait for the follower's answer or the next heartbeat, so a lost
    /// transfer is retried once per heartbeat interval, not in a tight loop.
    pub fn snapshot_reported(&mut self, index: Index, delivered: bool) {
        self.sent_up_to = self.sent_up_to.max(index);
        if self.state != ProgressState::Snapshot {
            return;
        }
        if delivered {
            self.next_index = self.next_index.max(index + 1);
        }
        self.state = ProgressState::Probe;
        self.probe_sent = true;
    }

    /// Records that entries up to `last_sent` are on their way.
    pub fn sent(&mut self, last_sent: Index) {
        self.sent_up_to = self.sent_up_to.max(last_sent);
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => self.next_index = self.next_index.max(last_sent + 1),
            // No append is sent while a snapshot is on its way (see `can_send`).
            ProgressState::Snapshot => {}
        }
    }

    /// The follower accepted entries up to `match_index`. Returns whether that is news;
    /// a duplicated or reordered acknowledgement changes nothing. `log_start` is our
    /// snapshot point: a follower waiting for a snapshot leaves that state only once it
    /// holds up to there, so that entries can follow (else it waits for the transfer).
    pub fn accepted(&mut self, match_index: Index, log_start: Index) -> bool {
        let news =
            match_index > self.match_index || (match_index == self.match_index && self.state == ProgressState::Probe);
        if !news {
            return false;
        }
        self.match_index = match_index;
        self.sent_up_to = self.sent_up_to.max(match_index);
        self.next_index = self.next_index.max(match_index + 1);
        if self.state != ProgressState::Snapshot || match_index >= log_start {
            self.state = ProgressState::Replicate;
            self.probe_sent = false;
        }
        true
    }

    /// The follower rejected an append whose `prev_index` was `rejected`; step back to
    /// `next_index` (which the caller computed from the hint, §5.3). Returns whether the
    /// rejection was current; rejections of older messages are ignored, since they say
    /// nothing about where we are now.
    pub fn rejected(&mut self, rejected: Index, next_index: Index) -> bool {
        let current = match self.state {
            // In Replicate we sent from past match_index; only a rejection above it is news.
            ProgressState::Replicate => rejected > self.match_index,
            // In Probe only one append is outstanding, for next_index - 1.
            ProgressState::Probe => rejected + 1 == self.next_index,
            // While a snapshot is on its way, no append is outstanding.
            ProgressState::Snapshot => false,
        };
        if !current {
            return false;
        }
        // Never step back past what the follower is known to hold, nor forward.
        self.next_index = next_index.clamp(self.match_index + 1, rejected.max(self.match_index + 1));
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_acks_and_rejects_are_ignored() {
        let mut p = Progress::new(10);
        assert!(p.rejected(10, 5));
        assert_eq!(p.next_index, 5);
        // A duplicate of the same rejection no longer matches next_index - 1.
        assert!(!p.rejected(10, 3));
        assert!(p.accepted(6, 0));
        assert_eq!(p.state, ProgressState::Replicate);
        assert!(!p.accepted(4, 0), "reordered older ack");
        assert_eq!(p.match_index, 6);
        assert!(!p.rejected(5, 1), "rejection at or below match is stale");
    }

    #[test]
    fn answers_move_the_follower_between_probe_and_replicate_and_never_back_in_time() {
        let mut p = Progress::new(10);
        assert!(p.accepted(6, 0));
        assert!(!p.accepted(6, 0), "a duplicate ack in Replicate is no news");
        assert!(!p.rejected(6, 3), "a rejection at or below match is stale");
        assert_eq!((p.state, p.match_index), (ProgressState::Replicate, 6));
        // A lost append: the follower rejects 8, and we probe from 7.
        assert!(p.rejected(8, 7));
        assert_eq!((p.state, p.next_index), (ProgressState::Probe, 7));
        assert!(!p.accepted(4, 0), "an older ack never lowers match");
        assert_eq!(p.match_index, 6);
        // No honest follower rejects the index it acknowledged; it changes nothing.
        assert!(p.rejected(6, 2));
        assert_eq!((p.state, p.match_index, p.next_index), (ProgressState::Probe, 6, 7));
        // The probe (prev 6) is accepted at the match we knew: that is the news that
        // lets us stream again.
        assert!(p.accepted(6, 0));
        assert_eq!((p.state, p.match_index, p.next_index), (ProgressState::Replicate, 6, 7));
    }

    #[test]
    fn a_follower_waiting_for_a_snapshot_gets_nothing_until_the_transfer_ends() {
        // Our log starts after 50; the follower holds up to 10, and rejected our probe.
        let mut p = Progress::new(80);
        assert!(p.rejected(80, 11));
        p.request_snapshot();
        assert!(!p.can_send(), "one transfer at a time, and no appends meanwhile");
        assert_eq!(p.answerable(70), 70, "the snapshot may hold anything committed");
        // A late answer to an old append does not end the wait: entries cannot follow it.
        assert!(p.accepted(10, 50));
        assert_eq!((p.state, p.match_index), (ProgressState::Snapshot, 10));
        // The transfer of 60 ends, delivered: probe right after it, once the follower
        // answers or a heartbeat passes.
        p.snapshot_reported(60, true);
        assert_eq!((p.state, p.next_index, p.probe_sent), (ProgressState::Probe, 61, true));
        assert!(p.sent_up_to >= 60);
    }

    #[test]
    fn a_failed_transfer_is_retried_from_where_the_follower_was() {
        let mut p = Progress::new(80);
        p.accepted(10, 0);
        p.rejected(30, 11);
        p.request_snapshot();
        p.snapshot_reported(60, false);
        assert_eq!((p.state, p.next_index, p.probe_sent), (ProgressState::Probe, 11, true));
        // An acknowledgement at or past our log's start ends the wait at once.
        let mut q = Progress::new(80);
        assert!(q.rejected(80, 1));
        q.request_snapshot();
        assert!(q.accepted(60, 50));
        assert_eq!((q.state, q.next_index), (ProgressState::Replicate, 61));
    }

    #[test]
    fn probe_sends_one_at_a_time_replicate_streams() {
        let mut p = Progress::new(3);
        assert!(p.can_send());
        p.sent(3);
        assert!(!p.can_send());
        p.accepted(3, 0);
        p.sent(7);
        assert!(p.can_send());
        assert_eq!(p.next_index, 8);
    }
}
