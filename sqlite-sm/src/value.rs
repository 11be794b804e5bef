//! Results of SQL statements, and their JSON form for clients (`.mode json`).

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::snapshot::hex;

/// One SQL value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// NULL.
    Null,
    /// INTEGER.
    Integer(i64),
    /// REAL.
    Real(f64),
    /// TEXT.
    Text(String),
    /// BLOB.
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for Value {
    fn from(value: ValueRef<'_>) -> Value {
        match value {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

impl Value {
    /// JSON: numbers as numbers, text as strings, NULL as null, BLOB as a hex string.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => (*i).into(),
            // NaN and infinities have no JSON number; SQLite turns NaN into NULL anyway.
            Value::Real(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
            Value::Text(t) => t.clone().into(),
            // An object, so that a BLOB is never mistaken for text that looks like hex.
            Value::Blob(b) => serde_json::json!({ "blob": hex(b) }),
        }
    }

    /// What the value counts against a result-size limit: the most bytes it can take
    /// once shown, as JSON (where a control character takes six) or as hex (a blob's two
    /// per byte), plus a little.
    pub fn size(&self) -> u64 {
        match self {
            Value::Null | Value::Integer(_) | Value::Real(_) => 24,
            Value::Text(t) => {
                let escaped: u64 = t
                    .bytes()
                    .map(|b| match b {
                        0..=0x1f => 5,
                        b'"' | b'\\' => 1,
                        _ => 0,
                    })
                    .sum();
                8 + t.len() as u64 + escaped
            }
            Value::Blob(b) => 16 + 2 * b.len() as u64,
        }
    }

    /// The text shown in a table cell.
    pub fn display(&self) -> String {
        match self {
            Value::Null => "NULL".into(),
            Value::Integer(i) => i.to_string(),
            // The shortest text that reads back as the same double ("0.1", "1e300",
            // "3.0"), never hundreds of digits.
            Value::Real(f) => format!("{f:?}"),
            Value::Text(t) => t.clone(),
            Value::Blob(b) => format!("x'{}'", hex(b)),
        }
    }
}

/// What one statement produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StatementResult {
    /// A statement that returns rows (a query, or a write with RETURNING).
    Rows {
        /// Column names.
        columns: Vec<String>,
        /// The rows.
        rows: Vec<Vec<Value>>,
    },
    /// A statement that changed rows.
    Changes {
        /// Rows inserted, updated or deleted.
        rows_affected: u64,
        /// The rowid of the last insert on this connection.
        last_insert_rowid: i64,
    },
}

impl StatementResult {
    /// The JSON object for this result, as documented for `.mode json`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            StatementResult::Rows { columns, rows } => serde_json::json!({
                "columns": columns,
                "rows": rows.iter().map(|r| r.iter().map(Value::to_json).collect::<Vec<_>>()).collect::<Vec<_>>(),
            }),
            StatementResult::Changes { rows_affected, last_insert_rowid } => {
                serde_json::json!({ "rows_affected": rows_affected, "last_insert_rowid": last_insert_rowid })
            }
        }
    }
}

/// The results of a whole line, or the error that rolled it back.
pub type LineResult = Result<Vec<StatementResult>, String>;

/// JSON for a line's results: one object for one statement, `{"results":[...]}` for several.
pub fn results_to_json(results: &[StatementResult]) -> serde_json::Value {
    match results {
        [one] => one.to_json(),
        many => serde_json::json!({ "results": many.iter().map(StatementResult::to_json).collect::<Vec<_>>() }),
    }
}
