//! `.trace on`: this node's Raft events as they happen, one readable line each, for a
//! learner who watches a live cluster while killing and restarting nodes. The lines use
//! the notation of the golden scenarios (`send 1->2 t3 Append prev=5@2 commit=5 [6@3]`).
//!
//! The Raft thread never waits for a watcher: each has a bounded queue, a line that does
//! not fit is dropped and counted, and the count leads the watcher's next line. With no
//! watcher, tracing costs one check per event: lines are only formatted for someone.

use tokio::sync::mpsc;

/// Lines queued per watcher before new ones are dropped.
pub const QUEUE: usize = 1024;

/// How a refused watcher's only line begins.
pub const REFUSED: &str = "refused:";

/// An append shows at most this many entries; more are summed up as a range, so a line
/// stays short however large the batch (a catch-up append can carry thousands).
const ENTRIES_SHOWN: usize = 8;

/// A message in the scenarios' notation, with a long append shortened to its range.
pub fn message(msg: &raft_core::Message) -> String {
    match &msg.kind {
        raft_core::MessageKind::Append { prev_index, prev_term, entries, commit } if entries.len() > ENTRIES_SHOWN => {
            let (first, last) = (&entries[0], &entries[entries.len() - 1]);
            format!(
                "{}->{} t{} Append prev={prev_index}@{prev_term} commit={commit} [{}@{} .. {}@{}] ({} entries)",
                msg.from,
                msg.to,
                msg.term,
                first.index,
                first.term,
                last.index,
                last.term,
                entries.len()
            )
        }
        _ => msg.to_string(),
    }
}

/// Sessions that may watch at once: each costs the Raft thread a copy of every line, so
/// clients cannot slow it down by opening many.
pub const MAX_WATCHERS: usize = 8;

struct Watcher {
    tx: mpsc::Sender<String>,
    dropped: u64,
}

/// The sessions watching this node's Raft events.
#[derive(Default)]
pub struct Tracers {
    watchers: Vec<Watcher>,
}

impl Tracers {
    /// Adds a watcher, whose first line is `first`; it stops watching when it drops its
    /// receiver. Beyond [`MAX_WATCHERS`] the watcher gets a line starting with
    /// [`REFUSED`] instead, and is closed at once.
    pub fn add(&mut self, tx: mpsc::Sender<String>, first: String) {
        self.watchers.retain(|w| !w.tx.is_closed());
        if self.watchers.len() >= MAX_WATCHERS {
            let _ = tx.try_send(format!("{REFUSED} {MAX_WATCHERS} sessions are already tracing this node"));
            return;
        }
        if tx.try_send(first).is_ok() {
            self.watchers.push(Watcher { tx, dropped: 0 });
        }
    }

    /// Sends the line `line()` to every watcher (formatting it only if there is one).
    pub fn emit(&mut self, line: impl FnOnce() -> String) {
        if self.watchers.is_empty() {
            return;
        }
        let line = line();
        self.watchers.retain_mut(|w| {
            let text = match w.dropped {
                0 => line.clone(),
                n => format!("({n} lines dropped: the session read too slowly) {line}"),
            };
            match w.tx.try_send(text) {
                Ok(()) => {
                    w.dropped = 0;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.dropped += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}
