//! sqlite-sm: classification, atomic lines, determinism across replicas and restarts,
//! and the rule that no committed entry can poison a replica.

use std::time::Duration;

use raft_core::{Entry, HardState, Membership, Payload, Ready, SnapshotMeta};
use sqlite_sm::{Kind, Limits, Output, RaftStore, Reader, StateMachine, StatementResult, Value, WriteCommand};

fn open(dir: &tempfile::TempDir, name: &str) -> StateMachine {
    StateMachine::open(&dir.path().join(name)).expect("opens")
}

fn reader(sm: &StateMachine) -> Reader {
    Reader::open(sm.path()).expect("reader opens")
}

fn entry(index: u64, sql: &str, time_ms: i64, seed: u64, limits: Limits) -> Entry {
    let command = WriteCommand { sql: sql.into(), time_ms, seed, limits, origin: None };
    Entry { index, term: 1, payload: Payload::Command(command.encode()) }
}

fn write(index: u64, sql: &str) -> Entry {
    entry(index, sql, 1_700_000_000_000, index, Limits::default())
}

/// Applies the next entry and returns its result (never a storage failure).
fn apply(sm: &mut StateMachine, sql: &str) -> Result<Vec<StatementResult>, String> {
    let index = sm.applied_index() + 1;
    sm.apply(&write(index, sql)).expect("no storage failure").expect("a command has a result")
}

fn apply_limited(sm: &mut StateMachine, sql: &str, limits: Limits) -> Result<Vec<StatementResult>, String> {
    let index = sm.applied_index() + 1;
    sm.apply(&entry(index, sql, 0, 7, limits)).expect("no storage failure").expect("a result")
}

fn ok(sm: &mut StateMachine, sql: &str) -> Vec<StatementResult> {
    apply(sm, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn refused(sm: &mut StateMachine, sql: &str, why: &str) {
    match apply(sm, sql) {
        Err(e) => assert!(e.contains(why), "{sql}: {e}"),
        Ok(r) => panic!("{sql} was applied: {r:?}"),
    }
}

/// Runs a read through a fresh reader and collects its results.
fn query(sm: &StateMachine, sql: &str) -> Result<Vec<StatementResult>, String> {
    let mut results = Vec::new();
    reader(sm).query(sql, &Limits::default(), Duration::from_secs(30), &mut |output| {
        output.collect_into(&mut results);
        true
    })?;
    Ok(results)
}

fn rows(result: &[StatementResult]) -> Vec<Vec<Value>> {
    match result.last() {
        Some(StatementResult::Rows { rows, .. }) => rows.clone(),
        other => panic!("expected rows, got {other:?}"),
    }
}

fn scalar(sm: &StateMachine, sql: &str) -> Value {
    rows(&query(sm, sql).unwrap_or_else(|e| panic!("{sql}: {e}")))[0][0].clone()
}

#[test]
fn sqlite_itself_classifies_reads_and_writes_not_the_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    let r = reader(&sm);
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
        assert_eq!(r.classify(sql), Ok(Kind::Read), "{sql}");
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
        assert_eq!(r.classify(sql), Ok(Kind::Write), "{sql}");
    }
    for bad in ["SELEKT 1", "", " ; ", "\u{0}\u{1}garbage"] {
        assert!(r.classify(bad).expect_err(bad).is_final(), "{bad:?} is wrong on every replica");
    }
    let missing = r.classify("SELECT * FROM missing").expect_err("no such table");
    assert!(!missing.is_final(), "another replica may already have the table");
    // A table created after the reader opened is seen at once.
    ok(&mut sm, "CREATE TABLE later(x)");
    assert_eq!(r.classify("SELECT * FROM later"), Ok(Kind::Read));
}

