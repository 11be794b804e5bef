//! How replies look to a person (`.mode table`, `box`, `csv`, `line`) and to a script
//! (`.mode json`).
//!
//! What a person's terminal shows cannot hurt them: control characters in values, column
//! names and error messages (which could move the cursor, clear the screen or break a
//! table's lines) and the bidirectional overrides (which reorder what follows) are shown
//! as escapes, and columns are padded by display width, so wide characters (CJK, emoji)
//! keep a table aligned. JSON and CSV carry the values exactly.

use std::borrow::Cow;

use sqlite_sm::{results_to_json, Output, StatementResult, Value};
use unicode_width::UnicodeWidthStr;

use crate::protocol::{ClusterReport, ErrorCode, Reply, StatusReport};

/// ANSI red, as the original printed its errors.
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// How a session shows results: `.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Aligned ASCII tables (the default).
    Table,
    /// Aligned tables drawn with box characters.
    Box,
    /// Comma-separated values (RFC 4180).
    Csv,
    /// One `column = value` line per value, a blank line between rows.
    Line,
    /// One JSON line per request.
    Json,
}

impl Mode {
    /// The mode named `name`, as `.mode` takes it.
    pub fn parse(name: &str) -> Option<Mode> {
        Some(match name {
            "table" => Mode::Table,
            "box" => Mode::Box,
            "csv" => Mode::Csv,
            "line" => Mode::Line,
            "json" => Mode::Json,
            _ => return None,
        })
    }

    /// Its name, as `.mode` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Table => "table",
            Mode::Box => "box",
            Mode::Csv => "csv",
            Mode::Line => "line",
            Mode::Json => "json",
        }
    }
}

/// `.mode` and `.headers` together: how rows look as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub mode: Mode,
    /// Show the column names (tables, boxes and CSV; `line` always names each value).
    pub headers: bool,
}

impl Default for Style {
    fn default() -> Style {
        Style { mode: Mode::Table, headers: true }
    }
}

/// A reply as aligned ASCII tables and `N rows affected` lines (the default style).
pub fn table(reply: &Reply, max_bytes: u64) -> String {
    text(reply, Style::default(), max_bytes)
}

/// A reply as text in `style` (any mode but JSON). Every cell of a table is padded to
/// its column's widest, so one wide cell widens every row: a table whose padded size
/// would exceed `max_bytes` is refused rather than built.
pub fn text(reply: &Reply, style: Style, max_bytes: u64) -> String {
    let results = match reply {
        Reply::Error { code, message } => return error_table(*code, message),
        Reply::Results(results) => results,
    };
    let mut out = String::new();
    for result in results {
        match result {
            StatementResult::Rows { columns, rows } => {
                // The cells first (at most a few times the result, which is limited), then
                // the exact size of what they become: padding and repeated names can make
                // that far larger, so it is refused before it is built.
                let (columns, cells): (Vec<String>, Vec<Vec<String>>) = if style.mode == Mode::Csv {
                    let cells = rows.iter().map(|r| r.iter().map(csv_field).collect()).collect();
                    (columns.iter().map(|c| csv_text(&escape(c))).collect(), cells)
                } else {
                    let cells = rows.iter().map(|r| r.iter().map(|v| escape(&v.display()).into_owned()).collect());
                    (columns.iter().map(|c| escape(c).into_owned()).collect(), cells.collect())
                };
                let size = match style.mode {
                    Mode::Csv => csv_size(&columns, &cells, style.headers),
                    Mode::Line => line_size(&columns, &cells),
                    Mode::Box => table_size(&columns, &cells, style.headers, &BOX),
                    _ => table_size(&columns, &cells, style.headers, &ASCII),
                };
                if size > max_bytes {
                    let message = format!(
                        "the result would be {size} bytes as shown in {} mode (the limit is {max_bytes}); use .mode json, fewer rows or narrower columns",
                        style.mode.name()
                    );
                    out.push_str(&error_table(ErrorCode::SqlError, &message));
                    continue;
                }
                out.push_str(&match style.mode {
                    Mode::Csv => csv(&columns, &cells, style.headers),
                    Mode::Line => line_mode(&columns, &cells),
                    Mode::Box => drawn_table(&columns, &cells, style.headers, &BOX),
                    _ => drawn_table(&columns, &cells, style.headers, &ASCII),
                });
            }
            StatementResult::Changes { rows_affected, .. } => {
                let noun = if *rows_affected == 1 { "row" } else { "rows" };
                out.push_str(&format!("{rows_affected} {noun} affected\n"));
            }
        }
    }
    out
}

