//! Reads off the Raft thread: a few threads, each with its own read-only connection to
//! the state machine's file, that run reads and stream their rows to the session that
//! asked, plus one thread that only classifies lines (read or write), so a heavy read can
//! never hold up a write's classification. The classifier also starts the work a line
//! needs: a write goes from there straight to the Raft core, a read to a reader, or, if
//! it must be linearizable, to the core, which starts it once its barrier passes. Each
//! is one thread hop fewer than going back through the session. A line whose kind SQLite
//! could not judge otherwise under any schema (see `sqlite_sm::text`) needs no
//! classifying: its session starts the same work itself ([`ReadPool::write`],
//! [`ReadPool::read`]).
//!
//! A read never delays heartbeats, commits or `.status`, and it never waits for a client:
//! rows go into the session's queue at once. What they may cost is bounded twice: each
//! read by the result limit, and all answers not yet written to their clients, across
//! every session, by one node-wide budget. A read that finds the budget spent stops at
//! once with an error rather than wait, so clients that do not read their answers can
//! neither exhaust memory nor tie up the reader threads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlite_sm::{ClassifyError, Kind, Limits, Output, Reader};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::core::Event;
use crate::protocol::{ErrorCode, Reply, Request, Then};

/// Answers in flight are counted in units of this many bytes.
const UNIT: u64 = 1024;

/// Work for the classification thread.
struct Classify {
    sql: String,
    /// A read must first wait for a barrier (ReadIndex).
    linearizable: bool,
    reply: oneshot::Sender<Result<Classified, ClassifyError>>,
}

/// What classifying a line led to.
#[derive(Debug)]
pub enum Classified {
    /// A read of this many statements, started (at once, or once its barrier passes):
    /// its outputs arrive here.
    Read {
        /// How many statements the line holds.
        statements: usize,
        /// The read's outputs, then one `Done` (or a `Refused`).
        items: mpsc::UnboundedReceiver<ReadItem>,
    },
    /// A write, handed to the Raft core: its one answer arrives here.
    Submitted(oneshot::Receiver<Reply>),
    /// A write the core could not take (overloaded, shutting down): nothing was done.
    Refused(Reply),
}

/// Work for a reader thread.
struct Query {
    sql: String,
    sink: mpsc::UnboundedSender<ReadItem>,
}

/// What a streamed read produces: its outputs, then exactly one `Done`.
#[derive(Debug)]
pub enum ReadItem {
    /// Columns, a row, or a statement's changes, holding its share of the node's answer
    /// budget until the session has written it (drop the permit then).
    Output(Output, OwnedSemaphorePermit),
    /// The read finished (`Ok`) or stopped with an error.
    Done(Result<(), String>),
    /// The read never started: no barrier, or no room for it. The only item.
    Refused(Reply),
}

/// A read waiting to start on a reader thread once its barrier passes: the Raft core
/// starts it itself, one thread hop fewer than back through the session.
pub struct PendingQuery {
    queries: SyncSender<Query>,
    job: Query,
}

impl std::fmt::Debug for PendingQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingQuery").field("sql", &self.job.sql).finish()
    }
}

impl PendingQuery {
    /// Starts the read if its barrier passed; otherwise tells its session why not.
    pub fn start(self, barrier: Result<(), Reply>) {
        let refused = match barrier {
            Ok(()) => match self.queries.try_send(self.job) {
                Ok(()) => return,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                    let _ = job.sink.send(ReadItem::Refused(Reply::error(ErrorCode::Unavailable, BUSY)));
                    return;
                }
            },
            Err(reply) => reply,
        };
        let _ = self.job.sink.send(ReadItem::Refused(refused));
    }
}

/// Asks the Raft core for a read barrier whose passing starts `query`.
fn barrier_then_query(core: &SyncSender<Event>, query: PendingQuery) {
    let refused = match core.try_send(Event::Client(Request::ReadBarrier(Then::Query(query)))) {
        Ok(()) => return,
        Err(TrySendError::Full(event)) => (event, "the node is overloaded; nothing was done"),
        Err(TrySendError::Disconnected(event)) => (event, "the node is shutting down; nothing was done"),
    };
    if let (Event::Client(Request::ReadBarrier(then)), message) = refused {
        then.passed(Err(Reply::error(ErrorCode::Unavailable, message)));
    }
}

/// The reader threads and their queues.
#[derive(Clone)]
pub struct ReadPool {
    classify: SyncSender<Classify>,
    core: SyncSender<Event>,
    queries: SyncSender<Query>,
    connections: Arc<Connections>,
}

/// The read connections of this node, the classifier's and each reader's, and the gate
/// every other reader of the state database passes (a leader's snapshot transfer). A
/// snapshot install closes them all while it replaces the state database beneath them
/// (see `StateMachine::install`); each reopens on its next use.
pub struct Connections {
    path: PathBuf,
    slots: Vec<Mutex<Option<Reader>>>,
    /// Shared by every read under way, taken alone by an install. Once an install waits
    /// for it, new reads wait behind it (on Linux the standard library's lock prefers
    /// writers), so a busy node cannot hold an install off. No thread takes it twice.
    gate: RwLock<()>,
    /// An install is waiting for the gate: a snapshot being read stops rather than
    /// keep it waiting.
    installing: AtomicBool,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections").field("path", &self.path).field("slots", &self.slots.len()).finish()
    }
}

