//! Raft's safety properties (paper Figure 3), checked as the simulation runs. Each check
//! says which property failed and enough detail to find it in the trace.
//!
//! - Election Safety: at most one leader per term.
//! - Log Matching: entries with the same index and term carry the same command and the
//!   same predecessor term, so logs that share an entry share everything before it.
//! - Leader Completeness: an entry committed in term T is in the log of every leader of a
//!   term after T.
//! - State Machine Safety: every node applies the same entry at each index, in order.
//! - Monotonicity: a node's commit index never moves back while it runs, and its applied
//!   index never moves back at all, across restarts included.
//! - Durability: what a node applied is still in its durable log when it restarts.
//! - Durable quorum (§10.2.1): when an entry is first committed, it is on the durable
//!   logs of a majority of the nodes, so no set of crashes can lose it. A leader may send
//!   entries before its own write finishes, but must not count itself until it has.
//! - Outcomes: a proposal reported committed was applied with that term; one reported
//!   lost is never applied.
//! - Linearizable reads: a read sees every write acknowledged before the read began.
//! - Stale messages (Figure 2): a message from an older term changes neither the
//!   receiver's term, role, leader or vote, nor its commit index (checked in
//!   `Cluster::deliver`).

use std::collections::{BTreeMap, HashMap, HashSet};

use raft_core::{Entry, Index, Log, NodeId, Payload, Term};

/// A violated property: a one-line description.
pub type Violation = String;

/// A committed entry as first observed, with the term of the leader that committed it.
#[derive(Clone, Debug)]
struct Committed {
    entry: Entry,
    commit_term: Term,
}

/// Everything the checker has observed so far.
#[derive(Debug, Default)]
pub struct Checker {
    /// The leader of each term ever seen.
    leaders: BTreeMap<Term, NodeId>,
    /// Every (index, term) ever placed in a log: its payload and predecessor's term.
    placed: HashMap<(Index, Term), (Payload, Term)>,
    /// Committed entries by index (position index - 1).
    committed: Vec<Committed>,
    /// Applied entries by index, the same on every node (position index - 1).
    applied: Vec<Entry>,
    /// Proposals reported lost: (term, index).
    lost: HashSet<(Term, Index)>,
    /// The highest index of a write acknowledged to a client so far.
    max_acked: Index,
    /// Each running node's last commit index; reset when it restarts.
    last_commit: BTreeMap<NodeId, Index>,
    /// A cluster of one node, which may lead the same term twice (see `Cluster::crash`).
    lone: bool,
}

impl Checker {
    /// A checker that has seen nothing, for a cluster of one node if `lone`.
    pub fn new(lone: bool) -> Checker {
        Checker { lone, ..Checker::default() }
    }