#[test]
fn what_cannot_be_replicated_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    let refusals = [
        ("BEGIN", "one transaction"),
        ("COMMIT", "one transaction"),
        ("SAVEPOINT s", "one transaction"),
        ("ATTACH 'x.db' AS x", "ATTACH"),
        ("SELECT load_extension('x')", "load_extension"),
        ("SELECT total_changes()", "total_changes"),
        ("SELECT hex(fts3_tokenizer('simple'))", "fts3_tokenizer"),
        ("DELETE FROM _lightraft_applied", "belong to lightraft"),
        ("PRAGMA foreign_keys = ON", "settings are not replicated"),
        ("PRAGMA user_version = 3", "settings are not replicated"),
        ("PRAGMA writable_schema = 1", "settings are not replicated"),
        ("VACUUM INTO '/tmp/lightraft-copy.db'", "VACUUM INTO"),
        ("/* sneaky */ vacuum main into 'x.db'", "VACUUM INTO"),
        // Connection-local objects would vanish on a restarted replica.
        ("CREATE TEMP TABLE tt(x)", "TEMP"),
        ("CREATE TABLE temp.tt(x)", "TEMP"),
        ("CREATE TEMP VIEW v AS SELECT 1", "TEMP"),
        ("CREATE TEMP TRIGGER tr AFTER INSERT ON main.t BEGIN SELECT 1; END", "TEMP"),
        // Node-specific facts: file paths, file layout, checkpoints, statistics.
        ("SELECT * FROM pragma_database_list", "depends on this node"),
        ("PRAGMA database_list", "depends on this node"),
        ("PRAGMA wal_checkpoint", "depends on this node"),
        ("PRAGMA optimize", "depends on this node"),
        ("SELECT * FROM dbstat", "dbstat"),
        ("CREATE VIRTUAL TABLE d USING dbstat", "dbstat"),
        // The raw pages (compiled in for snapshots): reading them shows this node's file,
        // writing them would corrupt every replica.
        ("SELECT data FROM sqlite_dbpage WHERE pgno = 1", "sqlite_dbpage"),
        ("SELECT count(*) FROM sqlite_dbpage('main')", "sqlite_dbpage"),
        ("SELECT pgno FROM main.\"SQLITE_DBPAGE\"", "sqlite_dbpage"),
        ("UPDATE sqlite_dbpage SET data = zeroblob(4096) WHERE pgno = 2", "sqlite_dbpage"),
        ("INSERT INTO sqlite_dbpage VALUES (2, zeroblob(4096))", "sqlite_dbpage"),
        ("DELETE FROM sqlite_dbpage", "sqlite_dbpage"),
        ("CREATE VIRTUAL TABLE p USING sqlite_dbpage", "sqlite_dbpage"),
    ];
    let r = reader(&sm);
    for (sql, reason) in refusals {
        // Refused before it is proposed (or, for table-valued PRAGMAs that SQLite
        // authorizes only when they run, when it is read)...
        match r.classify(sql) {
            Err(err) => assert!(err.message().contains(reason) && err.is_final(), "{sql}: {err}"),
            Ok(Kind::Read) => assert!(query(&sm, sql).expect_err(sql).contains(reason), "{sql}"),
            Ok(Kind::Write) => panic!("{sql} would be proposed"),
        }
        // ...and if a leader proposed it anyway, applying it fails the same way everywhere.
        refused(&mut sm, sql, reason);
    }
    // A trigger's body is judged each time it fires, so one that writes the raw pages
    // may be created but never fires.
    ok(&mut sm, "CREATE TRIGGER pg AFTER INSERT ON t BEGIN UPDATE sqlite_dbpage SET data = NULL; END");
    refused(&mut sm, "INSERT INTO t VALUES (1)", "sqlite_dbpage");
    ok(&mut sm, "DROP TRIGGER pg");
    for allowed in ["PRAGMA table_info(t)", "SELECT * FROM pragma_table_list", "PRAGMA user_version", "PRAGMA encoding"]
    {
        assert_eq!(r.classify(allowed), Ok(Kind::Read), "{allowed}");
    }
}

#[test]
fn a_line_of_several_statements_is_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    assert_eq!(ok(&mut sm, "CREATE TABLE t(x UNIQUE); INSERT INTO t VALUES (1)").len(), 2);
    let failed = apply(&mut sm, "INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)").expect_err("unique violation");
    assert!(failed.contains("UNIQUE"), "{failed}");
    assert_eq!(sm.applied_index(), 2, "a failed line still consumes its index");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(1), "the failed line was rolled back");
}

#[test]
fn replicas_compute_identical_time_and_randomness_even_in_defaults_and_triggers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, r, b, at DEFAULT CURRENT_TIMESTAMP, d DEFAULT (datetime('now')));
                  CREATE TABLE audit(at, r);
                  CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO audit VALUES (CURRENT_TIMESTAMP, random()); END;";
    let insert = "INSERT INTO t(r, b) VALUES (random(), randomblob(8)); INSERT INTO t(r, b) VALUES (random(), hex(randomblob(4)))";
    let dump = |sm: &StateMachine| {
        let t = query(sm, "SELECT * FROM t ORDER BY id").expect("reads");
        let a = query(sm, "SELECT * FROM audit ORDER BY rowid").expect("reads");
        (rows(&t), rows(&a))
    };
    let mut replicas: Vec<StateMachine> = (0..2).map(|i| open(&dir, &format!("r{i}.sqlite"))).collect();
    for (i, sm) in replicas.iter_mut().enumerate() {
        sm.apply(&entry(1, schema, 1_700_000_000_000, 7, Limits::default()))
            .expect("applies")
            .expect("result")
            .expect("ok");
        // Different wall clocks and leftover randomness on each replica must not matter.
        query(sm, &format!("SELECT random(), {i}")).expect("reads");
        sm.apply(&entry(2, insert, 1_700_000_000_000, 42, Limits::default()))
            .expect("applies")
            .expect("result")
            .expect("ok");
    }
    let first = dump(&replicas[0]);
    assert_eq!(first, dump(&replicas[1]));
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
        ok(&mut sm, "CREATE TABLE t(x); INSERT INTO t VALUES (1)");
        apply(&mut sm, "INSERT INTO nowhere VALUES (1)").expect_err("no such table");
        assert_eq!(sm.applied_index(), 3);
    }
    let mut sm = open(&dir, "a.sqlite");
    assert_eq!(sm.applied_index(), 3);
    assert!(sm.apply(&write(3, "INSERT INTO t VALUES (2)")).is_err(), "re-applying is refused");
    assert!(sm.apply(&write(5, "INSERT INTO t VALUES (2)")).is_err(), "skipping is refused");
    ok(&mut sm, "INSERT INTO t VALUES (2)");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(2));
}

