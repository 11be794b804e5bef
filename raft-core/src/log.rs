//! The replicated log (§5.3), held in memory. The driver keeps the durable copy: every
//! change made here is also reported in [`crate::Ready`] (entries to append, a suffix to
//! truncate) so the driver can repeat it on disk.
//!
//! Two properties make the log trustworthy (§5.3, "Log Matching"):
//! 1. Two entries in different logs with the same index and term carry the same command,
//!    because a leader creates at most one entry per index in its term.
//! 2. If two logs hold an entry with the same index and term, they are identical up to it,
//!    because AppendEntries refuses entries whose predecessor does not match.

use crate::membership::Membership;
use crate::types::{Entry, Index, Payload, SnapshotMeta, Term, MAX_TERM};

/// The in-memory log: a snapshot point (§7) followed by contiguous entries.
///
/// Everything up to `snapshot.index` has been compacted into the state machine's snapshot
/// and is gone from here; the entries that remain are `snapshot.index + 1 ..= last_index`.
/// Every method speaks in absolute indexes, so the offset between an index and a position
/// in `entries` never leaves this file.
///
/// The log also knows its latest configuration (§4.1): the last membership entry, or the
/// snapshot's. Every change to the log keeps `membership_index` pointing at it.
#[derive(Clone, Debug, Default)]
pub struct Log {
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
    /// Where the latest configuration is: a membership entry, or the snapshot point.
    membership_index: Index,
}

/// What [`Log::store`] changed, for the node to report as durable work.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoreOutcome {
    /// A conflicting suffix starting here was removed (§5.3, Figure 2 receiver rule 3).
    pub truncated_from: Option<Index>,
    /// The entries newly added to the log.
    pub appended: Vec<Entry>,
}

