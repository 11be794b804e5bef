//! The contract between raft-core and its driver, tested through the public API only.

mod common;

use raft_core::{
    Config, Entry, HardState, Message, MessageKind, Node, Payload, ProposalOutcome, ProposeError, ReadError, Ready,
    Restored, Role,
};

use common::{drive, msg};

fn single_node() -> Node {
    Node::new(Config::new(1, vec![1]), Restored::default()).expect("valid config")
}

#[test]
fn a_single_node_elects_itself_and_commits_only_after_its_write_is_durable() {
    let mut node = single_node();
    node.campaign();
    let ready = drive(&mut node);
    assert_eq!(node.role(), Role::Leader);
    assert_eq!(ready.hard_state, Some(HardState { term: 1, voted_for: Some(1) }));
    assert_eq!(ready.entries.len(), 1, "the leader's no-op");
    assert!(ready.committed.is_empty(), "nothing is committed before it is durable");

    let (term, index) = node.propose(b"x".to_vec()).expect("leader accepts");
    let ready = node.ready();
    assert_eq!(ready.entries.last().map(|e| e.index), Some(index));
    // Not yet advanced: the entry is not durable, so not committed.
    assert!(!ready.committed.iter().any(|e| e.index == index));
    node.advance(&ready);
    let ready = drive(&mut node);
    assert_eq!(ready.committed.last().map(|e| e.index), Some(index));
    assert_eq!(ready.proposals, vec![ProposalOutcome::Committed { term, index }]);
}

#[test]
fn followers_refuse_proposals_and_name_the_leader_they_know() {
    let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid config");
    assert_eq!(node.propose(b"x".to_vec()), Err(ProposeError::NotLeader { leader: None }));
    node.step(Message { from: 1, to: 2, term: 1, kind: MessageKind::Heartbeat { commit: 0, read_round: 0 } });
    assert_eq!(node.propose(b"x".to_vec()), Err(ProposeError::NotLeader { leader: Some(1) }));
    node.read(7);
    let ready = drive(&mut node);
    assert!(ready.persisted_messages.iter().any(|m| m.kind == MessageKind::ReadIndex { id: 7 }));
}

#[test]
fn reads_without_a_leader_fail_at_once() {
    let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid config");
    node.read(1);
    let ready = drive(&mut node);
    assert_eq!(ready.reads.len(), 1);
    assert_eq!(ready.reads[0].result, Err(ReadError::NoLeader));
}

#[test]
fn messages_for_other_nodes_or_from_this_one_change_nothing() {
    // Messages from servers outside the configuration are heard (§4.1; see
    // membership_rules.rs): keeping strangers out is the transport's job.
    let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid config");
    let before = node.status();
    for (from, to) in [(1, 3), (2, 2)] {
        node.step(Message { from, to, term: 99, kind: MessageKind::TimeoutNow });
        node.step(Message {
            from,
            to,
            term: 99,
            kind: MessageKind::Vote { last_index: 100, last_term: 99, transfer: true },
        });
    }
    assert_eq!(node.status(), before);
    // The only output is the report of what was refused, for the driver to log.
    let ready = node.ready();
    assert_eq!(ready.refused.len(), 4, "{:?}", ready.refused);
    assert_eq!(ready, Ready { refused: ready.refused.clone(), ..Ready::default() });
}

#[test]
fn messages_round_trip_through_json() {
    let msg = Message {
        from: 1,
        to: 2,
        term: 3,
        kind: MessageKind::Append {
            prev_index: 4,
            prev_term: 2,
            entries: vec![
                Entry { index: 5, term: 3, payload: Payload::Noop },
                Entry { index: 6, term: 3, payload: Payload::Command(b"insert".to_vec()) },
            ],
            commit: 4,
        },
    };
    let json = serde_json::to_string(&msg).expect("serializes");
    let back: Message = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, msg);
}

#[test]
fn restarting_from_impossible_durable_state_is_refused() {
    let entries = vec![Entry { index: 1, term: 1, payload: Payload::Noop }];
    let bad_applied =
        Restored { hard_state: HardState::default(), entries: entries.clone(), applied: 2, ..Restored::default() };
    assert!(Node::new(Config::new(1, vec![1]), bad_applied).is_err());
    let gap = Restored { entries: vec![Entry { index: 2, term: 1, payload: Payload::Noop }], ..Restored::default() };
    assert!(Node::new(Config::new(1, vec![1]), gap).is_err());
    let good =
        Restored { hard_state: HardState { term: 1, voted_for: Some(1) }, entries, applied: 1, ..Restored::default() };
    let node = Node::new(Config::new(1, vec![1]), good).expect("consistent state restarts");
    assert_eq!(node.status().commit_index, 1, "applied entries are known committed");
}

