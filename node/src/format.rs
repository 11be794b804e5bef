//! How replies look to a person (`.mode table`) and to a script (`.mode json`).

use sqlite_sm::{results_to_json, Output, StatementResult, Value};

use crate::protocol::{ClusterReport, ErrorCode, Reply, StatusReport};

/// ANSI red, as the original printed its errors.
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// A reply as aligned ASCII tables and `N rows affected` lines. Every cell is padded to
/// its column's widest, so one wide cell widens every row: a table whose padded size
/// would exceed `max_bytes` is refused rather than built.
pub fn table(reply: &Reply, max_bytes: u64) -> String {
    match reply {
        Reply::Error { code, message } => error_table(*code, message),
        Reply::Results(results) => {
            let mut out = String::new();
            for result in results {
                match result {
                    StatementResult::Rows { columns, rows } => {
                        let size = padded_size(columns, rows);
                        if size > max_bytes {
                            let message = format!(
                                "the table would be {size} bytes once its columns are padded (the limit is {max_bytes}); use .mode json, fewer rows or narrower columns"
                            );
                            out.push_str(&error_table(ErrorCode::SqlError, &message));
                            continue;
                        }
                        let cells: Vec<Vec<String>> =
                            rows.iter().map(|r| r.iter().map(|v| v.display()).collect()).collect();
                        out.push_str(&ascii_table(columns, &cells));
                    }
                    StatementResult::Changes { rows_affected, .. } => {
                        let noun = if *rows_affected == 1 { "row" } else { "rows" };
                        out.push_str(&format!("{rows_affected} {noun} affected\n"));
                    }
                }
            }
            out
        }
    }
}

/// The bytes an ASCII table of these rows would take, computed without building it.
fn padded_size(columns: &[String], rows: &[Vec<Value>]) -> u64 {
    let mut widths: Vec<u64> = columns.iter().map(|c| c.chars().count() as u64).collect();
    for row in rows {
        for (w, value) in widths.iter_mut().zip(row) {
            *w = (*w).max(display_width(value));
        }
    }
    let line: u64 = widths.iter().map(|w| w + 3).sum::<u64>() + 2;
    line.saturating_mul(rows.len() as u64 + 4)
}

/// How wide a value's cell is, without formatting a large one.
fn display_width(value: &Value) -> u64 {
    match value {
        Value::Text(t) if t.len() > 64 => t.chars().count() as u64,
        Value::Blob(b) => 3 + 2 * b.len() as u64,
        other => other.display().chars().count() as u64,
    }
}

/// An error line, in red.
pub fn error_table(code: ErrorCode, message: &str) -> String {
    let label = match code {
        ErrorCode::SqlError => "ERROR".to_string(),
        other => format!("ERROR ({})", other.as_str()),
    };
    format!("{RED}{label}: {message}{RESET}\n")
}

/// A table with a header row, columns padded to their widest cell.
pub fn ascii_table(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let rule: String = widths.iter().map(|w| format!("+{}", "-".repeat(w + 2))).collect::<String>() + "+\n";
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (w, cell) in widths.iter().zip(cells) {
            let pad = w - cell.chars().count();
            s.push_str(&format!("| {cell}{} ", " ".repeat(pad)));
        }
        s + "|\n"
    };
    let mut out = rule.clone();
    out.push_str(&line(columns));
    out.push_str(&rule);
    for row in rows {
        out.push_str(&line(row));
    }
    if !rows.is_empty() {
        out.push_str(&rule);
    }
    let noun = if rows.len() == 1 { "row" } else { "rows" };
    out.push_str(&format!("({} {noun})\n", rows.len()));
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
        assert!(table(&Reply::error(ErrorCode::SqlError, "bad"), u64::MAX).contains("\x1b[31mERROR: bad"));
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
        assert!(text.contains("once its columns are padded") && text.len() < 1000, "{}", &text[..200.min(text.len())]);
    }
}
