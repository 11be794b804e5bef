//! Messages between lightraft nodes: length-prefixed JSON frames over TCP.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. Every
//! connection opens with a handshake ([`handshake`]) in which both ends prove they know
//! the cluster secret; a stranger, a peer from another cluster or an unknown node, a
//! frame over the size limit, or malformed JSON closes that connection with a logged
//! reason and never disturbs the node.
//!
//! Connections are one-way: each node dials every peer and only writes to that
//! connection; what a peer says arrives on the connection it dialed to us. Sending never
//! blocks the caller: each peer has a bounded queue, drained by a task that dials (and
//! redials, with backoff) the peer. When a queue is full the message is dropped; Raft
//! already tolerates lost messages, and blocking the Raft loop would be worse.

pub mod handshake;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use handshake::{Challenge, Proof, Role};
pub use handshake::{Hello, Secret};

/// A node's index in the cluster configuration.
pub type NodeId = u64;

/// The largest frame accepted by default (16 MiB): far above a normal append batch, far
/// below what would hurt the node if a peer sent garbage.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// How long a new connection has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest handshake frame.
const MAX_HANDSHAKE_FRAME: usize = 4096;

/// Connections in their handshake at once. A newcomer beyond it evicts the oldest, so
/// strangers cannot use up the node's descriptors, and cannot keep a real peer (whose
/// handshake takes one round trip) from getting through by holding connections open.
const MAX_HANDSHAKING: usize = 64;

/// Handshake places kept for connections from a configured peer's address (not loopback,
/// which everyone on the machine shares): strangers elsewhere cannot evict those.
const MAX_PEER_HANDSHAKING: usize = 16;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection cleanly between frames.
    Closed,
    /// The length prefix announced more than the limit.
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection failed, or closed in the middle of a frame.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => f.write_str("connection closed"),
            FrameError::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the limit of {max}"),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Writes one frame: the length, then the payload.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(payload.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(payload).await
}

/// Reads one frame of at most `max` bytes. The length is checked before anything is
/// allocated, so a hostile prefix cannot make the node reserve gigabytes.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.map_err(FrameError::Io)?;
    Ok(payload)
}

/// Where this node listens and who its peers are.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The cluster name, checked in every handshake.
    pub cluster: String,
    /// The shared secret every handshake proves knowledge of (empty: none configured).
    pub secret: Secret,
    /// This node.
    pub me: NodeId,
    /// The address to accept peer connections on.
    pub listen: SocketAddr,
    /// Every other node and its RPC address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Messages queued per peer before new ones are dropped.
    pub queue_capacity: usize,
    /// The largest frame accepted.
    pub max_frame: usize,
}

/// Why [`Transport::send`] dropped a message.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The recipient is not a configured peer.
    UnknownPeer(NodeId),
    /// The peer's queue is full (it is slow or unreachable).
    QueueFull(NodeId),
}

/// The sending half: one bounded queue per peer.
pub struct Transport<T> {
    queues: BTreeMap<NodeId, mpsc::Sender<T>>,
}

impl<T> Transport<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Binds the listener (failing at once if the address is taken), then starts the
    /// accept loop and one dialer per peer. Received messages arrive on `inbound` as
    /// (sender, message); the sender is the authenticated peer.
    pub async fn start(config: TransportConfig, inbound: mpsc::Sender<(NodeId, T)>) -> io::Result<Transport<T>> {
        let listener = TcpListener::bind(config.listen).await?;
        tokio::spawn(accept_loop(listener, config.clone(), inbound).in_current_span());
        let mut queues = BTreeMap::new();
        for (&peer, &addr) in &config.peers {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            queues.insert(peer, tx);
            tokio::spawn(dial_loop(peer, addr, config.clone(), rx).in_current_span());
        }
        Ok(Transport { queues })
    }

    /// The configured peers.
    pub fn peers(&self) -> Vec<NodeId> {
        self.queues.keys().copied().collect()
    }

    /// Queues `msg` for `to` without waiting; drops it if the queue is full.
    pub fn send(&self, to: NodeId, msg: T) -> Result<(), SendError> {
        let queue = self.queues.get(&to).ok_or(SendError::UnknownPeer(to))?;
        queue.try_send(msg).map_err(|_| SendError::QueueFull(to))
    }
}

