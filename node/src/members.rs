//! The cluster's members as this node sees them: how each one is reached, which peers
//! the transport talks to, and what an operator's `.add` must satisfy before raft-core
//! sees it. raft-core carries each member's addresses as opaque text in the
//! configuration (§4); this file gives that text its meaning.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use raft_core::{Membership, NodeId};

/// Where a member listens: for peers and for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// The peer (RPC) address.
    pub rpc: SocketAddr,
    /// The client address.
    pub client: SocketAddr,
}

impl Address {
    /// The text carried in the configuration: `rpc=HOST:PORT client=HOST:PORT`.
    pub fn encode(&self) -> String {
        format!("rpc={} client={}", self.rpc, self.client)
    }

    /// Reads [`Address::encode`]'s text back; `None` if it is not that.
    pub fn decode(text: &str) -> Option<Address> {
        let mut rpc = None;
        let mut client = None;
        for part in text.split_whitespace() {
            match part.split_once('=') {
                Some(("rpc", addr)) => rpc = addr.parse().ok(),
                Some(("client", addr)) => client = addr.parse().ok(),
                _ => return None,
            }
        }
        Some(Address { rpc: rpc?, client: client? })
    }
}

/// Every member's address: as its configuration entry says, else as `known` says (the
/// initial members of `lightraft.toml`, whose entries carry none, and what a join learned).
pub fn directory(membership: &Membership, known: &BTreeMap<NodeId, Address>) -> BTreeMap<NodeId, Address> {
    membership
        .members()
        .filter_map(|id| {
            let listed = membership.addresses.get(&id).and_then(|text| Address::decode(text));
            listed.or_else(|| known.get(&id).copied()).map(|address| (id, address))
        })
        .collect()
}

/// The most members (voters and learners) a cluster may have: every member is dialed by
/// every other, and every configuration entry lists them all.
pub const MAX_MEMBERS: usize = 64;

/// The peers the transport dials and admits: the other members of the latest
/// configuration and of the committed one (`committed`). The latest rules Raft, but a
/// node it removes may still be needed until it commits: were this node to refuse it, a
/// leader that removed a node and crashed could leave a cluster where neither side can
/// reach the vote it needs. A node outside both (joining, or removed) also keeps every
/// node it knows, and admits any node that proves the cluster secret: a leader it has
/// never heard of may be adding it.
pub fn peers(
    me: NodeId,
    latest: &Membership,
    committed: &Membership,
    known: &BTreeMap<NodeId, Address>,
) -> (BTreeMap<NodeId, SocketAddr>, bool) {
    let outside = !latest.is_member(me) && !committed.is_member(me);
    let mut peers: BTreeMap<NodeId, SocketAddr> =
        directory(committed, known).into_iter().map(|(id, a)| (id, a.rpc)).collect();
    peers.extend(directory(latest, known).into_iter().map(|(id, a)| (id, a.rpc)));
    if outside {
        for (&id, address) in known {
            peers.entry(id).or_insert(address.rpc);
        }
    }
    peers.remove(&me);
    (peers, outside)
}

/// Checks `.add`'s arguments: IP:PORT addresses (a host name would be looked up on the
/// Raft thread, where a slow name server could stall heartbeats) that no other member
/// uses, and room for one more member.
pub fn check_add(
    node: NodeId,
    rpc: &str,
    client: &str,
    directory: &BTreeMap<NodeId, Address>,
) -> Result<Address, String> {
    if directory.len() >= MAX_MEMBERS && !directory.contains_key(&node) {
        return Err(format!("the cluster has {} members, the most it may have", directory.len()));
    }
    let parse = |what: &str, text: &str| {
        text.parse::<SocketAddr>().map_err(|_| format!("the {what} address {text:?} is not IP:PORT"))
    };
    let address = Address { rpc: parse("rpc", rpc)?, client: parse("client", client)? };
    if address.rpc == address.client {
        return Err(format!("the rpc and client addresses are the same ({})", address.rpc));
    }
    for (&other, known) in directory {
        let clash = [known.rpc, known.client];
        if other != node && (clash.contains(&address.rpc) || clash.contains(&address.client)) {
            return Err(format!("node {other} already uses one of those addresses"));
        }
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rpc: u16, client: u16) -> Address {
        Address { rpc: SocketAddr::from(([127, 0, 0, 1], rpc)), client: SocketAddr::from(([127, 0, 0, 1], client)) }
    }

    #[test]
    fn addresses_round_trip_through_the_configuration_text() {
        let a = at(7000, 7001);
        assert_eq!(Address::decode(&a.encode()), Some(a));
        assert_eq!(Address::decode("rpc=127.0.0.1:1"), None, "both are needed");
        assert_eq!(Address::decode("rpc=x client=127.0.0.1:1"), None);
        assert_eq!(Address::decode("junk"), None);
    }

    #[test]
    fn members_are_found_in_the_configuration_or_the_initial_list() {
        let known: BTreeMap<NodeId, Address> = [(0, at(1, 2)), (1, at(3, 4)), (2, at(5, 6))].into();
        let mut m = Membership::initial(&[0, 1, 2]);
        m.learners.insert(3);
        m.addresses.insert(3, at(7, 8).encode());
        m.voters.remove(&2);
        let dir = directory(&m, &known);
        assert_eq!(dir.keys().copied().collect::<Vec<_>>(), vec![0, 1, 3]);
        let (peers, open) = peers(0, &m, &m, &known);
        assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![1, 3], "removed node 2 is no peer");
        assert!(!open);
        // Until the removal commits, node 2 may still be needed: it stays a peer.
        let before = Membership::initial(&[0, 1, 2]);
        let (peers, _) = super::peers(0, &m, &before, &known);
        assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        // Node 4, joining: it keeps every node it knows, and admits any.
        let (peers, open) = super::peers(4, &m, &m, &known);
        assert_eq!(peers.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(open);
    }

    #[test]
    fn an_add_needs_addresses_of_its_own() {
        let dir: BTreeMap<NodeId, Address> = [(0, at(1, 2))].into();
        assert!(check_add(5, "127.0.0.1:9", "127.0.0.1:10", &dir).is_ok());
        assert!(check_add(5, "127.0.0.1:1", "127.0.0.1:10", &dir).unwrap_err().contains("node 0"));
        assert!(check_add(5, "nonsense", "127.0.0.1:10", &dir).unwrap_err().contains("IP:PORT"));
        assert!(check_add(5, "localhost:9", "127.0.0.1:10", &dir).unwrap_err().contains("IP:PORT"), "no lookups");
        let full: BTreeMap<NodeId, Address> =
            (0..MAX_MEMBERS as u64).map(|i| (i, at(100 + i as u16, 300 + i as u16))).collect();
        assert!(check_add(99, "127.0.0.1:9", "127.0.0.1:10", &full).unwrap_err().contains("most"));
        assert!(check_add(5, "127.0.0.1:9", "127.0.0.1:9", &dir).unwrap_err().contains("same"));
    }
}