impl Connections {
    /// Opens `count` connections to the database at `path` (now, so a node that cannot
    /// read its database fails at start).
    pub fn open(path: &Path, count: usize) -> Result<Connections, String> {
        let slots = (0..count).map(|_| Reader::open(path).map(|r| Mutex::new(Some(r)))).collect::<Result<_, _>>()?;
        Ok(Connections { path: path.to_path_buf(), slots, gate: RwLock::new(()), installing: AtomicBool::new(false) })
    }

    /// Runs `work` on connection `slot`, reopening it first if an install closed it.
    fn with<R>(&self, slot: usize, work: impl FnOnce(&mut Reader) -> R) -> Result<R, String> {
        let Some(slot) = self.slots.get(slot) else { return Err(format!("there is no reader {slot}")) };
        let _reading = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let reader = match &mut *slot {
            Some(reader) => reader,
            empty => empty.insert(Reader::open(&self.path)?),
        };
        Ok(work(reader))
    }

    /// Runs `work`, which opens a connection of its own to the state database, as a read:
    /// no install replaces the file meanwhile.
    pub fn reading<R>(&self, work: impl FnOnce() -> R) -> R {
        let _open = self.gate.read().unwrap_or_else(|e| e.into_inner());
        work()
    }

    /// Whether an install waits for the reads under way: a long one should stop.
    pub fn install_waiting(&self) -> bool {
        self.installing.load(Ordering::Relaxed)
    }

    /// Runs `work` with every connection closed, once the reads under way have ended;
    /// none reopens, and no other read starts, before `work` returns.
    pub fn closed<R>(&self, work: impl FnOnce() -> R) -> R {
        self.installing.store(true, Ordering::Relaxed);
        let _alone = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.installing.store(false, Ordering::Relaxed);
        let mut held: Vec<_> = self.slots.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner())).collect();
        for slot in &mut held {
            **slot = None;
        }
        work()
    }
}

/// Why the pool could not take a job.
pub const BUSY: &str = "the node is overloaded with reads; nothing was done";

impl ReadPool {
    /// Opens `count` readers (plus one for classifying) on the database at `path` and
    /// starts their threads. `answer_bytes` bounds all answers in flight on this node.
    pub fn start(
        path: &Path,
        core: SyncSender<Event>,
        count: usize,
        limits: Limits,
        timeout: Duration,
        answer_bytes: u64,
    ) -> Result<ReadPool, String> {
        let span = tracing::Span::current();
        let (classify, classify_queue) = sync_channel::<Classify>(4096);
        let (queries, queue) = sync_channel::<Query>(1024);
        // Slot 0 is the classifier's, then one per reader.
        let connections = Arc::new(Connections::open(path, count + 1)?);
        let classifier = connections.clone();
        let classifier_span = span.clone();
        let to_readers = queries.clone();
        let pool_core = core.clone();
        std::thread::Builder::new()
            .name("classify".into())
            .spawn(move || {
                let _enter = classifier_span.enter();
                while let Ok(Classify { sql, linearizable, reply }) = classify_queue.recv() {
                    let judged = classifier.with(0, |reader| reader.classify_counted(&sql));
                    let judged = judged.unwrap_or_else(|e| Err(ClassifyError::unavailable(e)));
                    let result = judged.map(|(kind, statements)| match kind {
                        Kind::Read => read(&core, &to_readers, sql, statements, linearizable),
                        Kind::Write => write(&core, sql),
                    });
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| format!("cannot start the classifying thread: {e}"))?;
        let queue = Arc::new(Mutex::new(queue));
        let budget = Arc::new(Semaphore::new((answer_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64) as usize));
        for i in 0..count {
            let (queue, budget, span, connections) = (queue.clone(), budget.clone(), span.clone(), connections.clone());
            std::thread::Builder::new()
                .name(format!("read-{i}"))
                .spawn(move || {
                    let _enter = span.enter();
                    serve(&connections, i + 1, &queue, &budget, &limits, timeout);
                })
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        }
        Ok(ReadPool { classify, queries, connections, core: pool_core })
    }

    /// The pool's connections, for a snapshot install to close.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// Whether SQLite judges `sql` a read (and of how many statements) or a write, against
    /// the latest committed schema; a write is handed to the Raft core at once. The outer
    /// error means the node could not take the job.
    pub async fn classify(
        &self,
        sql: String,
        linearizable: bool,
    ) -> Result<Result<Classified, ClassifyError>, &'static str> {
        let (reply, answer) = oneshot::channel();
        submit(&self.classify, Classify { sql, linearizable, reply })?;
        answer.await.map_err(|_| "the node is shutting down; nothing was done")
    }

    /// Hands a line known to be a write to the Raft core.
    pub fn write(&self, sql: String) -> Classified {
        write(&self.core, sql)
    }

    /// Starts a line known to be a read of one statement (after its barrier, if it must be
    /// linearizable).
    pub fn read(&self, sql: String, linearizable: bool) -> Classified {
        read(&self.core, &self.queries, sql, 1, linearizable)
    }

    /// Starts a read; its results arrive on the returned channel as they are produced.
    /// Dropping the receiver stops the read.
    pub fn query(&self, sql: String) -> Result<mpsc::UnboundedReceiver<ReadItem>, &'static str> {
        let (sink, items) = mpsc::unbounded_channel();
        submit(&self.queries, Query { sql, sink })?;
        Ok(items)
    }
}

