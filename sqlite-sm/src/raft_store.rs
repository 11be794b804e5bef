//! Raft's durable state (Figure 2, "Persistent state on all servers": currentTerm,
//! votedFor, log[]). The log is in append-only segment files ([`crate::segments`]): a
//! batch of entries costs one write and one fsync. The rest, written rarely, is in a
//! SQLite database of its own (`synchronous = FULL`): the term and vote, the log's
//! snapshot point (§7), whose store this is, and how many times the node started.
//!
//! A ready that changes both is written in the order of `raft_core::ready`: the term and
//! vote first, then the log, then the snapshot point. A crash between two of them leaves
//! a state the node could have been in anyway: a newer term with the old log, or a log
//! already compacted or reset whose old snapshot point still stands (the store reads
//! back only the entries after the snapshot point).
//!
//! Installing a snapshot changes two databases, this one and the state database, and
//! no transaction spans both. So the install is first recorded here as pending; then the
//! state database is replaced (atomically, see `StateMachine::install`); then the log is
//! discarded and the pending mark cleared. A restart finds the mark and finishes the
//! install if the state was replaced, or forgets it if not ([`RaftStore::resume_install`]).

use std::path::Path;

use raft_core::{Entry, HardState, Index, Membership, Payload, Ready, SnapshotMeta};
use rusqlite::{params, Connection, OptionalExtension};

use crate::segments::SegmentLog;
use crate::state_machine::StorageError;

/// The durable Raft state of one node.
#[derive(Debug)]
pub struct RaftStore {
    conn: Connection,
    log: SegmentLog,
}

