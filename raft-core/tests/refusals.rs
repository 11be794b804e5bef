//! Messages no correct peer could send are refused: dropped without effect, reported in
//! `Ready::refused`, and the node stays healthy (it can still elect, replicate, commit).

mod common;

use raft_core::{
    AppendResult, Config, Entry, HardState, Membership, Message, MessageKind, Node, Payload, Restored, Role, Status,
    MAX_TERM,
};

use common::{drive, elect, msg};

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: Payload::Command(vec![index as u8]) }
}

/// Node 2 of {1, 2, 3}, following leader 1 in term 1 with entries 1..=3 of which 2 are committed.
fn follower() -> Node {
    let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid config");
    let entries = vec![entry(1, 1), entry(2, 1), entry(3, 1)];
    node.step(msg(1, 2, 1, MessageKind::Append { prev_index: 0, prev_term: 0, entries, commit: 2 }));
    let ready = drive(&mut node);
    assert!(ready.refused.is_empty(), "{:?}", ready.refused);
    assert_eq!(node.status().commit_index, 2);
    node
}

/// Node 1 of {1, 2, 3}, leader of term 1, whose no-op (index 1) went to both followers.
fn leader() -> Node {
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
    let ready = elect(&mut node, 2);
    assert_eq!(node.role(), Role::Leader);
    assert!(ready.messages.iter().any(|m| matches!(m.kind, MessageKind::Append { .. })));
    node
}

/// Steps `message` and expects it refused with a reason containing `why`, and nothing else
/// changed: same term, vote, role, leader, commit and log, and nothing to send or persist.
fn assert_refused(node: &mut Node, message: Message, why: &str) {
    drive(node);
    let before: Status = node.status();
    let log_before: Vec<Entry> = node.log().slice(1, before.last_index);
    node.step(message);
    let ready = drive(node);
    assert_eq!(ready.refused.len(), 1, "expected one refusal, got {:?}", ready.refused);
    assert!(ready.refused[0].reason.contains(why), "{}", ready.refused[0]);
    assert_eq!(node.status(), before, "a refused message changes nothing");
    assert_eq!(node.log().slice(1, before.last_index), log_before);
    assert!(ready.messages.is_empty() && ready.persisted_messages.is_empty(), "{ready:?}");
    assert!(ready.hard_state.is_none() && ready.entries.is_empty() && ready.truncate_from.is_none());
}

/// The node can still take part: it campaigns, wins with one more vote, and leads.
fn assert_can_still_lead(node: &mut Node) {
    let term = node.status().term;
    elect(node, if node.id() == 3 { 1 } else { 3 });
    assert_eq!(node.role(), Role::Leader, "{:?}", node.status());
    assert_eq!(node.status().term, term + 1);
}

#[test]
fn a_term_that_could_never_be_exceeded_is_refused_and_the_node_still_elects() {
    let mut node = follower();
    for kind in [
        MessageKind::Vote { last_index: 9, last_term: 1, transfer: true },
        MessageKind::PreVote { last_index: 9, last_term: 1 },
        MessageKind::Heartbeat { commit: 0, read_round: 0 },
        MessageKind::TimeoutNow,
    ] {
        assert_refused(&mut node, msg(3, 2, u64::MAX, kind.clone()), "beyond the highest possible term");
        assert_refused(&mut node, msg(3, 2, MAX_TERM + 1, kind), "beyond the highest possible term");
    }
    assert_can_still_lead(&mut node);
}

#[test]
fn a_durable_term_beyond_the_limit_is_reported_at_start() {
    let restored = Restored { hard_state: HardState { term: u64::MAX, voted_for: None }, ..Restored::default() };
    let err = Node::new(Config::new(1, vec![1, 2, 3]), restored).expect_err("damaged state");
    assert!(err.contains("beyond the highest possible term"), "{err}");
}

#[test]
fn a_durable_entry_beyond_the_highest_term_is_reported_at_start_and_the_highest_is_not() {
    let restore = |term| Restored {
        hard_state: HardState { term, voted_for: None },
        entries: vec![entry(1, term)],
        applied: 0,
        ..Restored::default()
    };
    let err = Node::new(Config::new(1, vec![1, 2, 3]), restore(MAX_TERM + 1)).expect_err("damaged log");
    assert!(err.contains("beyond the highest possible term"), "{err}");
    Node::new(Config::new(1, vec![1, 2, 3]), restore(MAX_TERM)).expect("the highest term itself is a valid term");
}

#[test]
fn misaddressed_messages_and_ones_claiming_to_be_our_own_are_refused() {
    let mut node = follower();
    let heartbeat = MessageKind::Heartbeat { commit: 3, read_round: 0 };
    assert_refused(&mut node, msg(2, 2, 1, heartbeat.clone()), "this node itself");
    assert_refused(&mut node, msg(1, 5, 1, heartbeat), "addressed to node 5");
}

