//! # raft-core: Raft as a pure state machine
//!
//! This crate is the Raft consensus algorithm and nothing else: no disk, no network, no
//! threads, no clock. A [`Node`] changes only when its driver calls it, and it answers
//! only through [`Ready`]. The same calls always produce the same output, so a simulator
//! can run a whole cluster in one thread and replay any run from its seed.
//!
//! The paper is "In Search of an Understandable Consensus Algorithm" (Ongaro and
//! Ousterhout, 2014), cited as §5.x and "Figure 2"; the dissertation is "Consensus:
//! Bridging Theory and Practice" (Ongaro, 2014), cited as §3.10, §6.4, §9.6 and so on.
//!
//! ## Reading order
//! 1. [`types`]: terms, indexes, entries, the durable hard state.
//! 2. [`message`]: what nodes say to each other.
//! 3. [`log`]: the log and its two matching properties.
//! 4. [`node`]: the state of Figure 2 and the driver API; then [`step`], where every
//!    message enters and terms are settled first.
//! 5. [`election`]: how a leader is chosen (§5.2, §5.4.1, PreVote §9.6).
//! 6. [`replication`] with [`progress`] and [`quorum`]: how entries spread and commit
//!    (§5.3, §5.4.2).
//! 7. [`check_quorum`], [`read_index`], [`transfer`]: the dissertation's additions.
//!    [`snapshot`]: log compaction and InstallSnapshot (§7). [`membership`]: changing
//!    the cluster one voter at a time, with learners (chapter 4).
//! 8. [`refusal`]: messages no correct peer could send, and why they are dropped.
//! 9. [`ready`]: the contract with the driver, in the order it must be carried out.
//! 10. [`wake_hint`]: which answers a driver may leave queued, and which heartbeats a
//!     follower's driver may answer itself: an optimisation only.
//!
//! ## The driver's loop
//! ```text
//! loop {
//!     feed the node: node.tick() on a timer, node.step(msg) for each message received,
//!                    node.propose(cmd) and node.read(id) for client requests
//!     if node.has_ready() {
//!         let ready = node.ready();
//!         1. send ready.messages; start a snapshot transfer for each ready.send_snapshots
//!         2. persist ready.hard_state, ready.install_snapshot, ready.compacted,
//!            ready.truncate_from, ready.entries; fsync
//!         3. send ready.persisted_messages
//!         4. apply ready.committed
//!         5. answer clients from ready.proposals and ready.reads
//!         (any time) log ready.refused
//!         node.advance(&ready);
//!     }
//!     now and then: node.compact(index) once the state machine is durable at index;
//!                   node.report_snapshot(to, index, delivered) when a transfer ends;
//!                   node.propose_membership(change) when an operator asks
//! }
//! ```
//! A node restarted with [`Node::new`] from exactly what step 2 persisted (plus the
//! state machine's applied index) continues safely.
//!
//! ## Designed for, not yet built
//! Pipelining already exists in the Replicate progress state and batching in `ready()`;
//! a faster driver can overlap the ready's steps (see [`ready`]).

#![warn(missing_docs)]

pub mod check_quorum;
pub mod config;
pub mod election;
pub mod invariants;
pub mod log;
pub mod membership;
pub mod message;
pub mod node;
pub mod progress;
pub mod quorum;
pub mod read_index;
pub mod ready;
pub mod refusal;
pub mod replication;
mod rng;
pub mod snapshot;
pub mod step;
pub mod transfer;
pub mod types;
pub mod wake_hint;

pub use config::Config;
pub use log::Log;
pub use membership::{ChangeError, Membership, MembershipChange};
pub use message::{AppendResult, Message, MessageKind, ReadId};
pub use node::{Node, ProposeError, Restored, Status};
pub use ready::{ProposalOutcome, ReadError, ReadOutcome, Ready, SnapshotRequest, SoftState};
pub use refusal::Refusal;
pub use transfer::TransferError;
pub use types::{Entry, HardState, Index, NodeId, Payload, Role, SnapshotMeta, Term, Ticks, MAX_TERM};
pub use wake_hint::WakeHint;
