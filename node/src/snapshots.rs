//! Moving snapshots between nodes (§7). raft-core asks for a snapshot to be sent
//! (`Ready::send_snapshots`) and is told when the transfer ended (`report_snapshot`);
//! the bytes are ours to move:
//!
//! - The leader copies its state database on a thread of its own (SQLite's backup API,
//!   see `sqlite_sm::snapshot::copy`), so neither the Raft thread nor the apply thread
//!   waits for the copy. The applied index is read from inside the copy; its term comes
//!   from the Raft log.
//! - It streams the copy to the follower in pieces of [`CHUNK_BYTES`], at most [`WINDOW`]
//!   unacknowledged at a time, over the ordinary peer connection: heartbeats and votes
//!   travel between the pieces, so a transfer never starves the cluster.
//! - The follower writes the pieces in order to a file of its own. With the last one it
//!   checks the whole (SHA-256 and `PRAGMA integrity_check`, off the Raft thread), makes
//!   it durable, and only then hands Raft an `InstallSnapshot` message. It answers the
//!   last piece at once and again with the verdict, which the leader waits for as long as
//!   checking a file of that size may take.
//! - Any gap, timeout, refusal or lost connection fails the transfer; the leader's Raft
//!   asks again after a heartbeat, and the transfer starts over from a new copy.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::Duration;

use raft_core::{Index, NodeId, SnapshotMeta, Term};
use tracing::{info, warn};
use transport::Transport;

use crate::core::Event;
use crate::protocol::{Chunk, PeerMessage};

/// The bytes in one piece: well under the smallest frame limit (16 MiB) once base64 and
/// JSON have grown them by a third.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Pieces sent ahead of the follower's acknowledgements.
pub const WINDOW: u64 = 4;

/// A follower's acknowledgement, routed by the Raft core to the transfer's thread.
#[derive(Clone, Debug)]
pub struct Ack {
    /// Bytes the follower holds in order.
    pub received: u64,
    /// The whole passed the follower's checks.
    pub verified: bool,
    /// Why it gave up, if it did.
    pub error: Option<String>,
}

/// How fast a follower is assumed to check a snapshot at worst (SHA-256, then SQLite's
/// integrity check), to wait for its verdict on a large one.
pub const CHECK_BYTES_PER_SEC: u64 = 20 << 20;

/// One transfer to start on a thread of its own.
pub struct Outgoing {
    /// The follower.
    pub to: NodeId,
    /// The transfer's id.
    pub id: u64,
    /// The leader's term when Raft asked.
    pub term: Term,
    /// The state database to copy.
    pub state: PathBuf,
    /// Where the copy goes.
    pub copy: PathBuf,
    /// Sends the pieces.
    pub transport: Transport<PeerMessage>,
    /// The follower's acknowledgements.
    pub acks: Receiver<Ack>,
    /// Reports to the Raft core.
    pub core: SyncSender<Event>,
    /// How long to wait for an acknowledgement (or the copy's term) before giving up.
    pub timeout: Duration,
}

/// How a transfer ended, for `Node::report_snapshot`.
#[derive(Debug)]
pub struct Sent {
    /// The follower.
    pub to: NodeId,
    /// The transfer.
    pub id: u64,
    /// The index the copy held (0 if the copy failed).
    pub index: Index,
    /// Whether the follower acknowledged the whole, verified.
    pub delivered: bool,
    /// The size of the snapshot (0 if unknown).
    pub bytes: u64,
}

