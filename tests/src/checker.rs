//! Raft's safety properties (paper Figure 3), checked as the simulation runs. Each check
//! says which property failed and enough detail to find it in the trace.
//!
//! - Election Safety: at most one leader per term.
//! - Log Matching: entries with the same index and term carry the same command and the
//!   same predecessor term, so logs that share an entry share everything before it.
//! - Leader Completeness: an entry committed in term T is in the log of every leader of a
//!   term after T.
//! - State Machine Safety: every node applies the same entry at each index, in order, and
//!   a node that installs a snapshot at index i has exactly the state (hash chain, see
//!   [`crate::machine`]) of the nodes that applied every entry up to i (§7).
//! - Monotonicity: a node's commit index never moves back while it runs, and its applied
//!   index never moves back at all, across restarts included.
//! - Durability: what a node applied is still in its durable state machine when it
//!   restarts, and its durable log continues from there.
//! - Durable quorum (§10.2.1): when an entry is first committed, it is on the durable
//!   logs of a majority of the voters of the committing leader's configuration, so no
//!   set of crashes can lose it. A leader may send entries before its own write
//!   finishes, but must not count itself until it has.
//! - One voter at a time (§4.1): every configuration entry differs from the configuration
//!   before it in its log by at most one voter.
//! - Outcomes: a proposal reported committed was applied with that term; one reported
//!   lost is never applied.
//! - Linearizable reads: a read sees every write acknowledged before the read began.
//! - Stale messages (Figure 2): a message from an older term changes neither the
//!   receiver's term, role, leader or vote, nor its commit index (checked in
//!   `Cluster::deliver`).

use std::collections::{BTreeMap, HashMap, HashSet};

use raft_core::{Entry, Index, Log, Membership, NodeId, Payload, SnapshotMeta, Term};

use crate::machine::Machine;

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
    /// The state machine's hash after each applied index (position index - 1).
    chain: Vec<u64>,
    /// Proposals reported lost: (term, index).
    lost: HashSet<(Term, Index)>,
    /// The highest index of a write acknowledged to a client so far.
    max_acked: Index,
    /// Each running node's last commit index; reset when it restarts.
    last_commit: BTreeMap<NodeId, Index>,
}

/// One node's durable log as the checker sees it: a snapshot point and the entries after.
#[derive(Clone, Copy, Debug)]
pub struct DurableLog<'a> {
    /// Where the durable log begins.
    pub snapshot: &'a SnapshotMeta,
    /// The durable entries after it.
    pub entries: &'a [Entry],
}

impl<'a> DurableLog<'a> {
    /// The durable entry at `index`, if the log still holds it.
    pub fn entry(&self, index: Index) -> Option<&'a Entry> {
        let pos = index.checked_sub(self.snapshot.index + 1)?;
        self.entries.get(usize::try_from(pos).ok()?)
    }

    /// Whether `entry` is durable here: in the log, or inside the snapshot (whose state
    /// machine applied it, which the checker compared with every other node's).
    pub fn holds(&self, entry: &Entry) -> bool {
        entry.index <= self.snapshot.index || self.entry(entry.index) == Some(entry)
    }
}

