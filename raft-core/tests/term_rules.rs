//! Figure 2, "Rules for Servers", all servers: a request from an older term is answered
//! with our term, so its sender learns it is behind; nothing about us changes.

mod common;

use raft_core::{AppendResult, HardState, Message, MessageKind, Node, Restored};

use common::drive;

#[test]
fn requests_from_an_older_term_are_answered_with_ours_and_change_nothing() {
    let restored = Restored { hard_state: HardState { term: 3, voted_for: Some(2) }, ..Restored::default() };
    let mut node = Node::new(raft_core::Config::new(2, vec![1, 2, 3]), restored).expect("valid");
    let before = node.status();
    let stale = [
        MessageKind::PreVote { last_index: 0, last_term: 0 },
        MessageKind::Vote { last_index: 0, last_term: 0, transfer: false },
        MessageKind::Append { prev_index: 0, prev_term: 0, entries: vec![], commit: 0 },
        MessageKind::Heartbeat { commit: 0, read_round: 0 },
        MessageKind::ReadIndex { id: 5 },
    ];
    for kind in stale {
        node.step(Message { from: 1, to: 2, term: 2, kind: kind.clone() });
        let ready = drive(&mut node);
        let replies: Vec<&Message> = ready.messages.iter().chain(&ready.persisted_messages).collect();
        let [reply] = replies.as_slice() else { panic!("one reply to {kind:?}, got {replies:?}") };
        assert_eq!((reply.to, reply.term), (1, 3), "the reply carries our term");
        let right = match (&kind, &reply.kind) {
            (MessageKind::PreVote { .. }, MessageKind::PreVoteResp { granted }) => !granted,
            (MessageKind::Vote { .. }, MessageKind::VoteResp { granted }) => !granted,
            (MessageKind::Append { .. }, MessageKind::AppendResp(AppendResult::Rejected { .. })) => true,
            (MessageKind::Heartbeat { .. }, MessageKind::HeartbeatResp { .. }) => true,
            (MessageKind::ReadIndex { id: 5 }, MessageKind::ReadIndexResp { id: 5, index: None }) => true,
            _ => false,
        };
        assert!(right, "{kind:?} answered with {:?}", reply.kind);
        assert_eq!(node.status(), before, "a stale request changes nothing");
    }
}
