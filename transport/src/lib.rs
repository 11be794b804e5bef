//! Messages between lightraft nodes: length-prefixed JSON frames over TCP.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON. Every
//! connection opens with a [`Hello`] frame naming the cluster and both nodes; a peer from
//! another cluster or an unknown node, a frame over the size limit, or malformed JSON
//! closes that connection with a logged reason and never disturbs the node.
//!
//! Sending never blocks the caller: each peer has a bounded queue, drained by a task that
//! dials (and redials, with backoff) the peer. When a queue is full the message is dropped;
//! Raft already tolerates lost messages, and blocking the Raft loop would be worse.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

/// A node's index in the cluster configuration.
pub type NodeId = u64;

/// The largest frame accepted by default (16 MiB): far above a normal append batch, far
/// below what would hurt the node if a peer sent garbage.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// How long a new connection has to introduce itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The first frame on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster name from the configuration; nodes of different clusters never talk.
    pub cluster: String,
    /// The dialing node.
    pub from: NodeId,
    /// The node it meant to reach.
    pub to: NodeId,
}

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
    /// (sender, message).
    pub async fn start(config: TransportConfig, inbound: mpsc::Sender<(NodeId, T)>) -> io::Result<Transport<T>> {
        let listener = TcpListener::bind(config.listen).await?;
        tokio::spawn(accept_loop(listener, config.clone(), inbound).in_current_span());
        let mut queues = BTreeMap::new();
        for (&peer, &addr) in &config.peers {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            queues.insert(peer, tx);
            let hello = Hello { cluster: config.cluster.clone(), from: config.me, to: peer };
            tokio::spawn(dial_loop(peer, addr, hello, rx).in_current_span());
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

/// Accepts peer connections forever; each is served by its own task.
async fn accept_loop<T>(listener: TcpListener, config: TransportConfig, inbound: mpsc::Sender<(NodeId, T)>)
where
    T: DeserializeOwned + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_peer(stream, addr, config.clone(), inbound.clone()).in_current_span());
            }
            Err(e) => {
                // Usually running out of file descriptors: wait, do not spin.
                warn!("accepting a peer connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks a handshake: the right cluster, a known peer, addressed to us.
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

/// Reads the handshake, then frames, until the peer goes away or misbehaves.
async fn serve_peer<T>(
    mut stream: TcpStream,
    addr: SocketAddr,
    config: TransportConfig,
    inbound: mpsc::Sender<(NodeId, T)>,
) where
    T: DeserializeOwned,
{
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream, 4096)).await {
        Err(_) => return warn!("closed peer connection from {addr}: no handshake within {HELLO_TIMEOUT:?}"),
        Ok(Err(e)) => return warn!("closed peer connection from {addr}: bad handshake: {e}"),
        Ok(Ok(bytes)) => match serde_json::from_slice::<Hello>(&bytes) {
            Ok(hello) => hello,
            Err(e) => return warn!("closed peer connection from {addr}: handshake is not valid JSON: {e}"),
        },
    };
    if let Err(reason) = check_hello(&hello, &config) {
        return warn!("closed peer connection from {addr}: {reason}");
    }
    let from = hello.from;
    debug!("peer {from} connected from {addr}");
    loop {
        let frame = match read_frame(&mut stream, config.max_frame).await {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return debug!("peer {from} closed its connection"),
            Err(e) => return warn!("closed connection from peer {from} ({addr}): {e}"),
        };
        match serde_json::from_slice::<T>(&frame) {
            // A full inbound queue means the node is overloaded: drop, like a lost packet.
            Ok(msg) => {
                if inbound.try_send((from, msg)).is_err() && inbound.is_closed() {
                    return;
                }
            }
            Err(e) => return warn!("closed connection from peer {from} ({addr}): malformed message: {e}"),
        }
    }
}

/// Keeps a connection to one peer and writes its queued messages, redialing with backoff.
async fn dial_loop<T: Serialize>(peer: NodeId, addr: SocketAddr, hello: Hello, mut queue: mpsc::Receiver<T>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    let mut was_connected = true; // so the first failure is reported once
    loop {
        let stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
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
        let mut writer = BufWriter::new(stream);
        let Ok(hello_bytes) = serde_json::to_vec(&hello) else { return };
        if write_frame(&mut writer, &hello_bytes).await.is_err() || writer.flush().await.is_err() {
            continue;
        }
        info!("connected to peer {peer} at {addr}");
        was_connected = true;
        backoff = MIN_BACKOFF;
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

    #[test]
    fn handshakes_from_strangers_are_refused() {
        let config = TransportConfig {
            cluster: "prod".into(),
            me: 0,
            listen: "127.0.0.1:0".parse().expect("addr"),
            peers: BTreeMap::from([(1, "127.0.0.1:1".parse().expect("addr"))]),
            queue_capacity: 8,
            max_frame: 1024,
        };
        let ok = Hello { cluster: "prod".into(), from: 1, to: 0 };
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

    #[tokio::test]
    async fn two_nodes_exchange_messages_and_garbage_does_not_disturb_them() {
        let (a_addr, b_addr) = (free_addr(), free_addr());
        let config = |me, listen, peer, peer_addr| TransportConfig {
            cluster: "c".into(),
            me,
            listen,
            peers: BTreeMap::from([(peer, peer_addr)]),
            queue_capacity: 64,
            max_frame: 1024,
        };
        let (a_in, mut a_rx) = mpsc::channel::<(NodeId, String)>(16);
        let (b_in, mut b_rx) = mpsc::channel::<(NodeId, String)>(16);
        let a = Transport::start(config(0, a_addr, 1, b_addr), a_in).await.expect("a starts");
        let b = Transport::start(config(1, b_addr, 0, a_addr), b_in).await.expect("b starts");

        // Garbage, an oversized frame and a stranger's handshake, all on b's port.
        let mut junk = TcpStream::connect(b_addr).await.expect("connect");
        junk.write_all(b"\x00\x00\x00\x05hello garbage").await.expect("write");
        let mut huge = TcpStream::connect(b_addr).await.expect("connect");
        huge.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        let mut stranger = TcpStream::connect(b_addr).await.expect("connect");
        let hello = serde_json::to_vec(&Hello { cluster: "other".into(), from: 0, to: 1 }).expect("json");
        write_frame(&mut stranger, &hello).await.expect("write");
        for mut conn in [junk, huge, stranger] {
            let mut byte = [0u8; 1];
            // The node closes each connection: end of file, or a reset if our bytes were unread.
            let read =
                tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte)).await.expect("closed in time");
            assert!(matches!(read, Ok(0) | Err(_)), "connection left open: {read:?}");
        }

        a.send(1, "ping".to_string()).expect("queued");
        let got = tokio::time::timeout(Duration::from_secs(5), b_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((0, "ping".to_string())));
        b.send(0, "pong".to_string()).expect("queued");
        let got = tokio::time::timeout(Duration::from_secs(5), a_rx.recv()).await.expect("delivered in time");
        assert_eq!(got, Some((1, "pong".to_string())));
        assert_eq!(a.send(5, "x".into()), Err(SendError::UnknownPeer(5)));
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_at_start() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = listener.local_addr().expect("addr");
        let config = TransportConfig {
            cluster: "c".into(),
            me: 0,
            listen: taken,
            peers: BTreeMap::new(),
            queue_capacity: 1,
            max_frame: 1024,
        };
        let (tx, _rx) = mpsc::channel::<(NodeId, String)>(1);
        assert!(Transport::start(config, tx).await.is_err());
    }
}
