//! Snapshots of the state database (§7): the pages of one committed state, to send to a
//! follower that needs entries the leader has compacted away; a consistent copy for
//! backups; and the checks a received snapshot must pass before it may replace a
//! follower's state.
//!
//! Both read in a read transaction of their own, so the apply thread keeps applying
//! meanwhile (WAL mode lets a reader and a writer work at once) and what they read is one
//! committed state. The applied index is read inside that transaction, so it says exactly
//! which state they hold.

use std::path::Path;

use raft_core::Index;
use rusqlite::{Connection, OpenFlags};

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
    // Whoever keeps the copy checks it and syncs it itself: no journal and no fsync here.
    dst.query_row("PRAGMA journal_mode = OFF", [], |_| Ok(()))
        .and_then(|()| dst.pragma_update(None, "synchronous", "OFF"))
        .map_err(|e| format!("cannot prepare {}: {e}", dest.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)
            .map_err(|e| format!("cannot copy {} to {}: {e}", state.display(), dest.display()))?;
        // All pages in one step: one read transaction, so one consistent state.
        backup.step(-1).map_err(|e| format!("copying {} to {} failed: {e}", state.display(), dest.display()))?;
    }
    applied_index(&dst).map_err(|e| format!("the copy {} has no applied index: {e}", dest.display()))
}

/// Where a stream of pages ends, and how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pages {
    /// The applied index of the state the pages hold.
    pub index: Index,
    /// The size of the whole, in bytes: every page of the database.
    pub total: u64,
}

