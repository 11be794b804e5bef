//! `lightraft backup`: a consistent copy of one node's data, taken while the cluster
//! keeps serving, as a SQLite file or as SQL that rebuilds it in a new cluster.
//!
//! It runs on the node's machine and reads the node's state database directly, with
//! SQLite's online backup API in one read transaction (the same copy a leader sends as
//! a snapshot, [`sqlite_sm::snapshot::copy`]): the node's writes go on meanwhile, and
//! the copy is the state at one applied index. The copy is checked
//! (`PRAGMA integrity_check`) and made durable before it takes the name asked for, so a
//! crash or a full disk never leaves a half-written backup under that name. The SQL form
//! is built in memory before it is written: for a database larger than memory, take the
//! SQLite file.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use sqlite_sm::{StatementResult, Value};

use crate::catalog;
use crate::config::Config;

/// Writes node `node`'s state to `dest` (as SQL with `sql`); returns what was done.
pub fn run(config: &Config, node: usize, dest: &Path, sql: bool) -> Result<String, String> {
    if node >= config.nodes.len() {
        return Err(format!("there is no node {node}: the config lists nodes 0 to {}", config.nodes.len() - 1));
    }
    let source = config.sm_path(node);
    if !source.exists() {
        return Err(format!(
            "node {node} has no database at {} (run this on node {node}'s machine, with its config)",
            source.display()
        ));
    }
    if dest.exists() {
        return Err(format!("{} already exists; name a new file", dest.display()));
    }
    // The copy is made in a directory of its own beside FILE: private (mode 0700) and
    // named at random, so no one can plant a link in it, and removed with everything in
    // it (SQLite's side files too) whatever happens.
    let parent = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".lightraft-backup-")
        .tempdir_in(parent)
        .map_err(|e| format!("cannot make a working directory in {}: {e}", parent.display()))?;
    // No statement of the SQL may be longer than the cluster's sessions take.
    let index = copy_to(&source, work.path(), dest, sql, config.client.max_line_bytes)?;
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    let what = if sql { "as SQL" } else { "as a SQLite database" };
    Ok(format!("node {node}'s state at applied index {index} written to {} {what} ({bytes} bytes)", dest.display()))
}

/// Copies into `work`, checks, makes durable, and only then gives the result the name
/// `dest` (a hard link, which never replaces a file that appeared meanwhile). Returns the
/// applied index of the copy.
fn copy_to(source: &Path, work: &Path, dest: &Path, sql: bool, max_statement: usize) -> Result<u64, String> {
    let copy = work.join("copy.sqlite");
    let index = copy_of_one_file(source, &copy)?;
    sqlite_sm::snapshot::verify(&copy, index)?;
    let done = if sql {
        let text = dump(&copy, max_statement)?;
        let path = work.join("dump.sql");
        let mut file = File::create(&path).map_err(|e| format!("cannot write the dump: {e}"))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write the dump: {e}"))?;
        path
    } else {
        // One file that stands alone: nothing left in a write-ahead log beside it.
        let conn = Connection::open(&copy).map_err(|e| format!("cannot open the copy: {e}"))?;
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .map_err(|e| format!("cannot finish the copy: {e}"))?;
        drop(conn);
        File::open(&copy).and_then(|f| f.sync_all()).map_err(|e| format!("cannot sync the copy: {e}"))?;
        copy
    };
    std::fs::hard_link(&done, dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(index)
}

/// Copies `source` to `copy`, again if the node replaced the file meanwhile: a node
/// installing a snapshot renames the received file over its state database, and a copy
/// begun on the old file could then read the new file's write-ahead log. A copy during
/// which the file kept its identity (device and inode) is of one state.
fn copy_of_one_file(source: &Path, copy: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let identity = || {
        std::fs::metadata(source)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| format!("cannot read {}: {e}", source.display()))
    };
    for _ in 0..3 {
        let before = identity()?;
        let copied = sqlite_sm::snapshot::copy(source, copy);
        // A copy that failed while the file was replaced is tried again too.
        if identity()? == before {
            return copied;
        }
    }
    Err("the node replaced its state (snapshot installs) during three copies in a row; try again".to_string())
}

/// The copy at `path` as the SQL of `.dump`, read in one transaction.
fn dump(path: &Path, max_statement: usize) -> Result<String, String> {
    // Read-write (it is our own copy): a read-only connection may not open a WAL file.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| format!("cannot open the copy: {e}"))?;
    conn.execute_batch("PRAGMA query_only = 1; BEGIN").map_err(|e| format!("cannot read the copy: {e}"))?;
    let schema: Vec<StatementResult> =
        catalog::dump_catalog(None).iter().map(|q| query(&conn, q)).collect::<Result<_, _>>()?;
    let data: Vec<StatementResult> =
        catalog::dump_reads(&schema).iter().map(|q| query(&conn, q)).collect::<Result<_, _>>()?;
    let limits = catalog::DumpLimits { max_statement, max_bytes: u64::MAX };
    catalog::dump_text(&schema, &data, limits)
}

fn query(conn: &Connection, sql: &str) -> Result<StatementResult, String> {
    let failed = |e: rusqlite::Error| format!("cannot read the copy ({sql}): {e}");
    let mut stmt = conn.prepare(sql).map_err(failed)?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let width = columns.len();
    let rows = stmt
        .query_map([], |row| (0..width).map(|i| row.get_ref(i).map(Value::from)).collect::<Result<Vec<_>, _>>())
        .map_err(failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    Ok(StatementResult::Rows { columns, rows })
}
