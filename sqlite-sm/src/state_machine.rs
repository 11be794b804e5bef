//! The replicated state machine: a SQLite database to which every replica applies the
//! same committed entries in the same order, each as one transaction that also records
//! the applied index, so a restart neither skips nor repeats an entry.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use raft_core::{Entry, Index, Payload};
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Batch, Connection, ErrorCode, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::clock::{register_vfs, with_pinned_time, SeededRandom, VFS_NAME};
use crate::value::{LineResult, StatementResult, Value};

/// The table holding the applied index. Clients may read it but never write it.
pub const APPLIED_TABLE: &str = "_lightraft_applied";

/// The most SQLite virtual-machine instructions one line may run (well under a second
/// of work). A runaway query would otherwise stall the Raft thread, and with it heartbeats.
/// The count, unlike a clock, is the same on every replica, so a write stopped by it is
/// stopped (and rolled back) everywhere alike.
pub const MAX_LINE_STEPS: u64 = 100_000_000;

/// How many instructions SQLite runs between two calls of the progress handler.
const STEPS_PER_CHECK: u64 = 10_000;

/// A replicated write: the client's SQL plus what the leader fixed for every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteCommand {
    /// One line of SQL: one or more statements, applied as one transaction.
    pub sql: String,
    /// The leader's clock when it proposed the write, in Unix milliseconds: what
    /// `datetime('now')` and `CURRENT_TIMESTAMP` return on every replica.
    pub time_ms: i64,
    /// Seeds `random()` and `randomblob()` for this entry.
    pub seed: u64,
}

impl WriteCommand {
    /// The bytes of the log entry.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a log entry's bytes.
    pub fn decode(bytes: &[u8]) -> Result<WriteCommand, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("log entry is not a write command: {e}"))
    }
}

/// Whether a line only reads or also writes, as SQLite itself judges each statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Every statement is read-only: serve locally (after a ReadIndex if linearizable).
    Read,
    /// Some statement writes: replicate through Raft.
    Write,
}

/// Why a line could not be classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassifyError {
    message: String,
    is_final: bool,
}

impl ClassifyError {
    /// A sentence for the user.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True if no other replica could judge the line differently: it was refused as
    /// unreplicable, or is not SQL at all. False if it may only be this replica's schema
    /// lagging (say, a table another node just created).
    pub fn is_final(&self) -> bool {
        self.is_final
    }
}

impl std::fmt::Display for ClassifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The disk failed under SQLite. Applying cannot continue safely on this replica.
#[derive(Debug)]
pub struct StorageError(pub String);

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "state machine storage failed: {}", self.0)
    }
}

impl std::error::Error for StorageError {}

/// What the authorizer refused, so the client gets a sentence rather than "not authorized".
#[derive(Debug, Default)]
struct Guard {
    /// Set while lightraft itself updates its bookkeeping table.
    internal: AtomicBool,
    /// The reason for the last refusal.
    refusal: Mutex<Option<String>>,
    /// Progress-handler calls since the current line began.
    checks: std::sync::atomic::AtomicU64,
}

impl Guard {
    fn refuse(&self, reason: &str) -> Authorization {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        Authorization::Deny
    }

    /// Runs lightraft's own statements (transaction control, bookkeeping) unrefused.
    fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        self.internal.store(true, Ordering::Relaxed);
        let out = f();
        self.internal.store(false, Ordering::Relaxed);
        out
    }

    fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Refuses what cannot be replicated identically, at prepare time, so it is rejected
    /// before it is ever proposed.
    fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if self.internal.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match ctx.action {
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                self.refuse("each line already runs as one transaction; BEGIN, COMMIT and SAVEPOINT are not supported")
            }
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                self.refuse("ATTACH and DETACH are not supported: other database files are not replicated")
            }
            // A PRAGMA that sets something changes this connection only, and a restart
            // forgets it: replicas would drift apart. Introspection with an argument is fine.
            AuthAction::Pragma { pragma_name, pragma_value: Some(_) } if !is_introspection(pragma_name) => {
                self.refuse(&format!("PRAGMA {pragma_name} with a value is not supported: settings are not replicated"))
            }
            AuthAction::Function { function_name } => {
                let name = function_name.to_ascii_lowercase();
                if name == "load_extension" || name == "total_changes" || name == "sqlite_offset" {
                    self.refuse(&format!("{function_name}() is not supported: its result differs between replicas"))
                } else {
                    Authorization::Allow
                }
            }
            AuthAction::Insert { table_name }
            | AuthAction::Delete { table_name }
            | AuthAction::DropTable { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::AlterTable { table_name, .. }
                if table_name.eq_ignore_ascii_case(APPLIED_TABLE) =>
            {
                self.refuse(&format!("{APPLIED_TABLE} belongs to lightraft and cannot be changed"))
            }
            _ => Authorization::Allow,
        }
    }
}

/// A replica's SQLite database.
#[derive(Debug)]
pub struct StateMachine {
    conn: Connection,
    random: SeededRandom,
    guard: Arc<Guard>,
    applied: Index,
}

