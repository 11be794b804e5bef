//! The rule that keeps replicas identical, tested by brute force: a replica that applies
//! entries 1..n one at a time without stopping, and one that applies them in groups of
//! random size (one transaction each, as the apply thread does) and is restarted at
//! random points in between, hold the same logical content (a full dump: schema, every
//! table's rows in storage order, sequences, statistics, page counts) after every group,
//! and every entry has the same result and cost on both.
//!
//! Lines come from a broad random grammar: DDL, DML, triggers, views, virtual tables,
//! time and random functions, `changes()`, schema introspection, ANALYZE, rowids near
//! the limit, AUTOINCREMENT exhaustion, statements that fail or are refused, and limits
//! small enough to be hit.
//!
//! - `cargo test --release -p sqlite-sm --test differential` runs the default cases.
//! - `LIGHTRAFT_DIFF_CASES=<n>` runs n cases; `LIGHTRAFT_DIFF_FIRST=<s>` starts at seed s.
//! - `LIGHTRAFT_DIFF_SEED=<seed>` replays one case and prints its lines.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

mod common;

use common::Rng;
use raft_core::{Entry, Payload};
use sqlite_sm::{Limits, LineResult, StateMachine, WriteCommand};

const DEFAULT_CASES: u64 = 2000;
const LINES_PER_CASE: usize = 24;

/// Random SQL over a small, shared vocabulary of names, so statements often meet
/// objects that earlier lines created (and sometimes ones that are gone).
struct Grammar {
    rng: Rng,
}

impl Grammar {
    fn table(&mut self) -> String {
        format!("t{}", self.rng.below(4))
    }

    fn value(&mut self) -> String {
        let r = &mut self.rng;
        match r.below(16) {
            0 => "random()".into(),
            1 => format!("randomblob({})", r.below(20)),
            2 => "datetime('now')".into(),
            3 => "strftime('%Y-%m-%d %H:%M:%f', 'now')".into(),
            4 => "unixepoch('now', 'subsec')".into(),
            5 => "changes()".into(),
            6 => "last_insert_rowid()".into(),
            7 => "NULL".into(),
            8 => format!("'{}'", r.pick(&["a", "b", "hello world", "x'y", "\u{1}\u{1b}[2J", "é"]).replace('\'', "''")),
            9 => format!("{}", r.next() as i64),
            10 => format!("{}.5", r.below(1000)),
            11 => "hex(randomblob(3))".into(),
            12 => "julianday('now', 'localtime')".into(),
            13 => "(SELECT count(*) FROM t0)".into(),
            14 => format!("{}", 9_223_372_036_854_775_807i64 - r.below(3) as i64),
            _ => format!("{}", r.below(50)),
        }
    }

    fn create(&mut self) -> String {
        let t = self.table();
        self.create_named(&t)
    }

    fn create_named(&mut self, t: &str) -> String {
        let r = &mut self.rng;
        match r.below(6) {
            0 => format!("CREATE TABLE IF NOT EXISTS {t}(a INTEGER PRIMARY KEY AUTOINCREMENT, b DEFAULT CURRENT_TIMESTAMP, c DEFAULT (random()), d)"),
            1 => format!("CREATE TABLE IF NOT EXISTS {t}(a INTEGER PRIMARY KEY, b UNIQUE, c, d)"),
            2 => format!("CREATE TABLE IF NOT EXISTS {t}(a, b, c, d, PRIMARY KEY (a, b)) WITHOUT ROWID"),
            3 => format!("CREATE TABLE IF NOT EXISTS {t}(a, b, c REFERENCES t0(a) DEFERRABLE INITIALLY DEFERRED, d)"),
            4 => format!("CREATE TABLE IF NOT EXISTS {t}(a, b, c, d)"),
            _ => format!("CREATE TABLE IF NOT EXISTS {t}(a INTEGER PRIMARY KEY, b NOT NULL DEFAULT (hex(randomblob(2))), c, d CHECK (d IS NULL OR d <> 13))"),
        }
    }

