//! How two nodes prove to each other, without ever sending it, that both know the
//! cluster secret: a mutual challenge-response over the first three frames.
//!
//! ```text
//! dialer   -> acceptor   Hello     { cluster, from, to, nonce_d }
//! acceptor -> dialer     Challenge { nonce_a, proof_a = HMAC(secret, "acceptor" | cluster | from | to | nonce_d | nonce_a) }
//! dialer   -> acceptor   Proof     { proof_d = HMAC(secret, "dialer"   | cluster | from | to | nonce_d | nonce_a) }
//! ```
//!
//! Each side checks the other's proof in constant time. Both nonces are fresh random
//! values, so a recorded handshake cannot be replayed; the role inside each proof means a
//! proof taken from one side is useless on the other; the cluster and both node indexes
//! inside it mean a proof for one link is useless on another. Without a configured
//! secret the key is empty: any process that knows the cluster name passes, which is
//! acceptable only on loopback (the node refuses to start otherwise).
//!
//! The handshake authenticates the connection, not each frame: someone who can tamper
//! with TCP between two nodes is out of scope (run nodes on a trusted network or tunnel).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::NodeId;

/// The shared cluster secret. Never printed: `Debug` shows only whether one is set.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from its bytes; empty means "none configured".
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// Whether a secret was configured.
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() { "Secret(<redacted>)" } else { "Secret(<none>)" })
    }
}

/// What this build speaks to its peers: messages, keepalives and log entries. Nodes of
/// different versions refuse each other in the handshake with a clear reason, rather than
/// misread each other (an older node would, say, fail to decode newer log entries and
/// diverge). Version 4 sends a snapshot's SHA-256 with its last piece only; version 3
/// added membership changes (configuration entries, snapshots that
/// carry a configuration, operators' commands between nodes); version 2 keepalives, the
/// term of a forwarded write and the origin in log entries; version 1 (which sent no
/// version) was the first.
pub const PROTOCOL_VERSION: u32 = 4;

/// The first frame on every connection, from the dialer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The dialer's [`PROTOCOL_VERSION`] (absent, so 1, from the first version).
    #[serde(default = "first_version")]
    pub version: u32,
    /// The cluster name from the configuration; nodes of different clusters never talk.
    pub cluster: String,
    /// The dialing node.
    pub from: NodeId,
    /// The node it meant to reach.
    pub to: NodeId,
    /// The dialer's fresh random nonce, base64.
    pub nonce: String,
}

impl Hello {
    /// This node's greeting to node `to`, with a fresh nonce.
    pub fn new(cluster: &str, from: NodeId, to: NodeId) -> Hello {
        Hello { version: PROTOCOL_VERSION, cluster: cluster.to_string(), from, to, nonce: nonce() }
    }
}

fn first_version() -> u32 {
    1
}

/// Refuses a peer that speaks another protocol version.
pub fn check_version(theirs: u32) -> Result<(), String> {
    if theirs == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(format!(
        "it speaks peer protocol version {theirs} and this node version {PROTOCOL_VERSION}: every node of a cluster must run the same lightraft version"
    ))
}

/// The acceptor's answer: its own nonce and its proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The acceptor's [`PROTOCOL_VERSION`] (absent, so 1, from the first version).
    #[serde(default = "first_version")]
    pub version: u32,
    /// The acceptor's fresh random nonce, base64.
    pub nonce: String,
    /// HMAC proving the acceptor knows the secret, base64.
    pub proof: String,
}

/// The dialer's proof, the third and last handshake frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// HMAC proving the dialer knows the secret, base64.
    pub proof: String,
}

/// Which end of the connection a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The node that connected.
    Dialer,
    /// The node that accepted.
    Acceptor,
}

/// A fresh 32-byte nonce from the operating system's generator, base64.
pub fn nonce() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

fn mac(secret: &Secret, role: Role, hello: &Hello, acceptor_nonce: &str) -> Hmac<Sha256> {
    // HMAC takes keys of every length, so this cannot fail whatever the secret is.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0).expect("HMAC accepts keys of any length");
    let role = match role {
        Role::Dialer => "dialer",
        Role::Acceptor => "acceptor",
    };
    // Every field length-prefixed, so no two different handshakes hash alike.
    for field in [b"lightraft peer v1".as_slice(), role.as_bytes(), hello.cluster.as_bytes()] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac.update(&hello.from.to_be_bytes());
    mac.update(&hello.to.to_be_bytes());
    for nonce in [hello.nonce.as_str(), acceptor_nonce] {
        mac.update(&(nonce.len() as u64).to_be_bytes());
        mac.update(nonce.as_bytes());
    }
    mac
}

/// The proof that `role` knows `secret`, for this handshake.
pub fn prove(secret: &Secret, role: Role, hello: &Hello, acceptor_nonce: &str) -> String {
    STANDARD.encode(mac(secret, role, hello, acceptor_nonce).finalize().into_bytes())
}

/// Checks the other side's proof, in constant time.
pub fn verify(secret: &Secret, role: Role, hello: &Hello, acceptor_nonce: &str, proof: &str) -> bool {
    let Ok(proof) = STANDARD.decode(proof) else { return false };
    mac(secret, role, hello, acceptor_nonce).verify_slice(&proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_secret_the_role_the_link_and_both_nonces() {
        let secret = Secret::new(b"a secret of sixteen+ bytes".to_vec());
        let hello = Hello::new("c", 1, 2);
        let acceptor_nonce = nonce();
        let proof = prove(&secret, Role::Dialer, &hello, &acceptor_nonce);
        assert!(verify(&secret, Role::Dialer, &hello, &acceptor_nonce, &proof));
        let other_secret = Secret::new(b"another secret, just as long".to_vec());
        assert!(!verify(&other_secret, Role::Dialer, &hello, &acceptor_nonce, &proof), "wrong secret");
        assert!(!verify(&secret, Role::Acceptor, &hello, &acceptor_nonce, &proof), "reflected to the other role");
        assert!(!verify(&secret, Role::Dialer, &hello, &nonce(), &proof), "replayed with a new nonce");
        let other_link = Hello { from: 3, ..hello.clone() };
        assert!(!verify(&secret, Role::Dialer, &other_link, &acceptor_nonce, &proof), "another link");
        assert!(!verify(&secret, Role::Dialer, &hello, &acceptor_nonce, "not base64!"));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_ne!(nonce(), nonce());
    }
}