/// `text` as a terminal may show it: control characters and bidirectional overrides
/// become visible escapes (`\n`, `\t`, `\u{1b}`).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hurts) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hurts(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether a terminal showing `c` could be made to do something (control characters) or
/// to show what follows in another order (bidirectional marks and overrides).
pub(crate) fn hurts(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Bidirectional marks, embeddings, overrides and isolates.
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            // Invisible: zero-width spaces and joiners, word joiners, the BOM, tag
            // characters; and the line and paragraph separators.
            | '\u{180e}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}'
            | '\u{e0000}'..='\u{e007f}' | '\u{2028}' | '\u{2029}'
            // Interlinear annotations, which hide text.
            | '\u{fff9}'..='\u{fffb}')
}

/// How many columns of a terminal `text` takes.
pub(crate) fn width(text: &str) -> usize {
    UnicodeWidthStr::width(text)
}

/// Each column's display width: its widest cell (and name, with headers).
fn column_widths(columns: &[String], rows: &[Vec<String>], headers: bool) -> Vec<usize> {
    let mut widths: Vec<usize> = columns.iter().map(|c| if headers { width(c) } else { 0 }).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    widths
}

/// The exact bytes of [`drawn_table`]'s output.
fn table_size(columns: &[String], rows: &[Vec<String>], headers: bool, frame: &Frame) -> u64 {
    let widths = column_widths(columns, rows, headers);
    let (v, h) = (frame.vertical.len_utf8() as u64, frame.horizontal.len_utf8() as u64);
    let corner = frame.top[0].len_utf8() as u64;
    let rule = widths.iter().map(|&w| h * (w as u64 + 2) + corner).sum::<u64>() + corner + 1;
    let line = |cells: &[String]| -> u64 {
        widths.iter().zip(cells).map(|(&w, c)| v + 2 + (c.len() + w - width(c)) as u64).sum::<u64>() + v + 1
    };
    let lines: u64 = rows.iter().map(|r| line(r)).sum::<u64>() + if headers { line(columns) } else { 0 };
    lines + 3 * rule + 32
}

/// The exact bytes of [`line_mode`]'s output.
fn line_size(columns: &[String], rows: &[Vec<String>]) -> u64 {
    let name_width = columns.iter().map(|c| width(c)).max().unwrap_or(0);
    let names: u64 = columns.iter().map(|c| (name_width - width(c) + c.len() + 4) as u64).sum();
    rows.iter().map(|r| names + 1 + r.iter().map(|c| c.len() as u64).sum::<u64>()).sum()
}

/// The exact bytes of [`csv`]'s output.
fn csv_size(columns: &[String], rows: &[Vec<String>], headers: bool) -> u64 {
    let line = |cells: &[String]| cells.iter().map(|c| c.len() as u64 + 1).sum::<u64>() + 1;
    rows.iter().map(|r| line(r)).sum::<u64>() + if headers { line(columns) } else { 0 }
}

/// An error line, in red: `ERROR (code): message`.
pub fn error_table(code: ErrorCode, message: &str) -> String {
    format!("{RED}ERROR ({}): {}{RESET}\n", code.as_str(), escape(message))
}

/// The characters that draw a table.
struct Frame {
    /// Left, middle and right corners of the top, header and bottom rules.
    top: [char; 3],
    middle: [char; 3],
    bottom: [char; 3],
    horizontal: char,
    vertical: char,
}

const ASCII: Frame = Frame { top: ['+'; 3], middle: ['+'; 3], bottom: ['+'; 3], horizontal: '-', vertical: '|' };
const BOX: Frame =
    Frame {
        top: ['┌', '┬', '┐'], middle: ['├', '┼', '┤'], bottom: ['└', '┴', '┘'], horizontal: '─', vertical: '│'
    };

