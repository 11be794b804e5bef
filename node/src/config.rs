//! `lightraft.toml`: the original's keys, plus optional tuning with sensible defaults.
//!
//! ```toml
//! [cluster]
//! name = "lightraft"
//! secretFile = "cluster.secret"  # optional; or secret = "...", or LIGHTRAFT_SECRET
//!
//! [[nodes]]                      # node 0; one block per node
//! clientBindAddress = "127.0.0.1"
//! clientBindPort = 6453
//! rpcBindAddress = "127.0.0.1"
//! rpcBindPort = 56453
//! metricsBindPort = 9453         # optional: GET /metrics (metricsBindAddress, default 127.0.0.1)
//!
//! [driver]
//! name = "sqlite"
//! pathPrefix = "lighraft"        # node N's database: <dataDir>/<pathPrefix>-N.sqlite
//! dataDir = "."                  # optional; Raft state: <dataDir>/<cluster name>-N.meta.sqlite, log: ...-N.meta.log.*
//!
//! [raft]                         # optional
//! tickMs = 100                   # one Raft tick
//! electionTicks = 10             # election timeout: 10 to 20 ticks
//! heartbeatTicks = 2
//!
//! [client]                       # optional
//! timeoutMs = 5000               # how long a request may wait for a leader and a commit
//! maxLineBytes = 1048576         # longer lines are refused
//! maxClients = 512               # more connections are turned away
//! idleTimeoutMs = 1800000        # a session silent this long is closed
//! writeTimeoutMs = 10000         # a client that does not read its answer this long is dropped
//! readers = 4                    # threads serving reads
//!
//! [limits]                       # optional; what one line may consume (fixed per entry)
//! maxSteps = 100000000           # SQLite steps
//! maxValueBytes = 8388608        # the largest string or blob
//! maxLineGrowthBytes = 67108864  # how much one line may grow the database
//! maxDatabaseBytes = 0           # the largest the database may grow; 0: no limit
//! maxResultBytes = 8388608       # result rows of one line
//! maxTempBytes = 1073741824      # temporary files (sorting) of one line
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sqlite_sm::Limits;
use transport::Secret;

/// The environment variable that may hold the cluster secret (it wins over the file).
pub const SECRET_ENV: &str = "LIGHTRAFT_SECRET";

/// The shortest secret accepted: shorter ones are guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[[nodes]]`, indexed from 0.
    pub nodes: Vec<NodeSection>,
    /// `[driver]`.
    pub driver: DriverSection,
    /// `[raft]`, optional.
    #[serde(default)]
    pub raft: RaftSection,
    /// `[client]`, optional.
    #[serde(default)]
    pub client: ClientSection,
    /// `[limits]`, optional.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[cluster]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSection {
    /// Names the cluster; nodes of different clusters refuse each other.
    pub name: String,
    /// The shared secret peers prove they know. Prefer `secretFile`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret; relative to the working directory.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

impl std::fmt::Debug for ClusterSection {
    // Never print the secret, even by accident.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSection")
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

/// One `[[nodes]]` block.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSection {
    /// Where clients connect (`nc`).
    pub client_bind_address: String,
    /// The client port.
    pub client_bind_port: u16,
    /// Where other nodes connect.
    pub rpc_bind_address: String,
    /// The RPC port.
    pub rpc_bind_port: u16,
    /// Where metrics are served (`GET /metrics`), if anywhere.
    #[serde(default)]
    pub metrics_bind_port: Option<u16>,
    /// The metrics' address: loopback unless given, since metrics need no wider audience.
    #[serde(default)]
    pub metrics_bind_address: Option<String>,
}

/// `[driver]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DriverSection {
    /// Must be "sqlite".
    pub name: String,
    /// Prefix of each node's database file.
    pub path_prefix: String,
    /// Directory for both database files; relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
}

