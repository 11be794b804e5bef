//! Majority arithmetic. Raft's safety rests on one fact: any two majorities of the same
//! cluster share at least one server (§5.2, §5.4). Every decision that must not be made
//! twice (a leader per term, a committed entry) needs a majority.
//!
//! Majorities are always of the voters of the current configuration (§4.1): learners
//! and servers outside it are never counted, whatever they answer.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Index, NodeId};

/// The smallest number of servers that is a majority of `voters`.
pub fn quorum_size(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest index that a majority of servers hold, given each server's match index
/// (§5.3: "replicated it on a majority of the servers"). Sort descending; the value at
/// position quorum-1 is held by at least a quorum.
pub fn quorum_index(mut matches: Vec<Index>) -> Index {
    if matches.is_empty() {
        return 0;
    }
    matches.sort_unstable_by(|a, b| b.cmp(a));
    matches[quorum_size(matches.len()) - 1]
}

/// The outcome of a vote so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority of the voters granted.
    Won,
    /// A majority of the voters refused: the vote cannot be won.
    Lost,
    /// Neither yet.
    Pending,
}

/// Tallies `votes` (granted or refused, by server) among `voters`; votes from anyone else
/// do not count (§4.2.1: a learner's vote must never make a leader).
pub fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let counted = |want: bool| voters.iter().filter(|v| votes.get(v) == Some(&want)).count();
    let quorum = quorum_size(voters.len());
    if counted(true) >= quorum {
        VoteResult::Won
    } else if counted(false) >= quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// The highest value a majority of `voters` has reached, given each voter's value
/// (`None` for a voter we know nothing of, counted as 0). Used for the commit index
/// (match indexes) and for ReadIndex rounds.
pub fn voters_index(voters: &BTreeSet<NodeId>, value_of: impl Fn(NodeId) -> Option<u64>) -> u64 {
    quorum_index(voters.iter().map(|&v| value_of(v).unwrap_or(0)).collect())
}

/// Whether a majority of `voters` satisfies `active`.
pub fn is_quorum(voters: &BTreeSet<NodeId>, active: impl Fn(NodeId) -> bool) -> bool {
    voters.iter().filter(|&&v| active(v)).count() >= quorum_size(voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_voters_votes_count() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let votes = |list: &[(NodeId, bool)]| list.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(vote_result(&voters, &votes(&[(1, true)])), VoteResult::Pending);
        assert_eq!(vote_result(&voters, &votes(&[(1, true), (4, true), (5, true)])), VoteResult::Pending);
        assert_eq!(vote_result(&voters, &votes(&[(1, true), (3, true)])), VoteResult::Won);
        assert_eq!(vote_result(&voters, &votes(&[(1, true), (2, false), (3, false)])), VoteResult::Lost);
        let even: BTreeSet<NodeId> = [1, 2, 3, 4].into();
        assert_eq!(vote_result(&even, &votes(&[(1, true), (2, true)])), VoteResult::Pending, "2 of 4 is no majority");
        assert_eq!(vote_result(&even, &votes(&[(1, false), (2, false)])), VoteResult::Pending);
    }

    #[test]
    fn voters_index_ignores_learners_and_counts_the_unknown_as_zero() {
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let matches: BTreeMap<NodeId, u64> = [(1, 9), (2, 7), (4, 100), (5, 100)].into();
        assert_eq!(voters_index(&voters, |v| matches.get(&v).copied()), 7);
        assert!(is_quorum(&voters, |v| v <= 2));
        assert!(!is_quorum(&voters, |v| v == 1 || v == 4));
    }

    #[test]
    fn a_majority_is_more_than_half() {
        assert_eq!(quorum_size(1), 1);
        assert_eq!(quorum_size(2), 2);
        assert_eq!(quorum_size(3), 2);
        assert_eq!(quorum_size(4), 3);
        assert_eq!(quorum_size(5), 3);
    }

    #[test]
    fn quorum_index_is_held_by_a_majority() {
        assert_eq!(quorum_index(vec![5]), 5);
        assert_eq!(quorum_index(vec![5, 3, 1]), 3);
        assert_eq!(quorum_index(vec![1, 5, 3]), 3);
        assert_eq!(quorum_index(vec![9, 9, 2, 2, 2]), 2);
        assert_eq!(quorum_index(vec![9, 9, 8, 2, 2]), 8);
        assert_eq!(quorum_index(vec![4, 4, 0, 0]), 0);
        assert_eq!(quorum_index(vec![]), 0);
    }
}
