//! Figure 2's AppendEntries receiver rules, checked one by one on a follower's state.

mod common;

use raft_core::{Entry, HardState, Message, MessageKind, Node, Payload, Restored};

use common::drive;

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: Payload::Command(vec![index as u8, term as u8]) }
}

/// Node 2 of {1, 2, 3} in term 2, holding 1..=5 of term 1 and 6..=8 of term 2 (from
/// term 2's leader; none committed as far as it knows).
fn follower() -> Node {
    let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).chain((6..=8).map(|i| entry(i, 2))).collect();
    let restored =
        Restored { hard_state: HardState { term: 2, voted_for: None }, entries, applied: 0, ..Restored::default() };
    Node::new(raft_core::Config::new(2, vec![1, 2, 3]), restored).expect("valid")
}

fn append(term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> Message {
    Message {
        from: 3,
        to: 2,
        term,
        kind: MessageKind::Append { prev_index: prev.0, prev_term: prev.1, entries, commit },
    }
}

#[test]
fn rule_5_commit_only_as_far_as_the_append_proved_the_logs_match() {
    // Term 3's leader holds 6@2 and 7@2 too, then 8@3 (committed with 9@3). A short
    // append (say, cut by the size limit) proves our log matches up to 7 only; our 8@2
    // is about to be overwritten, so committing up to the leader's commit index 9 would
    // apply an entry that never committed.
    let mut node = follower();
    node.step(append(3, (5, 1), vec![entry(6, 2), entry(7, 2)], 9));
    let ready = drive(&mut node);
    assert_eq!(node.status().commit_index, 7, "commit = min(leaderCommit, index of last new entry)");
    assert_eq!(ready.committed.last().map(|e| (e.index, e.term)), Some((7, 2)));
    assert!(ready.truncate_from.is_none(), "matching entries are kept (rule 3)");
}

#[test]
fn rule_2_a_missing_or_different_previous_entry_is_rejected_and_changes_no_log() {
    let mut node = follower();
    node.step(append(3, (9, 3), vec![entry(10, 3)], 9));
    node.step(append(3, (8, 3), vec![entry(9, 3)], 9));
    let ready = drive(&mut node);
    assert!(ready.entries.is_empty() && ready.truncate_from.is_none());
    assert_eq!(node.status().commit_index, 0);
    let rejections = ready
        .persisted_messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::AppendResp(raft_core::AppendResult::Rejected { .. })))
        .count();
    assert_eq!(rejections, 2);
}

#[test]
fn rules_3_and_4_a_conflict_deletes_the_entry_and_all_after_it_then_appends() {
    let mut node = follower();
    node.step(append(3, (6, 2), vec![entry(7, 2), entry(8, 3)], 0));
    let ready = drive(&mut node);
    assert_eq!(ready.truncate_from, Some(8));
    assert_eq!(ready.entries, vec![entry(8, 3)]);
    assert_eq!(node.log().last_index(), 8);
    assert_eq!(node.log().term_at(8), Some(3));
}

#[test]
fn an_acknowledgement_claims_only_what_the_append_proved() {
    // Our log runs to 8, but this append proves a match only up to 6: entries 7 and 8
    // may still differ from the leader's, so claiming them could let it commit an entry
    // that a majority does not hold.
    let mut node = follower();
    node.step(append(3, (5, 1), vec![entry(6, 2)], 0));
    let ready = drive(&mut node);
    let acks: Vec<u64> = ready
        .persisted_messages
        .iter()
        .filter_map(|m| match m.kind {
            MessageKind::AppendResp(raft_core::AppendResult::Accepted { match_index }) => Some(match_index),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![6]);
}

/// Node 1 of {1, 2, 3}, elected for term 7 with a log of the given terms (1-based), and
/// the append it sends node 3 after node 3 rejects `rejected` with the given hint.
fn leader_after_rejection(terms: &[u64], rejected: u64, hint: (u64, Option<u64>)) -> (u64, u64) {
    let entries: Vec<Entry> = terms.iter().enumerate().map(|(i, &t)| entry(i as u64 + 1, t)).collect();
    let restored =
        Restored { hard_state: HardState { term: 6, voted_for: None }, entries, applied: 0, ..Restored::default() };
    let mut config = raft_core::Config::new(1, vec![1, 2, 3]);
    config.pre_vote = false;
    let mut node = Node::new(config, restored).expect("valid");
    node.campaign();
    drive(&mut node);
    node.step(Message { from: 2, to: 1, term: 7, kind: MessageKind::VoteResp { granted: true } });
    drive(&mut node); // the no-op, sent to both
    let result = raft_core::AppendResult::Rejected { rejected, hint_index: hint.0, hint_term: hint.1 };
    node.step(Message { from: 3, to: 1, term: 7, kind: MessageKind::AppendResp(result) });
    let ready = drive(&mut node);
    let prev = ready.messages.iter().find_map(|m| match m.kind {
        MessageKind::Append { prev_index, prev_term, .. } if m.to == 3 => Some((prev_index, prev_term)),
        _ => None,
    });
    prev.expect("the leader tries again at once")
}

#[test]
fn section_5_3_a_rejection_hint_skips_a_whole_conflicting_term() {
    // The example in `handle_append_resp`: the follower (1 1 1 2 2 2 3 3 3 3) rejects
    // prev 10 with hint 7@3. We hold no term 3, and our last entry of term <= 3 is
    // index 3 (term 1): retry right after it.
    assert_eq!(leader_after_rejection(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6], 10, (7, Some(3))), (3, 1));
    // A follower (1 1 1 4 4 4 4) rejects prev 10 with hint 4@4. We hold term 4 up to
    // index 5: our logs may agree that far, so retry after 5, not from the hint.
    assert_eq!(leader_after_rejection(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6], 10, (4, Some(4))), (5, 4));
    // A follower whose log ends at 6 says so: retry after 6.
    assert_eq!(leader_after_rejection(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6], 10, (7, None)), (6, 5));
}
