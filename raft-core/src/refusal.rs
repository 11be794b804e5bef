//! What a node refuses to believe.
//!
//! Raft copes with an unreliable network: messages may be lost, duplicated, delayed or
//! reordered (§5.1). It does not cope with lies: the paper assumes no Byzantine faults, so
//! every rule trusts that a message says only what the protocol lets a correct peer say.
//! A message no correct peer could send (a bug, a damaged packet, a stranger who got past
//! the transport) must neither break a safety rule nor wedge the node. Such a message is
//! dropped whole, as if the network had lost it, and reported in [`crate::Ready::refused`]
//! for the driver to log; the node carries on healthy.
//!
//! Checks that need only the message run in [`Node::check_message`] before the message is
//! stepped. Checks that compare it with the node's state (an acknowledgement beyond what
//! was sent, a truncation of committed entries) sit in the handlers, next to that state,
//! and run once the message's term has been settled like any other.
//!
//! These checks are no defence against a peer that lies consistently (Raft is not
//! Byzantine fault tolerant): the transport authenticates peers so that strangers never
//! get this far. They make the impossible cheap to survive and easy to see.

use crate::message::{Message, MessageKind};
use crate::node::Node;
use crate::types::{Entry, Index, NodeId, Payload, Term, MAX_TERM};

/// A message the node refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The claimed sender.
    pub from: NodeId,
    /// The term the message carried.
    pub term: Term,
    /// Which rule the message would have broken, in a sentence.
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused a message from node {} in term {}: {}", self.from, self.term, self.reason)
    }
}

impl Node {
    /// Checks what the message alone can show to be impossible.
    pub(crate) fn check_message(&self, msg: &Message) -> Result<(), String> {
        if msg.to != self.id() {
            return Err(format!("it is addressed to node {}", msg.to));
        }
        // Senders outside our configuration are heard (§4.1): a new voter may campaign, or
        // a leader add us, before our log holds the entry that names them. Keeping out
        // strangers is the transport's job; here only the impossible is refused.
        if msg.from == self.id() {
            return Err("it claims to come from this node itself".to_string());
        }
        if msg.term > MAX_TERM {
            // Adopting it would leave this node unable to ever campaign again (term + 1).
            return Err(format!("term {} is beyond the highest possible term {MAX_TERM}", msg.term));
        }
        match &msg.kind {
            MessageKind::PreVote { last_term, .. } | MessageKind::Vote { last_term, .. } if *last_term > msg.term => {
                Err(format!("a candidate's last log term ({last_term}) cannot exceed the term it campaigns in"))
            }
            MessageKind::Append { prev_index, prev_term, entries, .. } => {
                check_entries(msg.term, *prev_index, *prev_term, entries)
            }
            // A snapshot holds at least one entry, and only a leader's own term or older.
            MessageKind::InstallSnapshot { snapshot } if snapshot.index == 0 || snapshot.term == 0 => {
                Err(format!("a snapshot at {}@{} includes no entry", snapshot.index, snapshot.term))
            }
            MessageKind::InstallSnapshot { snapshot } if snapshot.term > msg.term => {
                Err(format!("the snapshot's last term ({}) is later than the leader's ({})", snapshot.term, msg.term))
            }
            MessageKind::InstallSnapshot { snapshot }
                if snapshot.membership.voters.is_empty() && !snapshot.membership.learners.is_empty() =>
            {
                Err("the snapshot's configuration has learners but no voter".to_string())
            }
            _ => Ok(()),
        }
    }

    /// Drops a message and reports it for the driver to log.
    pub(crate) fn refuse(&mut self, from: NodeId, term: Term, reason: String) {
        self.ready.refused.push(Refusal { from, term, reason });
    }
}

/// An append's entries continue the log right after `prev_index`, one index each. Their
/// terms never decrease (a log is ordered by term) and never exceed the leader's own term,
/// since a leader creates entries only in its term (§5.3) and copies older ones.
fn check_entries(term: Term, prev_index: Index, prev_term: Term, entries: &[Entry]) -> Result<(), String> {
    if prev_term > term {
        return Err(format!("the entry before the new ones has term {prev_term}, later than the leader's {term}"));
    }
    let mut last_term = prev_term;
    for (offset, entry) in entries.iter().enumerate() {
        let expected = prev_index.checked_add(1 + offset as Index);
        if Some(entry.index) != expected {
            return Err(format!(
                "entry {} of the append should have index {}",
                offset + 1,
                prev_index as u128 + 1 + offset as u128
            ));
        }
        if entry.term < last_term || entry.term > term {
            return Err(format!(
                "entry {} has term {}, outside [{last_term}, {term}]: a log's terms only grow, up to the leader's",
                entry.index, entry.term
            ));
        }
        if matches!(&entry.payload, Payload::Membership(m) if m.voters.is_empty()) {
            return Err(format!("entry {} is a configuration without voters", entry.index));
        }
        last_term = entry.term;
    }
    Ok(())
}