#[test]
fn the_raft_store_keeps_term_vote_log_and_start_count_and_knows_whose_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    let entry = |index, term| Entry { index, term, payload: Payload::Command(vec![index as u8]) };
    {
        let mut store = RaftStore::open(&path, "c", 1).expect("opens");
        assert_eq!(store.next_incarnation().expect("counts"), 1);
        let hs = HardState { term: 2, voted_for: Some(3) };
        let first =
            Ready { hard_state: Some(hs), entries: vec![entry(1, 1), entry(2, 1), entry(3, 2)], ..Ready::default() };
        store.persist(&first).expect("persists");
        let second = Ready { truncate_from: Some(2), entries: vec![entry(2, 2)], ..Ready::default() };
        store.persist(&second).expect("truncates and appends");
    }
    let mut store = RaftStore::open(&path, "c", 1).expect("reopens");
    assert_eq!(store.next_incarnation().expect("counts"), 2, "every start counts, across restarts");
    let stored = store.load().expect("loads");
    assert_eq!(stored.hard_state, HardState { term: 2, voted_for: Some(3) });
    assert_eq!(stored.entries, vec![entry(1, 1), entry(2, 2)]);
    assert_eq!(stored.snapshot, SnapshotMeta::default());
    assert!(RaftStore::open(&path, "c", 2).unwrap_err().contains("belongs to node 1"));
    assert!(RaftStore::open(&path, "other", 1).unwrap_err().contains("cluster"));
}

#[test]
fn the_raft_store_compacts_and_gives_the_space_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    let entry = |index, term| Entry { index, term, payload: Payload::Command(vec![7; 1000]) };
    let full = {
        let mut store = RaftStore::open(&path, "c", 1).expect("opens");
        for batch in 0..20 {
            let entries: Vec<Entry> = (1..=1000).map(|i| entry(batch * 1000 + i, 1)).collect();
            store.persist(&Ready { entries, ..Ready::default() }).expect("persists");
        }
        store.disk_bytes(&path)
    };
    let mut store = RaftStore::open(&path, "c", 1).expect("reopens");
    let compacted = Some(SnapshotMeta::at(19990, 1));
    store.persist(&Ready { compacted, ..Ready::default() }).expect("compacts");
    let stored = store.load().expect("loads");
    assert_eq!(stored.snapshot, SnapshotMeta::at(19990, 1));
    assert_eq!(stored.entries.first().map(|e| e.index), Some(19991));
    assert_eq!(stored.entries.len(), 10);
    // Whole segments before the snapshot point are deleted; the one being written stays.
    let now = store.disk_bytes(&path);
    assert!(now < full / 2, "the store went from {full} to {now} bytes");
}

#[test]
fn configurations_in_the_log_and_at_the_snapshot_point_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    let config = Membership { voters: [1, 2, 3].into(), learners: [4].into(), addresses: [(4, "h:1".into())].into() };
    let entries = vec![
        Entry { index: 1, term: 1, payload: Payload::Noop },
        Entry { index: 2, term: 1, payload: Payload::Membership(config.clone()) },
        Entry { index: 3, term: 1, payload: Payload::Command(b"x".to_vec()) },
    ];
    {
        let mut store = RaftStore::open(&path, "c", 1).expect("opens");
        store.persist(&Ready { entries: entries.clone(), ..Ready::default() }).expect("persists");
    }
    let mut store = RaftStore::open(&path, "c", 1).expect("reopens");
    assert_eq!(store.load().expect("loads").entries, entries);
    let compacted = SnapshotMeta { index: 2, term: 1, membership: config };
    store.persist(&Ready { compacted: Some(compacted.clone()), ..Ready::default() }).expect("compacts");
    drop(store);
    let stored = RaftStore::open(&path, "c", 1).expect("reopens").load().expect("loads");
    assert_eq!((stored.snapshot, stored.entries), (compacted, entries[2..].to_vec()));
}

