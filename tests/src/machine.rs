//! The simulated state machine: a hash chain of everything applied.
//!
//! Its state after index `i` is a hash of the state after `i - 1` and entry `i`, so two
//! nodes have the same state at `i` exactly when they applied the same entries up to `i`
//! (barring a 64-bit collision). That makes it a snapshot in a few bytes: a node that
//! installs one has the state of a node that applied every entry, or the checker says
//! otherwise (State Machine Safety across snapshots, §7).

use raft_core::{Entry, Index, Payload, SnapshotMeta, Term};

/// The state machine's whole state: the last entry applied and the hash chain up to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// The last index applied (0: nothing yet).
    pub index: Index,
    /// That entry's term, recorded with the state as the real driver does, so that a
    /// snapshot of the state says where it ends.
    pub term: Term,
    /// The hash chain over every entry applied.
    pub hash: u64,
}

/// FNV-1a's offset basis: the hash of nothing.
const EMPTY: u64 = 0xcbf2_9ce4_8422_2325;

impl Default for Machine {
    fn default() -> Machine {
        Machine { index: 0, term: 0, hash: EMPTY }
    }
}

impl Machine {
    /// Applies the next entry. The caller checks it is the next one.
    pub fn apply(&mut self, entry: &Entry) {
        self.hash = chain(self.hash, entry);
        self.index = entry.index;
        self.term = entry.term;
    }

    /// Where a snapshot of this state ends. The configuration there comes from the Raft
    /// log (see `Cluster::send_snapshot`); this says only the initial one.
    pub fn meta(&self) -> SnapshotMeta {
        SnapshotMeta::at(self.index, self.term)
    }
}

/// The hash after `entry`, given the hash before it (FNV-1a, 64 bits).
pub fn chain(before: u64, entry: &Entry) -> u64 {
    let mut hash = before;
    let mut mix = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    mix(&entry.index.to_le_bytes());
    mix(&entry.term.to_le_bytes());
    match &entry.payload {
        Payload::Noop => mix(&[0]),
        Payload::Command(data) => {
            mix(&[1]);
            mix(&(data.len() as u64).to_le_bytes());
            mix(data);
        }
        Payload::Membership(membership) => {
            mix(&[2]);
            mix(membership.to_string().as_bytes());
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_tells_apart_order_terms_and_commands() {
        let e = |index, term, cmd: &str| Entry { index, term, payload: Payload::Command(cmd.as_bytes().to_vec()) };
        let run = |entries: &[Entry]| {
            let mut m = Machine::default();
            entries.iter().for_each(|x| m.apply(x));
            m
        };
        let base = run(&[e(1, 1, "a"), e(2, 1, "b")]);
        assert_eq!(base, run(&[e(1, 1, "a"), e(2, 1, "b")]), "deterministic");
        assert_ne!(base.hash, run(&[e(1, 1, "b"), e(2, 1, "a")]).hash, "order matters");
        assert_ne!(base.hash, run(&[e(1, 1, "a"), e(2, 2, "b")]).hash, "terms matter");
        assert_ne!(base.hash, run(&[e(1, 1, "a"), e(2, 1, "c")]).hash, "commands matter");
        assert_eq!(base.meta(), SnapshotMeta::at(2, 1));
    }
}