#[test]
fn candidates_whose_log_is_from_a_later_term_than_their_own_are_refused() {
    let mut node = follower();
    let vote = MessageKind::Vote { last_index: 3, last_term: 7, transfer: false };
    assert_refused(&mut node, msg(3, 2, 5, vote), "cannot exceed the term it campaigns in");
}

#[test]
fn malformed_appends_are_refused() {
    let mut node = follower();
    let append = |prev_index, prev_term, entries| MessageKind::Append { prev_index, prev_term, entries, commit: 0 };
    let cases = [
        (append(3, 1, vec![entry(5, 1)]), "should have index 4"),
        (append(3, 1, vec![entry(4, 1), entry(4, 1)]), "should have index 5"),
        (append(3, 1, vec![entry(4, 1), entry(5, 2)]), "outside [1, 1]"),
        (append(3, 2, vec![entry(4, 2)]), "later than the leader's 1"),
        (append(u64::MAX, 1, vec![entry(0, 1)]), "should have index"),
        (
            append(3, 1, vec![Entry { index: 4, term: 1, payload: Payload::Membership(Membership::default()) }]),
            "without voters",
        ),
    ];
    for (kind, why) in cases {
        assert_refused(&mut node, msg(1, 2, 1, kind), why);
    }
    assert_can_still_lead(&mut node);
}

#[test]
fn an_append_that_would_overwrite_committed_entries_is_refused() {
    let mut node = follower();
    // A "leader" of term 2 claims index 2 (committed here in term 1) holds another entry.
    let kind = MessageKind::Append { prev_index: 1, prev_term: 1, entries: vec![entry(2, 2)], commit: 0 };
    node.step(msg(3, 2, 2, kind));
    let ready = drive(&mut node);
    assert_eq!(ready.refused.len(), 1, "{:?}", ready.refused);
    assert!(ready.refused[0].reason.contains("overwrite entry 2, which is committed"), "{}", ready.refused[0]);
    assert!(ready.truncate_from.is_none() && ready.entries.is_empty(), "nothing was truncated: {ready:?}");
    assert_eq!(node.log().slice(1, 3), vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
    assert_eq!(node.status().commit_index, 2);
    // Overwriting the uncommitted entry 3 is the ordinary conflict rule and is accepted.
    let kind = MessageKind::Append { prev_index: 2, prev_term: 1, entries: vec![entry(3, 2)], commit: 0 };
    node.step(msg(3, 2, 2, kind));
    let ready = drive(&mut node);
    assert!(ready.refused.is_empty(), "{:?}", ready.refused);
    assert_eq!(ready.truncate_from, Some(3));
}

#[test]
fn acknowledgements_beyond_what_the_leader_sent_are_refused() {
    let mut node = leader();
    let last = node.status().last_index;
    let accepted = MessageKind::AppendResp(AppendResult::Accepted { match_index: last + 5 });
    assert_refused(&mut node, msg(2, 1, 1, accepted), "only up to 1 was sent");
    let rejected =
        MessageKind::AppendResp(AppendResult::Rejected { rejected: u64::MAX, hint_index: 0, hint_term: None });
    assert_refused(&mut node, msg(3, 1, 1, rejected), "only up to 1 was sent");
    assert_refused(&mut node, msg(2, 1, 1, MessageKind::HeartbeatResp { read_round: 7 }), "read round 7");
    // Honest acknowledgements still commit.
    node.step(msg(2, 1, 1, MessageKind::AppendResp(AppendResult::Accepted { match_index: last })));
    let ready = drive(&mut node);
    assert!(ready.refused.is_empty());
    assert_eq!(node.status().commit_index, last);
}

#[test]
fn a_read_index_answer_counts_only_from_the_leader_asked() {
    let mut node = follower();
    node.read(7);
    drive(&mut node);
    let answer = MessageKind::ReadIndexResp { id: 7, index: Some(2) };
    assert_refused(&mut node, msg(3, 2, 1, answer.clone()), "sent to node 1");
    node.step(msg(1, 2, 1, answer));
    let ready = drive(&mut node);
    assert!(ready.refused.is_empty());
    assert_eq!(ready.reads.len(), 1);
    assert_eq!(ready.reads[0].result, Ok(2));
}

#[test]
fn the_highest_term_itself_is_accepted_and_refusals_say_who_and_why() {
    let mut node = follower();
    node.step(msg(1, 2, MAX_TERM, MessageKind::Heartbeat { commit: 0, read_round: 0 }));
    let ready = drive(&mut node);
    assert!(ready.refused.is_empty(), "{:?}", ready.refused);
    assert_eq!(node.status().term, MAX_TERM);
    node.step(msg(3, 2, MAX_TERM + 1, MessageKind::TimeoutNow));
    let ready = drive(&mut node);
    let text = ready.refused.first().map(|r| r.to_string()).unwrap_or_default();
    assert!(text.starts_with(&format!("refused a message from node 3 in term {}: ", MAX_TERM + 1)), "{text}");
}
