//! Who may ask for a vote or an election, and who gets one: RequestVote's receiver rules
//! (Figure 2), PreVote mirroring them (§9.6), and TimeoutNow obeyed only from the
//! leader (§3.10).

mod common;

use raft_core::{Config, Entry, HardState, Message, MessageKind, Node, Payload, Restored, Role};

use common::drive;

/// Node 2 of {1, 2, 3} in `term` with log 1@1, having voted for `vote`. No lease: with
/// CheckQuorum off, only the vote rules decide.
fn node(term: u64, vote: Option<u64>) -> Node {
    let mut config = Config::new(2, vec![1, 2, 3]);
    config.check_quorum = false;
    let restored = Restored {
        hard_state: HardState { term, voted_for: vote },
        entries: vec![Entry { index: 1, term: 1, payload: Payload::Noop }],
        applied: 0,
        ..Restored::default()
    };
    Node::new(config, restored).expect("valid")
}

/// Whether node 2 grants `from` a pre-vote for `term` (the candidate's log is as ours).
fn pre_vote(node: &mut Node, from: u64, term: u64) -> bool {
    node.step(Message { from, to: 2, term, kind: MessageKind::PreVote { last_index: 1, last_term: 1 } });
    drive(node).persisted_messages.iter().any(|m| m.to == from && m.kind == MessageKind::PreVoteResp { granted: true })
}

#[test]
fn a_pre_vote_is_granted_only_where_the_real_vote_would_be() {
    // Already voted for n1 in term 3: n3 cannot get our vote in term 3, so no pre-vote
    // for it either; n1 could, and a later term is free.
    assert!(!pre_vote(&mut node(3, Some(1)), 3, 3), "our term-3 vote is n1's");
    assert!(pre_vote(&mut node(3, Some(1)), 1, 3), "n1 may ask again");
    assert!(pre_vote(&mut node(3, Some(1)), 3, 4), "term 4 is free");
    assert!(pre_vote(&mut node(3, None), 3, 3), "no vote and no leader in term 3");
    // A leader of term 3 is known: term 3's election is over.
    let mut follower = node(3, None);
    follower.step(Message { from: 1, to: 2, term: 3, kind: MessageKind::Heartbeat { commit: 0, read_round: 0 } });
    drive(&mut follower);
    assert!(!pre_vote(&mut follower, 3, 3), "term 3 has a leader");
    // None of this changed our term or vote: a PreVote changes no state (§9.6).
    let s = follower.status();
    assert_eq!((s.term, s.voted_for, s.leader), (3, None, Some(1)));
}

#[test]
fn timeout_now_is_obeyed_only_from_the_leader_we_follow() {
    let mut n = node(1, None);
    n.step(Message { from: 3, to: 2, term: 1, kind: MessageKind::TimeoutNow });
    drive(&mut n);
    assert_eq!((n.role(), n.status().term), (Role::Follower, 1), "n3 is not our leader");
    n.step(Message { from: 1, to: 2, term: 1, kind: MessageKind::Heartbeat { commit: 0, read_round: 0 } });
    drive(&mut n);
    n.step(Message { from: 3, to: 2, term: 1, kind: MessageKind::TimeoutNow });
    drive(&mut n);
    assert_eq!((n.role(), n.status().term), (Role::Follower, 1), "n1 leads, not n3");
    n.step(Message { from: 1, to: 2, term: 1, kind: MessageKind::TimeoutNow });
    let ready = drive(&mut n);
    assert_eq!((n.role(), n.status().term), (Role::Candidate, 2), "our leader hands over: campaign at once");
    assert!(ready.persisted_messages.iter().any(|m| matches!(m.kind, MessageKind::Vote { transfer: true, .. })));
}

#[test]
fn a_candidate_gives_up_only_once_a_majority_refuses() {
    // Node 1 of {1, 2, 3, 4, 5}, without PreVote, campaigns for term 1.
    let mut config = Config::new(1, vec![1, 2, 3, 4, 5]);
    config.pre_vote = false;
    let mut n = Node::new(config, Restored::default()).expect("valid");
    n.campaign();
    drive(&mut n);
    let refuse = |from| Message { from, to: 1, term: 1, kind: MessageKind::VoteResp { granted: false } };
    for (from, still_campaigning) in [(2, true), (3, true), (4, false)] {
        n.step(refuse(from));
        drive(&mut n);
        let role = if still_campaigning { Role::Candidate } else { Role::Follower };
        assert_eq!(n.role(), role, "after n{from}'s refusal");
    }
    assert_eq!(n.status().term, 1, "giving up keeps the term");
}