impl StateMachine {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<StateMachine, String> {
        register_vfs()?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags_and_vfs(path, flags, VFS_NAME)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let setup = format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS {APPLIED_TABLE} (id INTEGER PRIMARY KEY CHECK (id = 0), applied_index INTEGER NOT NULL);
             INSERT OR IGNORE INTO {APPLIED_TABLE} VALUES (0, 0);"
        );
        // The log is durable before entries are applied, so the state machine need not
        // fsync every commit: after a crash it re-applies from its recorded index.
        conn.execute_batch(&setup).map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        let applied: i64 = conn
            .query_row(&format!("SELECT applied_index FROM {APPLIED_TABLE}"), [], |r| r.get(0))
            .map_err(|e| format!("cannot read the applied index from {}: {e}", path.display()))?;
        let random = SeededRandom::default();
        random.install(&conn).map_err(|e| format!("cannot install random(): {e}"))?;
        let guard = Arc::new(Guard::default());
        let hook = guard.clone();
        let counter = guard.clone();
        let mut sm = StateMachine { conn, random, guard, applied: applied.max(0) as Index };
        sm.conn
            .authorizer(Some(move |ctx: AuthContext<'_>| hook.authorize(ctx)))
            .map_err(|e| format!("cannot install the authorizer: {e}"))?;
        sm.conn
            .progress_handler(
                STEPS_PER_CHECK as i32,
                Some(move || counter.checks.fetch_add(1, Ordering::Relaxed) + 1 > MAX_LINE_STEPS / STEPS_PER_CHECK),
            )
            .map_err(|e| format!("cannot install the progress handler: {e}"))?;
        Ok(sm)
    }

    /// The index of the last entry applied.
    pub fn applied_index(&self) -> Index {
        self.applied
    }

    /// Decides, by preparing each statement, whether a line reads or writes. A statement
    /// that fails to prepare after an earlier write in the line (say, an INSERT into a
    /// table the line creates) is judged when applied; before any write it is an error now.
    pub fn classify(&self, sql: &str) -> Result<Kind, ClassifyError> {
        let mut batch = Batch::new(&self.conn, sql);
        let mut kind = None;
        loop {
            match batch.next() {
                Ok(Some(stmt)) => {
                    if let Some(reason) = unreplicable(&stmt) {
                        return Err(ClassifyError { message: reason.to_string(), is_final: true });
                    }
                    if !stmt.readonly() {
                        kind = Some(Kind::Write);
                    } else if kind.is_none() {
                        kind = Some(Kind::Read);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let refusal = self.guard.take_refusal();
                    let refused = refusal.is_some() || is_refusal(&e);
                    // A refusal is final; other errors may be cured by an earlier write.
                    if matches!(kind, Some(Kind::Write)) && !refused {
                        return Ok(Kind::Write);
                    }
                    let is_final = refused || is_syntax_error(&e);
                    let message = refusal.unwrap_or_else(|| error_message(&self.guard, &e));
                    return Err(ClassifyError { message, is_final });
                }
            }
        }
        kind.ok_or_else(|| ClassifyError { message: "the line holds no SQL statement".to_string(), is_final: true })
    }

    /// Runs a read-only line against the current state, in one read transaction.
    pub fn query(&mut self, sql: &str) -> LineResult {
        let guard = self.guard.clone();
        guard.checks.store(0, Ordering::Relaxed);
        let tx = guard.internal(|| self.conn.transaction()).map_err(|e| e.to_string())?;
        let results = run_line(&tx, sql, false).map_err(|e| error_message(&guard, &e));
        // Nothing was written; ending the read transaction cannot lose anything.
        let _ = guard.internal(|| tx.rollback());
        results
    }

    /// Applies a committed entry. Returns the line's result for a command (`None` for a
    /// no-op). An SQL error rolls the line back and is a result like any other: every
    /// replica reaches the same error. A storage failure is returned as `Err`, and the
    /// entry is not marked applied.
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<LineResult>, StorageError> {
        if entry.index != self.applied + 1 {
            return Err(StorageError(format!(
                "entry {} applied out of order: the state machine is at index {}",
                entry.index, self.applied
            )));
        }
        let command = match &entry.payload {
            Payload::Noop => None,
            Payload::Command(bytes) => Some(WriteCommand::decode(bytes)),
        };
        let result = match command {
            None => None,
            Some(Err(e)) => Some(Err(e)),
            Some(Ok(command)) => Some(self.apply_command(entry.index, &command)?),
        };
        if !matches!(result, Some(Ok(_))) {
            // No-ops, undecodable entries and failed lines still advance the index.
            self.record_applied_alone(entry.index)?;
        }
        self.applied = entry.index;
        Ok(result)
    }

    fn apply_command(&mut self, index: Index, command: &WriteCommand) -> Result<LineResult, StorageError> {
        let guard = self.guard.clone();
        guard.checks.store(0, Ordering::Relaxed);
        let tx = guard.internal(|| self.conn.transaction()).map_err(storage)?;
        // Start each entry from the same connection state on every replica, whatever
        // ran before on this connection or whether it restarted.
        // SAFETY: the handle is valid while `tx` borrows the connection.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(tx.handle(), 0) };
        self.random.reseed(command.seed);
        let results = with_pinned_time(command.time_ms, || run_line(&tx, &command.sql, true));
        match results {
            Ok(results) => {
                guard
                    .internal(|| {
                        tx.execute(&format!("UPDATE {APPLIED_TABLE} SET applied_index = ?1"), [index as i64])?;
                        tx.commit()
                    })
                    .map_err(storage)?;
                Ok(Ok(results))
            }
            Err(e) if is_storage_failure(&e) => Err(storage(e)),
            Err(e) => {
                let message = error_message(&guard, &e);
                // SQLite may already have rolled back (an interrupted write does), which
                // is what we want; only a rollback that failed and left a transaction open
                // is a storage problem.
                if let Err(failed) = guard.internal(|| tx.rollback()) {
                    if !self.conn.is_autocommit() {
                        return Err(storage(failed));
                    }
                }
                Ok(Err(message))
            }
        }
    }

    fn record_applied_alone(&mut self, index: Index) -> Result<(), StorageError> {
        let sql = format!("UPDATE {APPLIED_TABLE} SET applied_index = ?1");
        self.guard.internal(|| self.conn.execute(&sql, [index as i64])).map(|_| ()).map_err(storage)
    }
}

/// The authorizer's sentence if it refused, else SQLite's message.
fn error_message(guard: &Guard, e: &rusqlite::Error) -> String {
    if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) {
        return format!("the line was stopped after {MAX_LINE_STEPS} SQLite steps: too much work for one request");
    }
    guard.take_refusal().unwrap_or_else(|| match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        rusqlite::Error::InvalidQuery => "a read-only line changed the database".to_string(),
        other => other.to_string(),
    })
}

