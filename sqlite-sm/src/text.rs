//! Where a statement typed over several lines ends, as the sqlite3 shell decides it: a
//! session keeps reading lines while the text so far ends inside a string, a quoted
//! name, a comment or a trigger's body, or stops mid-statement (SQLite's "incomplete
//! input", see [`crate::ClassifyError::is_incomplete`]).

use std::ffi::CString;

/// Whether `sql` ends inside a string, a quoted name, a block comment or a
/// `CREATE TRIGGER ... END`, so that no `;` could end it yet. SQLite's own tokenizer
/// decides (`sqlite3_complete`), so the shell agrees with what SQLite will parse.
pub fn ends_inside_a_token(sql: &str) -> bool {
    // With a `;` after a line break, only an open literal, comment or trigger body can
    // keep the text unfinished (a `--` comment ends at the line break).
    let Ok(text) = CString::new(format!("{sql}\n;")) else {
        // A NUL byte: not SQL that a further line could finish; let the parser say so.
        return false;
    };
    // SAFETY: `text` is a valid NUL-terminated string that outlives the call, and
    // sqlite3_complete only reads it.
    unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr()) == 0 }
}

/// Whether `sql` holds nothing but white space, comments and semicolons: a line the
/// sqlite3 shell accepts silently.
pub fn is_blank(sql: &str) -> bool {
    let mut rest = sql.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
    while !rest.is_empty() {
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return false;
        }
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_strings_names_comments_and_trigger_bodies_are_unfinished() {
        for sql in
            ["SELECT 'abc", "SELECT \"a", "SELECT 1 /* note", "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;"]
        {
            assert!(ends_inside_a_token(sql), "{sql}");
        }
        for sql in ["SELECT 1", "SELECT 1;", "CREATE TABLE t (", "SELECT 'a;b'", "SELECT 1 -- note", "x\0y"] {
            assert!(!ends_inside_a_token(sql), "{sql}");
        }
    }

    #[test]
    fn only_white_space_comments_and_semicolons_are_blank() {
        for sql in ["", " ; ;; ", "-- a note", "/* a */ ; -- b\n;", "/* open"] {
            assert!(is_blank(sql), "{sql:?}");
        }
        for sql in ["SELECT 1", "; x", "-- a\nSELECT 1", "/* a */ 1"] {
            assert!(!is_blank(sql), "{sql:?}");
        }
    }
}
