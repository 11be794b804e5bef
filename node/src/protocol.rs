//! What nodes and client sessions say to the Raft core: requests, replies, and the
//! messages peers exchange (Raft's own, plus forwarded client writes).

use serde::{Deserialize, Serialize};
use sqlite_sm::StatementResult;
use tokio::sync::oneshot;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (ReadIndex, §6.4).
    Linearizable,
    /// This node's copy, at once; possibly stale.
    Local,
}

/// The error codes clients see, as documented for `.mode json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The SQL was rejected; nothing was applied.
    SqlError,
    /// No leader, or the request was not proposed; nothing was applied.
    Unavailable,
    /// Proposed, but the outcome could not be learned: it may or may not have been applied.
    OutcomeUnknown,
    /// Malformed input or an unknown command.
    BadRequest,
}

impl ErrorCode {
    /// The code's name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::SqlError => "sql_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::BadRequest => "bad_request",
        }
    }
}

/// The answer to one client line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// One result per statement of the line.
    Results(Vec<StatementResult>),
    /// The line failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A sentence for the user.
        message: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error { code, message: message.into() }
    }
}

/// A node's state, for `.status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// This node.
    pub node: u64,
    /// follower, pre-candidate, candidate or leader.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// The known leader.
    pub leader: Option<u64>,
    /// The commit index.
    pub commit_index: u64,
    /// The state machine's applied index.
    pub applied_index: u64,
    /// Where the log begins: entries up to here are compacted into the state (§7).
    pub snapshot_index: u64,
    /// The first index the log still holds.
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
}

/// Who learns that a read barrier passed, or why it did not.
#[derive(Debug)]
pub enum Then {
    /// A session waiting to run its read.
    Session(oneshot::Sender<Result<(), Reply>>),
    /// A read to start on a reader thread.
    Query(crate::readers::PendingQuery),
}

impl Then {
    /// Tells whoever waits on the barrier.
    pub fn passed(self, result: Result<(), Reply>) {
        match self {
            Then::Session(tx) => {
                let _ = tx.send(result);
            }
            Then::Query(query) => query.start(result),
        }
    }
}

/// What a client session asks of the Raft core.
#[derive(Debug)]
pub enum Request {
    /// Replicate one line that writes: propose it here, or forward it to the leader.
    Write {
        /// The line.
        sql: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Reply>,
    },
    /// Answer once this node has applied everything committed before the request arrived
    /// (ReadIndex, §6.4): a read started then is linearizable.
    ReadBarrier(Then),
    /// Report the node's status.
    Status(oneshot::Sender<StatusReport>),
    /// Stream this node's Raft events, one line each, until the receiver is dropped.
    Trace(tokio::sync::mpsc::Sender<String>),
    /// A change of the cluster, or a look at it: done by the leader (forwarded there).
    Admin {
        /// What to do.
        command: AdminCommand,
        /// Where the answer goes.
        reply: oneshot::Sender<AdminResult>,
    },
}

/// What an operator asks of the cluster (`.cluster`, `.add`, `.remove`, `.transfer`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// List the members as the leader sees them.
    Cluster,
    /// Add `node` as a learner, reachable at these addresses; it is promoted to voter
    /// once caught up (§4.2.1).
    Add {
        /// The new node's index.
        node: u64,
        /// Where other nodes reach it.
        rpc: String,
        /// Where its clients connect.
        client: String,
    },
    /// Remove `node` (a voter or a learner; the leader itself included).
    Remove {
        /// The node to remove.
        node: u64,
    },
    /// Hand leadership to `node` (§3.10).
    Transfer {
        /// The new leader.
        node: u64,
    },
}

/// The answer to an [`AdminCommand`].
pub type AdminResult = Result<AdminOk, (ErrorCode, String)>;

/// What a successful [`AdminCommand`] returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOk {
    /// A sentence saying what was done.
    Done(String),
    /// The members, for `.cluster`.
    Cluster(ClusterReport),
}

/// The cluster as its leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// The leader (the node that answered).
    pub leader: u64,
    /// Its term.
    pub term: u64,
    /// Its last log index, which lags are measured from.
    pub last_index: u64,
    /// Every member, in index order.
    pub members: Vec<MemberReport>,
}

/// One member in a [`ClusterReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// The node's index.
    pub node: u64,
    /// voter or learner.
    pub role: String,
    /// Whether it is the leader.
    pub leader: bool,
    /// Where peers reach it, if known.
    pub rpc: Option<String>,
    /// Where clients connect, if known.
    pub client: Option<String>,
    /// The highest index known to be replicated on it (Figure 2 `matchIndex`).
    pub match_index: u64,
    /// How many entries it is behind the leader.
    pub lag: u64,
    /// Milliseconds since the leader last heard from it (`None`: never, or the leader).
    pub last_contact_ms: Option<u64>,
}

/// A message between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A raft-core message.
    Raft(raft_core::Message),
    /// A follower forwards a client's write to the leader (id chosen by the follower).
    Forward {
        /// The follower's id for the request.
        id: u64,
        /// The term of the leader the follower means: the write may only be proposed in
        /// it (see `forwarding.rs`).
        term: raft_core::Term,
        /// Every request of this follower's below this id is settled: the leader may
        /// forget them (it remembers the others so a copy sent again is not proposed twice).
        settled_below: u64,
        /// The client's line.
        sql: String,
    },
    /// The leader's answer to a forwarded write.
    ForwardReply {
        /// The follower's id for the request.
        id: u64,
        /// The outcome, as if the client had asked the leader.
        reply: Reply,
    },
    /// The receiver is not (or no longer) the leader and did not propose the write;
    /// the follower may try again elsewhere.
    ForwardRefused {
        /// The follower's id for the request.
        id: u64,
    },
    /// A follower passes an operator's command to the leader (id chosen by the follower).
    Admin {
        /// The follower's id for the request.
        id: u64,
        /// The command.
        command: AdminCommand,
    },
    /// The leader's answer to a forwarded command.
    AdminReply {
        /// The follower's id for the request.
        id: u64,
        /// The outcome.
        result: AdminResult,
    },
    /// One piece of a snapshot of the leader's state database (§7; see `snapshots.rs`).
    SnapshotChunk(Chunk),
    /// The follower's answer to a piece: how much of the transfer it holds.
    SnapshotAck {
        /// The transfer.
        id: u64,
        /// Bytes received in order so far.
        received: u64,
        /// The whole has arrived and passed its checks; Raft has it.
        verified: bool,
        /// Why the follower gave the transfer up, if it did.
        error: Option<String>,
    },
}

/// One piece of a snapshot transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Chunk {
    /// The transfer, chosen by the leader; a new one replaces an old one.
    pub id: u64,
    /// The leader's term when Raft asked for the snapshot.
    pub term: raft_core::Term,
    /// The last entry the snapshot includes.
    pub meta: raft_core::SnapshotMeta,
    /// Where this piece goes in the file.
    pub offset: u64,
    /// The size of the whole file.
    pub total: u64,
    /// The SHA-256 of the whole file, as hex, on the last piece (the leader hashes the
    /// pieces as it sends them).
    pub sha256: Option<String>,
    /// The bytes, as base64 in JSON.
    #[serde(with = "raft_core::types::base64_bytes")]
    pub data: Vec<u8>,
}
