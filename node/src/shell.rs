//! The shell's catalog commands, as in the sqlite3 shell: `.tables`, `.schema`,
//! `.indexes` and `.dump`. Each reads `sqlite_schema` (and for `.dump`, the rows) at the
//! session's consistency, and shows SQL or names as text; JSON mode gets the same as
//! one JSON line.

use std::fmt::Write as _;

use sqlite_sm::{StatementResult, Value, APPLIED_TABLE};

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
    let per_line = (80 / (widest + 2)).max(1);
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
async fn names(sql: String, state: &State, config: &SessionConfig) -> String {
    match collect(sql, state, config).await {
        Ok(results) if state.json() => render(state, &Reply::Results(results), u64::MAX),
        Ok(results) => in_columns(&first_column(&results)),
        Err(reply) => render(state, &reply, u64::MAX),
    }
}

/// `.tables [PATTERN]`: tables and views.
pub(crate) async fn tables(pattern: Option<&str>, state: &State, config: &SessionConfig) -> String {
    let sql = format!(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND {}{} \
         AND name NOT IN (SELECT name FROM pragma_table_list WHERE type = 'shadow') ORDER BY name",
        user_objects("name"),
        matching("name", pattern)
    );
    names(sql, state, config).await
}

/// `.indexes [TABLE]`: the indexes (of matching tables).
pub(crate) async fn indexes(table: Option<&str>, state: &State, config: &SessionConfig) -> String {
    let sql = format!(
        "SELECT name FROM sqlite_schema WHERE type = 'index' AND {}{} ORDER BY name",
        user_objects("name"),
        matching("tbl_name", table)
    );
    names(sql, state, config).await
}

