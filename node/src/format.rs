//! How replies look to a person (`.mode table`) and to a script (`.mode json`).

use sqlite_sm::{results_to_json, StatementResult};

use crate::protocol::{ErrorCode, Reply, StatusReport};

/// ANSI red, as the original printed its errors.
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// A reply as aligned ASCII tables and `N rows affected` lines.
pub fn table(reply: &Reply) -> String {
    match reply {
        Reply::Error { code, message } => error_table(*code, message),
        Reply::Results(results) => {
            let mut out = String::new();
            for result in results {
                match result {
                    StatementResult::Rows { columns, rows } => {
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

/// `.status` in either mode.
pub fn status(report: &StatusReport, as_json: bool) -> String {
    if as_json {
        return serde_json::to_string(report).unwrap_or_default() + "\n";
    }
    let leader = report.leader.map_or("none".to_string(), |l| l.to_string());
    let columns = ["node", "role", "term", "leader", "commit_index", "applied_index"].map(String::from);
    let row = vec![
        report.node.to_string(),
        report.role.clone(),
        report.term.to_string(),
        leader,
        report.commit_index.to_string(),
        report.applied_index.to_string(),
    ];
    ascii_table(&columns, &[row])
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
        let text = table(&Reply::Results(vec![rows.clone()]));
        assert_eq!(
            text,
            "+----+------+\n| id | name |\n+----+------+\n| 1  | a    |\n| 22 | NULL |\n+----+------+\n(2 rows)\n"
        );
        assert_eq!(
            json(&Reply::Results(vec![rows.clone()])),
            "{\"columns\":[\"id\",\"name\"],\"rows\":[[1,\"a\"],[22,null]]}\n"
        );
        let change = StatementResult::Changes { rows_affected: 1, last_insert_rowid: 7 };
        assert_eq!(table(&Reply::Results(vec![change.clone()])), "1 row affected\n");
        assert_eq!(json(&Reply::Results(vec![change.clone()])), "{\"last_insert_rowid\":7,\"rows_affected\":1}\n");
        let both = json(&Reply::Results(vec![change, rows]));
        assert!(both.starts_with("{\"results\":[{"), "{both}");
        let err = json(&Reply::error(ErrorCode::OutcomeUnknown, "lost"));
        assert_eq!(err, "{\"code\":\"outcome_unknown\",\"error\":\"lost\"}\n");
        assert!(table(&Reply::error(ErrorCode::SqlError, "bad")).contains("\x1b[31mERROR: bad"));
    }
}
