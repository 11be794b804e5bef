//! Moving snapshots between nodes (§7). raft-core asks for a snapshot to be sent
//! (`Ready::send_snapshots`) and is told when the transfer ended (`report_snapshot`);
//! the bytes are ours to move:
//!
//! - The leader reads its state database on a thread of its own, page by page from one
//!   read transaction (see `sqlite_sm::snapshot::read_pages`), so neither the Raft thread
//!   nor the apply thread waits for it, and nothing is copied first. The applied index is
//!   read inside that transaction; its term comes from the Raft log.
//! - It streams the pages to the follower as it reads them, in pieces of [`CHUNK_BYTES`],
//!   at most [`WINDOW`] unacknowledged at a time, over the ordinary peer connection:
//!   heartbeats and votes travel between the pieces, so a transfer never starves the
//!   cluster. The last piece carries the SHA-256 of the whole. If the follower is slow,
//!   the read does not wait for it past [`READ_HOLD`]: the rest goes to a file first.
//! - The follower writes the pieces in order to a file of its own, hashing them as they
//!   come and starting their writeback to disk on a thread of its own. With the last one
//!   it checks the whole (SHA-256 at once, then `PRAGMA integrity_check` off the Raft
//!   thread), makes it durable, and only then hands Raft an `InstallSnapshot` message.
//!   It answers the last piece at once and again with the verdict, which the leader
//!   waits for as long as checking a file of that size may take.
//! - Any gap, refusal, lost connection, or a follower that takes nothing more for the
//!   timeout fails the transfer; the leader's Raft asks again after a heartbeat, and the
//!   transfer starts over with a new read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::{Index, NodeId, SnapshotMeta, Term};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::core::Event;
use crate::protocol::{Chunk, PeerMessage};
use crate::readers::Connections;

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
    /// The state database to send.
    pub state: PathBuf,
    /// Where the pages go that a slow follower has not taken when the read must end
    /// (see `read_hold`); removed when the transfer ends, and at every start.
    pub spool: PathBuf,
    /// The node's readers: an install waits while the state is being read.
    pub readers: Arc<Connections>,
    /// Sends a piece to the follower (over the peer connection).
    pub to_follower: Box<dyn Fn(PeerMessage) -> Result<(), String> + Send>,
    /// The follower's acknowledgements.
    pub acks: Receiver<Ack>,
    /// Reports to the Raft core.
    pub core: SyncSender<Event>,
    /// How long to wait for an acknowledgement (or the snapshot's term) before giving up.
    pub timeout: Duration,
    /// How long the state may be read while the follower is slow: [`READ_HOLD`].
    pub read_hold: Duration,
}

/// How a transfer ended, for `Node::report_snapshot`.
#[derive(Debug)]
pub struct Sent {
    /// The follower.
    pub to: NodeId,
    /// The transfer.
    pub id: u64,
    /// The index the snapshot held (0 if reading the state failed).
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
        let started = Instant::now();
        let (index, result) = send(&job);
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

/// Reads and streams; returns the snapshot's index and the bytes sent, or why it failed.
fn send(job: &Outgoing) -> (Index, Result<u64, String>) {
    let sent = read_and_stream(job);
    let _ = std::fs::remove_file(&job.spool);
    sent
}

fn read_and_stream(job: &Outgoing) -> (Index, Result<u64, String>) {
    let started = Instant::now();
    let mut transfer = Transfer {
        job,
        meta: None,
        hasher: Sha256::new(),
        total: 0,
        sent: 0,
        acked: 0,
        progress_at: started,
        spool: None,
    };
    let read = job.readers.reading(|| {
        sqlite_sm::snapshot::read_pages(&job.state, CHUNK_BYTES, |pages, data| {
            transfer.piece(pages, data, started + job.read_hold)
        })
    });
    let index = match read {
        Ok(index) => index,
        Err(e) => return (transfer.meta.map_or(0, |m| m.index), Err(e)),
    };
    let spooled = if transfer.spool.is_some() { ", the rest set aside for a slow follower" } else { "" };
    info!("read the state at index {index} for node {} in {:.2} s{spooled}", job.to, started.elapsed().as_secs_f64());
    (index, transfer.finish())
}

/// How long the leader may keep its read transaction open while the follower is slow to
/// take the pieces: the state's write-ahead log cannot be checkpointed meanwhile, and so
/// grows with every write. Past it, the rest of the pages go to a file of the leader's
/// own at once (see [`Outgoing::spool`]), and are sent from there.
pub const READ_HOLD: Duration = Duration::from_secs(5);

/// One transfer on the leader's side.
struct Transfer<'a> {
    job: &'a Outgoing,
    /// Where the snapshot ends, once the first piece was read.
    meta: Option<SnapshotMeta>,
    /// The SHA-256 of what has been sent.
    hasher: Sha256,
    total: u64,
    sent: u64,
    acked: u64,
    /// When the follower last took more bytes (or the transfer began). An answer that
    /// does not move it on does not count, so a follower cannot stall a transfer forever.
    progress_at: Instant,
    /// The pieces read but not yet sent, once the read could wait no longer.
    spool: Option<(File, u64)>,
}

