//! The Raft log's segment files under crashes and damage: a restart recovers exactly
//! the records written whole before the damage, and never starts on a log it cannot trust.

use std::fs;
use std::path::{Path, PathBuf};

use raft_core::{Entry, Payload, Ready, SnapshotMeta};
use sqlite_sm::RaftStore;

/// A small deterministic generator: each failing seed is replayable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn entry(index: u64, term: u64, len: usize) -> Entry {
    let payload = match index % 7 {
        0 => Payload::Noop,
        _ => Payload::Command(vec![(index % 251) as u8; len]),
    };
    Entry { index, term, payload }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("meta.log.")))
        .collect();
    found.sort();
    found
}

fn end(store: &RaftStore) -> u64 {
    store.log_end().expect("a segment").1
}

/// Applies one ready to a model of the log: what the store must read back.
fn model(log: &mut Vec<Entry>, ready: &Ready) {
    if let Some(from) = ready.truncate_from {
        log.retain(|e| e.index < from);
    }
    log.extend(ready.entries.iter().cloned());
}

/// A random ready continuing `log`: new entries, sometimes after cutting a suffix.
fn random_ready(rng: &mut Rng, log: &[Entry], term: &mut u64) -> Ready {
    let last = log.last().map_or(0, |e| e.index);
    let mut truncate_from = None;
    let mut next = last + 1;
    if last > 3 && rng.below(4) == 0 {
        let from = last - rng.below(3);
        truncate_from = Some(from);
        next = from;
        *term += 1;
    }
    let count = 1 + rng.below(4);
    let entries = (next..next + count).map(|i| entry(i, *term, rng.below(300) as usize)).collect();
    Ready { truncate_from, entries, ..Ready::default() }
}

