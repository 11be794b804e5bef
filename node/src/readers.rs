//! Reads off the Raft thread: a few threads, each with its own read-only connection to
//! the state machine's file, that classify lines (read or write) and run reads, streaming
//! rows back to the session that asked. A read never delays heartbeats, commits or
//! `.status`; it is stopped at its step budget or its deadline, whichever comes first.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlite_sm::{ClassifyError, Kind, Limits, Output, Reader};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Work for a reader thread.
enum Job {
    Classify { sql: String, reply: oneshot::Sender<Result<(Kind, usize), ClassifyError>> },
    Query { sql: String, sink: mpsc::Sender<ReadItem> },
}

/// What a streamed read produces: its outputs, then exactly one `Done`.
#[derive(Debug)]
pub enum ReadItem {
    /// Columns, a row, or a statement's changes.
    Output(Output),
    /// The read finished (`Ok`) or stopped with an error.
    Done(Result<(), String>),
}

/// The reader threads and their queue.
#[derive(Clone)]
pub struct ReadPool {
    jobs: SyncSender<Job>,
}

/// Why the pool could not take a job.
pub const BUSY: &str = "the node is overloaded with reads; nothing was done";

impl ReadPool {
    /// Opens `count` readers on the database at `path` and starts their threads.
    pub fn start(path: &std::path::Path, count: usize, limits: Limits, timeout: Duration) -> Result<ReadPool, String> {
        let (jobs, queue) = sync_channel::<Job>(1024);
        let queue = Arc::new(Mutex::new(queue));
        let span = tracing::Span::current();
        for i in 0..count {
            let mut reader = Reader::open(path)?;
            let queue = queue.clone();
            let span = span.clone();
            std::thread::Builder::new()
                .name(format!("read-{i}"))
                .spawn(move || {
                    let _enter = span.enter();
                    serve(&mut reader, &queue, &limits, timeout);
                })
                .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        }
        Ok(ReadPool { jobs })
    }

    /// Whether SQLite judges `sql` a read or a write, against the latest committed
    /// schema. The outer error means no reader could take the job.
    pub async fn classify(&self, sql: String) -> Result<Result<(Kind, usize), ClassifyError>, &'static str> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Classify { sql, reply })?;
        answer.await.map_err(|_| "the node is shutting down; nothing was done")
    }

    /// Starts a read; its results arrive on the returned channel as they are produced.
    /// Dropping the receiver stops the read.
    pub fn query(&self, sql: String) -> Result<mpsc::Receiver<ReadItem>, &'static str> {
        // A small window: rows wait here only while the session writes earlier ones.
        let (sink, items) = mpsc::channel(64);
        self.submit(Job::Query { sql, sink })?;
        Ok(items)
    }

    fn submit(&self, job: Job) -> Result<(), &'static str> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(BUSY),
            Err(TrySendError::Disconnected(_)) => Err("the node is shutting down; nothing was done"),
        }
    }
}

fn serve(reader: &mut Reader, queue: &Mutex<Receiver<Job>>, limits: &Limits, timeout: Duration) {
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.recv()
        };
        match job {
            Err(_) => return,
            Ok(Job::Classify { sql, reply }) => {
                let _ = reply.send(reader.classify_counted(&sql));
            }
            Ok(Job::Query { sql, sink }) => {
                if sink.is_closed() {
                    continue; // the session gave up while the job waited
                }
                let result = reader
                    .query(&sql, limits, timeout, &mut |output| sink.blocking_send(ReadItem::Output(output)).is_ok());
                if let Err(e) = &result {
                    if e.contains("cannot start a read") {
                        warn!("{e}");
                    }
                }
                let _ = sink.blocking_send(ReadItem::Done(result));
            }
        }
    }
}
