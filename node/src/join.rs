//! `lightraft <index> --join <address>`: a node that is not in `lightraft.toml` asks a
//! running member to add it. Over the member's client port, in `.mode json`, it reads
//! `.cluster` (so it knows every member's address before the leader first calls it),
//! then asks `.add <index> <rpc> <client>`. The member passes the command to the leader,
//! which adds the node as a learner and promotes it once it has caught up (§4.2.1).
//!
//! It tries again every second until the cluster says the node is added (or already a
//! member, after a restart), so the cluster may start after the node does.
//!
//! A node with empty storage that the cluster already counts as a voter stops instead:
//! its disk was lost (or its index is someone else's), and a voter that forgot its vote
//! could vote twice in one term. Remove it and join a new node with a new index.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use serde_json::Value;
use tracing::{error, info, warn};

use crate::client::Client;
use crate::core::Event;
use crate::members::Address;

/// How an attempt ended.
enum Joined {
    /// The node is a member now.
    Yes(String),
    /// The node must not run: see the module docs.
    Refused(String),
}

/// Asks the member at `member` to add node `me` at `address`, until it has. `fresh` says
/// this node's storage is empty.
pub async fn run(member: String, me: u64, address: Address, fresh: bool, core: SyncSender<Event>) {
    let mut warned = false;
    loop {
        match attempt(&member, me, address, fresh, &core).await {
            Ok(Joined::Yes(message)) => return info!("joined the cluster through {member}: {message}"),
            Ok(Joined::Refused(message)) => {
                error!("{message}");
                let _ = core.try_send(Event::Shutdown);
                return;
            }
            Err(e) if !warned => {
                warn!("asking {member} to add this node failed: {e}; trying again every second");
                warned = true;
            }
            Err(e) => tracing::debug!("asking {member} to add this node failed again: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn attempt(
    member: &str,
    me: u64,
    address: Address,
    fresh: bool,
    core: &SyncSender<Event>,
) -> Result<Joined, String> {
    let addr: SocketAddr = member
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{member:?} is not HOST:PORT"))?;
    let mut client = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let cluster = client.request(".cluster").await.map_err(|e| e.to_string())?;
    if let Some(members) = cluster["cluster"]["members"].as_array() {
        let voter = members.iter().any(|m| m["node"].as_u64() == Some(me) && m["role"] == "voter");
        if fresh && voter {
            return Ok(Joined::Refused(format!(
                "the cluster counts node {me} as a voter, but this node's storage is empty: its disk was lost, \
                 or the index is taken. A voter that forgot its vote could vote twice; remove it (.remove {me}) \
                 and join a new node with a new index. Stopping."
            )));
        }
        let known: BTreeMap<u64, Address> = members.iter().filter_map(member_address).collect();
        let _ = core.try_send(Event::Learned(known));
    }
    let line = format!(".add {me} {} {}", address.rpc, address.client);
    let reply = client.request(&line).await.map_err(|e| e.to_string())?;
    if let Some(done) = reply["done"].as_str() {
        return Ok(Joined::Yes(done.to_string()));
    }
    let message = reply["error"].as_str().unwrap_or_default().to_string();
    if message.contains(&format!("node {me} is already")) {
        return Ok(Joined::Yes(message));
    }
    Err(if message.is_empty() { reply.to_string() } else { message })
}

/// A member's index and addresses from `.cluster`'s JSON.
fn member_address(member: &Value) -> Option<(u64, Address)> {
    let node = member["node"].as_u64()?;
    let rpc = member["rpc"].as_str()?.parse().ok()?;
    let client = member["client"].as_str()?.parse().ok()?;
    Some((node, Address { rpc, client }))
}
