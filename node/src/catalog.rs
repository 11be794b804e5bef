//! The shell's catalog commands, as in the sqlite3 shell: `.tables`, `.schema`,
//! `.indexes` and `.dump`. Each reads `sqlite_schema` (and for `.dump`, the rows) at the
//! session's consistency, and shows SQL or names as text; JSON mode gets the same as
//! one JSON line.

use std::collections::HashMap;

use sqlite_sm::snapshot::hex;
use sqlite_sm::text::Ending;
use sqlite_sm::{StatementResult, Value, APPLIED_TABLE};
use tokio::sync::OwnedSemaphorePermit;

use crate::protocol::{ErrorCode, Reply};
use crate::session::{collect, error, render, SessionConfig, State};

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Leaves out what SQLite and lightraft keep for themselves: no user made it, and none
/// may change it.
fn user_objects(name: &str) -> String {
    format!("{name} NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND {name} <> {}", literal(APPLIED_TABLE))
}

/// `AND column LIKE pattern`, if a pattern was given.
fn matching(column: &str, pattern: Option<&str>) -> String {
    pattern.map_or(String::new(), |p| format!(" AND {column} LIKE {}", literal(p)))
}

/// The text values of the first column of the first result.
fn first_column(results: &[StatementResult]) -> Vec<String> {
    match results.first() {
        Some(StatementResult::Rows { rows, .. }) => rows.iter().filter_map(|r| r.first().map(Value::display)).collect(),
        _ => Vec::new(),
    }
}

