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

/// Crash-test hook: `LIGHTRAFT_FAILPOINT=<name>` makes the process abort (as a kill -9
/// would) when it reaches the point of that name, so a test can stop a node at each step
/// of a snapshot install and check what a restart finds.
pub fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if POINT.get_or_init(|| std::env::var("LIGHTRAFT_FAILPOINT").ok()).as_deref() == Some(name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}
