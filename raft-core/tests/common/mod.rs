//! Helpers shared by raft-core's integration tests.
// Each test file uses only some of these.
#![allow(dead_code)]

use raft_core::{Message, MessageKind, Node, NodeId, Ready, Term};

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
