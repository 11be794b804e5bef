//! Helpers shared by raft-core's integration tests.
// Each test file uses only some of these.
#![allow(dead_code)]

use raft_core::{Message, MessageKind, Node, NodeId, Ready, Role, Term};

/// Takes the node's ready and tells it the ready was carried out, as a driver must;
/// returns the ready for inspection.
pub fn drive(node: &mut Node) -> Ready {
    let ready = node.ready();
    node.advance(&ready);
    ready
}

/// A message from `from` to `to` in `term`.
pub fn msg(from: NodeId, to: NodeId, term: Term, kind: MessageKind) -> Message {
    Message { from, to, term, kind }
}

/// Makes `node` campaign for the next term and win it with `voter`'s pre-vote (if it asks
/// for one) and vote, as in a 3-node cluster; returns the ready that made it leader.
pub fn elect(node: &mut Node, voter: NodeId) -> Ready {
    let (id, term) = (node.id(), node.status().term + 1);
    node.campaign();
    drive(node);
    if node.role() == Role::PreCandidate {
        node.step(msg(voter, id, term, MessageKind::PreVoteResp { granted: true }));
        drive(node);
    }
    node.step(msg(voter, id, term, MessageKind::VoteResp { granted: true }));
    drive(node)
}