#[test]
fn a_torn_tail_is_cleared_back_to_exactly_the_whole_records_before_it_and_damage_is_refused() {
    let seeds: u64 = std::env::var("LIGHTRAFT_LOG_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.sqlite");
        let mut term = 1;
        let mut log: Vec<Entry> = Vec::new();
        // Durable batches, then a tail of single-record batches, each one's end noted:
        // the crash tears or damages somewhere in the tail.
        let mut tail: Vec<(u64, Vec<Entry>)> = Vec::new();
        let durable_end;
        {
            let mut store = RaftStore::open(&path, "c", 1).expect("opens");
            for _ in 0..1 + rng.below(20) {
                let ready = random_ready(&mut rng, &log, &mut term);
                store.persist(&ready).expect("persists");
                model(&mut log, &ready);
            }
            durable_end = end(&store);
            for _ in 0..1 + rng.below(6) {
                let last = log.last().map_or(0, |e| e.index);
                let ready = Ready { entries: vec![entry(last + 1, term, rng.below(300) as usize)], ..Ready::default() };
                store.persist(&ready).expect("persists");
                model(&mut log, &ready);
                tail.push((end(&store), log.clone()));
            }
        }
        let written = tail.last().map_or(durable_end, |t| t.0);
        let segment = segments(dir.path()).pop().expect("a segment");
        let mut bytes = fs::read(&segment).expect("read");
        let original = bytes.clone();
        let mut at = durable_end + rng.below(written - durable_end);
        let mode = rng.below(3);
        match mode {
            // The crash came while the file grew: it ends early.
            0 => bytes.truncate(at as usize),
            // A sector of a write (here: one record) never reached the disk: from the
            // write's start, the segment's zeroes are still there; the sector's bytes
            // before it are the earlier, synced ones.
            1 => {
                let write_start = tail.iter().map(|t| t.0).filter(|&end| end <= at).max().unwrap_or(durable_end);
                let from = write_start.max(at / 512 * 512);
                let to = ((at / 512 + 1) * 512).min(written);
                bytes[from as usize..to as usize].fill(0);
            }
            // A bit went bad in a synced record: damage, not a torn write.
            _ => {
                let zero_bits: Vec<u64> = (0..8).filter(|b| original[at as usize] & (1 << b) == 0).collect::<Vec<_>>();
                match zero_bits.get(rng.below(zero_bits.len() as u64) as usize) {
                    Some(bit) => bytes[at as usize] |= 1 << bit,
                    None => bytes[at as usize] = 0xFE,
                }
            }
        }
        fs::write(&segment, &bytes).expect("damage");
        let what = ["cut", "zeroed a sector's part", "set a bit"][mode as usize];
        let context = format!("seed {seed} (LIGHTRAFT_LOG_SEEDS replays 1..=N): {what} at byte {at} of {written}");
        if mode == 2 {
            let err = RaftStore::open(&path, "c", 1).expect_err(&context);
            assert!(err.contains("damaged"), "{context}: {err}");
            assert_eq!(fs::read(&segment).expect("read"), bytes, "{context}: the damaged log is left as it was");
            continue;
        }
        // Whole records before the first changed byte survive; the rest are gone.
        if let Some(first_changed) = original.iter().zip(&bytes).position(|(a, b)| a != b) {
            at = first_changed as u64;
        }
        let expected = tail.iter().rev().find(|(record_end, _)| *record_end <= at).map(|(_, l)| l.clone());
        let expected = expected.unwrap_or_else(|| {
            let mut before = log.clone();
            before.truncate(before.len() - tail.len());
            before
        });
        let mut store = RaftStore::open(&path, "c", 1).unwrap_or_else(|e| panic!("{context}: {e}"));
        let recovered = store.load().unwrap_or_else(|e| panic!("{context}: {e}")).entries;
        let indexes = |log: &[Entry]| log.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>();
        assert!(recovered == expected, "{context}: read back {:?}, not {:?}", indexes(&recovered), indexes(&expected));
        // The cut is clean: the log takes a new entry and reads it back after a restart,
        // and nothing of the lost write comes back after it. The new entry takes the
        // place of the first lost one, in a record of the same size, so whole records
        // of the lost write that followed it would be read as the next entries if the
        // torn tail were only skipped, not cleared.
        let lost_len = match log.get(expected.len()).map(|e| &e.payload) {
            Some(Payload::Command(bytes)) => bytes.len(),
            _ => 10,
        };
        let index = expected.last().map_or(1, |e| e.index + 1);
        let next = Entry { index, term: term + 1, payload: Payload::Command(vec![0xEE; lost_len]) };
        store.persist(&Ready { entries: vec![next.clone()], ..Ready::default() }).expect("appends after the cut");
        drop(store);
        let again = RaftStore::open(&path, "c", 1).expect("reopens").load().expect("loads").entries;
        assert_eq!(again.last(), Some(&next), "{context}");
        assert_eq!(again.len(), expected.len() + 1, "{context}");
    }
}

#[test]
fn damage_before_the_last_segment_stops_the_node_and_compaction_deletes_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    // 64 KiB entries: a segment (4 MiB) fills after 64 of them (entries 1..=64,
    // 65..=128, 129..=192, 193..=256, 257..=300).
    let big = |index| Entry { index, term: 1, payload: Payload::Command(vec![1; 64 << 10]) };
    {
        let mut store = RaftStore::open(&path, "c", 1).expect("opens");
        for i in 1..=300 {
            store.persist(&Ready { entries: vec![big(i)], ..Ready::default() }).expect("persists");
        }
    }
    let files = segments(dir.path());
    assert_eq!(files.len(), 5, "{files:?}");
    let bytes_before: u64 = files.iter().map(|p| fs::metadata(p).expect("stat").len()).sum();
    // Compaction past the first segments deletes them, and the log still reads back.
    {
        let mut store = RaftStore::open(&path, "c", 1).expect("reopens");
        store.persist(&Ready { compacted: Some(SnapshotMeta::at(200, 1)), ..Ready::default() }).expect("compacts");
        let stored = store.load().expect("loads");
        assert_eq!(stored.entries.first().map(|e| e.index), Some(201));
        assert_eq!(stored.entries.len(), 100);
        assert!(store.disk_bytes(&path) < bytes_before / 2);
    }
    assert_eq!(segments(dir.path()).len(), 2);
    let stored = RaftStore::open(&path, "c", 1).expect("reopens").load().expect("loads");
    assert_eq!((stored.snapshot, stored.entries.len()), (SnapshotMeta::at(200, 1), 100));
    // A flipped bit in a segment that is not the last is damage, not a torn write.
    let first = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&first).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(&first, bytes).expect("damage");
    let err = RaftStore::open(&path, "c", 1).expect_err("refuses a damaged log");
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn a_segment_begun_just_before_a_crash_is_discarded_but_one_with_records_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1, 5)).collect();
    RaftStore::open(&path, "c", 1)
        .expect("opens")
        .persist(&Ready { entries: entries.clone(), ..Ready::default() })
        .expect("persists");
    // The next segment's file exists, its header torn.
    fs::write(dir.path().join("meta.log.00000002"), [9, 0, 0]).expect("write");
    let mut store = RaftStore::open(&path, "c", 1).expect("reopens");
    assert_eq!(store.load().expect("loads").entries, entries);
    assert_eq!(segments(dir.path()).len(), 1);
    store.persist(&Ready { entries: vec![entry(4, 1, 5)], ..Ready::default() }).expect("appends");
    drop(store);
    // A last segment whose header went bad but which holds records is damage.
    let segment = segments(dir.path()).pop().expect("a segment");
    let mut bytes = fs::read(&segment).expect("read");
    bytes[14] ^= 0x01;
    fs::write(&segment, &bytes).expect("damage");
    let err = RaftStore::open(&path, "c", 1).expect_err("refused");
    assert!(err.contains("no header"), "{err}");
    assert_eq!(fs::read(&segment).expect("read"), bytes, "the damaged segment is left as it was");
}