/// Reads the state database at `state` as it is at one committed state, page after page,
/// and hands `piece` the bytes in order, `piece_bytes` at a time (the last piece may be
/// shorter). Together they are a database file holding that state, exactly as the leader
/// holds it (rowids included). Returns the applied index of that state.
///
/// Nothing is copied first: the pages come straight from SQLite's pager through the
/// `sqlite_dbpage` table, inside one read transaction held until the last piece (as
/// `sqlite3_rsync` reads a database). While it is held, the state's write-ahead log
/// cannot be checkpointed past it, so it grows by the writes made meanwhile; `piece`
/// should not wait long. Client SQL can never reach `sqlite_dbpage` (see `policy.rs`).
pub fn read_pages(
    state: &Path,
    piece_bytes: usize,
    mut piece: impl FnMut(Pages, Vec<u8>) -> Result<(), String>,
) -> Result<Index, String> {
    crate::vfs::register()?;
    let failed = |e: rusqlite::Error| format!("reading {} failed: {e}", state.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags_and_vfs(state, flags, VFS_NAME)
        .map_err(|e| format!("cannot open {} to read it: {e}", state.display()))?;
    // The read transaction starts with its first read: the applied index.
    conn.execute_batch("BEGIN").map_err(failed)?;
    let index = applied_index(&conn).map_err(|e| format!("{} has no applied index: {e}", state.display()))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(failed)?;
    let page_count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(failed)?;
    let (page_size, page_count) = (page_size.max(0) as u64, page_count.max(0) as u64);
    let header = Pages { index, total: page_size * page_count };
    let mut stmt = conn.prepare("SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno").map_err(failed)?;
    let mut rows = stmt.query([]).map_err(failed)?;
    let mut buffer = Vec::with_capacity(piece_bytes);
    let mut pages = 0u64;
    while let Some(row) = rows.next().map_err(failed)? {
        let (pgno, data): (i64, Vec<u8>) = (row.get(0).map_err(failed)?, row.get(1).map_err(failed)?);
        pages += 1;
        if pgno as u64 != pages || data.len() as u64 != page_size {
            return Err(format!("{} returned page {pgno} of {} bytes as page {pages}", state.display(), data.len()));
        }
        buffer.extend_from_slice(&data);
        while buffer.len() >= piece_bytes {
            let mut next = Vec::with_capacity(piece_bytes);
            next.extend_from_slice(&buffer[piece_bytes..]);
            buffer.truncate(piece_bytes);
            piece(header, std::mem::replace(&mut buffer, next))?;
        }
    }
    if pages != page_count {
        return Err(format!("{} has {page_count} pages, but {pages} were read", state.display()));
    }
    if !buffer.is_empty() {
        piece(header, buffer)?;
    }
    drop(rows);
    drop(stmt);
    conn.execute_batch("COMMIT").map_err(failed)?;
    Ok(index)
}

/// Fails unless this build of SQLite has the `sqlite_dbpage` table that [`read_pages`]
/// needs (it is compiled in by the workspace's `.cargo/config.toml`): a node without it
/// could never send a snapshot, so it says so at start.
pub fn check_pages_readable() -> Result<(), String> {
    crate::vfs::register()?;
    let conn = Connection::open_in_memory().map_err(|e| format!("cannot open SQLite: {e}"))?;
    conn.prepare("SELECT pgno FROM sqlite_dbpage").map(|_| ()).map_err(|e| {
        format!(
            "this build's SQLite has no sqlite_dbpage table ({e}), so it could not send snapshots; \
             build it from the workspace, whose .cargo/config.toml sets LIBSQLITE3_FLAGS"
        )
    })
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

    /// A leader's state at index 3: rows 1 and 3 of t (row 2 deleted).
    fn leader_at_3(dir: &Path) -> (std::path::PathBuf, StateMachine) {
        let path = dir.join("leader.sqlite");
        let mut leader = StateMachine::open(&path).expect("open");
        write(&mut leader, 1, "CREATE TABLE t(x)");
        write(&mut leader, 2, "INSERT INTO t VALUES (1), (2), (3)");
        write(&mut leader, 3, "DELETE FROM t WHERE x = 2");
        (path, leader)
    }

    #[test]
    fn a_copy_installs_as_the_same_state_with_the_same_rowids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (leader_path, mut leader) = leader_at_3(dir.path());
        let copy_path = dir.path().join("snapshot");
        assert_eq!(copy(&leader_path, &copy_path).expect("copy"), 3);
        verify(&copy_path, 3).expect("sound");
        assert!(verify(&copy_path, 4).is_err(), "a copy sent under the wrong index is refused");

        let mut follower = StateMachine::open(&dir.path().join("follower.sqlite")).expect("open");
        assert_eq!(follower.install(&copy_path).expect("install"), 3);
        assert_eq!(follower.applied_index(), 3);
        // The next entry applies identically: same rowids, same result.
        write(&mut leader, 4, "INSERT INTO t VALUES (4)");
        write(&mut follower, 4, "INSERT INTO t VALUES (4)");
        assert_eq!(rows(&leader_path), rows(&dir.path().join("follower.sqlite")));
        assert_eq!(rows(&leader_path), vec![(1, 1), (3, 3), (4, 4)]);
    }

    fn rows(path: &Path) -> Vec<(i64, i64)> {
        let conn = Connection::open(path).expect("open");
        let mut stmt = conn.prepare("SELECT rowid, x FROM t ORDER BY rowid").expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query").map(|r| r.expect("row")).collect()
    }

    /// Writes what `read_pages` hands out to `dest`, as a follower receives it, `piece`
    /// bytes at a time; `between` runs after every piece.
    fn receive(state: &Path, dest: &Path, piece: usize, mut between: impl FnMut()) -> (Index, Pages) {
        use std::io::Write;
        let mut file = std::fs::File::create(dest).expect("create");
        let mut header = None;
        let index = read_pages(state, piece, |pages, data| {
            assert!(data.len() <= piece);
            header = Some(pages);
            file.write_all(&data).map_err(|e| e.to_string())?;
            between();
            Ok(())
        })
        .expect("read");
        let header = header.expect("at least one piece");
        assert_eq!(std::fs::metadata(dest).expect("size").len(), header.total);
        (index, header)
    }

    #[test]
    fn pages_read_from_one_transaction_are_one_state_while_writes_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader_path = dir.path().join("leader.sqlite");
        let mut leader = StateMachine::open(&leader_path).expect("open");
        write(&mut leader, 1, "CREATE TABLE t(x, pad)");
        let series = |n| format!("WITH RECURSIVE c(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM c WHERE v < {n}) ");
        write(&mut leader, 2, &format!("{}INSERT INTO t SELECT v, zeroblob(300) FROM c", series(2000)));
        let before = rows(&leader_path);
        assert_eq!(before.len(), 2000);
        // One page per piece, and a write that changes many pages after every piece.
        let mut next = 3;
        let received = dir.path().join("received");
        let (index, pages) = receive(&leader_path, &received, 4096, || {
            let sql = format!("UPDATE t SET x = x + 1; {}INSERT INTO t SELECT v, zeroblob(300) FROM c", series(50));
            write(&mut leader, next, &sql);
            next += 1;
        });
        assert!(next > 100, "the writes ran while the pages were read: {next} {pages:?}");
        assert_eq!((index, pages.index), (2, 2));
        verify(&received, 2).expect("sound");
        assert_eq!(rows(&received), before, "the state at index 2, nothing of the writes after it");
        assert_eq!(rows(&leader_path).len() as u64, 2000 + 50 * (next - 3));
    }

    #[test]
    fn received_pages_install_by_taking_the_state_name_when_no_one_else_reads_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (leader_path, mut leader) = leader_at_3(dir.path());
        let received = dir.path().join("received");
        receive(&leader_path, &received, 1000, || {});
        verify(&received, 3).expect("sound");

        let follower_path = dir.path().join("follower.sqlite");
        let mut follower = StateMachine::open(&follower_path).expect("open");
        write(&mut follower, 1, "CREATE TABLE other(y)");
        assert_eq!(follower.install(&received).expect("install"), 3);
        assert!(!received.exists(), "the snapshot file took the state's name");
        write(&mut leader, 4, "INSERT INTO t VALUES (4)");
        write(&mut follower, 4, "INSERT INTO t VALUES (4)");
        assert_eq!(rows(&follower_path), rows(&leader_path));
        assert_eq!(rows(&follower_path), vec![(1, 1), (3, 3), (4, 4)]);
        // And the state is what a restart finds.
        drop(follower);
        assert_eq!(StateMachine::open(&follower_path).expect("reopen").applied_index(), 4);
    }

    #[test]
    fn an_install_with_another_connection_open_copies_the_pages_in_and_that_reader_sees_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader_path = dir.path().join("leader.sqlite");
        let mut leader = StateMachine::open(&leader_path).expect("open");
        write(&mut leader, 1, "CREATE TABLE t(x)");
        write(&mut leader, 2, "INSERT INTO t VALUES (7), (8)");
        let received = dir.path().join("received");
        receive(&leader_path, &received, 1 << 20, || {});

        let follower_path = dir.path().join("follower.sqlite");
        let mut follower = StateMachine::open(&follower_path).expect("open");
        write(&mut follower, 1, "CREATE TABLE t(x)");
        // A reader the install does not know about (another process's, say).
        let reader = Connection::open(&follower_path).expect("open");
        let count = |c: &Connection| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).expect("count");
        assert_eq!(count(&reader), 0);
        assert_eq!(follower.install(&received).expect("install"), 2);
        assert!(received.exists(), "copied in, not renamed from under the reader");
        assert_eq!(count(&reader), 2, "the open reader sees the new state");
        assert_eq!(rows(&follower_path), vec![(1, 7), (2, 8)]);
    }

    #[test]
    fn this_build_can_read_pages() {
        check_pages_readable().expect("sqlite_dbpage compiled in");
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("garbage");
        std::fs::write(&path, b"not a database at all, just some bytes that are long enough").expect("write");
        assert!(verify(&path, 1).is_err());
    }
}
