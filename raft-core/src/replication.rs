//! Log replication (§5.3) and commitment (§5.4.2).
//!
//! The leader sends each follower the entries after the point where their logs match.
//! The follower accepts them only if it holds the entry just before them (the consistency
//! check); otherwise it rejects with a hint and the leader steps back. Once a majority
//! holds an entry of the leader's own term, that entry and all before it are committed.
//!
//! Heartbeats (§5.2) are separate, empty messages: they assert leadership, carry the
//! commit index to followers that are caught up, and confirm leadership for reads (§6.4).

use crate::message::{AppendResult, MessageKind};
use crate::node::{Node, RoleState};
use crate::progress::ProgressState;
use crate::quorum::voters_index;
use crate::types::{Entry, Index, NodeId};

impl Node {
    /// Sends what [`Node::propose`], a commit advance or a new read round left pending.
    /// Called once per ready, so many proposals share one message per follower.
    pub(crate) fn flush_leader_sends(&mut self) {
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &mut self.role else { return };
        let new_entries = std::mem::take(&mut leader.broadcast_pending);
        let new_commit = self.commit_index > leader.commit_sent;
        leader.commit_sent = self.commit_index;
        if std::mem::take(&mut leader.read_round_pending) {
            // Heartbeats start the round and carry the commit index too.
            leader.read_round += 1;
            self.broadcast_heartbeat();
        } else if new_commit && !new_entries {
            // Followers that have everything learn the new commit index from a heartbeat;
            // the others learn it with the entries they still need.
            let caught_up: Vec<NodeId> =
                leader.progress.iter().filter(|(_, pr)| pr.match_index >= last_index).map(|(&p, _)| p).collect();
            for peer in caught_up {
                self.send_heartbeat(peer);
            }
        }
        if new_entries {
            for peer in self.other_members() {
                self.send_append(peer, false);
            }
        }
    }