/// `[raft]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct RaftSection {
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Minimum election timeout in ticks.
    pub election_ticks: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: u64,
    /// PreVote (§9.6).
    pub pre_vote: bool,
    /// CheckQuorum (§6.2).
    pub check_quorum: bool,
    /// Compact the log (§7) once it holds this many entries beyond its snapshot point
    /// (plus `compactKeep`); 0 for never by count.
    pub compact_entries: u64,
    /// ... or once this many bytes of entries were applied since the last compaction; 0
    /// for never by size.
    pub compact_bytes: u64,
    /// Entries kept after a compaction, so a follower slightly behind gets entries rather
    /// than a whole snapshot.
    pub compact_keep: u64,
    /// A node added to the cluster joins as a learner and becomes a voter once its log is
    /// within this many entries of the leader's (§4.2.1).
    pub promote_lag: u64,
}

impl Default for RaftSection {
    fn default() -> RaftSection {
        RaftSection {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            compact_entries: 10_000,
            compact_bytes: 64 << 20,
            compact_keep: 1_000,
            promote_lag: 100,
        }
    }
}

/// `[client]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ClientSection {
    /// How long a request may wait for a leader and for its outcome.
    pub timeout_ms: u64,
    /// The longest accepted input line, in bytes.
    pub max_line_bytes: usize,
    /// Client connections served at once; more are turned away with an error.
    pub max_clients: usize,
    /// A session that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// A client that does not read its answer for this long is disconnected.
    pub write_timeout_ms: u64,
    /// Threads that serve reads (each with its own read-only connection).
    pub readers: usize,
}

impl Default for ClientSection {
    fn default() -> ClientSection {
        ClientSection {
            timeout_ms: 5000,
            max_line_bytes: 1 << 20,
            max_clients: 512,
            idle_timeout_ms: 30 * 60 * 1000,
            write_timeout_ms: 10_000,
            readers: 4,
        }
    }
}

/// `[limits]`: what one line may consume. The leader writes them into each entry, so
/// every replica applies a write under the same limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LimitsSection {
    /// SQLite virtual-machine steps per line.
    pub max_steps: u64,
    /// The largest string or blob.
    pub max_value_bytes: u64,
    /// How much one line may grow the database.
    pub max_line_growth_bytes: u64,
    /// The largest the database may become; 0 for no limit.
    pub max_database_bytes: u64,
    /// The most result data one line may produce.
    pub max_result_bytes: u64,
    /// How much temporary files (sorting, subqueries) may grow during one line.
    pub max_temp_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> LimitsSection {
        let l = Limits::default();
        LimitsSection {
            max_steps: l.max_steps,
            max_value_bytes: l.max_value_bytes,
            max_line_growth_bytes: l.max_growth_bytes,
            max_database_bytes: l.max_database_bytes,
            max_result_bytes: l.max_result_bytes,
            max_temp_bytes: l.max_temp_bytes,
        }
    }
}

