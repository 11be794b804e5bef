//! Writes a follower forwarded to its leader, and how it learns their fate even when the
//! leader never answers.
//!
//! A follower forwards a client's write with its current term `t`; the leader proposes it
//! only if it still leads in term `t`, and tags the entry with the write's origin (this
//! node and its request id). Normally the leader's answer arrives and that is that. If the
//! leader dies or is deposed first, the follower's own log settles the question:
//!
//! - The write can only ever be an entry of term `t`, and a log's terms never decrease.
//!   So once this node sees an entry of a term above `t` committed, every entry of term
//!   `t` that will ever commit is already committed, and it has seen them all (committed
//!   entries arrive in order). An origin among them is the write: its result comes from
//!   this node's own apply thread, the same result the leader computed (every replica
//!   applies deterministically). No origin among them proves the write was never
//!   committed, and never will be: it is safe to send it again, to the new leader.
//! - Until then, the write waits for the leader's answer, or its deadline.
//!
//! A client whose leader crashed therefore gets its answer one commit after a new leader
//! is elected, instead of `outcome_unknown` at its deadline.
//!
//! A forward can also be lost on its way while its leader lives on (a connection dropped
//! with the message in it). So a write that waits long for a leader still leading its
//! term is sent again, with the same id; the leader remembers the ids it took in its term
//! ([`Taken`]) and proposes each at most once. A leader's refusal then proves nothing
//! (it may have taken the first copy before it lost its leadership), so only a write sent
//! once is sent elsewhere on a refusal; the log or the deadline settles the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use raft_core::{Entry, Index, NodeId, Payload, Term};
use sqlite_sm::{Origin, WriteCommand};

/// One forwarded write.
struct Forward<W> {
    /// The leader it was sent to: only that node's answer counts.
    leader: NodeId,
    /// Our term when we sent it: the only term the leader may propose it in.
    term: Term,
    /// Where it was found committed in our own log, if it was.
    committed_at: Option<Index>,
    /// When it was last sent.
    sent: Instant,
    /// Whether it was sent more than once.
    resent: bool,
    write: W,
}

/// The forwarded writes waiting for their outcome.
pub struct Forwarded<W> {
    me: NodeId,
    /// By request id, which grows with time: the first is the oldest.
    waiting: BTreeMap<u64, Forward<W>>,
    /// Our request id for each write found committed in our log, by index.
    at: HashMap<Index, u64>,
}

impl<W> Forwarded<W> {
    /// An empty table for node `me`.
    pub fn new(me: NodeId) -> Forwarded<W> {
        Forwarded { me, waiting: BTreeMap::new(), at: HashMap::new() }
    }

    /// Records `write`, sent as request `id` to `leader`, with our current `term`.
    pub fn sent(&mut self, id: u64, leader: NodeId, term: Term, write: W, now: Instant) {
        self.waiting.insert(id, Forward { leader, term, committed_at: None, sent: now, resent: false, write });
    }

    /// The lowest id still waiting, or `next` (the id about to be used) if none: every
    /// request below it is settled, and the leader may forget it.
    pub fn settled_below(&self, next: u64) -> u64 {
        self.waiting.keys().next().map_or(next, |&oldest| oldest.min(next))
    }

    /// Writes sent to `leader` in `term` that have not been seen committed and were last
    /// sent at least `every` ago: due to be sent again (and marked sent `now`).
    pub fn due(&mut self, leader: NodeId, term: Term, now: Instant, every: Duration) -> Vec<u64> {
        let mut due = Vec::new();
        for (&id, forward) in &mut self.waiting {
            let stale = now.saturating_duration_since(forward.sent) >= every;
            if forward.leader == leader && forward.term == term && forward.committed_at.is_none() && stale {
                forward.sent = now;
                forward.resent = true;
                due.push(id);
            }
        }
        due
    }

    /// The write waiting as request `id`.
    pub fn write(&self, id: u64) -> Option<&W> {
        self.waiting.get(&id).map(|forward| &forward.write)
    }

    /// The leader answered request `id` with its outcome. Returns the write if it was
    /// waiting and `from` is the node it was sent to; an answer from any other node is
    /// refused with the node that was asked.
    pub fn answered(&mut self, from: NodeId, id: u64) -> Result<Option<W>, NodeId> {
        match self.waiting.get(&id) {
            Some(forward) if forward.leader != from => Err(forward.leader),
            Some(_) => Ok(self.remove(id)),
            None => Ok(None),
        }
    }

    /// The leader refused request `id`: it did not propose the copy it refused. That
    /// proves the write was never proposed only if there was one copy: a copy sent again
    /// may be refused by a leader that took the first (and lost its leadership since).
    /// Such a write stays, for the log or the deadline to settle. Returns the write if it
    /// may be sent elsewhere.
    pub fn refused(&mut self, from: NodeId, id: u64) -> Result<Option<W>, NodeId> {
        match self.waiting.get(&id) {
            Some(forward) if forward.leader != from => Err(forward.leader),
            Some(forward) if forward.resent || forward.committed_at.is_some() => Ok(None),
            Some(_) => Ok(self.remove(id)),
            None => Ok(None),
        }
    }

