//! The replicated state machine: a SQLite database to which every replica applies the
//! same committed entries in the same order, in transactions that also record the
//! applied index, so a restart neither skips nor repeats an entry. Entries are applied
//! in groups, one transaction each ([`StateMachine::apply_group`]); each line still
//! succeeds or fails as a whole, exactly as it would alone.
//!
//! Two promises, and how they are kept:
//!
//! **Replicas are identical.** A replica's content must be a function of the log alone,
//! whether it ran without stopping or restarted between any two entries. Everything
//! SQLite would take from elsewhere is fixed by the entry (time, random seed, limits, see
//! [`crate::command`]) or reset before it runs (`changes()`, `last_insert_rowid()`), and
//! what cannot be fixed is refused ([`crate::policy`]). After a schema change the
//! connection is reopened, so its in-memory schema (whose object order shows in
//! `ANALYZE` and `pragma_table_list`) is what a restarted replica would load. A line may
//! not give a row the largest rowid: SQLite would then pick later rowids at random.
//!
//! **A committed entry cannot poison the state machine.** Whatever error the entry itself
//! causes (a constraint, a limit, a deferred foreign key at COMMIT, a broken full-text
//! index) rolls it back and becomes its result, the same on every replica, and the entry
//! still counts as applied. Only a failure of this node's disk stops the node: the VFS
//! ([`crate::vfs`]) sees every OS call, so "disk full" is never mistaken for "AUTOINCREMENT
//! ran out", which SQLite reports with the same code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_core::{Entry, Index, Payload};
use rusqlite::config::DbConfig;
use rusqlite::hooks::AuthContext;
use rusqlite::limits::Limit;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::command::MAX_PATTERN_BYTES;
use crate::command::{Limits, WriteCommand};
use crate::exec::{run_line, LineError, Output, ResultBudget};
use crate::functions::{self, LengthLimit};
use crate::mem;
use crate::policy::{Policy, RESERVED_PREFIX};
use crate::random::SeededRandom;
use crate::value::{LineResult, StatementResult};
use crate::vfs::{self, VFS_NAME};

/// The table holding the applied index. Clients may read it but never change it.
pub const APPLIED_TABLE: &str = "_lightraft_applied";

/// The most schema objects (tables, indexes, views, triggers) a database may hold, and
/// the most text their definitions may take. A connection loads the whole schema when it
/// opens, and the state machine reopens after every schema change, so an unbounded schema
/// would make every later change slower and slower.
pub const MAX_SCHEMA_OBJECTS: i64 = 10_000;
/// See [`MAX_SCHEMA_OBJECTS`].
pub const MAX_SCHEMA_TEXT: i64 = 1 << 20;

/// How many instructions SQLite runs between two calls of the progress handler.
pub(crate) const STEPS_PER_CHECK: u64 = 10_000;

/// The disk failed under SQLite. Applying cannot continue safely on this replica.
#[derive(Debug)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state machine storage failed: {}", self.0)
    }
}

impl std::error::Error for StorageError {}

/// What the connection's callbacks share with the state machine.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) policy: Policy,
    /// Progress-handler calls since the line began, and the most allowed.
    pub(crate) checks: AtomicU64,
    pub(crate) max_checks: AtomicU64,
    /// A row took the largest rowid during the line.
    largest_rowid: AtomicBool,
    /// The length limit our own functions enforce.
    length: LengthLimit,
}

/// A replica's SQLite database.
#[derive(Debug)]
pub struct StateMachine {
    path: PathBuf,
    conn: Connection,
    shared: Arc<Shared>,
    random: SeededRandom,
    applied: Index,
    page_size: u64,
    /// The `max_page_count` last set on this connection.
    page_limit: Option<u64>,
    /// What the last line cost: progress-handler calls and bytes charged to its budget.
    last_cost: (u64, u64),
    /// What each line of the last group cost: (index, calls, bytes).
    costs: Vec<(Index, u64, u64)>,
    /// The schema declares a deferred foreign key: every entry is then a group of its
    /// own. SQLite counts a transaction's deferred violations in one counter that lives
    /// until COMMIT and can go below zero on rows that already violate (orphans a DROP
    /// TABLE left behind), so a line would start from another line's count in a group.
    deferred_keys: bool,
}

