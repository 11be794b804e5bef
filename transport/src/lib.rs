//! Messages between lightraft nodes: length-prefixed JSON frames over TCP.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. Every
//! connection opens with a handshake ([`handshake`]) in which both ends prove they know
//! the cluster secret; a stranger, a peer from another cluster or an unknown node, a
//! frame over the size limit, or malformed JSON closes that connection with a logged
//! reason and never disturbs the node.
//!
//! Connections are one-way: each node dials every peer and only writes messages to that
//! connection; what a peer says arrives on the connection it dialed to us. Sending never
//! blocks the caller. With [`Transport::send`] the caller's own thread encodes the message
//! and writes the frame to the socket when nothing is queued ahead of it and the socket
//! takes it (the usual case: no other thread has to wake up for the message to leave).
//! Otherwise the rest goes to the peer's bounded queue, drained by the task that dials
//! (and redials, with backoff) the peer; [`Transport::send_queued`] always goes that way,
//! for messages too large to encode on a thread that must not stall. When the queue is
//! full, or the peer is not connected, the message is dropped and the caller told so;
//! Raft already tolerates lost messages, and blocking the Raft loop would be worse.
//!
//! A connection can die without a word: the peer's machine stops, or the network drops
//! every packet. TCP alone would notice late (its retransmissions back off to minutes),
//! and after the network heals a connection may sit idle until the next, ever-later
//! retransmission. So the accepting side writes an empty frame, a keepalive, every
//! 100 ms; a dialer that hears nothing for a whole `peer_timeout` closes the connection
//! and dials again. Connecting may take a quarter of the `peer_timeout` before it is
//! tried afresh, and the backoff between attempts is at most as long, so a peer that
//! comes back is reached again within about half a `peer_timeout`, however long it was
//! away. (A round trip must therefore stay well under a quarter of the `peer_timeout`,
//! which Raft asks of heartbeats anyway, §5.6.)
//!
//! The peers change with the cluster's membership ([`Transport::set_peers`]): a new
//! member is dialed, a removed one is no longer dialed, its handshakes are refused and
//! its open connections closed at their next frame.

pub mod handshake;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use handshake::{Challenge, Proof, Role};
pub use handshake::{Hello, Secret};

/// A node's index in the cluster configuration.
pub type NodeId = u64;

/// The largest frame accepted by default (16 MiB): far above a normal append batch, far
/// below what would hurt the node if a peer sent garbage.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// How long an accepted connection has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest `peer_timeout` honoured: below it, a busy machine's scheduling delays
/// alone would make connections look dead.
pub const MIN_PEER_TIMEOUT: Duration = Duration::from_millis(400);

/// How often an accepted connection sends a keepalive. Fixed, not derived from this
/// node's settings, so a dialer whose `peer_timeout` differs (its config changed, say)
/// still hears several within its own timeout.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(100);

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

/// One frame's bytes: the length, then `msg` as JSON. None if it cannot be encoded or
/// its length does not fit the prefix.
fn encode_frame<T: Serialize>(msg: &T) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; 4];
    serde_json::to_writer(&mut bytes, msg).ok()?;
    let len = u32::try_from(bytes.len() - 4).ok()?;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    Some(bytes)
}

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
    /// Every other node and its RPC address, to start with (see [`Transport::set_peers`]).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Messages queued per peer before new ones are dropped.
    pub queue_capacity: usize,
    /// The largest frame accepted.
    pub max_frame: usize,
    /// A connection silent this long is taken for dead and dialed again (at least
    /// [`MIN_PEER_TIMEOUT`]). The node uses its minimum election timeout: a peer silent
    /// that long is lost to Raft anyway.
    pub peer_timeout: Duration,
}

impl TransportConfig {
    /// The silence after which a connection is dropped.
    fn dead_after(&self) -> Duration {
        self.peer_timeout.max(MIN_PEER_TIMEOUT)
    }

    /// The longest wait for a connection to a peer, and the longest backoff between
    /// attempts: a peer back from a long absence is reached within two beats.
    fn beat(&self) -> Duration {
        self.dead_after() / 4
    }
}

/// Why [`Transport::send`] dropped a message.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The recipient is not a configured peer.
    UnknownPeer(NodeId),
    /// The peer's queue is full (it is slow or unreachable).
    QueueFull(NodeId),
    /// The message could not be encoded as JSON, or its frame would exceed 4 GiB.
    Unencodable(NodeId),
    /// There is no connection to the peer right now (it is down, unreachable, or being
    /// dialed again): the message would only be discarded.
    Disconnected(NodeId),
}

