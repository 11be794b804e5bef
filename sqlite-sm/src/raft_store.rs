//! Raft's durable state (Figure 2, "Persistent state on all servers": currentTerm,
//! votedFor, log[]) in a SQLite database of its own. Each `Ready` is written as one
//! transaction with `synchronous = FULL`: one fsync per batch, however many entries.

use std::path::Path;

use raft_core::{Entry, HardState, Index, Payload};
use rusqlite::{params, Connection, OptionalExtension};

use crate::state_machine::StorageError;

/// The durable Raft state of one node.
#[derive(Debug)]
pub struct RaftStore {
    conn: Connection,
}

impl RaftStore {
    /// Opens (or creates) the store at `path` for node `node` of `cluster`. A store that
    /// belongs to another node or cluster is refused: mixing them up would corrupt both.
    pub fn open(path: &Path, cluster: &str, node: u64) -> Result<RaftStore, String> {
        // SQLite starts here; its memory watch must be installed first.
        crate::vfs::register()?;
        let conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS identity (id INTEGER PRIMARY KEY CHECK (id = 0), cluster TEXT NOT NULL, node INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL, voted_for INTEGER);
             CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, command BLOB);
             CREATE TABLE IF NOT EXISTS incarnation (id INTEGER PRIMARY KEY CHECK (id = 0), count INTEGER NOT NULL);",
        )
        .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        let identity: Option<(String, i64)> = conn
            .query_row("SELECT cluster, node FROM identity", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match identity {
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
        Ok(RaftStore { conn })
    }

    /// Reads back the term, vote and log.
    pub fn load(&self) -> Result<(HardState, Vec<Entry>), String> {
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
        let mut stmt =
            self.conn.prepare("SELECT idx, term, command FROM log ORDER BY idx").map_err(|e| e.to_string())?;
        let entries = stmt
            .query_map([], |r| {
                let command: Option<Vec<u8>> = r.get(2)?;
                Ok(Entry {
                    index: r.get::<_, i64>(0)? as Index,
                    term: r.get::<_, i64>(1)? as u64,
                    payload: command.map_or(Payload::Noop, Payload::Command),
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read the Raft log: {e}"))?;
        Ok((hard_state, entries))
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

    /// Makes a ready's durable part durable, in one transaction and one fsync.
    pub fn persist(
        &mut self,
        hard_state: Option<HardState>,
        truncate_from: Option<Index>,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        if hard_state.is_none() && truncate_from.is_none() && entries.is_empty() {
            return Ok(());
        }
        let fail = |e: rusqlite::Error| StorageError(format!("writing the Raft log failed: {e}"));
        let tx = self.conn.transaction().map_err(fail)?;
        if let Some(hs) = hard_state {
            tx.execute(
                "INSERT INTO hard_state VALUES (0, ?1, ?2) ON CONFLICT(id) DO UPDATE SET term = ?1, voted_for = ?2",
                params![hs.term as i64, hs.voted_for.map(|v| v as i64)],
            )
            .map_err(fail)?;
        }
        if let Some(from) = truncate_from {
            tx.execute("DELETE FROM log WHERE idx >= ?1", [from as i64]).map_err(fail)?;
        }
        {
            let mut insert = tx.prepare_cached("INSERT OR REPLACE INTO log VALUES (?1, ?2, ?3)").map_err(fail)?;
            for e in entries {
                let command = match &e.payload {
                    Payload::Noop => None,
                    Payload::Command(bytes) => Some(bytes.as_slice()),
                };
                insert.execute(params![e.index as i64, e.term as i64, command]).map_err(fail)?;
            }
        }
        tx.commit().map_err(fail)
    }
}