/// Starts `job` on a thread; its end arrives at the core as [`Event::SnapshotSent`].
/// Fails only if no thread can be started: the core then reports the failure itself (it
/// must never wait on its own queue).
pub fn start(job: Outgoing) -> Result<(), String> {
    let (to, id) = (job.to, job.id);
    let spawned = std::thread::Builder::new().name(format!("snapshot-to-{to}")).spawn(move || {
        let started = std::time::Instant::now();
        let (index, result) = send(&job);
        let _ = std::fs::remove_file(&job.copy);
        match &result {
            Ok(bytes) => info!(
                "snapshot at index {index} sent to node {to}: {bytes} bytes in {:.1} s",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => warn!("snapshot transfer to node {to} failed: {e}"),
        }
        let (delivered, bytes) = match result {
            Ok(bytes) => (true, bytes),
            Err(_) => (false, 0),
        };
        let _ = job.core.send(Event::SnapshotSent(Sent { to, id, index, delivered, bytes }));
    });
    spawned.map(|_| ()).map_err(|e| format!("cannot start a snapshot transfer to node {to}: {e}"))
}

/// Copies and streams; returns the copy's index and the bytes sent, or why it failed.
fn send(job: &Outgoing) -> (Index, Result<u64, String>) {
    let index = match sqlite_sm::snapshot::copy(&job.state, &job.copy) {
        Ok(index) => index,
        Err(e) => return (0, Err(e)),
    };
    (index, stream(job, index))
}

fn stream(job: &Outgoing, index: Index) -> Result<u64, String> {
    // The copy's term, from the Raft log: the core compacts nothing while a copy is made,
    // so the log still holds that entry, or has it as its snapshot point.
    let (tx, rx) = std::sync::mpsc::channel();
    job.core
        .send(Event::SnapshotTerm { to: job.to, id: job.id, index, reply: tx })
        .map_err(|_| "the node is stopping".to_string())?;
    let meta = rx
        .recv_timeout(job.timeout)
        .map_err(|_| "the Raft core did not answer".to_string())?
        .ok_or_else(|| format!("the log no longer knows the term of index {index}"))?;
    let sha256 = sqlite_sm::snapshot::checksum(&job.copy)?;
    let mut file = File::open(&job.copy).map_err(|e| format!("cannot read the copy: {e}"))?;
    let total = file.metadata().map_err(|e| format!("cannot read the copy: {e}"))?.len();
    let mut sent = 0u64;
    let mut acked = 0u64;
    loop {
        while sent < total && sent - acked < WINDOW * CHUNK_BYTES as u64 {
            let len = (CHUNK_BYTES as u64).min(total - sent) as usize;
            let mut data = vec![0u8; len];
            file.read_exact(&mut data).map_err(|e| format!("cannot read the copy: {e}"))?;
            let chunk = Chunk {
                id: job.id,
                term: job.term,
                meta: meta.clone(),
                offset: sent,
                total,
                sha256: sha256.clone(),
                data,
            };
            job.transport
                .send(job.to, PeerMessage::SnapshotChunk(chunk))
                .map_err(|e| format!("the connection refused a piece: {e:?}"))?;
            sent += len as u64;
        }
        // Once all has arrived the follower checks it: allow for that.
        let wait =
            if acked == total { job.timeout + Duration::from_secs(total / CHECK_BYTES_PER_SEC) } else { job.timeout };
        let ack = match job.acks.recv_timeout(wait) {
            Ok(ack) => ack,
            Err(RecvTimeoutError::Timeout) => return Err(format!("no answer for {wait:?}")),
            Err(RecvTimeoutError::Disconnected) => return Err("superseded by a newer transfer".to_string()),
        };
        if let Some(error) = ack.error {
            return Err(format!("the follower refused it: {error}"));
        }
        if ack.received < acked || ack.received > sent {
            return Err(format!(
                "the follower holds {} bytes, but {acked} were acknowledged and {sent} sent",
                ack.received
            ));
        }
        acked = ack.received;
        if ack.verified && acked == total {
            return Ok(total);
        }
    }
}

/// A transfer being received.
struct Incoming {
    from: NodeId,
    id: u64,
    term: Term,
    meta: SnapshotMeta,
    total: u64,
    sha256: String,
    file: File,
    received: u64,
}

/// What the core does after a piece arrived.
#[derive(Debug)]
pub enum Received {
    /// Send this answer to the leader.
    Ack(PeerMessage),
    /// The whole has arrived: verify it (see [`verify`]), then answer.
    Complete {
        /// The transfer.
        id: u64,
        /// Its term.
        term: Term,
        /// Where it ends.
        meta: SnapshotMeta,
        /// Its size.
        total: u64,
        /// Its checksum.
        sha256: String,
    },
}

/// The follower's side: at most one transfer at a time, written to one file.
pub struct Receiving {
    path: PathBuf,
    max_bytes: u64,
    current: Option<Incoming>,
}

impl Receiving {
    /// Receives into `path`, refusing snapshots larger than `max_bytes`.
    pub fn new(path: PathBuf, max_bytes: u64) -> Receiving {
        let _ = std::fs::remove_file(&path);
        Receiving { path, max_bytes, current: None }
    }

    /// The file transfers are written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes one piece from `from`.
    pub fn chunk(&mut self, from: NodeId, chunk: Chunk) -> Received {
        let ack = |id, received, error: Option<String>| {
            Received::Ack(PeerMessage::SnapshotAck { id, received, verified: false, error })
        };
        let same = self.current.as_ref().is_some_and(|c| c.from == from && c.id == chunk.id);
        if !same && self.current.as_ref().is_some_and(|c| c.received == c.total) {
            // The file is being checked: a new transfer would overwrite it.
            return ack(chunk.id, 0, Some("still checking the previous snapshot".into()));
        }
        if !same {
            if chunk.offset != 0 {
                // A piece of a transfer we do not hold (we restarted, or it was replaced).
                return ack(chunk.id, 0, Some("this node holds no earlier piece of that transfer".into()));
            }
            if chunk.total > self.max_bytes || chunk.total == 0 {
                let error = format!("a snapshot of {} bytes is outside (0, {}]", chunk.total, self.max_bytes);
                return ack(chunk.id, 0, Some(error));
            }
            let file = match File::create(&self.path) {
                Ok(file) => file,
                Err(e) => return ack(chunk.id, 0, Some(format!("cannot create {}: {e}", self.path.display()))),
            };
            self.current = Some(Incoming {
                from,
                id: chunk.id,
                term: chunk.term,
                meta: chunk.meta.clone(),
                total: chunk.total,
                sha256: chunk.sha256.clone(),
                file,
                received: 0,
            });
        }
        let Some(current) = self.current.as_mut() else { return ack(chunk.id, 0, Some("no transfer".into())) };
        let fits = chunk.offset.checked_add(chunk.data.len() as u64).is_some_and(|end| end <= current.total);
        let consistent = chunk.total == current.total && chunk.meta == current.meta && chunk.sha256 == current.sha256;
        if !fits || !consistent {
            let error = "a piece does not fit the transfer it claims to belong to".to_string();
            self.current = None;
            return ack(chunk.id, 0, Some(error));
        }
        if chunk.offset != current.received {
            // A duplicate, or a piece after a gap: say what we hold.
            return ack(chunk.id, current.received, None);
        }
        if let Err(e) = current.file.write_all(&chunk.data) {
            let error = format!("cannot write {}: {e}", self.path.display());
            self.current = None;
            return ack(chunk.id, 0, Some(error));
        }
        current.received += chunk.data.len() as u64;
        if current.received < current.total {
            return ack(chunk.id, current.received, None);
        }
        if let Err(e) = current.file.flush() {
            let error = format!("cannot write {}: {e}", self.path.display());
            self.current = None;
            return ack(chunk.id, 0, Some(error));
        }
        Received::Complete {
            id: current.id,
            term: current.term,
            meta: current.meta.clone(),
            total: current.total,
            sha256: current.sha256.clone(),
        }
    }

    /// The term, snapshot point and size of transfer `id` from `from`, if it is still
    /// the one being received.
    pub fn current(&self, from: NodeId, id: u64) -> Option<(Term, SnapshotMeta, u64)> {
        self.current.as_ref().filter(|c| c.from == from && c.id == id).map(|c| (c.term, c.meta.clone(), c.total))
    }

    /// Forgets the current transfer (it was verified, refused or superseded).
    pub fn finish(&mut self) {
        self.current = None;
    }
}

/// Checks a complete file (on a thread of its own: it reads the whole file) and makes it
/// durable. The result goes to the core as [`Event::SnapshotVerified`].
/// Fails only if no thread can be started (the core then refuses the snapshot itself).
pub fn verify(
    path: PathBuf,
    from: NodeId,
    id: u64,
    meta: SnapshotMeta,
    sha256: String,
    core: SyncSender<Event>,
) -> Result<(), String> {
    let spawned = std::thread::Builder::new().name("snapshot-verify".into()).spawn(move || {
        let result = check(&path, meta.index, &sha256);
        let _ = core.send(Event::SnapshotVerified { from, id, result });
    });
    spawned.map(|_| ()).map_err(|e| format!("cannot start the check: {e}"))
}

fn check(path: &Path, index: Index, sha256: &str) -> Result<(), String> {
    let actual = sqlite_sm::snapshot::checksum(path)?;
    if actual != sha256 {
        return Err(format!("its SHA-256 is {actual}, but the leader sent {sha256}"));
    }
    sqlite_sm::snapshot::verify(path, index)?;
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| format!("cannot make it durable: {e}"))
}

/// A channel for one transfer's acknowledgements.
pub fn ack_channel() -> (Sender<Ack>, Receiver<Ack>) {
    std::sync::mpsc::channel()
}
