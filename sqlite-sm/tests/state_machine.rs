//! sqlite-sm: classification, atomic lines, determinism across replicas, restarts.

use raft_core::{Entry, HardState, Payload};
use sqlite_sm::{Kind, RaftStore, StateMachine, StatementResult, Value, WriteCommand};

fn open(dir: &tempfile::TempDir, name: &str) -> StateMachine {
    StateMachine::open(&dir.path().join(name)).expect("opens")
}

fn write(index: u64, sql: &str, time_ms: i64, seed: u64) -> Entry {
    let command = WriteCommand { sql: sql.into(), time_ms, seed };
    Entry { index, term: 1, payload: Payload::Command(command.encode()) }
}

fn rows(result: &[StatementResult]) -> Vec<Vec<Value>> {
    match result.last() {
        Some(StatementResult::Rows { rows, .. }) => rows.clone(),
        other => panic!("expected rows, got {other:?}"),
    }
}

#[test]
fn sqlite_itself_classifies_reads_and_writes_not_the_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    sm.apply(&write(1, "CREATE TABLE t(x)", 0, 0)).expect("applies").expect("a result").expect("ok");
    let reads = [
        "SELECT * FROM t",
        "   select 1",
        "-- a comment\nSELECT 1",
        "/* block */ SELECT 2",
        "WITH c AS (SELECT 1) SELECT * FROM c",
        "EXPLAIN SELECT * FROM t",
        "PRAGMA table_info(t)",
        "SELECT 1; SELECT 2",
    ];
    for sql in reads {
        assert_eq!(sm.classify(sql), Ok(Kind::Read), "{sql}");
    }
    let writes = [
        "INSERT INTO t VALUES (1)",
        "  insert into t values (1)",
        "WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c",
        "/* hi */ DELETE FROM t",
        "SELECT 1; UPDATE t SET x = 2",
        "CREATE TABLE u(y); INSERT INTO u VALUES (1)",
    ];
    for sql in writes {
        assert_eq!(sm.classify(sql), Ok(Kind::Write), "{sql}");
    }
    for bad in ["SELEKT 1", "", " ; ", "\u{0}\u{1}garbage"] {
        assert!(sm.classify(bad).expect_err(bad).is_final(), "{bad:?} is wrong on every replica");
    }
    let missing = sm.classify("SELECT * FROM missing").expect_err("no such table");
    assert!(!missing.is_final(), "another replica may already have the table");
}

#[test]
fn what_cannot_be_replicated_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sm = open(&dir, "a.sqlite");
    let refused = [
        ("BEGIN", "one transaction"),
        ("COMMIT", "one transaction"),
        ("SAVEPOINT s", "one transaction"),
        ("ATTACH 'x.db' AS x", "ATTACH"),
        ("SELECT load_extension('x')", "load_extension"),
        ("SELECT total_changes()", "total_changes"),
        ("DELETE FROM _lightraft_applied", "belongs to lightraft"),
        ("PRAGMA foreign_keys = ON", "settings are not replicated"),
        ("PRAGMA user_version = 3", "settings are not replicated"),
        ("VACUUM INTO '/tmp/lightraft-copy.db'", "VACUUM INTO"),
        ("/* sneaky */ vacuum main into 'x.db'", "VACUUM INTO"),
    ];
    for (sql, reason) in refused {
        let err = sm.classify(sql).expect_err(sql);
        assert!(err.message().contains(reason) && err.is_final(), "{sql}: {err}");
    }
}

#[test]
fn a_line_of_several_statements_is_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    let ok = sm.apply(&write(1, "CREATE TABLE t(x UNIQUE); INSERT INTO t VALUES (1)", 0, 0)).expect("applies");
    assert_eq!(ok.expect("a result").expect("ok").len(), 2);
    let failed = sm.apply(&write(2, "INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)", 0, 0)).expect("applies");
    assert!(failed.expect("a result").expect_err("unique violation").contains("UNIQUE"));
    assert_eq!(sm.applied_index(), 2, "a failed line still consumes its index");
    let count = sm.query("SELECT count(*) FROM t").expect("reads");
    assert_eq!(rows(&count), vec![vec![Value::Integer(1)]], "the first insert of the failed line was rolled back");
}

