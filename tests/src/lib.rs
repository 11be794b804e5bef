//! Test harness for `raft-core`: a cluster of real [`raft_core::Node`]s in one process,
//! driven either by hand (the golden scenarios in `tests/scenarios/`) or by a seeded
//! random simulator with faults (`tests/simulation.rs`). A [`checker::Checker`] verifies
//! Raft's safety properties after every step.
//!
//! Everything here is deterministic: the only randomness is [`rng::SimRng`], seeded per run.

pub mod checker;
pub mod cluster;
pub mod machine;
pub mod rng;
pub mod sim;
pub mod watch;
