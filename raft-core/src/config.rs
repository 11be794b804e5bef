//! How a node is set up: who it is, who its peers are, its timing and its random seed.
//! Everything that varies between runs is here, so a node is a pure function of its
//! config and its inputs.

use crate::types::{NodeId, Ticks};

/// A node's configuration. Build one with [`Config::new`] and adjust the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// The voters of the cluster's initial configuration. Once the log or a snapshot holds
    /// a configuration (§4), that one rules; a node that joins later is not among these.
    pub voters: Vec<NodeId>,
    /// The minimum election timeout. Each timeout is drawn uniformly from
    /// `[election_ticks, 2 * election_ticks)` so that split votes resolve quickly (§5.2).
    pub election_ticks: Ticks,
    /// How often a leader sends heartbeats. Must be well below `election_ticks` (§5.6:
    /// broadcastTime ≪ electionTimeout).
    pub heartbeat_ticks: Ticks,
    /// Ask for a PreVote round before a real election (§9.6).
    pub pre_vote: bool,
    /// Leaders step down without a quorum, and followers that hear from a leader ignore
    /// vote requests for a while (§6.2, §4.2.3).
    pub check_quorum: bool,
    /// The most bytes of entries (see [`crate::Entry::size`]) in one append message. At
    /// least one entry is always sent, however large.
    pub max_append_bytes: usize,
    /// A learner is promoted to voter once its log is within this many entries of the
    /// leader's (§4.2.1), so that it can keep up with commits from the moment it counts.
    pub promote_lag: u64,
    /// Seeds the election-timeout jitter. Use a different seed on each node.
    pub seed: u64,
}

impl Config {
    /// A config with sensible defaults: election timeout 10 ticks, heartbeat every 2,
    /// PreVote and CheckQuorum on, appends of up to 1 MiB, learners promoted within 16
    /// entries.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Config {
        Config {
            id,
            voters,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_append_bytes: 1 << 20,
            promote_lag: 16,
            seed: id,
        }
    }

    /// Checks the config, saying what is wrong in a sentence an operator can act on.
    pub fn validate(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Err("the initial configuration needs at least one voter".into());
        }
        let mut sorted = self.voters.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.voters.len() {
            return Err(format!("the voters {:?} contain a duplicate", self.voters));
        }
        if self.heartbeat_ticks == 0 {
            return Err("heartbeat_ticks must be at least 1".into());
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(format!(
                "election_ticks ({}) must exceed heartbeat_ticks ({})",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        Ok(())
    }
}
