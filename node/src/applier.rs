//! The apply thread: owns the state machine and applies committed entries, in order, off
//! the Raft thread. A write that runs for seconds (on every replica alike) then delays
//! only later writes' answers; heartbeats, votes, persistence and `.status` go on.
//!
//! raft-core's contract allows it: step 4 of a ready ("apply committed entries, in
//! order") may finish later, as long as entries are applied in order and nobody is told
//! an index is applied (a read served, a write answered) before it is.

use std::sync::mpsc::{Receiver, Sender, SyncSender};

use raft_core::{Entry, Index};
use sqlite_sm::{LineResult, StateMachine};
use tracing::error;

use crate::core::Event;

/// What the apply thread reports to the Raft core.
#[derive(Debug)]
pub enum Applied {
    /// Entries up to `index` are applied; with each command's result.
    Up {
        /// The last index now applied.
        index: Index,
        /// (index, result) for every command applied in this batch.
        results: Vec<(Index, LineResult)>,
    },
    /// This node's disk failed: the node must stop (fail-stop).
    Failed(String),
}

/// Starts the apply thread. Send it committed entries in order; it reports to `core`.
pub fn start(mut sm: StateMachine, core: SyncSender<Event>) -> Result<Sender<Vec<Entry>>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<Entry>>();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("apply".into())
        .spawn(move || {
            let _enter = span.enter();
            run(&mut sm, &rx, &core);
        })
        .map_err(|e| format!("cannot start the apply thread: {e}"))?;
    Ok(tx)
}

fn run(sm: &mut StateMachine, entries: &Receiver<Vec<Entry>>, core: &SyncSender<Event>) {
    while let Ok(mut batch) = entries.recv() {
        // Take what else is waiting, so one report covers it all.
        while let Ok(more) = entries.try_recv() {
            batch.extend(more);
        }
        let mut results = Vec::new();
        for entry in &batch {
            if entry.index <= sm.applied_index() {
                continue; // applied before a restart; the log hands it out again
            }
            match sm.apply(entry) {
                Ok(Some(result)) => results.push((entry.index, result)),
                Ok(None) => {}
                Err(e) => {
                    error!("{e}");
                    let _ = core.send(Event::Applied(Applied::Failed(e.to_string())));
                    return;
                }
            }
        }
        // Blocking: a result must never be dropped, or its client would wait in vain.
        let report = Applied::Up { index: sm.applied_index(), results };
        if core.send(Event::Applied(report)).is_err() {
            return;
        }
    }
}
