//! News the Raft thread need not be woken for.
//!
//! On this kind of machine waking a thread costs more than handling most news, and much
//! news changes nothing that anyone waits for. Three kinds are kept here instead of in the
//! Raft thread's queue, and it takes them at the start of its next turn (which comes at
//! the latest with its next tick):
//! - Answers from peers that raft-core's hint allows to wait (`raft_core::wake_hint`): in
//!   a steady cluster, a leader's second acknowledgement of each append, and heartbeat
//!   answers that can confirm no read. The Raft thread publishes the hint after each
//!   ready.
//! - On a follower, its leader's heartbeats that bring nothing new: the connection's task
//!   answers them itself, from the hint, and keeps them for the Raft thread to note. Only
//!   while that thread turns: one that has not taken what was kept for an election
//!   timeout (a stalled disk, say) answers nothing, so its leader sees it as it is.
//! - The apply thread's progress when it has no result for the core (the leader's own
//!   clients, which it answered itself), unless the core waits for that index (a read,
//!   or a write whose result the core hands on).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raft_core::{Index, Message, NodeId, WakeHint};

/// Answers kept beyond this go to the Raft thread's queue as usual (and wake it).
const CAPACITY: usize = 4096;

/// Shared by the Raft thread, the connections' tasks and the apply thread.
#[derive(Debug)]
pub struct Quiet {
    hint: Mutex<WakeHint>,
    waiting: Mutex<Vec<Kept>>,
    /// The highest index the apply thread reported here.
    applied: AtomicU64,
    /// The first applied index the core waits for; 0 (everything) until it says.
    wanted: AtomicU64,
    /// When the Raft thread last took what was kept, in milliseconds since `epoch`.
    turned: AtomicU64,
    epoch: Instant,
    /// How long the Raft thread may go without taking before heartbeats go unanswered.
    patience: Duration,
}

/// A message kept for the Raft thread.
#[derive(Debug)]
pub struct Kept {
    /// The peer it came from (the transport proved who).
    pub from: NodeId,
    /// The message, from `from`.
    pub msg: Message,
    /// Already answered from the hint: step it with `Node::step_answered`.
    pub answered: bool,
}

/// A poisoned lock only means a thread panicked while holding it; the data (a copy or a
/// list of messages) is still whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Quiet {
    /// Shared state for a node whose election timeout is `patience`.
    pub fn new(patience: Duration) -> Quiet {
        Quiet {
            hint: Mutex::default(),
            waiting: Mutex::default(),
            applied: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            turned: AtomicU64::new(0),
            epoch: Instant::now(),
            patience,
        }
    }

    fn since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_millis().min(u64::MAX as u128) as u64
    }

    /// The Raft thread's newest hint, published before the messages of its ready leave.
    pub fn publish(&self, hint: WakeHint) {
        *lock(&self.hint) = hint;
    }

    /// Keeps `msg` if the hint lets it wait; hands it back otherwise.
    pub fn offer(&self, from: NodeId, msg: Message) -> Result<(), Message> {
        if !lock(&self.hint).may_wait(&msg) {
            return Err(msg);
        }
        self.keep(Kept { from, msg, answered: false })
    }

    /// Keeps `msg` if the hint lets this node answer it at once, and returns the answer for
    /// the caller to send (if that fails, it is as if the network lost it); hands `msg`
    /// back otherwise.
    pub fn answer(&self, from: NodeId, msg: Message) -> Result<Message, Message> {
        let Some(answer) = lock(&self.hint).answer(&msg) else { return Err(msg) };
        let idle = self.since_epoch().saturating_sub(self.turned.load(Relaxed));
        if Duration::from_millis(idle) > self.patience {
            return Err(msg);
        }
        self.keep(Kept { from, msg, answered: true }).map(|()| answer)
    }

    fn keep(&self, kept: Kept) -> Result<(), Message> {
        let mut waiting = lock(&self.waiting);
        if waiting.len() >= CAPACITY {
            return Err(kept.msg);
        }
        waiting.push(kept);
        Ok(())
    }

    /// Everything kept, oldest first.
    pub fn take(&self) -> Vec<Kept> {
        self.turned.store(self.since_epoch(), Relaxed);
        std::mem::take(&mut *lock(&self.waiting))
    }

    /// The apply thread reached `index` with no result for the core. Says whether the core
    /// waits for it, and so must be told the usual way, which wakes it.
    pub fn applied_quietly(&self, index: Index) -> bool {
        // With `want_applied`, sequentially consistent: either this sees the core's newest
        // wish, or the core's next look (after publishing it) sees this index.
        self.applied.fetch_max(index, SeqCst);
        index >= self.wanted.load(SeqCst)
    }

    /// The core waits for the apply thread to reach `index` (`Index::MAX`: for nothing).
    /// It looks at [`Quiet::applied`] after this, before it sleeps.
    pub fn want_applied(&self, index: Index) {
        self.wanted.store(index, SeqCst);
    }

    /// The highest index the apply thread reported here.
    pub fn applied(&self) -> Index {
        self.applied.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::{Config, Entry, MessageKind, Node, Payload, Restored};

    #[test]
    fn a_follower_answers_heartbeats_at_once_only_while_its_raft_thread_turns() {
        let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid config");
        let noop = Entry { index: 1, term: 1, payload: Payload::Noop };
        let append = MessageKind::Append { prev_index: 0, prev_term: 0, entries: vec![noop], commit: 0 };
        node.step(Message { from: 1, to: 2, term: 1, kind: append });
        let ready = node.ready();
        node.advance(&ready);
        let patience = Duration::from_millis(500);
        let quiet = Quiet::new(patience);
        quiet.publish(node.wake_hint());
        let heartbeat = Message { from: 1, to: 2, term: 1, kind: MessageKind::Heartbeat { commit: 0, read_round: 3 } };
        let answer = quiet.answer(1, heartbeat.clone()).expect("answered at once");
        assert_eq!(answer.kind, MessageKind::HeartbeatResp { read_round: 3 });
        let kept = quiet.take();
        assert!(kept.len() == 1 && kept[0].answered, "kept for the Raft thread to note");
        // A Raft thread that stops taking (a stalled disk) must look stalled to its leader.
        std::thread::sleep(patience + Duration::from_millis(300));
        assert!(quiet.answer(1, heartbeat.clone()).is_err(), "answered for a thread that stopped turning");
        quiet.take();
        assert!(quiet.answer(1, heartbeat).is_ok(), "answered again once it turns");
    }
}