/// Starts a read on a reader, after its barrier (which the Raft core asks for) if it must
/// be linearizable: its outputs arrive on the receiver.
fn read(
    core: &SyncSender<Event>,
    queries: &SyncSender<Query>,
    sql: String,
    statements: usize,
    linearizable: bool,
) -> Classified {
    let (sink, items) = mpsc::unbounded_channel();
    let query = PendingQuery { queries: queries.clone(), job: Query { sql, sink } };
    if linearizable {
        barrier_then_query(core, query);
    } else {
        query.start(Ok(()));
    }
    Classified::Read { statements, items }
}

/// Hands a write to the Raft core without waiting: its answer arrives on the receiver.
fn write(core: &SyncSender<Event>, sql: String) -> Classified {
    let (tx, rx) = oneshot::channel();
    match submit_to_core(core, Request::Write { sql, reply: tx }) {
        Ok(()) => Classified::Submitted(rx),
        Err(refused) => Classified::Refused(refused),
    }
}

/// Hands a request to the Raft core without waiting: a full queue means overload.
pub fn submit_to_core(core: &SyncSender<Event>, request: Request) -> Result<(), Reply> {
    match core.try_send(Event::Client(request)) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            Err(Reply::error(ErrorCode::Unavailable, "the node is overloaded; nothing was done"))
        }
        Err(TrySendError::Disconnected(_)) => {
            Err(Reply::error(ErrorCode::Unavailable, "the node is shutting down; nothing was done"))
        }
    }
}

fn submit<T>(queue: &SyncSender<T>, job: T) -> Result<(), &'static str> {
    match queue.try_send(job) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(BUSY),
        Err(TrySendError::Disconnected(_)) => Err("the node is shutting down; nothing was done"),
    }
}

fn serve(
    connections: &Connections,
    slot: usize,
    queue: &Mutex<Receiver<Query>>,
    budget: &Arc<Semaphore>,
    limits: &Limits,
    timeout: Duration,
) {
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.recv()
        };
        let Ok(Query { sql, sink }) = job else { return };
        if sink.is_closed() {
            continue; // the session gave up while the job waited
        }
        let mut starved = false;
        let result = connections.with(slot, |reader| {
            reader.query(&sql, limits, timeout, &mut |output| {
                let units = output.size().div_ceil(UNIT).clamp(1, u32::MAX as u64) as u32;
                match budget.clone().try_acquire_many_owned(units) {
                    Ok(permit) => sink.send(ReadItem::Output(output, permit)).is_ok(),
                    Err(_) => {
                        starved = true;
                        false
                    }
                }
            })
        });
        // A connection that could not reopen fails this read alone.
        let result = result.and_then(|read| read);
        let result = match result {
            Err(_) if starved => {
                Err("the node holds too many answers its clients have not read yet; try again shortly".to_string())
            }
            other => other,
        };
        if let Err(e) = &result {
            if e.contains("cannot start a read") {
                warn!("{e}");
            }
        }
        let _ = sink.send(ReadItem::Done(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn connections(dir: &Path) -> Arc<Connections> {
        let path = dir.join("state.sqlite");
        drop(sqlite_sm::StateMachine::open(&path).expect("create"));
        Arc::new(Connections::open(&path, 2).expect("open"))
    }

    #[test]
    fn an_install_waits_for_a_snapshot_being_read_and_closed_readers_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let connections = connections(dir.path());
        let (started, reading) = std::sync::mpsc::channel();
        let sender = connections.clone();
        let read = std::thread::spawn(move || {
            sender.reading(|| {
                let _ = started.send(());
                std::thread::sleep(Duration::from_millis(300));
                Instant::now()
            })
        });
        reading.recv().expect("reading");
        let installed = connections.closed(Instant::now);
        let read_ended = read.join().expect("read");
        assert!(installed >= read_ended, "the install began only once the read had ended");
        assert!(connections.slots.iter().all(|s| s.lock().map(|s| s.is_none()).unwrap_or(false)), "all closed");
        // The closed connections reopen on their next use.
        assert_eq!(connections.with(1, |r| r.classify("SELECT 1").map(|_| ())).expect("reopened"), Ok(()));
    }
}
