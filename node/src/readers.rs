//! Reads off the Raft thread: a few threads, each with its own read-only connection to
//! the state machine's file, that run reads and stream their rows to the session that
//! asked, plus one thread that only classifies lines (read or write), so a heavy read can
//! never hold up a write's classification. The classifier also starts the work a line
//! needs: a write goes from there straight to the Raft core, a read to a reader, or, if
//! it must be linearizable, to the core, which starts it once its barrier passes. Each
//! is one thread hop fewer than going back through the session.
//!
//! A read never delays heartbeats, commits or `.status`, and it never waits for a client:
//! rows go into the session's queue at once. What they may cost is bounded twice: each
//! read by the result limit, and all answers not yet written to their clients, across
//! every session, by one node-wide budget. A read that finds the budget spent stops at
//! once with an error rather than wait, so clients that do not read their answers can
//! neither exhaust memory nor tie up the reader threads.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
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
    queries: SyncSender<Query>,
}

/// Why the pool could not take a job.
pub const BUSY: &str = "the node is overloaded with reads; nothing was done";

impl ReadPool {
    /// Opens `count` readers (plus one for classifying) on the database at `path` and
    /// starts their threads. `answer_bytes` bounds all answers in flight on this node.
    pub fn start(
        path: &std::path::Path,
        core: SyncSender<Event>,
        count: usize,
        limits: Limits,
        timeout: Duration,
        answer_bytes: u64,
    ) -> Result<ReadPool, String> {
        let span = tracing::Span::current();
        let (classify, classify_queue) = sync_channel::<Classify>(4096);
        let (queries, queue) = sync_channel::<Query>(1024);
        let classifier = Reader::open(path)?;
        let classifier_span = span.clone();
        let to_readers = queries.clone();
        std::thread::Builder::new()
            .name("classify".into())
            .spawn(move || {
                let _enter = classifier_span.enter();
                while let Ok(Classify { sql, linearizable, reply }) = classify_queue.recv() {
                    let result = classifier.classify_counted(&sql).map(|(kind, statements)| match kind {
                        Kind::Read => {
                            let (sink, items) = mpsc::unbounded_channel();
                            let query = PendingQuery { queries: to_readers.clone(), job: Query { sql, sink } };
                            if linearizable {
                                barrier_then_query(&core, query);
                            } else {
                                query.start(Ok(()));
                            }
                            Classified::Read { statements, items }
                        }
                        Kind::Write => {
                            let (tx, rx) = oneshot::channel();
                            match submit_to_core(&core, Request::Write { sql, reply: tx }) {
                                Ok(()) => Classified::Submitted(rx),
                                Err(refused) => Classified::Refused(refused),
                            }
                        }
                    });
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| format!("cannot start the classifying thread: {e}"))?;
        let queue = Arc::new(Mutex::new(queue));
        let budget = Arc::new(Semaphore::new((answer_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64) as usize));
        for i in 0..count {
            let mut reader = Reader::open(path)?;
            let (queue, budget, span) = (queue.clone(), budget.clone(), span.clone());
            std::thread::Builder::new()
                .name(format!("read-{i}"))
                .spawn(move || {
                    let _enter = span.enter();
                    serve(&mut reader, &queue, &budget, &limits, timeout);
                })
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        }
        Ok(ReadPool { classify, queries })
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

    /// Starts a read; its results arrive on the returned channel as they are produced.
    /// Dropping the receiver stops the read.
    pub fn query(&self, sql: String) -> Result<mpsc::UnboundedReceiver<ReadItem>, &'static str> {
        let (sink, items) = mpsc::unbounded_channel();
        submit(&self.queries, Query { sql, sink })?;
        Ok(items)
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
    reader: &mut Reader,
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
        let result = reader.query(&sql, limits, timeout, &mut |output| {
            let units = output.size().div_ceil(UNIT).clamp(1, u32::MAX as u64) as u32;
            match budget.clone().try_acquire_many_owned(units) {
                Ok(permit) => sink.send(ReadItem::Output(output, permit)).is_ok(),
                Err(_) => {
                    starved = true;
                    false
                }
            }
        });
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
