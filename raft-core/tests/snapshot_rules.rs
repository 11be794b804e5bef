//! Log compaction and InstallSnapshot (§7, Figure 13), one rule per test, on a single
//! node driven by hand.

mod common;

use raft_core::{
    AppendResult, Config, Entry, HardState, Membership, Message, MessageKind, Node, Payload, ProposalOutcome, Restored,
    SnapshotMeta, Term,
};

use common::{drive, elect, msg};

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: Payload::Command(vec![index as u8, term as u8]) }
}

/// A snapshot point of the cluster {1, 2, 3}, whose configuration never changed.
fn meta(index: u64, term: Term) -> SnapshotMeta {
    SnapshotMeta { index, term, membership: Membership::initial(&[1, 2, 3]) }
}

/// Node 2 of {1, 2, 3} in term 3, holding 1..=3 of term 1 and 4..=5 of term 2, with 2
/// applied (so committed).
fn follower() -> Node {
    let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).chain((4..=5).map(|i| entry(i, 2))).collect();
    let restored =
        Restored { hard_state: HardState { term: 3, voted_for: None }, entries, applied: 2, ..Restored::default() };
    Node::new(Config::new(2, vec![1, 2, 3]), restored).expect("valid")
}

fn install(term: Term, snapshot: SnapshotMeta) -> Message {
    msg(1, 2, term, MessageKind::InstallSnapshot { snapshot })
}

/// Node `id` of {1, 2, 3}, fresh, elected leader of term 1 with node `voter`'s vote.
fn leader_of_term_1(id: u64, voter: u64) -> Node {
    let mut config = Config::new(id, vec![1, 2, 3]);
    config.pre_vote = false;
    let mut node = Node::new(config, Restored::default()).expect("valid");
    elect(&mut node, voter);
    node
}

fn accepted(ready: &raft_core::Ready) -> Option<u64> {
    ready.persisted_messages.iter().find_map(|m| match m.kind {
        MessageKind::AppendResp(AppendResult::Accepted { match_index }) => Some(match_index),
        _ => None,
    })
}

#[test]
fn compaction_drops_applied_entries_and_keeps_the_last_ones_term() {
    let mut node = follower();
    assert!(node.compact(3).is_err(), "entry 3 is not applied: the state machine lacks it");
    node.compact(2).expect("applied entries may go");
    let ready = drive(&mut node);
    assert_eq!(ready.compacted, Some(meta(2, 1)), "the driver deletes its durable copies too");
    let log = node.log();
    assert_eq!((log.first_index(), log.last_index()), (3, 5));
    assert_eq!(log.entry(2), None);
    assert_eq!(log.term_at(2), Some(1), "the snapshot point keeps its term for the consistency check");
    assert_eq!(log.term_at(1), None, "below the snapshot point no term is known");
    node.compact(1).expect("compacting behind the snapshot point is allowed");
    assert_eq!(drive(&mut node).compacted, None, "and changes nothing");
}

