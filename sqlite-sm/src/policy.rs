//! What a line of SQL may do, enforced by SQLite's authorizer when each statement is
//! prepared, the same way on the state machine's connection and on every reader.
//!
//! The rule behind every refusal: a replica's state must be a function of the log alone.
//! So a line may not
//! - control transactions (each line already is one),
//! - reach other files (ATTACH) or load code (extensions),
//! - create anything that lives only in this connection (TEMP objects: a restarted
//!   replica would not have them),
//! - change or read settings and state that belong to this node, not to the data
//!   (PRAGMAs other than a short list of introspection ones, `total_changes()`, file
//!   offsets and layout, pointers),
//! - touch lightraft's own bookkeeping (names starting with `_lightraft`).
//!
//! Schema changes are allowed, and noted: the state machine reopens its connection after
//! one, so that its in-memory schema is exactly what a restarted replica would load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Names that belong to lightraft; clients may not create or change objects so named.
pub const RESERVED_PREFIX: &str = "_lightraft";

/// PRAGMAs that look at the schema (their argument names a table or index).
const INTROSPECTION: [&str; 10] = [
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

/// PRAGMAs without an argument whose answer depends only on the replicated data or on
/// the lightraft binary, never on this node's files, memory or history.
///
/// `data_version` is the one subtle entry: FTS5 asks for it on every query, so it must
/// pass. It counts commits by *other* connections; the state machine's connection is the
/// only writer, so there it never moves, on a replica that ran for a year or one that has
/// just restarted (the randomized differential test checks exactly that).
const CONSTANT: [&str; 13] = [
    "data_version",
    "application_id",
    "user_version",
    "schema_version",
    "encoding",
    "page_size",
    "auto_vacuum",
    "foreign_keys",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
];

/// Functions whose result differs between replicas or processes.
const NODE_FUNCTIONS: [&str; 4] = ["load_extension", "total_changes", "sqlite_offset", "fts3_tokenizer"];

/// Whether `name` is reserved for lightraft.
pub fn is_reserved(name: &str) -> bool {
    // Bytes, not a str slice: the prefix may end inside a multi-byte character.
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

/// SQLite's statistics tables.
fn is_statistics(name: &str) -> bool {
    name.as_bytes().get(..11).is_some_and(|head| head.eq_ignore_ascii_case(b"sqlite_stat"))
}

/// The authorizer's state: why it last refused, and whether the schema was touched.
#[derive(Debug, Default)]
pub struct Policy {
    /// Set while lightraft runs its own statements (transaction control, bookkeeping).
    internal: AtomicBool,
    /// The reason for the last refusal, for the client.
    refusal: Mutex<Option<String>>,
    /// A statement prepared since the last check creates, drops or alters schema objects
    /// or statistics.
    schema_touched: AtomicBool,
    /// The virtual tables of the schema (see `note_virtual_tables`).
    virtual_tables: Mutex<Vec<String>>,
    /// Whether there are any, so the common case takes no lock.
    has_virtual_tables: AtomicBool,
    /// A statement prepared since the last check uses one of them, or the TEMP database:
    /// either leaves state on the connection that a freshly opened one lacks.
    left_state: AtomicBool,
    /// An ANALYZE was prepared since the last check.
    analyzed: AtomicBool,
}

impl Policy {
    /// Runs lightraft's own statements unrefused.
    pub fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        self.internal.store(true, Ordering::Relaxed);
        let out = f();
        self.internal.store(false, Ordering::Relaxed);
        out
    }

    /// The reason for the last refusal, if any (and forgets it).
    pub fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether an ANALYZE was prepared since the last `take` (and forgets).
    pub fn take_analyzed(&self) -> bool {
        self.analyzed.swap(false, Ordering::Relaxed)
    }

    /// Whether a schema-changing statement was prepared since the last `take`.
    pub fn schema_touched(&self) -> bool {
        self.schema_touched.load(Ordering::Relaxed)
    }

    /// Whether a schema-changing statement was prepared since the last call (and forgets).
    pub fn take_schema_touched(&self) -> bool {
        self.schema_touched.swap(false, Ordering::Relaxed)
    }

    /// Tells the policy which tables are virtual, so it can note when a line uses one.
    pub fn note_virtual_tables(&self, names: impl IntoIterator<Item = String>) {
        let mut tables = self.virtual_tables.lock().unwrap_or_else(|e| e.into_inner());
        *tables = names.into_iter().collect();
        self.has_virtual_tables.store(!tables.is_empty(), Ordering::Relaxed);
    }

    /// Whether a statement prepared since the last call (which forgets) left state on the
    /// connection that a freshly opened one lacks: it used a virtual table (modules such
    /// as FTS5 keep caches and prepared statements between lines) or the TEMP database
    /// (which SQLite opens on first use and keeps open; ALTER TABLE and a read of
    /// `temp.sqlite_schema` open it). The state machine starts afresh after such a line.
    pub fn take_left_state(&self) -> bool {
        self.left_state.swap(false, Ordering::Relaxed)
    }

    fn note_use(&self, action: &AuthAction<'_>) {
        let table = match action {
            AuthAction::Read { table_name, .. }
            | AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name } => table_name,
            _ => return,
        };
        if !self.has_virtual_tables.load(Ordering::Relaxed) {
            return;
        }
        let tables = self.virtual_tables.lock().unwrap_or_else(|e| e.into_inner());
        if tables.iter().any(|name| name.eq_ignore_ascii_case(table)) {
            self.left_state.store(true, Ordering::Relaxed);
        }
    }

    fn refuse(&self, reason: String) -> Authorization {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        Authorization::Deny
    }

    /// The authorizer callback.
    pub fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if self.internal.load(Ordering::Relaxed) {
            return Authorization::Allow;
        }
        match self.judge(&ctx) {
            Ok(()) => {
                if touches_schema(&ctx.action) {
                    self.schema_touched.store(true, Ordering::Relaxed);
                }
                if matches!(ctx.action, AuthAction::Analyze { .. }) {
                    self.analyzed.store(true, Ordering::Relaxed);
                }
                self.note_use(&ctx.action);
                if ctx.database_name.is_some_and(|db| db.eq_ignore_ascii_case("temp")) {
                    self.left_state.store(true, Ordering::Relaxed);
                }
                Authorization::Allow
            }
            Err(reason) => self.refuse(reason),
        }
    }

    fn judge(&self, ctx: &AuthContext<'_>) -> Result<(), String> {
        let temp = ctx.database_name.is_some_and(|db| db.eq_ignore_ascii_case("temp"));
        match ctx.action {
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                Err("each line already runs as one transaction; BEGIN, COMMIT and SAVEPOINT are not supported".into())
            }
            AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                Err("ATTACH and DETACH are not supported: other database files are not replicated".into())
            }
            AuthAction::CreateTempIndex { .. }
            | AuthAction::CreateTempTable { .. }
            | AuthAction::CreateTempTrigger { .. }
            | AuthAction::CreateTempView { .. } => Err(temp_refusal()),
            AuthAction::CreateTable { .. }
            | AuthAction::CreateIndex { .. }
            | AuthAction::CreateTrigger { .. }
            | AuthAction::CreateView { .. }
            | AuthAction::CreateVtable { .. }
                if temp =>
            {
                Err(temp_refusal())
            }
            AuthAction::Pragma { pragma_name, pragma_value } => judge_pragma(pragma_name, pragma_value.is_some()),
            AuthAction::Function { function_name } => {
                if NODE_FUNCTIONS.iter().any(|f| f.eq_ignore_ascii_case(function_name)) {
                    Err(format!("{function_name}() is not supported: its result differs between replicas"))
                } else {
                    Ok(())
                }
            }
            // Statistics reach a long-running connection's query planner only when its schema
            // is reloaded, a restarted one's at once: plans (and so row order and step
            // counts) would differ. ANALYZE writes them, and the connection then reopens.
            AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name }
                if is_statistics(table_name) =>
            {
                Err(format!("{table_name} may change only through ANALYZE"))
            }
            AuthAction::Read { table_name: name, .. }
            | AuthAction::Insert { table_name: name }
            | AuthAction::Update { table_name: name, .. }
            | AuthAction::Delete { table_name: name }
            | AuthAction::CreateVtable { module_name: name, .. }
                if is_file_table(name) =>
            {
                Err(format!("{name} is not supported: it describes this node's file, not the replicated data"))
            }
            AuthAction::CreateTable { table_name: name }
            | AuthAction::CreateView { view_name: name }
            | AuthAction::CreateVtable { table_name: name, .. }
            | AuthAction::Insert { table_name: name }
            | AuthAction::Delete { table_name: name }
            | AuthAction::Update { table_name: name, .. }
            | AuthAction::DropTable { table_name: name }
            | AuthAction::DropView { view_name: name }
            | AuthAction::AlterTable { table_name: name, .. }
                if is_reserved(name) =>
            {
                Err(reserved_refusal(name))
            }
            AuthAction::CreateIndex { index_name, table_name }
            | AuthAction::CreateTrigger { trigger_name: index_name, table_name }
                if is_reserved(index_name) || is_reserved(table_name) =>
            {
                Err(reserved_refusal(if is_reserved(index_name) { index_name } else { table_name }))
            }
            _ => Ok(()),
        }
    }
}