impl RaftStore {
    /// Opens (or creates) the store at `path` for node `node` of `cluster`. A store that
    /// belongs to another node or cluster is refused: mixing them up would corrupt both.
    pub fn open(path: &Path, cluster: &str, node: u64) -> Result<RaftStore, String> {
        // SQLite starts here; its memory watch must be installed first.
        crate::vfs::register()?;
        let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // Compaction deletes log rows; incremental auto-vacuum hands their pages back to
        // the file system (it must be chosen before the first table exists). The WAL is
        // truncated back to a few MiB after each checkpoint.
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL;
             PRAGMA journal_size_limit = 4194304;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS identity (id INTEGER PRIMARY KEY CHECK (id = 0), cluster TEXT NOT NULL, node INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL, voted_for INTEGER);
             CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, command BLOB);
             CREATE TABLE IF NOT EXISTS incarnation (id INTEGER PRIMARY KEY CHECK (id = 0), count INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 0), idx INTEGER NOT NULL, term INTEGER NOT NULL, pending_idx INTEGER, pending_term INTEGER);
             CREATE TABLE IF NOT EXISTS log_in_segments (id INTEGER PRIMARY KEY CHECK (id = 0));",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        // Configurations (§4) are stored as JSON beside the entry or snapshot point; stores
        // written before membership changes existed gain the columns, empty.
        for (table, column) in [("log", "membership"), ("snapshot", "membership"), ("snapshot", "pending_membership")] {
            add_column(&conn, table, column).map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        }
        let identity: Option<(String, i64)> = conn
            .query_row("SELECT cluster, node FROM identity", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match identity {
            None if SegmentLog::exists(path)? => {
                return Err(format!(
                    "{} is new, but Raft log segments of an earlier node are beside it; \
                     delete both (and the state database) to start this node afresh",
                    path.display()
                ))
            }
            None => {
                conn.execute("INSERT INTO identity VALUES (0, ?1, ?2)", params![cluster, node as i64])
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            Some((c, n)) if c == cluster && n == node as i64 => {}
            Some((c, n)) => {
                return Err(format!(
                    "{} belongs to node {n} of cluster {c:?}, not node {node} of cluster {cluster:?}",
                    path.display()
                ))
            }
        }
        // Once the log lives in segments, segments missing means the log was lost.
        let in_segments = conn
            .query_row("SELECT count(*) FROM log_in_segments", [], |r| r.get::<_, i64>(0))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            > 0;
        if in_segments && !SegmentLog::exists(path)? {
            return Err(format!(
                "the Raft log segments beside {} are missing; the node will not start without its log",
                path.display()
            ));
        }
        let log = SegmentLog::open(path, cluster, node)?;
        let mut store = RaftStore { conn, log };
        store.move_log_out_of_sqlite().map_err(|e| format!("cannot move the Raft log of {}: {e}", path.display()))?;
        if !in_segments {
            store
                .conn
                .execute("INSERT OR IGNORE INTO log_in_segments VALUES (0)", [])
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(store)
    }

    /// Stores written before the segment files kept the log in a table: move it over.
    /// The table is emptied only once the segments hold it durably; a crash before that
    /// moves it again from scratch (the segments first discard everything, by a reset).
    fn move_log_out_of_sqlite(&mut self) -> Result<(), String> {
        let sql = |e: rusqlite::Error| e.to_string();
        let rows: i64 = self.conn.query_row("SELECT count(*) FROM log", [], |r| r.get(0)).map_err(sql)?;
        if rows == 0 {
            return Ok(());
        }
        let mut stmt = self.conn.prepare("SELECT idx, term, command, membership FROM log ORDER BY idx").map_err(sql)?;
        let entries = stmt.query_map([], entry_row).and_then(Iterator::collect::<Result<Vec<_>, _>>).map_err(sql)?;
        drop(stmt);
        if let Some(first) = entries.first() {
            self.log.reset(first.index.saturating_sub(1));
        }
        self.log.append(&entries);
        self.log.sync()?;
        self.conn.execute("DELETE FROM log", []).map_err(sql)?;
        self.vacuum().map_err(sql)
    }

    /// Gives deleted rows' pages back to the file system. The pragma frees one page per
    /// step, so it is stepped to the end.
    fn vacuum(&self) -> rusqlite::Result<()> {
        let mut vacuum = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = vacuum.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    }

    /// Reads back the term, vote, snapshot point and log.
    pub fn load(&self) -> Result<Stored, String> {
        let hard_state = self
            .conn
            .query_row("SELECT term, voted_for FROM hard_state", [], |r| {
                Ok(HardState {
                    term: r.get::<_, i64>(0)? as u64,
                    voted_for: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                })
            })
            .optional()
            .map_err(|e| format!("cannot read the Raft state: {e}"))?
            .unwrap_or_default();
        let (snapshot, pending) = self.snapshot_row().map_err(|e| format!("cannot read the snapshot point: {e}"))?;
        let mut entries = self.log.entries()?;
        // The oldest segment kept may still hold entries the snapshot covers.
        entries.retain(|e| e.index > snapshot.index);
        // After a crash in the middle of an install, the log may already be reset to the
        // pending snapshot point (`resume_install` finishes the job).
        let starts = [Some(snapshot.index.saturating_add(1)), pending.as_ref().map(|p| p.index.saturating_add(1))];
        if let Some(first) = entries.first().filter(|e| !starts.contains(&Some(e.index))) {
            return Err(format!(
                "the Raft log begins at index {} but the snapshot point is {}: entries are missing",
                first.index, snapshot.index
            ));
        }
        Ok(Stored { hard_state, snapshot, pending_install: pending, entries })
    }

    fn snapshot_row(&self) -> rusqlite::Result<(SnapshotMeta, Option<SnapshotMeta>)> {
        let row = self
            .conn
            .query_row(
                "SELECT idx, term, pending_idx, pending_term, membership, pending_membership FROM snapshot",
                [],
                |r| {
                    let meta = SnapshotMeta {
                        index: r.get::<_, i64>(0)? as Index,
                        term: r.get::<_, i64>(1)? as u64,
                        membership: membership_column(r, 4)?.unwrap_or_default(),
                    };
                    let pending = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?) {
                        (Some(index), Some(term)) => Some(SnapshotMeta {
                            index: index as Index,
                            term: term as u64,
                            membership: membership_column(r, 5)?.unwrap_or_default(),
                        }),
                        _ => None,
                    };
                    Ok((meta, pending))
                },
            )
            .optional()?;
        Ok(row.unwrap_or_default())
    }

    /// Records, durably, that a snapshot at `meta` is about to replace the state database,
    /// with the ready's new term and vote if it has them (the new state is from a term at
    /// least the snapshot's, so the durable term must not lag it, crash or not).
    pub fn begin_install(&mut self, meta: SnapshotMeta, hard_state: Option<HardState>) -> Result<(), StorageError> {
        let fail = |e: rusqlite::Error| StorageError(format!("recording a snapshot install failed: {e}"));
        let tx = self.conn.transaction().map_err(fail)?;
        if let Some(hs) = hard_state {
            tx.execute(
                "INSERT INTO hard_state VALUES (0, ?1, ?2) ON CONFLICT(id) DO UPDATE SET term = ?1, voted_for = ?2",
                params![hs.term as i64, hs.voted_for.map(|v| v as i64)],
            )
            .map_err(fail)?;
        }
        tx.execute(
            "INSERT INTO snapshot (id, idx, term, pending_idx, pending_term, pending_membership) VALUES (0, 0, 0, ?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET pending_idx = ?1, pending_term = ?2, pending_membership = ?3",
            params![meta.index as i64, meta.term as i64, membership_json(&meta.membership)],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)
    }

    /// After a restart: finishes an install the node crashed in the middle of, given the
    /// applied index the state database holds. If the state was replaced, the log is
    /// discarded and the snapshot point moves there; if not, the install is forgotten
    /// (the leader will send a snapshot again). Returns what the store holds afterwards.
    pub fn resume_install(&mut self, applied: Index) -> Result<Stored, String> {
        let stored = self.load()?;
        let Some(pending) = stored.pending_install else { return Ok(stored) };
        if applied == pending.index {
            self.log.reset(pending.index);
            self.log.sync()?;
        }
        let tx = self.conn.transaction().map_err(|e| e.to_string())?;
        if applied == pending.index {
            tx.execute(
                "UPDATE snapshot SET idx = ?1, term = ?2, membership = ?3, pending_idx = NULL, pending_term = NULL, pending_membership = NULL",
                params![pending.index as i64, pending.term as i64, membership_json(&pending.membership)],
            )
            .map_err(|e| e.to_string())?;
        } else {
            tx.execute("UPDATE snapshot SET pending_idx = NULL, pending_term = NULL, pending_membership = NULL", [])
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| format!("cannot finish an interrupted snapshot install: {e}"))?;
        self.load()
    }

    /// Counts one more start of this node, durably, and returns the new count. Request ids
    /// built from it never repeat across restarts, so a late answer to a request sent
    /// before a restart can never be taken for the answer to a new one.
    pub fn next_incarnation(&mut self) -> Result<u64, StorageError> {
        let fail = |e: rusqlite::Error| StorageError(format!("counting node starts failed: {e}"));
        self.conn
            .query_row(
                "INSERT INTO incarnation VALUES (0, 1) ON CONFLICT(id) DO UPDATE SET count = count + 1 RETURNING count",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|count| count as u64)
            .map_err(fail)
    }

    /// Makes a ready's durable part durable (step 2), in one transaction and one fsync.
    /// An install's state database must already be replaced (see the module docs).
    pub fn persist(&mut self, ready: &Ready) -> Result<(), StorageError> {
        let Ready { hard_state, install_snapshot, compacted, truncate_from, entries, .. } = ready;
        if hard_state.is_none()
            && install_snapshot.is_none()
            && compacted.is_none()
            && truncate_from.is_none()
            && entries.is_empty()
        {
            return Ok(());
        }
        let fail = |e: rusqlite::Error| StorageError(format!("writing the Raft state failed: {e}"));
        // The term and vote first: a log entry never outlives the term it came in.
        if let Some(hs) = hard_state {
            self.conn
                .execute(
                    "INSERT INTO hard_state VALUES (0, ?1, ?2) ON CONFLICT(id) DO UPDATE SET term = ?1, voted_for = ?2",
                    params![hs.term as i64, hs.voted_for.map(|v| v as i64)],
                )
                .map_err(fail)?;
        }
        // Then the log, in one write and one fsync.
        if let Some(meta) = install_snapshot {
            self.log.reset(meta.index);
        }
        if let Some(from) = truncate_from {
            self.log.truncate(*from);
        }
        self.log.append(entries);
        self.log.sync().map_err(StorageError)?;
        // Then the snapshot point, and only then are the segments it covers deleted.
        // An install also ends the pending install it finishes.
        let (point, sql) = match (install_snapshot, compacted) {
            (Some(meta), _) => (
                meta,
                "INSERT INTO snapshot (id, idx, term, membership) VALUES (0, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET idx = ?1, term = ?2, membership = ?3,
                   pending_idx = NULL, pending_term = NULL, pending_membership = NULL",
            ),
            (None, Some(meta)) => (
                meta,
                "INSERT INTO snapshot (id, idx, term, membership) VALUES (0, ?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET idx = ?1, term = ?2, membership = ?3",
            ),
            (None, None) => return Ok(()),
        };
        self.conn
            .execute(sql, params![point.index as i64, point.term as i64, membership_json(&point.membership)])
            .map_err(fail)?;
        self.log.compact(point.index).map_err(StorageError)?;
        Ok(())
    }

    /// Where the log's next record goes: the segment file and the offset in it.
    pub fn log_end(&self) -> Option<(&Path, u64)> {
        self.log.end()
    }

    /// The size of the store's files (database, its WAL and the log segments), in bytes.
    pub fn disk_bytes(&self, path: &Path) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        size(path) + size(Path::new(&wal)) + self.log.disk_bytes()
    }
}