impl Transfer<'_> {
    /// Takes the next piece read: sends it once the follower is less than [`WINDOW`]
    /// pieces behind, or, once the read has been held until `hold`, sets it aside.
    fn piece(&mut self, pages: sqlite_sm::snapshot::Pages, data: Vec<u8>, hold: Instant) -> Result<(), String> {
        let job = self.job;
        if self.meta.is_none() {
            // The snapshot's term, from the Raft log: the core compacts nothing until it
            // has answered this, and then keeps that entry, so the log still holds it or
            // has it as its snapshot point.
            let (tx, rx) = std::sync::mpsc::channel();
            job.core
                .send(Event::SnapshotTerm { to: job.to, id: job.id, index: pages.index, reply: tx })
                .map_err(|_| "the node is stopping".to_string())?;
            let meta = rx
                .recv_timeout(job.timeout)
                .map_err(|_| "the Raft core did not answer".to_string())?
                .ok_or_else(|| format!("the log no longer knows the term of index {}", pages.index))?;
            self.meta = Some(meta);
            self.total = pages.total;
            self.progress_at = Instant::now();
        }
        while self.spool.is_none() && self.window_full() {
            if job.readers.install_waiting() {
                // This node (no longer leading) installs a snapshot of its own, which
                // waits for this read to end.
                return Err("this node is installing a snapshot".to_string());
            }
            if Instant::now() >= hold {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&job.spool)
                    .map_err(|e| format!("cannot create {}: {e}", job.spool.display()))?;
                self.spool = Some((file, 0));
            } else {
                // In short steps, to notice an install waiting.
                self.wait(Some(hold.min(Instant::now() + Duration::from_millis(100))))?;
            }
        }
        match &mut self.spool {
            Some(_) if job.readers.install_waiting() => Err("this node is installing a snapshot".to_string()),
            Some((file, spooled)) => {
                file.write_all(&data).map_err(|e| format!("cannot write {}: {e}", job.spool.display()))?;
                *spooled += data.len() as u64;
                Ok(())
            }
            None => self.send(data),
        }
    }

    fn window_full(&self) -> bool {
        self.sent - self.acked >= WINDOW * CHUNK_BYTES as u64
    }

    /// Sends one piece; the last carries the checksum of the whole.
    fn send(&mut self, data: Vec<u8>) -> Result<(), String> {
        let (job, Some(meta)) = (self.job, self.meta.clone()) else { return Err("no snapshot point".into()) };
        self.hasher.update(&data);
        let len = data.len() as u64;
        let last = self.sent + len == self.total;
        let sha256 = last.then(|| sqlite_sm::snapshot::hex(&std::mem::take(&mut self.hasher).finalize()));
        let chunk = Chunk { id: job.id, term: job.term, meta, offset: self.sent, total: self.total, sha256, data };
        (job.to_follower)(PeerMessage::SnapshotChunk(chunk))
            .map_err(|e| format!("the connection refused a piece: {e}"))?;
        self.sent += len;
        Ok(())
    }

    /// Waits for the follower's next answer, until `limit` at the latest; true once it
    /// has verified the whole. Fails if the follower has not moved on for the timeout
    /// (plus, once all has arrived, the time checking a file of that size may take).
    fn wait(&mut self, limit: Option<Instant>) -> Result<bool, String> {
        let job = self.job;
        let allowed = if self.acked == self.total {
            job.timeout + Duration::from_secs(self.total / CHECK_BYTES_PER_SEC)
        } else {
            job.timeout
        };
        let deadline = self.progress_at + allowed;
        let until = limit.map_or(deadline, |limit| limit.min(deadline));
        match job.acks.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(ack) => self.take(ack),
            Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                Err(format!("the follower took nothing more for {allowed:?}"))
            }
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => Err("superseded by a newer transfer".to_string()),
        }
    }

    /// Sends what was set aside, then waits for the follower's verdict on the whole;
    /// returns the bytes sent.
    fn finish(mut self) -> Result<u64, String> {
        let spooled = self.spool.as_ref().map_or(0, |(_, spooled)| *spooled);
        if self.sent + spooled != self.total || self.meta.is_none() {
            return Err(format!("{} bytes of the state were read, not {}", self.sent + spooled, self.total));
        }
        if let Some((mut file, _)) = self.spool.take() {
            let failed = |e: std::io::Error| format!("cannot read {}: {e}", self.job.spool.display());
            file.seek(SeekFrom::Start(0)).map_err(failed)?;
            while self.sent < self.total {
                while self.window_full() {
                    self.wait(None)?;
                }
                let mut data = vec![0u8; (CHUNK_BYTES as u64).min(self.total - self.sent) as usize];
                file.read_exact(&mut data).map_err(failed)?;
                self.send(data)?;
            }
        }
        while !self.wait(None)? {}
        Ok(self.total)
    }
    /// Takes an acknowledgement; true once the follower has verified the whole.
    fn take(&mut self, ack: Ack) -> Result<bool, String> {
        if let Some(error) = ack.error {
            return Err(format!("the follower refused it: {error}"));
        }
        if ack.received < self.acked || ack.received > self.sent {
            return Err(format!(
                "the follower holds {} bytes, but {} were acknowledged and {} sent",
                ack.received, self.acked, self.sent
            ));
        }
        if ack.received > self.acked || ack.verified {
            self.progress_at = Instant::now();
        }
        self.acked = ack.received;
        Ok(ack.verified && self.acked == self.total)
    }
}