#[test]
fn a_snapshot_whose_last_entry_we_hold_commits_it_and_keeps_the_log() {
    // Figure 13 rule 6: our 4@2 is the snapshot's last entry, so everything up to it
    // equals the leader's and is committed; we apply our own entries instead.
    let mut node = follower();
    node.step(install(3, meta(4, 2)));
    let ready = drive(&mut node);
    assert_eq!(ready.install_snapshot, None, "nothing to install");
    assert_eq!(ready.committed.iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(node.log().last_index(), 5, "the entry after it is kept");
    assert_eq!(accepted(&ready), Some(4));
}

#[test]
fn a_snapshot_that_conflicts_with_our_log_replaces_it_whole() {
    // Rules 7 and 8: our entry at 5 has term 2, the snapshot's has term 3: discard the
    // whole log and take the snapshot's state.
    let mut node = follower();
    node.step(install(3, meta(5, 3)));
    let ready = drive(&mut node);
    assert_eq!(ready.install_snapshot, Some(meta(5, 3)));
    assert!(ready.committed.is_empty(), "the snapshot holds them; nothing is applied one by one");
    let status = node.status();
    assert_eq!((status.commit_index, status.applied_index, status.last_index), (5, 5, 5));
    assert_eq!(node.log().last_term(), 3);
    // The answer speaks for durable state: it waits for step 2 (the install).
    assert_eq!(accepted(&ready), Some(5));
    assert!(ready.messages.is_empty());
}

#[test]
fn a_snapshot_beyond_our_log_replaces_it_whole() {
    let mut node = follower();
    node.step(install(3, meta(9, 3)));
    let ready = drive(&mut node);
    assert_eq!(ready.install_snapshot, Some(meta(9, 3)));
    assert_eq!((node.log().first_index(), node.log().last_index()), (10, 9));
}

#[test]
fn a_snapshot_no_newer_than_our_commit_index_is_acknowledged_and_ignored() {
    let mut node = follower();
    node.step(install(3, meta(2, 1)));
    let ready = drive(&mut node);
    assert_eq!(ready.install_snapshot, None, "never move back");
    assert_eq!(node.log().last_index(), 5);
    assert_eq!(accepted(&ready), Some(2), "acknowledged, so the leader moves on");
}

#[test]
fn a_snapshot_from_an_old_term_changes_nothing_and_tells_the_sender_our_term() {
    let mut node = follower();
    node.step(install(2, meta(9, 2)));
    let ready = drive(&mut node);
    assert_eq!(ready.install_snapshot, None);
    let reply = ready.persisted_messages.first().expect("a reply");
    assert_eq!(reply.term, 3);
    assert!(matches!(reply.kind, MessageKind::AppendResp(AppendResult::Rejected { .. })));
}

#[test]
fn impossible_snapshots_are_refused() {
    let mut node = follower();
    node.step(install(3, meta(0, 0)));
    node.step(install(3, meta(9, 4)));
    let ready = drive(&mut node);
    assert_eq!(ready.refused.len(), 2, "{:?}", ready.refused);
    assert_eq!(ready.install_snapshot, None);
}

#[test]
fn appends_reaching_into_our_snapshot_are_checked_from_its_end() {
    // After installing 5@3, an append from before it (prev 3@1) is trimmed to what
    // follows the snapshot point; entries inside it are committed and equal ours.
    let mut node = follower();
    node.step(install(3, meta(5, 3)));
    drive(&mut node);
    let entries = vec![entry(4, 2), entry(5, 3), entry(6, 3)];
    node.step(msg(1, 2, 3, MessageKind::Append { prev_index: 3, prev_term: 1, entries, commit: 6 }));
    let ready = drive(&mut node);
    assert_eq!(ready.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![6]);
    assert_eq!(accepted(&ready), Some(6));
    // An append wholly inside the snapshot is simply acknowledged.
    node.step(msg(1, 2, 3, MessageKind::Append { prev_index: 1, prev_term: 1, entries: vec![entry(2, 1)], commit: 6 }));
    assert_eq!(accepted(&drive(&mut node)), Some(2));
    // One that contradicts the snapshot's last entry cannot come from a correct leader.
    let entries = vec![entry(5, 2), entry(6, 3)];
    node.step(msg(1, 2, 3, MessageKind::Append { prev_index: 4, prev_term: 2, entries, commit: 6 }));
    assert_eq!(drive(&mut node).refused.len(), 1);
}

#[test]
fn a_leader_sends_a_snapshot_when_the_entries_a_follower_needs_are_gone() {
    // Node 1 leads {1, 2, 3} and has compacted all it applied.
    let mut leader = leader_of_term_1(1, 2);
    // Node 2 holds the leader's no-op, so the leader streams to it.
    leader.step(msg(2, 1, 1, MessageKind::AppendResp(AppendResult::Accepted { match_index: 1 })));
    drive(&mut leader);
    for i in 0..3 {
        leader.propose(vec![i]).expect("leader");
        drive(&mut leader);
    }
    leader.step(msg(2, 1, 1, MessageKind::AppendResp(AppendResult::Accepted { match_index: 4 })));
    drive(&mut leader);
    leader.compact(4).expect("applied");
    drive(&mut leader);
    // Node 3 never answered the first probe (prev 0). At the next heartbeat's answer
    // the leader probes again from there, which is below its snapshot point.
    for _ in 0..2 {
        leader.tick();
    }
    drive(&mut leader);
    leader.step(msg(3, 1, 1, MessageKind::HeartbeatResp { read_round: 0 }));
    let ready = drive(&mut leader);
    assert_eq!(ready.send_snapshots.len(), 1);
    assert_eq!((ready.send_snapshots[0].to, ready.send_snapshots[0].term), (3, 1));
    assert!(!ready.messages.iter().any(|m| m.to == 3 && matches!(m.kind, MessageKind::Append { .. })));
    // Until the driver reports, node 3 gets no append and no second request.
    leader.propose(vec![9]).expect("leader");
    leader.step(msg(3, 1, 1, MessageKind::HeartbeatResp { read_round: 0 }));
    let ready = drive(&mut leader);
    assert!(ready.send_snapshots.is_empty(), "at most one transfer per follower");
    assert!(!ready.messages.iter().any(|m| m.to == 3 && matches!(m.kind, MessageKind::Append { .. })));
    // The transfer failed: the leader waits for a heartbeat's answer, then asks again.
    leader.report_snapshot(3, 4, false);
    assert!(drive(&mut leader).send_snapshots.is_empty());
    leader.step(msg(3, 1, 1, MessageKind::HeartbeatResp { read_round: 0 }));
    assert_eq!(drive(&mut leader).send_snapshots.len(), 0, "paced: the probe waits for the next heartbeat");
    for _ in 0..2 {
        leader.tick();
    }
    drive(&mut leader);
    leader.step(msg(3, 1, 1, MessageKind::HeartbeatResp { read_round: 0 }));
    assert_eq!(drive(&mut leader).send_snapshots.len(), 1, "restarted after the failure");
    // This one arrives; the follower's acknowledgement of 4 moves it to replication.
    leader.report_snapshot(3, 4, true);
    leader.step(msg(3, 1, 1, MessageKind::AppendResp(AppendResult::Accepted { match_index: 4 })));
    let ready = drive(&mut leader);
    let append = ready.messages.iter().find(|m| m.to == 3).expect("entries follow the snapshot");
    assert!(matches!(&append.kind, MessageKind::Append { prev_index: 4, entries, .. } if entries.len() == 1));
    assert!(ready.refused.is_empty());
}

#[test]
fn proposals_inside_an_installed_snapshot_have_an_unknown_outcome() {
    // Node 2 led term 1 and proposed 2 and 3; now term 2's leader sends a snapshot at 3.
    let mut node = leader_of_term_1(2, 1);
    let ours: Vec<(u64, u64)> = (0..2).map(|i| node.propose(vec![i]).expect("leader")).collect();
    drive(&mut node);
    node.step(msg(3, 2, 2, MessageKind::InstallSnapshot { snapshot: meta(3, 2) }));
    let ready = drive(&mut node);
    let outcomes: Vec<ProposalOutcome> = ready.proposals.clone();
    let expected: Vec<ProposalOutcome> =
        ours.iter().map(|&(term, index)| ProposalOutcome::Unknown { term, index }).collect();
    assert_eq!(outcomes, expected);
}

#[test]
fn restarting_from_a_snapshot_continues_from_it() {
    let entries: Vec<Entry> = (3..=6).map(|i| entry(i, 2)).collect();
    let snapshot = meta(4, 2);
    let restored = |applied| Restored {
        hard_state: HardState { term: 2, voted_for: None },
        snapshot: snapshot.clone(),
        entries: entries.clone(),
        applied,
    };
    let config = || Config::new(2, vec![1, 2, 3]);
    assert!(Node::new(config(), restored(3)).is_err(), "the state machine must hold the snapshot");
    let node = Node::new(config(), restored(4)).expect("entries at or before the snapshot point are skipped");
    let log = node.log();
    assert_eq!((log.first_index(), log.last_index(), log.snapshot().index, log.snapshot().term), (5, 6, 4, 2));
    assert_eq!(log.membership(), &Membership::initial(&[1, 2, 3]), "no configuration recorded: the initial one");
    let wrong = Restored { entries: vec![entry(4, 1), entry(5, 2)], ..restored(4) };
    assert!(Node::new(config(), wrong).is_err(), "an entry at the snapshot point must carry its term");
    let gap = Restored { entries: vec![entry(6, 2)], ..restored(4) };
    assert!(Node::new(config(), gap).is_err(), "the log must continue right after the snapshot point");
}