    fn statement(&mut self) -> String {
        let t = self.table();
        let u = self.table();
        let v = self.value();
        let w = self.value();
        let r = &mut self.rng;
        match r.below(46) {
            0..=3 => self.create(),
            4..=11 => format!("INSERT INTO {t}(a, b, c, d) VALUES ({v}, {w}, {}, {})", r.below(20), r.below(5)),
            12 => format!("INSERT INTO {t}(b, c) VALUES ({v}, {w}) RETURNING *"),
            13 => format!("INSERT OR REPLACE INTO {t}(a, b) VALUES ({}, {v})", r.below(10)),
            14 => format!("INSERT INTO {t}(a, b) VALUES ({}, {v}) ON CONFLICT DO UPDATE SET c = excluded.b", r.below(10)),
            15 => format!("INSERT INTO {t}(a, b, c) SELECT a, b, {v} FROM {u} ORDER BY random() LIMIT {}", r.below(5)),
            16 => format!("UPDATE {t} SET c = {v} WHERE a % 3 = {}", r.below(3)),
            17 => format!("UPDATE {t} SET b = {v} WHERE rowid = last_insert_rowid() OR random() % 4 = 0"),
            18 => format!("DELETE FROM {t} WHERE random() % 3 = 0"),
            19 => format!("DELETE FROM {t} WHERE a = {}", r.below(10)),
            20 => format!("CREATE INDEX IF NOT EXISTS i{} ON {t}(c)", r.below(3)),
            21 => format!("DROP TABLE IF EXISTS {t}"),
            22 => format!("ALTER TABLE {t} ADD COLUMN e{} DEFAULT {}", r.below(3), r.below(9)),
            23 => format!("ALTER TABLE {t} RENAME TO {u}"),
            24 => format!("CREATE VIEW IF NOT EXISTS v{} AS SELECT a, b FROM {t} WHERE c > {}", r.below(2), r.below(9)),
            25 => format!(
                "CREATE TRIGGER IF NOT EXISTS tr{} AFTER {} ON {t} BEGIN INSERT INTO audit VALUES ({v}, changes(), last_insert_rowid()); END",
                r.below(3),
                r.pick(&["INSERT", "UPDATE", "DELETE"])
            ),
            26 => "CREATE TABLE IF NOT EXISTS audit(x, y, z)".into(),
            27 => format!("INSERT INTO audit SELECT name, ncol, {} FROM pragma_table_list", r.below(3)),
            28 => format!("INSERT INTO audit SELECT name, seq, 0 FROM sqlite_sequence WHERE name = '{t}'"),
            29 => format!("UPDATE sqlite_sequence SET seq = {} WHERE name = '{t}'", 9_223_372_036_854_775_807i64 - r.below(2) as i64),
            30 => r.pick(&["ANALYZE", "ANALYZE t0", "REINDEX", "INSERT INTO audit SELECT * FROM sqlite_stat1"]).into(),
            31 => "INSERT INTO audit SELECT data_version, 1, 2 FROM pragma_data_version".into(),
            32 => format!("INSERT INTO {t}(rowid, a) VALUES ({}, {v})", 9_223_372_036_854_775_807i64 - r.below(3) as i64),
            33 => "CREATE VIRTUAL TABLE IF NOT EXISTS ft USING fts5(body)".into(),
            34 => format!("INSERT INTO ft(body) VALUES ({v} || ' word {}')", r.below(4)),
            35 => "INSERT INTO audit SELECT rowid, body, rank FROM ft WHERE ft MATCH 'word' ORDER BY rank".into(),
            36 => "CREATE VIRTUAL TABLE IF NOT EXISTS rt USING rtree(id, x0, x1)".into(),
            37 => format!("INSERT INTO rt VALUES (NULL, {}, {})", r.below(10), 10 + r.below(10)),
            38 => format!("SELECT count(*), sum(length(b)) FROM {t}"),
            39 => r
                .pick(&[
                    "CREATE TEMP TABLE tmp(x)",
                    "INSERT INTO tmp VALUES (random())",
                    "INSERT INTO audit SELECT count(*), 0, 0 FROM tmp",
                    "CREATE TEMP TRIGGER ttr AFTER INSERT ON main.t0 BEGIN INSERT INTO audit VALUES (1, 2, 3); END",
                    "BEGIN",
                    "SELECT * FROM pragma_database_list",
                    "PRAGMA foreign_keys = OFF",
                    "VACUUM",
                    "INSERT INTO _lightraft_applied VALUES (5, 5)",
                    "SELECT total_changes()",
                ])
                .into(),
            40 => format!("INSERT INTO {t}(a) VALUES (zeroblob({}))", if r.chance(20) { 100_000_000 } else { 10 }),
            41 => format!("INSERT INTO {t}(a, b) SELECT x, x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {}) SELECT x FROM c)", r.below(3000)),
            42 => format!("ALTER TABLE {t} DROP COLUMN d"),
            43 => match r.below(3) {
                // Large values over and over: the allocation budget's deterministic stop.
                0 => format!(
                    "INSERT INTO audit SELECT count(*), 0, 0 FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {}) SELECT i FROM c) WHERE length(hex(zeroblob(100000 + i))) > 0",
                    r.below(500)
                ),
                1 => format!("INSERT INTO audit VALUES (length(concat({})), 0, 0)", vec!["zeroblob(2000000)"; 40].join(", ")),
                _ => "UPDATE sqlite_stat1 SET stat = '100 1'".into(),
            },
            44 => match r.below(4) {
                0 => "INSERT INTO audit SELECT count(*), 0, 0 FROM temp.sqlite_schema".into(),
                1 => format!(
                    "INSERT INTO audit SELECT instr(h, substr(h, 1, {n}) || 'b'), length(replace(h, 'aa', 'b')), h LIKE '%a%a%b' FROM (SELECT replace(hex(zeroblob({n})), '0', 'a') AS h)",
                    n = 1 + r.below(200_000)
                ),
                2 => format!("INSERT INTO audit SELECT x, length(x), instr(x, 'a') FROM (SELECT group_concat(b, '') AS x FROM {t})"),
                _ => format!("SELECT * FROM {t} WHERE b LIKE '{}'", "%a".repeat(r.below(200) as usize)),
            },
            _ => format!("SELECT * FROM {t} ORDER BY rowid LIMIT 3"),
        }
    }