/// The sending half of one peer: its connection, if up, and the queue its dialer's task
/// writes when a sender could not.
struct Outbound<T> {
    queue: mpsc::Sender<Outgoing<T>>,
    line: Arc<Mutex<Line>>,
}

impl<T> Clone for Outbound<T> {
    fn clone(&self) -> Outbound<T> {
        Outbound { queue: self.queue.clone(), line: self.line.clone() }
    }
}

/// What waits in a peer's queue.
enum Outgoing<T> {
    /// Bytes ready to write: a whole frame, or the rest of one cut short.
    Bytes(Vec<u8>),
    /// A message the task encodes.
    Message(T),
}

/// One peer's connection as senders see it.
#[derive(Default)]
struct Line {
    /// The connection's writing half, while it is up.
    writer: Option<Arc<OwnedWriteHalf>>,
    /// Bytes wait in the queue (or the task is writing them): a new frame must queue
    /// behind them, or frames would overtake or cut into each other. Cleared by the task,
    /// under this lock, once the queue is empty; so while it is clear the queue is empty,
    /// and the rest of a frame cut short always fits in it.
    queued: bool,
}

impl<T> Outbound<T> {
    fn is_connected(&self) -> bool {
        self.line.lock().unwrap_or_else(|e| e.into_inner()).writer.is_some()
    }
}

/// Who may connect: the current peers, or any node that knows the secret (`open`), for
/// a node not yet in the configuration, which must hear from a leader it may not know.
#[derive(Debug, Default)]
struct Admission {
    peers: BTreeMap<NodeId, SocketAddr>,
    open: bool,
}

/// What every clone of a [`Transport`] shares.
struct Shared<T> {
    config: TransportConfig,
    /// Where new dialers are started (the caller may be a plain thread).
    runtime: tokio::runtime::Handle,
    /// Per peer: its address and sending half.
    outbound: RwLock<BTreeMap<NodeId, (SocketAddr, Outbound<T>)>>,
    admission: Arc<RwLock<Admission>>,
}

/// The sending half: one bounded queue per peer. Clones share the queues.
pub struct Transport<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Transport<T> {
    fn clone(&self) -> Transport<T> {
        Transport { shared: self.shared.clone() }
    }
}