/// Logs a refused connection as a warning at most once a second; the rest go to debug,
/// so a stranger hammering the port cannot flood the log.
#[derive(Default)]
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn refused(&self, addr: SocketAddr, reason: &str) {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            warn!("closed peer connection from {addr}: {reason}");
        } else {
            debug!("closed peer connection from {addr}: {reason}");
        }
    }
}

/// Connections in their handshake: (id, the sender whose drop ends it), oldest first.
type Handshaking = VecDeque<(u64, oneshot::Sender<()>)>;

/// What every inbound connection shares.
struct Inbound<T> {
    config: TransportConfig,
    queue: mpsc::Sender<(NodeId, T)>,
    /// Connections in their handshake, oldest first; dropping one's sender ends it. The
    /// second queue holds those from configured peers' addresses.
    handshaking: [Mutex<Handshaking>; 2],
    /// Per peer, the newest authenticated connection's number: an older connection from
    /// the same peer closes when a newer one arrives, so a peer cannot pile them up.
    newest: Mutex<BTreeMap<NodeId, watch::Sender<u64>>>,
    throttle: Throttle,
}

/// Accepts peer connections forever; each is served by its own task.
async fn accept_loop<T>(listener: TcpListener, config: TransportConfig, queue: mpsc::Sender<(NodeId, T)>)
where
    T: DeserializeOwned + Send + 'static,
{
    let shared = Arc::new(Inbound {
        config,
        queue,
        handshaking: [Mutex::new(VecDeque::new()), Mutex::new(VecDeque::new())],
        newest: Mutex::new(BTreeMap::new()),
        throttle: Throttle::default(),
    });
    let mut next = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let (id, (evict, evicted)) = (next, oneshot::channel::<()>());
                next += 1;
                let ip = addr.ip();
                let from_peer = !ip.is_loopback() && shared.config.peers.values().any(|peer| peer.ip() == ip);
                let (queue, places) = if from_peer { (1, MAX_PEER_HANDSHAKING) } else { (0, MAX_HANDSHAKING) };
                {
                    let mut handshaking = shared.handshaking[queue].lock().unwrap_or_else(|e| e.into_inner());
                    if handshaking.len() >= places {
                        handshaking.pop_front(); // drops its sender: that handshake ends
                    }
                    handshaking.push_back((id, evict));
                }
                let shared = shared.clone();
                tokio::spawn(
                    async move {
                        let outcome = tokio::select! {
                            outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(stream, &shared)) => Some(outcome),
                            _ = evicted => None,
                        };
                        shared.handshaking[queue].lock().unwrap_or_else(|e| e.into_inner()).retain(|(i, _)| *i != id);
                        match outcome {
                            None => shared.throttle.refused(addr, "newer connections evicted it from its handshake"),
                            Some(Err(_)) => shared.throttle.refused(addr, "no handshake within 5 seconds"),
                            Some(Ok(Err(reason))) => shared.throttle.refused(addr, &reason),
                            Some(Ok(Ok((stream, peer)))) => serve_peer(stream, addr, peer, &shared).await,
                        }
                    }
                    .in_current_span(),
                );
            }
            Err(e) => {
                // Usually running out of file descriptors: wait, do not spin.
                warn!("accepting a peer connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks a handshake's names: the right cluster, a known peer, addressed to us.
pub fn check_hello(hello: &Hello, config: &TransportConfig) -> Result<(), String> {
    if hello.cluster != config.cluster {
        return Err(format!("it belongs to cluster {:?}, not {:?}", hello.cluster, config.cluster));
    }
    if !config.peers.contains_key(&hello.from) {
        return Err(format!("node {} is not a peer in the configuration", hello.from));
    }
    if hello.to != config.me {
        return Err(format!("it meant to reach node {}, this is node {}", hello.to, config.me));
    }
    Ok(())
}

/// The acceptor's half of the handshake. Returns the stream and the proven peer.
async fn accept<T>(mut stream: TcpStream, shared: &Inbound<T>) -> Result<(TcpStream, NodeId), String> {
    let config = &shared.config;
    let hello: Hello = read_json(&mut stream, MAX_HANDSHAKE_FRAME).await.map_err(|e| format!("bad handshake: {e}"))?;
    check_hello(&hello, config)?;
    let nonce = handshake::nonce();
    let proof = handshake::prove(&config.secret, Role::Acceptor, &hello, &nonce);
    write_json(&mut stream, &Challenge { nonce: nonce.clone(), proof }).await.map_err(|e| e.to_string())?;
    let answer: Proof = read_json(&mut stream, MAX_HANDSHAKE_FRAME).await.map_err(|e| format!("bad handshake: {e}"))?;
    if !handshake::verify(&config.secret, Role::Dialer, &hello, &nonce, &answer.proof) {
        return Err(format!("node {} could not prove it knows the cluster secret", hello.from));
    }
    Ok((stream, hello.from))
}

/// Reads frames from an authenticated peer until it goes away, misbehaves, or connects
/// again (the newer connection wins).
async fn serve_peer<T>(mut stream: TcpStream, addr: SocketAddr, from: NodeId, shared: &Inbound<T>)
where
    T: DeserializeOwned,
{
    let mut replaced = {
        let mut newest = shared.newest.lock().unwrap_or_else(|e| e.into_inner());
        let sender = newest.entry(from).or_insert_with(|| watch::channel(0).0);
        sender.send_modify(|n| *n += 1);
        let mut rx = sender.subscribe();
        rx.mark_unchanged();
        rx
    };
    debug!("peer {from} connected from {addr}");
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut stream, shared.config.max_frame) => frame,
            _ = replaced.changed() => return debug!("peer {from} connected again; closing its older connection"),
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return debug!("peer {from} closed its connection"),
            Err(e) => return warn!("closed connection from peer {from} ({addr}): {e}"),
        };
        match serde_json::from_slice::<T>(&frame) {
            // A full inbound queue means the node is overloaded: drop, like a lost packet.
            Ok(msg) => {
                if shared.queue.try_send((from, msg)).is_err() && shared.queue.is_closed() {
                    return;
                }
            }
            Err(e) => return warn!("closed connection from peer {from} ({addr}): malformed message: {e}"),
        }
    }
}

