//! Leadership transfer (§3.10): the leader stops taking proposals, brings the target up
//! to date, and only then tells it to campaign. A target told too early campaigns with a
//! shorter log than the leader's, loses (§5.4.1), and the old leader has stepped down for
//! nothing.

mod common;

use raft_core::{AppendResult, Config, Message, MessageKind, Node, ProposeError, Ready, Restored, Role};

use common::{drive, elect, msg};

/// Whether `ready` tells node `to` to campaign now.
fn timeout_now_to(ready: &Ready, to: u64) -> bool {
    ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .any(|m: &Message| m.to == to && m.kind == MessageKind::TimeoutNow)
}

fn accepted(from: u64, match_index: u64) -> Message {
    msg(from, 1, 1, MessageKind::AppendResp(AppendResult::Accepted { match_index }))
}

#[test]
fn timeout_now_goes_out_only_once_the_target_holds_the_whole_log() {
    // Node 1 of {1, 2, 3} leads term 1; its log is its no-op (1) and one write (2).
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
    elect(&mut node, 2);
    node.propose(b"x".to_vec()).expect("leader");
    drive(&mut node);
    node.step(accepted(2, 2));
    node.step(accepted(3, 1));
    drive(&mut node);

    // n3 holds only entry 1: the leader refuses writes and sends n3 what it lacks, but
    // not TimeoutNow yet.
    node.transfer_leadership(3).expect("n3 is a voter");
    let ready = drive(&mut node);
    assert!(!timeout_now_to(&ready, 3), "n3 lacks entry 2");
    assert_eq!(node.propose(b"y".to_vec()), Err(ProposeError::TransferInProgress));

    // Once n3 acknowledges entry 2, it holds the whole log and may take over.
    node.step(accepted(3, 2));
    let ready = drive(&mut node);
    assert!(timeout_now_to(&ready, 3), "n3 holds the whole log now");
    assert_eq!(node.role(), Role::Leader, "the leader leads until the target's election");
}

#[test]
fn a_target_that_already_holds_the_whole_log_is_told_at_once() {
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
    elect(&mut node, 2);
    node.step(accepted(3, 1));
    drive(&mut node);
    node.transfer_leadership(3).expect("n3 is a voter");
    assert!(timeout_now_to(&drive(&mut node), 3));
}