impl Config {
    /// Reads and checks a configuration file. Errors are one sentence, naming the file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            let place = e.span().map_or(String::new(), |span| format!(" at {}", place(&text, span.start)));
            format!("config {} is malformed{place}: {}", path.display(), e.message().trim())
        })?;
        config.validate().map_err(|e| format!("config {}: {e}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("no [[nodes]] are listed".into());
        }
        if self.cluster.name.is_empty() {
            return Err("[cluster] name is empty".into());
        }
        if self.driver.name != "sqlite" {
            return Err(format!("[driver] name {:?} is not supported (only \"sqlite\")", self.driver.name));
        }
        let r = &self.raft;
        if r.tick_ms == 0 || r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err("[raft] needs tickMs > 0 and electionTicks > heartbeatTicks > 0".into());
        }
        let c = &self.client;
        if c.timeout_ms == 0 || c.max_line_bytes == 0 || c.max_clients == 0 || c.readers == 0 {
            return Err("[client] timeoutMs, maxLineBytes, maxClients and readers must be positive".into());
        }
        if c.idle_timeout_ms == 0 || c.write_timeout_ms == 0 {
            return Err("[client] idleTimeoutMs and writeTimeoutMs must be positive".into());
        }
        let l = &self.limits;
        if l.max_steps == 0 || l.max_line_growth_bytes == 0 || l.max_result_bytes == 0 {
            return Err("[limits] maxSteps, maxLineGrowthBytes and maxResultBytes must be positive".into());
        }
        if l.max_value_bytes < Limits::MIN_VALUE_BYTES {
            return Err(format!(
                "[limits] maxValueBytes must be at least {} (SQLite's own R-tree and FTS5 pages need that much)",
                Limits::MIN_VALUE_BYTES
            ));
        }
        if self.cluster.secret.is_some() && self.cluster.secret_file.is_some() {
            return Err("[cluster] has both secret and secretFile; keep one".into());
        }
        for (i, _) in self.nodes.iter().enumerate() {
            self.client_addr(i)?;
            self.rpc_addr(i)?;
        }
        Ok(())
    }

    /// Node `index`'s client address.
    pub fn client_addr(&self, index: usize) -> Result<SocketAddr, String> {
        let n = self.node(index)?;
        resolve(&n.client_bind_address, n.client_bind_port, index, "client")
    }

    /// Node `index`'s metrics address, if it serves metrics.
    pub fn metrics_addr(&self, index: usize) -> Result<Option<SocketAddr>, String> {
        let n = self.node(index)?;
        let host = n.metrics_bind_address.as_deref().unwrap_or("127.0.0.1");
        n.metrics_bind_port.map(|port| resolve(host, port, index, "metrics")).transpose()
    }

    /// Node `index`'s RPC address.
    pub fn rpc_addr(&self, index: usize) -> Result<SocketAddr, String> {
        let n = self.node(index)?;
        resolve(&n.rpc_bind_address, n.rpc_bind_port, index, "rpc")
    }

    fn node(&self, index: usize) -> Result<&NodeSection, String> {
        self.nodes.get(index).ok_or_else(|| {
            format!(
                "there is no node with index {index}: the config lists {} (0 to {})",
                self.nodes.len(),
                self.nodes.len() - 1
            )
        })
    }

    /// Node `index`'s state machine database.
    pub fn sm_path(&self, index: usize) -> PathBuf {
        self.driver.data_dir.join(format!("{}-{index}.sqlite", self.driver.path_prefix))
    }

    /// Node `index`'s Raft state database.
    pub fn meta_path(&self, index: usize) -> PathBuf {
        self.driver.data_dir.join(format!("{}-{index}.meta.sqlite", self.cluster.name))
    }

    /// One Raft tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.raft.tick_ms)
    }

    /// When to compact the log.
    pub fn compaction(&self) -> crate::core::Compaction {
        let r = &self.raft;
        crate::core::Compaction { entries: r.compact_entries, bytes: r.compact_bytes, keep: r.compact_keep }
    }

    /// The largest snapshot a node accepts from its leader: twice the largest database
    /// allowed, or 1 TiB without a limit. A confused leader cannot fill the disk beyond it.
    pub fn max_snapshot_bytes(&self) -> u64 {
        match self.limits.max_database_bytes {
            0 => 1 << 40,
            max => max.saturating_mul(2).saturating_add(64 << 20),
        }
    }

    /// The client timeout.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client.timeout_ms)
    }

    /// The limits a line runs under.
    pub fn line_limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            max_steps: l.max_steps,
            max_value_bytes: l.max_value_bytes,
            max_growth_bytes: l.max_line_growth_bytes,
            max_database_bytes: l.max_database_bytes,
            max_result_bytes: l.max_result_bytes,
            max_temp_bytes: l.max_temp_bytes,
        }
    }

    /// How many bytes of read answers may wait, across all sessions, for their clients to
    /// read them: thirty-two results' worth, at least 256 MiB.
    pub fn answer_budget(&self) -> u64 {
        self.limits.max_result_bytes.saturating_mul(32).max(256 << 20)
    }

    /// The largest peer frame: a forwarded line or a reply as JSON, where one byte of a
    /// string may need six (`\u0001`), or an append batch. Derived from the limits, so
    /// whatever a session accepts fits on the wire.
    pub fn max_frame(&self) -> usize {
        let largest = (self.client.max_line_bytes as u64).max(self.limits.max_result_bytes);
        (6 * largest + (1 << 20)).max(16 << 20).min(usize::MAX as u64) as usize
    }

    /// The cluster secret: from `LIGHTRAFT_SECRET` if set, else `secretFile`, else
    /// `secret`; `None` if none is configured. Errors name the source, never the value.
    pub fn secret(&self) -> Result<Option<(Secret, String)>, String> {
        let (bytes, source) = if let Some(value) = std::env::var_os(SECRET_ENV).filter(|v| !v.is_empty()) {
            (value.into_encoded_bytes(), format!("the {SECRET_ENV} environment variable"))
        } else if let Some(path) = &self.cluster.secret_file {
            let text = std::fs::read(path)
                .map_err(|e| format!("cannot read the cluster secret file {}: {e}", path.display()))?;
            (text.trim_ascii().to_vec(), format!("the file {}", path.display()))
        } else if let Some(secret) = &self.cluster.secret {
            (secret.as_bytes().to_vec(), "[cluster] secret".to_string())
        } else {
            return Ok(None);
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster secret from {source} is {} bytes; use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        Ok(Some((Secret::new(bytes), source)))
    }
}