impl Log {
    /// Rebuilds a log from durable entries. They must be contiguous from index 1.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Log, String> {
        Log::restore(SnapshotMeta::default(), entries)
    }

    /// Rebuilds a log from a durable snapshot point and the entries after it. Entries at or
    /// below the snapshot point are skipped (a driver may delete compacted rows lazily),
    /// but one at the snapshot point itself must carry the snapshot's term.
    pub fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Result<Log, String> {
        if snapshot.term > MAX_TERM {
            return Err(format!("the snapshot's term {} is beyond the highest possible term", snapshot.term));
        }
        let mut kept = Vec::with_capacity(entries.len());
        let mut prev_term = snapshot.term;
        for e in entries {
            if e.index == snapshot.index && e.term != snapshot.term {
                return Err(format!(
                    "log entry {} has term {}, but the snapshot ends there with term {}",
                    e.index, e.term, snapshot.term
                ));
            }
            if e.index <= snapshot.index {
                continue;
            }
            let expected = snapshot.index + 1 + kept.len() as Index;
            if e.index != expected {
                return Err(format!("log entry {} found where entry {expected} was expected", e.index));
            }
            if e.term < prev_term {
                return Err(format!("log entry {} has term {} below its predecessor's", e.index, e.term));
            }
            if e.term > MAX_TERM {
                return Err(format!("log entry {} has term {}, beyond the highest possible term", e.index, e.term));
            }
            if let Payload::Membership(m) = &e.payload {
                if m.voters.is_empty() {
                    return Err(format!("log entry {} is a configuration without voters", e.index));
                }
            }
            prev_term = e.term;
            kept.push(e);
        }
        let mut log = Log { snapshot, entries: kept, membership_index: 0 };
        log.find_membership();
        Ok(log)
    }

    /// The snapshot point: the entries up to it are compacted away.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The latest configuration in the log, committed or not (§4.1): the one every rule
    /// that counts votes or acknowledgements uses.
    pub fn membership(&self) -> &Membership {
        self.membership_at(self.last_index())
    }

    /// The index of the entry that set the latest configuration, or the snapshot point.
    pub fn membership_index(&self) -> Index {
        self.membership_index
    }

    /// The configuration in effect at `index` (at or after the snapshot point): the last
    /// membership entry at or before it, else the snapshot's.
    pub fn membership_at(&self, index: Index) -> &Membership {
        let mut i = index.min(self.last_index()).min(self.membership_index);
        while i > self.snapshot.index {
            if let Some(Entry { payload: Payload::Membership(m), .. }) = self.entry(i) {
                return m;
            }
            i -= 1;
        }
        &self.snapshot.membership
    }

    /// Points `membership_index` at the last membership entry, after the log's tail changed.
    fn find_membership(&mut self) {
        self.membership_index = self.snapshot.index;
        for e in self.entries.iter().rev() {
            if matches!(e.payload, Payload::Membership(_)) {
                self.membership_index = e.index;
                break;
            }
        }
    }

    /// The first index still held as an entry.
    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    /// The index of the last entry, or the snapshot's if no entry follows it (0 if neither).
    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    /// The term of the last entry, or the snapshot's if no entry follows it.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term of the entry at `index`; the snapshot's term at the snapshot point (`Some(0)`
    /// at index 0); `None` before it (compacted) or past the end.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// Whether `index` lies at or before the snapshot point, so its entry is gone.
    pub fn is_compacted(&self, index: Index) -> bool {
        index <= self.snapshot.index
    }

    /// The entry at `index`, if the log has one.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        let pos = usize::try_from(index.checked_sub(self.first_index())?).ok()?;
        self.entries.get(pos)
    }

    /// Whether the log holds an entry at `index` with `term`: the AppendEntries
    /// consistency check (§5.3).
    pub fn matches(&self, index: Index, term: Term) -> bool {
        self.term_at(index) == Some(term)
    }

    /// Entries from `from` on, as many as fit in `max_bytes` (but at least one).
    pub fn entries_from(&self, from: Index, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = from.max(self.first_index());
        while let Some(e) = self.entry(index) {
            bytes += e.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            index += 1;
        }
        out
    }

    /// Entries in `from..=to` that the log still holds, for applying committed entries.
    pub fn slice(&self, from: Index, to: Index) -> Vec<Entry> {
        (from.max(self.first_index())..=to).filter_map(|i| self.entry(i).cloned()).collect()
    }

    /// A leader appends a new entry in its term (§5.3: "the leader appends the command to
    /// its log as a new entry"). Returns the new entry.
    pub fn append(&mut self, term: Term, payload: Payload) -> Entry {
        let entry = Entry { index: self.last_index() + 1, term, payload };
        if matches!(entry.payload, Payload::Membership(_)) {
            self.membership_index = entry.index;
        }
        self.entries.push(entry.clone());
        entry
    }

    /// A follower stores entries sent by the leader after `prev_index`, which the caller
    /// has already checked matches (Figure 2, AppendEntries receiver rules 3 and 4):
    /// an existing entry that conflicts with a new one (same index, different term) is
    /// deleted with all that follow it; entries already present are left alone, so a
    /// delayed or duplicated message never truncates entries a newer message added.
    /// Entries at or before the snapshot point are committed and already applied; they
    /// are skipped.
    pub fn store(&mut self, prev_index: Index, entries: &[Entry]) -> StoreOutcome {
        let mut outcome = StoreOutcome::default();
        for (offset, entry) in entries.iter().enumerate() {
            let index = prev_index + 1 + offset as Index;
            if self.is_compacted(index) {
                continue;
            }
            match self.term_at(index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    self.entries.truncate((index - self.first_index()) as usize);
                    outcome.truncated_from = Some(index);
                }
                None => {}
            }
            let mut entry = entry.clone();
            entry.index = index;
            self.entries.push(entry.clone());
            outcome.appended.push(entry);
        }
        // A truncation may have removed the latest configuration, and new entries may
        // bring one: either way the latest is found again (§4.1).
        let new_membership = outcome.appended.iter().any(|e| matches!(e.payload, Payload::Membership(_)));
        if new_membership || outcome.truncated_from.is_some_and(|from| from <= self.membership_index) {
            self.find_membership();
        }
        outcome
    }

    /// The first index at which `entries` (to be stored after `prev_index`) conflict with
    /// this log: same index, different term. `store` would truncate from there.
    pub fn first_conflict(&self, prev_index: Index, entries: &[Entry]) -> Option<Index> {
        (prev_index + 1..)
            .zip(entries)
            .find(|(index, entry)| self.term_at(*index).is_some_and(|term| term != entry.term))
            .map(|(index, _)| index)
    }

    /// Log compaction (§7): the state machine holds everything up to `index`, so the
    /// entries up to it may go. The snapshot point moves there, keeping that entry's term.
    /// Returns the new snapshot point, or `None` if `index` is not inside the log.
    pub fn compact(&mut self, index: Index) -> Option<SnapshotMeta> {
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        let term = self.term_at(index)?;
        // The snapshot keeps the configuration in effect at its point, whose entry may go.
        let membership = self.membership_at(index).clone();
        self.entries.drain(..(index - self.snapshot.index) as usize);
        self.snapshot = SnapshotMeta { index, term, membership };
        self.membership_index = self.membership_index.max(index);
        Some(self.snapshot.clone())
    }

    /// Replaces the whole log with a snapshot point and no entries (Figure 13, receiver
    /// rule 7: "discard the entire log"), for a snapshot installed from the leader.
    pub fn reset_to(&mut self, snapshot: SnapshotMeta) {
        self.entries.clear();
        self.membership_index = snapshot.index;
        self.snapshot = snapshot;
    }

    /// The election restriction (§5.4.1): a log is at least as up-to-date as ours if its
    /// last term is higher, or the same with a last index at least as high.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The first index holding `term`, searching back from `from` (for rejection hints).
    /// Stops at the snapshot point, whose term is known but whose predecessors' are not.
    pub fn first_index_of_term(&self, term: Term, from: Index) -> Index {
        let mut index = from;
        while index > self.first_index() && self.term_at(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    /// The last index holding `term` or an earlier term, at or below `from`; with it a
    /// leader skips a follower's whole conflicting term in one step (§5.3). Stops at the
    /// snapshot point: below it no term is known.
    pub fn last_index_at_or_below_term(&self, term: Term, from: Index) -> Index {
        let mut index = from.min(self.last_index());
        while index > self.snapshot.index && self.term_at(index).is_some_and(|t| t > term) {
            index -= 1;
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(terms: &[Term]) -> Log {
        let mut log = Log::default();
        for &t in terms {
            log.append(t, Payload::Noop);
        }
        log
    }

    fn entries(first: Index, terms: &[Term]) -> Vec<Entry> {
        let payload = Payload::Command(b"x".to_vec());
        terms
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry { index: first + i as Index, term, payload: payload.clone() })
            .collect()
    }

    #[test]
    fn store_truncates_only_on_conflict() {
        let mut log = log_of(&[1, 1, 2, 2]);
        // A duplicate of entries already held changes nothing.
        let out = log.store(1, &log.slice(2, 3));
        assert_eq!(out, StoreOutcome::default());
        assert_eq!(log.last_index(), 4);
        // A conflict at index 3 removes 3 and 4, then appends.
        let out = log.store(2, &entries(3, &[3]));
        assert_eq!(out.truncated_from, Some(3));
        assert_eq!(out.appended.len(), 1);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.last_term(), 3);
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(1, 3), "higher last term wins even if shorter");
        assert!(log.is_up_to_date(3, 2), "same term, same length");
        assert!(!log.is_up_to_date(2, 2), "same term, shorter");
        assert!(!log.is_up_to_date(9, 1), "lower last term loses even if longer");
    }

    #[test]
    fn hint_helpers_skip_whole_terms() {
        let log = log_of(&[1, 1, 4, 4, 4, 5]);
        assert_eq!(log.first_index_of_term(4, 5), 3);
        assert_eq!(log.last_index_at_or_below_term(3, 6), 2);
        assert_eq!(log.last_index_at_or_below_term(4, 9), 5);
    }

    #[test]
    fn from_entries_rejects_gaps() {
        assert!(Log::from_entries(entries(2, &[1])).is_err());
        assert!(Log::from_entries(entries(1, &[2, 1])).is_err());
        assert!(Log::from_entries(entries(1, &[1, 1])).is_ok());
    }

    #[test]
    fn entries_from_respects_byte_cap_but_sends_at_least_one() {
        let log = log_of(&[1, 1, 1, 1]);
        assert_eq!(log.entries_from(1, 0).len(), 1);
        let noop = log.entry(1).map_or(0, Entry::size);
        assert_eq!(log.entries_from(1, 2 * noop).len(), 2);
        assert_eq!(log.entries_from(3, usize::MAX).len(), 2);
        assert!(log.entries_from(5, usize::MAX).is_empty());
    }
}