#[test]
fn replicas_compute_identical_time_and_randomness_even_in_defaults_and_triggers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, r, b, at DEFAULT CURRENT_TIMESTAMP, d DEFAULT (datetime('now')));
                  CREATE TABLE audit(at, r);
                  CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (CURRENT_TIMESTAMP, random()); END;";
    let insert = "INSERT INTO t(r, b) VALUES (random(), randomblob(8)); INSERT INTO t(r, b) VALUES (random(), hex(randomblob(4)))";
    let dump = |sm: &mut StateMachine| {
        let t = sm.query("SELECT * FROM t ORDER BY id").expect("reads");
        let a = sm.query("SELECT * FROM audit ORDER BY rowid").expect("reads");
        (rows(&t), rows(&a))
    };
    let mut replicas: Vec<StateMachine> = (0..2).map(|i| open(&dir, &format!("r{i}.sqlite"))).collect();
    for (i, sm) in replicas.iter_mut().enumerate() {
        sm.apply(&write(1, schema, 1_700_000_000_000, 7)).expect("applies").expect("result").expect("ok");
        // Different wall clocks and leftover randomness on each replica must not matter.
        sm.query(&format!("SELECT random(), {i}")).expect("reads");
        sm.apply(&write(2, insert, 1_700_000_000_000, 42)).expect("applies").expect("result").expect("ok");
    }
    let first = dump(&mut replicas[0]);
    assert_eq!(first, dump(&mut replicas[1]));
    assert_eq!(first.0[0][3], Value::Text("2023-11-14 22:13:20".into()), "CURRENT_TIMESTAMP is the leader's time");
    assert_eq!(first.0[0][4], Value::Text("2023-11-14 22:13:20".into()), "datetime('now') is the leader's time");
    assert_ne!(first.0[0][1], first.0[1][1], "random() still varies within an entry");
}

#[test]
fn the_applied_index_survives_a_restart_so_nothing_is_skipped_or_repeated() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut sm = open(&dir, "a.sqlite");
        sm.apply(&Entry { index: 1, term: 1, payload: Payload::Noop }).expect("applies");
        sm.apply(&write(2, "CREATE TABLE t(x); INSERT INTO t VALUES (1)", 0, 0)).expect("applies");
        sm.apply(&write(3, "INSERT INTO nowhere VALUES (1)", 0, 0)).expect("applies");
        assert_eq!(sm.applied_index(), 3);
    }
    let mut sm = open(&dir, "a.sqlite");
    assert_eq!(sm.applied_index(), 3);
    assert!(sm.apply(&write(3, "INSERT INTO t VALUES (2)", 0, 0)).is_err(), "re-applying is refused");
    assert!(sm.apply(&write(5, "INSERT INTO t VALUES (2)", 0, 0)).is_err(), "skipping is refused");
    sm.apply(&write(4, "INSERT INTO t VALUES (2)", 0, 0)).expect("applies");
    assert_eq!(rows(&sm.query("SELECT count(*) FROM t").expect("reads")), vec![vec![Value::Integer(2)]]);
}

#[test]
fn the_raft_store_keeps_term_vote_and_log_and_knows_whose_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    let entry = |index, term| Entry { index, term, payload: Payload::Command(vec![index as u8]) };
    {
        let mut store = RaftStore::open(&path, "c", 1).expect("opens");
        let hs = HardState { term: 2, voted_for: Some(3) };
        store.persist(Some(hs), None, &[entry(1, 1), entry(2, 1), entry(3, 2)]).expect("persists");
        store.persist(None, Some(2), &[entry(2, 2)]).expect("truncates and appends");
    }
    let store = RaftStore::open(&path, "c", 1).expect("reopens");
    let (hs, entries) = store.load().expect("loads");
    assert_eq!(hs, HardState { term: 2, voted_for: Some(3) });
    assert_eq!(entries, vec![entry(1, 1), entry(2, 2)]);
    assert!(RaftStore::open(&path, "c", 2).unwrap_err().contains("belongs to node 1"));
    assert!(RaftStore::open(&path, "other", 1).unwrap_err().contains("cluster"));
}

#[test]
fn a_runaway_line_is_stopped_the_same_way_on_every_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let mut sm = open(&dir, "a.sqlite");
    let err = sm.query(endless).expect_err("stopped");
    assert!(err.contains("SQLite steps"), "{err}");
    // A write that runs away is rolled back, deterministically, and the replica goes on.
    let runaway_write = "CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
    let result = sm.apply(&write(1, runaway_write, 0, 0)).expect("applies").expect("a result");
    assert!(result.expect_err("stopped").contains("SQLite steps"));
    assert!(sm.classify("SELECT * FROM t").is_err(), "the whole line was rolled back");
    sm.apply(&write(2, "CREATE TABLE t(x)", 0, 0)).expect("applies").expect("a result").expect("ok");
}