/// The most entries one transaction holds. A line that fails runs the entries before it
/// in its group a second time, so a group is kept short.
const GROUP_ENTRIES: usize = 256;
/// A group commits once it has run this long: its clients' answers wait for the commit.
const GROUP_TIME: Duration = Duration::from_millis(5);

/// Entries applied together by [`StateMachine::apply_group`].
#[derive(Debug)]
pub struct Group {
    /// How many of the entries given were applied (at least one).
    pub count: usize,
    /// (index, result) for every command among them.
    pub results: Vec<(Index, LineResult)>,
}

/// How one try at a group went.
enum Attempt {
    Committed(Group),
    /// A line failed after others in its group: everything was rolled back. Apply the
    /// entries before it as a group, then it alone.
    Retry(usize),
}

/// One line run inside a group.
struct Line {
    result: LineResult,
    /// The line left the connection unlike a fresh one: the group ends with it, and the
    /// connection is reopened after the commit.
    reopen: bool,
    /// A statement journal outgrew memory and stays open as a file: the group ends.
    journal_open: bool,
}

impl StateMachine {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<StateMachine, String> {
        vfs::register()?;
        let shared = Arc::new(Shared::default());
        let random = SeededRandom::default();
        let conn = connect(path, &shared, &random)?;
        let deferred_keys = has_deferred_keys(&conn, &shared.policy);
        let applied: i64 = conn
            .query_row(&format!("SELECT applied_index FROM main.{APPLIED_TABLE}"), [], |r| r.get(0))
            .map_err(|e| format!("cannot read the applied index from {}: {e}", path.display()))?;
        let page_size: i64 = conn
            .query_row("PRAGMA main.page_size", [], |r| r.get(0))
            .map_err(|e| format!("cannot read the page size of {}: {e}", path.display()))?;
        Ok(StateMachine {
            path: path.to_path_buf(),
            conn,
            shared,
            random,
            applied: applied.max(0) as Index,
            page_size: page_size.max(512) as u64,
            page_limit: None,
            last_cost: (0, 0),
            costs: Vec::new(),
            deferred_keys,
        })
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> Index {
        self.applied
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the last applied line cost, as (progress-handler calls, bytes charged to its
    /// allocation budget). Both must be the same on every replica; the differential test
    /// compares them.
    pub fn last_line_cost(&self) -> (u64, u64) {
        self.last_cost
    }

    /// Applies a committed entry as a transaction of its own. Returns the line's result
    /// for a command (`None` for a no-op). An error caused by the entry rolls the line
    /// back and is its result, the same on every replica. A failure of this node's storage
    /// is returned as `Err`, and the entry is not marked applied.
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<LineResult>, StorageError> {
        let group = self.apply_group(std::slice::from_ref(entry))?;
        Ok(group.results.into_iter().next().map(|(_, result)| result))
    }

    /// Applies a prefix of `entries` (at least one) as one SQLite transaction, and returns
    /// how many it applied with each command's result. The caller applies the rest with
    /// further calls.
    ///
    /// One transaction for many entries writes each changed page to the WAL once, not once
    /// per entry. Results must not depend on where groups begin and end (replicas group
    /// differently, and a restart cuts anywhere); what makes that hold:
    /// - every line starts from the same connection state as alone (the bookkeeping update
    ///   first, `last_insert_rowid()` reset, its own limits, clock and seed);
    /// - a line that changes the schema or leaves state behind ends the group, which
    ///   commits before the connection is reopened; so does a line whose statement
    ///   journal outgrew memory (see `run_entry`);
    /// - a line that fails must be rolled back alone, and SQLite may roll back the whole
    ///   transaction instead (an interrupted write, a full database). So a line that fails
    ///   after others in its group rolls the group back; the entries before it are applied
    ///   again as a group, and the failing line then runs first in a transaction of its
    ///   own, exactly as if it had never been grouped (so a failing line may run twice:
    ///   the price of grouping, paid only by failing lines). A deferred foreign key left
    ///   violated counts as failing: alone, its COMMIT would fail;
    /// - a schema with deferred foreign keys is not grouped at all (see `deferred_keys`);
    /// - internal statements are prepared afresh for every line (see `run_command`).
    ///
    /// `sqlite-sm/tests/differential.rs` applies the same log grouped at random on one
    /// replica and entry by entry on the other, and compares them.
    pub fn apply_group(&mut self, entries: &[Entry]) -> Result<Group, StorageError> {
        let start = self.applied;
        let mut cap = entries.len().min(if self.deferred_keys { 1 } else { GROUP_ENTRIES });
        let mut retried = false;
        loop {
            match self.try_group(&entries[..cap], retried) {
                Ok(Attempt::Committed(group)) => return Ok(group),
                // Fewer each time, so this ends: at worst with a group of one.
                Ok(Attempt::Retry(before)) => {
                    cap = before;
                    retried = true;
                }
                Err(e) => {
                    // The node stops on this error. Whatever is not committed is not
                    // applied; the database says what is.
                    let _ = self.rollback();
                    self.applied = self.stored_applied().unwrap_or(start);
                    return Err(e);
                }
            }
        }
    }

    /// The applied index the database holds (committed).
    fn stored_applied(&self) -> Option<Index> {
        let sql = format!("SELECT applied_index FROM main.{APPLIED_TABLE}");
        let applied: i64 = self.shared.policy.internal(|| self.conn.query_row(&sql, [], |r| r.get(0))).ok()?;
        Some(applied.max(0) as Index)
    }

    /// What each line of the last group cost, as (index, progress-handler calls, bytes
    /// charged to its allocation budget), for the differential test.
    pub fn group_costs(&self) -> &[(Index, u64, u64)] {
        &self.costs
    }

    /// One try at a group; `retried` (the entries before a line that failed) is applied
    /// whole, however long it takes, so that line then runs first.
    fn try_group(&mut self, entries: &[Entry], retried: bool) -> Result<Attempt, StorageError> {
        let start = self.applied;
        let began = Instant::now();
        self.costs.clear();
        self.internal("BEGIN IMMEDIATE").map_err(|e| self.storage(e, "starting a transaction"))?;
        let mut results = Vec::new();
        let mut count = 0;
        let mut reopen = false;
        let mut last = false;
        for (n, entry) in entries.iter().enumerate() {
            if entry.index != self.applied + 1 {
                let message = format!(
                    "entry {} applied out of order: the state machine is at index {}",
                    entry.index, self.applied
                );
                self.rollback()?;
                self.applied = start;
                return Err(StorageError(message));
            }
            let command = match &entry.payload {
                // A configuration is Raft's business; the state only records its index.
                Payload::Noop | Payload::Membership(_) => None,
                Payload::Command(bytes) => Some(WriteCommand::decode(bytes)),
            };
            match command {
                None => self.record_applied(entry.index)?,
                // An undecodable entry still advances the index.
                Some(Err(e)) => {
                    self.record_applied(entry.index)?;
                    results.push((entry.index, Err(e)));
                }
                Some(Ok(command)) => {
                    let line = self.run_entry(entry.index, &command)?;
                    reopen = line.reopen;
                    // Alone, a line that leaves a deferred foreign key violated fails at
                    // its COMMIT; so it must be alone.
                    let failed = match line.result {
                        Ok(rows) => {
                            let deferred = deferred_foreign_keys(&self.conn);
                            if n == 0 || !deferred {
                                results.push((entry.index, Ok(rows)));
                                last = deferred || line.journal_open;
                            }
                            n > 0 && deferred
                        }
                        Err(message) if n == 0 => {
                            // Exactly as alone: roll it back, record the index by itself.
                            self.rollback()?;
                            self.record_applied(entry.index)?;
                            if reopen {
                                self.reopen()?;
                            }
                            self.applied = entry.index;
                            let results = vec![(entry.index, Err(message))];
                            return Ok(Attempt::Committed(Group { count: 1, results }));
                        }
                        Err(_) => true,
                    };
                    if failed {
                        self.rollback()?;
                        self.applied = start;
                        if reopen {
                            self.reopen()?;
                        }
                        return Ok(Attempt::Retry(n));
                    }
                }
            }
            self.applied = entry.index;
            count = n + 1;
            if last || reopen || (!retried && began.elapsed() >= GROUP_TIME) {
                break;
            }
        }
        if let Err(e) = self.internal("COMMIT") {
            // Lines are checked for deferred foreign keys as they go, so only a line alone
            // can fail here for its own reasons; anything else is this node's storage.
            let verdict = self.judge(LineError::Sqlite(e))?;
            self.rollback()?;
            self.applied = start;
            if reopen {
                self.reopen()?;
            }
            if count > 1 {
                return Ok(Attempt::Retry(count - 1));
            }
            let Some((index, Ok(_))) = results.first() else {
                return Err(StorageError(format!("committing applied entries failed: {verdict}")));
            };
            let index = *index;
            self.record_applied(index)?;
            self.applied = index;
            return Ok(Attempt::Committed(Group { count: 1, results: vec![(index, Err(verdict))] }));
        }
        if reopen {
            // Even a rolled-back schema change may have reshuffled the in-memory schema,
            // and virtual tables (FTS5) keep caches whose presence changes how many steps
            // the next line runs. A replica that just restarted has neither.
            self.reopen()?;
        }
        Ok(Attempt::Committed(Group { count, results }))
    }

    /// Makes everything applied so far durable, for log compaction (§7), and returns the
    /// index now durable. The Raft log may drop entries up to it, and no further: an entry
    /// applied but not yet durable here would be lost with the log in a power failure.
    ///
    /// The connection commits with `synchronous = NORMAL`: a commit's frames are written
    /// to the WAL but not synced. Syncing the WAL file makes every commit so far durable
    /// (recovery replays committed frames from it); frames already copied back into the
    /// database were synced there when that checkpoint completed, before SQLite reused
    /// the WAL. Unlike a checkpoint, this never waits for readers (a snapshot being
    /// copied holds one for a long time).
    ///
    /// Only the WAL is opened here, never the database file: closing any descriptor of a
    /// file drops all of this process's POSIX locks on it, and SQLite's connections rely
    /// on theirs (another process closing its connection would then delete the WAL).
    pub fn make_durable(&mut self) -> Result<Index, StorageError> {
        let applied = self.applied;
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        let sync = |path: &Path| match std::fs::File::open(path) {
            Ok(file) => file.sync_data(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        sync(Path::new(&wal)).map_err(|e| StorageError(format!("syncing the state database failed: {e}")))?;
        Ok(applied)
    }

    /// Replaces the whole state with the snapshot database at `source` (§7, Figure 13
    /// rule 8), and makes it durable. Returns the applied index recorded inside it.
    /// Readers see the old state or the new, a crash leaves one or the other, and the new
    /// state is the sender's exactly (rowids included), so later entries apply here
    /// exactly as on the node the snapshot came from.
    ///
    /// Close every other connection to the state database first, if possible: then the
    /// snapshot file itself takes the database's name, and no page is written again.
    /// While another connection is open (in this process or another), the pages are
    /// copied in instead, with SQLite's backup API in one transaction.
    pub fn install(&mut self, source: &Path) -> Result<Index, StorageError> {
        let fail = |e: rusqlite::Error| StorageError(format!("installing the snapshot {}: {e}", source.display()));
        let renamed = self.install_by_rename(source)?;
        if !renamed {
            let src = Connection::open_with_flags(
                source,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(fail)?;
            {
                let backup = rusqlite::backup::Backup::new(&src, &mut self.conn).map_err(fail)?;
                backup.step(-1).map_err(fail)?;
            }
            drop(src);
            // A fresh connection, as on a node that restarted: no cached schema or state.
            self.reopen()?;
        }
        let applied: i64 = self
            .conn
            .query_row(&format!("SELECT applied_index FROM main.{APPLIED_TABLE}"), [], |r| r.get(0))
            .map_err(fail)?;
        let page_size: i64 = self.conn.query_row("PRAGMA main.page_size", [], |r| r.get(0)).map_err(fail)?;
        self.applied = applied.max(0) as Index;
        self.page_size = page_size.max(512) as u64;
        self.make_durable()
    }

    /// Gives `source` the state database's name, if this connection is the last one open
    /// to the database; true if it did. Reopens the connection either way.
    ///
    /// The order matters. Closing the last connection checkpoints the write-ahead log into
    /// the database, syncs it, and deletes the log; a log still there afterwards means
    /// another connection is open, and renaming then would pull the file from under it.
    /// The log's deletion is made durable before the rename: a log that came back after a
    /// crash would be replayed into the new file, pages of one database over another.
    /// The rename itself is atomic and made durable before anything else happens.
    fn install_by_rename(&mut self, source: &Path) -> Result<bool, StorageError> {
        let side = |path: &Path, suffix: &str| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::path::PathBuf::from(name)
        };
        let io = |doing: &str, e: std::io::Error| StorageError(format!("installing the snapshot: {doing} failed: {e}"));
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let placeholder =
            Connection::open_in_memory().map_err(|e| StorageError(format!("installing the snapshot: {e}")))?;
        drop(std::mem::replace(&mut self.conn, placeholder));
        // A state file that is a symbolic link has its log beside the link's target, where
        // this check does not look: copy into it instead.
        let linked = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_symlink());
        let alone = !linked && !side(&self.path, "-wal").exists() && !side(source, "-wal").exists();
        let sync_dir = || std::fs::File::open(&dir).and_then(|d| d.sync_all());
        let renamed = if alone {
            sync_dir()
                .map_err(|e| io("syncing the directory", e))
                .map(|()| crate::failpoint("install-state-closed"))
                .and_then(|()| {
                    std::fs::rename(source, &self.path).map_err(|e| io("renaming the snapshot into place", e))
                })
                .and_then(|()| sync_dir().map_err(|e| io("syncing the directory", e)))
        } else {
            Ok(())
        };
        // Open again whatever happened: the state machine never keeps the placeholder.
        let reopened = self.reopen();
        renamed?;
        reopened?;
        if alone {
            crate::failpoint("install-renamed");
        }
        Ok(alone)
    }

    /// Runs one command's line inside the open transaction, under the entry's limits.
    ///
    /// A statement's journal (what SQLite keeps to undo the statement alone) is charged to
    /// the line: memory, or a temporary file once it outgrows 64 KiB. In memory it is
    /// emptied when the statement ends; a file stays open until the transaction ends, and
    /// the next line would write into it rather than grow a new one. So such a line ends
    /// its group, and every line starts with no journal, as alone.
    fn run_entry(&mut self, index: Index, command: &WriteCommand) -> Result<Line, StorageError> {
        self.begin_line(&command.limits)?;
        let outcome = vfs::with_pinned_time(command.time_ms, || self.run_command(index, command));
        // Either kind of line leaves this connection different from a freshly opened one.
        let schema_touched = self.shared.policy.take_schema_touched();
        let left_state = self.shared.policy.take_left_state();
        let result = match outcome {
            Ok(results) => Ok(results),
            Err(error) => Err(self.judge(error)?),
        };
        let cost = (self.shared.checks.load(Ordering::Relaxed), mem::charged());
        self.last_cost = cost;
        self.costs.push((index, cost.0, cost.1));
        mem::end_line();
        Ok(Line { result, reopen: schema_touched || left_state, journal_open: vfs::temp_files_open() > 0 })
    }

    /// Rolls back the open transaction, unless SQLite already did.
    fn rollback(&mut self) -> Result<(), StorageError> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.internal("ROLLBACK").map_err(|e| self.storage(e, "rolling back"))
    }

    /// Runs the line inside the entry's transaction, with the clock already pinned.
    fn run_command(&mut self, index: Index, command: &WriteCommand) -> Result<Vec<StatementResult>, LineError> {
        // The bookkeeping goes first: besides recording the index, it sets changes() to 1,
        // so every replica starts the line with the same connection state, restarted or not.
        // It is prepared afresh every time: SQLite calls the progress handler by a
        // statement's lifetime step count, so a cached statement would shift where the
        // line's checks fall, differently on a replica that restarted.
        self.shared.policy.internal(|| {
            self.conn.execute(&format!("UPDATE main.{APPLIED_TABLE} SET applied_index = ?1"), [index as i64])
        })?;
        // SAFETY: the handle is valid while `self.conn` lives.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(self.conn.handle(), 0) };
        self.random.reseed(command.seed, command.limits.length_limit() as u64);

        let mut results = Vec::new();
        let mut budget = ResultBudget::new(command.limits.max_result_bytes);
        let shared = self.shared.clone();
        let mut after_statement = || {
            if shared.largest_rowid.load(Ordering::Relaxed) {
                return Err(LineError::Stopped(largest_rowid_refusal()));
            }
            Ok(())
        };
        let mut collect = |output: Output| {
            budget.charge(&output)?;
            output.collect_into(&mut results);
            Ok(())
        };
        run_line(&self.conn, &command.sql, true, &mut after_statement, &mut collect)?;
        if self.shared.policy.take_analyzed() {
            // STAT4 keeps whole index keys (up to a value's size, 24 per index), which every
            // connection loads when it opens: keep only sqlite_stat1's small summaries.
            self.shared.policy.internal(|| {
                let exists = "SELECT 1 FROM main.sqlite_schema WHERE name = 'sqlite_stat4'";
                if self.conn.query_row(exists, [], |_| Ok(())).is_ok() {
                    self.conn.execute("DELETE FROM main.sqlite_stat4", [])?;
                }
                Ok::<(), rusqlite::Error>(())
            })?;
        }
        if self.shared.policy.schema_touched() {
            self.shared.policy.internal(|| self.check_schema())?;
        }
        Ok(results)
    }

    /// After a schema change: names starting with the reserved prefix belong to lightraft
    /// (the authorizer refuses the obvious ways to create one; this catches every other
    /// way, a rename say), and the schema stays within its bounds.
    fn check_schema(&self) -> Result<(), LineError> {
        let (objects, text): (i64, i64) = self.conn.query_row(
            "SELECT count(*), ifnull(sum(length(CAST(sql AS BLOB))), 0) FROM main.sqlite_schema",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if objects > MAX_SCHEMA_OBJECTS || text > MAX_SCHEMA_TEXT {
            return Err(LineError::Stopped(format!(
                "the schema would hold {objects} objects defined in {text} bytes; at most {MAX_SCHEMA_OBJECTS} objects and {MAX_SCHEMA_TEXT} bytes are allowed"
            )));
        }
        let sql = format!(
            "SELECT name FROM main.sqlite_schema WHERE name <> '{APPLIED_TABLE}' \
             AND (lower(substr(name, 1, {n})) = '{RESERVED_PREFIX}' OR lower(substr(tbl_name, 1, {n})) = '{RESERVED_PREFIX}') LIMIT 1",
            n = RESERVED_PREFIX.len()
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        if let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            return Err(LineError::Stopped(format!(
                "{name}: names starting with {RESERVED_PREFIX} belong to lightraft and cannot be created or changed"
            )));
        }
        Ok(())
    }

    /// Sets this line's limits on the connection, the VFS and the callbacks.
    fn begin_line(&mut self, limits: &Limits) -> Result<(), StorageError> {
        vfs::begin_line(Some(limits.max_temp_bytes));
        mem::begin_line(limits.allocation_cap(), Some(limits.allocation_budget()));
        let shared = &self.shared;
        shared.checks.store(0, Ordering::Relaxed);
        shared.max_checks.store(limits.max_steps.div_ceil(STEPS_PER_CHECK), Ordering::Relaxed);
        shared.largest_rowid.store(false, Ordering::Relaxed);
        let _ = shared.policy.take_refusal();
        let _ = shared.policy.take_schema_touched();
        let _ = shared.policy.take_analyzed();
        let length = limits.length_limit();
        self.shared.length.set(length as u64);
        self.conn
            .set_limit(Limit::SQLITE_LIMIT_LENGTH, length)
            .and_then(|_| self.conn.set_limit(Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_PATTERN_BYTES))
            .map_err(|e| self.storage(e, "setting the length limits"))?;
        // The page limit depends only on the page count and the entry's limits, so it is
        // the same on every replica: identical files hold identical page counts.
        let pages: i64 = self
            .shared
            .policy
            .internal(|| self.conn.query_row("PRAGMA main.page_count", [], |r| r.get(0)))
            .map_err(|e| self.storage(e, "reading the page count"))?;
        let pages = pages.max(0) as u64;
        let mut limit = pages.saturating_add(limits.max_growth_bytes.div_ceil(self.page_size));
        if limits.max_database_bytes > 0 {
            limit = limit.min(limits.max_database_bytes / self.page_size).max(pages);
        }
        if self.page_limit != Some(limit) {
            let sql = format!("PRAGMA main.max_page_count = {}", limit.min(u32::MAX as u64));
            self.shared
                .policy
                .internal(|| self.conn.query_row(&sql, [], |_| Ok(())))
                .map_err(|e| self.storage(e, "setting the page limit"))?;
            self.page_limit = Some(limit);
        }
        Ok(())
    }

    /// Decides whose fault a failed line is. The node's, if the OS failed during the line
    /// or SQLite says the file itself is unusable: then the node must stop (`Err`). The
    /// entry's otherwise: the message is its result on every replica (`Ok`).
    fn judge(&self, error: LineError) -> Result<String, StorageError> {
        if let Some(failure) = vfs::io_failure() {
            let detail = match &error {
                LineError::Sqlite(e) => e.to_string(),
                LineError::Stopped(s) => s.clone(),
            };
            return Err(StorageError(format!("{failure} while applying ({detail})")));
        }
        if mem::real_failure() {
            return Err(StorageError("this node ran out of memory while applying".to_string()));
        }
        let e = match error {
            LineError::Stopped(message) => return Ok(message),
            LineError::Sqlite(e) => e,
        };
        if self.shared.largest_rowid.load(Ordering::Relaxed) {
            return Ok(largest_rowid_refusal());
        }
        let Some(code) = e.sqlite_error() else { return Ok(e.to_string()) };
        match code.code {
            // The file, not the SQL: damaged, unreadable, locked by another process, or
            // memory ran out. Another replica would not fail the same way.
            ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::NotADatabase
            | ErrorCode::ReadOnly
            | ErrorCode::DatabaseBusy
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport
            | ErrorCode::PermissionDenied => Err(StorageError(e.to_string())),
            // A virtual table's own consistency checks (FTS, R-tree) fail alike everywhere;
            // any other corruption is this node's file.
            ErrorCode::DatabaseCorrupt if code.extended_code != rusqlite::ffi::SQLITE_CORRUPT_VTAB => {
                Err(StorageError(e.to_string()))
            }
            // No OS failure was seen, so a limit ran out: the same on every replica.
            ErrorCode::DiskFull => Ok(self.full_message()),
            // The C library did not fail (checked above): a cap refused the request.
            ErrorCode::OutOfMemory => Ok(memory_message()),
            ErrorCode::OperationInterrupted => Ok(format!(
                "the line was stopped after {} SQLite steps: too much work for one request",
                self.shared.max_checks.load(Ordering::Relaxed) * STEPS_PER_CHECK
            )),
            _ => Ok(error_message(&self.shared.policy, &e)),
        }
    }

    /// Which limit a "full" error hit, for the client. With no OS failure and the random
    /// rowid path closed, it is the temporary-space budget, an AUTOINCREMENT counter that
    /// ran out, or the database size limits.
    fn full_message(&self) -> String {
        if vfs::temp_budget_exceeded() {
            return "the line needs more temporary space (sorting, subqueries) than a line may use".to_string();
        }
        let exhausted = self.shared.policy.internal(|| {
            self.conn.query_row("SELECT 1 FROM main.sqlite_sequence WHERE seq >= 9223372036854775807", [], |_| Ok(()))
        });
        if exhausted.is_ok() {
            return "an AUTOINCREMENT counter reached its largest value".to_string();
        }
        "the line would make the database larger than allowed (per line, or in total)".to_string()
    }

    /// Records the applied index: inside the group's transaction, or alone after a
    /// rollback.
    fn record_applied(&mut self, index: Index) -> Result<(), StorageError> {
        let sql = format!("UPDATE main.{APPLIED_TABLE} SET applied_index = ?1");
        let result = self.shared.policy.internal(|| self.conn.execute(&sql, [index as i64]));
        result.map(|_| ()).map_err(|e| self.storage(e, "recording the applied index"))
    }

    fn internal(&self, sql: &str) -> rusqlite::Result<()> {
        self.shared.policy.internal(|| self.conn.execute_batch(sql))
    }

    fn reopen(&mut self) -> Result<(), StorageError> {
        self.conn = connect(&self.path, &self.shared, &self.random).map_err(StorageError)?;
        self.page_limit = None;
        // Only a schema change can add or drop one, and it reopens the connection.
        self.deferred_keys = has_deferred_keys(&self.conn, &self.shared.policy);
        Ok(())
    }

    fn storage(&self, e: rusqlite::Error, doing: &str) -> StorageError {
        match vfs::io_failure() {
            Some(failure) => StorageError(format!("{doing}: {failure} ({e})")),
            None => StorageError(format!("{doing}: {e}")),
        }
    }
}

/// Whether a table may declare a deferred foreign key (`DEFERRABLE INITIALLY DEFERRED`;
/// `PRAGMA defer_foreign_keys` is refused). The text test can only err towards yes,
/// which merely stops grouping; so does a failure to look.
fn has_deferred_keys(conn: &Connection, policy: &Policy) -> bool {
    let sql = "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND sql LIKE '%deferred%')";
    policy.internal(|| conn.query_row(sql, [], |r| r.get::<_, bool>(0))).unwrap_or(true)
}

/// Whether a deferred foreign key constraint is violated in the open transaction: its
/// COMMIT would then fail.
fn deferred_foreign_keys(conn: &Connection) -> bool {
    let (mut current, mut highest) = (0, 0);
    // SAFETY: the handle is valid while `conn` lives; the out-pointers are locals.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_DEFERRED_FKS,
            &mut current,
            &mut highest,
            0,
        )
    };
    // Unknown counts as violated: the line then runs alone, where COMMIT decides.
    rc != rusqlite::ffi::SQLITE_OK || current > 0
}

/// Which memory cap refused the line, for the client.
pub(crate) fn memory_message() -> String {
    match mem::refusal() {
        Some(mem::Refusal::TooLarge { size }) => {
            format!("the line asked for {size} bytes at once, more than a line may: too much for one request")
        }
        Some(mem::Refusal::Budget { budget }) => {
            format!("the line built or copied more than {budget} bytes of large values: too much work for one request")
        }
        None => "the line asked SQLite for more memory than it ever hands out at once (2 GiB)".to_string(),
    }
}

fn largest_rowid_refusal() -> String {
    format!(
        "a row may not take the largest rowid {}: SQLite would then choose later rowids at random, differently on each replica",
        i64::MAX
    )
}

/// Opens the state machine's connection and sets it up: WAL, defensive mode (shadow
/// tables and the schema are read-only to SQL), our random functions, the authorizer,
/// the step budget and the largest-rowid watch.
fn connect(path: &Path, shared: &Arc<Shared>, random: &SeededRandom) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags_and_vfs(path, flags, VFS_NAME)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // The log is durable before entries are applied, so the state machine need not
    // fsync every commit: after a crash it re-applies from its recorded index.
    let setup = format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS main.{APPLIED_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 0), applied_index INTEGER NOT NULL);
         INSERT OR IGNORE INTO main.{APPLIED_TABLE} VALUES (0, 0);"
    );
    conn.execute_batch(&setup).map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
    // Another process holding a lock briefly (an operator's sqlite3) is waited for.
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| format!("cannot set a busy timeout: {e}"))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(|e| format!("cannot enable defensive mode: {e}"))?;
    random.install(&conn).map_err(|e| format!("cannot install random(): {e}"))?;
    functions::install(&conn, &shared.length).map_err(|e| format!("cannot install instr() and replace(): {e}"))?;
    let hook = shared.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| hook.policy.authorize(ctx)))
        .map_err(|e| format!("cannot install the authorizer: {e}"))?;
    let counter = shared.clone();
    conn.progress_handler(
        STEPS_PER_CHECK as i32,
        Some(move || {
            counter.largest_rowid.load(Ordering::Relaxed)
                || counter.checks.fetch_add(1, Ordering::Relaxed) + 1 > counter.max_checks.load(Ordering::Relaxed)
        }),
    )
    .map_err(|e| format!("cannot install the progress handler: {e}"))?;
    let watch = shared.clone();
    conn.update_hook(Some(move |_, _: &str, _: &str, rowid: i64| {
        if rowid == i64::MAX {
            watch.largest_rowid.store(true, Ordering::Relaxed);
        }
    }))
    .map_err(|e| format!("cannot install the update hook: {e}"))?;
    shared
        .policy
        .internal(|| warm_up(&conn, &shared.policy))
        .map_err(|e| format!("cannot load the schema of {}: {e}", path.display()))?;
    Ok(conn)
}

/// Does now, without limits, what a fresh connection would otherwise do lazily inside the
/// next entry: load the schema and statistics, and connect every virtual table. That
/// work runs SQL (it counts steps, reads long values), so doing it inside an entry would
/// let a restarted replica hit a limit that a long-running one does not.
fn warm_up(conn: &Connection, policy: &Policy) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%' ORDER BY rowid",
    )?;
    let virtual_tables: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    policy.note_virtual_tables(virtual_tables.iter().cloned());
    for name in virtual_tables {
        // Preparing a statement on a virtual table connects it (xConnect). A table that
        // cannot connect (its module is missing, say) fails the same way in every entry
        // that uses it, on every replica; it must not keep the node from starting.
        let _ = conn.prepare(&format!("SELECT * FROM main.\"{}\" LIMIT 0", name.replace('"', "\"\"")));
    }
    Ok(())
}

/// The authorizer's sentence if it refused, else SQLite's message.
pub(crate) fn error_message(policy: &Policy, e: &rusqlite::Error) -> String {
    policy.take_refusal().unwrap_or_else(|| match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    })
}
