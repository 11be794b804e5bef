//! `lightraft <index> --join <address>`: a node that is not in `lightraft.toml` asks a
//! running member to add it. Over the member's client port, in `.mode json`, it reads
//! `.cluster` (so it knows every member's address before the leader first calls it),
//! then asks `.add <index> <rpc> <client>`. The member passes the command to the leader,
//! which adds the node as a learner and promotes it once it has caught up (§4.2.1).
//!
//! It tries again every second until the cluster says the node is added (or already a
//! member, after a restart), so the cluster may start after the node does.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use crate::client::Client;
use crate::core::Event;
use crate::members::Address;

/// Asks the member at `member` to add node `me` at `address`, until it has.
pub async fn run(member: String, me: u64, address: Address, core: SyncSender<Event>) {
    let mut warned = false;
    loop {
        match attempt(&member, me, address, &core).await {
            Ok(message) => return info!("joined the cluster through {member}: {message}"),
            Err(e) if !warned => {
                warn!("asking {member} to add this node failed: {e}; trying again every second");
                warned = true;
            }
            Err(e) => tracing::debug!("asking {member} to add this node failed again: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn attempt(member: &str, me: u64, address: Address, core: &SyncSender<Event>) -> Result<String, String> {
    let addr: SocketAddr = member
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{member:?} is not HOST:PORT"))?;
    let mut client = Client::connect(addr).await.map_err(|e| e.to_string())?;
    let cluster = client.request(".cluster").await.map_err(|e| e.to_string())?;
    if let Some(members) = cluster["cluster"]["members"].as_array() {
        let known: BTreeMap<u64, Address> = members.iter().filter_map(member_address).collect();
        let _ = core.try_send(Event::Learned(known));
    }
    let line = format!(".add {me} {} {}", address.rpc, address.client);
    let reply = client.request(&line).await.map_err(|e| e.to_string())?;
    if let Some(done) = reply["done"].as_str() {
        return Ok(done.to_string());
    }
    let message = reply["error"].as_str().unwrap_or_default().to_string();
    if message.contains(&format!("node {me} is already")) {
        return Ok(message);
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