    /// Election Safety: `node` is leader in `term`.
    pub fn leader_elected(&mut self, node: NodeId, term: Term, log: &Log) -> Result<(), Violation> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != node {
                return Err(format!("Election Safety: nodes {other} and {node} both leader in term {term}"));
            }
            // With peers, a term's leader was voted for durably and cannot win it again.
            if !self.lone {
                return Err(format!("Election Safety: node {node} became leader of term {term} a second time"));
            }
        }
        self.leaders.insert(term, node);
        // Leader Completeness: entries committed in earlier terms are all in its log.
        for c in &self.committed {
            if c.commit_term < term && log.entry(c.entry.index) != Some(&c.entry) {
                return Err(format!(
                    "Leader Completeness: leader {node} of term {term} lacks entry {}@{} committed in term {}",
                    c.entry.index, c.entry.term, c.commit_term
                ));
            }
        }
        Ok(())
    }

    /// Log Matching: `entries` were just placed in `node`'s log.
    pub fn entries_placed(&mut self, node: NodeId, log: &Log, entries: &[Entry]) -> Result<(), Violation> {
        for e in entries {
            let prev_term = log.term_at(e.index - 1).unwrap_or(0);
            match self.placed.get(&(e.index, e.term)) {
                None => {
                    self.placed.insert((e.index, e.term), (e.payload.clone(), prev_term));
                }
                Some((payload, prev)) => {
                    if *payload != e.payload {
                        return Err(format!(
                            "Log Matching: node {node} holds {}@{} with a different command than another log",
                            e.index, e.term
                        ));
                    }
                    if *prev != prev_term {
                        return Err(format!(
                            "Log Matching: node {node} holds {}@{} after term {prev_term}, another log after term {prev}",
                            e.index, e.term
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets placed entries that no log, disk or message holds any more: a crash erased
    /// them before anyone saw them, so their (index, term) may be used again.
    pub fn forget_unless_held(&mut self, held: &HashSet<(Index, Term)>) {
        self.placed.retain(|key, _| held.contains(key));
    }

    /// Log Matching over whole logs: any two logs that share an entry are identical up to it.
    pub fn logs_match(&self, logs: &[(NodeId, &Log)]) -> Result<(), Violation> {
        for (i, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[i + 1..] {
                let mut index = log_a.last_index().min(log_b.last_index());
                while index > 0 && log_a.term_at(index) != log_b.term_at(index) {
                    index -= 1;
                }
                for k in 1..=index {
                    if log_a.entry(k) != log_b.entry(k) {
                        return Err(format!("Log Matching: nodes {a} and {b} share entry {index} but differ at {k}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// A running node reports its term and commit index; records newly committed entries.
    /// `disks` holds every node's durable log, crashed nodes' included.
    pub fn node_state(
        &mut self,
        node: NodeId,
        term: Term,
        commit: Index,
        log: &Log,
        leaders: &[(NodeId, Term, &Log)],
        disks: &[&[Entry]],
    ) -> Result<(), Violation> {
        let last = self.last_commit.entry(node).or_insert(0);
        if commit < *last {
            return Err(format!("Monotonicity: node {node} commit index went back from {last} to {commit}"));
        }
        let first_unchecked = *last + 1;
        *last = commit;
        for index in first_unchecked..=commit {
            let Some(entry) = log.entry(index) else {
                return Err(format!("node {node} commits {index} beyond its log ({})", log.last_index()));
            };
            match self.committed.get((index - 1) as usize) {
                Some(c) if c.entry != *entry => {
                    return Err(format!(
                        "State Machine Safety: node {node} committed {}@{} where {}@{} was committed",
                        index, entry.term, index, c.entry.term
                    ));
                }
                Some(_) => {}
                None => {
                    // The first node to report a commit is the leader that made it (followers
                    // learn commits from leaders), so its term is the term of the commit.
                    let commit_term = term;
                    self.committed.push(Committed { entry: entry.clone(), commit_term });
                    let durable = disks.iter().filter(|disk| disk.get((index - 1) as usize) == Some(entry)).count();
                    if durable <= disks.len() / 2 {
                        return Err(format!(
                            "Durable quorum: node {node} committed {index}@{} in term {term}, but only {durable} of {} nodes have it on disk",
                            entry.term,
                            disks.len()
                        ));
                    }
                    // Leader Completeness for leaders of later terms that already exist.
                    for &(leader, leader_term, leader_log) in leaders {
                        if leader_term > commit_term && leader_log.entry(index) != Some(entry) {
                            return Err(format!(
                                "Leader Completeness: leader {leader} of term {leader_term} lacks entry {index}@{} committed in term {commit_term}",
                                entry.term
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A node restarted: its commit index starts afresh (it is volatile, Figure 2), and its
    /// durable log must still hold everything it applied.
    pub fn restarted(&mut self, node: NodeId, applied: Index, log: &Log) -> Result<(), Violation> {
        self.last_commit.insert(node, applied);
        for index in 1..=applied {
            let expected = &self.applied[(index - 1) as usize];
            if log.entry(index) != Some(expected) {
                return Err(format!(
                    "Durability: node {node} restarted without applied entry {index}@{} in its log",
                    expected.term
                ));
            }
        }
        Ok(())
    }

    /// State Machine Safety: `node` applies `entry`, having applied `applied` before.
    pub fn applied(&mut self, node: NodeId, applied: Index, entry: &Entry) -> Result<(), Violation> {
        if entry.index != applied + 1 {
            return Err(format!("State Machine Safety: node {node} applied {} after {applied}", entry.index));
        }
        if self.lost.contains(&(entry.term, entry.index)) {
            return Err(format!("Outcomes: node {node} applied {}@{}, reported lost", entry.index, entry.term));
        }
        match self.applied.get((entry.index - 1) as usize) {
            Some(first) if first != entry => Err(format!(
                "State Machine Safety: node {node} applied {}@{} where another node applied {}@{}",
                entry.index, entry.term, first.index, first.term
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.push(entry.clone());
                Ok(())
            }
        }
    }

    /// A proposal was reported committed to its client: the write is acknowledged.
    pub fn acknowledged(&mut self, node: NodeId, term: Term, index: Index) -> Result<(), Violation> {
        match self.applied.get((index - 1) as usize) {
            Some(e) if e.term == term => {
                self.max_acked = self.max_acked.max(index);
                Ok(())
            }
            other => Err(format!(
                "Outcomes: node {node} reported {index}@{term} committed, but applied there is {:?}",
                other.map(|e| (e.index, e.term))
            )),
        }
    }

    /// A proposal was reported lost: it must never be applied.
    pub fn lost(&mut self, node: NodeId, term: Term, index: Index) -> Result<(), Violation> {
        if self.applied.get((index - 1) as usize).is_some_and(|e| e.term == term) {
            return Err(format!("Outcomes: node {node} reported {index}@{term} lost, but it was applied"));
        }
        self.lost.insert((term, index));
        Ok(())
    }

    /// A linearizable read begins; returns what it must see (the newest acknowledged write).
    pub fn read_started(&self) -> Index {
        self.max_acked
    }

    /// Linearizability: a read that began after `must_see` was acknowledged is served from
    /// a state machine that has applied `applied` entries.
    pub fn read_served(&self, node: NodeId, id: u64, must_see: Index, applied: Index) -> Result<(), Violation> {
        if applied < must_see {
            return Err(format!(
                "Linearizability: read {id} on node {node} saw state at index {applied}, but write {must_see} was acknowledged before it began"
            ));
        }
        Ok(())
    }

    /// How many entries are committed so far.
    pub fn committed_count(&self) -> usize {
        self.committed.len()
    }
}