    /// Sends `peer` the entries it lacks, if its progress allows. A follower in Probe gets
    /// a probe even with nothing new, to find where its log matches ours; so does one in
    /// Replicate if `even_if_empty` (see [`Node::handle_heartbeat_resp`]).
    pub(crate) fn send_append(&mut self, peer: NodeId, even_if_empty: bool) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(pr) = leader.progress.get_mut(&peer) else { return };
        if !pr.can_send() {
            return;
        }
        if pr.state == ProgressState::Replicate && pr.next_index > self.log.last_index() && !even_if_empty {
            return;
        }
        let prev_index = pr.next_index - 1;
        if prev_index < self.log.snapshot().index {
            // §7: what this follower needs next was compacted away: send a snapshot.
            pr.request_snapshot();
            let request = crate::ready::SnapshotRequest { to: peer, term: self.term };
            self.ready.send_snapshots.push(request);
            return;
        }
        let Some(prev_term) = self.log.term_at(prev_index) else { return };
        let entries = self.log.entries_from(pr.next_index, self.config.max_append_bytes);
        pr.sent(entries.last().map_or(prev_index, |e| e.index));
        let commit = self.commit_index;
        self.send(peer, MessageKind::Append { prev_index, prev_term, entries, commit });
    }

    /// Heartbeats to every follower (§5.2), carrying the current read round (§6.4).
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let RoleState::Leader(leader) = &mut self.role else { return };
        leader.heartbeat_elapsed = 0;
        for pr in leader.progress.values_mut() {
            // A probe still unanswered by now was probably lost: allow another.
            pr.probe_sent = false;
        }
        for peer in self.other_members() {
            self.send_heartbeat(peer);
        }
    }

    /// One heartbeat. A follower may commit only what the leader knows it holds, so the
    /// commit index sent is capped by the follower's match index.
    fn send_heartbeat(&mut self, peer: NodeId) {
        let RoleState::Leader(leader) = &self.role else { return };
        let Some(pr) = leader.progress.get(&peer) else { return };
        let commit = self.commit_index.min(pr.match_index);
        let read_round = leader.read_round;
        self.send(peer, MessageKind::Heartbeat { commit, read_round });
    }

    /// Figure 2, AppendEntries receiver.
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Index,
        entries: &[Entry],
        leader_commit: Index,
    ) {
        if matches!(self.role, RoleState::Leader(_)) {
            // Two leaders in one term is impossible (Election Safety, §5.2).
            return;
        }
        // §5.2: a candidate that hears from a leader of its term steps down; every
        // follower restarts its election timer.
        self.become_follower(self.term, Some(from));
        let match_index = prev_index + entries.len() as Index;

        // §7: entries up to our snapshot point are committed and applied here, and a
        // correct leader holds the same ones (Leader Completeness, §5.4). Check only what
        // follows the snapshot point, as if the append had started there.
        let snapshot = self.log.snapshot().clone();
        let (prev_index, prev_term, entries) = if prev_index < snapshot.index {
            let skip = (snapshot.index - prev_index) as usize;
            let Some(at_snapshot) = entries.get(skip - 1) else {
                // Nothing beyond our snapshot: we hold all of it.
                let held = AppendResult::Accepted { match_index };
                return self.send(from, MessageKind::AppendResp(held));
            };
            if at_snapshot.term != snapshot.term {
                let reason = format!(
                    "the append has {}@{} where this node's snapshot, which is committed, ends with {}@{}",
                    at_snapshot.index, at_snapshot.term, snapshot.index, snapshot.term
                );
                return self.refuse(from, self.term, reason);
            }
            (snapshot.index, snapshot.term, &entries[skip..])
        } else {
            (prev_index, prev_term, entries)
        };

        // Receiver rule 2: "Reply false if log doesn't contain an entry at prevLogIndex
        // whose term matches prevLogTerm". The hint lets the leader skip back a whole term
        // at a time instead of one entry per round trip (§5.3).
        if !self.log.matches(prev_index, prev_term) {
            let (hint_index, hint_term) = match self.log.term_at(prev_index) {
                None => (self.log.last_index() + 1, None),
                Some(term) => (self.log.first_index_of_term(term, prev_index), Some(term)),
            };
            let result = AppendResult::Rejected { rejected: prev_index, hint_index, hint_term };
            return self.send(from, MessageKind::AppendResp(result));
        }

        // Leader Completeness (§5.4): every later leader holds every committed entry, so
        // no correct leader asks us to overwrite one. Refuse rather than lose it.
        if let Some(conflict) = self.log.first_conflict(prev_index, entries) {
            if conflict <= self.commit_index {
                let reason = format!("the append would overwrite entry {conflict}, which is committed");
                return self.refuse(from, self.term, reason);
            }
        }

        // Receiver rules 3 and 4: delete conflicting entries, append new ones.
        let outcome = self.log.store(prev_index, entries);
        self.record_store(outcome);

        // Receiver rule 5: commit up to the leader's commit, but only as far as this message
        // proved our log matches the leader's: an unverified tail may still be wrong.
        self.commit_to(leader_commit.min(match_index));
        self.send(from, MessageKind::AppendResp(AppendResult::Accepted { match_index }));
    }

    /// The leader learns how a follower answered an append.
    pub(crate) fn handle_append_resp(&mut self, from: NodeId, result: AppendResult) {
        let last_index = self.log.last_index();
        let log_start = self.log.snapshot().index;
        let RoleState::Leader(leader) = &mut self.role else { return };
        let Some(pr) = leader.progress.get_mut(&from) else { return };
        // A follower answers only appends we sent in this term: it can neither hold nor
        // reject anything beyond the last index we sent it, or than a snapshot could hold.
        let (AppendResult::Accepted { match_index: answered } | AppendResult::Rejected { rejected: answered, .. }) =
            result;
        let sent = pr.answerable(self.commit_index);
        if answered > sent {
            let reason = format!("it answers for index {answered}, but only up to {sent} was sent");
            return self.refuse(from, self.term, reason);
        }
        pr.recent_active = true;
        match result {
            AppendResult::Accepted { match_index } => {
                if !pr.accepted(match_index, log_start) {
                    return;
                }
                if !self.maybe_commit() {
                    self.maybe_promote(from);
                }
                self.maybe_send_timeout_now(from);
            }
            AppendResult::Rejected { rejected, hint_index, hint_term } => {
                let next = match hint_term {
                    // The follower's log ends before `rejected`: continue right after it.
                    None => hint_index,
                    // The follower holds `term` at `rejected`. If we hold that term too, our
                    // logs may agree up to our last entry of it; otherwise skip the follower's
                    // whole term (§5.3). For example:
                    //   index     1 2 3 4 5 6 7 8 9 10
                    //   leader    1 1 1 4 4 5 5 6 6 6
                    //   follower  1 1 1 2 2 2 3 3 3 3    rejects prev 10 with hint 7@3
                    // Our last entry of term <= 3 is index 3, of term 1, not 3: so next is
                    // min(3 + 1, 7) = 4, and the next append (prev 3@1) matches.
                    Some(term) => {
                        let j = self.log.last_index_at_or_below_term(term, rejected.saturating_sub(1));
                        if self.log.term_at(j) == Some(term) {
                            j + 1
                        } else {
                            (j + 1).min(hint_index)
                        }
                    }
                };
                if !pr.rejected(rejected, next.min(last_index + 1)) {
                    return;
                }
            }
        }
        self.send_append(from, false);
    }

    /// A follower handles a heartbeat: the leader lives; commit what it says we hold; and
    /// answer, which confirms the leader's read round (§6.4).
    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: Index, read_round: u64) {
        if self.heed_heartbeat(from, commit) {
            self.send(from, MessageKind::HeartbeatResp { read_round });
        }
    }

    /// A heartbeat's effect on a follower, without the answer; false on a leader, which
    /// ignores it.
    pub(crate) fn heed_heartbeat(&mut self, from: NodeId, commit: Index) -> bool {
        if matches!(self.role, RoleState::Leader(_)) {
            return false;
        }
        self.become_follower(self.term, Some(from));
        self.commit_to(commit.min(self.log.last_index()));
        true
    }

    /// The leader handles a heartbeat answer: note the read round, and if the follower
    /// still lacks entries, send what it lacks. In Replicate that send may be empty: the
    /// follower rejects it if an earlier append was lost, which puts it back in Probe.
    pub(crate) fn handle_heartbeat_resp(&mut self, from: NodeId, read_round: u64) {
        let last_index = self.log.last_index();
        let RoleState::Leader(leader) = &mut self.role else { return };
        if read_round > leader.read_round {
            // Confirming a round not yet started would confirm reads that no quorum saw (§6.4).
            let reason = format!("it acknowledges read round {read_round}, but only {} was started", leader.read_round);
            return self.refuse(from, self.term, reason);
        }
        let Some(pr) = leader.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.read_round = pr.read_round.max(read_round);
        if pr.match_index < last_index {
            self.send_append(from, true);
        }
        // A learner that caught up while a change was pending is promoted once the way is
        // free, even if no new entry comes along (§4.2.1).
        self.maybe_promote(from);
    }

    /// §5.3/§5.4.2: commit the highest index a majority holds, but only if it is from our
    /// own term. Counting replicas of an older term's entry is unsafe: Figure 8 shows such
    /// an entry overwritten after being on a majority. Our own copy counts only once the
    /// driver has made it durable (§10.2.1).
    ///
    /// Only the voters of the current configuration count (§4.1), this leader among them
    /// only while it is one: a leader removing itself commits with the others (§4.2.2).
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let RoleState::Leader(leader) = &self.role else { return false };
        let (id, durable) = (self.id(), self.durable_index);
        let match_of = |v| if v == id { Some(durable) } else { leader.progress.get(&v).map(|p| p.match_index) };
        let index = voters_index(&self.log.membership().voters, match_of);
        if index <= self.commit_index || self.log.term_at(index) != Some(self.term) {
            return false;
        }
        self.commit_to(index);
        self.after_leader_commit();
        true
    }

    /// Raises the commit index; it never moves back.
    pub(crate) fn commit_to(&mut self, index: Index) {
        if index > self.commit_index {
            self.commit_index = index;
        }
    }
}
