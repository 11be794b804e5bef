//! Snapshots of the state database (§7): a consistent copy to send to a follower that
//! needs entries the leader has compacted away, and the checks a received copy must pass
//! before it may replace a follower's state.
//!
//! The copy is made with SQLite's online backup API from a read transaction of its own,
//! so the apply thread keeps applying while it runs (WAL mode lets a reader and a writer
//! work at once) and the copy is of one committed state. The applied index is read from
//! inside the copy, so it says exactly which state it holds.

use std::io::Read;
use std::path::Path;

use raft_core::Index;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::state_machine::APPLIED_TABLE;
use crate::vfs::VFS_NAME;

/// Copies the state database at `state` into a new file at `dest` (replacing any file
/// there). Returns the applied index recorded inside the copy.
pub fn copy(state: &Path, dest: &Path) -> Result<Index, String> {
    crate::vfs::register()?;
    let _ = std::fs::remove_file(dest);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let src = Connection::open_with_flags_and_vfs(state, flags, VFS_NAME)
        .map_err(|e| format!("cannot open {} to copy it: {e}", state.display()))?;
    let mut dst = Connection::open(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(|e| format!("cannot copy {} to {}: {e}", state.display(), dest.display()))?;
        // All pages in one step: one read transaction, so one consistent state.
        backup.step(-1).map_err(|e| format!("copying {} to {} failed: {e}", state.display(), dest.display()))?;
    }
    applied_index(&dst).map_err(|e| format!("the copy {} has no applied index: {e}", dest.display()))
}

/// Checks a received snapshot before it may replace the state: the file is a sound
/// SQLite database (`PRAGMA integrity_check`) recording `expected` as its applied index.
pub fn verify(path: &Path, expected: Index) -> Result<(), String> {
    // SQLite must not start before its memory watch is in place (see `vfs::register`).
    crate::vfs::register()?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| format!("cannot open the snapshot: {e}"))?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |r| r.get(0))
        .map_err(|e| format!("the snapshot is not a database: {e}"))?;
    if verdict != "ok" {
        return Err(format!("the snapshot is damaged: {verdict}"));
    }
    let applied = applied_index(&conn).map_err(|e| format!("the snapshot has no applied index: {e}"))?;
    if applied != expected {
        return Err(format!("the snapshot holds the state at index {applied}, but was sent as index {expected}"));
    }
    Ok(())
}

/// The SHA-256 of a whole file, as hex: sent with a snapshot and checked on arrival, so a
/// transfer that lost or mangled a piece is never installed.
pub fn checksum(path: &Path) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn applied_index(conn: &Connection) -> rusqlite::Result<Index> {
    let applied: i64 = conn.query_row(&format!("SELECT applied_index FROM main.{APPLIED_TABLE}"), [], |r| r.get(0))?;
    Ok(applied.max(0) as Index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateMachine;
    use raft_core::{Entry, Payload};

    fn write(sm: &mut StateMachine, index: Index, sql: &str) {
        let command = crate::WriteCommand {
            sql: sql.to_string(),
            time_ms: 0,
            seed: 1,
            limits: crate::Limits::default(),
            origin: None,
        };
        let entry = Entry { index, term: 1, payload: Payload::Command(command.encode()) };
        sm.apply(&entry).expect("applied");
    }

    #[test]
    fn a_copy_installs_as_the_same_state_with_the_same_rowids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader_path = dir.path().join("leader.sqlite");
        let mut leader = StateMachine::open(&leader_path).expect("open");
        write(&mut leader, 1, "CREATE TABLE t(x)");
        write(&mut leader, 2, "INSERT INTO t VALUES (1), (2), (3)");
        write(&mut leader, 3, "DELETE FROM t WHERE x = 2");
        let copy_path = dir.path().join("snapshot");
        assert_eq!(copy(&leader_path, &copy_path).expect("copy"), 3);
        verify(&copy_path, 3).expect("sound");
        assert!(verify(&copy_path, 4).is_err(), "a copy sent under the wrong index is refused");
        let sum = checksum(&copy_path).expect("checksum");
        assert_eq!(sum.len(), 64);

        let mut follower = StateMachine::open(&dir.path().join("follower.sqlite")).expect("open");
        assert_eq!(follower.install(&copy_path).expect("install"), 3);
        assert_eq!(follower.applied_index(), 3);
        // The next entry applies identically: same rowids, same result.
        write(&mut leader, 4, "INSERT INTO t VALUES (4)");
        write(&mut follower, 4, "INSERT INTO t VALUES (4)");
        let rows = |path: &Path| -> Vec<(i64, i64)> {
            let conn = Connection::open(path).expect("open");
            let mut stmt = conn.prepare("SELECT rowid, x FROM t ORDER BY rowid").expect("prepare");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query").map(|r| r.expect("row")).collect()
        };
        assert_eq!(rows(&leader_path), rows(&dir.path().join("follower.sqlite")));
        assert_eq!(rows(&leader_path), vec![(1, 1), (3, 3), (4, 4)]);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("garbage");
        std::fs::write(&path, b"not a database at all, just some bytes that are long enough").expect("write");
        assert!(verify(&path, 1).is_err());
    }
}
