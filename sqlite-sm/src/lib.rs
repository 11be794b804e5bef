//! The SQLite side of lightraft: the replicated state machine ([`StateMachine`]), reads
//! off the Raft thread ([`Reader`]) and the durable Raft state ([`RaftStore`]), the first
//! two sharing one database file, the last in files of its own (a small database and
//! the log's segments).
//!
//! Replicas stay identical because every input that SQLite would take from the machine
//! is fixed by the leader in the log entry ([`command`], [`vfs`], [`random`]), and what
//! cannot be fixed (other files, extensions, transaction control, connection-local
//! objects, node-specific PRAGMAs) is refused before it is proposed ([`policy`]).

pub mod command;
mod exec;
pub mod functions;
pub mod mem;
pub mod policy;
pub mod raft_store;
pub mod random;
pub mod reader;
pub mod segments;
pub mod snapshot;
pub mod state_machine;
pub mod text;
pub mod value;
pub mod vfs;

pub use command::{Limits, Origin, WriteCommand};
pub use exec::Output;
pub use raft_store::RaftStore;
pub use reader::{ClassifyError, Kind, Reader};
pub use state_machine::{Group, StateMachine, StorageError, APPLIED_TABLE};
pub use value::{results_to_json, LineResult, StatementResult, Value};