/// PRAGMAs whose argument names something to look at rather than a value to set.
fn is_introspection(pragma: &str) -> bool {
    const LOOKS: [&str; 10] = [
        "table_info",
        "table_xinfo",
        "table_list",
        "index_info",
        "index_xinfo",
        "index_list",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    ];
    LOOKS.iter().any(|p| p.eq_ignore_ascii_case(pragma))
}

fn storage(e: rusqlite::Error) -> StorageError {
    StorageError(e.to_string())
}

fn is_refusal(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::AuthorizationForStatementDenied))
}

/// What the authorizer cannot see: `VACUUM INTO` writes a file outside the replicated
/// database (on every replica, at a path a client chose). SQLite has no authorizer code
/// for VACUUM, so this looks at the prepared statement's own text.
fn unreplicable(stmt: &rusqlite::Statement<'_>) -> Option<&'static str> {
    let sql = stmt.expanded_sql()?.to_ascii_uppercase();
    let mut rest = sql.as_str();
    // Skip leading blanks and comments: what SQLite itself skips before the keyword.
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, tail)| tail);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, tail)| tail);
        } else {
            break;
        }
    }
    let mut words = rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').filter(|w| !w.is_empty());
    let first = words.next()?;
    (first == "VACUUM" && words.any(|w| w == "INTO"))
        .then_some("VACUUM INTO is not supported: it writes a file outside the replicated database")
}

/// A syntax error reads the same against any schema.
fn is_syntax_error(e: &rusqlite::Error) -> bool {
    let text = e.to_string();
    ["syntax error", "unrecognized token", "incomplete input"].iter().any(|s| text.contains(s))
}

/// Errors that mean the disk, not the SQL, is at fault.
fn is_storage_failure(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::ReadOnly
                | ErrorCode::NotADatabase
        )
    )
}

/// Runs every statement of a line, collecting each one's result.
fn run_line(conn: &Connection, sql: &str, writes_allowed: bool) -> rusqlite::Result<Vec<StatementResult>> {
    let mut results = Vec::new();
    let mut batch = Batch::new(conn, sql);
    while let Some(mut stmt) = batch.next()? {
        if !writes_allowed && !stmt.readonly() {
            return Err(rusqlite::Error::InvalidQuery);
        }
        if let Some(reason) = unreplicable(&stmt) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_AUTH),
                Some(reason.to_string()),
            ));
        }
        let columns: Vec<String> = stmt.column_names().map(String::from).collect();
        if columns.is_empty() {
            // changes() keeps its old value across statements that change nothing (DDL),
            // so count it only if this statement changed something.
            let before = conn.total_changes();
            stmt.raw_execute()?;
            let rows_affected = if conn.total_changes() > before { conn.changes() } else { 0 };
            results.push(StatementResult::Changes { rows_affected, last_insert_rowid: conn.last_insert_rowid() });
        } else {
            let mut rows = Vec::new();
            let mut cursor = stmt.raw_query();
            while let Some(row) = cursor.next()? {
                let values = (0..columns.len()).map(|i| row.get_ref(i).map(Value::from)).collect::<Result<_, _>>()?;
                rows.push(values);
            }
            results.push(StatementResult::Rows { columns, rows });
        }
    }
    Ok(results)
}
