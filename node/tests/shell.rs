//! The session as a person at `nc` meets it, end to end over TCP: statements over several
//! lines, the dot commands, output that cannot hurt the terminal, and `.dump` replayed
//! into a fresh cluster.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{count, until_ok, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `input` to node `i` in the default (table) mode, ends with `.quit`, and returns
/// everything the session wrote after its banner.
async fn transcript(cluster: &Cluster, i: usize, input: &str) -> String {
    let mut stream = TcpStream::connect(cluster.client_addrs[i]).await.expect("connect");
    stream.write_all(format!("{input}\n.quit\n").as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut buf = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            other => panic!("the session did not finish ({other:?}): {}", String::from_utf8_lossy(&out)),
        }
    }
    let text = String::from_utf8(out).expect("UTF-8");
    let start = text.find("Connected to node").expect("banner");
    text[start..].to_string()
}

/// A one-node cluster whose leader is ready for writes.
async fn one_node() -> Cluster {
    let cluster = Cluster::start(1);
    cluster.leader().await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_several_lines_runs_once_when_it_ends() {
    let cluster = one_node().await;
    let input = "CREATE TABLE t (\n  x INTEGER,\n  y TEXT\n);\n-- a comment alone\n;;\n\
                 INSERT INTO t VALUES (1, 'a\nb'),\n  (2, 'c');\n/* a block\ncomment */\n\
                 CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  SELECT 1;\nEND;\nSELECT count(*) FROM t;";
    let out = transcript(&cluster, 0, input).await;
    assert!(!out.contains("ERROR"), "{out}");
    // Each continued line gets the continuation prompt, and each statement one answer.
    // (A statement that spans lines ends with `;`: the block comment waits for one.)
    assert_eq!(out.matches("lightraft-# ").count(), 3 + 2 + 4, "{out}");
    assert_eq!(out.matches("rows affected").count() + out.matches("row affected").count(), 3, "{out}");
    assert!(out.contains("| 2        |"), "{out}");
    // The string kept its line break.
    let mut c = cluster.client(0).await;
    assert_eq!(count(&until_ok(&mut c, "SELECT count(*) FROM t WHERE y = 'a' || char(10) || 'b'").await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_mode_stays_one_line_one_request_and_refuses_a_cut_statement() {
    let cluster = one_node().await;
    let mut c = cluster.client(0).await;
    let reply = c.request("CREATE TABLE t (").await.expect("reply");
    assert_eq!(reply["error"], "incomplete input", "{reply}");
    // Nothing ran, even after a complete statement in the same line.
    let reply = c.request("CREATE TABLE a (x); INSERT INTO a VALUES (").await.expect("reply");
    assert_eq!(reply["error"], "incomplete input", "{reply}");
    let reply = c.request("SELECT count(*) FROM sqlite_schema WHERE name = 'a'").await.expect("reply");
    assert_eq!(count(&reply), 0, "{reply}");
    // A BLOB is told from text that looks like hex.
    let reply = c.request("SELECT x'00ff', '00ff'").await.expect("reply");
    assert_eq!(reply["rows"][0], serde_json::json!([{"blob": "00ff"}, "00ff"]), "{reply}");
    // SQLite would stop at a NUL byte and drop the rest silently: refused instead.
    let reply = c.send_raw(b"SELECT 1;\0 CREATE TABLE hidden (x)").await.expect("reply");
    assert!(reply["error"].as_str().is_some_and(|e| e.contains("NUL")), "{reply}");
    let reply = c.request("SELECT count(*) FROM sqlite_schema WHERE name = 'hidden'").await.expect("reply");
    assert_eq!(count(&reply), 0, "{reply}");
}

/// A line of one INSERT, UPDATE, DELETE or REPLACE statement goes to Raft without
/// SQLite's judgement first (it is a write under any schema), and one of one SELECT to a
/// reader (a read under any schema); lines of several statements are still judged.
/// Whatever is wrong with any of them must still come back as SQLite's own error, change
/// nothing, and leave the node serving; and the shell must still wait for the rest of a
/// statement cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_sent_without_classifying_still_fail_cleanly_and_can_span_lines() {
    let cluster = one_node().await;
    let mut c = cluster.client(0).await;
    until_ok(&mut c, "CREATE TABLE a (x UNIQUE)").await;
    for (line, error) in [
        ("INSERT INTO a VALUES (", "incomplete input"),
        ("  /* note */ insert INTO missing VALUES (1)", "no such table: missing"),
        ("UPDATE a SET nope = 1", "no such column: nope"),
        ("DELETE FROM a WHERE", "incomplete input"),
        ("REPLACE INTO a VALUES (1), (1); SELECT * FROM nowhere", "no such table: nowhere"),
        ("INSERT INTO a VALUES (1); ATTACH 'x.db' AS x", "ATTACH and DETACH are not supported"),
        ("INSERT INTO a VALUES (2); VACUUM INTO 'copy.db'", "VACUUM INTO is not supported"),
        ("SELECT * FROM nowhere", "no such table: nowhere"),
        ("SELECT 1 +", "incomplete input"),
        ("SELECT x FROM a WHERE nope = 1;", "no such column: nope"),
        ("SELECT total_changes()", "total_changes() is not supported"),
    ] {
        let reply = c.request(line).await.expect("reply");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains(error), "{line:?}: {reply}");
    }
    let reply = c.request("SELECT count(*) FROM a").await.expect("reply");
    assert_eq!(count(&reply), 0, "every failing line was rolled back: {reply}");
    let reply = c.request("INSERT INTO a VALUES (3)").await.expect("reply");
    assert_eq!(reply["rows_affected"], 1, "{reply}");
    for consistency in [".consistency local", ".consistency linearizable"] {
        c.request(consistency).await.expect("reply");
        let reply = c.request(" select x FROM a ; ").await.expect("reply");
        assert_eq!(reply["rows"], serde_json::json!([[3]]), "{reply}");
    }

    // In the table mode, a first line that SQLite finds cut short waits for the rest.
    let out = transcript(&cluster, 0, "INSERT INTO a VALUES (4),\n(5);\nSELECT\ncount(*) FROM a;").await;
    assert!(!out.contains("ERROR"), "{out}");
    assert_eq!(out.matches("lightraft-# ").count(), 2, "{out}");
    assert!(out.contains("| 3        |"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_commands_show_and_change_the_settings() {
    let cluster = one_node().await;
    let input = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\nCREATE INDEX users_name ON users(name);\n\
                 CREATE TABLE orders (id, user);\nINSERT INTO users (name) VALUES ('ada'), ('grace');\n\
                 .mode\n.consistency\n.headers\n.timer\n.mode box\nSELECT name FROM users ORDER BY id;\n\
                 .headers off\n.mode csv\nSELECT id, name FROM users ORDER BY id;\n.mode line\n\
                 SELECT id, name FROM users WHERE id = 1;\n.mode table\n.headers on\n.timer on\nSELECT 1;\n\
                 .timer off\n.schema us%\n.tables\n.tables o%\n.indexes users\n.mode nonsense\n.help";
    let out = transcript(&cluster, 0, input).await;
    for expected in [
        "mode is table",
        "consistency is linearizable",
        "headers is on",
        "timer is off",
        "│ name  │\n├───────┤\n│ ada   │",
        "1,ada\r\n2,grace\r\n",
        "  id = 1\nname = ada\n",
        "Run Time: real ",
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\nCREATE INDEX users_name ON users(name);\n",
        "orders  users\n",
        "lightraft=# orders\n",
        "lightraft=# users_name\n",
        "ERROR (bad_request): no mode \"nonsense\"",
        ".dump [TABLE]",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("id,name"), "headers off: {out}");
    assert!(!out.contains("_lightraft_applied"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_cannot_move_the_cursor_or_break_the_table() {
    let cluster = one_node().await;
    let input = "CREATE TABLE t (x);\n\
                 INSERT INTO t VALUES (char(27) || '[2J'), ('漢字'), (char(8238) || 'evil'), ('a' || char(10) || 'b');\n\
                 SELECT x AS \"col\" FROM t ORDER BY rowid;\nSELECT 1 AS \"a\x1b[31mb\";";
    let out = transcript(&cluster, 0, input).await;
    assert!(!out.contains("\x1b[2J") && !out.contains('\u{202e}'), "raw escapes reached the terminal: {out:?}");
    assert!(!out.contains("a\x1b[31mb"), "a column name reached the terminal raw: {out:?}");
    // Every row of the table has the same display width: 漢字 takes four columns.
    for expected in ["| \\u{1b}[2J    |", "| 漢字         |", "| \\u{202e}evil |", "| a\\nb         |"] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_replays_into_an_empty_cluster_to_the_same_content() {
    let source = one_node().await;
    let mut c = source.client(0).await;
    for line in [
        "CREATE TABLE kinds (id INTEGER PRIMARY KEY, t TEXT, r REAL, b BLOB, n, g AS (id * 2))",
        "CREATE TABLE \"odd \"\"name\" (x)",
        "CREATE INDEX kinds_t ON kinds(t)",
        "CREATE VIEW v AS SELECT id FROM kinds",
        "CREATE TRIGGER tr AFTER INSERT ON kinds BEGIN INSERT INTO \"odd \"\"name\" VALUES (new.id); END",
        "INSERT INTO kinds (t, r, b, n) VALUES ('it''s', 0.1, x'00ff', NULL), ('a' || char(0) || 'b', 1e300, zeroblob(3), 7)",
        "INSERT INTO kinds (t, r, b, n) VALUES ('line' || char(10) || 'break', -1.5, NULL, 'text'), ('漢字', 1e-300, x'', 2.5)",
        "CREATE VIRTUAL TABLE ft USING fts5(body)",
        "INSERT INTO ft VALUES ('hello world'), ('more text'), ('third')",
        "DELETE FROM ft WHERE rowid = 2",
        // Rowids survive where no column holds them.
        "CREATE TABLE plain (v)",
        "INSERT INTO plain VALUES ('a'), ('b'), ('c')",
        "DELETE FROM plain WHERE v = 'b'",
    ] {
        until_ok(&mut c, line).await;
    }
    let out = transcript(&source, 0, ".dump").await;
    let text = out.split_once("lightraft=# ").map(|(_, rest)| rest).expect("a prompt");
    let text = text.rsplit_once("lightraft=# ").map(|(dump, _)| dump).expect("the closing prompt");
    assert!(text.starts_with("-- lightraft .dump"), "{text}");

    let target = one_node().await;
    let replayed = transcript(&target, 0, text).await;
    assert!(!replayed.contains("ERROR"), "the dump did not replay cleanly:\n{replayed}");
    // Compared through each cluster's own sessions: the rows of every table (a virtual
    // table's through itself: its shadow tables' layout depends on how the rows were
    // batched) and the schema.
    let mut t = target.client(0).await;
    for query in [
        "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'ft_%' ORDER BY name",
        "SELECT * FROM kinds ORDER BY rowid",
        "SELECT * FROM \"odd \"\"name\" ORDER BY rowid",
        "SELECT rowid, * FROM ft ORDER BY rowid",
        "SELECT rowid, * FROM plain ORDER BY rowid",
    ] {
        assert_eq!(until_ok(&mut c, query).await, until_ok(&mut t, query).await, "{query}");
    }
}

/// Runs `lightraft backup ARGS` in the cluster's directory; returns its output, or panics.
fn backup(cluster: &Cluster, args: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN)
        .arg("backup")
        .args(args)
        .current_dir(cluster.dir.path())
        .output()
        .expect("lightraft backup runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lightraft backup {args:?} failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_write_load_is_one_consistent_state_and_restores() {
    let source = Cluster::start(3);
    let leader = source.leader().await;
    let mut c = source.client(leader).await;
    until_ok(&mut c, "CREATE TABLE seq (n INTEGER PRIMARY KEY, v TEXT)").await;
    // Writes keep coming while both backups are taken, each row one more than the last,
    // from before the first until after the second.
    let written = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (count, halt) = (written.clone(), stop.clone());
    let writer = tokio::spawn(async move {
        let mut n = 0;
        while !halt.load(Ordering::Relaxed) {
            n += 1;
            until_ok(&mut c, &format!("INSERT INTO seq VALUES ({n}, printf('%0100d', {n}))")).await;
            count.store(n, Ordering::Relaxed);
        }
        c
    });
    let wait_for = |at_least: i64| {
        let written = written.clone();
        async move {
            while written.load(Ordering::Relaxed) < at_least {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(20).await;
    let follower = (leader + 1) % 3;
    let said = backup(&source, &["--node", &follower.to_string(), "backup.sqlite"]);
    assert!(said.contains("written to backup.sqlite as a SQLite database"), "{said}");
    backup(&source, &["--node", &follower.to_string(), "--sql", "backup.sql"]);
    let after = written.load(Ordering::Relaxed) + 20;
    wait_for(after).await;
    stop.store(true, Ordering::Relaxed);
    let mut c = writer.await.expect("the writer finished");
    until_ok(&mut c, "SELECT 1").await;
    let total = written.load(Ordering::Relaxed);

    // One state: rows 1..=k, none missing, taken while writes went on.
    let file = rusqlite::Connection::open(source.dir.path().join("backup.sqlite")).expect("the backup opens");
    let ok: String = file.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
    assert_eq!(ok, "ok");
    let (rows, max): (i64, i64) = file
        .query_row("SELECT count(*), coalesce(max(n), 0) FROM seq", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("count");
    assert_eq!(rows, max, "rows are missing from the backup: it is not one state");
    assert!(rows >= 1 && rows < total, "the backup holds {rows} of {total} rows");

    // Nothing is left beside it: the working copy and SQLite's side files are gone.
    let leftovers: Vec<String> = std::fs::read_dir(source.dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|name| name.starts_with(".lightraft-backup-") || name.starts_with("backup.sqlite-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The backup never overwrites a file.
    let again = std::process::Command::new(common::BIN)
        .args(["backup", "--node", "0", "backup.sqlite"])
        .current_dir(source.dir.path())
        .output()
        .expect("runs");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // The SQL backup rebuilds the same rows in a new cluster.
    let sql = std::fs::read_to_string(source.dir.path().join("backup.sql")).expect("the SQL backup");
    let target = one_node().await;
    let replayed = transcript(&target, 0, &sql).await;
    assert!(!replayed.contains("ERROR"), "{replayed}");
    let mut t = target.client(0).await;
    let restored = until_ok(&mut t, "SELECT count(*), min(n), max(n), sum(length(v)) FROM seq").await;
    let count_sql = restored["rows"][0][0].as_i64().expect("a count");
    assert!(count_sql >= rows && count_sql < total, "{restored}");
    assert_eq!(restored["rows"][0][1], 1, "{restored}");
    assert_eq!(restored["rows"][0][2], count_sql, "{restored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_x_drops_a_statement_and_an_error_inside_one_ends_the_session() {
    let cluster = one_node().await;
    let out = transcript(
        &cluster,
        0,
        "CREATE TABLE dropped (\n  x\n\u{18}\nSELECT count(*) AS n FROM sqlite_schema WHERE name = 'dropped';",
    )
    .await;
    assert!(!out.contains("ERROR") && out.contains("| 0 |"), "the statement was not dropped: {out}");
    // A NUL byte inside a string that spans lines: what follows could no longer be read
    // as meant, so the session ends before `; CREATE TABLE evil` can run.
    let mut stream = TcpStream::connect(cluster.client_addrs[0]).await.expect("connect");
    stream.write_all(b"SELECT 'a\nb\0\n'; CREATE TABLE evil (x);\n").await.expect("send");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the session stayed open");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("closing the session"), "{out}");
    let mut c = cluster.client(0).await;
    assert_eq!(count(&until_ok(&mut c, "SELECT count(*) FROM sqlite_schema WHERE name = 'evil'").await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_replays_exactly_its_statements_whatever_the_data_holds() {
    let source = one_node().await;
    let mut c = source.client(0).await;
    for line in [
        "CREATE TABLE t (x)",
        // Values that would be lines of their own in a naive dump: a shell command, the
        // cancel line, SQL after a quote; and a CR before a line break.
        "INSERT INTO t VALUES ('a' || char(10) || '.shell touch pwned' || char(10) || char(24) || char(10) || \
         '''); DROP TABLE t; --'), (char(13) || char(10))",
        // Stored statements that end inside a comment: a naive `;` would be swallowed.
        "CREATE VIEW v AS SELECT 1 /* open",
        "CREATE VIEW w AS SELECT 2 -- to the end",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
        // A column named rowid, and a generated one named oid: the rowid goes by _rowid_.
        "CREATE TABLE r (rowid TEXT, v, oid AS (v * 2))",
        "INSERT INTO r (rowid, v) VALUES ('keep', 1), ('this', 2), ('too', 3)",
        "DELETE FROM r WHERE v = 2",
    ] {
        until_ok(&mut c, line).await;
    }
    // A view over several lines whose first line is whole: a replay must not run it alone.
    let typed =
        transcript(&source, 0, "CREATE VIEW m AS\nSELECT x FROM t\nWHERE x IS NOT NULL\n  AND length(x) > 2;").await;
    assert!(!typed.contains("ERROR"), "{typed}");
    let out = transcript(&source, 0, ".dump").await;
    let text = out.split_once("lightraft=# ").map(|(_, rest)| rest).expect("a prompt");
    let text = text.rsplit_once("lightraft=# ").map(|(dump, _)| dump).expect("the closing prompt");
    assert!(!text.contains("ERROR") && text.ends_with("-- end of the dump\n"), "{text}");
    for line in text.lines() {
        assert!(!line.starts_with('.') && line != "\u{18}" && !line.contains('\r'), "a line a shell acts on: {line:?}");
    }
    let queries = [
        "SELECT hex(x) FROM t ORDER BY rowid",
        "SELECT * FROM v",
        "SELECT * FROM w",
        "SELECT * FROM m",
        "SELECT _rowid_, rowid, v, oid FROM r ORDER BY _rowid_",
        "SELECT type, name FROM sqlite_schema ORDER BY name",
    ];
    // Replayed through a session...
    let target = one_node().await;
    let replayed = transcript(&target, 0, text).await;
    assert!(!replayed.contains("ERROR"), "{replayed}");
    let mut t = target.client(0).await;
    // (A view's column is named by its text, which the `*/` that ends the comment joins.)
    for query in queries {
        assert_eq!(until_ok(&mut c, query).await["rows"], until_ok(&mut t, query).await["rows"], "{query}");
    }
    // ... and through the sqlite3 shell, which runs dot commands such as `.shell`.
    let dir = source.dir.path();
    std::fs::write(dir.join("dump.sql"), text).expect("written");
    let replay = std::process::Command::new("sqlite3")
        .arg("restored.db")
        .current_dir(dir)
        .stdin(std::fs::File::open(dir.join("dump.sql")).expect("open"))
        .output();
    if let Ok(replay) = replay {
        assert!(replay.status.success(), "sqlite3: {}", String::from_utf8_lossy(&replay.stderr));
        assert!(!dir.join("pwned").exists(), "the dump ran a shell command");
        let restored = rusqlite::Connection::open(dir.join("restored.db")).expect("opens");
        let hex: Vec<String> = restored
            .prepare("SELECT hex(x) FROM t ORDER BY rowid")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect();
        let expected = until_ok(&mut c, "SELECT hex(x) FROM t ORDER BY rowid").await;
        let expected: Vec<String> = expected["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r[0].as_str().expect("hex").to_string())
            .collect();
        assert_eq!(hex, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_statement_the_sqlite3_shell_would_act_on_is_not_dumped() {
    let cluster = one_node().await;
    // Typed with `CREATE VIEW` alone on its first line, SQLite keeps the later lines, and
    // in the sqlite3 shell `go` would end the statement and `.shell` would run.
    let typed = "CREATE TABLE go (shell);\nCREATE VIEW\nv AS SELECT\ngo\n.shell `touch pwned`\nFROM go;";
    assert!(!transcript(&cluster, 0, typed).await.contains("ERROR"));
    let out = transcript(&cluster, 0, ".dump").await;
    assert!(out.contains("would take as a command or as the end of a statement"), "{out}");
    assert!(!out.contains("CREATE TABLE go"), "a dump was written: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_to_show_is_refused_before_it_is_built() {
    let cluster = one_node().await;
    // Small as a result (one long name, many NULLs), huge once every row repeats it or
    // is padded to it.
    let name = "n".repeat(50_000);
    let query = format!(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000) SELECT NULL AS \"{name}\" FROM c;"
    );
    for mode in ["line", "table", "box"] {
        let out = transcript(&cluster, 0, &format!(".mode {mode}\n{query}")).await;
        assert!(out.contains(&format!("as shown in {mode} mode")), "{mode}: {}", &out[..out.len().min(300)]);
        assert!(out.len() < 100_000, "{mode}: {} bytes", out.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lightraft_shell_speaks_the_same_protocol() {
    use std::io::Write as _;
    let cluster = one_node().await;
    let mut shell = std::process::Command::new(common::BIN)
        .args(["shell", "0"])
        .current_dir(cluster.dir.path())
        .env("HOME", cluster.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lightraft shell starts");
    let mut stdin = shell.stdin.take().expect("stdin");
    stdin.write_all(b"CREATE TABLE t (\n  x\n);\nINSERT INTO t VALUES (7);\nSELECT x FROM t;\n").expect("typed");
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || shell.wait_with_output()).await.expect("joined").expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for expected in ["Connected to node 0", "0 rows affected", "1 row affected", "| 7 |", "bye"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
