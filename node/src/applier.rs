//! The apply thread: owns the state machine and applies committed entries, in order, off
//! the Raft thread. A write that runs for seconds (on every replica alike) then delays
//! only later writes' answers; heartbeats, votes, persistence and `.status` go on.
//!
//! raft-core's contract allows it: step 4 of a ready ("apply committed entries, in
//! order") may finish later, as long as entries are applied in order and nobody is told
//! an index is applied (a read served, a write answered) before it is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;

use raft_core::{Entry, Index};
use sqlite_sm::{LineResult, StateMachine};
use tracing::error;

use crate::core::Event;
use crate::quiet::Quiet;
use crate::readers::Connections;

/// What the apply thread reports to the Raft core.
#[derive(Debug)]
pub enum Applied {
    /// Entries up to `index` are applied; with each command's result.
    Up {
        /// The last index now applied.
        index: Index,
        /// (index, result) for every command applied in this batch whose client the
        /// apply thread did not answer itself.
        results: Vec<(Index, LineResult)>,
    },
    /// Everything up to `index` is durable in the state database: the log may be
    /// compacted up to there (§7).
    Durable(Index),
    /// This node's disk failed: the node must stop (fail-stop).
    Failed(String),
}

/// Work for the apply thread, done in the order sent.
#[derive(Debug)]
pub enum Job {
    /// Apply these committed entries, and answer the clients waiting for some of them
    /// (by index) as soon as their group commits; the rest of the results go to the core.
    Entries(Vec<Entry>, Vec<(Index, tokio::sync::oneshot::Sender<crate::protocol::Reply>)>),
    /// Make everything applied so far durable, and report it as [`Applied::Durable`].
    Checkpoint,
    /// Replace the state with the snapshot at `path` (§7) and answer with the applied
    /// index it holds, once durable.
    Install {
        /// The verified snapshot.
        path: PathBuf,
        /// Where the answer goes.
        reply: Sender<Result<Index, String>>,
    },
}

/// Starts the apply thread. Send it committed entries in order; it reports to `core`, or
/// to `quiet` what the core need not be woken for.
/// `readers` are closed while a snapshot is installed.
pub fn start(
    mut sm: StateMachine,
    core: SyncSender<Event>,
    readers: Arc<Connections>,
    quiet: Arc<Quiet>,
) -> Result<Sender<Job>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || {
            let _enter = span.enter();
            run(&mut sm, &rx, &core, &readers, &quiet);
        })
        .map_err(|e| format!("cannot start the apply thread: {e}"))?;
    Ok(tx)
}

fn run(sm: &mut StateMachine, jobs: &Receiver<Job>, core: &SyncSender<Event>, readers: &Connections, quiet: &Quiet) {
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let go_on = match job {
            Job::Entries(mut batch, waiting) => {
                let mut waiting: HashMap<_, _> = waiting.into_iter().collect();
                // Take the entries already waiting, so one report covers them all; a job of
                // another kind must wait for them, so it ends the batch.
                while let Ok(more) = jobs.try_recv() {
                    match more {
                        Job::Entries(entries, more) => {
                            batch.extend(entries);
                            waiting.extend(more);
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                apply_batch(sm, batch, waiting, core, quiet)
            }
            Job::Checkpoint => {
                let report = match sm.make_durable() {
                    Ok(index) => Applied::Durable(index),
                    Err(e) => {
                        error!("{e}");
                        Applied::Failed(e.to_string())
                    }
                };
                let failed = matches!(report, Applied::Failed(_));
                core.send(Event::Applied(report)).is_ok() && !failed
            }
            Job::Install { path, reply } => {
                // With no reader open, the snapshot file can simply take the state's name.
                let result = readers.closed(|| sm.install(&path)).map_err(|e| e.to_string());
                let ok = result.is_ok();
                let _ = reply.send(result);
                ok
            }
        };
        if !go_on {
            return;
        }
    }
}

/// Applies a batch, one transaction per group of entries, and reports each group as it
/// commits (its clients wait for nothing else); false if the thread must stop.
fn apply_batch(
    sm: &mut StateMachine,
    batch: Vec<Entry>,
    mut waiting: HashMap<Index, tokio::sync::oneshot::Sender<crate::protocol::Reply>>,
    core: &SyncSender<Event>,
    quiet: &Quiet,
) -> bool {
    // Applied before a restart (the log hands them out again), or inside a snapshot.
    let first = batch.partition_point(|e| e.index <= sm.applied_index());
    let mut rest = &batch[first..];
    if rest.is_empty() {
        answer_unmatched(waiting);
        let report = Applied::Up { index: sm.applied_index(), results: Vec::new() };
        return core.send(Event::Applied(report)).is_ok();
    }
    while !rest.is_empty() {
        let group = match sm.apply_group(rest) {
            Ok(group) => group,
            Err(e) => {
                error!("{e}");
                let _ = core.send(Event::Applied(Applied::Failed(e.to_string())));
                return false;
            }
        };
        rest = &rest[group.count.max(1).min(rest.len())..];
        // Clients waiting here are answered at once, one thread hop fewer.
        let mut results = group.results;
        if !waiting.is_empty() {
            results.retain_mut(|(index, result)| match waiting.remove(index) {
                Some(client) => {
                    let _ = client.send(crate::core::reply_of(std::mem::replace(result, Ok(Vec::new()))));
                    false
                }
                None => true,
            });
        }
        if results.is_empty() && !quiet.applied_quietly(sm.applied_index()) {
            continue; // Nothing the core needs now: it looks at the next turn.
        }
        // Blocking: a result must never be dropped, or its client would wait in vain.
        let report = Applied::Up { index: sm.applied_index(), results };
        if core.send(Event::Applied(report)).is_err() {
            return false;
        }
    }
    answer_unmatched(waiting);
    true
}

/// Every command entry has a result, so no client should be left waiting here; if one
/// ever were, it hears that its write was applied without a result kept, rather than
/// nothing, or that the node stopped.
fn answer_unmatched(waiting: HashMap<Index, tokio::sync::oneshot::Sender<crate::protocol::Reply>>) {
    debug_assert!(waiting.is_empty(), "writes applied without a result: {:?}", waiting.keys());
    for (_, client) in waiting {
        let message = "the write reached the state machine but its result was not kept; check whether it took effect";
        let _ = client.send(crate::protocol::Reply::error(crate::protocol::ErrorCode::OutcomeUnknown, message));
    }
}