/// `.schema [PATTERN]`: the CREATE statements of matching tables and what belongs to
/// them, in the order they were made, as SQL that can be run again.
pub(crate) async fn schema(pattern: Option<&str>, state: &State, config: &SessionConfig) -> String {
    let sql = format!(
        "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND {}{} ORDER BY rowid",
        user_objects("name"),
        matching("tbl_name", pattern)
    );
    match collect(sql, state, config).await {
        Ok(results) if state.json() => render(state, &Reply::Results(results), u64::MAX),
        Ok(results) => first_column(&results).iter().map(|sql| format!("{sql};\n")).collect(),
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
}

/// `.dump [TABLE]`: SQL that rebuilds the database (or the matching tables) in an empty
/// cluster or in sqlite3: each table's CREATE and its rows as INSERTs, then indexes,
/// views and triggers (after the rows, so no trigger fires while they are replayed).
/// The schema and every row are read in one read transaction, so the dump is one
/// consistent state; it is bounded by the result limit like any read.
pub(crate) async fn dump(table: Option<&str>, state: &State, config: &SessionConfig) -> String {
    let catalog = dump_catalog(table).join("; ");
    // Read the schema, then the schema again with every table's rows: if a change
    // committed in between, the two differ, and it is read once more.
    for _ in 0..3 {
        let first = match collect(catalog.clone(), state, config).await {
            Ok(results) => results,
            Err(reply) => return render(state, &reply, u64::MAX),
        };
        let reads = dump_reads(&first);
        let sql = std::iter::once(catalog.clone()).chain(reads).collect::<Vec<_>>().join("; ");
        let second = match collect(sql, state, config).await {
            Ok(results) => results,
            Err(reply) => return render(state, &reply, u64::MAX),
        };
        if second.len() < 2 || second[..2] != first[..] {
            continue;
        }
        let text = dump_text(&first, &second[2..]);
        return if state.json() { serde_json::json!({ "dump": text }).to_string() + "\n" } else { text };
    }
    error(state, ErrorCode::Unavailable, "the schema changed during every attempt to dump it; try again")
}

/// The two reads a dump starts with: the schema's objects (matching `table`, if given)
/// and the columns of every table, generated columns left out (they cannot be written).
pub(crate) fn dump_catalog(table: Option<&str>) -> [String; 2] {
    [
        format!(
            "SELECT s.type, s.name, s.sql, coalesce(t.type = 'shadow', 0) FROM sqlite_schema s \
             LEFT JOIN pragma_table_list t ON t.schema = 'main' AND t.name = s.name \
             WHERE s.sql IS NOT NULL AND {}{} ORDER BY s.rowid",
            user_objects("s.name"),
            matching("s.tbl_name", table)
        ),
        "SELECT s.name, c.name FROM sqlite_schema s JOIN pragma_table_xinfo(s.name) c \
         WHERE s.type = 'table' AND c.hidden = 0 ORDER BY s.rowid, c.cid"
            .to_string(),
    ]
}

/// The read of each table's rows that the catalog calls for, in the catalog's order.
pub(crate) fn dump_reads(catalog: &[StatementResult]) -> Vec<String> {
    let (objects, columns) = catalog_of(catalog);
    objects
        .iter()
        .filter(|o| o.kind == "table" && !o.shadow)
        .map(|t| {
            let names: Vec<String> = columns.iter().filter(|(of, _)| of == &t.name).map(|(_, c)| ident(c)).collect();
            format!("SELECT {} FROM {}", names.join(", "), ident(&t.name))
        })
        .collect()
}

/// The objects and (table, column) pairs of the catalog read.
fn catalog_of(results: &[StatementResult]) -> (Vec<Object>, Vec<(String, String)>) {
    let rows = |i: usize| match results.get(i) {
        Some(StatementResult::Rows { rows, .. }) => rows.as_slice(),
        _ => &[],
    };
    let text = |v: Option<&Value>| v.map_or(String::new(), Value::display);
    let objects = rows(0)
        .iter()
        .map(|r| Object {
            kind: text(r.first()),
            name: text(r.get(1)),
            sql: text(r.get(2)),
            shadow: matches!(r.get(3), Some(Value::Integer(1))),
        })
        .collect();
    let columns = rows(1).iter().map(|r| (text(r.first()), text(r.get(1)))).collect();
    (objects, columns)
}

/// The dump: the catalog's objects, and `data`, the results of [`dump_reads`].
pub(crate) fn dump_text(catalog: &[StatementResult], data: &[StatementResult]) -> String {
    let (objects, _) = catalog_of(catalog);
    let mut out = String::from("-- lightraft .dump: run it in an empty cluster (nc) or in sqlite3\n");
    let mut data = data.iter();
    for object in objects.iter().filter(|o| o.kind == "table" && !o.shadow) {
        let _ = writeln!(out, "{};", object.sql);
        if let Some(StatementResult::Rows { columns, rows }) = data.next() {
            let names: Vec<String> = columns.iter().map(|c| ident(c)).collect();
            for row in rows {
                let values: Vec<String> = row.iter().map(sql_value).collect();
                let _ = writeln!(
                    out,
                    "INSERT INTO {}({}) VALUES({});",
                    ident(&object.name),
                    names.join(","),
                    values.join(",")
                );
            }
        }
    }
    for kind in ["index", "view", "trigger"] {
        for object in objects.iter().filter(|o| o.kind == kind) {
            let _ = writeln!(out, "{};", object.sql);
        }
    }
    out
}

/// A value as an SQL literal that reads back as the same value.
fn sql_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        // Rust's shortest form that reads back as the same double; SQLite has no literal
        // for an infinity but reads 1e999 as one.
        Value::Real(f) if f.is_infinite() => if *f > 0.0 { "1e999" } else { "-1e999" }.into(),
        Value::Real(f) => format!("{f:?}"),
        // A NUL byte cannot stand in an SQL string literal; its bytes can.
        Value::Text(t) if t.contains('\0') => format!("CAST(X'{}' AS TEXT)", hex(t.as_bytes())),
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
