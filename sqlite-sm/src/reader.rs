//! Reads, off the Raft thread: a read-only connection to the state machine's file that
//! classifies lines (reads or writes, as SQLite itself judges each statement) and runs
//! read-only lines, streaming their rows. A node keeps a few readers; each read sees every
//! transaction committed when it began (WAL gives each read its own snapshot), so a read
//! started once the state machine applied index i sees at least i.
//!
//! Reads are not replicated, so they may also stop on the wall clock: a read is
//! interrupted at its deadline as well as at its step budget.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::AuthContext;
use rusqlite::limits::Limit;
use rusqlite::{Batch, Connection, ErrorCode, OpenFlags};

use crate::command::{Limits, MAX_PATTERN_BYTES};
use crate::exec::{run_line, unreplicable, LineError, Output, ResultBudget};
use crate::functions::{self, LengthLimit};
use crate::mem;
use crate::policy::Policy;
use crate::state_machine::{error_message, memory_message, STEPS_PER_CHECK};
use crate::vfs::{self, VFS_NAME};

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
    incomplete: bool,
}

impl ClassifyError {
    /// The line could not be judged on this node now (it could not open its database):
    /// nothing about the line itself.
    pub fn unavailable(message: String) -> ClassifyError {
        ClassifyError { message, is_final: false, incomplete: false }
    }

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

    /// True if the line stops in the middle of a statement (SQLite's "incomplete
    /// input"): a shell can read on and try the longer text.
    pub fn is_incomplete(&self) -> bool {
        self.incomplete
    }
}

impl std::fmt::Display for ClassifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[derive(Debug, Default)]
struct Shared {
    policy: Policy,
    length: LengthLimit,
    checks: AtomicU64,
    max_checks: AtomicU64,
    deadline: Mutex<Option<Instant>>,
    timed_out: AtomicBool,
}

/// A read-only connection to a state machine's database.
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
    shared: Arc<Shared>,
}

