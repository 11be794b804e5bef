//! The SQLite side of lightraft: the replicated state machine ([`StateMachine`]) and the
//! durable Raft state ([`RaftStore`]), each in its own database file.
//!
//! Replicas stay identical because every input that SQLite would take from the machine
//! is fixed by the leader in the log entry ([`clock`]), and what cannot be fixed (other
//! database files, extensions, transaction control) is refused before it is proposed.

pub mod clock;
pub mod raft_store;
pub mod state_machine;
pub mod value;

pub use raft_store::RaftStore;
pub use state_machine::{ClassifyError, Kind, StateMachine, StorageError, WriteCommand, APPLIED_TABLE};
pub use value::{results_to_json, LineResult, StatementResult, Value};