#[test]
fn invalid_configs_are_refused_with_a_reason() {
    let mut config = Config::new(4, vec![]);
    assert!(Node::new(config.clone(), Restored::default()).unwrap_err().contains("at least one voter"));
    config.voters = vec![1, 2, 4, 4];
    assert!(Node::new(config.clone(), Restored::default()).unwrap_err().contains("duplicate"));
    config.voters = vec![4];
    config.election_ticks = 2;
    assert!(Node::new(config, Restored::default()).unwrap_err().contains("election_ticks"));
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let run = || {
        let mut node = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
        let mut out = Vec::new();
        for _ in 0..50 {
            node.tick();
            out.push(format!("{:?}", drive(&mut node)));
        }
        out
    };
    assert_eq!(run(), run());
}

fn append(from: u64, term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> Message {
    Message { from, to: 1, term, kind: MessageKind::Append { prev_index: prev.0, prev_term: prev.1, entries, commit } }
}

fn noop(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: Payload::Noop }
}

/// Carries out step 2 of `ready` on `disk`, as a driver must.
fn persist(disk: &mut Vec<Entry>, ready: &Ready) {
    if let Some(from) = ready.truncate_from {
        disk.truncate(from as usize - 1);
    }
    disk.extend(ready.entries.iter().cloned());
}

#[test]
fn several_truncations_in_one_ready_truncate_from_the_lowest_and_keep_only_live_entries() {
    // Node 1 of {1, 2, 3} holds 1..=4 of term 1, durably.
    let mut disk: Vec<Entry> = (1..=4).map(|i| noop(i, 1)).collect();
    let restored = Restored {
        hard_state: HardState { term: 1, voted_for: None },
        entries: disk.clone(),
        applied: 0,
        ..Restored::default()
    };
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), restored).expect("valid");
    // Two leaders overwrite it before the driver takes a ready: term 2 from index 4,
    // then term 3 from index 2.
    node.step(append(2, 2, (3, 1), vec![noop(4, 2)], 0));
    node.step(append(3, 3, (1, 1), vec![noop(2, 3)], 0));
    let ready = node.ready();
    assert_eq!(ready.truncate_from, Some(2), "one truncation, from the lowest index");
    assert_eq!(ready.entries, vec![noop(2, 3)], "4@2 was itself overwritten: it must not be written");
    persist(&mut disk, &ready);
    node.advance(&ready);
    let log: Vec<Entry> = (1..=node.log().last_index()).filter_map(|i| node.log().entry(i).cloned()).collect();
    assert_eq!(disk, log, "the durable log is exactly the node's log");

    // The other order: term 2 overwrites from 2, then term 3 from 4. Still one
    // truncation from 2, and the entries that survive.
    let mut disk: Vec<Entry> = (1..=4).map(|i| noop(i, 1)).collect();
    let restored = Restored {
        hard_state: HardState { term: 1, voted_for: None },
        entries: disk.clone(),
        applied: 0,
        ..Restored::default()
    };
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), restored).expect("valid");
    node.step(append(2, 2, (1, 1), vec![noop(2, 2), noop(3, 2), noop(4, 2)], 0));
    node.step(append(3, 3, (3, 2), vec![noop(4, 3)], 0));
    let ready = node.ready();
    assert_eq!(ready.truncate_from, Some(2), "from the lowest, though it came first");
    assert_eq!(ready.entries, vec![noop(2, 2), noop(3, 2), noop(4, 3)]);
    persist(&mut disk, &ready);
    assert_eq!(disk, vec![noop(1, 1), noop(2, 2), noop(3, 2), noop(4, 3)]);
}

