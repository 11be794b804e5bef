//! The messages Raft nodes exchange: the two RPCs of Figure 2 (RequestVote and
//! AppendEntries) and the additions of the dissertation (PreVote §9.6, ReadIndex §6.4,
//! TimeoutNow §3.10). Requests and responses come in pairs, `X` and `XResp`.
//!
//! Raft does not need a reliable network: any message may be lost, duplicated, delayed or
//! reordered, and every handler tolerates that. A response is never matched to its request
//! by the network; it carries enough to be understood on its own.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// Chosen by the driver to tell its linearizable reads apart; echoed in [`crate::ReadOutcome`].
pub type ReadId = u64;

/// A message between two nodes of the same cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's current term, which every RPC carries (Figure 2, "Rules for Servers").
    /// For a PreVote it is the term the sender *would* campaign in.
    pub term: Term,
    /// What the message says.
    pub kind: MessageKind,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// "Would you vote for me in `term`?" Changes no state at the receiver (§9.6).
    PreVote {
        /// Index of the candidate's last log entry (§5.4.1).
        last_index: Index,
        /// Term of the candidate's last log entry (§5.4.1).
        last_term: Term,
    },
    /// The answer to a PreVote. `term` is the PreVote's term when granted.
    PreVoteResp {
        /// Whether the receiver would vote for the candidate.
        granted: bool,
    },
    /// RequestVote (§5.2): "vote for me in `term`".
    Vote {
        /// Index of the candidate's last log entry (§5.4.1).
        last_index: Index,
        /// Term of the candidate's last log entry (§5.4.1).
        last_term: Term,
        /// Sent on a leader's request (§3.10), so a follower's lease must not refuse it.
        transfer: bool,
    },
    /// The answer to a RequestVote.
    VoteResp {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (§5.3): new entries after (`prev_index`, `prev_term`).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: Index,
        /// Term of that entry; the follower must have it for the consistency check.
        prev_term: Term,
        /// Entries to store, in index order; may be empty (a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// The answer to an AppendEntries.
    AppendResp(AppendResult),
    /// A leader's heartbeat (§5.2): "I am still the leader". Also confirms leadership
    /// for reads (§6.4) by carrying the leader's latest read round.
    Heartbeat {
        /// min(leader commit, the follower's match index): a follower may only commit
        /// entries the leader knows it holds.
        commit: Index,
        /// The leader's newest ReadIndex round (§6.4).
        read_round: u64,
    },
    /// The answer to a heartbeat.
    HeartbeatResp {
        /// The read round being acknowledged.
        read_round: u64,
    },
    /// A follower asks the leader for a read index on a client's behalf (§6.4.1).
    ReadIndex {
        /// The follower's id for the read.
        id: ReadId,
    },
    /// The leader's answer: serve the read once applied up to `index`, or `None` if the
    /// sender could not confirm itself as leader.
    ReadIndexResp {
        /// The follower's id for the read.
        id: ReadId,
        /// The read index, if the leader could provide one.
        index: Option<Index>,
    },
    /// A leader hands over leadership: "start an election now" (§3.10).
    TimeoutNow,
    /// InstallSnapshot (§7, Figure 13): the leader's state machine up to `snapshot`. The
    /// bytes travel beside the message, moved by the drivers (see [`crate::ready`]); the
    /// receiving driver steps this once it holds the whole snapshot, verified. Answered
    /// with an `AppendResp`, as if the snapshot's entries had been appended.
    InstallSnapshot {
        /// The last entry the snapshot includes.
        snapshot: SnapshotMeta,
    },
}

/// The outcome of an AppendEntries at the follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResult {
    /// The entries are stored; the follower's log matches the leader's up to `match_index`.
    Accepted {
        /// The last index known to match: `prev_index + entries.len()`.
        match_index: Index,
    },
    /// The consistency check failed at `rejected` (the message's `prev_index`). The hint
    /// lets the leader skip a whole term of entries per round trip (§5.3, "fast backtracking").
    Rejected {
        /// The `prev_index` that did not match.
        rejected: Index,
        /// The leader should next try `hint_index` unless it can do better with `hint_term`.
        hint_index: Index,
        /// The term of the follower's conflicting entry at `rejected`, if it has one.
        hint_term: Option<Term>,
    },
}

impl std::fmt::Display for Message {
    /// A one-line, human-readable rendering used in traces and golden files.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}->{} t{} ", self.from, self.to, self.term)?;
        match &self.kind {
            MessageKind::PreVote { last_index, last_term } => {
                write!(f, "PreVote last={last_index}@{last_term}")
            }
            MessageKind::PreVoteResp { granted } => write!(f, "PreVoteResp granted={granted}"),
            MessageKind::Vote { last_index, last_term, transfer } => {
                write!(f, "Vote last={last_index}@{last_term}")?;
                if *transfer {
                    f.write_str(" transfer")?;
                }
                Ok(())
            }
            MessageKind::VoteResp { granted } => write!(f, "VoteResp granted={granted}"),
            MessageKind::Append { prev_index, prev_term, entries, commit } => {
                write!(f, "Append prev={prev_index}@{prev_term} commit={commit} [")?;
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{}@{}", e.index, e.term)?;
                }
                f.write_str("]")
            }
            MessageKind::AppendResp(AppendResult::Accepted { match_index }) => {
                write!(f, "AppendResp ok match={match_index}")
            }
            MessageKind::AppendResp(AppendResult::Rejected { rejected, hint_index, hint_term }) => {
                write!(f, "AppendResp reject={rejected} hint={hint_index}")?;
                if let Some(t) = hint_term {
                    write!(f, "@{t}")?;
                }
                Ok(())
            }
            MessageKind::Heartbeat { commit, read_round } => {
                write!(f, "Heartbeat commit={commit} read_round={read_round}")
            }
            MessageKind::HeartbeatResp { read_round } => write!(f, "HeartbeatResp read_round={read_round}"),
            MessageKind::ReadIndex { id } => write!(f, "ReadIndex id={id}"),
            MessageKind::ReadIndexResp { id, index: Some(i) } => {
                write!(f, "ReadIndexResp id={id} index={i}")
            }
            MessageKind::ReadIndexResp { id, index: None } => {
                write!(f, "ReadIndexResp id={id} refused")
            }
            MessageKind::TimeoutNow => f.write_str("TimeoutNow"),
            MessageKind::InstallSnapshot { snapshot } => {
                write!(f, "InstallSnapshot last={}@{}", snapshot.index, snapshot.term)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Payload;

    #[test]
    fn messages_print_as_the_transcripts_and_logs_show_them() {
        let entry = |index| Entry { index, term: 3, payload: Payload::Noop };
        let append = Message {
            from: 1,
            to: 2,
            term: 3,
            kind: MessageKind::Append { prev_index: 4, prev_term: 2, entries: vec![entry(5), entry(6)], commit: 4 },
        };
        assert_eq!(append.to_string(), "1->2 t3 Append prev=4@2 commit=4 [5@3 6@3]");
        let reject = Message {
            from: 2,
            to: 1,
            term: 3,
            kind: MessageKind::AppendResp(AppendResult::Rejected { rejected: 9, hint_index: 7, hint_term: Some(2) }),
        };
        assert_eq!(reject.to_string(), "2->1 t3 AppendResp reject=9 hint=7@2");
        let vote = Message {
            from: 3,
            to: 1,
            term: 4,
            kind: MessageKind::Vote { last_index: 6, last_term: 3, transfer: true },
        };
        assert_eq!(vote.to_string(), "3->1 t4 Vote last=6@3 transfer");
    }
}
