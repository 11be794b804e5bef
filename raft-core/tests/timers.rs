//! The rules about time, each stated and checked on the node's state: which events
//! restart the election timer (§5.2), how the timeout is randomized, the lease that
//! refuses vote requests while a leader is heard from (§4.2.3), the transfer that passes
//! it (§3.10), and CheckQuorum, which makes a cut-off leader step down (§6.2).

mod common;

use raft_core::{
    Config, Entry, HardState, Message, MessageKind, Node, Payload, ProposeError, ReadError, Ready, Restored, Role,
};

use common::{drive, elect, msg};

const ET: u64 = 10;

fn config(id: u64, seed: u64) -> Config {
    let mut c = Config::new(id, vec![1, 2, 3]);
    c.seed = seed;
    c
}

/// Node 2 of {1, 2, 3} in term 1, following leader 1 with the no-op 1@1.
fn follower(config: Config) -> Node {
    let mut node = Node::new(config, Restored::default()).expect("valid config");
    let entries = vec![Entry { index: 1, term: 1, payload: Payload::Noop }];
    node.step(msg(1, 2, 1, MessageKind::Append { prev_index: 0, prev_term: 0, entries, commit: 1 }));
    drive(&mut node);
    assert_eq!(node.status().leader, Some(1));
    node
}

/// Ticks until the node starts an election (a (pre-)vote request leaves, or it leads);
/// returns how many ticks that took, or `None` within `limit`.
fn ticks_to_campaign(node: &mut Node, limit: u64) -> Option<u64> {
    for t in 1..=limit {
        node.tick();
        let ready = drive(node);
        let asks = ready
            .messages
            .iter()
            .chain(&ready.persisted_messages)
            .any(|m| matches!(m.kind, MessageKind::PreVote { .. } | MessageKind::Vote { .. }));
        if asks || node.role() == Role::Leader {
            return Some(t);
        }
    }
    None
}

/// A PreVote or vote request from node 3 for term `term`, with a log as long as ours.
fn request(kind: &str, term: u64) -> Message {
    let kind = match kind {
        "prevote" => MessageKind::PreVote { last_index: 1, last_term: 1 },
        "vote" => MessageKind::Vote { last_index: 1, last_term: 1, transfer: false },
        _ => MessageKind::Vote { last_index: 1, last_term: 1, transfer: true },
    };
    msg(3, 2, term, kind)
}

/// Whether `ready` grants node 3 a pre-vote or vote.
fn grants(ready: &Ready) -> bool {
    ready.persisted_messages.iter().chain(&ready.messages).any(|m| {
        m.to == 3
            && matches!(m.kind, MessageKind::PreVoteResp { granted: true } | MessageKind::VoteResp { granted: true })
    })
}

#[test]
fn election_timeouts_are_randomized_between_one_and_two_election_timeouts() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..300 {
        let mut node = Node::new(config(1, seed), Restored::default()).expect("valid config");
        let t = ticks_to_campaign(&mut node, 3 * ET).expect("a follower that hears nothing campaigns");
        assert!((ET..2 * ET).contains(&t), "seed {seed}: campaigned after {t} ticks, outside [{ET}, {})", 2 * ET);
        seen.insert(t);
    }
    // Randomized (§5.2: split votes are rare because timeouts differ): every value of
    // the range turns up over 300 seeds.
    assert_eq!(seen.len() as u64, ET, "timeouts seen: {seen:?}");
}

/// Whether `ready` asks for (pre-)votes.
fn campaigns(ready: &Ready) -> bool {
    ready
        .messages
        .iter()
        .chain(&ready.persisted_messages)
        .any(|m| matches!(m.kind, MessageKind::PreVote { .. } | MessageKind::Vote { .. }))
}

#[test]
fn a_leaders_heartbeats_keep_a_follower_from_campaigning() {
    let mut node = follower(config(2, 7));
    for round in 0..20 {
        for _ in 0..ET - 1 {
            node.tick();
            assert!(!campaigns(&drive(&mut node)), "round {round}: campaigned while the leader was heard");
        }
        node.step(msg(1, 2, 1, MessageKind::Heartbeat { commit: 1, read_round: 0 }));
        drive(&mut node);
    }
    let t = ticks_to_campaign(&mut node, 3 * ET).expect("campaigns once the heartbeats stop");
    assert!((ET..2 * ET).contains(&t), "campaigned {t} ticks after the last heartbeat");
}

