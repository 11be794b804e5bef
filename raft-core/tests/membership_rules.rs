//! Membership changes (dissertation chapter 4), rule by rule: see `src/membership.rs`.

mod common;

use raft_core::{
    AppendResult, ChangeError, Config, Entry, HardState, Membership, MembershipChange, Message, MessageKind, Node,
    Payload, ProposalOutcome, Restored, Role, TransferError,
};

use common::{drive, elect, msg};

fn add(id: u64) -> MembershipChange {
    MembershipChange::AddLearner { id, address: format!("host-{id}") }
}

fn remove(id: u64) -> MembershipChange {
    MembershipChange::Remove { id }
}

fn accepted(match_index: u64) -> MessageKind {
    MessageKind::AppendResp(AppendResult::Accepted { match_index })
}

/// Node 1, elected leader of {1, 2, 3} in term 1 by node 2's vote; its no-op (index 1)
/// is not yet acknowledged by anyone.
fn new_leader() -> Node {
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
    elect(&mut node, 2);
    assert_eq!(node.role(), Role::Leader);
    node
}

/// The same leader once node 2 holds its no-op: index 1 is committed.
fn leader() -> Node {
    let mut node = new_leader();
    node.step(msg(2, 1, 1, accepted(1)));
    drive(&mut node);
    assert_eq!(node.status().commit_index, 1);
    node
}

/// The messages of a ready, both kinds.
fn sent(ready: &raft_core::Ready) -> Vec<&Message> {
    ready.messages.iter().chain(&ready.persisted_messages).collect()
}

#[test]
fn a_new_leader_changes_nothing_before_committing_an_entry_of_its_term() {
    let mut node = new_leader();
    assert_eq!(node.propose_membership(add(4)), Err(ChangeError::NewLeader), "rule 4: the raft-dev 2015 fix");
    node.step(msg(2, 1, 1, accepted(1)));
    drive(&mut node);
    assert_eq!(node.propose_membership(add(4)), Ok((1, 2)));
}

#[test]
fn one_change_at_a_time() {
    let mut node = leader();
    assert_eq!(node.propose_membership(add(4)), Ok((1, 2)));
    assert_eq!(node.propose_membership(remove(3)), Err(ChangeError::ChangeInProgress { index: 2 }));
    drive(&mut node);
    node.step(msg(2, 1, 1, accepted(2)));
    let ready = drive(&mut node);
    assert!(ready.proposals.contains(&ProposalOutcome::Committed { term: 1, index: 2 }));
    assert_eq!(node.propose_membership(remove(3)), Ok((1, 3)), "the previous change committed");
    assert!(matches!(
        node.propose_membership(remove(9)),
        Err(ChangeError::NotLeader { .. } | ChangeError::ChangeInProgress { .. })
    ));
}

