//! The wake hint (`raft_core::wake_hint`): a driver that holds back what it allows still
//! commits and serves reads at once, and it never allows holding back what could matter.

mod common;

use std::collections::{BTreeMap, VecDeque};

use raft_core::{
    AppendResult, Config, MembershipChange, Message, MessageKind, Node, NodeId, ProposalOutcome, ReadId, Restored,
    Role, WakeHint,
};

use common::{drive, elect, msg};

/// Three nodes on a network that delivers in order, with a driver like lightraft's: after
/// each ready it publishes the node's hint; a heartbeat the hint lets a follower answer at
/// once is answered from it, and that heartbeat, like a message the hint lets wait, is
/// held until the node next steps another message (before that one) or ticks. Nothing
/// here ticks, so whatever was held back wrongly is never stepped.
struct Trio {
    nodes: BTreeMap<NodeId, Node>,
    hints: BTreeMap<NodeId, WakeHint>,
    network: VecDeque<Message>,
    /// Held messages, and whether each was answered from the hint.
    held: BTreeMap<NodeId, Vec<(Message, bool)>>,
    /// How many messages were held back in all, and how many answered from a hint.
    held_count: usize,
    answered_count: usize,
    committed: Vec<(NodeId, ProposalOutcome)>,
    served: Vec<(NodeId, ReadId)>,
}

impl Trio {
    fn new() -> Trio {
        let mut trio = Trio {
            nodes: BTreeMap::new(),
            hints: BTreeMap::new(),
            network: VecDeque::new(),
            held: BTreeMap::new(),
            held_count: 0,
            answered_count: 0,
            committed: Vec::new(),
            served: Vec::new(),
        };
        for id in 1..=3 {
            let node = Node::new(Config::new(id, vec![1, 2, 3]), Restored::default()).expect("valid config");
            trio.nodes.insert(id, node);
            trio.hints.insert(id, WakeHint::default());
        }
        trio
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("a node of the trio")
    }

    /// Carries out every ready and delivers every message, until nothing moves.
    fn settle(&mut self) {
        loop {
            for (&id, node) in &mut self.nodes {
                while node.has_ready() {
                    let ready = node.ready();
                    // As lightraft's driver does, before the ready's messages leave. (Here
                    // every message arrives after all readies, so the order is not tested.)
                    self.hints.insert(id, node.wake_hint());
                    self.network.extend(ready.messages.iter().cloned());
                    self.network.extend(ready.persisted_messages.iter().cloned());
                    self.committed.extend(ready.proposals.iter().map(|p| (id, *p)));
                    self.served.extend(ready.reads.iter().filter(|r| r.result.is_ok()).map(|r| (id, r.id)));
                    node.advance(&ready);
                }
            }
            let Some(m) = self.network.pop_front() else { return };
            let to = m.to;
            if let Some(answer) = self.hints[&to].answer(&m) {
                self.answered_count += 1;
                self.network.push_back(answer);
                self.held.entry(to).or_default().push((m, true));
                continue;
            }
            if self.hints[&to].may_wait(&m) {
                self.held_count += 1;
                self.held.entry(to).or_default().push((m, false));
                continue;
            }
            let held = self.held.remove(&to).unwrap_or_default();
            let node = self.node(to);
            for (m, answered) in held {
                if answered {
                    node.step_answered(m);
                } else {
                    node.step(m);
                }
            }
            node.step(m);
        }
    }
}