async fn read_json<R: AsyncRead + Unpin, V: DeserializeOwned>(reader: &mut R, max: usize) -> Result<V, String> {
    let bytes = read_frame(reader, max).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not the expected JSON: {e}"))
}

async fn write_json<W: AsyncWrite + Unpin, V: Serialize>(writer: &mut W, value: &V) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(writer, &bytes).await?;
    writer.flush().await
}

/// The dialer's half of the handshake.
async fn introduce(stream: &mut TcpStream, hello: &Hello, secret: &Secret) -> Result<(), String> {
    write_json(stream, hello).await.map_err(|e| e.to_string())?;
    let challenge: Challenge = read_json(stream, MAX_HANDSHAKE_FRAME).await?;
    if !handshake::verify(secret, Role::Acceptor, hello, &challenge.nonce, &challenge.proof) {
        return Err("it could not prove it knows the cluster secret (is the secret the same on every node?)".into());
    }
    let proof = handshake::prove(secret, Role::Dialer, hello, &challenge.nonce);
    write_json(stream, &Proof { proof }).await.map_err(|e| e.to_string())
}

/// Keeps a connection to one peer and writes its queued messages, redialing with backoff.
async fn dial_loop<T: Serialize>(
    peer: NodeId,
    addr: SocketAddr,
    config: TransportConfig,
    mut queue: mpsc::Receiver<T>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    let mut was_connected = true; // so the first failure is reported once
    loop {
        let mut stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                report_unreachable(peer, addr, &e.to_string(), &mut was_connected);
                if !wait_or_drain(&mut queue, &mut backoff, MAX_BACKOFF).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                report_unreachable(peer, addr, "timed out", &mut was_connected);
                if !wait_or_drain(&mut queue, &mut backoff, MAX_BACKOFF).await {
                    return;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let hello = Hello { cluster: config.cluster.clone(), from: config.me, to: peer, nonce: handshake::nonce() };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, introduce(&mut stream, &hello, &config.secret)).await {
            Ok(Ok(())) => {}
            failed => {
                let reason = match failed {
                    Ok(Err(reason)) => reason,
                    _ => "no handshake within 5 seconds".to_string(),
                };
                report_unreachable(peer, addr, &reason, &mut was_connected);
                if !wait_or_drain(&mut queue, &mut backoff, MAX_BACKOFF).await {
                    return;
                }
                continue;
            }
        }
        info!("connected to peer {peer} at {addr}");
        was_connected = true;
        backoff = MIN_BACKOFF;
        let mut writer = BufWriter::new(stream);
        match pump(&mut writer, &mut queue).await {
            Ok(()) => return, // the node is shutting down
            Err(e) => info!("lost connection to peer {peer}: {e}"),
        }
    }
}