/// A transfer being received.
struct Incoming {
    from: NodeId,
    id: u64,
    term: Term,
    meta: SnapshotMeta,
    total: u64,
    file: File,
    /// The SHA-256 of what has arrived so far, so the whole is never read back for it.
    hasher: Sha256,
    /// Starts writing what has arrived to disk while the rest arrives (see [`Flusher`]).
    flusher: Option<Flusher>,
    received: u64,
}

/// Bytes received between two starts of writeback to disk.
const FLUSH_BYTES: u64 = 64 << 20;

/// A thread that makes the received file durable piece by piece while it arrives, so the
/// final sync (before the snapshot may be installed) finds little left to write, and
/// disk and network work at once. It never blocks the Raft thread, which only signals it.
struct Flusher {
    signal: SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Flusher {
    /// Starts one for `file`; `None` if no thread can be started (the final sync then
    /// does all the work).
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (signal, requests) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new().name("snapshot-flush".into()).spawn(move || {
            // Ends when the transfer is dropped (the sender goes with it).
            while requests.recv().is_ok() {
                let _ = file.sync_data();
            }
        });
        spawned.ok().map(|thread| Flusher { signal, thread })
    }

    /// Stops it; the thread ends once a sync under way has finished. Join it before the
    /// file may become the state database: its descriptor must be closed by then (closing
    /// any descriptor of a file drops this process's locks on it).
    fn stop(self) -> std::thread::JoinHandle<()> {
        drop(self.signal);
        self.thread
    }