#[test]
fn a_cluster_holding_back_and_answering_what_its_hints_allow_still_commits_and_serves_reads_without_a_tick() {
    let mut trio = Trio::new();
    trio.node(1).campaign();
    trio.settle();
    assert_eq!(trio.node(1).role(), Role::Leader);
    for round in 0..10u64 {
        let (term, index) = trio.node(1).propose(format!("w{round}").into_bytes()).expect("the leader takes it");
        trio.settle();
        assert!(
            trio.committed.contains(&(1, ProposalOutcome::Committed { term, index })),
            "write {round} not committed without a tick: held back {:?}",
            trio.held
        );
        let (on_leader, on_follower) = (100 + round, 200 + round);
        trio.node(1).read(on_leader);
        trio.node(2 + round % 2).read(on_follower);
        trio.settle();
        assert!(trio.served.contains(&(1, on_leader)), "read {round} on the leader not served: {:?}", trio.held);
        assert!(
            trio.served.contains(&(2 + round % 2, on_follower)),
            "read {round} on a follower not served: held back {:?}",
            trio.held
        );
    }
    // Otherwise this test would show nothing about holding back or answering at once.
    assert!(trio.held_count >= 10, "only {} messages were held back", trio.held_count);
    assert!(trio.answered_count >= 10, "only {} heartbeats were answered at once", trio.answered_count);
}

/// Node 1 of three, newly elected leader; see `both_followers_hold_everything`.
fn steady_leader() -> Node {
    let mut leader = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
    elect(&mut leader, 2);
    both_followers_hold_everything(&mut leader);
    leader
}

/// Nodes 2 and 3 acknowledge the leader's whole log, so it is steady.
fn both_followers_hold_everything(leader: &mut Node) {
    let term = leader.status().term;
    for from in [2, 3] {
        let last = leader.status().last_index;
        leader.step(msg(from, 1, term, MessageKind::AppendResp(AppendResult::Accepted { match_index: last })));
        drive(leader);
    }
}

#[test]
fn only_answers_that_change_nothing_urgent_may_wait() {
    let mut leader = Node::new(Config::new(1, vec![1, 2, 3]), Restored::default()).expect("valid config");
    let hb_of = |from, term, read_round| msg(from, 1, term, MessageKind::HeartbeatResp { read_round });
    let hb = |term| hb_of(2, term, 0);
    let ack = |term, match_index| msg(2, 1, term, MessageKind::AppendResp(AppendResult::Accepted { match_index }));

    // A follower's hint, and a fresh leader's that does not yet know where its followers'
    // logs match, hold back nothing.
    assert!(!leader.wake_hint().may_wait(&hb(0)));
    elect(&mut leader, 2);
    let term = leader.status().term;
    assert!(!leader.wake_hint().may_wait(&hb(term)));

    // Both followers hold the no-op: the leader is steady.
    both_followers_hold_everything(&mut leader);
    let commit = leader.status().commit_index;
    let hint = leader.wake_hint();
    assert!(hint.may_wait(&ack(term, commit)), "an acknowledgement of what is committed");
    assert!(hint.may_wait(&hb(term)), "a heartbeat's answer with no read waiting");
    assert!(!hint.may_wait(&hb(term + 1)), "a message of another term");
    assert!(!hint.may_wait(&msg(2, 1, term, MessageKind::ReadIndex { id: 1 })), "a request");

    // A new entry: the acknowledgement that commits it is urgent.
    leader.propose(b"x".to_vec()).expect("the leader takes it");
    drive(&mut leader);
    assert!(!leader.wake_hint().may_wait(&ack(term, commit + 1)));

    // A read waits for its round: an answer that may confirm it is urgent.
    leader.read(7);
    drive(&mut leader);
    assert!(!leader.wake_hint().may_wait(&hb_of(2, term, 1)));
    // The first answer confirms it; then the other follower's answer for that round can
    // confirm nothing, even with another read waiting for the next round.
    leader.step(hb_of(2, term, 1));
    leader.read(8);
    drive(&mut leader);
    assert!(leader.wake_hint().may_wait(&hb_of(3, term, 1)));
    assert!(!leader.wake_hint().may_wait(&hb_of(3, term, 2)));

    // A transfer under way waits for its target's acknowledgements.
    let mut leader = steady_leader();
    assert!(leader.wake_hint().may_wait(&ack(term, commit)));
    leader.transfer_leadership(3).expect("3 is a voter");
    drive(&mut leader);
    assert!(!leader.wake_hint().may_wait(&ack(term, commit)));

    // So does a configuration change: a learner to add (and promote once caught up).
    let mut leader = steady_leader();
    assert!(leader.wake_hint().may_wait(&ack(term, commit)));
    let add = MembershipChange::AddLearner { id: 4, address: "n4".into() };
    leader.propose_membership(add).expect("the leader takes it");
    drive(&mut leader);
    assert!(!leader.wake_hint().may_wait(&ack(term, commit)));
}