fn report_unreachable(peer: NodeId, addr: SocketAddr, error: &str, was_connected: &mut bool) {
    if std::mem::take(was_connected) {
        info!("peer {peer} at {addr} is unreachable ({error}); retrying");
    } else {
        debug!("peer {peer} at {addr} still unreachable: {error}");
    }
}

/// Sleeps for the backoff, discarding messages queued meanwhile (they would be stale by
/// the time the peer is back, and Raft resends what matters). Returns false once the
/// queue is closed.
async fn wait_or_drain<T>(queue: &mut mpsc::Receiver<T>, backoff: &mut Duration, max: Duration) -> bool {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(max);
    loop {
        match queue.try_recv() {
            Ok(_) => continue,
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Writes queued messages until the queue closes (Ok) or the connection fails (Err).
/// Messages are flushed whenever the queue runs empty, so bursts share a syscall.
async fn pump<T: Serialize, W: AsyncWrite + Unpin>(writer: &mut W, queue: &mut mpsc::Receiver<T>) -> io::Result<()> {
    while let Some(msg) = queue.recv().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            let bytes = serde_json::to_vec(&msg).map_err(io::Error::other)?;
            write_frame(writer, &bytes).await?;
            next = queue.try_recv().ok();
        }
        writer.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_respect_the_limit() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").await.expect("write");
        write_frame(&mut buf, b"").await.expect("write");
        let mut reader = buf.as_slice();
        assert_eq!(read_frame(&mut reader, 100).await.expect("frame"), b"{\"a\":1}");
        assert_eq!(read_frame(&mut reader, 100).await.expect("empty frame"), b"");
        assert!(matches!(read_frame(&mut reader, 100).await, Err(FrameError::Closed)));

        let mut big = Vec::new();
        write_frame(&mut big, &[b'x'; 101]).await.expect("write");
        assert!(matches!(read_frame(&mut big.as_slice(), 100).await, Err(FrameError::TooLarge { len: 101, max: 100 })));
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_message() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.expect("write");
        buf.truncate(6);
        assert!(matches!(read_frame(&mut buf.as_slice(), 100).await, Err(FrameError::Io(_))));
    }

    fn config(me: NodeId, listen: SocketAddr, peers: &[(NodeId, SocketAddr)], secret: &str) -> TransportConfig {
        TransportConfig {
            cluster: "c".into(),
            secret: Secret::new(secret.as_bytes().to_vec()),
            me,
            listen,
            peers: peers.iter().copied().collect(),
            queue_capacity: 64,
            max_frame: 1024,
        }
    }

    #[test]
    fn handshakes_from_other_clusters_or_nodes_are_refused() {
        let config = config(0, "127.0.0.1:0".parse().expect("addr"), &[(1, "127.0.0.1:1".parse().expect("addr"))], "");
        let ok = Hello { cluster: "c".into(), from: 1, to: 0, nonce: handshake::nonce() };
        assert!(check_hello(&ok, &config).is_ok());
        let other_cluster = Hello { cluster: "test".into(), ..ok.clone() };
        assert!(check_hello(&other_cluster, &config).unwrap_err().contains("cluster"));
        let unknown = Hello { from: 7, ..ok.clone() };
        assert!(check_hello(&unknown, &config).unwrap_err().contains("not a peer"));
        let misrouted = Hello { to: 3, ..ok };
        assert!(check_hello(&misrouted, &config).unwrap_err().contains("meant to reach"));
    }

    fn free_addr() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    }

    /// Expects the node to close `conn`: end of file, or a reset if our bytes were unread.
    async fn assert_closed(mut conn: TcpStream, what: &str) {
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
            match read.unwrap_or_else(|_| panic!("{what}: connection left open")) {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the challenge; then it must close
            }
        }
    }

    #[tokio::test]
    async fn peers_with_the_secret_talk_and_strangers_without_it_are_closed_out() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let secret = "sixteen bytes or more of secret";
        let (a_in, mut a_rx) = mpsc::channel::<(NodeId, String)>(16);
        let (b_in, mut b_rx) = mpsc::channel::<(NodeId, String)>(16);
        let a = Transport::start(config(0, a_addr, &[(1, b_addr)], secret), a_in).await.expect("a starts");
        let b = Transport::start(config(1, b_addr, &[(0, a_addr)], secret), b_in).await.expect("b starts");

        // Garbage, an oversized frame, another cluster, and someone who knows the cluster
        // name and a node index but not the secret: each connection is closed, and a
        // message forged after the handshake never arrives.
        let mut junk = TcpStream::connect(b_addr).await.expect("connect");
        junk.write_all(b"\x00\x00\x00\x05hello garbage").await.expect("write");
        let mut huge = TcpStream::connect(b_addr).await.expect("connect");
        huge.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut stranger = TcpStream::connect(b_addr).await.expect("connect");
        let hello = Hello { cluster: "other".into(), from: 0, to: 1, nonce: handshake::nonce() };
        write_json(&mut stranger, &hello).await.expect("write");
        let mut impostor = TcpStream::connect(b_addr).await.expect("connect");
        let hello = Hello { cluster: "c".into(), from: 0, to: 1, nonce: handshake::nonce() };
        write_json(&mut impostor, &hello).await.expect("write");
        let challenge: Challenge = read_json(&mut impostor, 4096).await.expect("a challenge");
        let guess = handshake::prove(
            &Secret::new(b"a wrong guess at the secret".to_vec()),
            Role::Dialer,
            &hello,
            &challenge.nonce,
        );
        write_json(&mut impostor, &Proof { proof: guess }).await.expect("write");
        let _ = write_json(&mut impostor, &"forged".to_string()).await;
        for (conn, what) in
            [(junk, "garbage"), (huge, "huge frame"), (stranger, "other cluster"), (impostor, "impostor")]
        {
            assert_closed(conn, what).await;
        }

        a.send(1, "ping".to_string()).expect("queued");
        let got = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((0, "ping".to_string())), "the forged message never arrived; the real one did");
        b.send(0, "pong".to_string()).expect("queued");
        let got = tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((1, "pong".to_string())));
        assert_eq!(a.send(5, "x".into()), Err(SendError::UnknownPeer(5)));
    }

    #[tokio::test]
    async fn a_node_with_another_secret_never_gets_a_message_through() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let (a_in, _a_rx) = mpsc::channel::<(NodeId, String)>(16);
        let (b_in, mut b_rx) = mpsc::channel::<(NodeId, String)>(16);
        let a = Transport::start(config(0, a_addr, &[(1, b_addr)], "the first secret, long enough"), a_in)
            .await
            .expect("a starts");
        let _b = Transport::start(config(1, b_addr, &[(0, a_addr)], "the second secret, long enough"), b_in)
            .await
            .expect("b starts");
        for _ in 0..20 {
            let _ = a.send(1, "ping".to_string());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(b_rx.try_recv().is_err(), "nothing crossed between different secrets");
    }

    #[tokio::test]
    async fn strangers_holding_connections_open_cannot_keep_a_peer_out() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let secret = "sixteen bytes or more of secret";
        let (b_in, mut b_rx) = mpsc::channel::<(NodeId, String)>(16);
        let _b = Transport::start(config(1, b_addr, &[(0, a_addr)], secret), b_in).await.expect("b starts");
        let mut idle = Vec::new();
        for _ in 0..2 * MAX_HANDSHAKING {
            idle.push(TcpStream::connect(b_addr).await.expect("connect"));
        }
        let (a_in, _a_rx) = mpsc::channel::<(NodeId, String)>(16);
        let a = Transport::start(config(0, a_addr, &[(1, b_addr)], secret), a_in).await.expect("a starts");
        a.send(1, "through".to_string()).expect("queued");
        let got = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((0, "through".to_string())));
        drop(idle);
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_at_start() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = listener.local_addr().expect("addr");
        let (tx, _rx) = mpsc::channel::<(NodeId, String)>(1);
        assert!(Transport::start(config(0, taken, &[], ""), tx).await.is_err());
    }
}