/// Where byte `offset` of a config file is, for an error: its line, and which
/// `[[nodes]]` entry (node index) holds it, if any.
fn place(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let mut nodes = 0;
    let mut in_nodes = false;
    for header in before.lines().map(str::trim).filter(|l| l.starts_with('[')) {
        in_nodes = header.starts_with("[[nodes]]");
        nodes += usize::from(in_nodes);
    }
    if in_nodes {
        format!("line {line}, in the [[nodes]] entry of node {}", nodes - 1)
    } else {
        format!("line {line}")
    }
}

fn resolve(host: &str, port: u16, index: usize, what: &str) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("node {index}'s {what} address {host}:{port} is not a valid address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = include_str!("../../lightraft.toml");

    fn parse(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Config::load(&path)
    }

    #[test]
    fn the_shipped_config_is_the_originals_three_nodes_with_defaults() {
        let c = parse(ORIGINAL).expect("parses");
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.client_addr(0).expect("addr").port(), 6453);
        assert_eq!(c.rpc_addr(2).expect("addr").port(), 56455);
        assert_eq!(c.sm_path(1), PathBuf::from("./lighraft-1.sqlite"));
        assert_eq!(c.meta_path(1), PathBuf::from("./lightraft-1.meta.sqlite"));
        assert_eq!(c.raft.tick_ms, 100);
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("[cluster]\nname=\"x\"").unwrap_err().contains("malformed"));
        let wrong = parse(&ORIGINAL.replace("clientBindPort = 6454", "clientBindPort = \"x\"")).unwrap_err();
        assert!(wrong.contains("malformed at line 12, in the [[nodes]] entry of node 1"), "{wrong}");
        assert!(parse(&ORIGINAL.replace("name = \"sqlite\"", "name = \"mysql\""))
            .unwrap_err()
            .contains("not supported"));
        assert!(parse(&format!("{ORIGINAL}\n[raft]\ntickMs = 0\n")).unwrap_err().contains("tickMs"));
        assert!(parse(&format!("{ORIGINAL}\n[raft]\nbogus = 1\n")).unwrap_err().contains("malformed"));
        let c = parse(ORIGINAL).expect("parses");
        assert!(c.client_addr(3).unwrap_err().contains("no node with index 3"));
    }
}