    /// Asks for a sync; one already asked for and not yet started covers this one too.
    fn poke(&self) {
        let _ = self.signal.try_send(());
    }
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
        /// The writeback thread, to join before the file is used (see [`Flusher::stop`]).
        flusher: Option<std::thread::JoinHandle<()>>,
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
                flusher: Flusher::start(&file),
                file,
                hasher: Sha256::new(),
                received: 0,
            });
        }
        let Some(current) = self.current.as_mut() else { return ack(chunk.id, 0, Some("no transfer".into())) };
        if current.received == current.total {
            // All arrived and being checked: a late or repeated piece changes nothing.
            return ack(chunk.id, current.total, None);
        }
        let fits = chunk.offset.checked_add(chunk.data.len() as u64).is_some_and(|end| end <= current.total);
        let consistent = chunk.total == current.total && chunk.meta == current.meta;
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
        current.hasher.update(&chunk.data);
        let before = current.received;
        current.received += chunk.data.len() as u64;
        if current.received / FLUSH_BYTES != before / FLUSH_BYTES {
            if let Some(flusher) = &current.flusher {
                flusher.poke();
            }
        }
        if current.received < current.total {
            return ack(chunk.id, current.received, None);
        }
        // The last piece carries the checksum of the whole: a piece lost or mangled on the
        // way is never installed.
        let actual = sqlite_sm::snapshot::hex(&std::mem::take(&mut current.hasher).finalize());
        if chunk.sha256.as_deref() != Some(actual.as_str()) {
            let sent = chunk.sha256.as_deref().unwrap_or("nothing");
            let error = format!("its SHA-256 is {actual}, but the leader sent {sent}");
            self.current = None;
            return ack(chunk.id, 0, Some(error));
        }
        if let Err(e) = current.file.flush() {
            let error = format!("cannot write {}: {e}", self.path.display());
            self.current = None;
            return ack(chunk.id, 0, Some(error));
        }
        let flusher = current.flusher.take().map(Flusher::stop);
        Received::Complete {
            id: current.id,
            term: current.term,
            meta: current.meta.clone(),
            total: current.total,
            flusher,
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

/// Checks a complete file whose checksum matched (on a thread of its own: SQLite reads
/// the whole file) and makes it durable. The result goes to the core as
/// [`Event::SnapshotVerified`]. Fails only if no thread can be started (the core then
/// refuses the snapshot itself).
pub fn verify(
    path: PathBuf,
    from: NodeId,
    id: u64,
    meta: SnapshotMeta,
    flusher: Option<std::thread::JoinHandle<()>>,
    core: SyncSender<Event>,
) -> Result<(), String> {
    let spawned = std::thread::Builder::new().name("snapshot-verify".into()).spawn(move || {
        let started = Instant::now();
        if let Some(flusher) = flusher {
            let _ = flusher.join();
        }
        // A verdict must come whatever happens here, or the node would refuse every
        // later snapshot as "still checking" this one.
        let result = std::panic::catch_unwind(|| check(&path, meta.index))
            .unwrap_or_else(|_| Err("checking the snapshot failed unexpectedly".to_string()));
        info!(
            "checked the snapshot at index {} from node {from} in {:.2} s",
            meta.index,
            started.elapsed().as_secs_f64()
        );
        let _ = core.send(Event::SnapshotVerified { from, id, result });
    });
    spawned.map(|_| ()).map_err(|e| format!("cannot start the check: {e}"))
}

fn check(path: &Path, index: Index) -> Result<(), String> {
    sqlite_sm::snapshot::verify(path, index)?;
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| format!("cannot make it durable: {e}"))
}

