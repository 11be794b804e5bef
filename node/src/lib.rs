//! The `lightraft` node: raft-core, the SQLite state machine and the TCP transport,
//! composed with tokio. `main.rs` is only the command line.
//!
//! - [`config`] holds `lightraft.toml`.
//! - [`server`] starts and stops one node.
//! - [`core`] is the thread that drives raft-core and answers every client request;
//!   [`forwarding`] is how it learns the fate of writes it forwarded to a leader.
//! - [`applier`] applies committed entries; [`readers`] serve reads; both off that thread.
//!   [`quiet`] holds the answers that thread need not be woken for.
//! - [`session`] and [`format`] are what `nc` users see; `catalog` holds the shell
//!   commands that read the schema (`.tables`, `.schema`, `.indexes`, `.dump`), and
//!   [`shell`] is `lightraft shell`, the same protocol with line editing.
//! - [`members`] says where each member of the configuration is; [`join`] is how a node
//!   outside `lightraft.toml` asks to be added.
//! - [`up`] runs a whole local cluster in one command; [`bench`] is the benchmark;
//!   [`backup`] copies a node's data; [`metrics`] serves what operators watch.

pub mod applier;
pub mod backup;
pub mod bench;
mod catalog;
pub mod client;
pub mod config;
pub mod core;
pub mod format;
pub mod forwarding;
pub mod join;
pub mod members;
pub mod metrics;
pub mod protocol;
pub mod quiet;
pub mod readers;
pub mod server;
pub mod session;
pub mod shell;
pub mod snapshots;
pub mod trace;
pub mod up;