/// Node 2 of three, following leader 1 in term 1, with index 1 committed.
fn follower() -> Node {
    let mut node = Node::new(Config::new(2, vec![1, 2, 3]), Restored::default()).expect("valid config");
    let noop = raft_core::Entry { index: 1, term: 1, payload: raft_core::Payload::Noop };
    let append = MessageKind::Append { prev_index: 0, prev_term: 0, entries: vec![noop], commit: 0 };
    node.step(msg(1, 2, 1, append));
    drive(&mut node);
    node.step(msg(1, 2, 1, MessageKind::Heartbeat { commit: 1, read_round: 0 }));
    drive(&mut node);
    assert_eq!((node.status().commit_index, node.status().leader), (1, Some(1)));
    node
}

#[test]
fn a_follower_answers_at_once_only_its_leaders_heartbeats_that_bring_nothing_new() {
    let hb = |from, to, term, commit| msg(from, to, term, MessageKind::Heartbeat { commit, read_round: 4 });
    let mut node = follower();
    let hint = node.wake_hint();
    let answer = msg(2, 1, 1, MessageKind::HeartbeatResp { read_round: 4 });
    assert_eq!(hint.answer(&hb(1, 2, 1, 1)), Some(answer.clone()), "a heartbeat of what it knows");
    assert_eq!(hint.answer(&hb(1, 2, 1, 0)), Some(answer), "one of less");
    assert_eq!(hint.answer(&hb(1, 2, 1, 2)), None, "a new commit index must be learned now");
    assert_eq!(hint.answer(&hb(3, 2, 1, 1)), None, "not from its leader");
    assert_eq!(hint.answer(&hb(1, 3, 1, 1)), None, "addressed to another node");
    assert_eq!(hint.answer(&hb(1, 2, 0, 1)), None, "an older term");
    assert_eq!(hint.answer(&hb(1, 2, 2, 1)), None, "a later term");
    assert_eq!(hint.answer(&msg(1, 2, 1, MessageKind::ReadIndexResp { id: 1, index: Some(1) })), None);

    // Stepped once answered: the leader lives (no election however long this goes on),
    // and nothing is answered twice.
    for _ in 0..5 {
        for _ in 0..9 {
            node.tick();
        }
        node.step_answered(hb(1, 2, 1, 1));
        let ready = drive(&mut node);
        let sent: Vec<_> = ready.messages.iter().chain(&ready.persisted_messages).map(|m| m.to_string()).collect();
        assert!(sent.is_empty(), "sent {sent:?}");
    }
    assert_eq!(node.role(), Role::Follower);

    // Once it votes in a later term, the hint it publishes before the vote leaves answers
    // nothing of the old leader's, nor of the same leader re-elected later, for an old term.
    let vote = MessageKind::Vote { last_index: 1, last_term: 1, transfer: true };
    node.step(msg(3, 2, 2, vote));
    let ready = drive(&mut node);
    assert!(ready.persisted_messages.iter().any(|m| m.kind == MessageKind::VoteResp { granted: true }));
    assert_eq!(node.wake_hint().answer(&hb(1, 2, 1, 1)), None);
    node.step(hb(1, 2, 3, 1));
    drive(&mut node);
    assert!(node.wake_hint().answer(&hb(1, 2, 3, 1)).is_some(), "its leader of term 3");
    assert_eq!(node.wake_hint().answer(&hb(1, 2, 1, 1)), None, "the same leader, of term 1");

    // A leader answers no heartbeat from its hint.
    let leader = steady_leader();
    assert_eq!(leader.wake_hint().answer(&hb(2, 1, leader.status().term, 0)), None);
}