#[test]
fn appends_from_the_leader_restart_the_timer_but_stale_ones_do_not() {
    // Followers with the same seed draw the same timeout. All wait ET - 1 ticks.
    let (mut quiet, mut fed) = (follower(config(2, 12)), follower(config(2, 12)));
    let mut stale = follower(config(2, 12));
    for node in [&mut quiet, &mut fed, &mut stale] {
        for _ in 0..ET - 1 {
            node.tick();
            drive(node);
        }
    }
    fed.step(msg(1, 2, 1, MessageKind::Append { prev_index: 1, prev_term: 1, entries: vec![], commit: 1 }));
    drive(&mut fed);
    // An append of term 0, which the node (in term 1) answers as stale.
    stale.step(msg(3, 2, 0, MessageKind::Append { prev_index: 0, prev_term: 0, entries: vec![], commit: 0 }));
    assert!(drive(&mut stale).refused.is_empty(), "stale, not impossible");
    let q = ticks_to_campaign(&mut quiet, 3 * ET).expect("campaigns");
    let f = ticks_to_campaign(&mut fed, 3 * ET).expect("campaigns");
    let s = ticks_to_campaign(&mut stale, 3 * ET).expect("campaigns");
    // This seed's timeout is below its maximum, so a timer that was not restarted fires
    // within ET ticks.
    assert!(q < ET, "seed 12 must draw a timeout below {}", 2 * ET - 1);
    assert!(f >= ET, "an append restarts the timer: campaigned {f} ticks after it");
    assert_eq!(s, q, "a message from an older term changes nothing, the timer included");
}

#[test]
fn granting_a_vote_restarts_the_timer_and_refusing_one_does_not() {
    // Node 2 in term 2, no leader, no vote yet, log 1@1. Same seed, same timeout.
    let restored = || Restored {
        hard_state: HardState { term: 2, voted_for: None },
        entries: vec![Entry { index: 1, term: 1, payload: Payload::Noop }],
        applied: 0,
        ..Restored::default()
    };
    let mut cfg = config(2, 5);
    cfg.pre_vote = false;
    let mut quiet = Node::new(cfg.clone(), restored()).expect("valid");
    let mut granted = Node::new(cfg.clone(), restored()).expect("valid");
    let mut refused = Node::new(cfg.clone(), restored()).expect("valid");
    let mut later = Node::new(cfg, restored()).expect("valid");
    for node in [&mut quiet, &mut granted, &mut refused, &mut later] {
        for _ in 0..ET - 1 {
            node.tick();
            drive(node);
        }
    }
    granted.step(msg(3, 2, 2, MessageKind::Vote { last_index: 1, last_term: 1, transfer: false }));
    assert!(grants(&drive(&mut granted)));
    // A candidate whose log is behind ours (§5.4.1) is refused.
    refused.step(msg(3, 2, 2, MessageKind::Vote { last_index: 0, last_term: 0, transfer: false }));
    assert!(!grants(&drive(&mut refused)));
    // So is one from a later term: we adopt the term, but hearing of it is not hearing
    // from a leader, so the timer runs on (Figure 2). Else a candidate too stale to win
    // could keep restarting the timers of those that could, and stall elections.
    later.step(msg(3, 2, 3, MessageKind::Vote { last_index: 0, last_term: 0, transfer: false }));
    assert!(!grants(&drive(&mut later)));
    assert_eq!(later.status().term, 3);
    let q = ticks_to_campaign(&mut quiet, 3 * ET).expect("campaigns");
    let g = ticks_to_campaign(&mut granted, 3 * ET).expect("campaigns");
    let r = ticks_to_campaign(&mut refused, 3 * ET).expect("campaigns");
    assert!(q < ET, "seed 5 must draw a timeout below {}, so an unrestarted timer fires within ET", 2 * ET - 1);
    assert!(g >= ET, "granting a vote restarts the timer: campaigned {g} ticks after it");
    assert_eq!(r, q, "a refused vote leaves the timer alone");
    let l = ticks_to_campaign(&mut later, 3 * ET).expect("campaigns");
    assert_eq!(l, q, "adopting a later term from a refused vote leaves the timer alone");
}