    fn line(&mut self) -> String {
        let n = [1, 1, 1, 1, 1, 1, 2, 2, 2, 3][self.rng.below(10) as usize];
        (0..n).map(|_| self.statement()).collect::<Vec<_>>().join("; ")
    }

    /// The first line: every table the grammar speaks of, in one of its shapes.
    fn schema(&mut self) -> String {
        let mut line: Vec<String> = Vec::new();
        for t in 0..4 {
            line.push(self.create_named(&format!("t{t}")));
        }
        line.push("CREATE TABLE audit(x, y, z)".into());
        line.push("CREATE VIRTUAL TABLE ft USING fts5(body)".into());
        line.push("CREATE VIRTUAL TABLE rt USING rtree(id, x0, x1)".into());
        line.join("; ")
    }

    fn limits(&mut self) -> Limits {
        let r = &mut self.rng;
        if !r.chance(15) {
            return Limits::default();
        }
        Limits {
            max_steps: [1_000, 20_000, 200_000][r.below(3) as usize],
            max_value_bytes: [100, 1 << 20, 2 << 20][r.below(3) as usize],
            max_growth_bytes: [4096, 40_000, 1 << 20][r.below(3) as usize],
            max_database_bytes: [0, 200_000][r.below(2) as usize],
            max_result_bytes: [64, 4096, 1 << 20][r.below(3) as usize],
            max_temp_bytes: [0, 8192, 1 << 20][r.below(3) as usize],
        }
    }
}

