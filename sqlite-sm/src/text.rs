//! Where a statement typed over several lines ends, as the sqlite3 shell decides it.
//!
//! [`Ending`] follows SQLite's own `sqlite3_complete` (its tokenizer and its small state
//! machine for `CREATE TRIGGER ... END`), but line by line: each line is scanned once, so
//! a statement sent one byte per line costs the node linear, not quadratic, work. A test
//! checks it against `sqlite3_complete` itself on random text.

/// How far a statement typed so far has come.
#[derive(Clone, Debug, Default)]
pub struct Ending {
    /// `sqlite3_complete`'s state (see [`TRANS`]).
    state: u8,
    /// The token the text ends inside of, if any.
    open: Open,
}

/// A token that a later line may still close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Open {
    #[default]
    Nothing,
    /// A string, a quoted name (`"`, `` ` ``) or a `[name]`: closed by this byte.
    Quoted(u8),
    /// A `/* ... */` comment.
    Comment,
    /// A `--` comment, to the end of its line (or of the text).
    LineComment,
}

// sqlite3_complete's token classes and states.
const SEMI: usize = 0;
const WS: usize = 1;
const OTHER: usize = 2;
const EXPLAIN: usize = 3;
const CREATE: usize = 4;
const TEMP: usize = 5;
const TRIGGER: usize = 6;
const END: usize = 7;
const START: u8 = 1;

/// `sqlite3_complete`'s transitions: state × token class → state. States: 0 invalid, 1
/// start (after a `;`), 2 normal, 3 after EXPLAIN, 4 after CREATE, 5 inside a trigger's
/// body, 6 after a `;` in it, 7 after its END. Only a `;` outside a trigger's body (or
/// after its END) brings the text back to start.
const TRANS: [[u8; 8]; 8] = [
    [1, 0, 2, 3, 4, 2, 2, 2],
    [1, 1, 2, 3, 4, 2, 2, 2],
    [1, 2, 2, 2, 2, 2, 2, 2],
    [1, 3, 3, 2, 4, 2, 2, 2],
    [1, 4, 2, 2, 2, 4, 5, 2],
    [6, 5, 5, 5, 5, 5, 5, 5],
    [6, 6, 5, 5, 5, 5, 5, 7],
    [1, 7, 5, 5, 5, 5, 5, 5],
];

impl Ending {
    /// Nothing typed yet.
    pub fn new() -> Ending {
        Ending::default()
    }

    /// Takes the next piece of text: a line, a line break, or text cut anywhere but inside
    /// a `--`, `/*` or `*/`.
    pub fn feed(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match self.open {
                Open::Quoted(close) => match bytes[i..].iter().position(|&b| b == close) {
                    Some(at) => {
                        i += at + 1;
                        self.open = Open::Nothing;
                        self.step(OTHER);
                    }
                    None => return,
                },
                Open::Comment => match bytes[i..].windows(2).position(|w| w == b"*/") {
                    Some(at) => {
                        i += at + 2;
                        self.open = Open::Nothing;
                        self.step(WS);
                    }
                    // A piece never splits a `*/` (pieces end at line breaks or at `;`).
                    None => return,
                },
                Open::LineComment => match bytes[i..].iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        i += at + 1;
                        self.open = Open::Nothing;
                        self.step(WS);
                    }
                    None => return,
                },
                Open::Nothing => i = self.token(bytes, i),
            }
        }
    }

    /// Scans the token at `bytes[i]`; returns where the next one starts.
    fn token(&mut self, bytes: &[u8], i: usize) -> usize {
        let b = bytes[i];
        match b {
            b';' => {
                self.step(SEMI);
                i + 1
            }
            b' ' | b'\t' | b'\n' | b'\x0c' | b'\r' => {
                self.step(WS);
                i + 1
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                self.open = Open::Comment;
                i + 2
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                self.open = Open::LineComment;
                i + 2
            }
            b'[' => {
                self.open = Open::Quoted(b']');
                i + 1
            }
            b'`' | b'"' | b'\'' => {
                self.open = Open::Quoted(b);
                i + 1
            }
            b if is_id_char(b) => {
                let len = bytes[i..].iter().position(|&c| !is_id_char(c)).unwrap_or(bytes.len() - i);
                self.step(keyword(&bytes[i..i + len]));
                i + len
            }
            _ => {
                self.step(OTHER);
                i + 1
            }
        }
    }

    fn step(&mut self, token: usize) {
        self.state = TRANS[self.state as usize][token];
    }

    /// Whether the text ends a statement with `;`, as `sqlite3_complete` says (a `--`
    /// comment after it must have ended with its line).
    pub fn is_complete(&self) -> bool {
        self.state == START && self.open == Open::Nothing
    }

    /// Whether the text ends inside a string, a quoted name, a block comment or a
    /// trigger's body, so that no `;` on a line of its own could end it.
    pub fn is_inside_a_token(&self) -> bool {
        matches!(self.open, Open::Quoted(_) | Open::Comment) || matches!(self.state, 5..=7)
    }
}