#[test]
fn after_a_truncation_a_leader_counts_itself_only_for_what_is_durable_again() {
    // Node 1 of {1, 2, 3} holds 1..=3 of term 1, durably, and follows term 2's leader,
    // which overwrites 2 and 3. That write is still in flight when node 1 is elected
    // for term 3 and appends its no-op 3@3.
    let restored = Restored {
        hard_state: HardState { term: 1, voted_for: None },
        entries: (1..=3).map(|i| noop(i, 1)).collect(),
        applied: 0,
        ..Restored::default()
    };
    let mut config = Config::new(1, vec![1, 2, 3]);
    config.pre_vote = false;
    let mut node = Node::new(config, restored).expect("valid");
    node.step(append(2, 2, (1, 1), vec![noop(2, 2)], 0));
    let overwrite = node.ready(); // not yet durable
    node.campaign();
    let vote = node.ready();
    node.step(msg(3, 1, 3, MessageKind::VoteResp { granted: true }));
    assert_eq!(node.role(), Role::Leader);
    let noop_ready = node.ready();
    assert_eq!(noop_ready.entries, vec![noop(3, 3)]);
    // Node 3 acknowledges 3@3. Node 1's own copy of 2@2 and 3@3 is not durable: with
    // one of three acknowledgements, nothing new may commit.
    node.step(msg(3, 1, 3, MessageKind::AppendResp(raft_core::AppendResult::Accepted { match_index: 3 })));
    assert_eq!(node.status().commit_index, 0, "committed 3@3 while only node 3 held it durably");
    // The writes finish, in order; now node 1 counts itself, and 3@3 commits.
    node.advance(&overwrite);
    node.advance(&vote);
    assert_eq!(node.status().commit_index, 0, "2@2 alone is not of the leader's term");
    node.advance(&noop_ready);
    assert_eq!(node.status().commit_index, 3);
}

#[test]
fn advancing_a_ready_whose_entries_were_since_overwritten_makes_nothing_durable() {
    // Leader 1 of term 1 appends 2@1 and 3@1 (its write in flight), then term 2's
    // leader overwrites index 2. Finishing the old write must not count 3 as durable.
    let mut config = Config::new(1, vec![1, 2, 3]);
    config.pre_vote = false;
    let mut node = Node::new(config, Restored::default()).expect("valid");
    node.campaign();
    drive(&mut node);
    node.step(Message { from: 2, to: 1, term: 1, kind: MessageKind::VoteResp { granted: true } });
    drive(&mut node); // no-op 1@1, durable
    node.propose(b"x".to_vec()).expect("leader");
    node.propose(b"y".to_vec()).expect("leader");
    let stale = node.ready(); // 2@1 and 3@1, in flight
    node.step(append(2, 2, (1, 1), vec![noop(2, 2)], 0));
    let overwrite = node.ready();
    node.advance(&stale);
    // Node 1 becomes leader of term 3 (vote from 3) before the overwrite is durable.
    node.campaign();
    let vote = node.ready();
    node.step(msg(3, 1, 3, MessageKind::VoteResp { granted: true }));
    let noop_ready = node.ready();
    node.step(msg(3, 1, 3, MessageKind::AppendResp(raft_core::AppendResult::Accepted { match_index: 3 })));
    // 1@1 was never acknowledged by anyone else, so nothing is committed yet either.
    assert_eq!(node.status().commit_index, 0, "3@3 committed before node 1's own copy was durable");
    node.advance(&overwrite);
    node.advance(&vote);
    node.advance(&noop_ready);
    assert_eq!(node.status().commit_index, 3);
}

#[test]
fn a_truncation_inside_entries_of_the_same_ready_keeps_the_ones_before_it() {
    // Node 1 holds 1@1 durably. Term 2's leader sends 2@2 and 3@2; before the driver
    // takes a ready, term 3's leader overwrites 3 only. The ready must write 2@2 and
    // 3@3: not 3@2, and not without 2@2.
    let mut disk = vec![noop(1, 1)];
    let restored = Restored {
        hard_state: HardState { term: 1, voted_for: None },
        entries: disk.clone(),
        applied: 0,
        ..Restored::default()
    };
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), restored).expect("valid");
    node.step(append(2, 2, (1, 1), vec![noop(2, 2), noop(3, 2)], 0));
    node.step(append(3, 3, (2, 2), vec![noop(3, 3)], 0));
    let ready = node.ready();
    assert_eq!(ready.entries, vec![noop(2, 2), noop(3, 3)]);
    persist(&mut disk, &ready);
    node.advance(&ready);
    assert_eq!(disk, vec![noop(1, 1), noop(2, 2), noop(3, 3)]);
    assert_eq!(node.log().entry(3), Some(&noop(3, 3)));
}