/// A channel for one transfer's acknowledgements.
pub fn ack_channel() -> (Sender<Ack>, Receiver<Ack>) {
    std::sync::mpsc::channel()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, sync_channel};

    /// A state database of about `megabytes` MiB, at applied index 2.
    fn state(dir: &Path, megabytes: u64) -> PathBuf {
        let path = dir.join("state.sqlite");
        let mut sm = sqlite_sm::StateMachine::open(&path).expect("open");
        for (index, sql) in [
            (1, "CREATE TABLE t(x, pad)".to_string()),
            (2, format!("WITH RECURSIVE c(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM c WHERE v < {}) INSERT INTO t SELECT v, zeroblob(1000) FROM c", megabytes * 1000)),
        ] {
            let command = sqlite_sm::WriteCommand {
                sql,
                time_ms: 0,
                seed: 1,
                limits: sqlite_sm::Limits::default(),
                origin: None,
            };
            let entry = raft_core::Entry { index, term: 1, payload: raft_core::Payload::Command(command.encode()) };
            sm.apply(&entry).expect("applied");
        }
        path
    }

    /// A transfer of `state` to node 1, with the core's part played by a thread that
    /// answers the snapshot's term; the pieces arrive on the returned receiver.
    fn transfer(
        state: &Path,
        timeout: Duration,
        read_hold: Duration,
    ) -> (Outgoing, Receiver<PeerMessage>, Sender<Ack>) {
        let (pieces, follower) = channel();
        let (acks_tx, acks) = ack_channel();
        let (core, events) = sync_channel(16);
        std::thread::spawn(move || {
            while let Ok(event) = events.recv() {
                if let Event::SnapshotTerm { index, reply, .. } = event {
                    let _ = reply.send(Some(SnapshotMeta { index, term: 1, membership: Default::default() }));
                }
            }
        });
        let readers = Arc::new(Connections::open(state, 1).expect("readers"));
        let job = Outgoing {
            to: 1,
            id: 9,
            term: 1,
            state: state.to_path_buf(),
            spool: state.with_extension("outgoing"),
            readers,
            to_follower: Box::new(move |message| pieces.send(message).map_err(|e| e.to_string())),
            acks,
            core,
            timeout,
            read_hold,
        };
        (job, follower, acks_tx)
    }

    #[test]
    fn a_slow_follower_does_not_keep_the_leaders_read_open_and_still_gets_the_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = state(dir.path(), 12);
        let (job, pieces, acks) = transfer(&path, Duration::from_secs(10), Duration::from_millis(200));
        let spool = job.spool.clone();
        let leader = std::thread::spawn(move || send(&job));
        // The follower takes nothing for longer than the read may be held...
        std::thread::sleep(Duration::from_millis(800));
        assert!(spool.exists(), "the pages the follower has not taken are set aside");
        // ...so by now the leader has let its read go: a write and a full checkpoint pass.
        let writer = rusqlite::Connection::open(&path).expect("open");
        writer.busy_timeout(Duration::ZERO).expect("busy timeout");
        writer.execute("UPDATE t SET x = -x", []).expect("update");
        let busy: i64 = writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).expect("checkpoint");
        assert_eq!(busy, 0, "no reader holds the state's log back");
        // Then it takes everything.
        let mut receiving = Receiving::new(dir.path().join("incoming"), 1 << 30);
        let index = loop {
            let Ok(PeerMessage::SnapshotChunk(chunk)) = pieces.recv_timeout(Duration::from_secs(10)) else {
                panic!("the transfer stopped")
            };
            match receiving.chunk(0, chunk) {
                Received::Ack(PeerMessage::SnapshotAck { received, error: None, .. }) => {
                    acks.send(Ack { received, verified: false, error: None }).expect("ack");
                }
                Received::Complete { meta, total, .. } => {
                    sqlite_sm::snapshot::verify(receiving.path(), meta.index).expect("sound");
                    acks.send(Ack { received: total, verified: true, error: None }).expect("ack");
                    break meta.index;
                }
                other => panic!("{other:?}"),
            }
        };
        let (sent_index, sent) = leader.join().expect("leader");
        assert_eq!((index, sent_index), (2, 2));
        assert!(sent.expect("delivered") > 10 << 20, "more than the window, so some came from the side file");
        assert!(!spool.exists(), "removed once sent");
        // The state as it was read: before the write made meanwhile.
        let received = rusqlite::Connection::open(receiving.path()).expect("open");
        let negative: i64 = received.query_row("SELECT count(*) FROM t WHERE x < 0", [], |r| r.get(0)).expect("count");
        assert_eq!(negative, 0);
    }

    #[test]
    fn a_snapshot_being_read_stops_for_an_install_on_its_own_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = state(dir.path(), 6);
        // A follower that takes nothing, and limits far off: only the install ends it.
        let (job, _pieces, _acks) = transfer(&path, Duration::from_secs(20), Duration::from_secs(20));
        let readers = job.readers.clone();
        let leader = std::thread::spawn(move || send(&job));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        readers.closed(|| ());
        assert!(started.elapsed() < Duration::from_secs(5), "the install waited {:?}", started.elapsed());
        let error = leader.join().expect("leader").1.expect_err("the transfer stops");
        assert!(error.contains("installing"), "{error}");
    }

    #[test]
    fn a_follower_that_answers_without_taking_more_cannot_hold_a_transfer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = state(dir.path(), 6);
        let (job, _pieces, acks) = transfer(&path, Duration::from_millis(300), Duration::from_secs(30));
        let (done, result) = channel();
        std::thread::spawn(move || {
            let _ = done.send(send(&job));
        });
        // It answers every 100 ms, always holding nothing.
        let started = Instant::now();
        let ended = loop {
            if let Ok(ended) = result.recv_timeout(Duration::from_millis(100)) {
                break ended;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the follower held the transfer");
            let _ = acks.send(Ack { received: 0, verified: false, error: None });
        };
        let error = ended.1.expect_err("the transfer fails");
        assert!(error.contains("took nothing more"), "{error}");
    }

    fn piece(offset: u64, data: &[u8], total: u64, sha256: Option<String>) -> Chunk {
        let meta = SnapshotMeta { index: 7, term: 2, membership: Default::default() };
        Chunk { id: 1, term: 2, meta, offset, total, sha256, data: data.to_vec() }
    }

    fn sha(data: &[u8]) -> String {
        sqlite_sm::snapshot::hex(&Sha256::digest(data))
    }

    fn refusal(received: Received) -> Option<String> {
        match received {
            Received::Ack(PeerMessage::SnapshotAck { error, .. }) => error,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn pieces_in_order_with_the_checksum_of_the_whole_complete_a_transfer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut receiving = Receiving::new(dir.path().join("incoming"), 1 << 20);
        let whole = b"0123456789abcdefghij";
        assert_eq!(refusal(receiving.chunk(0, piece(0, &whole[..8], 20, None))), None);
        // A duplicate is answered with what is held, and changes nothing.
        assert_eq!(refusal(receiving.chunk(0, piece(0, &whole[..8], 20, None))), None);
        assert_eq!(refusal(receiving.chunk(0, piece(8, &whole[8..16], 20, None))), None);
        match receiving.chunk(0, piece(16, &whole[16..], 20, Some(sha(whole)))) {
            Received::Complete { id: 1, total: 20, .. } => {}
            other => panic!("expected the transfer complete, got {other:?}"),
        }
        assert_eq!(std::fs::read(receiving.path()).expect("read"), whole);
    }

    #[test]
    fn a_piece_after_the_whole_arrived_leaves_the_transfer_being_checked_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut receiving = Receiving::new(dir.path().join("incoming"), 1 << 20);
        let whole = b"0123456789";
        assert!(matches!(receiving.chunk(0, piece(0, whole, 10, Some(sha(whole)))), Received::Complete { .. }));
        // The same transfer again, claiming another size, or a fresh start of it.
        assert_eq!(refusal(receiving.chunk(0, piece(10, b"", 99, None))), None);
        assert_eq!(refusal(receiving.chunk(0, piece(0, b"xx", 2, None))), None);
        assert!(receiving.current(0, 1).is_some(), "still the one being checked");
        assert_eq!(std::fs::read(receiving.path()).expect("read"), whole);
    }

    #[test]
    fn a_transfer_whose_bytes_do_not_match_the_checksum_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let whole = b"0123456789abcdefghij";
        for last in [Some(sha(b"0123456789abcdefghiX")), None] {
            let mut receiving = Receiving::new(dir.path().join("incoming"), 1 << 20);
            assert_eq!(refusal(receiving.chunk(0, piece(0, &whole[..10], 20, None))), None);
            let error = refusal(receiving.chunk(0, piece(10, &whole[10..], 20, last.clone()))).expect("refused");
            assert!(error.contains("SHA-256"), "{error}");
            assert!(receiving.current(0, 1).is_none(), "the transfer is forgotten");
        }
    }
}