/// A table with a header row, columns padded to their widest cell.
pub fn ascii_table(columns: &[String], rows: &[Vec<String>]) -> String {
    drawn_table(columns, rows, true, &ASCII)
}

fn drawn_table(columns: &[String], rows: &[Vec<String>], headers: bool, frame: &Frame) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| if headers { width(c) } else { 0 }).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let rule = |[left, mid, right]: [char; 3]| -> String {
        let parts: Vec<String> = widths.iter().map(|w| frame.horizontal.to_string().repeat(w + 2)).collect();
        format!("{left}{}{right}\n", parts.join(&mid.to_string()))
    };
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (w, cell) in widths.iter().zip(cells) {
            let pad = w.saturating_sub(width(cell));
            s.push_str(&format!("{} {cell}{} ", frame.vertical, " ".repeat(pad)));
        }
        format!("{s}{}\n", frame.vertical)
    };
    let mut out = rule(frame.top);
    if headers {
        out.push_str(&line(columns));
        if !rows.is_empty() {
            out.push_str(&rule(frame.middle));
        }
    }
    for row in rows {
        out.push_str(&line(row));
    }
    if headers || !rows.is_empty() {
        out.push_str(&rule(frame.bottom));
    }
    let noun = if rows.len() == 1 { "row" } else { "rows" };
    out.push_str(&format!("({} {noun})\n", rows.len()));
    out
}

/// sqlite3's `.mode line`: each value on its own line after its column's name.
fn line_mode(columns: &[String], rows: &[Vec<String>]) -> String {
    let name_width = columns.iter().map(|c| width(c)).max().unwrap_or(0);
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (column, cell) in columns.iter().zip(row) {
            let pad = " ".repeat(name_width.saturating_sub(width(column)));
            out.push_str(&format!("{pad}{column} = {cell}\n"));
        }
    }
    out
}

/// A CSV field (RFC 4180): quoted, quotes doubled, if it holds a comma or a quote.
/// Control and invisible characters (line breaks included) are escaped as in the other
/// text modes, since a terminal may show it; JSON is the exact format.
fn csv_text(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A value as a CSV field: NULL is empty, a BLOB its `x'..'` hex.
fn csv_field(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        other => csv_text(&escape(&other.display())),
    }
}

/// RFC 4180 CSV of fields made by [`csv_field`], lines ending in CRLF.
fn csv(columns: &[String], rows: &[Vec<String>], headers: bool) -> String {
    let mut out = String::new();
    for line in headers.then_some(columns).into_iter().chain(rows.iter().map(Vec::as_slice)) {
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// A reply as one line of JSON.
pub fn json(reply: &Reply) -> String {
    let value = match reply {
        Reply::Error { code, message } => error_value(*code, message),
        Reply::Results(results) => results_to_json(results),
    };
    value.to_string() + "\n"
}

/// `{"error": ..., "code": ...}`.
pub fn error_value(code: ErrorCode, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message, "code": code.as_str() })
}

/// Writes a read's JSON line while its results arrive, in the documented shapes: one
/// statement gives `{"columns":[...],"rows":[...]}` (or its changes), several give
/// `{"results":[...]}`. A read cut short (a limit, a timeout) still ends in one valid
/// line: the results so far plus `"error"` and `"code"`.
pub struct JsonStream {
    multi: bool,
    results: usize,
    /// The result object still open: true if it is a rows object.
    open: Option<bool>,
    rows: usize,
}

impl JsonStream {
    /// A stream for a line of one statement, or (`multi`) several.
    pub fn new(multi: bool) -> JsonStream {
        JsonStream { multi, results: 0, open: None, rows: 0 }
    }