/// Names laid out in columns, down then across, as sqlite3 shows `.tables`.
fn in_columns(names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| crate::format::escape(n).into_owned()).collect();
    let Some(widest) = names.iter().map(|n| crate::format::width(n)).max() else {
        return String::new();
    };
    let per_line = 80 / (widest + 2);
    if per_line < 2 {
        // One per line needs no padding (and a very long name pads nothing else).
        return names.iter().map(|n| format!("{n}\n")).collect();
    }
    let lines = names.len().div_ceil(per_line);
    let mut out = String::new();
    for line in 0..lines {
        let cells: Vec<String> = (0..per_line)
            .filter_map(|col| names.get(col * lines + line))
            .map(|n| format!("{n}{}", " ".repeat(widest - crate::format::width(n))))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A catalog read shown as names in columns (or its rows, in JSON mode).
async fn names(sql: String, state: &State, config: &SessionConfig, held: &mut Vec<OwnedSemaphorePermit>) -> String {
    match collect(sql, state, config, held).await {
        Ok(results) if state.json() => render(state, &Reply::Results(results), u64::MAX),
        Ok(results) => in_columns(&first_column(&results)),
        Err(reply) => render(state, &reply, u64::MAX),
    }
}

/// `.tables [PATTERN]`: tables and views.
pub(crate) async fn tables(
    pattern: Option<&str>,
    state: &State,
    config: &SessionConfig,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> String {
    let sql = format!(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND {}{} \
         AND name NOT IN (SELECT name FROM pragma_table_list WHERE type = 'shadow') ORDER BY name",
        user_objects("name"),
        matching("name", pattern)
    );
    names(sql, state, config, held).await
}

/// `.indexes [TABLE]`: the indexes (of matching tables).
pub(crate) async fn indexes(
    table: Option<&str>,
    state: &State,
    config: &SessionConfig,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> String {
    let sql = format!(
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND {}{} ORDER BY name",
        user_objects("name"),
        matching("tbl_name", table)
    );
    names(sql, state, config, held).await
}

/// `.schema [PATTERN]`: the CREATE statements of matching tables and what belongs to
/// them, in the order they were made, as SQL that can be run again.
pub(crate) async fn schema(
    pattern: Option<&str>,
    state: &State,
    config: &SessionConfig,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> String {
    let sql = format!(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND {}{} ORDER BY rowid",
        user_objects("name"),
        matching("tbl_name", pattern)
    );
    match collect(sql, state, config, held).await {
        Ok(results) if state.json() => render(state, &Reply::Results(results), u64::MAX),
        // Each as one runnable statement; one that could hurt the terminal, escaped.
        Ok(results) => first_column(&results)
            .iter()
            .map(|sql| match runnable(sql) {
                Ok(statement) => statement + "\n",
                Err(why) => format!("-- this statement {why}: {}\n", crate::format::escape(sql)),
            })
            .collect(),
        Err(reply) => render(state, &reply, u64::MAX),
    }
}

/// One object of the schema.
struct Object {
    kind: String,
    name: String,
    sql: String,
    /// A virtual table's shadow table: its rows come back through the virtual table.
    shadow: bool,
    /// Whether its rows can be written back (not a view-like virtual table).
    rows: bool,
    /// The names its rows are read and written with.
    written: Vec<String>,
}

impl Object {
    fn dumps_rows(&self) -> bool {
        self.kind == "table" && !self.shadow && self.rows
    }
}

/// What bounds a dump: no statement longer than a session takes as one line or statement
/// (`maxLineBytes`), and, in a session, no more text than a result may hold.
#[derive(Clone, Copy)]
pub(crate) struct DumpLimits {
    pub max_statement: usize,
    pub max_bytes: u64,
}

/// `.dump [TABLE]`: SQL that rebuilds the database (or the matching tables) in an empty
/// cluster or in sqlite3 (see [`dump_text`]). The schema and every row are read in one
/// read transaction, so the dump is one consistent state; it is bounded by the result
/// limit like any read.
pub(crate) async fn dump(
    table: Option<&str>,
    state: &State,
    config: &SessionConfig,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> String {
    let catalog = dump_catalog(table).join("; ");
    let limits = DumpLimits { max_statement: config.max_line, max_bytes: config.max_result_bytes };
    // Read the schema, then the schema again with every table's rows: if a change
    // committed in between, the two differ, and it is read once more.
    for _ in 0..3 {
        // A discarded attempt's reads give their share of the answer budget back.
        held.clear();
        let first = match collect(catalog.clone(), state, config, held).await {
            Ok(results) => results,
            Err(reply) => return render(state, &reply, u64::MAX),
        };
        let reads = dump_reads(&first);
        let sql = std::iter::once(catalog.clone()).chain(reads).collect::<Vec<_>>().join("; ");
        let second = match collect(sql, state, config, held).await {
            Ok(results) => results,
            Err(reply) => return render(state, &reply, u64::MAX),
        };
        if second.len() < 2 || second[..2] != first[..] {
            continue;
        }
        return match dump_text(&first, &second[2..], limits) {
            Ok(text) if state.json() => serde_json::json!({ "dump": text }).to_string() + "\n",
            Ok(text) => text,
            Err(message) => error(state, ErrorCode::SqlError, &message),
        };
    }
    error(state, ErrorCode::Unavailable, "the schema changed during every attempt to dump it; try again")
}

/// The two reads a dump starts with: the schema's objects (matching `table`, if given)
/// and every table's columns, hidden and generated ones included (they are never written,
/// but their names decide which name reaches the rowid).
pub(crate) fn dump_catalog(table: Option<&str>) -> [String; 2] {
    [
        format!(
            "SELECT s.type, s.name, s.sql, coalesce(t.type, ''), coalesce(t.wr, 0) FROM sqlite_schema s \
             LEFT JOIN pragma_table_list t ON t.schema = 'main' AND t.name = s.name \
             WHERE s.sql IS NOT NULL AND {}{} ORDER BY s.rowid",
            user_objects("s.name"),
            matching("s.tbl_name", table)
        ),
        "SELECT s.name, c.name, c.type, c.pk, c.hidden FROM sqlite_schema s JOIN pragma_table_xinfo(s.name) c \
         WHERE s.type = 'table' ORDER BY s.rowid, c.cid"
            .to_string(),
    ]
}

/// The read of each table's rows that the catalog calls for, in the catalog's order.
pub(crate) fn dump_reads(catalog: &[StatementResult]) -> Vec<String> {
    catalog_of(catalog)
        .iter()
        .filter(|o| o.dumps_rows())
        .map(|t| {
            let names: Vec<String> = t.written.iter().map(|c| ident(c)).collect();
            format!("SELECT {} FROM {}", names.join(", "), ident(&t.name))
        })
        .collect()
}

/// A column of the catalog read.
struct Column {
    name: String,
    kind: String,
    pk: i64,
    hidden: i64,
}

/// The objects of the catalog read, each table with the columns its rows are written
/// with: the rowid first where it must be (under a name no column takes), then every
/// column that can be written.
fn catalog_of(results: &[StatementResult]) -> Vec<Object> {
    let rows = |i: usize| match results.get(i) {
        Some(StatementResult::Rows { rows, .. }) => rows.as_slice(),
        _ => &[],
    };
    let text = |v: Option<&Value>| v.map_or(String::new(), Value::display);
    let int = |v: Option<&Value>| match v {
        Some(Value::Integer(i)) => *i,
        _ => 0,
    };
    // Grouped once: a schema of many tables costs linear time.
    let mut columns: HashMap<String, Vec<Column>> = HashMap::new();
    for r in rows(1) {
        let column = Column { name: text(r.get(1)), kind: text(r.get(2)), pk: int(r.get(3)), hidden: int(r.get(4)) };
        columns.entry(text(r.first())).or_default().push(column);
    }
    rows(0)
        .iter()
        .map(|r| {
            let (kind, name, sql, list_type) = (text(r.first()), text(r.get(1)), text(r.get(2)), text(r.get(3)));
            let own = columns.get(&name).map_or(&[][..], Vec::as_slice);
            let module = module_of(&sql);
            let rowid = if kind != "table" || int(r.get(4)) == 1 {
                None // not a table, or WITHOUT ROWID
            } else if list_type == "virtual" {
                // Full-text tables keep documents by rowid; other modules make it a column.
                module.as_deref().is_some_and(|m| m.starts_with("fts")).then_some("rowid")
            } else {
                rowid_to_write(own)
            };
            let written =
                rowid.map(String::from).into_iter().chain(own.iter().filter(|c| c.hidden == 0).map(|c| c.name.clone()));
            Object {
                kind,
                name,
                sql,
                shadow: list_type == "shadow",
                // Only modules whose rows can be written back: full-text and R-tree tables
                // (others, like fts5vocab, are views of another table).
                rows: list_type != "virtual"
                    || module.as_deref().is_some_and(|m| m.starts_with("fts") || m.starts_with("rtree")),
                written: written.collect(),
            }
        })
        .collect()
}

/// A virtual table's module, from `CREATE VIRTUAL TABLE name USING module(...)`.
fn module_of(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    let mut words = lower.split(|c: char| c.is_whitespace() || c == '(');
    words.by_ref().find(|w| *w == "using")?;
    words.find(|w| !w.is_empty()).map(String::from)
}

/// A name for an ordinary table's rowid, unless a column already holds it (an INTEGER
/// PRIMARY KEY) or a column, hidden or generated ones included, takes every name for it.
fn rowid_to_write(own: &[Column]) -> Option<&'static str> {
    if let [key] = own.iter().filter(|c| c.pk > 0).collect::<Vec<_>>().as_slice() {
        if key.kind.eq_ignore_ascii_case("integer") {
            return None;
        }
    }
    ["rowid", "_rowid_", "oid"].into_iter().find(|alias| !own.iter().any(|c| c.name.eq_ignore_ascii_case(alias)))
}

/// The dump: the catalog's objects, and `data`, the results of [`dump_reads`]. Each
/// table's CREATE and its rows as INSERTs, then indexes, views and triggers (after the
/// rows, so no trigger fires while they are replayed), then a line that says it is
/// whole.
///
/// Replaying it must run exactly these statements, whatever the data holds, through a
/// session or the sqlite3 shell, so every statement is made to stand alone:
/// - a value is one line: text with a line break or any other control or invisible
///   character is written as its bytes (`CAST(X'..' AS TEXT)`), so nothing in a value
///   can end a line, hide from a reader, or be a line that a shell acts on;
/// - a stored CREATE statement is ended so that the `;` is outside any comment or
///   string it ends in, and only there (as sqlite3's own `.dump` does); one that spans
///   lines starts with `CREATE` alone on its first line, which SQLite finds cut short,
///   so a session reads on to the `;` (SQLite writes the same text back when it runs);
/// - what a shell would act on is refused rather than written: names and statements
///   holding control characters, and a stored statement with a line that the sqlite3
///   shell takes as the end of a statement (`go`, `/`) or as a command (`.`, `#`);
/// - no statement is longer than a session takes (`max_statement`).
pub(crate) fn dump_text(
    catalog: &[StatementResult],
    data: &[StatementResult],
    limits: DumpLimits,
) -> Result<String, String> {
    let objects = catalog_of(catalog);
    let mut out = String::from("-- lightraft .dump: run it in an empty cluster (nc) or in sqlite3\n");
    let mut push = |statement: String| -> Result<(), String> {
        if statement.len() > limits.max_statement {
            let start: String = statement.chars().take(60).collect();
            return Err(format!(
                "a statement of the dump would be {} bytes, more than a session takes ({}): {}...; use lightraft backup for a SQLite file",
                statement.len(),
                limits.max_statement,
                crate::format::escape(&start)
            ));
        }
        if (out.len() + statement.len()) as u64 > limits.max_bytes {
            return Err(format!(
                "the dump would be larger than the result limit ({} bytes); use lightraft backup --sql",
                limits.max_bytes
            ));
        }
        out.push_str(&statement);
        out.push('\n');
        Ok(())
    };
    let mut data = data.iter();
    for object in objects.iter().filter(|o| o.kind == "table" && !o.shadow) {
        push(standalone(object)?)?;
        if !object.dumps_rows() {
            continue;
        }
        let Some(StatementResult::Rows { rows, .. }) = data.next() else { continue };
        // The names it was read with: a result names any rowid alias `rowid`.
        let names = object.written.iter().map(|c| safe_ident(c, &object.name)).collect::<Result<Vec<_>, _>>()?;
        let into = format!("INSERT INTO {}({}) VALUES(", safe_ident(&object.name, &object.name)?, names.join(","));
        for row in rows {
            let values: Vec<String> = row.iter().map(sql_value).collect();
            push(format!("{into}{});", values.join(",")))?;
        }
    }
    for kind in ["index", "view", "trigger"] {
        for object in objects.iter().filter(|o| o.kind == kind) {
            push(standalone(object)?)?;
        }
    }
    push("-- end of the dump".to_string())?;
    Ok(out)
}

/// `name` as an identifier, if it holds no control or invisible character.
fn safe_ident(name: &str, table: &str) -> Result<String, String> {
    if name.chars().any(crate::format::hurts) {
        return Err(format!(
            "table {} has a name with control or invisible characters, which a dump cannot write safely; use lightraft backup",
            crate::format::escape(table)
        ));
    }
    Ok(ident(name))
}

/// An object's stored CREATE statement as a dump writes it (see [`runnable`]).
fn standalone(object: &Object) -> Result<String, String> {
    runnable(&object.sql)
        .map_err(|why| format!("the CREATE statement of {} {} {why}", object.kind, crate::format::escape(&object.name)))
}

/// Stored SQL as one statement that a session or the sqlite3 shell runs whole: ended by
/// [`ended`], and, if it spans lines, with `CREATE` alone on its first line (a session
/// runs a whole first line at once; `CREATE` alone is not whole). Refused if a shell
/// could act on any part of it.
fn runnable(sql: &str) -> Result<String, String> {
    if sql.chars().any(|c| c != '\n' && c != '\t' && crate::format::hurts(c)) {
        return Err(
            "holds control or invisible characters, which a dump cannot write safely; use lightraft backup".into()
        );
    }
    if sql.lines().skip(1).any(shell_acts_on) {
        return Err(
            "has a line the sqlite3 shell would take as a command or as the end of a statement; use lightraft backup"
                .into(),
        );
    }
    let sql = match sql.strip_prefix("CREATE ") {
        Some(rest) if sql.contains('\n') => format!("CREATE\n{rest}"),
        _ => sql.to_string(),
    };
    ended(&sql).ok_or_else(|| "cannot be ended as one statement".into())
}

/// Whether the sqlite3 shell acts on this line inside a statement: `go` or `/` alone
/// (then white space or comments) ends the statement, and a line after that which starts
/// with `.` or `#` is a command or a comment to it.
fn shell_acts_on(line: &str) -> bool {
    let line = line.trim_start_matches([' ', '\t']);
    let terminator =
        line.strip_prefix('/').or_else(|| line.get(..2).filter(|go| go.eq_ignore_ascii_case("go")).map(|_| &line[2..]));
    line.starts_with('.') || line.starts_with('#') || terminator.is_some_and(sqlite_sm::text::is_blank)
}

/// `sql` with the first of `;`, `*/;` and a line break then `;` after which it ends
/// exactly once, at its end: a CREATE stored with a comment or string left open at its
/// end (SQLite keeps what follows a view's or index's last token) must not swallow the
/// `;`, nor let what a later line holds run on its own.
fn ended(sql: &str) -> Option<String> {
    [";", "*/;", "\n;"].iter().map(|end| format!("{sql}{end}")).find(|sql| ends_once(sql))
}

/// Whether `sql` is one statement: complete at its end, and at no `;` before.
fn ends_once(sql: &str) -> bool {
    let mut ending = Ending::new();
    let mut rest = sql;
    while let Some(at) = rest.find(';') {
        ending.feed(&rest[..=at]);
        rest = &rest[at + 1..];
        if ending.is_complete() {
            return rest.trim().is_empty();
        }
    }
    false
}

/// A value as an SQL literal that reads back as the same value, on one line.
fn sql_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        // Rust's shortest form that reads back as the same double; SQLite has no literal
        // for an infinity but reads 1e999 as one.
        Value::Real(f) if f.is_infinite() => if *f > 0.0 { "1e999" } else { "-1e999" }.into(),
        Value::Real(f) => format!("{f:?}"),
        // Line breaks, NUL and other control or invisible characters: as bytes.
        Value::Text(t) if t.chars().any(crate::format::hurts) => format!("CAST(X'{}' AS TEXT)", hex(t.as_bytes())),
        Value::Text(t) => literal(t),
        Value::Blob(b) => format!("X'{}'", hex(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_literals_that_read_back_the_same() {
        assert_eq!(sql_value(&Value::Text("it's".into())), "'it''s'");
        assert_eq!(sql_value(&Value::Text("a\0b".into())), "CAST(X'610062' AS TEXT)");
        assert_eq!(sql_value(&Value::Text("a\nb".into())), "CAST(X'610a62' AS TEXT)");
        assert_eq!(sql_value(&Value::Real(0.1)), "0.1");
        assert_eq!(sql_value(&Value::Real(1e300)), "1e300");
        assert_eq!(sql_value(&Value::Real(f64::NEG_INFINITY)), "-1e999");
        assert_eq!(sql_value(&Value::Blob(vec![0, 255])), "X'00ff'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn names_fill_columns_down_then_across() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(in_columns(&names), "a  b  c\n");
        assert_eq!(in_columns(&[]), "");
    }
}
