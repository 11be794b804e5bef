//! The vocabulary of Raft: node ids, terms, log indexes, entries and the durable
//! "hard state" of Figure 2 ("Persistent state on all servers").

use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// Identifies a server. Configured by the operator; unique within a cluster.
pub type NodeId = u64;

/// A Raft term (§5.1): a logical clock that increases with every election.
/// Term 0 is "before any election"; the first real term is 1.
pub type Term = u64;

/// The highest term a node will ever adopt. A node must always be able to start one more
/// election (term + 1), so a message from a term at or near `u64::MAX` would leave whoever
/// believed it unable to campaign ever again. No honest cluster gets here: at a million
/// elections a second it would take 290,000 years. Messages beyond it are refused.
pub const MAX_TERM: Term = u64::MAX / 2;

/// A position in the log (§5.3). The first entry has index 1; index 0 means "nothing",
/// with term 0, so the consistency check for the first entry always succeeds.
pub type Index = u64;

/// A span of logical time, counted in calls to [`crate::Node::tick`].
pub type Ticks = u64;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Appended by every new leader at the start of its term, so that it can commit an
    /// entry of its own term and thereby everything before it (§5.4.2, §8).
    Noop,
    /// An opaque command for the state machine, as passed to [`crate::Node::propose`].
    /// Serialized as base64 text: a JSON array of numbers would be up to 4 times larger.
    Command(#[serde(with = "base64_bytes")] Vec<u8>),
    /// A new configuration (§4.1): who votes and who learns. It takes effect on every
    /// server as soon as it is in the server's log, committed or not.
    Membership(Membership),
}

/// Bytes as one base64 string in serialized form (4 characters per 3 bytes). Public so a
/// driver's own messages (snapshot pieces, say) can carry bytes the same way.
pub mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as a base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    /// Reads bytes back from a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// One log entry (§5.3): a command tagged with the term of the leader that created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's position in the log.
    pub index: Index,
    /// The term in which a leader created the entry.
    pub term: Term,
    /// What the entry carries.
    pub payload: Payload,
}

impl Entry {
    /// An upper bound on the entry's serialized size (its index, term and base64 command
    /// in JSON), used to cap the bytes in one append message.
    pub fn size(&self) -> usize {
        const HEADER: usize = 96;
        match &self.payload {
            Payload::Noop => HEADER,
            Payload::Command(data) => HEADER + data.len().div_ceil(3) * 4,
            Payload::Membership(membership) => HEADER + membership.size(),
        }
    }
}

/// The term and vote, which must be durable before a node answers anyone (Figure 2:
/// "updated on stable storage before responding to RPCs"). Together with the log this is
/// everything a node needs to restart safely.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any. One vote per term (§5.2).
    pub voted_for: Option<NodeId>,
}

/// Where a snapshot ends (§7): the last log entry whose effect it includes. The log keeps
/// only the entries after it; everything up to it lives in the state machine's snapshot.
/// `SnapshotMeta::default()` (index 0, term 0) is "no snapshot": the log starts at 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot includes ("lastIncludedIndex", Figure 13).
    pub index: Index,
    /// The term of that entry ("lastIncludedTerm"), kept because the consistency check
    /// (§5.3) and the election restriction (§5.4.1) still need it once the entry is gone.
    pub term: Term,
    /// The configuration in effect at `index` (§4): the entries that set it may be gone.
    /// Empty means the initial configuration, [`crate::Config::voters`].
    #[serde(default)]
    pub membership: Membership,
}

impl SnapshotMeta {
    /// A snapshot point with the initial configuration (an empty membership).
    pub fn at(index: Index, term: Term) -> SnapshotMeta {
        SnapshotMeta { index, term, membership: Membership::default() }
    }
}

/// The role a node plays (§5.1, plus the pre-candidate of §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Passive: answers leaders and candidates.
    Follower,
    /// Asking whether it could win an election before disrupting anyone (§9.6).
    PreCandidate,
    /// Asking for votes in a new term (§5.2).
    Candidate,
    /// Handles all client requests and replicates the log (§5.3).
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_size_bounds_the_json_of_a_base64_command() {
        let entry = |payload| Entry { index: 1, term: 1, payload };
        assert_eq!(entry(Payload::Noop).size(), 96);
        assert_eq!(entry(Payload::Command(vec![0; 3])).size(), 96 + 4);
        assert_eq!(entry(Payload::Command(vec![0; 4])).size(), 96 + 8);
        let big = entry(Payload::Command(vec![0; 3000]));
        let json = serde_json::to_string(&big).expect("serializes");
        assert!(json.len() <= big.size(), "{} > {}", json.len(), big.size());
        // Configurations with the longest ids and addresses to escape: bounded, and closely.
        for address in ["rpc=1.2.3.4:5 client=6.7.8.9:10", "\u{1}\"\\é\u{1f}"] {
            let mut m = Membership::default();
            for i in 0..7 {
                m.voters.insert(u64::MAX - i);
                m.learners.insert(u64::MAX - 10 - i);
                m.addresses.insert(u64::MAX - i, address.repeat(10));
                m.addresses.insert(u64::MAX - 10 - i, address.repeat(10));
            }
            let config = entry(Payload::Membership(m));
            let json = serde_json::to_string(&config).expect("serializes");
            assert!(json.len() <= config.size(), "{} > {}", json.len(), config.size());
            assert!(config.size() <= json.len() + 96 + 64, "{} is well above {}", config.size(), json.len());
        }
    }
}