    /// Adds one output to `out`.
    pub fn push(&mut self, out: &mut Vec<u8>, output: Output) {
        match output {
            Output::Columns(columns) => {
                self.start_result(out);
                out.extend_from_slice(b"{\"columns\":");
                out.extend_from_slice(serde_json::Value::from(columns).to_string().as_bytes());
                out.extend_from_slice(b",\"rows\":[");
                self.open = Some(true);
                self.rows = 0;
            }
            Output::Row(values) => {
                if self.rows > 0 {
                    out.push(b',');
                }
                self.rows += 1;
                let row: Vec<serde_json::Value> = values.iter().map(Value::to_json).collect();
                out.extend_from_slice(serde_json::Value::from(row).to_string().as_bytes());
            }
            Output::Changes { rows_affected, last_insert_rowid } => {
                self.start_result(out);
                let object =
                    serde_json::json!({ "rows_affected": rows_affected, "last_insert_rowid": last_insert_rowid });
                let text = object.to_string();
                // Left open (no closing brace) so an error can still join it.
                out.extend_from_slice(&text.as_bytes()[..text.len() - 1]);
                self.open = Some(false);
            }
        }
    }

    fn start_result(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        if self.multi {
            out.extend_from_slice(if self.results == 0 { b"{\"results\":[" } else { b"," });
        }
        self.results += 1;
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        match self.open.take() {
            Some(true) => out.extend_from_slice(b"]}"),
            Some(false) => out.push(b'}'),
            None => {}
        }
    }

    /// Ends the line, with the error that stopped the read, if any.
    pub fn finish(&mut self, out: &mut Vec<u8>, error: Option<(ErrorCode, &str)>) {
        match (error, self.results) {
            (Some((code, message)), 0) => out.extend_from_slice(error_value(code, message).to_string().as_bytes()),
            (None, 0) => out.extend_from_slice(b"{\"results\":[]}"),
            (None, _) => {
                self.close(out);
                if self.multi {
                    out.extend_from_slice(b"]}");
                }
            }
            (Some((code, message)), _) => {
                let tail = error_value(code, message).to_string();
                if self.multi {
                    self.close(out);
                    out.push(b']');
                } else if self.open == Some(true) {
                    out.push(b']');
                }
                out.push(b',');
                out.extend_from_slice(&tail.as_bytes()[1..]);
            }
        }
        out.push(b'\n');
    }
}

/// `.status` in either mode.
pub fn status(report: &StatusReport, as_json: bool) -> String {
    if as_json {
        return serde_json::to_string(report).unwrap_or_default() + "\n";
    }
    let leader = report.leader.map_or("none".to_string(), |l| l.to_string());
    let columns =
        ["node", "role", "term", "leader", "commit_index", "applied_index", "snapshot_index", "log"].map(String::from);
    // The log's range: entries before it are compacted into the state (§7).
    let log = if report.last_index < report.first_index {
        "empty".to_string()
    } else {
        format!("{}..{}", report.first_index, report.last_index)
    };
    let row = vec![
        report.node.to_string(),
        report.role.clone(),
        report.term.to_string(),
        leader,
        report.commit_index.to_string(),
        report.applied_index.to_string(),
        report.snapshot_index.to_string(),
        log,
    ];
    ascii_table(&columns, &[row])
}