#[test]
fn an_interrupted_snapshot_install_is_finished_or_forgotten_at_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    let entry = |index, term| Entry { index, term, payload: Payload::Noop };
    // A configuration (§4) travels with the snapshot point.
    let membership = |index| match index {
        0 => Membership::default(),
        _ => Membership {
            voters: [1, 2].into(),
            learners: [index].into(),
            addresses: [(index, format!("host{index}"))].into(),
        },
    };
    let meta = |index, term| SnapshotMeta { index, term, membership: membership(index) };
    let mut store = RaftStore::open(&path, "c", 1).expect("opens");
    store.persist(&Ready { entries: (1..=5).map(|i| entry(i, 1)).collect(), ..Ready::default() }).expect("log");
    // The install was recorded, but the state database still holds index 5: forget it.
    store.begin_install(meta(9, 2), None).expect("recorded");
    let stored = store.resume_install(5).expect("resumes");
    assert_eq!((stored.pending_install, stored.snapshot, stored.entries.len()), (None, meta(0, 0), 5));
    // The state database holds the snapshot's index 9: the log after it is gone.
    store.begin_install(meta(9, 2), None).expect("recorded");
    let stored = store.resume_install(9).expect("resumes");
    assert_eq!((stored.pending_install, stored.snapshot, stored.entries.len()), (None, meta(9, 2), 0));
    // An install carried out whole, with entries after it in the same ready.
    let ready = Ready { install_snapshot: Some(meta(12, 3)), entries: vec![entry(13, 3)], ..Ready::default() };
    store.persist(&ready).expect("installs");
    let stored = store.load().expect("loads");
    assert_eq!((stored.snapshot, stored.entries), (meta(12, 3), vec![entry(13, 3)]));
}

#[test]
fn a_runaway_line_is_stopped_the_same_way_on_every_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let mut sm = open(&dir, "a.sqlite");
    let err = query(&sm, endless).expect_err("stopped");
    assert!(err.contains("SQLite steps"), "{err}");
    // A write that runs away is rolled back, deterministically, and the replica goes on.
    let runaway_write = "CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
    let limits = Limits { max_steps: 1_000_000, ..Limits::default() };
    assert!(apply_limited(&mut sm, runaway_write, limits).expect_err("stopped").contains("1000000 SQLite steps"));
    assert!(reader(&sm).classify("SELECT * FROM t").is_err(), "the whole line was rolled back");
    ok(&mut sm, "CREATE TABLE t(x)");
}

#[test]
fn reads_stop_at_their_deadline_and_stream_until_the_reader_stops_listening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sm = open(&dir, "a.sqlite");
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let unlimited = Limits { max_steps: u64::MAX / 2, ..Limits::default() };
    let err = reader(&sm).query(endless, &unlimited, Duration::from_millis(200), &mut |_| true).expect_err("deadline");
    assert!(err.contains("stopped after 200ms"), "{err}");
    let mut seen = 0;
    let rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
    let err = reader(&sm)
        .query(rows, &unlimited, Duration::from_secs(30), &mut |output| {
            seen += matches!(output, Output::Row(_)) as u32;
            seen < 100
        })
        .expect_err("cancelled");
    assert!(err.contains("went away") && seen == 100, "{err} after {seen} rows");
    let small = Limits { max_result_bytes: 10_000, ..Limits::default() };
    let err = reader(&sm).query(rows, &small, Duration::from_secs(30), &mut |_| true).expect_err("too large");
    assert!(err.contains("larger than 10000 bytes"), "{err}");
    let err = reader(&sm).query("CREATE TABLE x(y)", &small, Duration::from_secs(30), &mut |_| true).expect_err("ro");
    assert!(err.contains("read-only"), "{err}");
}

// ---- a committed entry can never poison the state machine -----------------------------------

#[test]
fn autoincrement_past_the_largest_rowid_is_the_entrys_error_not_a_full_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, b); INSERT INTO t(b) VALUES (1)");
    ok(&mut sm, "UPDATE sqlite_sequence SET seq = 9223372036854775807");
    refused(&mut sm, "INSERT INTO t(b) VALUES (2)", "AUTOINCREMENT");
    ok(&mut sm, "INSERT INTO t(id, b) VALUES (5, 3)");
    drop(sm);
    let mut sm = open(&dir, "a.sqlite");
    refused(&mut sm, "INSERT INTO t(b) VALUES (2)", "AUTOINCREMENT");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(2));
}