/// The tables that show (and, for `sqlite_dbpage`, would write) this node's database
/// file page by page. The leader reads its pages for snapshots on a connection of its
/// own; a client's line must never reach them, on a replica or in a read.
fn is_file_table(name: &str) -> bool {
    ["dbstat", "sqlite_dbpage"].iter().any(|t| t.eq_ignore_ascii_case(name))
}

fn temp_refusal() -> String {
    "TEMP tables, views, triggers and indexes are not supported: they would exist only on this node's connection".into()
}

fn reserved_refusal(name: &str) -> String {
    format!("{name}: names starting with {RESERVED_PREFIX} belong to lightraft and cannot be created or changed")
}

fn judge_pragma(name: &str, has_argument: bool) -> Result<(), String> {
    let is = |list: &[&str]| list.iter().any(|p| p.eq_ignore_ascii_case(name));
    if is(&INTROSPECTION) || (!has_argument && is(&CONSTANT)) {
        Ok(())
    } else if has_argument {
        Err(format!("PRAGMA {name} with a value is not supported: settings are not replicated"))
    } else {
        Err(format!("PRAGMA {name} is not supported: its result depends on this node, not on the replicated data"))
    }
}

/// Actions after which a long-running connection's in-memory schema could differ from
/// one freshly loaded from the file (object order, loaded statistics).
fn touches_schema(action: &AuthAction<'_>) -> bool {
    matches!(
        action,
        AuthAction::CreateIndex { .. }
            | AuthAction::CreateTable { .. }
            | AuthAction::CreateTrigger { .. }
            | AuthAction::CreateView { .. }
            | AuthAction::CreateVtable { .. }
            | AuthAction::DropIndex { .. }
            | AuthAction::DropTable { .. }
            | AuthAction::DropTrigger { .. }
            | AuthAction::DropView { .. }
            | AuthAction::DropVtable { .. }
            | AuthAction::AlterTable { .. }
            | AuthAction::Analyze { .. }
            | AuthAction::Reindex { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_are_matched_without_regard_to_case() {
        assert!(is_reserved("_lightraft_applied"));
        assert!(is_reserved("_LightRaft_x"));
        assert!(!is_reserved("lightraft"));
        assert!(!is_reserved("_light"));
        assert!(!is_reserved("é_lightraft"));
        assert!(!is_reserved("_lightrafé"), "a prefix ending inside a character is no panic");
    }
}