impl Checker {
    /// A checker that has seen nothing.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Election Safety: `node` is leader in `term`. A sole voter (`lone`) needs no vote,
    /// so it may lead a term twice if a crash lost its term (see `Cluster::crash`).
    pub fn leader_elected(&mut self, node: NodeId, term: Term, log: &Log, lone: bool) -> Result<(), Violation> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != node {
                return Err(format!("Election Safety: nodes {other} and {node} both leader in term {term}"));
            }
            // With peers, a term's leader was voted for durably and cannot win it again.
            if !lone {
                return Err(format!("Election Safety: node {node} became leader of term {term} a second time"));
            }
        }
        self.leaders.insert(term, node);
        // Leader Completeness: entries committed in earlier terms are all in its log. Those
        // compacted into its snapshot are in its state machine, checked when applied.
        let snapshot = log.snapshot();
        for c in &self.committed {
            let compacted =
                c.entry.index < snapshot.index || c.entry.index == snapshot.index && c.entry.term == snapshot.term;
            if c.commit_term < term && !compacted && log.entry(c.entry.index) != Some(&c.entry) {
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
            if let Payload::Membership(next) = &e.payload {
                let before = log.membership_at(e.index - 1);
                if next.voter_changes(before) > 1 {
                    return Err(format!(
                        "One voter at a time (§4.1): node {node} placed {}@{} changing the voters from {before} to {next}",
                        e.index, e.term
                    ));
                }
            }
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
    /// Entries compacted away on either node are compared through their state machines.
    pub fn logs_match(&self, logs: &[(NodeId, &Log)]) -> Result<(), Violation> {
        for (i, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[i + 1..] {
                let base = log_a.snapshot().index.max(log_b.snapshot().index);
                let mut index = log_a.last_index().min(log_b.last_index());
                while index > base && log_a.term_at(index) != log_b.term_at(index) {
                    index -= 1;
                }
                for k in base + 1..=index {
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
        disks: &[(NodeId, DurableLog)],
    ) -> Result<(), Violation> {
        let last = self.last_commit.entry(node).or_insert(0);
        if commit < *last {
            return Err(format!("Monotonicity: node {node} commit index went back from {last} to {commit}"));
        }
        let first_unchecked = *last + 1;
        *last = commit;
        for index in first_unchecked..=commit {
            if index <= log.snapshot().index {
                // Committed by installing a snapshot, whose state was compared when installed.
                if index as usize > self.committed.len() {
                    return Err(format!("node {node} holds a snapshot up to {index}, beyond anything committed"));
                }
                continue;
            }
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
                    // A majority of the voters the committing leader counts: its latest
                    // configuration (§4.1), or the one before if the latest was appended
                    // after the commit (a promotion follows the commit that allows it).
                    let durable_in = |m: &Membership| {
                        let held = disks.iter().filter(|(id, disk)| m.is_voter(*id) && disk.holds(entry)).count();
                        (held > m.voters.len() / 2, held, m.voters.len())
                    };
                    let (majority, held, voters) = durable_in(log.membership());
                    let latest = log.membership_index();
                    if !(majority || latest > commit && durable_in(log.membership_at(latest - 1)).0) {
                        return Err(format!(
                            "Durable quorum: node {node} committed {index}@{} in term {term}, but only {held} of its {voters} voters have it on disk",
                            entry.term
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

    /// A node restarted: its commit index starts afresh (it is volatile, Figure 2). Its
    /// durable state machine must be one every node agrees on, and the entries its log
    /// still holds up to there must be the ones applied.
    pub fn restarted(&mut self, node: NodeId, machine: &Machine, log: &Log) -> Result<(), Violation> {
        self.last_commit.insert(node, machine.index);
        self.same_state(node, machine, "restarted with")?;
        for index in log.first_index()..=machine.index {
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

    /// State Machine Safety across snapshots: `machine` is the state some node reached by
    /// applying entries up to its index, which every other node must share there.
    fn same_state(&self, node: NodeId, machine: &Machine, what: &str) -> Result<(), Violation> {
        if machine.index == 0 {
            return if *machine == Machine::default() {
                Ok(())
            } else {
                Err(format!("State Machine Safety: node {node} {what} a state at index 0 that is not empty"))
            };
        }
        let at = (machine.index - 1) as usize;
        match (self.applied.get(at), self.chain.get(at)) {
            (Some(entry), Some(&hash)) if entry.term == machine.term && hash == machine.hash => Ok(()),
            (Some(entry), Some(_)) => Err(format!(
                "State Machine Safety: node {node} {what} a state at {}@{} that differs from the state every node applying {}@{} reached",
                machine.index, machine.term, entry.index, entry.term
            )),
            _ => Err(format!(
                "State Machine Safety: node {node} {what} a state at index {}, which no node has applied",
                machine.index
            )),
        }
    }

    /// State Machine Safety: `node` installs the snapshot `after` over its state `before`.
    pub fn installed(&mut self, node: NodeId, before: &Machine, after: &Machine) -> Result<(), Violation> {
        if after.index <= before.index {
            return Err(format!(
                "Monotonicity: node {node} installed a snapshot at {}, having applied {} already",
                after.index, before.index
            ));
        }
        self.same_state(node, after, "installed")
    }

    /// State Machine Safety: `node` applies `entry` to `machine` (its state before).
    pub fn applied(&mut self, node: NodeId, machine: &Machine, entry: &Entry) -> Result<(), Violation> {
        let applied = machine.index;
        if entry.index != applied + 1 {
            return Err(format!("State Machine Safety: node {node} applied {} after {applied}", entry.index));
        }
        let hash = crate::machine::chain(machine.hash, entry);
        if self.lost.contains(&(entry.term, entry.index)) {
            return Err(format!("Outcomes: node {node} applied {}@{}, reported lost", entry.index, entry.term));
        }
        match self.applied.get((entry.index - 1) as usize) {
            Some(first) if first != entry => Err(format!(
                "State Machine Safety: node {node} applied {}@{} where another node applied {}@{}",
                entry.index, entry.term, first.index, first.term
            )),
            Some(_) if self.chain[(entry.index - 1) as usize] != hash => Err(format!(
                "State Machine Safety: node {node} applied {}@{} to a state that differs from other nodes'",
                entry.index, entry.term
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.push(entry.clone());
                self.chain.push(hash);
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

    /// How many configuration entries were committed.
    pub fn committed_changes(&self) -> usize {
        self.committed.iter().filter(|c| matches!(c.entry.payload, Payload::Membership(_))).count()
    }

    /// The latest committed configuration, if any configuration entry was committed.
    pub fn committed_membership(&self) -> Option<&Membership> {
        self.committed.iter().rev().find_map(|c| match &c.entry.payload {
            Payload::Membership(m) => Some(m),
            _ => None,
        })
    }
}