#[test]
fn a_log_without_its_store_or_of_another_node_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    RaftStore::open(&path, "c", 1)
        .expect("opens")
        .persist(&Ready { entries: vec![entry(1, 1, 5)], ..Ready::default() })
        .expect("persists");
    // The database lost, its log kept: the vote may be lost with it, so no silent start.
    fs::remove_file(&path).expect("delete");
    let err = RaftStore::open(&path, "c", 1).expect_err("refused");
    assert!(err.contains("delete both"), "{err}");
    // The log lost, its database kept: the acknowledged entries are gone, so no start.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    RaftStore::open(&path, "c", 1).expect("opens");
    for segment in segments(dir.path()) {
        fs::remove_file(segment).expect("delete");
    }
    let err = RaftStore::open(&path, "c", 1).expect_err("refused");
    assert!(err.contains("segments beside") && err.contains("missing"), "{err}");
    // Another node's log in place of this node's.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    RaftStore::open(&path, "c", 1).expect("opens");
    RaftStore::open(&dir.path().join("other.sqlite"), "c", 2).expect("opens");
    fs::rename(dir.path().join("other.log.00000001"), dir.path().join("meta.log.00000001")).expect("swap");
    let err = RaftStore::open(&path, "c", 1).expect_err("refused");
    assert!(err.contains("belongs to node 2"), "{err}");
}

#[test]
fn a_log_kept_in_the_old_table_moves_to_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("meta.sqlite");
    RaftStore::open(&path, "c", 1).expect("opens");
    for segment in segments(dir.path()) {
        fs::remove_file(segment).expect("delete");
    }
    // As a store written before segments existed holds it.
    let conn = rusqlite::Connection::open(&path).expect("opens");
    conn.execute("DELETE FROM log_in_segments", []).expect("unmark");
    for i in 4..=6 {
        conn.execute("INSERT INTO log (idx, term, command) VALUES (?1, 2, ?2)", rusqlite::params![i, vec![i as u8]])
            .expect("insert");
    }
    conn.execute("INSERT INTO snapshot (id, idx, term) VALUES (0, 3, 1)", []).expect("snapshot");
    drop(conn);
    let stored = RaftStore::open(&path, "c", 1).expect("moves").load().expect("loads");
    let expected: Vec<Entry> =
        (4..=6).map(|i| Entry { index: i, term: 2, payload: Payload::Command(vec![i as u8]) }).collect();
    assert_eq!((stored.snapshot, stored.entries), (SnapshotMeta::at(3, 1), expected));
    let conn = rusqlite::Connection::open(&path).expect("opens");
    let rows: i64 = conn.query_row("SELECT count(*) FROM log", [], |r| r.get(0)).expect("count");
    assert_eq!(rows, 0);
}