    /// Newly committed entries, in log order. Notes where our forwarded writes landed and
    /// returns those provably lost.
    pub fn committed(&mut self, entries: &[Entry]) -> Vec<W> {
        let Some(last) = entries.last() else { return Vec::new() };
        if self.waiting.is_empty() {
            return Vec::new();
        }
        for entry in entries {
            let Payload::Command(bytes) = &entry.payload else { continue };
            let Some(Origin { node, request }) = WriteCommand::origin_of(bytes) else { continue };
            if node != self.me {
                continue;
            }
            if let Some(forward) = self.waiting.get_mut(&request) {
                // Only the leader of the write's term could have proposed it.
                if entry.term == forward.term {
                    forward.committed_at = Some(entry.index);
                    self.at.insert(entry.index, request);
                }
            }
        }
        let lost: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, f)| f.committed_at.is_none() && f.term < last.term)
            .map(|(&id, _)| id)
            .collect();
        lost.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Our apply thread reached `index`: the write committed there, if it still waits.
    pub fn applied(&mut self, index: Index) -> Option<W> {
        let id = self.at.remove(&index)?;
        self.remove(id)
    }

    /// Indexes at or below `index` where a write was found committed.
    pub fn committed_up_to(&self, index: Index) -> Vec<Index> {
        self.at.keys().copied().filter(|&at| at <= index).collect()
    }

    /// Takes every write for which `expired` holds, except those found committed: their
    /// outcome is known and comes with our apply thread's result.
    pub fn expired(&mut self, mut expired: impl FnMut(&W) -> bool) -> Vec<W> {
        let ids: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, f)| f.committed_at.is_none() && expired(&f.write))
            .map(|(&id, _)| id)
            .collect();
        ids.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Takes every write (the node is stopping).
    pub fn drain(&mut self) -> Vec<W> {
        self.at.clear();
        std::mem::take(&mut self.waiting).into_values().map(|forward| forward.write).collect()
    }

    fn remove(&mut self, id: u64) -> Option<W> {
        let forward = self.waiting.remove(&id)?;
        if let Some(at) = forward.committed_at {
            self.at.remove(&at);
        }
        Some(forward.write)
    }
}

/// The leader's half: the forwarded writes it took in its current term, per follower. A
/// copy of one sent again must not be proposed twice.
#[derive(Default)]
pub struct Taken {
    term: Term,
    by_node: HashMap<NodeId, Requests>,
}

/// One follower's requests taken in this term.
#[derive(Default)]
struct Requests {
    /// The follower has settled every request below this: the highest `settled_below` it
    /// sent. Copies arriving late (from an older connection, say) fall below it.
    floor: u64,
    /// Requests at or above the floor taken so far.
    taken: BTreeSet<u64>,
}

impl Taken {
    /// Takes request `id` from `node` in `term`: false if it was taken already, or the
    /// follower has settled it. Forgets that node's requests below `settled_below`.
    pub fn take(&mut self, term: Term, node: NodeId, id: u64, settled_below: u64) -> bool {
        if term != self.term {
            // Ids taken in an earlier term can never be proposed in this one.
            self.term = term;
            self.by_node.clear();
        }
        let requests = self.by_node.entry(node).or_default();
        if settled_below > requests.floor {
            requests.floor = settled_below;
            requests.taken = requests.taken.split_off(&settled_below);
        }
        id >= requests.floor && requests.taken.insert(id)
    }