impl<T> Transport<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Binds the listener (failing at once if the address is taken), then starts the
    /// accept loop and one dialer per peer. Received messages are handed to `inbound`
    /// with their sender, the authenticated peer.
    pub async fn start(config: TransportConfig, inbound: impl Inbox<T>) -> io::Result<Transport<T>> {
        let listener = TcpListener::bind(config.listen).await?;
        let admission = Arc::new(RwLock::new(Admission { peers: config.peers.clone(), open: false }));
        let inbound: Arc<dyn Inbox<T>> = Arc::new(inbound);
        tokio::spawn(accept_loop(listener, config.clone(), admission.clone(), inbound).in_current_span());
        let shared = Shared {
            runtime: tokio::runtime::Handle::current(),
            outbound: RwLock::new(BTreeMap::new()),
            admission,
            config,
        };
        let transport = Transport { shared: Arc::new(shared) };
        transport.set_peers(transport.shared.config.peers.clone(), false);
        Ok(transport)
    }

    /// Makes `peers` the nodes this one talks to: dials the new ones (and those whose
    /// address changed), stops dialing the others, and from now on admits only `peers`,
    /// or, if `open`, any node that proves it knows the secret. Callable from any thread.
    pub fn set_peers(&self, peers: BTreeMap<NodeId, SocketAddr>, open: bool) {
        let shared = &self.shared;
        let mut outbound = shared.outbound.write().unwrap_or_else(|e| e.into_inner());
        // Dropping a peer's queue ends its dialer (and the connection) at its next turn.
        outbound.retain(|id, (addr, _)| peers.get(id) == Some(addr) && *id != shared.config.me);
        for (&peer, &addr) in &peers {
            if peer == shared.config.me || outbound.contains_key(&peer) {
                continue;
            }
            let (queue, rx) = mpsc::channel(shared.config.queue_capacity.max(1));
            let line = Arc::new(Mutex::new(Line::default()));
            let dialer = dial_loop(peer, addr, shared.config.clone(), rx, line.clone());
            shared.runtime.spawn(dialer.in_current_span());
            outbound.insert(peer, (addr, Outbound { queue, line }));
        }
        *shared.admission.write().unwrap_or_else(|e| e.into_inner()) = Admission { peers, open };
    }

    /// The current peers.
    pub fn peers(&self) -> Vec<NodeId> {
        self.shared.outbound.read().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    /// The sending half for `to`, if it is connected and its queue has room.
    fn outbound(&self, to: NodeId) -> Result<Outbound<T>, SendError> {
        let outbound = self.shared.outbound.read().unwrap_or_else(|e| e.into_inner());
        let (_, peer) = outbound.get(&to).ok_or(SendError::UnknownPeer(to))?;
        let line = peer.line.lock().unwrap_or_else(|e| e.into_inner());
        if line.writer.is_none() {
            return Err(SendError::Disconnected(to));
        }
        if line.queued && peer.queue.capacity() == 0 {
            return Err(SendError::QueueFull(to));
        }
        drop(line);
        Ok(peer.clone())
    }

    /// Sends `msg` to `to` without waiting: encoded and written from this thread if the
    /// socket takes it at once, queued otherwise. Refuses it at once if `to` is not
    /// connected or its queue is full, so the caller knows the message never left.
    pub fn send(&self, to: NodeId, msg: T) -> Result<(), SendError> {
        let peer = self.outbound(to)?;
        // Encoded before taking the line, so a large message never holds up its task.
        let frame = encode_frame(&msg).ok_or(SendError::Unencodable(to))?;
        let mut line = peer.line.lock().unwrap_or_else(|e| e.into_inner());
        let Some(writer) = line.writer.as_ref() else {
            return Err(SendError::Disconnected(to));
        };
        let mut rest = &frame[..];
        if !line.queued {
            // A non-blocking write: it takes what the socket's buffer has room for.
            while !rest.is_empty() {
                match writer.try_write(rest) {
                    Ok(n) if n > 0 => rest = &rest[n..],
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // Full (or failed: the task will meet the error and redial).
                    _ => break,
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
            if rest.len() < frame.len() {
                // Half a frame is on the wire: the rest must follow it, and it will,
                // since the queue is empty while `queued` is clear.
                line.queued = true;
                return peer.queue.try_send(Outgoing::Bytes(rest.to_vec())).map_err(|_| SendError::Disconnected(to));
            }
        }
        line.queued = true;
        peer.queue.try_send(Outgoing::Bytes(frame)).map_err(|_| SendError::QueueFull(to))
    }

    /// Queues `msg` for `to`, to be encoded and written by the peer's task: for messages
    /// that may be large, from a thread that must not spend long encoding. Refused like
    /// [`Transport::send`].
    pub fn send_queued(&self, to: NodeId, msg: T) -> Result<(), SendError> {
        let peer = self.outbound(to)?;
        let mut line = peer.line.lock().unwrap_or_else(|e| e.into_inner());
        if line.writer.is_none() {
            return Err(SendError::Disconnected(to));
        }
        line.queued = true;
        peer.queue.try_send(Outgoing::Message(msg)).map_err(|_| SendError::QueueFull(to))
    }

    /// Whether `to` is connected right now.
    pub fn is_connected(&self, to: NodeId) -> bool {
        let outbound = self.shared.outbound.read().unwrap_or_else(|e| e.into_inner());
        outbound.get(&to).is_some_and(|(_, peer)| peer.is_connected())
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

/// Where received messages go: the node's own queue, handed each message directly by
/// the task reading the connection (no task in between, so no extra wakeup).
pub trait Inbox<T>: Send + Sync + 'static {
    /// Hands over one message from `from`, without waiting.
    fn deliver(&self, from: NodeId, msg: T) -> Delivery;
}

/// What became of a delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The node has it.
    Taken,
    /// The inbox was full: the message is dropped, like a lost packet.
    Dropped,
    /// The node is gone: the connection closes.
    Closed,
}

impl<T: Send + 'static> Inbox<T> for mpsc::Sender<(NodeId, T)> {
    fn deliver(&self, from: NodeId, msg: T) -> Delivery {
        match self.try_send((from, msg)) {
            Ok(()) => Delivery::Taken,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Dropped,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
        }
    }
}

/// Connections in their handshake: (id, the sender whose drop ends it), oldest first.
type Handshaking = VecDeque<(u64, oneshot::Sender<()>)>;

/// What every inbound connection shares.
struct Inbound<T> {
    config: TransportConfig,
    admission: Arc<RwLock<Admission>>,
    inbox: Arc<dyn Inbox<T>>,
    /// Connections in their handshake, oldest first; dropping one's sender ends it. The
    /// second queue holds those from configured peers' addresses.
    handshaking: [Mutex<Handshaking>; 2],
    /// Per peer, the newest authenticated connection's number: an older connection from
    /// the same peer closes when a newer one arrives, so a peer cannot pile them up.
    newest: Mutex<BTreeMap<NodeId, watch::Sender<u64>>>,
    throttle: Throttle,
}

/// Accepts peer connections forever; each is served by its own task.
async fn accept_loop<T>(
    listener: TcpListener,
    config: TransportConfig,
    admission: Arc<RwLock<Admission>>,
    inbox: Arc<dyn Inbox<T>>,
) where
    T: DeserializeOwned + Send + 'static,
{
    let shared = Arc::new(Inbound {
        config,
        admission,
        inbox,
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
                let from_peer = !ip.is_loopback() && shared.admitted_ip(ip);
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

impl<T> Inbound<T> {
    /// Whether `ip` is a current peer's address.
    fn admitted_ip(&self, ip: std::net::IpAddr) -> bool {
        self.admission.read().unwrap_or_else(|e| e.into_inner()).peers.values().any(|peer| peer.ip() == ip)
    }

    /// Whether `node` may talk to us now.
    fn admits(&self, node: NodeId) -> bool {
        let admission = self.admission.read().unwrap_or_else(|e| e.into_inner());
        admission.open || admission.peers.contains_key(&node)
    }
}

/// Checks a handshake's names against the configured peers: the same protocol version,
/// the right cluster, a known peer, addressed to us.
pub fn check_hello(hello: &Hello, config: &TransportConfig) -> Result<(), String> {
    check_names(hello, config, config.peers.contains_key(&hello.from))
}

/// [`check_hello`], with `known` saying whether the sender is a current peer.
fn check_names(hello: &Hello, config: &TransportConfig, known: bool) -> Result<(), String> {
    handshake::check_version(hello.version)?;
    if hello.cluster != config.cluster {
        return Err(format!("it belongs to cluster {:?}, not {:?}", hello.cluster, config.cluster));
    }
    if !known || hello.from == config.me {
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
    check_names(&hello, config, shared.admits(hello.from))?;
    let nonce = handshake::nonce();
    let proof = handshake::prove(&config.secret, Role::Acceptor, &hello, &nonce);
    write_json(&mut stream, &Challenge { version: handshake::PROTOCOL_VERSION, nonce: nonce.clone(), proof })
        .await
        .map_err(|e| e.to_string())?;
    let answer: Proof = read_json(&mut stream, MAX_HANDSHAKE_FRAME).await.map_err(|e| format!("bad handshake: {e}"))?;
    if !handshake::verify(&config.secret, Role::Dialer, &hello, &nonce, &answer.proof) {
        return Err(format!("node {} could not prove it knows the cluster secret", hello.from));
    }
    Ok((stream, hello.from))
}

/// Reads frames from an authenticated peer until it goes away, misbehaves, or connects
/// again (the newer connection wins). Meanwhile, sends it a keepalive every 100 ms, so
/// that its dialer can tell a live connection from a dead one.
async fn serve_peer<T>(stream: TcpStream, addr: SocketAddr, from: NodeId, shared: &Inbound<T>)
where
    T: DeserializeOwned + 'static,
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
    let (mut reader, mut writer) = stream.into_split();
    let reading = async {
        loop {
            let frame = match read_frame(&mut reader, shared.config.max_frame).await {
                Ok(frame) => frame,
                Err(FrameError::Closed) => return debug!("peer {from} closed its connection"),
                Err(e) => return warn!("closed connection from peer {from} ({addr}): {e}"),
            };
            if !shared.admits(from) {
                // Removed from the configuration since it connected.
                return info!("closed connection from node {from} ({addr}): it is no longer a peer");
            }
            match serde_json::from_slice::<T>(&frame) {
                // A full inbox means the node is overloaded: drop, like a lost packet.
                Ok(msg) => {
                    if shared.inbox.deliver(from, msg) == Delivery::Closed {
                        return;
                    }
                }
                Err(e) => return warn!("closed connection from peer {from} ({addr}): malformed message: {e}"),
            }
        }
    };
    let keepalives = async {
        let mut beat = tokio::time::interval(KEEPALIVE_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            beat.tick().await;
            if let Err(e) = write_frame(&mut writer, &[]).await {
                return debug!("keepalive to peer {from} failed: {e}");
            }
        }
    };
    tokio::select! {
        _ = reading => {}
        _ = keepalives => {}
        _ = replaced.changed() => debug!("peer {from} connected again; closing its older connection"),
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
    handshake::check_version(challenge.version)?;
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
    mut queue: mpsc::Receiver<Outgoing<T>>,
    line: Arc<Mutex<Line>>,
) {
    // However this task ends (even dropped with the runtime), senders stop writing to
    // its connection.
    let line = ClearOnDrop(line);
    let line = &line.0;
    const MIN_BACKOFF: Duration = Duration::from_millis(20);
    // A small backoff: a peer that comes back after a long absence is reached within
    // about two beats, not after an ever-growing wait.
    let max_backoff = config.beat();
    let mut backoff = MIN_BACKOFF;
    let mut was_connected = true; // so the first failure is reported once
    loop {
        let stream = match dial(addr, &config, peer).await {
            Ok(stream) => stream,
            Err(reason) => {
                report_unreachable(peer, addr, &reason, &mut was_connected);
                if !wait_or_drain(&mut queue, &mut backoff, max_backoff).await {
                    return;
                }
                continue;
            }
        };
        info!("connected to peer {peer} at {addr}");
        was_connected = true;
        let since = Instant::now();
        let (mut reader, writer) = stream.into_split();
        let writer = Arc::new(writer);
        *line.lock().unwrap_or_else(|e| e.into_inner()) = Line { writer: Some(writer.clone()), queued: false };
        let outcome = tokio::select! {
            outcome = pump(&writer, &mut queue, line) => outcome,
            e = expect_keepalives(&mut reader, config.dead_after()) => Err(e),
        };
        // Senders stop writing to this connection before it closes (with the last handle).
        *line.lock().unwrap_or_else(|e| e.into_inner()) = Line::default();
        drop(writer);
        match outcome {
            Ok(()) => return, // the node is shutting down
            Err(e) => info!("lost connection to peer {peer}: {e}"),
        }
        // Only a connection that lasted starts the backoff over: two processes that keep
        // closing each other's connections (the same node index twice) must not spin.
        if since.elapsed() >= config.dead_after() {
            backoff = MIN_BACKOFF;
        }
        // What was queued for the lost connection is stale by the time it is back.
        if !wait_or_drain(&mut queue, &mut backoff, max_backoff).await {
            return;
        }
    }
}

/// Connects to a peer (from our own listening address, so the peer sees the address its
/// configuration names for us) and introduces ourselves. Connecting gets one beat: into
/// a network that drops packets it would otherwise wait for TCP's next, ever-later SYN,
/// while a fresh attempt sends one at once. The handshake, two round trips over a
/// connection that works, gets a whole `peer_timeout`.
async fn dial(addr: SocketAddr, config: &TransportConfig, peer: NodeId) -> Result<TcpStream, String> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(|e| e.to_string())?;
    let local = config.listen.ip();
    if !local.is_unspecified() && local.is_ipv4() == addr.is_ipv4() {
        defer_port_choice(&socket);
        socket.bind(SocketAddr::new(local, 0)).map_err(|e| format!("cannot dial from {local}: {e}"))?;
    }
    let mut stream = match tokio::time::timeout(config.beat(), socket.connect(addr)).await {
        Ok(connected) => connected.map_err(|e| e.to_string())?,
        Err(_) => return Err(format!("no connection within {:?}", config.beat())),
    };
    let _ = stream.set_nodelay(true);
    let hello = Hello::new(&config.cluster, config.me, peer);
    match tokio::time::timeout(config.dead_after(), introduce(&mut stream, &hello, &config.secret)).await {
        Ok(introduced) => introduced.map(|()| stream),
        Err(_) => Err(format!("no handshake within {:?}", config.dead_after())),
    }
}

/// Binding a socket to port 0 reserves a port at once, from the same range (and, on
/// Linux, the same half of it) that other programs bind to, so a dialer could take a port
/// some server on the machine is about to listen on. `IP_BIND_ADDRESS_NO_PORT` fixes only
/// the address and lets `connect` choose the port, as it does for an unbound socket.
fn defer_port_choice(socket: &TcpSocket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a valid pointer to an int and its size.
        // Failing only means the port is chosen at bind, as without the option.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

/// Reads the keepalives an accepting peer sends; returns when the connection
/// fails or stays silent for `dead_after`. Nothing but empty frames may arrive here.
async fn expect_keepalives<R: AsyncRead + Unpin>(reader: &mut R, dead_after: Duration) -> io::Error {
    loop {
        match tokio::time::timeout(dead_after, read_frame(reader, 0)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return io::Error::other(e),
            Err(_) => return io::Error::new(io::ErrorKind::TimedOut, format!("silent for {dead_after:?}")),
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

/// Sleeps for the backoff, then discards messages queued meanwhile (they would be stale
/// by the time the peer is back, and Raft resends what matters). Returns false once the
/// queue is closed.
async fn wait_or_drain<T>(queue: &mut mpsc::Receiver<T>, backoff: &mut Duration, max: Duration) -> bool {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(max);
    drain(queue)
}

/// Discards every queued message. Returns false once the queue is closed.
fn drain<T>(queue: &mut mpsc::Receiver<T>) -> bool {
    loop {
        match queue.try_recv() {
            Ok(_) => continue,
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Resets a peer's line when its dialer's task ends.
struct ClearOnDrop(Arc<Mutex<Line>>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Line::default();
    }
}

/// Writes what is queued until the queue closes (Ok) or the connection fails (Err).
/// Small frames queued together leave in one write. Once the queue is empty, senders may
/// write to the socket themselves again.
async fn pump<T: Serialize>(
    writer: &OwnedWriteHalf,
    queue: &mut mpsc::Receiver<Outgoing<T>>,
    line: &Mutex<Line>,
) -> io::Result<()> {
    /// Enough to share a syscall, small enough not to copy large frames together.
    const BATCH: usize = 64 << 10;
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(bytes) => bytes,
            None => match queue.recv().await {
                Some(outgoing) => bytes_of(outgoing),
                None => return Ok(()),
            },
        };
        let mut bytes = first;
        while bytes.len() < BATCH {
            let Ok(outgoing) = queue.try_recv() else { break };
            let more = bytes_of(outgoing);
            if bytes.len() + more.len() > BATCH {
                next = Some(more);
                break;
            }
            bytes.extend_from_slice(&more);
        }
        write_all(writer, &bytes).await?;
        if next.is_none() {
            let mut line = line.lock().unwrap_or_else(|e| e.into_inner());
            if queue.is_empty() {
                line.queued = false;
            }
        }
    }
}

/// The bytes to write for a queued item. A message that cannot be encoded is dropped
/// (nothing is written for it), like one lost on the way.
fn bytes_of<T: Serialize>(outgoing: Outgoing<T>) -> Vec<u8> {
    match outgoing {
        Outgoing::Bytes(bytes) => bytes,
        Outgoing::Message(msg) => encode_frame(&msg).unwrap_or_else(|| {
            warn!("a message could not be encoded and was dropped");
            Vec::new()
        }),
    }
}

/// Writes all of `bytes`, waiting for room in the socket's buffer as needed.
async fn write_all(writer: &OwnedWriteHalf, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        writer.writable().await?;
        match writer.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
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
            peer_timeout: Duration::from_millis(400),
        }
    }

    #[test]
    fn handshakes_from_other_clusters_or_nodes_are_refused() {
        let config = config(0, "127.0.0.1:0".parse().expect("addr"), &[(1, "127.0.0.1:1".parse().expect("addr"))], "");
        let ok = Hello::new("c", 1, 0);
        assert!(check_hello(&ok, &config).is_ok());
        let other_cluster = Hello { cluster: "test".into(), ..ok.clone() };
        assert!(check_hello(&other_cluster, &config).unwrap_err().contains("cluster"));
        let unknown = Hello { from: 7, ..ok.clone() };
        assert!(check_hello(&unknown, &config).unwrap_err().contains("not a peer"));
        let misrouted = Hello { to: 3, ..ok.clone() };
        assert!(check_hello(&misrouted, &config).unwrap_err().contains("meant to reach"));
        // A node of the first version sends no version at all.
        let first: Hello = serde_json::from_str(r#"{"cluster":"c","from":1,"to":0,"nonce":"AA=="}"#).expect("json");
        assert!(check_hello(&first, &config).unwrap_err().contains("same lightraft version"));
        let newer = Hello { version: handshake::PROTOCOL_VERSION + 1, ..ok };
        assert!(check_hello(&newer, &config).unwrap_err().contains("same lightraft version"));
    }

    /// Sends once `to` is connected (a message to a peer not yet connected is refused).
    async fn send_when_connected(transport: &Transport<String>, to: NodeId, msg: &str) {
        for _ in 0..500 {
            if transport.send(to, msg.to_string()).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node {to} never connected");
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
        let hello = Hello::new("other", 0, 1);
        write_json(&mut stranger, &hello).await.expect("write");
        let mut impostor = TcpStream::connect(b_addr).await.expect("connect");
        let hello = Hello::new("c", 0, 1);
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

        send_when_connected(&a, 1, "ping").await;
        let got = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((0, "ping".to_string())), "the forged message never arrived; the real one did");
        send_when_connected(&b, 0, "pong").await;
        let got = tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((1, "pong".to_string())));
        assert_eq!(a.send(5, "x".into()), Err(SendError::UnknownPeer(5)));
    }

    #[tokio::test]
    async fn peers_follow_the_configuration_and_a_removed_one_is_shut_out() {
        let (a_addr, b_addr, c_addr) = (free_addr(), free_addr(), free_addr());
        let secret = "sixteen bytes or more of secret";
        let (a_in, mut a_rx) = mpsc::channel::<(NodeId, String)>(16);
        let (b_in, _b_rx) = mpsc::channel::<(NodeId, String)>(16);
        let (c_in, _c_rx) = mpsc::channel::<(NodeId, String)>(16);
        let a = Transport::start(config(0, a_addr, &[(1, b_addr)], secret), a_in).await.expect("a starts");
        let b = Transport::start(config(1, b_addr, &[(0, a_addr)], secret), b_in).await.expect("b starts");
        // Node 2 joins: it knows node 0; node 0 learns of it from a new configuration.
        let c = Transport::start(config(2, c_addr, &[(0, a_addr)], secret), c_in).await.expect("c starts");
        send_when_connected(&b, 0, "from b").await;
        assert_eq!(a_rx.recv().await, Some((1, "from b".to_string())));
        assert_eq!(a.send(2, "x".into()), Err(SendError::UnknownPeer(2)));
        a.set_peers([(1, b_addr), (2, c_addr)].into(), false);
        assert_eq!(a.peers(), vec![1, 2]);
        send_when_connected(&c, 0, "from c").await;
        assert_eq!(a_rx.recv().await, Some((2, "from c".to_string())));
        // Node 1 is removed: node 0 stops dialing it, and its messages no longer arrive.
        a.set_peers([(2, c_addr)].into(), false);
        assert_eq!(a.send(1, "x".into()), Err(SendError::UnknownPeer(1)));
        for _ in 0..20 {
            let _ = b.send(0, "after removal".into());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while let Ok((from, msg)) = a_rx.try_recv() {
            assert_ne!(from, 1, "a removed peer's message got through: {msg}");
        }
        let hello = Hello::new("c", 1, 0);
        let mut removed = TcpStream::connect(a_addr).await.expect("connect");
        write_json(&mut removed, &hello).await.expect("write");
        assert_closed(removed, "removed peer's handshake").await;
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
        assert!(!a.is_connected(1), "a failed handshake never counts as a connection");
    }

    #[tokio::test]
    async fn an_accepting_node_sends_keepalives_on_an_idle_connection() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let secret = "sixteen bytes or more of secret";
        let (b_in, _b_rx) = mpsc::channel::<(NodeId, String)>(16);
        let _b = Transport::start(config(1, b_addr, &[(0, a_addr)], secret), b_in).await.expect("b starts");
        let mut conn = TcpStream::connect(b_addr).await.expect("connect");
        let hello = Hello::new("c", 0, 1);
        introduce(&mut conn, &hello, &Secret::new(secret.as_bytes().to_vec())).await.expect("handshake");
        // We send nothing; b keeps telling us it is alive.
        for n in 0..5 {
            let frame = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut conn, 0)).await;
            assert!(matches!(frame, Ok(Ok(_))), "keepalive {n} never came: {frame:?}");
        }
    }

    #[tokio::test]
    async fn a_dialer_keeps_a_connection_its_peer_keeps_alive() {
        let (a, b, _, first) = dialed_by_a_real_node().await;
        let (mut reader, mut writer) = first.into_split();
        let beats = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if write_frame(&mut writer, &[]).await.is_err() {
                    return;
                }
            }
        });
        // Five peer timeouts without a message: the keepalives alone keep it connected.
        let second = tokio::time::timeout(Duration::from_secs(2), b.accept()).await;
        assert!(second.is_err(), "a connection kept alive was dropped and dialed again");
        a.send(1, "still here".to_string()).expect("connected");
        let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut reader, 1024)).await;
        assert_eq!(frame.expect("in time").expect("a frame"), b"\"still here\"");
        beats.abort();
    }

    /// A real node "a" dialing a hand-driven peer "b": a, b's listener and configuration,
    /// and a's first connection to b, handshake done.
    async fn dialed_by_a_real_node() -> (Transport<String>, TcpListener, TransportConfig, TcpStream) {
        dialed_by_a_real_node_with(MIN_PEER_TIMEOUT).await
    }

    /// The same, with the dialer's `peer_timeout` given.
    async fn dialed_by_a_real_node_with(
        peer_timeout: Duration,
    ) -> (Transport<String>, TcpListener, TransportConfig, TcpStream) {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let secret = "sixteen bytes or more of secret";
        let b_config = config(1, b_addr, &[(0, a_addr)], secret);
        let b = TcpListener::bind(b_addr).await.expect("b listens");
        let (a_in, _a_rx) = mpsc::channel::<(NodeId, String)>(16);
        let a_config = TransportConfig { peer_timeout, ..config(0, a_addr, &[(1, b_addr)], secret) };
        let a = Transport::start(a_config, a_in).await.expect("a starts");
        let first = tokio::time::timeout(Duration::from_secs(5), accept_as_peer(&b, &b_config)).await.expect("dialed");
        (a, b, b_config, first)
    }

    /// Accepts one connection as a peer would and completes the handshake.
    async fn accept_as_peer(listener: &TcpListener, config: &TransportConfig) -> TcpStream {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let hello: Hello = read_json(&mut stream, MAX_HANDSHAKE_FRAME).await.expect("hello");
        let nonce = handshake::nonce();
        let proof = handshake::prove(&config.secret, Role::Acceptor, &hello, &nonce);
        write_json(&mut stream, &Challenge { version: handshake::PROTOCOL_VERSION, nonce: nonce.clone(), proof })
            .await
            .expect("challenge");
        let answer: Proof = read_json(&mut stream, MAX_HANDSHAKE_FRAME).await.expect("proof");
        assert!(handshake::verify(&config.secret, Role::Dialer, &hello, &nonce, &answer.proof));
        stream
    }

    #[tokio::test]
    async fn a_peer_that_goes_silent_is_dropped_and_dialed_again() {
        // "b" completes the handshake, then never sends a keepalive: a stalled network or
        // a stopped machine looks like this from a's side.
        let (a, b, b_config, first) = dialed_by_a_real_node().await;
        send_when_connected(&a, 1, "into the void").await;
        // The silent connection is given up and a new one dialed, with no help from TCP.
        let second = tokio::time::timeout(Duration::from_secs(10), accept_as_peer(&b, &b_config)).await;
        assert!(second.is_ok(), "a silent connection was kept instead of dialing again");
        drop(first);
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
        send_when_connected(&a, 1, "through").await;
        let got = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((0, "through".to_string())));
        drop(idle);
    }

    /// Messages sent from a plain thread are written from it while the socket takes them
    /// and queued when it does not (or when sent with `send_queued`). Here the peer stops
    /// reading for a while, so frames are cut short, the queue fills and the dialer's task
    /// finishes them. Every message must still arrive whole and in order: a frame that
    /// overtook, or cut into, another would end the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_written_directly_or_queued_arrive_whole_and_in_order() {
        const MESSAGES: usize = 300;
        // Moving tens of MiB through a loaded machine (the other tests run meanwhile) may
        // starve the keepalives below for longer than the shortest timeout; this test is
        // about order, not timeouts (once, a dropped connection failed it).
        let (a, _listener, _config, peer) = dialed_by_a_real_node_with(Duration::from_secs(10)).await;
        let (mut from_a, mut to_a) = peer.into_split();
        // The dialer drops a connection whose peer stays silent: keep it alive.
        let keepalives = tokio::spawn(async move {
            while write_frame(&mut to_a, &[]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // The first is larger than any socket buffer, so it is surely cut short.
        let size = |i: usize| match i {
            0 => 24 << 20,
            _ if i % 3 == 0 => 500_000,
            _ => i,
        };
        let message = move |i: usize| format!("{i}:{}", "x".repeat(size(i)));
        let sender = std::thread::spawn(move || {
            let mut found_the_queue_full = false;
            for i in 0..MESSAGES {
                let mut tries = 0;
                loop {
                    // Some are encoded by the task: they too keep their place.
                    let sent = if i % 5 == 4 { a.send_queued(1, message(i)) } else { a.send(1, message(i)) };
                    match sent {
                        Ok(()) => break,
                        Err(SendError::QueueFull(_)) => found_the_queue_full = true,
                        Err(SendError::Disconnected(_)) if i == 0 && tries < 500 => tries += 1,
                        Err(e) => panic!("message {i} refused: {e:?}"),
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            found_the_queue_full
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..MESSAGES {
            let frame = tokio::time::timeout(Duration::from_secs(20), read_frame(&mut from_a, 32 << 20)).await;
            let frame = frame.expect("in time").expect("a whole frame");
            let got: String = serde_json::from_slice(&frame).expect("a whole message");
            assert_eq!(got.len(), message(i).len(), "message {i} arrived whole, in its place");
            assert!(got.starts_with(&format!("{i}:")), "message {i} arrived in its place");
        }
        let full = tokio::task::spawn_blocking(move || sender.join().expect("the sender finished"));
        assert!(full.await.expect("joined"), "the peer stopped reading, so the queue filled");
        keepalives.abort();
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_at_start() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = listener.local_addr().expect("addr");
        let (tx, _rx) = mpsc::channel::<(NodeId, String)>(1);
        assert!(Transport::start(config(0, taken, &[], ""), tx).await.is_err());
    }
}