/// Everything that makes up a replica's logical state, as text.
fn dump(path: &Path) -> Result<Vec<String>, String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut objects = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT rowid, type, name, tbl_name, ifnull(sql, '') FROM sqlite_schema ORDER BY rowid")
            .map_err(|e| e.to_string())?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let (rowid, kind, name, table, sql): (i64, String, String, String, String) = (
                row.get(0).map_err(|e| e.to_string())?,
                row.get(1).map_err(|e| e.to_string())?,
                row.get(2).map_err(|e| e.to_string())?,
                row.get(3).map_err(|e| e.to_string())?,
                row.get(4).map_err(|e| e.to_string())?,
            );
            out.push(format!("schema {rowid} {kind} {name} on {table}: {sql}"));
            if kind == "table" && !sql.starts_with("CREATE VIRTUAL") {
                objects.push((name, sql.contains("WITHOUT ROWID")));
            }
        }
    }
    for (name, without_rowid) in objects {
        let columns = if without_rowid { "*" } else { "rowid, *" };
        let sql = format!("SELECT {columns} FROM \"{}\"", name.replace('"', "\"\""));
        let mut stmt = conn.prepare(&sql).map_err(|e| format!("{sql}: {e}"))?;
        let width = stmt.column_count();
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let values: Vec<String> =
                (0..width).map(|i| format!("{:?}", row.get_ref(i).map(sqlite_sm::Value::from))).collect();
            out.push(format!("{name}: {}", values.join(" | ")));
        }
    }
    for pragma in ["page_count", "freelist_count", "schema_version"] {
        let value: i64 = conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0)).map_err(|e| e.to_string())?;
        out.push(format!("{pragma} = {value}"));
    }
    Ok(out)
}

