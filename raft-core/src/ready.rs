//! The one output type: [`Ready`]. Every call into a [`crate::Node`] may add to it; the
//! driver takes it with [`crate::Node::ready`] and carries it out in this order:
//!
//! 1. Send `messages` at once. These are a leader's appends and heartbeats, which are safe
//!    before the leader's own disk write finishes: the leader counts itself towards a
//!    commit only once [`crate::Node::advance`] says its entries are durable (§10.2.1).
//!    Start streaming a snapshot to each follower in `send_snapshots` (see below).
//! 2. Make durable, in order: `hard_state`; then `install_snapshot` (replace the state
//!    machine with the received snapshot and delete the whole log); then `compacted`
//!    (delete the entries up to it); then truncate the log from `truncate_from`; then
//!    append `entries`. Record the snapshot point of `install_snapshot` or `compacted`
//!    with the log, for [`crate::Restored::snapshot`]. Sync to disk (one fsync for the
//!    whole batch). An install must be atomic: after a crash, either the old state and
//!    log or the new state and empty log, never a mix.
//! 3. Send `persisted_messages`: votes and acknowledgements promise something about
//!    durable state, so they must not leave before step 2 (Figure 2, "Persistent state").
//!    No message leaves before the term it carries is durable: a ready that changes
//!    `hard_state`, and every later one until `advance` has been called for it, puts all
//!    its messages here (a sole voter elects itself in one ready, and a driver may take
//!    the next readies before that write is done).
//! 4. Apply `committed` entries to the state machine, in order. This step may finish
//!    later, on another thread (a long write then delays nobody's heartbeat), provided
//!    entries are applied in order and step 5 waits for it. It may also come first, when
//!    every entry was written by a ready whose step 2 is done: an entry must be durable
//!    here before it is applied (a restarted node's state may not be ahead of its log).
//!    A leader's committed entries always are; a follower may commit entries it has not
//!    yet made durable (those of this ready, or of an earlier one still being written).
//! 5. Answer clients: `proposals` outcomes, then `reads`. A write is answered once its
//!    entry is applied; a read is served once the state machine has applied at least up
//!    to the read's index.
//! 6. Call [`crate::Node::advance`] with the ready, so the node knows what is durable.
//!    It does not wait for step 4: `advance` speaks only of step 2.
//!
//! ## Snapshots (§7, Figure 13)
//! raft-core never holds snapshot bytes: the state machine is the snapshot, and the
//! drivers move it. A leader whose follower needs compacted entries asks, in
//! `send_snapshots`, for a snapshot to be sent in `term`. The leader's driver then:
//! - takes a consistent copy of its durable state machine, at whatever index `i` it has
//!   applied; `i` is at or beyond the leader's snapshot point, so the follower can
//!   continue from `i + 1`, and the leader's log still knows `i`'s term
//!   ([`crate::Log::term_at`]) and the configuration in force there
//!   ([`crate::Log::membership_at`]), as long as the driver compacts nothing meanwhile;
//! - streams it to the follower in pieces small enough for its transport, with the
//!   header `(from, to, term, SnapshotMeta { index: i, term, membership })`; at most one
//!   transfer per follower at a time (a newer request supersedes an older one);
//! - calls [`crate::Node::report_snapshot`] once the stream has ended, saying whether it
//!   was all written. The leader sends nothing more to that follower until then.
//!
//! The follower's driver collects the pieces (a lost piece fails the whole transfer, which
//! the leader then restarts), verifies the whole, and only then steps
//! `Message { from, to, term, kind: InstallSnapshot { snapshot } }` into its node. The node
//! answers like an append; if it wants the snapshot, the ready carries `install_snapshot`,
//! and the answer waits in `persisted_messages` until step 2 has installed it. A snapshot
//! the node does not want (stale, or older than its commit index) is simply discarded.
//!
//! `refused` lists messages the node dropped because no correct peer could have sent them
//! (see [`crate::refusal`]); log them at any point. They changed nothing.

use crate::message::{Message, ReadId};
use crate::refusal::Refusal;
use crate::types::{Entry, HardState, Index, NodeId, Role, SnapshotMeta, Term};

/// Work for the driver, to be carried out in the order of the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Step 1: send now, before the disk write.
    pub messages: Vec<Message>,
    /// Step 1: stream a snapshot of the state machine to these followers (see above).
    pub send_snapshots: Vec<SnapshotRequest>,
    /// Step 2: the new term and vote, if they changed.
    pub hard_state: Option<HardState>,
    /// Step 2: replace the state machine with the snapshot received for this point, and
    /// delete every durable entry (Figure 13, receiver rules 7 and 8).
    pub install_snapshot: Option<SnapshotMeta>,
    /// Step 2: the log was compacted: delete durable entries up to this point.
    pub compacted: Option<SnapshotMeta>,
    /// Step 2: delete every durable entry with an index at or above this one.
    pub truncate_from: Option<Index>,
    /// Step 2: append these entries (after any truncation).
    pub entries: Vec<Entry>,
    /// Step 3: send only once step 2 is durable.
    pub persisted_messages: Vec<Message>,
    /// Step 4: apply these, in order.
    pub committed: Vec<Entry>,
    /// Step 5: what became of proposals made on this node.
    pub proposals: Vec<ProposalOutcome>,
    /// Step 5: reads that may now be served, or that failed.
    pub reads: Vec<ReadOutcome>,
    /// The node's role, term or known leader changed (for logs and client routing).
    pub status_change: Option<SoftState>,
    /// Messages dropped as impossible, for the driver to log.
    pub refused: Vec<Refusal>,
}

impl Ready {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        *self == Ready::default()
    }
}

/// A leader asks its driver to send a follower a snapshot (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The follower that needs it.
    pub to: NodeId,
    /// The leader's term, to put in the `InstallSnapshot` header.
    pub term: Term,
}

/// Role, term and leader: what a driver needs to route clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The node's role.
    pub role: Role,
    /// The node's current term.
    pub term: Term,
    /// The leader this node knows of in `term`, if any.
    pub leader: Option<NodeId>,
}

/// The fate of a proposal, identified by the (term, index) that `propose` returned.
/// It is known only once that index is committed: until then the entry may survive on
/// some other node and still commit, even if this node's copy was overwritten. So an
/// outcome is reported when this node learns the index is committed; if that never
/// happens (the node restarts, or no later entry ever commits), the driver must tell its
/// client, at its own deadline, that the outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// The entry is committed and included in this ready's `committed` (or an earlier one).
    Committed {
        /// The proposal's term.
        term: Term,
        /// The proposal's index.
        index: Index,
    },
    /// A different entry was committed at this index: the proposal will never be applied.
    Lost {
        /// The proposal's term.
        term: Term,
        /// The proposal's index.
        index: Index,
    },
    /// This node installed a snapshot covering the index (§7): the entries it would have
    /// compared are gone, so it cannot tell whether the proposal committed. The driver
    /// answers its client "outcome unknown" at once instead of at its deadline.
    Unknown {
        /// The proposal's term.
        term: Term,
        /// The proposal's index.
        index: Index,
    },
}

/// The answer to a linearizable read request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The id the driver gave the read.
    pub id: ReadId,
    /// `Ok(index)`: serve the read from the state machine (applied at least to `index`).
    pub result: Result<Index, ReadError>,
}

/// Why a read could not be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// No leader is known; try again later.
    NoLeader,
    /// Leadership changed or the leader did not answer in time; the read may be retried.
    Aborted,
}
