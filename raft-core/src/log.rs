//! The replicated log (§5.3), held in memory. The driver keeps the durable copy: every
//! change made here is also reported in [`crate::Ready`] (entries to append, a suffix to
//! truncate) so the driver can repeat it on disk.
//!
//! Two properties make the log trustworthy (§5.3, "Log Matching"):
//! 1. Two entries in different logs with the same index and term carry the same command,
//!    because a leader creates at most one entry per index in its term.
//! 2. If two logs hold an entry with the same index and term, they are identical up to it,
//!    because AppendEntries refuses entries whose predecessor does not match.

use crate::types::{Entry, Index, Payload, Term, MAX_TERM};

/// The in-memory log. Entries are contiguous, starting at index 1.
///
/// Log compaction (§7) will add a snapshot point: entries up to `snapshot_index` replaced
/// by a snapshot. The accessors below already speak in absolute indexes so that change
/// stays inside this file.
#[derive(Clone, Debug, Default)]
pub struct Log {
    entries: Vec<Entry>,
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
        for (i, e) in entries.iter().enumerate() {
            let expected = i as Index + 1;
            if e.index != expected {
                return Err(format!("log entry at position {i} has index {}, expected {expected}", e.index));
            }
            if i > 0 && e.term < entries[i - 1].term {
                return Err(format!("log entry {} has term {} below its predecessor's", e.index, e.term));
            }
            if e.term > MAX_TERM {
                return Err(format!("log entry {} has term {}, beyond the highest possible term", e.index, e.term));
            }
        }
        Ok(Log { entries })
    }

    /// The index of the last entry, 0 if the log is empty.
    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(0, |e| e.index)
    }

    /// The term of the last entry, 0 if the log is empty.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// The term of the entry at `index`; `Some(0)` for index 0, `None` past the end.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if the log has one.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        let pos = usize::try_from(index.checked_sub(1)?).ok()?;
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
        let mut index = from.max(1);
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

    /// Entries in `from..=to`, for applying committed entries.
    pub fn slice(&self, from: Index, to: Index) -> Vec<Entry> {
        (from.max(1)..=to).filter_map(|i| self.entry(i).cloned()).collect()
    }

    /// A leader appends a new entry in its term (§5.3: "the leader appends the command to
    /// its log as a new entry"). Returns the new entry.
    pub fn append(&mut self, term: Term, payload: Payload) -> Entry {
        let entry = Entry { index: self.last_index() + 1, term, payload };
        self.entries.push(entry.clone());
        entry
    }

    /// A follower stores entries sent by the leader after `prev_index`, which the caller
    /// has already checked matches (Figure 2, AppendEntries receiver rules 3 and 4):
    /// an existing entry that conflicts with a new one (same index, different term) is
    /// deleted with all that follow it; entries already present are left alone, so a
    /// delayed or duplicated message never truncates entries a newer message added.
    pub fn store(&mut self, prev_index: Index, entries: &[Entry]) -> StoreOutcome {
        let mut outcome = StoreOutcome::default();
        for (offset, entry) in entries.iter().enumerate() {
            let index = prev_index + 1 + offset as Index;
            match self.term_at(index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    self.entries.truncate((index - 1) as usize);
                    outcome.truncated_from = Some(index);
                }
                None => {}
            }
            let mut entry = entry.clone();
            entry.index = index;
            self.entries.push(entry.clone());
            outcome.appended.push(entry);
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

    /// The election restriction (§5.4.1): a log is at least as up-to-date as ours if its
    /// last term is higher, or the same with a last index at least as high.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The first index holding `term`, searching back from `from` (for rejection hints).
    pub fn first_index_of_term(&self, term: Term, from: Index) -> Index {
        let mut index = from;
        while index > 1 && self.term_at(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    /// The last index holding `term` or an earlier term, at or below `from`; with it a
    /// leader skips a follower's whole conflicting term in one step (§5.3).
    pub fn last_index_at_or_below_term(&self, term: Term, from: Index) -> Index {
        let mut index = from.min(self.last_index());
        while index > 0 && self.term_at(index).is_some_and(|t| t > term) {
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