/// Runs one case; on a difference, returns a report naming the seed and the lines.
fn run_case(seed: u64, verbose: bool) -> Result<usize, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let steady_path = dir.path().join("steady.sqlite");
    let restarted_path = dir.path().join("restarted.sqlite");
    let mut steady = StateMachine::open(&steady_path)?;
    let mut restarted = StateMachine::open(&restarted_path)?;
    let mut grammar = Grammar { rng: Rng(seed) };
    let mut history = Vec::new();
    let mut errors = 0;
    // What the steady replica gave for each entry the grouped one has not applied yet.
    let mut pending: Vec<(Entry, Option<LineResult>, (u64, u64))> = Vec::new();
    for index in 1..=LINES_PER_CASE as u64 {
        if grammar.rng.chance(30) {
            drop(restarted);
            restarted = StateMachine::open(&restarted_path)
                .map_err(|e| format!("seed {seed}: cannot reopen: {e}\nlines:\n{}", history.join("\n")))?;
            history.push(format!("-- restart the second replica before entry {index}"));
        }
        let line = if index == 1 { grammar.schema() } else { grammar.line() };
        let limits = if index == 1 { Limits::default() } else { grammar.limits() };
        let command = WriteCommand {
            sql: line.clone(),
            time_ms: grammar.rng.below(1 << 45) as i64,
            seed: grammar.rng.next(),
            limits,
            origin: None,
        };
        // Now and then an entry that is not a command: it only moves the applied index.
        let payload = match grammar.rng.below(20) {
            0 if index > 1 => Payload::Noop,
            1 if index > 1 => Payload::Membership(Default::default()),
            _ => Payload::Command(command.encode()),
        };
        let entry = Entry { index, term: 1, payload };
        history.push(match entry.payload {
            Payload::Command(_) => format!(
                "{index}: {line}{}",
                if limits == Limits::default() { String::new() } else { format!("   -- {limits:?}") }
            ),
            _ => format!("{index}: (not a command: {:?})", entry.payload),
        });
        let a: Option<LineResult> = steady.apply(&entry).map_err(|e| format!("seed {seed}: steady replica: {e}"))?;
        if verbose {
            println!("{}\n   => {a:?}", history.last().map_or("", String::as_str));
        }
        if matches!(a, Some(Err(_))) {
            errors += 1;
        }
        pending.push((entry, a, steady.last_line_cost()));
        // The grouped replica catches up at random points (and always at the end).
        if index < LINES_PER_CASE as u64 && !grammar.rng.chance(35) {
            continue;
        }
        let entries: Vec<Entry> = pending.iter().map(|(e, _, _)| e.clone()).collect();
        let mut rest = &entries[..];
        let mut results = std::collections::BTreeMap::new();
        let mut costs = std::collections::BTreeMap::new();
        let mut groups = Vec::new();
        while !rest.is_empty() {
            let group = restarted.apply_group(rest).map_err(|e| format!("seed {seed}: grouped replica: {e}"))?;
            let span = rest[0].index..rest[0].index + group.count as u64;
            // Exactly one result (and one cost) per command of the group, none elsewhere.
            let commands: Vec<u64> = rest[..group.count]
                .iter()
                .filter(|e| matches!(e.payload, Payload::Command(_)))
                .map(|e| e.index)
                .collect();
            let answered: Vec<u64> = group.results.iter().map(|(i, _)| *i).collect();
            let costed: Vec<u64> = restarted.group_costs().iter().map(|&(i, _, _)| i).collect();
            if answered != commands || costed != commands {
                return Err(format!(
                    "seed {seed}: the group {span:?} answered {answered:?} and costed {costed:?}, its commands are {commands:?}"
                ));
            }
            costs.extend(restarted.group_costs().iter().map(|&(i, calls, bytes)| (i, (calls, bytes))));
            results.extend(group.results);
            groups.push(format!("{}..={}", rest[0].index, rest[0].index + group.count as u64 - 1));
            rest = &rest[group.count..];
        }
        history.push(format!("-- the second replica applied them as groups {}", groups.join(", ")));
        let report = |what: String| {
            format!(
                "seed {seed}: {what}\nreplay: LIGHTRAFT_DIFF_SEED={seed} cargo test --release -p sqlite-sm --test differential -- --nocapture\nlines:\n{}",
                history.join("\n")
            )
        };
        for (entry, a, cost_a) in pending.drain(..) {
            let b = results.remove(&entry.index);
            if a != b {
                return Err(report(format!(
                    "entry {} has different results:\n  steady:  {a:?}\n  grouped: {b:?}",
                    entry.index
                )));
            }
            // The budgets must see the same work, or a line near a limit stops on one only.
            let cost_b = costs.get(&entry.index).copied();
            if matches!(entry.payload, Payload::Command(_)) && Some(cost_a) != cost_b {
                return Err(report(format!(
                    "entry {} cost (progress checks, bytes charged) {cost_a:?} on one replica, {cost_b:?} on the other",
                    entry.index
                )));
            }
        }
        let (da, db) = (dump(&steady_path)?, dump(&restarted_path)?);
        if da != db {
            let first = da.iter().zip(&db).position(|(x, y)| x != y).unwrap_or(da.len().min(db.len()));
            return Err(report(format!(
                "after entry {index} the replicas differ at dump line {first}:\n  steady:  {:?}\n  grouped: {:?}",
                da.get(first),
                db.get(first)
            )));
        }
    }
    Ok(errors)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name} must be a whole number, not {value:?}")))
}

#[test]
fn a_replica_restarted_anywhere_holds_exactly_what_one_that_never_stopped_holds() {
    if let Some(seed) = env_u64("LIGHTRAFT_DIFF_SEED") {
        if let Err(report) = run_case(seed, true) {
            panic!("{report}");
        }
        return;
    }
    let first = env_u64("LIGHTRAFT_DIFF_FIRST").unwrap_or(0);
    let cases = env_u64("LIGHTRAFT_DIFF_CASES").unwrap_or(DEFAULT_CASES);
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::new());
    let failed_lines = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + cases {
                    break;
                }
                match run_case(seed, false) {
                    Ok(errors) => {
                        failed_lines.fetch_add(errors as u64, Ordering::Relaxed);
                    }
                    Err(report) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(report),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(report) = failures.first() {
        panic!("{} of {cases} cases failed; the first:\n{report}", failures.len());
    }
    let failed = failed_lines.load(Ordering::Relaxed);
    let total = cases * LINES_PER_CASE as u64;
    println!("{cases} cases, {total} entries on two replicas, {failed} of them failed alike on both");
    // The grammar must exercise both paths, or the comparison proves little.
    assert!(failed > total / 20 && failed < total * 9 / 10, "{failed} of {total} entries failed");
}