#[test]
fn within_the_lease_prevotes_are_refused_and_vote_requests_ignored() {
    let mut node = follower(config(2, 3));
    node.step(request("prevote", 2));
    let ready = drive(&mut node);
    assert!(!grants(&ready), "a PreVote is refused while the leader is heard from");
    node.step(request("vote", 2));
    let ready = drive(&mut node);
    assert!(!grants(&ready) && ready.persisted_messages.is_empty(), "a vote request is ignored: {ready:?}");
    let s = node.status();
    assert_eq!((s.role, s.term, s.leader, s.voted_for), (Role::Follower, 1, Some(1), None));

    // One election timeout without the leader: the lease has run out.
    for _ in 0..ET {
        node.tick();
        drive(&mut node);
    }
    // It still follows n1 (its own timeout, on this seed, is longer): the lease ran out
    // by time alone.
    assert_eq!((node.role(), node.status().leader), (Role::Follower, Some(1)), "pick a seed with a longer timeout");
    node.step(request("prevote", 2));
    assert!(grants(&drive(&mut node)), "after an election timeout without a leader, PreVote is granted");
}

#[test]
fn a_transfers_vote_request_passes_the_lease() {
    let mut node = follower(config(2, 3));
    node.step(request("transfer", 2));
    let ready = drive(&mut node);
    assert!(grants(&ready), "the leader asked for this election (§3.10)");
    assert_eq!((node.status().term, node.status().voted_for), (2, Some(3)));
}

#[test]
fn without_check_quorum_there_is_no_lease() {
    let mut cfg = config(2, 3);
    cfg.check_quorum = false;
    let mut node = follower(cfg);
    node.step(request("prevote", 2));
    assert!(grants(&drive(&mut node)), "no CheckQuorum, so no lease to protect: PreVote granted");
}

/// Node 1 of {1, 2, 3}, leader of term 1 after PreVote and vote grants from node 2.
fn leader(check_quorum: bool) -> Node {
    let mut cfg = config(1, 1);
    cfg.check_quorum = check_quorum;
    let mut node = Node::new(cfg, Restored::default()).expect("valid config");
    elect(&mut node, 2);
    assert_eq!(node.role(), Role::Leader);
    node
}

#[test]
fn check_quorum_makes_a_leader_that_hears_no_majority_step_down() {
    let mut node = leader(true);
    let mut stepped_down = None;
    for t in 1..=3 * ET {
        node.tick();
        drive(&mut node);
        if node.role() != Role::Leader {
            stepped_down = Some(t);
            break;
        }
    }
    let t = stepped_down.expect("a leader that hears from no one steps down");
    // Heard from no one since it was elected: the first check, an election timeout
    // later, finds no majority.
    assert_eq!(t, ET, "stepped down after {t} ticks");
    let s = node.status();
    assert_eq!((s.role, s.term, s.leader), (Role::Follower, 1, None), "same term, no leader");
}

#[test]
fn a_leader_that_hears_from_a_majority_keeps_leading() {
    for check_quorum in [true, false] {
        let mut node = leader(check_quorum);
        for _ in 0..10 * ET {
            node.tick();
            drive(&mut node);
            if check_quorum {
                // Node 2 answers every heartbeat: with the leader, a majority of three.
                node.step(msg(2, 1, 1, MessageKind::HeartbeatResp { read_round: 0 }));
                drive(&mut node);
            }
        }
        assert_eq!(node.role(), Role::Leader, "check_quorum={check_quorum}");
    }
}

#[test]
fn a_transfer_not_done_within_an_election_timeout_is_abandoned() {
    // Without CheckQuorum the leader stays leader though no one answers (§3.10 step 4).
    let mut node = leader(false);
    node.transfer_leadership(3).expect("n3 is a voter");
    drive(&mut node);
    for t in 1..ET {
        node.tick();
        drive(&mut node);
        assert_eq!(node.propose(b"x".to_vec()), Err(ProposeError::TransferInProgress), "tick {t}");
    }
    node.tick();
    drive(&mut node);
    assert!(node.propose(b"x".to_vec()).is_ok(), "an election timeout later the leader takes writes again");
}

#[test]
fn a_follower_read_the_leader_never_answers_fails_after_two_election_timeouts() {
    let mut node = follower(config(2, 7));
    node.read(7);
    drive(&mut node);
    for t in 1..=2 * ET {
        node.tick();
        let ready = drive(&mut node);
        if t % (ET - 1) == 0 {
            // The leader is alive (no election, which would abort the read too); it just
            // never answers this read.
            node.step(msg(1, 2, 1, MessageKind::Heartbeat { commit: 1, read_round: 0 }));
            drive(&mut node);
        }
        let outcome: Vec<_> = ready.reads.iter().map(|r| r.result).collect();
        if t < 2 * ET {
            assert!(outcome.is_empty(), "tick {t}: {outcome:?}");
        } else {
            assert_eq!(outcome, vec![Err(ReadError::Aborted)], "tick {t}");
        }
    }
}