    /// Gives back request `id` from `node`, refused after all (it was not proposed): a
    /// copy sent again may be taken.
    pub fn release(&mut self, node: NodeId, id: u64) {
        if let Some(requests) = self.by_node.get_mut(&node) {
            requests.taken.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlite_sm::Limits;

    fn command(index: Index, term: Term, origin: Option<(NodeId, u64)>) -> Entry {
        let command = WriteCommand {
            sql: format!("INSERT INTO t VALUES ({index})"),
            time_ms: 0,
            seed: 0,
            limits: Limits::default(),
            origin: origin.map(|(node, request)| Origin { node, request }),
        };
        Entry { index, term, payload: Payload::Command(command.encode()) }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn noop(index: Index, term: Term) -> Entry {
        Entry { index, term, payload: Payload::Noop }
    }

    #[test]
    fn a_write_found_committed_is_answered_by_our_own_apply() {
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", now());
        assert!(table.committed(&[command(10, 3, Some((1, 7)))]).is_empty());
        // A new leader's no-op does not make it lost: it is already committed.
        assert!(table.committed(&[noop(11, 4)]).is_empty());
        assert_eq!(table.committed_up_to(11), vec![10]);
        assert_eq!(table.applied(10), Some("w7"));
        assert_eq!(table.applied(10), None, "answered once");
        assert_eq!(table.answered(0, 7), Ok(None), "the leader's late answer finds nothing waiting");
    }

    #[test]
    fn a_write_missing_when_a_later_term_commits_is_lost() {
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", now());
        table.sent(8, 0, 4, "w8", now());
        // Entries of its own term, none of them the write: it may still come.
        assert!(table.committed(&[command(10, 3, Some((2, 7))), command(11, 3, None)]).is_empty());
        // A term-4 entry commits: term 3 is over, w7 never made it; w8 (term 4) may yet.
        assert_eq!(table.committed(&[noop(12, 4)]), vec!["w7"]);
        assert_eq!(table.committed(&[noop(13, 5)]), vec!["w8"]);
        assert_eq!(table.answered(0, 7), Ok(None));
    }

    #[test]
    fn only_an_entry_of_the_writes_own_term_and_origin_counts() {
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", now());
        // Our request id from another node, or in another term, is not our write.
        let others = [command(10, 3, Some((2, 7))), command(11, 4, Some((1, 7)))];
        assert_eq!(table.committed(&others), vec!["w7"]);
    }

    #[test]
    fn answers_count_only_from_the_node_asked() {
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", now());
        assert_eq!(table.answered(2, 7), Err(0));
        assert_eq!(table.answered(0, 7), Ok(Some("w7")));
        assert_eq!(table.drain(), Vec::<&str>::new());
    }

    #[test]
    fn deadlines_take_only_writes_whose_fate_is_unknown() {
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", now());
        table.sent(8, 0, 3, "w8", now());
        assert!(table.committed(&[command(10, 3, Some((1, 7)))]).is_empty());
        // w7 is committed: its result is on its way from our apply thread.
        assert_eq!(table.expired(|_| true), vec!["w8"]);
        assert_eq!(table.applied(10), Some("w7"));
        table.sent(9, 0, 3, "w9", now());
        assert!(table.committed(&[command(11, 3, Some((1, 9)))]).is_empty());
        assert_eq!(table.drain(), vec!["w9"]);
        assert!(table.committed_up_to(100).is_empty(), "no index left pointing at an answered write");
    }

    #[test]
    fn writes_waiting_on_a_live_leader_are_sent_again_and_taken_once() {
        let start = now();
        let later = start + Duration::from_secs(1);
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", start);
        table.sent(8, 0, 3, "w8", later);
        table.sent(9, 2, 3, "w9", start);
        assert!(table.due(0, 3, later, Duration::from_secs(2)).is_empty(), "not yet");
        assert!(table.due(0, 4, later, Duration::from_secs(1)).is_empty(), "another term: the log will tell");
        assert_eq!(table.due(0, 3, later, Duration::from_secs(1)), vec![7], "w8 is recent, w9 went elsewhere");
        assert!(table.due(0, 3, later, Duration::from_secs(1)).is_empty(), "once per period");
        assert_eq!(table.settled_below(20), 7);

        // The leader takes request 7 once, however many copies arrive.
        let mut taken = Taken::default();
        assert!(taken.take(3, 1, 7, 7));
        assert!(!taken.take(3, 1, 7, 7), "a copy of request 7");
        assert!(taken.take(3, 2, 7, 7), "another node's request 7");
        // Settled requests are forgotten; one below the mark is never taken, even a late
        // copy that carries an older mark.
        assert!(taken.take(3, 1, 8, 8));
        assert!(!taken.take(3, 1, 7, 8));
        assert!(!taken.take(3, 1, 7, 7), "a late copy of a settled request");
        assert_eq!(taken.by_node[&1].taken.len(), 1);
        // A refused request is given back: its copy may be taken.
        taken.release(1, 8);
        assert!(taken.take(3, 1, 8, 8));
        // A new term starts afresh: nothing taken before can be proposed in it.
        assert!(taken.take(4, 1, 8, 8));
    }

    #[test]
    fn a_refusal_proves_nothing_once_a_copy_was_sent_again() {
        let start = now();
        let mut table = Forwarded::new(1);
        table.sent(7, 0, 3, "w7", start);
        table.sent(8, 0, 3, "w8", start);
        table.sent(9, 0, 3, "w9", start);
        assert_eq!(table.refused(2, 9), Err(0), "only the node asked may refuse");
        assert_eq!(table.refused(0, 9), Ok(Some("w9")), "one copy, refused: never proposed");
        assert_eq!(table.due(0, 3, start + Duration::from_secs(1), Duration::from_secs(1)), vec![7, 8]);
        // The leader may have taken the first copy of 7 and refused the second.
        assert_eq!(table.refused(0, 7), Ok(None));
        assert!(table.committed(&[command(10, 3, Some((1, 8)))]).is_empty());
        assert_eq!(table.refused(0, 8), Ok(None), "found committed: a refusal changes nothing");
        // The log settles 7: a later term commits without it.
        assert_eq!(table.committed(&[noop(11, 4)]), vec!["w7"]);
        assert_eq!(table.applied(10), Some("w8"));
    }
}