/// The members, for `.cluster`: one row each, the leader marked.
pub fn cluster(report: &ClusterReport, as_json: bool) -> String {
    if as_json {
        return serde_json::json!({ "cluster": report }).to_string() + "\n";
    }
    let columns = ["node", "role", "rpc", "client", "match_index", "lag", "last_contact"].map(String::from);
    let rows: Vec<Vec<String>> = report
        .members
        .iter()
        .map(|m| {
            let node = if m.leader { format!("{} (leader)", m.node) } else { m.node.to_string() };
            let contact = match (m.leader, m.last_contact_ms) {
                (true, _) => "-".to_string(),
                (false, Some(ms)) => format!("{ms} ms ago"),
                (false, None) => "never".to_string(),
            };
            vec![
                node,
                m.role.clone(),
                m.rpc.clone().unwrap_or_else(|| "?".into()),
                m.client.clone().unwrap_or_else(|| "?".into()),
                m.match_index.to_string(),
                m.lag.to_string(),
                contact,
            ]
        })
        .collect();
    format!("term {}, last index {}\n{}", report.term, report.last_index, ascii_table(&columns, &rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlite_sm::Value;

    #[test]
    fn tables_align_and_json_follows_the_documented_shapes() {
        let rows = StatementResult::Rows {
            columns: vec!["id".into(), "name".into()],
            rows: vec![vec![Value::Integer(1), Value::Text("a".into())], vec![Value::Integer(22), Value::Null]],
        };
        let text = table(&Reply::Results(vec![rows.clone()]), u64::MAX);
        assert_eq!(
            text,
            "+----+------+\n| id | name |\n+----+------+\n| 1  | a    |\n| 22 | NULL |\n+----+------+\n(2 rows)\n"
        );
        assert_eq!(
            json(&Reply::Results(vec![rows.clone()])),
            "{\"columns\":[\"id\",\"name\"],\"rows\":[[1,\"a\"],[22,null]]}\n"
        );
        let change = StatementResult::Changes { rows_affected: 1, last_insert_rowid: 7 };
        assert_eq!(table(&Reply::Results(vec![change.clone()]), u64::MAX), "1 row affected\n");
        assert_eq!(json(&Reply::Results(vec![change.clone()])), "{\"last_insert_rowid\":7,\"rows_affected\":1}\n");
        let both = json(&Reply::Results(vec![change, rows]));
        assert!(both.starts_with("{\"results\":[{"), "{both}");
        let err = json(&Reply::error(ErrorCode::OutcomeUnknown, "lost"));
        assert_eq!(err, "{\"code\":\"outcome_unknown\",\"error\":\"lost\"}\n");
        assert!(table(&Reply::error(ErrorCode::SqlError, "bad"), u64::MAX).contains("\x1b[31mERROR (sql_error): bad"));
    }

    fn streamed(multi: bool, outputs: Vec<Output>, error: Option<&str>) -> serde_json::Value {
        let mut stream = JsonStream::new(multi);
        let mut out = Vec::new();
        for output in outputs {
            stream.push(&mut out, output);
        }
        stream.finish(&mut out, error.map(|e| (ErrorCode::SqlError, e)));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[test]
    fn streamed_json_has_the_documented_shapes_even_when_cut_short() {
        let cols = || Output::Columns(vec!["x".into()]);
        let row = |i| Output::Row(vec![Value::Integer(i)]);
        let change = || Output::Changes { rows_affected: 0, last_insert_rowid: 0 };
        assert_eq!(
            streamed(false, vec![cols(), row(1), row(2)], None),
            serde_json::json!({"columns":["x"],"rows":[[1],[2]]})
        );
        assert_eq!(
            streamed(true, vec![cols(), row(1), cols(), change()], None),
            serde_json::json!({"results":[{"columns":["x"],"rows":[[1]]},{"columns":["x"],"rows":[]},{"rows_affected":0,"last_insert_rowid":0}]})
        );
        assert_eq!(streamed(false, vec![], Some("boom")), serde_json::json!({"error":"boom","code":"sql_error"}));
        assert_eq!(
            streamed(false, vec![cols(), row(1)], Some("too big")),
            serde_json::json!({"columns":["x"],"rows":[[1]],"error":"too big","code":"sql_error"})
        );
        assert_eq!(
            streamed(true, vec![cols(), row(1), cols()], Some("late")),
            serde_json::json!({"results":[{"columns":["x"],"rows":[[1]]},{"columns":["x"],"rows":[]}],"error":"late","code":"sql_error"})
        );
        assert_eq!(
            streamed(false, vec![change()], Some("odd")),
            serde_json::json!({"rows_affected":0,"last_insert_rowid":0,"error":"odd","code":"sql_error"})
        );
    }

    #[test]
    fn a_table_too_wide_to_pad_is_refused_before_it_is_built() {
        let wide = Value::Text("x".repeat(1 << 20));
        let mut rows = vec![vec![wide]];
        rows.extend((0..4000).map(|i| vec![Value::Integer(i)]));
        let text = table(&Reply::Results(vec![StatementResult::Rows { columns: vec!["c".into()], rows }]), 8 << 20);
        assert!(text.contains("as shown in table mode") && text.len() < 1000, "{}", &text[..200.min(text.len())]);
    }
}