#[test]
fn a_failing_disk_stops_the_node_and_the_entry_applies_once_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    for code in [rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_IOERR_WRITE] {
        sqlite_sm::vfs::inject_write_failures(1000, code);
        let failed = sm.apply(&write(2, "INSERT INTO t VALUES (1)"));
        sqlite_sm::vfs::inject_write_failures(0, 0);
        let err = failed.expect_err("the disk failed: this node must stop");
        assert!(err.to_string().contains("write"), "{err}");
        assert_eq!(sm.applied_index(), 1, "a failed apply does not count");
        drop(sm);
        sm = open(&dir, "a.sqlite");
        assert_eq!(sm.applied_index(), 1);
    }
    ok(&mut sm, "INSERT INTO t VALUES (1)");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(1));
}

/// Applies `entries` with as many groups as it takes; returns the groups' sizes and every
/// command's result.
fn apply_grouped(sm: &mut StateMachine, entries: &[Entry]) -> (Vec<usize>, Vec<(u64, sqlite_sm::LineResult)>) {
    let (mut sizes, mut results) = (Vec::new(), Vec::new());
    let mut rest = entries;
    while !rest.is_empty() {
        let group = sm.apply_group(rest).expect("no storage failure");
        sizes.push(group.count);
        results.extend(group.results);
        rest = &rest[group.count..];
    }
    (sizes, results)
}

#[test]
fn a_line_that_fails_inside_a_group_is_rolled_back_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x PRIMARY KEY)");
    let lines = [
        "INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (2)",
        "INSERT INTO t VALUES (3); INSERT INTO t VALUES (1)",
        "INSERT INTO t VALUES (4)",
        "INSERT INTO t VALUES (5)",
    ];
    let entries: Vec<Entry> = lines.iter().enumerate().map(|(i, sql)| write(2 + i as u64, sql)).collect();
    let (sizes, results) = apply_grouped(&mut sm, &entries);
    // The two lines before the failing one commit together; it runs alone; the rest group.
    assert_eq!(sizes, vec![2, 1, 2], "groups");
    let failed: Vec<u64> = results.iter().filter(|(_, r)| r.is_err()).map(|(i, _)| *i).collect();
    assert_eq!(failed, vec![4], "{results:?}");
    assert_eq!(sm.applied_index(), 6);
    assert_eq!(
        rows(&query(&sm, "SELECT group_concat(x) FROM t").expect("reads")),
        vec![vec![Value::Text("1,2,4,5".into())]]
    );
}

#[test]
fn a_deferred_foreign_key_count_left_by_one_line_never_reaches_the_next() {
    // Orphans left behind by a DROP TABLE make the transaction's count of deferred
    // violations go below zero (line 6); grouped with line 7, line 7's violation would be
    // cancelled out and it would commit, where alone its COMMIT fails.
    let lines = [
        "CREATE TABLE p(a); CREATE UNIQUE INDEX pu ON p(a); CREATE TABLE c(x REFERENCES p(a) DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO p VALUES (5); INSERT INTO c VALUES (5), (5)",
        "DROP INDEX pu",
        "DROP TABLE p",
        "CREATE TABLE p(a PRIMARY KEY)",
        "INSERT INTO c VALUES (6); INSERT INTO p VALUES (5)",
        "INSERT INTO c VALUES (7)",
    ];
    let entries: Vec<Entry> = lines.iter().enumerate().map(|(i, sql)| write(1 + i as u64, sql)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alone = open(&dir, "alone.sqlite");
    let expected: Vec<(u64, sqlite_sm::LineResult)> =
        entries.iter().map(|e| (e.index, alone.apply(e).expect("no storage failure").expect("a result"))).collect();
    let mut grouped = open(&dir, "grouped.sqlite");
    let (_, results) = apply_grouped(&mut grouped, &entries);
    assert_eq!(results, expected);
    let content = "SELECT group_concat(x) FROM (SELECT x FROM c ORDER BY rowid)";
    assert_eq!(rows(&query(&grouped, content).expect("reads")), rows(&query(&alone, content).expect("reads")));
}

#[test]
fn a_disk_failing_during_a_group_applies_none_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    let entries: Vec<Entry> = (2..=4).map(|i| write(i, "INSERT INTO t VALUES (1)")).collect();
    sqlite_sm::vfs::inject_write_failures(1000, rusqlite::ffi::SQLITE_IOERR_WRITE);
    let failed = sm.apply_group(&entries);
    sqlite_sm::vfs::inject_write_failures(0, 0);
    assert!(failed.is_err(), "the disk failed: this node must stop");
    assert_eq!(sm.applied_index(), 1, "nothing of the group counts");
    drop(sm);
    let mut sm = open(&dir, "a.sqlite");
    assert_eq!(sm.applied_index(), 1);
    let (sizes, _) = apply_grouped(&mut sm, &entries);
    assert_eq!(sizes, vec![3]);
    assert_eq!(rows(&query(&sm, "SELECT count(*) FROM t").expect("reads")), vec![vec![Value::Integer(3)]]);
}