/// The bytes SQLite takes as part of an identifier (`IdChar`): letters, digits, `_`, `$`
/// and every byte of a multi-byte UTF-8 character.
fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The token class of a word.
fn keyword(word: &[u8]) -> usize {
    let is = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
    if is("create") {
        CREATE
    } else if is("trigger") {
        TRIGGER
    } else if is("temp") || is("temporary") {
        TEMP
    } else if is("end") {
        END
    } else if is("explain") {
        EXPLAIN
    } else {
        OTHER
    }
}

/// Whether `sql` holds nothing but white space, comments and semicolons: a line the
/// sqlite3 shell accepts silently.
pub fn is_blank(sql: &str) -> bool {
    skip_blanks(sql).is_empty()
}

/// Whether `sql` is one `INSERT`, `UPDATE`, `DELETE` or `REPLACE` statement (see
/// [`is_one_statement`]). SQLite judges such a line a write under any schema, or fails to
/// prepare it; so it need not be asked.
pub fn is_a_write_alone(sql: &str) -> bool {
    let first = first_word(sql);
    ["insert", "update", "delete", "replace"].iter().any(|k| first.eq_ignore_ascii_case(k.as_bytes()))
        && is_one_statement(sql)
}

/// Whether `sql` is one `SELECT` statement (see [`is_one_statement`]). SQLite judges such
/// a line a read under any schema, or fails to prepare it; so it need not be asked.
pub fn is_a_select_alone(sql: &str) -> bool {
    first_word(sql).eq_ignore_ascii_case(b"select") && is_one_statement(sql)
}

/// Whether `sql` holds no `;` but before and after its statement. One inside a string or
/// a comment is taken for one between statements, to be safe: such a line is judged by
/// SQLite.
fn is_one_statement(sql: &str) -> bool {
    !skip_blanks(sql).trim_end_matches(|c: char| is_blank_char(c) || c == ';').contains(';')
}

/// The white space SQLite's tokenizer skips (a character such as U+00A0 is, to SQLite,
/// part of a name).
fn is_blank_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// The first word of `sql`'s first statement.
fn first_word(sql: &str) -> &[u8] {
    let rest = skip_blanks(sql).as_bytes();
    let len = rest.iter().position(|&b| !is_id_char(b)).unwrap_or(rest.len());
    &rest[..len]
}

