//! Majority arithmetic. Raft's safety rests on one fact: any two majorities of the same
//! cluster share at least one server (§5.2, §5.4). Every decision that must not be made
//! twice (a leader per term, a committed entry) needs a majority.

use crate::types::Index;

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

#[cfg(test)]
mod tests {
    use super::*;

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
