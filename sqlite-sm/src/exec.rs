//! Running one line: its statements in order, each result handed to a sink as it is
//! produced, so a reader can stream rows and the state machine can collect them, both
//! under a budget for result bytes.

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection};

use crate::value::{StatementResult, Value};

/// One piece of a line's output, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A statement that returns rows begins; these are its column names.
    Columns(Vec<String>),
    /// One row of the current statement.
    Row(Vec<Value>),
    /// A statement that returns no rows finished.
    Changes {
        /// Rows inserted, updated or deleted.
        rows_affected: u64,
        /// The rowid of the last insert on this connection.
        last_insert_rowid: i64,
    },
}

impl Output {
    /// What the output counts against a result-size limit (see [`Value::size`]).
    pub fn size(&self) -> u64 {
        match self {
            Output::Columns(names) => names.iter().map(|n| 8 + 6 * n.len() as u64).sum(),
            Output::Row(values) => values.iter().map(Value::size).sum(),
            Output::Changes { .. } => 64,
        }
    }

    /// Adds this output to the results of a line being collected.
    pub fn collect_into(self, results: &mut Vec<StatementResult>) {
        match self {
            Output::Columns(columns) => results.push(StatementResult::Rows { columns, rows: Vec::new() }),
            Output::Row(row) => {
                if let Some(StatementResult::Rows { rows, .. }) = results.last_mut() {
                    rows.push(row);
                }
            }
            Output::Changes { rows_affected, last_insert_rowid } => {
                results.push(StatementResult::Changes { rows_affected, last_insert_rowid })
            }
        }
    }
}

/// Why a line stopped.
#[derive(Debug)]
pub(crate) enum LineError {
    /// SQLite reported an error.
    Sqlite(rusqlite::Error),
    /// A lightraft rule or limit stopped the line; the sentence says which.
    Stopped(String),
}

impl From<rusqlite::Error> for LineError {
    fn from(e: rusqlite::Error) -> LineError {
        LineError::Sqlite(e)
    }
}

/// Counts result bytes against a limit.
pub(crate) struct ResultBudget {
    used: u64,
    max: u64,
}

impl ResultBudget {
    pub(crate) fn new(max: u64) -> ResultBudget {
        ResultBudget { used: 0, max }
    }

    /// Charges one output; an error once the line's results exceed the limit.
    pub(crate) fn charge(&mut self, output: &Output) -> Result<(), LineError> {
        self.used += output.size();
        if self.used > self.max {
            return Err(LineError::Stopped(format!(
                "the result is larger than {} bytes; ask for fewer rows or columns (LIMIT, WHERE)",
                self.max
            )));
        }
        Ok(())
    }
}

/// Runs every statement of `sql` on `conn`, handing each result to `sink`. A statement
/// that would write is an error unless `writes_allowed`. `after_statement` runs after
/// each statement and may stop the line.
pub(crate) fn run_line(
    conn: &Connection,
    sql: &str,
    writes_allowed: bool,
    after_statement: &mut dyn FnMut() -> Result<(), LineError>,
    sink: &mut dyn FnMut(Output) -> Result<(), LineError>,
) -> Result<(), LineError> {
    let mut batch = Batch::new(conn, sql);
    while let Some(mut stmt) = batch.next()? {
        if !writes_allowed && !stmt.readonly() {
            return Err(LineError::Stopped("a read-only line tried to change the database".to_string()));
        }
        if let Some(reason) = unreplicable(&stmt) {
            return Err(LineError::Stopped(reason.to_string()));
        }
        let columns: Vec<String> = stmt.column_names().map(String::from).collect();
        if columns.is_empty() {
            // changes() keeps its old value across statements that change nothing (DDL),
            // so count it only if this statement changed something.
            let before = conn.total_changes();
            stmt.raw_execute()?;
            let rows_affected = if conn.total_changes() > before { conn.changes() } else { 0 };
            after_statement()?;
            sink(Output::Changes { rows_affected, last_insert_rowid: conn.last_insert_rowid() })?;
        } else {
            let width = columns.len();
            sink(Output::Columns(columns))?;
            let mut cursor = stmt.raw_query();
            while let Some(row) = cursor.next()? {
                let values = (0..width).map(|i| row.get_ref(i).map(Value::from)).collect::<Result<_, _>>()?;
                sink(Output::Row(values))?;
            }
            drop(cursor);
            after_statement()?;
        }
    }
    Ok(())
}

/// What the authorizer cannot see: `VACUUM INTO` writes a file outside the replicated
/// database (on every replica, at a path a client chose). SQLite has no authorizer code
/// for VACUUM, so this looks at the prepared statement's own text.
pub(crate) fn unreplicable(stmt: &rusqlite::Statement<'_>) -> Option<&'static str> {
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