/// `sql` after the white space, comments and semicolons it starts with, as SQLite skips
/// them before a statement.
fn skip_blanks(sql: &str) -> &str {
    let mut rest = sql.trim_start_matches(|c: char| is_blank_char(c) || c == ';');
    loop {
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return rest;
        }
        rest = rest.trim_start_matches(|c: char| is_blank_char(c) || c == ';');
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    /// SQLite's own answer.
    fn sqlite3_complete(sql: &str) -> bool {
        let text = CString::new(sql).expect("no NUL");
        // SAFETY: a valid NUL-terminated string that outlives the call; only read.
        unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr()) != 0 }
    }

    /// The text fed as the session feeds it: line by line, line breaks between.
    fn ending(sql: &str) -> Ending {
        let mut ending = Ending::new();
        for (i, line) in sql.split('\n').enumerate() {
            if i > 0 {
                ending.feed("\n");
            }
            ending.feed(line);
        }
        ending
    }

    #[test]
    fn it_agrees_with_sqlite3_complete_on_random_text() {
        const PIECES: [&str; 30] = [
            ";",
            " ",
            "\n",
            "'",
            "\"",
            "`",
            "[",
            "]",
            "/*",
            "*/",
            "*",
            "/",
            "--",
            "-",
            "x",
            "1",
            "é",
            "$",
            "\r",
            "\t",
            "\x0c",
            "\x0b",
            "CREATE",
            "temp",
            "Temporary",
            "TRIGGER",
            "end",
            "explain",
            "BEGIN",
            "select",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        // Often a trigger's start, so that its body's rules are reached.
        const STARTS: [&str; 5] =
            ["", "", "CREATE TRIGGER t BEGIN ", "create temp trigger t begin ", "CREATE TEMPORARY TRIGGER t "];
        for case in 0..50_000 {
            let len = next(16);
            let sql: String = std::iter::once(STARTS[next(STARTS.len())])
                .chain((0..len).map(|_| PIECES[next(PIECES.len())]))
                .collect();
            assert_eq!(ending(&sql).is_complete(), sqlite3_complete(&sql), "case {case}: {sql:?}");
            // Fed in pieces cut at each `;`, as a dump checks its statements.
            let mut pieces = Ending::new();
            for piece in sql.split_inclusive(';') {
                pieces.feed(piece);
            }
            assert_eq!(pieces.is_complete(), sqlite3_complete(&sql), "case {case} cut at ';': {sql:?}");
        }
    }

    #[test]
    fn open_strings_names_comments_and_trigger_bodies_wait_for_more() {
        for sql in
            ["SELECT 'abc", "SELECT \"a", "SELECT 1 /* note", "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;"]
        {
            assert!(ending(sql).is_inside_a_token(), "{sql}");
        }
        for sql in ["SELECT 1", "SELECT 1;", "CREATE TABLE t (", "SELECT 'a;b'", "SELECT 1 -- note\n"] {
            assert!(!ending(sql).is_inside_a_token(), "{sql}");
        }
        assert!(ending("CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\nEND;").is_complete());
    }

    #[test]
    fn only_white_space_comments_and_semicolons_are_blank() {
        for sql in ["", " ; ;; ", "-- a note", "/* a */ ; -- b\n;", "/* open", "\t\r\n\x0c"] {
            assert!(is_blank(sql), "{sql:?}");
        }
        // U+00A0 is not white space to SQLite: such a line must reach it, to be refused.
        for sql in ["SELECT 1", "; x", "-- a\nSELECT 1", "/* a */ 1", "\u{a0}"] {
            assert!(!is_blank(sql), "{sql:?}");
        }
    }

    /// How SQLite itself judges `sql`: how many statements, and whether any writes.
    fn judged_by_sqlite(conn: &rusqlite::Connection, sql: &str) -> (usize, bool) {
        use rusqlite::fallible_iterator::FallibleIterator;
        let mut batch = rusqlite::Batch::new(conn, sql);
        let (mut statements, mut writes) = (0, false);
        while let Some(stmt) = batch.next().expect("prepares") {
            statements += 1;
            writes |= !stmt.readonly();
        }
        (statements, writes)
    }

    #[test]
    fn a_line_taken_for_one_write_unasked_is_one_statement_sqlite_judges_a_write() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (x); CREATE VIEW v AS SELECT x FROM t").expect("schema");
        let writes = [
            "INSERT INTO t VALUES (1)",
            "  insert into t values (1); ",
            ";; /* a */ -- b\nUpdate t SET x = 2",
            "DELETE FROM t",
            "REPLACE INTO t VALUES (1)",
            "INSERT\tINTO t SELECT 1",
        ];
        for sql in writes {
            assert!(is_a_write_alone(sql), "{sql:?}");
            assert_eq!(judged_by_sqlite(&conn, sql), (1, true), "SQLite judges {sql:?} one write");
        }
        let others = [
            "SELECT 1",
            "WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c",
            "EXPLAIN INSERT INTO t VALUES (1)",
            "INSERTED",
            "insert_into",
            "-- INSERT\nSELECT 1",
            "/* DELETE */ SELECT 1",
            "\"INSERT\"",
            "",
            "VALUES (1)",
            "INSERT INTO t VALUES (1); ATTACH 'x' AS x",
            "INSERT INTO t VALUES (';')",
            "\u{a0}INSERT INTO t VALUES (1)",
        ];
        for sql in others {
            assert!(!is_a_write_alone(sql), "{sql:?}");
        }
    }

    #[test]
    fn a_line_taken_for_one_select_unasked_is_one_read_only_statement_to_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE t (x)").expect("schema");
        let reads = [
            "SELECT 1",
            " /* a */ select x FROM t WHERE x = 'a' ;; ",
            "SELECT\n1 -- note\n",
            "SELECT 1;",
            "SELECT 1 -- ;",
        ];
        for sql in reads {
            assert!(is_a_select_alone(sql), "{sql:?}");
            assert_eq!(judged_by_sqlite(&conn, sql), (1, false), "SQLite judges {sql:?} one read");
        }
        let others = [
            "SELECT 1; INSERT INTO t VALUES (1)",
            "SELECT 1; SELECT 2",
            "SELECT ';'",
            "SELECT 1 -- ;\nINSERT INTO t VALUES (1)",
            "WITH c AS (SELECT 1) SELECT * FROM c",
            "VALUES (1)",
            "SELECTED",
            "INSERT INTO t SELECT 1",
            "",
            "SELECT 1;\u{2028}",
            "\u{a0}SELECT 1",
        ];
        for sql in others {
            assert!(!is_a_select_alone(sql), "{sql:?}");
        }
    }
}