/// An entry as the old log table held it.
fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let command: Option<Vec<u8>> = r.get(2)?;
    let payload = match membership_column(r, 3)? {
        Some(membership) => Payload::Membership(membership),
        None => command.map_or(Payload::Noop, Payload::Command),
    };
    Ok(Entry { index: r.get::<_, i64>(0)? as Index, term: r.get::<_, i64>(1)? as u64, payload })
}

/// Adds `column` (TEXT, empty) to `table` unless it is there already.
fn add_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<()> {
    let mut info = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = info.query_map([], |r| r.get::<_, String>(1))?.collect::<Result<Vec<_>, _>>()?;
    if !names.iter().any(|n| n == column) {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
    }
    Ok(())
}

/// A configuration as stored: JSON text.
fn membership_json(membership: &Membership) -> String {
    serde_json::to_string(membership).unwrap_or_default()
}

/// Reads a stored configuration; NULL (or empty) is none.
fn membership_column(row: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<Option<Membership>> {
    match row.get::<_, Option<String>>(column)? {
        Some(text) if !text.is_empty() => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))),
        _ => Ok(None),
    }
}

/// What [`RaftStore::load`] reads back.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// The term and vote.
    pub hard_state: HardState,
    /// Where the log begins (§7).
    pub snapshot: SnapshotMeta,
    /// A snapshot install that began and may not have finished.
    pub pending_install: Option<SnapshotMeta>,
    /// The log after the snapshot point.
    pub entries: Vec<Entry>,
}
