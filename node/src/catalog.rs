//! The shell's catalog commands, as in the sqlite3 shell: `.tables`, `.schema`,
//! `.indexes` and `.dump`. Each reads `sqlite_schema` (and for `.dump`, the rows) at the
//! session's consistency, and shows SQL or names as text; JSON mode gets the same as
//! one JSON line.

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
    let Some(widest) = names.iter().map(|n| crate::format::escape(n).chars().count()).max() else {
        return String::new();
    };
    let per_line = 80 / (widest + 2);
    if per_line < 2 {
        // One per line needs no padding (and a very long name pads nothing else).
        return names.iter().map(|n| format!("{}\n", crate::format::escape(n))).collect();
    }
    let lines = names.len().div_ceil(per_line);
    let mut out = String::new();
    for line in 0..lines {
        let cells: Vec<String> = (0..per_line)
            .filter_map(|col| names.get(col * lines + line))
            .map(|n| format!("{:<widest$}", crate::format::escape(n)))
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
            .map(|sql| match ended(sql) {
                Some(statement) if plain(sql) => statement + "\n",
                _ => format!("-- (not runnable as shown) {}\n", crate::format::escape(sql)),
            })
            .collect(),
        Err(reply) => render(state, &reply, u64::MAX),
    }
}

/// One object of the schema.
#[derive(PartialEq)]
struct Object {
    kind: String,
    name: String,
    sql: String,
    /// A virtual table's shadow table: its rows come back through the virtual table.
    shadow: bool,
    /// A table whose rowid is not one of its columns: written out, so rowids survive.
    rowid: Option<&'static str>,
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
/// and the columns of every table, generated columns left out (they cannot be written).
pub(crate) fn dump_catalog(table: Option<&str>) -> [String; 2] {
    [
        format!(
            "SELECT s.type, s.name, s.sql, coalesce(t.type, ''), coalesce(t.wr, 0) FROM sqlite_schema s \
             LEFT JOIN pragma_table_list t ON t.schema = 'main' AND t.name = s.name \
             WHERE s.sql IS NOT NULL AND {}{} ORDER BY s.rowid",
            user_objects("s.name"),
            matching("s.tbl_name", table)
        ),
        "SELECT s.name, c.name, c.type, c.pk FROM sqlite_schema s JOIN pragma_table_xinfo(s.name) c \
         WHERE s.type = 'table' AND c.hidden = 0 ORDER BY s.rowid, c.cid"
            .to_string(),
    ]
}

/// The read of each table's rows that the catalog calls for, in the catalog's order: the
/// rowid first where it must be written out, then the columns that can be written.
pub(crate) fn dump_reads(catalog: &[StatementResult]) -> Vec<String> {
    let (objects, columns) = catalog_of(catalog);
    objects
        .iter()
        .filter(|o| o.kind == "table" && !o.shadow)
        .map(|t| {
            let names = t.rowid.into_iter().map(String::from).chain(columns_of(&columns, &t.name).map(ident));
            format!("SELECT {} FROM {}", names.collect::<Vec<_>>().join(", "), ident(&t.name))
        })
        .collect()
}

/// A table's (column, type, pk) rows of the catalog read.
type Column = (String, String, String, i64);

fn columns_of<'a>(columns: &'a [Column], table: &'a str) -> impl Iterator<Item = &'a str> {
    columns.iter().filter(move |c| c.0 == table).map(|c| c.1.as_str())
}

/// The objects and columns of the catalog read.
fn catalog_of(results: &[StatementResult]) -> (Vec<Object>, Vec<Column>) {
    let rows = |i: usize| match results.get(i) {
        Some(StatementResult::Rows { rows, .. }) => rows.as_slice(),
        _ => &[],
    };
    let text = |v: Option<&Value>| v.map_or(String::new(), Value::display);
    let int = |v: Option<&Value>| match v {
        Some(Value::Integer(i)) => *i,
        _ => 0,
    };
    let columns: Vec<Column> =
        rows(1).iter().map(|r| (text(r.first()), text(r.get(1)), text(r.get(2)), int(r.get(3)))).collect();
    let objects = rows(0)
        .iter()
        .map(|r| {
            let (kind, name, sql, list_type) = (text(r.first()), text(r.get(1)), text(r.get(2)), text(r.get(3)));
            let rowid = if kind != "table" || int(r.get(4)) == 1 {
                None // not a table, or WITHOUT ROWID
            } else if list_type == "virtual" {
                // Full-text tables keep documents by rowid; other modules make it a column.
                sql.to_ascii_lowercase().contains(" fts").then_some("rowid")
            } else {
                rowid_to_write(&columns, &name)
            };
            Object { kind, name, sql, shadow: list_type == "shadow", rowid }
        })
        .collect();
    (objects, columns)
}

/// A name for an ordinary table's rowid, unless a column already holds it (an INTEGER
/// PRIMARY KEY) or every name for it is taken by a column.
fn rowid_to_write(columns: &[Column], table: &str) -> Option<&'static str> {
    let own: Vec<&Column> = columns.iter().filter(|c| c.0 == table).collect();
    let keys: Vec<&&Column> = own.iter().filter(|c| c.3 > 0).collect();
    if let [key] = keys.as_slice() {
        if key.2.eq_ignore_ascii_case("integer") {
            return None;
        }
    }
    ["rowid", "_rowid_", "oid"].into_iter().find(|alias| !own.iter().any(|c| c.1.eq_ignore_ascii_case(alias)))
}

/// The dump: the catalog's objects, and `data`, the results of [`dump_reads`]. Each
/// table's CREATE and its rows as INSERTs, then indexes, views and triggers (after the
/// rows, so no trigger fires while they are replayed).
///
/// Replaying it must run exactly these statements, whatever the data holds, so every
/// statement is made to stand alone:
/// - a value is one line: text with a line break or any other control or invisible
///   character is written as its bytes (`CAST(X'..' AS TEXT)`), so nothing in a value
///   can end a line, hide from a reader, or be a line that a shell acts on;
/// - a stored CREATE statement is ended so that the `;` is outside any comment or
///   string it ends in, and only there (as sqlite3's own `.dump` does); one holding
///   control characters, and names holding them, are refused rather than written;
/// - no statement is longer than a session takes (`max_statement`).
pub(crate) fn dump_text(
    catalog: &[StatementResult],
    data: &[StatementResult],
    limits: DumpLimits,
) -> Result<String, String> {
    let (objects, _) = catalog_of(catalog);
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
        let Some(StatementResult::Rows { columns, rows }) = data.next() else { continue };
        let names = columns.iter().map(|c| safe_ident(c, &object.name)).collect::<Result<Vec<_>, _>>()?;
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

/// An object's stored CREATE statement, ended so that it is one statement (see
/// [`ended`]); refused if it holds control or invisible characters.
fn standalone(object: &Object) -> Result<String, String> {
    let named = || format!("{} {}", object.kind, crate::format::escape(&object.name));
    if !plain(&object.sql) {
        return Err(format!(
            "the CREATE statement of {} holds control or invisible characters, which a dump cannot write safely; use lightraft backup",
            named()
        ));
    }
    ended(&object.sql).ok_or_else(|| format!("the CREATE statement of {} cannot be ended as one statement", named()))
}

/// Whether stored SQL holds no control or invisible character but line breaks and tabs.
fn plain(sql: &str) -> bool {
    !sql.chars().any(|c| c != '\n' && c != '\t' && crate::format::hurts(c))
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