impl Reader {
    /// Opens a reader on the database at `path`, which the state machine has created.
    pub fn open(path: &Path) -> Result<Reader, String> {
        vfs::register()?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags_and_vfs(path, flags, VFS_NAME)
            .map_err(|e| format!("cannot open {} for reading: {e}", path.display()))?;
        conn.execute_batch("PRAGMA query_only = 1").map_err(|e| format!("cannot make the reader read-only: {e}"))?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
            .map_err(|e| format!("cannot enable defensive mode: {e}"))?;
        let shared = Arc::new(Shared::default());
        functions::install(&conn, &shared.length).map_err(|e| format!("cannot install instr() and replace(): {e}"))?;
        let hook = shared.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| hook.policy.authorize(ctx)))
            .map_err(|e| format!("cannot install the authorizer: {e}"))?;
        let watch = shared.clone();
        conn.progress_handler(
            STEPS_PER_CHECK as i32,
            Some(move || {
                let late = watch.deadline.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|d| Instant::now() > d);
                if late {
                    watch.timed_out.store(true, Ordering::Relaxed);
                }
                late || watch.checks.fetch_add(1, Ordering::Relaxed) + 1 > watch.max_checks.load(Ordering::Relaxed)
            }),
        )
        .map_err(|e| format!("cannot install the progress handler: {e}"))?;
        Ok(Reader { conn, shared })
    }

    /// Decides, by preparing each statement, whether a line reads or writes. A statement
    /// that fails to prepare after an earlier write in the line (say, an INSERT into a
    /// table the line creates) is judged when applied; before any write it is an error now.
    pub fn classify(&self, sql: &str) -> Result<Kind, ClassifyError> {
        self.classify_counted(sql).map(|(kind, _)| kind)
    }

    /// [`Reader::classify`], and how many statements the line holds.
    pub fn classify_counted(&self, sql: &str) -> Result<(Kind, usize), ClassifyError> {
        let _ = self.shared.policy.take_refusal();
        let mut batch = Batch::new(&self.conn, sql);
        let mut kind = None;
        let mut statements = 0;
        loop {
            match batch.next() {
                Ok(Some(stmt)) => {
                    statements += 1;
                    if let Some(reason) = unreplicable(&stmt) {
                        return Err(ClassifyError { message: reason.to_string(), is_final: true, incomplete: false });
                    }
                    if !stmt.readonly() {
                        kind = Some(Kind::Write);
                    } else if kind.is_none() {
                        kind = Some(Kind::Read);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let refusal = self.shared.policy.take_refusal();
                    let refused =
                        refusal.is_some() || e.sqlite_error_code() == Some(ErrorCode::AuthorizationForStatementDenied);
                    // A statement cut short is so whatever runs before it.
                    // SQLite's exact message (a name in a message could hold the words).
                    let incomplete =
                        !refused && matches!(&e, rusqlite::Error::SqliteFailure(_, Some(m)) if m == "incomplete input");
                    // A refusal is final; other errors may be cured by an earlier write.
                    if matches!(kind, Some(Kind::Write)) && !refused && !incomplete {
                        return Ok((Kind::Write, statements + 1));
                    }
                    let is_final = refused || is_syntax_error(&e);
                    let message = refusal.unwrap_or_else(|| error_message(&self.shared.policy, &e));
                    return Err(ClassifyError { message, is_final, incomplete });
                }
            }
        }
        let kind = kind.ok_or_else(|| ClassifyError {
            message: "the line holds no SQL statement".into(),
            is_final: true,
            incomplete: false,
        })?;
        Ok((kind, statements))
    }

    /// Runs a read-only line in one read transaction, handing each result to `sink` as it
    /// is produced. `sink` returns false to stop early (the client went away). Stops with
    /// an error at the limits or after `timeout`.
    pub fn query(
        &mut self,
        sql: &str,
        limits: &Limits,
        timeout: Duration,
        sink: &mut dyn FnMut(Output) -> bool,
    ) -> Result<(), String> {
        vfs::begin_line(Some(limits.max_temp_bytes));
        // Reads stop at their deadline; only the single-allocation cap protects memory.
        mem::begin_line(limits.allocation_cap(), None);
        let shared = &self.shared;
        shared.checks.store(0, Ordering::Relaxed);
        shared.max_checks.store(limits.max_steps.div_ceil(STEPS_PER_CHECK), Ordering::Relaxed);
        shared.timed_out.store(false, Ordering::Relaxed);
        *shared.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + timeout);
        let _ = shared.policy.take_refusal();
        let length = limits.length_limit();
        shared.length.set(length as u64);
        self.conn
            .set_limit(Limit::SQLITE_LIMIT_LENGTH, length)
            .and_then(|_| self.conn.set_limit(Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_PATTERN_BYTES))
            .map_err(|e| format!("cannot set the length limits: {e}"))?;
        let begun = shared.policy.internal(|| self.conn.execute_batch("BEGIN"));
        begun.map_err(|e| format!("cannot start a read: {e}"))?;
        let mut budget = ResultBudget::new(limits.max_result_bytes);
        let mut forward = |output: Output| {
            budget.charge(&output)?;
            if sink(output) {
                Ok(())
            } else {
                Err(LineError::Stopped("the client went away".to_string()))
            }
        };
        let result = run_line(&self.conn, sql, false, &mut || Ok(()), &mut forward);
        mem::end_line();
        // Nothing was written; ending the read transaction cannot lose anything.
        let _ = shared.policy.internal(|| self.conn.execute_batch("ROLLBACK"));
        *shared.deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result.map_err(|e| self.message(e, limits, timeout))
    }

    fn message(&self, error: LineError, limits: &Limits, timeout: Duration) -> String {
        let e = match error {
            LineError::Stopped(message) => return message,
            LineError::Sqlite(e) => e,
        };
        match e.sqlite_error_code() {
            Some(ErrorCode::OperationInterrupted) if self.shared.timed_out.load(Ordering::Relaxed) => {
                format!("the read was stopped after {timeout:?}: too much work for one request")
            }
            Some(ErrorCode::OperationInterrupted) => {
                format!("the line was stopped after {} SQLite steps: too much work for one request", limits.max_steps)
            }
            Some(ErrorCode::DiskFull) if vfs::temp_budget_exceeded() => {
                "the read needs more temporary space (sorting, subqueries) than a line may use".to_string()
            }
            Some(ErrorCode::OutOfMemory) if !mem::real_failure() => memory_message(),
            _ => error_message(&self.shared.policy, &e),
        }
    }
}

/// A syntax error reads the same against any schema.
fn is_syntax_error(e: &rusqlite::Error) -> bool {
    let text = e.to_string();
    ["syntax error", "unrecognized token", "incomplete input"].iter().any(|s| text.contains(s))
}