#[test]
fn shadow_tables_and_the_schema_are_read_only_so_virtual_tables_cannot_be_corrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE VIRTUAL TABLE ft USING fts5(body); CREATE VIRTUAL TABLE rt USING rtree(id, x0, x1)");
    ok(&mut sm, "INSERT INTO ft VALUES ('hello world'); INSERT INTO rt VALUES (1, 0, 5)");
    for sql in [
        "INSERT INTO ft_data VALUES (10, x'00ff')",
        "DELETE FROM ft_data",
        "UPDATE rt_node SET data = x'00'",
        "DELETE FROM rt_parent",
        "DROP TABLE rt_node",
        "ALTER TABLE ft_idx RENAME TO x",
    ] {
        refused(&mut sm, sql, "may not be");
    }
    refused(&mut sm, "UPDATE sqlite_schema SET sql = 'x'", "may not be modified");
    ok(&mut sm, "INSERT INTO ft VALUES ('hello again'); INSERT INTO rt VALUES (2, 1, 3)");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM ft WHERE ft MATCH 'hello'"), Value::Integer(2));
    assert_eq!(scalar(&sm, "SELECT count(*) FROM rt WHERE x0 <= 2 AND x1 >= 2"), Value::Integer(2));
}

#[test]
fn a_deferred_foreign_key_failing_at_commit_is_the_entrys_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE p(id PRIMARY KEY); CREATE TABLE c(pid REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)");
    refused(&mut sm, "INSERT INTO c VALUES (5)", "FOREIGN KEY");
    ok(&mut sm, "INSERT INTO c VALUES (6); INSERT INTO p VALUES (6)");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM c"), Value::Integer(1));
}

#[test]
fn the_bookkeeping_table_is_out_of_reach() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    for (sql, why) in [
        ("CREATE TEMP TABLE _lightraft_applied(id, applied_index)", "TEMP"),
        ("CREATE TRIGGER tr AFTER UPDATE ON _lightraft_applied BEGIN INSERT INTO t VALUES (1); END", "lightraft"),
        ("CREATE TEMP VIEW v AS SELECT * FROM _lightraft_applied", "TEMP"),
        ("CREATE VIEW _lightraft_v AS SELECT 1", "lightraft"),
        ("CREATE INDEX i ON _lightraft_applied(applied_index)", "lightraft"),
        ("CREATE TABLE _LightRaft_mine(x)", "lightraft"),
        ("ALTER TABLE t RENAME TO _lightraft_t", "lightraft"),
        ("CREATE VIRTUAL TABLE _lightraft_fts USING fts5(x)", "lightraft"),
        ("UPDATE _lightraft_applied SET applied_index = 0", "lightraft"),
        ("DROP TABLE _lightraft_applied", "lightraft"),
    ] {
        refused(&mut sm, sql, why);
    }
    ok(&mut sm, "INSERT INTO t VALUES (1)");
    let applied = sm.applied_index();
    drop(sm);
    let sm = open(&dir, "a.sqlite");
    assert_eq!(sm.applied_index(), applied, "the durable applied index kept up with every entry");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(1), "nothing was applied twice");
}

#[test]
fn a_row_may_not_take_the_largest_rowid_so_sqlite_never_picks_one_at_random() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE u(a); CREATE TABLE w(a) ");
    refused(&mut sm, "INSERT INTO u(rowid, a) VALUES (9223372036854775807, 1)", "largest rowid");
    refused(
        &mut sm,
        "INSERT INTO u(rowid, a) VALUES (9223372036854775806, 1); INSERT INTO u(a) VALUES (2); INSERT INTO u(a) VALUES (3)",
        "largest rowid",
    );
    refused(&mut sm, "INSERT INTO u(rowid, a) VALUES (9223372036854775807, 1), (NULL, 2)", "largest rowid");
    ok(&mut sm, "INSERT INTO w(rowid, a) VALUES (1, 1)");
    refused(&mut sm, "UPDATE w SET rowid = 9223372036854775807", "largest rowid");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM u"), Value::Integer(0), "every such line was rolled back");
    assert_eq!(scalar(&sm, "SELECT max(rowid) FROM w"), Value::Integer(1));
}

#[test]
fn values_are_limited_in_size_before_they_are_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    for sql in [
        "INSERT INTO t VALUES (zeroblob(400000000))",
        "INSERT INTO t VALUES (randomblob(400000000))",
        "INSERT INTO t VALUES (printf('%.*c', 100000000, 'x'))",
        "INSERT INTO t VALUES (replace(hex(zeroblob(5000000)), '0', '0123456789'))",
        "INSERT INTO t SELECT group_concat(hex(zeroblob(100000))) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c)",
    ] {
        refused(&mut sm, sql, "too big");
    }
    let err = query(&sm, "SELECT length(zeroblob(400000000))").expect_err("reads are limited too");
    assert!(err.contains("too big"), "{err}");
}