#[test]
fn impossible_changes_are_refused_with_a_reason() {
    let mut node = leader();
    let refused = |node: &mut Node, change| match node.propose_membership(change) {
        Err(ChangeError::Invalid(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(refused(&mut node, add(2)).contains("already a voter"));
    assert!(refused(&mut node, remove(7)).contains("not a member"));
    let mut follower = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid");
    assert_eq!(follower.propose_membership(add(4)), Err(ChangeError::NotLeader { leader: None }));
    let mut alone = Node::new(Config::new(1, vec![1]), Restored::default()).expect("valid");
    alone.campaign();
    drive(&mut alone);
    drive(&mut alone);
    assert_eq!(alone.role(), Role::Leader);
    assert!(refused(&mut alone, remove(1)).contains("last voter"));
}

#[test]
fn a_configuration_rules_from_the_moment_it_is_appended_and_a_truncation_undoes_it() {
    let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid");
    let with4 = Membership { voters: [1, 2, 3, 4].into(), ..Membership::default() };
    let entries = vec![
        Entry { index: 1, term: 1, payload: Payload::Noop },
        Entry { index: 2, term: 1, payload: Payload::Membership(with4.clone()) },
    ];
    node.step(msg(1, 2, 1, MessageKind::Append { prev_index: 0, prev_term: 0, entries, commit: 1 }));
    drive(&mut node);
    assert_eq!(node.membership(), &with4, "rule 1: uncommitted, yet in force");
    assert_eq!(node.status().membership_index, 2);
    // A new leader of term 2 never had entry 2: its own entry replaces it, and the
    // configuration before it rules again.
    let replacement = vec![Entry { index: 2, term: 2, payload: Payload::Noop }];
    node.step(msg(3, 2, 2, MessageKind::Append { prev_index: 1, prev_term: 1, entries: replacement, commit: 1 }));
    drive(&mut node);
    assert_eq!(node.membership(), &Membership::initial(&[1, 2, 3]));
    assert_eq!(node.status().membership_index, 0);
}

#[test]
fn a_learner_gets_the_log_but_neither_votes_nor_counts_and_is_promoted_once_caught_up() {
    let mut node = leader();
    node.propose_membership(add(4)).expect("a change may start");
    let ready = drive(&mut node);
    assert!(sent(&ready).iter().any(|m| m.to == 4), "the learner receives appends: {ready:?}");
    // The learner's acknowledgement alone commits nothing: {1, 4} is no majority of {1, 2, 3}.
    node.step(msg(
        4,
        1,
        1,
        MessageKind::AppendResp(AppendResult::Rejected { rejected: 1, hint_index: 1, hint_term: None }),
    ));
    drive(&mut node);
    node.step(msg(4, 1, 1, accepted(2)));
    drive(&mut node);
    assert_eq!(node.status().commit_index, 1, "a learner never counts towards a commit");
    assert_eq!(node.membership().to_string(), "voters 1 2 3 learners 4", "no promotion while the add is uncommitted");
    node.step(msg(3, 1, 1, accepted(1)));
    drive(&mut node);
    node.step(msg(3, 1, 1, accepted(2)));
    let ready = drive(&mut node);
    assert_eq!(node.status().commit_index, 2);
    // The learner is caught up and the add committed: the leader promotes it (rule 5).
    assert_eq!(node.membership().to_string(), "voters 1 2 3 4");
    assert!(ready.entries.iter().any(|e| matches!(&e.payload, Payload::Membership(m) if m.is_voter(4))));
}

#[test]
fn a_learner_far_behind_is_not_promoted() {
    let mut node = leader();
    for i in 0..40 {
        node.propose(vec![i]).expect("leader");
    }
    node.propose_membership(add(4)).expect("change");
    drive(&mut node);
    let last = node.status().last_index;
    node.step(msg(2, 1, 1, accepted(last)));
    drive(&mut node);
    assert_eq!(node.status().commit_index, last);
    // The learner holds only the first entries: more than `promote_lag` (16) behind.
    node.step(msg(4, 1, 1, accepted(5)));
    drive(&mut node);
    assert!(node.membership().is_learner(4), "{}", node.membership());
    node.step(msg(4, 1, 1, accepted(last - 16)));
    drive(&mut node);
    assert!(node.membership().is_voter(4), "within the lag: promoted");
}

#[test]
fn only_voters_votes_win_an_election() {
    // Node 4 is a learner of {1, 2, 3}; node 1 (in term 1, which wrote the entry)
    // campaigns for term 2 and only node 4 grants.
    let learner = Membership { voters: [1, 2, 3].into(), learners: [4].into(), ..Membership::default() };
    let entries = vec![Entry { index: 1, term: 1, payload: Payload::Membership(learner) }];
    let hard_state = HardState { term: 1, voted_for: None };
    let restored = Restored { hard_state, entries, ..Restored::default() };
    let mut node = Node::new(Config::new(1, vec![1, 2, 3]), restored).expect("valid");
    node.campaign();
    let ready = drive(&mut node);
    assert!(sent(&ready).iter().all(|m| m.to != 4), "a learner is not asked to vote");
    node.step(msg(4, 1, 2, MessageKind::PreVoteResp { granted: true }));
    drive(&mut node);
    assert_eq!(node.role(), Role::PreCandidate, "a learner's grant does not count");
    node.step(msg(3, 1, 2, MessageKind::PreVoteResp { granted: true }));
    drive(&mut node);
    node.step(msg(4, 1, 2, MessageKind::VoteResp { granted: true }));
    drive(&mut node);
    assert_eq!(node.role(), Role::Candidate, "nor does its vote");
    node.step(msg(2, 1, 2, MessageKind::VoteResp { granted: true }));
    drive(&mut node);
    assert_eq!(node.role(), Role::Leader);
}

#[test]
fn learners_and_servers_outside_the_configuration_never_campaign() {
    // A learner, and a server that joins later and knows only the initial configuration.
    let learner = Membership { voters: [1, 2, 3].into(), learners: [4].into(), ..Membership::default() };
    let entries = vec![Entry { index: 1, term: 1, payload: Payload::Membership(learner) }];
    let mut as_learner = Node::new(
        Config::new(4, vec![1, 2, 3]),
        Restored { hard_state: HardState { term: 1, voted_for: None }, entries, ..Restored::default() },
    )
    .expect("valid");
    let mut newcomer = Node::new(Config::new(5, vec![1, 2, 3]), Restored::default()).expect("valid");
    for node in [&mut as_learner, &mut newcomer] {
        for _ in 0..100 {
            node.tick();
        }
        node.campaign();
        node.step(msg(1, node.id(), 1, MessageKind::TimeoutNow));
        let ready = drive(node);
        assert_eq!(node.role(), Role::Follower);
        assert!(sent(&ready).is_empty(), "{ready:?}");
    }
    // Yet a server outside the configuration hears a leader (§4.1): it may be adding us.
    let entries = vec![Entry { index: 1, term: 1, payload: Payload::Noop }];
    newcomer.step(msg(1, 5, 1, MessageKind::Append { prev_index: 0, prev_term: 0, entries, commit: 1 }));
    let ready = drive(&mut newcomer);
    assert_eq!(newcomer.status().commit_index, 1);
    assert!(ready.persisted_messages.iter().any(|m| m.to == 1 && m.kind == accepted(1)));
}

#[test]
fn a_leader_that_removes_itself_leads_until_the_change_commits_then_hands_over() {
    let mut node = leader();
    node.step(msg(3, 1, 1, accepted(1)));
    drive(&mut node);
    assert_eq!(node.propose_membership(remove(1)), Ok((1, 2)));
    node.propose(b"x".to_vec()).expect("still the leader");
    drive(&mut node);
    // The new voters are {2, 3}: the leader's own copy no longer counts (rule 6).
    node.step(msg(2, 1, 1, accepted(2)));
    drive(&mut node);
    assert_eq!(node.role(), Role::Leader, "leads on while the removal is uncommitted");
    assert_eq!(node.status().commit_index, 1, "one of two new voters is no majority");
    // Node 3 holds everything, node 2 not the write after the removal.
    node.step(msg(3, 1, 1, accepted(3)));
    let ready = drive(&mut node);
    assert_eq!(node.status().commit_index, 2);
    assert_eq!(node.role(), Role::Follower, "steps down once committed");
    let handover: Vec<&Message> = sent(&ready).into_iter().filter(|m| m.kind == MessageKind::TimeoutNow).collect();
    assert_eq!(handover.len(), 1, "asks one voter to take over: {ready:?}");
    assert_eq!(handover[0].to, 3, "the one that holds the whole log");
    for _ in 0..100 {
        node.tick();
    }
    assert_eq!(drive(&mut node).messages.len() + node.ready().persisted_messages.len(), 0, "never campaigns");
}

#[test]
fn transfer_goes_only_to_a_voter_and_lasts_across_commits() {
    let mut node = leader();
    node.propose_membership(add(4)).expect("change");
    drive(&mut node);
    assert_eq!(node.transfer_leadership(4), Err(TransferError::InvalidTarget));
    assert_eq!(node.transfer_leadership(3), Ok(()));
    assert_eq!(node.propose_membership(remove(2)), Err(ChangeError::TransferInProgress));
    // A commit during the transfer (the add, acknowledged by node 2) does not end it.
    node.step(msg(2, 1, 1, accepted(2)));
    drive(&mut node);
    assert_eq!(node.status().commit_index, 2);
    assert_eq!(node.propose_membership(remove(2)), Err(ChangeError::TransferInProgress));
}

#[test]
fn a_snapshot_keeps_the_configuration_of_its_point_and_an_installed_one_brings_it() {
    let mut node = leader();
    node.propose_membership(add(4)).expect("change");
    node.propose(b"x".to_vec()).expect("leader");
    drive(&mut node);
    node.step(msg(2, 1, 1, accepted(3)));
    let ready = drive(&mut node);
    assert_eq!(node.status().commit_index, 3, "{ready:?}");
    node.compact(3).expect("applied");
    let ready = drive(&mut node);
    let snapshot = ready.compacted.expect("compacted");
    assert_eq!(snapshot.membership.to_string(), "voters 1 2 3 learners 4", "the entry that set it is gone");
    assert_eq!(node.membership(), &snapshot.membership);

    let mut follower = Node::new(Config::new(4, vec![1, 2, 3]), Restored::default()).expect("valid");
    follower.step(msg(1, 4, 1, MessageKind::InstallSnapshot { snapshot: snapshot.clone() }));
    let ready = drive(&mut follower);
    assert_eq!(ready.install_snapshot, Some(snapshot.clone()));
    assert_eq!(follower.membership(), &snapshot.membership, "the learner learns it is one");
}
