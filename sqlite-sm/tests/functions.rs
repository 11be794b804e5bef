//! lightraft's linear-time `instr()` and `replace()` return exactly what SQLite's own
//! return, for random arguments of every type, and stay fast where SQLite's are quadratic.

use std::time::{Duration, Instant};

mod common;

use common::Rng;
use rusqlite::types::Value;
use rusqlite::Connection;
use sqlite_sm::functions::{install, LengthLimit};

impl Rng {
    /// Short strings over a small alphabet (so matches are common), with multi-byte
    /// characters, lone continuation bytes, NULs and invalid UTF-8.
    fn bytes(&mut self) -> Vec<u8> {
        const PIECES: [&[u8]; 9] = [b"a", b"b", b"ab", "é".as_bytes(), "€".as_bytes(), b"\x80", b"\xe2", b"\0", b"1"];
        (0..self.below(9)).flat_map(|_| PIECES[self.below(PIECES.len() as u64) as usize].to_vec()).collect()
    }

    fn value(&mut self) -> Value {
        match self.below(8) {
            0 => Value::Null,
            1 => Value::Integer(self.below(300) as i64 - 150),
            2 => Value::Real([0.5, 1.0, -2.25, 1e20, 1.0 / 3.0, 12.0][self.below(6) as usize]),
            3 | 4 => Value::Blob(self.bytes()),
            _ => Value::Text(String::from_utf8_lossy(&self.bytes()).into_owned()),
        }
    }
}

fn connections() -> (Connection, Connection) {
    sqlite_sm::vfs::register().expect("lightraft's SQLite setup");
    let ours = Connection::open_in_memory().expect("opens");
    let limit = LengthLimit::default();
    limit.set(1 << 20);
    install(&ours, &limit).expect("installs");
    (ours, Connection::open_in_memory().expect("opens"))
}

#[test]
fn instr_and_replace_agree_with_sqlites_own_on_random_arguments() {
    let (ours, sqlites) = connections();
    let mut rng = Rng(7);
    let eval = |conn: &Connection, sql: &str, args: &[Value]| -> Result<Value, String> {
        conn.query_row(sql, rusqlite::params_from_iter(args), |r| r.get::<_, Value>(0)).map_err(|e| e.to_string())
    };
    for case in 0..20_000 {
        let (a, b, c) = (rng.value(), rng.value(), rng.value());
        for (sql, args) in [
            ("SELECT instr(?1, ?2)", vec![a.clone(), b.clone()]),
            ("SELECT replace(?1, ?2, ?3)", vec![a.clone(), b.clone(), c.clone()]),
            // Text with invalid UTF-8 or NULs in it, built by SQL rather than bound.
            ("SELECT instr(CAST(?1 AS TEXT), ?2)", vec![a.clone(), b.clone()]),
            ("SELECT replace(CAST(?1 AS TEXT), CAST(?2 AS TEXT), ?3)", vec![a.clone(), b.clone(), c.clone()]),
            ("SELECT typeof(replace(?1, ?2, ?3))", vec![a.clone(), b.clone(), c.clone()]),
        ] {
            let (mine, theirs) = (eval(&ours, sql, &args), eval(&sqlites, sql, &args));
            assert_eq!(mine, theirs, "case {case}: {sql} with {args:?}");
        }
    }
}

#[test]
fn a_worst_case_search_takes_milliseconds_not_minutes() {
    let (ours, _) = connections();
    let started = Instant::now();
    let found: i64 = ours
        .query_row(
            "SELECT instr(h, substr(h, 1, 1000000) || 'b') + length(replace(h, substr(h, 1, 1000000) || 'b', 'x')) FROM (SELECT replace(hex(zeroblob(1000000)), '0', 'a') AS h)",
            [],
            |r| r.get(0),
        )
        .expect("runs");
    assert_eq!(found, 2_000_000, "no match: instr is 0, replace leaves all 2,000,000 characters");
    // Not a speed target: SQLite's own compare a million bytes at each of a million
    // places here (minutes); a linear search takes milliseconds. The margin is huge.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}