#[test]
fn one_line_cannot_grow_the_database_beyond_its_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    let fill = |n: u32| {
        format!("INSERT INTO t SELECT zeroblob(100000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {n}) SELECT x FROM c)")
    };
    let per_line = Limits { max_growth_bytes: 1 << 20, ..Limits::default() };
    let err = apply_limited(&mut sm, &fill(20), per_line).expect_err("grows 2 MB");
    assert!(err.contains("larger than allowed"), "{err}");
    apply_limited(&mut sm, &fill(5), per_line).expect("grows 0.5 MB");
    let total = Limits { max_database_bytes: 2 << 20, ..Limits::default() };
    apply_limited(&mut sm, &fill(10), total).expect("1.5 MB in 2");
    let err = apply_limited(&mut sm, &fill(10), total).expect_err("2.5 MB in 2");
    assert!(err.contains("larger than allowed"), "{err}");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(15));
}

#[test]
fn a_write_whose_results_are_too_large_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    let small = Limits { max_result_bytes: 50_000, ..Limits::default() };
    let sql = "INSERT INTO t SELECT hex(zeroblob(1000)) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT x FROM c) RETURNING x";
    assert!(apply_limited(&mut sm, sql, small).expect_err("too large").contains("larger than 50000 bytes"));
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(0));
}

#[test]
fn temporary_space_is_budgeted_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    let sort = "INSERT INTO t SELECT x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000) SELECT hex(randomblob(1000)) AS x FROM c) ORDER BY x";
    let small = Limits { max_temp_bytes: 1 << 20, max_growth_bytes: 1 << 30, ..Limits::default() };
    assert!(apply_limited(&mut sm, sort, small).expect_err("spills").contains("temporary space"));
    let roomy = Limits { max_temp_bytes: 1 << 30, max_growth_bytes: 1 << 30, ..Limits::default() };
    apply_limited(&mut sm, sort, roomy).expect("fits");
}

// ---- replicas are identical, restarted or not -------------------------------------------------

/// Applies `lines` to two replicas, restarting the second before every line in
/// `restart_before`, and returns what each saw of `probe` after the last line.
fn both(lines: &[&str], restart_before: &[usize], probe: &str) -> (Vec<Vec<Value>>, Vec<Vec<Value>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steady = open(&dir, "steady.sqlite");
    let mut restarted = open(&dir, "restarted.sqlite");
    for (i, line) in lines.iter().enumerate() {
        if restart_before.contains(&i) {
            drop(restarted);
            restarted = open(&dir, "restarted.sqlite");
        }
        let a = apply(&mut steady, line);
        let b = apply(&mut restarted, line);
        assert_eq!(a, b, "line {i}: {line}");
    }
    (rows(&query(&steady, probe).expect("probe")), rows(&query(&restarted, probe).expect("probe")))
}

#[test]
fn changes_reads_the_same_on_a_restarted_replica() {
    let lines = [
        "CREATE TABLE t(x); CREATE TABLE log(n)",
        "INSERT INTO t VALUES (1), (2), (3)",
        "INSERT INTO log SELECT changes()",
    ];
    let (steady, restarted) = both(&lines, &[2], "SELECT n FROM log");
    assert_eq!(steady, restarted);
}

#[test]
fn schema_order_reads_the_same_on_a_restarted_replica() {
    let lines = [
        "CREATE TABLE a(x); CREATE TABLE b(x); CREATE TABLE c(x); CREATE INDEX ia ON a(x); CREATE INDEX ic ON c(x)",
        "DROP TABLE b; CREATE TABLE d(x); CREATE TABLE b2(x); INSERT INTO a VALUES (1), (2); INSERT INTO c VALUES (3)",
        "CREATE TABLE seen(name, n)",
        "INSERT INTO seen SELECT name, ncol FROM pragma_table_list WHERE schema = 'main'",
        "ANALYZE",
        "INSERT INTO seen SELECT tbl || '/' || ifnull(idx, ''), rowid FROM sqlite_stat1",
    ];
    for restart in [vec![], vec![3], vec![4], vec![5], vec![3, 5]] {
        let (steady, restarted) = both(&lines, &restart, "SELECT * FROM seen ORDER BY rowid");
        assert!(steady.len() > 6, "{steady:?}");
        assert_eq!(steady, restarted, "restarted before lines {restart:?}");
    }
}

