//! Reads off the Raft thread: a few threads, each with its own read-only connection to
//! the state machine's file, that run reads and stream their rows to the session that
//! asked, plus one thread that only classifies lines (read or write), so a heavy read can
//! never hold up a write's classification. A line it finds to be a write goes from there
//! straight to the Raft core: one thread hop fewer than back through the session.
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
use crate::protocol::{ErrorCode, Reply, Request};

/// Answers in flight are counted in units of this many bytes.
const UNIT: u64 = 1024;

/// Work for the classification thread.
struct Classify {
    sql: String,
    reply: oneshot::Sender<Result<Classified, ClassifyError>>,
}

/// What classifying a line led to.
#[derive(Debug)]
pub enum Classified {
    /// A read of this many statements, for the session to run.
    Read(usize),
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
        let classifier = Reader::open(path)?;
        let classifier_span = span.clone();
        std::thread::Builder::new()
            .name("classify".into())
            .spawn(move || {
                let _enter = classifier_span.enter();
                while let Ok(Classify { sql, reply }) = classify_queue.recv() {
                    let result = classifier.classify_counted(&sql).map(|(kind, statements)| match kind {
                        Kind::Read => Classified::Read(statements),
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
        let (queries, queue) = sync_channel::<Query>(1024);
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
    pub async fn classify(&self, sql: String) -> Result<Result<Classified, ClassifyError>, &'static str> {
        let (reply, answer) = oneshot::channel();
        submit(&self.classify, Classify { sql, reply })?;
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