#[test]
fn memory_hungry_lines_are_the_entrys_error_never_the_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "CREATE TABLE t(x)");
    // concat() asks for the total of its arguments at once: 2 GiB here.
    let huge = format!("INSERT INTO t VALUES (length(concat({})))", vec!["zeroblob(8388608)"; 256].join(", "));
    refused(&mut sm, &huge, "at once");
    // One step can copy megabytes: thousands of them are work the step budget cannot see.
    let grind = "INSERT INTO t SELECT count(*) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 6000) SELECT i FROM c) WHERE length(hex(zeroblob(4000000 + i))) > 0";
    let started = std::time::Instant::now();
    refused(&mut sm, grind, "large values");
    assert!(started.elapsed() < Duration::from_secs(30), "stopped early, not after hours");
    let err = query(&sm, &huge.replace("INSERT INTO t VALUES", "SELECT")).expect_err("reads are capped too");
    assert!(err.contains("at once"), "{err}");
    // Matching a long LIKE pattern costs its length times the text's, in one step.
    let pattern = "%a".repeat(200);
    refused(&mut sm, &format!("INSERT INTO t SELECT 'aaa' LIKE '{pattern}'"), "too complex");
    ok(&mut sm, "INSERT INTO t VALUES (1)");
    // A real allocation failure is this node's problem: it stops, and the entry is not applied.
    sqlite_sm::mem::inject_failures(1000);
    let failed = sm.apply(&write(sm.applied_index() + 1, "INSERT INTO t VALUES (zeroblob(1000000))"));
    sqlite_sm::mem::inject_failures(0);
    assert!(failed.expect_err("out of memory").to_string().contains("out of memory"));
    drop(sm);
    let mut sm = open(&dir, "a.sqlite");
    ok(&mut sm, "INSERT INTO t VALUES (zeroblob(1000000))");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM t"), Value::Integer(2));
}

#[test]
fn statistics_change_only_through_analyze() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    ok(
        &mut sm,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a); CREATE INDEX ia ON t(a); INSERT INTO t(a) VALUES (1), (2), (2)",
    );
    ok(&mut sm, "ANALYZE");
    for sql in [
        "UPDATE sqlite_stat1 SET stat = '1000000 1'",
        "INSERT INTO sqlite_stat1 VALUES ('t', 'ia', '5 5')",
        "DELETE FROM sqlite_stat1",
        "DELETE FROM sqlite_stat4",
        "INSERT INTO Sqlite_Stat4 SELECT * FROM sqlite_stat4",
    ] {
        refused(&mut sm, sql, "only through ANALYZE");
    }
    ok(&mut sm, "INSERT INTO t(a) VALUES (3); ANALYZE");
    assert_eq!(scalar(&sm, "SELECT count(*) FROM sqlite_stat1 WHERE idx = 'ia'"), Value::Integer(1));
    // STAT4 samples are whole index keys, loaded by every connection: not kept.
    assert_eq!(scalar(&sm, "SELECT count(*) FROM sqlite_stat4"), Value::Integer(0));
}

#[test]
fn the_schema_stays_within_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(&dir, "a.sqlite");
    // A schema is loaded by every connection, whole; its text is bounded (in bytes).
    let wide = |i: usize| format!("CREATE TABLE w{i}(x DEFAULT '{}')", "é".repeat(150_000));
    let line: Vec<String> = (0..4).map(wide).collect();
    refused(&mut sm, &line.join("; "), "at most 10000 objects and 1048576 bytes");
    ok(&mut sm, &line[..3].join("; "));
    refused(&mut sm, &line[3], "1048576 bytes");
}

#[test]
fn checkpoints_and_caches_do_not_count_against_a_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = open(&dir, "a.sqlite");
    let mut b = open(&dir, "b.sqlite");
    ok(&mut a, "CREATE TABLE t(x)");
    ok(&mut b, "CREATE TABLE t(x)");
    // A read on `a` holds an old snapshot through two big lines, so after the second, a's
    // checkpoint has nothing it may copy and does nothing, while b's walks the line's
    // 30,000 WAL frames (allocating more than 64 KiB). That is each node's timing, not
    // the lines' work, and must not count against them.
    let reader = rusqlite::Connection::open(a.path()).expect("opens");
    reader.execute_batch("BEGIN").expect("begins");
    let _: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("reads");
    let fill = "INSERT INTO t SELECT randomblob(4000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 30000) SELECT x FROM c)";
    let roomy = Limits { max_growth_bytes: 1 << 30, ..Limits::default() };
    for line in 0..2 {
        apply_limited(&mut a, fill, roomy).expect("fits");
        apply_limited(&mut b, fill, roomy).expect("fits");
        assert_eq!(a.last_line_cost(), b.last_line_cost(), "line {line} costs the same whatever else holds the file");
    }
    reader.execute_batch("COMMIT").expect("ends");
}
