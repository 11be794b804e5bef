//! The client session: what a person (or a script) typing into `nc` sees.
//!
//! One request is one line, or, in the text modes, as many lines as a statement takes:
//! a first line that leaves its statement unfinished (cut short, or inside a string, a
//! comment or a trigger body) goes on, at the continuation prompt, until a `;` ends it,
//! as in the sqlite3 shell (JSON mode keeps one line, one request). SQL is classified
//! by SQLite on a thread of its own (a line of one INSERT, UPDATE, DELETE, REPLACE or
//! SELECT statement needs no asking): reads run on a reader (after a ReadIndex barrier
//! if linearizable) and stream their rows back; writes go to the Raft core. Lines starting
//! with `.` are shell commands, as in sqlite3 (those that read the schema are in
//! [`crate::catalog`]).
//! Whatever arrives (an over-long line, invalid UTF-8, a NUL byte, binary garbage) gets
//! a clear error, and the session goes on (inside a statement that spans lines, it ends
//! instead: what follows could no longer be read as meant).
//!
//! A session costs the node little and never for long: connections are capped, a
//! session that stays silent is closed, and a client that does not read its answers is
//! disconnected once its socket stops draining, so answers cannot pile up in memory.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::catalog;
use crate::core::Event;
use crate::format::{self, JsonStream, Mode, Style};
use crate::metrics::Metrics;
use crate::protocol::{AdminCommand, AdminOk, Consistency, ErrorCode, Reply, Request, Then};
use crate::readers::{submit_to_core, Classified, ReadItem, ReadPool};
use sqlite_sm::text::Ending;
use sqlite_sm::StatementResult;

/// The banner's logo.
const LOGO: &str = r" _ _       _     _              __ _
| (_) __ _| |__ | |_ _ __ __ _ / _| |_
| | |/ _` | '_ \| __| '__/ _` | |_| __|
| | | (_| | | | | |_| | | (_| |  _| |_
|_|_|\__, |_| |_|\__|_|  \__,_|_|  \__|
     |___/
";

/// The prompt, as in the original.
pub const PROMPT: &str = "lightraft=# ";

/// The prompt while a statement continues on the next line (psql's style).
pub const CONTINUATION: &str = "lightraft-# ";

/// A line of just this character (CAN, typed as Ctrl-X) drops the statement typed so far.
/// `.dump` never writes one; inside a string or comment, where it could be part of a
/// value, it ends the session instead.
pub const CANCEL: &str = "\u{18}";

const HELP: &str = "\
SQL runs on the cluster; several statements in one request run as one transaction (all
applied or none). A statement may span lines: until it ends (with ;, outside any string,
comment or trigger body) the prompt is lightraft-#; a line of just Ctrl-X drops it (Ctrl-C
in lightraft shell). A first line without ; runs at once if it is whole. In JSON mode
each line is one request.
  .mode [table|box|csv|line|json]
                                 show or set how results look (default table; json is
                                 one JSON line per request)
  .headers [on|off]              show or set whether tables and CSV name their columns
  .timer [on|off]                show or set whether each request's time is shown
  .consistency [linearizable|local]
                                 show or set what reads see: every acknowledged write
                                 (default), or this node's copy at once, possibly stale
  .tables [PATTERN]              list tables (LIKE pattern, e.g. us%)
  .schema [PATTERN]              the CREATE statements of matching tables, as SQL
  .indexes [TABLE]               list indexes, of TABLE only if given
  .dump [TABLE]                  the database (or one table) as SQL that rebuilds it
  .status                        this node's role, term, leader, commit and applied index
  .cluster                       the members: role, addresses, replication lag (asks the leader)
  .add NODE RPC_IP:PORT CLIENT_IP:PORT
                                 add node NODE as a learner; it votes once caught up
  .remove NODE                   remove node NODE (the leader too) from the cluster
  .transfer NODE                 hand leadership to voter NODE
  .trace [on|off]                stream this node's Raft events as they happen: role
                                 changes, messages sent and received, disk writes,
                                 commits, applies, reads (the notation of the scenarios)
  .help                          this text
  .quit                          close the session";

/// What every session needs to know.
#[derive(Clone)]
pub struct SessionConfig {
    /// This node's index.
    pub node: u64,
    /// The longest accepted line.
    pub max_line: usize,
    /// The most client connections at once.
    pub max_clients: usize,
    /// A session silent this long is closed.
    pub idle_timeout: Duration,
    /// A client that does not read for this long while an answer waits is dropped.
    pub write_timeout: Duration,
    /// The largest result shown; also bounds a table's padded size.
    pub max_result_bytes: u64,
    /// The Raft core.
    pub core: SyncSender<Event>,
    /// The reader threads.
    pub readers: ReadPool,
    /// What operators watch (`metricsBindPort`).
    pub metrics: Arc<Metrics>,
}

/// Accepts client connections forever, at most `max_clients` at a time.
pub async fn serve(listener: TcpListener, config: SessionConfig) {
    let slots = Arc::new(Semaphore::new(config.max_clients));
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let config = config.clone();
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Say why, briefly, and hang up: the slot is what keeps descriptors free.
                    tokio::spawn(turn_away(stream, config.max_clients));
                    continue;
                };
                tokio::spawn(async move {
                    let _open = config.metrics.open_session();
                    if let Err(e) = session(stream, &config).await {
                        debug!("client {addr} disconnected: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                // Usually running out of file descriptors: wait, do not spin.
                warn!("accepting a client failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn turn_away(mut stream: TcpStream, max: usize) {
    let reason = format!("too many connections (maxClients is {max}); try again later");
    let message = format::error_table(ErrorCode::Unavailable, &reason);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(message.as_bytes())).await;
}

/// One input line, as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, without its line ending.
    Bytes(Vec<u8>),
    /// A line longer than the limit; it was read and discarded.
    TooLong,
    /// The client closed the connection.
    End,
}

/// Reads one line of at most `max` bytes without ever holding more than that in memory.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if line.is_empty() {
                Line::End
            } else {
                Line::Bytes(line)
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (&available[..pos], Some(pos + 1)),
            None => (available, None),
        };
        if !too_long {
            line.extend_from_slice(chunk);
            if line.len() > max {
                too_long = true;
                line = Vec::new();
            }
        }
        let consumed = done.unwrap_or(available.len());
        reader.consume(consumed);
        if done.is_some() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(if too_long { Line::TooLong } else { Line::Bytes(line) })
}

/// The writing half of a session: buffered, and every wait on the client bounded.
struct Out {
    writer: BufWriter<OwnedWriteHalf>,
    timeout: Duration,
}

impl Out {
    /// Writes `bytes`. A client that stops reading for the timeout is dropped, and so is
    /// one that reads too slowly to take the answer within the timeout plus a second per
    /// 256 KiB: trickling a byte now and then cannot keep an answer pinned in memory.
    async fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let deadline = tokio::time::Instant::now() + self.timeout + Duration::from_secs(bytes.len() as u64 >> 18);
        for chunk in bytes.chunks(64 << 10) {
            let wait = self.timeout.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, self.writer.write_all(chunk)).await {
                Ok(result) => result?,
                Err(_) => return Err(self.stalled()),
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match tokio::time::timeout(self.timeout, self.writer.flush()).await {
            Ok(result) => result,
            Err(_) => Err(self.stalled()),
        }
    }

    fn stalled(&self) -> std::io::Error {
        let message = format!("the client did not read its answer for {:?}", self.timeout);
        std::io::Error::new(std::io::ErrorKind::TimedOut, message)
    }
}

/// A session's settings.
pub(crate) struct State {
    pub(crate) style: Style,
    /// Show each request's time (`.timer`).
    timer: bool,
    pub(crate) consistency: Consistency,
    /// This node's Raft events, while `.trace on`.
    trace: Option<mpsc::Receiver<String>>,
    /// The lines of a statement not yet ended, and how far it has come.
    pending: String,
    ending: Ending,
}

impl State {
    pub(crate) fn json(&self) -> bool {
        self.style.mode == Mode::Json
    }
}

async fn session(stream: TcpStream, config: &SessionConfig) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut out = Out { writer: BufWriter::with_capacity(64 << 10, write), timeout: config.write_timeout };
    out.put(format!("{LOGO}Connected to node {}\n{PROMPT}", config.node).as_bytes()).await?;
    out.flush().await?;
    let mut state = State {
        style: Style::default(),
        timer: false,
        consistency: Consistency::Linearizable,
        trace: None,
        pending: String::new(),
        ending: Ending::new(),
    };
    loop {
        // While tracing, events are written as they come, between the client's lines.
        // (Waiting for input with `fill_buf` takes nothing from the reader, so stopping
        // that wait for an event loses no byte.) A session that watches need not type:
        // the idle timeout applies only once a line has begun. A watcher that went away
        // is found out by the write timeout: events (heartbeats at least) keep coming.
        if let Some(trace) = state.trace.as_mut() {
            tokio::select! {
                event = trace.recv() => {
                    match event {
                        Some(line) => {
                            out.put(trace_line(&state, &line).as_bytes()).await?;
                            out.flush().await?;
                        }
                        None => state.trace = None,
                    }
                    continue;
                }
                ready = reader.fill_buf() => {
                    ready?;
                }
            }
        }
        // Once the first byte is there, the rest of the line must come within the idle
        // timeout, tracing or not: a partial line cannot hold the session open.
        let line = match tokio::time::timeout(config.idle_timeout, read_line(&mut reader, config.max_line)).await {
            Ok(line) => line?,
            Err(_) => {
                let message = format!("closing the session: nothing was received for {:?}", config.idle_timeout);
                out.put(error(&state, ErrorCode::BadRequest, &message).as_bytes()).await?;
                out.flush().await?;
                return Ok(());
            }
        };
        let quit = match line {
            Line::End => return Ok(()),
            Line::TooLong => {
                let message = format!("the line is longer than {} bytes and was ignored", config.max_line);
                refuse_line(&mut state, &message, &mut out).await?
            }
            Line::Bytes(bytes) => match String::from_utf8(bytes) {
                Err(_) => refuse_line(&mut state, "the line is not valid UTF-8 and was ignored", &mut out).await?,
                Ok(text) => take_line(text, &mut state, config, &mut out).await?,
            },
        };
        if quit {
            out.flush().await?;
            return out.writer.shutdown().await;
        }
        if !state.json() {
            let prompt = if state.pending.is_empty() { PROMPT } else { CONTINUATION };
            out.put(prompt.as_bytes()).await?;
        }
        out.flush().await?;
    }
}

/// A line that cannot be taken. Alone, it is skipped; inside a statement that spans
/// lines, what follows could no longer be read as the client meant it (the rest of a
/// string would run as SQL), so the session ends. Returns whether to close it.
async fn refuse_line(state: &mut State, message: &str, out: &mut Out) -> std::io::Result<bool> {
    if state.pending.is_empty() {
        out.put(error(state, ErrorCode::BadRequest, message).as_bytes()).await?;
        return Ok(false);
    }
    let message = format!("{message}, inside a statement that spans lines; closing the session");
    out.put(error(state, ErrorCode::BadRequest, &message).as_bytes()).await?;
    Ok(true)
}

/// One line of text from the client: a shell command, or SQL to run once its statement
/// has ended. Returns whether to close the session.
///
/// In the text modes a statement ends as in the sqlite3 shell, with `;` outside any
/// string, comment or trigger body ([`Ending`]); a first line without one also runs
/// unless SQLite finds it cut short ("incomplete input"), since one line was one request
/// before statements could span lines. JSON mode stays one line, one request.
async fn take_line(text: String, state: &mut State, config: &SessionConfig, out: &mut Out) -> std::io::Result<bool> {
    let first = state.pending.is_empty();
    if first && text.trim_start().starts_with('.') {
        return dot_command(text.trim(), state, config, out).await;
    }
    if text.contains('\0') {
        // SQLite would stop reading at the NUL and silently drop what follows it.
        return refuse_line(state, "the line holds a NUL byte, where SQL would end; nothing was run", out).await;
    }
    if state.json() {
        if !text.trim().is_empty() {
            run_sql(text, state, config, out, false).await?;
        }
        return Ok(false);
    }
    if text == CANCEL {
        // Drops the statement typed so far (`lightraft shell` sends it on Ctrl-C), but
        // not from inside a string or comment: there it could be text of the value,
        // and what follows would run as SQL.
        if state.ending.is_inside_a_token() {
            return refuse_line(state, "a Ctrl-X line inside a string, comment or trigger body", out).await;
        }
        state.pending = String::new();
        state.ending = Ending::new();
        return Ok(false);
    }
    let size = if first { text.len() } else { state.pending.len() + 1 + text.len() };
    if size > config.max_line {
        let message = format!("the statement is longer than {} bytes (the longest line)", config.max_line);
        return refuse_line(state, &message, out).await;
    }
    if !first {
        state.pending.push('\n');
    }
    state.pending.push_str(&text);
    // Each line with its line break, as the sqlite3 shell judges it: a `--` comment
    // ends with its line.
    state.ending.feed(&text);
    state.ending.feed("\n");
    let complete = state.ending.is_complete();
    if !complete && (!first || state.ending.is_inside_a_token()) {
        return Ok(false);
    }
    let sql = std::mem::take(&mut state.pending);
    let ending = std::mem::take(&mut state.ending);
    if sqlite_sm::text::is_blank(&sql) {
        // Comments and semicolons alone, as sqlite3 accepts them: nothing to do.
        return Ok(false);
    }
    let started = Instant::now();
    if let Ran::Incomplete = run_sql(sql.clone(), state, config, out, !complete).await? {
        state.pending = sql;
        state.ending = ending;
        return Ok(false);
    }
    if state.timer {
        out.put(format!("Run Time: real {:.3}\n", started.elapsed().as_secs_f64()).as_bytes()).await?;
    }
    Ok(false)
}

pub(crate) fn render(state: &State, reply: &Reply, max_bytes: u64) -> String {
    if state.json() {
        format::json(reply)
    } else {
        format::text(reply, state.style, max_bytes)
    }
}

/// One `.trace` event as the session shows it.
fn trace_line(state: &State, line: &str) -> String {
    if state.json() {
        serde_json::json!({ "trace": line }).to_string() + "\n"
    } else {
        format!("trace: {line}\n")
    }
}

pub(crate) fn error(state: &State, code: ErrorCode, message: &str) -> String {
    render(state, &Reply::error(code, message), u64::MAX)
}

/// An operator's command, carried out by the leader (through the core); its answer.
async fn admin(command: AdminCommand, state: &State, config: &SessionConfig) -> String {
    let (tx, rx) = oneshot::channel();
    if config.core.try_send(Event::Client(Request::Admin { command, reply: tx })).is_err() {
        return error(state, ErrorCode::Unavailable, "the node is busy or shutting down");
    }
    match rx.await {
        Ok(Ok(AdminOk::Done(message))) if state.json() => serde_json::json!({ "done": message }).to_string() + "\n",
        Ok(Ok(AdminOk::Done(message))) => format!("{message}\n"),
        Ok(Ok(AdminOk::Cluster(report))) => format::cluster(&report, state.json()),
        Ok(Err((code, message))) => error(state, code, &message),
        Err(_) => error(state, ErrorCode::Unavailable, "the node is shutting down"),
    }
}

/// Runs a shell command. Returns whether to close the session.
async fn dot_command(text: &str, state: &mut State, config: &SessionConfig, out: &mut Out) -> std::io::Result<bool> {
    let mut words = text.split_whitespace();
    let command = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let ok = |state: &State, key: &str, value: &str| {
        if state.json() {
            serde_json::json!({ key: value }).to_string() + "\n"
        } else {
            format!("{key} is {value}\n")
        }
    };
    let mut held = Vec::new();
    let output = match (command, args.as_slice()) {
        (".quit" | ".exit", []) => {
            let bye = if state.json() { "{\"bye\":true}\n" } else { "bye\n" };
            out.put(bye.as_bytes()).await?;
            return Ok(true);
        }
        (".help", []) => {
            if state.json() {
                serde_json::json!({ "help": HELP }).to_string() + "\n"
            } else {
                format!("{HELP}\n")
            }
        }
        (".mode", []) => ok(state, "mode", state.style.mode.name()),
        (".mode", [name]) => match Mode::parse(name) {
            Some(mode) => {
                state.style.mode = mode;
                ok(state, "mode", mode.name())
            }
            None => error(state, ErrorCode::BadRequest, &format!("no mode {name:?}: table, box, csv, line or json")),
        },
        (".headers", []) => ok(state, "headers", on_off(state.style.headers)),
        (".headers", [value @ ("on" | "off")]) => {
            state.style.headers = *value == "on";
            ok(state, "headers", value)
        }
        (".timer", []) => ok(state, "timer", on_off(state.timer)),
        (".timer", [value @ ("on" | "off")]) => {
            state.timer = *value == "on";
            ok(state, "timer", value)
        }
        (".consistency", []) => ok(state, "consistency", consistency_name(state.consistency)),
        (".consistency", ["linearizable"]) => {
            state.consistency = Consistency::Linearizable;
            ok(state, "consistency", "linearizable")
        }
        (".consistency", ["local"]) => {
            state.consistency = Consistency::Local;
            ok(state, "consistency", "local")
        }
        (".trace", ["on"]) => {
            let (tx, mut rx) = mpsc::channel(crate::trace::QUEUE);
            if config.core.try_send(Event::Client(Request::Trace(tx))).is_err() {
                error(state, ErrorCode::Unavailable, "the node is busy or shutting down")
            } else {
                // The core's first line says whether this session may watch.
                match tokio::time::timeout(config.write_timeout, rx.recv()).await {
                    Ok(Some(first)) if first.starts_with(crate::trace::REFUSED) => {
                        error(state, ErrorCode::Unavailable, first.trim_start_matches(crate::trace::REFUSED).trim())
                    }
                    Ok(Some(first)) => {
                        state.trace = Some(rx);
                        ok(state, "tracing", "on") + &trace_line(state, &first)
                    }
                    _ => error(state, ErrorCode::Unavailable, "the node is busy or shutting down"),
                }
            }
        }
        (".trace", ["off"]) => {
            // Dropping the receiver tells the core to stop sending.
            state.trace = None;
            ok(state, "tracing", "off")
        }
        (".trace", []) => ok(state, "tracing", on_off(state.trace.is_some())),
        (".status", []) => {
            let (tx, rx) = oneshot::channel();
            if config.core.try_send(Event::Client(Request::Status(tx))).is_err() {
                error(state, ErrorCode::Unavailable, "the node is busy or shutting down")
            } else {
                match rx.await {
                    Ok(report) => format::status(&report, state.json()),
                    Err(_) => error(state, ErrorCode::Unavailable, "the node is shutting down"),
                }
            }
        }
        (".cluster", []) => admin(AdminCommand::Cluster, state, config).await,
        (".add", [node, rpc, client]) => match node.parse() {
            Ok(node) => {
                let command = AdminCommand::Add { node, rpc: rpc.to_string(), client: client.to_string() };
                admin(command, state, config).await
            }
            Err(_) => error(state, ErrorCode::BadRequest, &format!("{node:?} is not a node index")),
        },
        (".remove", [node]) => match node.parse() {
            Ok(node) => admin(AdminCommand::Remove { node }, state, config).await,
            Err(_) => error(state, ErrorCode::BadRequest, &format!("{node:?} is not a node index")),
        },
        (".transfer", [node]) => match node.parse() {
            Ok(node) => admin(AdminCommand::Transfer { node }, state, config).await,
            Err(_) => error(state, ErrorCode::BadRequest, &format!("{node:?} is not a node index")),
        },
        (".tables", [] | [_]) => catalog::tables(args.first().copied(), state, config, &mut held).await,
        (".schema", [] | [_]) => catalog::schema(args.first().copied(), state, config, &mut held).await,
        (".indexes" | ".indices", [] | [_]) => catalog::indexes(args.first().copied(), state, config, &mut held).await,
        (".dump", [] | [_]) => catalog::dump(args.first().copied(), state, config, &mut held).await,
        _ => {
            let message = format!("unknown command or wrong arguments: {text} (try .help)");
            error(state, ErrorCode::BadRequest, &message)
        }
    };
    out.put(output.as_bytes()).await?;
    // The reads' share of the answer budget, held until their answer is written.
    drop(held);
    Ok(false)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn consistency_name(consistency: Consistency) -> &'static str {
    match consistency {
        Consistency::Linearizable => "linearizable",
        Consistency::Local => "local",
    }
}

/// What became of SQL handed to [`run_sql`].
enum Ran {
    /// It ran (or failed), and its answer was written.
    Answered,
    /// It stops in the middle of a statement, and nothing ran: read on.
    Incomplete,
}

/// A request of SQL: classified by SQLite itself (unless its kind is plain from its
/// text), then read or replicated. The classifier starts the work itself (a write goes to
/// the Raft core, a read to a reader once its barrier passes), so the session only waits
/// for the outcome. With `wait_if_incomplete`, SQL that stops mid-statement is not an
/// error but [`Ran::Incomplete`].
async fn run_sql(
    sql: String,
    state: &State,
    config: &SessionConfig,
    out: &mut Out,
    wait_if_incomplete: bool,
) -> std::io::Result<Ran> {
    let started = Instant::now();
    let linearizable = state.consistency == Consistency::Linearizable;
    let refused = |code: ErrorCode| config.metrics.request("refused", code.as_str(), started);
    // SQLite would judge these lines a write, or a read of one statement, whatever the
    // schema: skip asking it, a thread hop and a parse for each. If the line is broken,
    // applying or reading it says so, as for a line whose later statement fails. A line
    // the shell may still continue must be judged, to tell a statement cut short from a
    // broken one.
    let judged = if wait_if_incomplete {
        config.readers.classify(sql.clone(), linearizable).await
    } else if sqlite_sm::text::is_a_write_alone(&sql) {
        Ok(Ok(config.readers.write(sql.clone())))
    } else if sqlite_sm::text::is_a_select_alone(&sql) {
        Ok(Ok(config.readers.read(sql.clone(), linearizable)))
    } else {
        config.readers.classify(sql.clone(), linearizable).await
    };
    let classified = match judged {
        Err(busy) => {
            refused(ErrorCode::Unavailable);
            return out.put(error(state, ErrorCode::Unavailable, busy).as_bytes()).await.map(|_| Ran::Answered);
        }
        Ok(Err(e)) if e.is_incomplete() && wait_if_incomplete => return Ok(Ran::Incomplete),
        Ok(Ok(classified)) => Ok(classified),
        Ok(Err(e)) if e.is_final() || !linearizable => Err(e),
        Ok(Err(_)) => {
            // This replica's schema may lag the cluster's (a table created a moment ago
            // through another node). Wait until it has applied everything committed, as
            // a linearizable read would, and judge the line again (a read needs no
            // second barrier).
            if let Err(reply) = barrier(config).await {
                refused(code_of(&reply).unwrap_or(ErrorCode::Unavailable));
                return out.put(render(state, &reply, u64::MAX).as_bytes()).await.map(|_| Ran::Answered);
            }
            match config.readers.classify(sql, false).await {
                Err(busy) => {
                    refused(ErrorCode::Unavailable);
                    return out.put(error(state, ErrorCode::Unavailable, busy).as_bytes()).await.map(|_| Ran::Answered);
                }
                Ok(result) => result,
            }
        }
    };
    match classified {
        Err(e) => {
            refused(ErrorCode::SqlError);
            out.put(error(state, ErrorCode::SqlError, e.message()).as_bytes()).await?
        }
        Ok(Classified::Submitted(answer)) => {
            let reply = outcome(answer).await;
            config.metrics.request("write", code_of(&reply).map_or("ok", ErrorCode::as_str), started);
            out.put(render(state, &reply, config.max_result_bytes).as_bytes()).await?
        }
        Ok(Classified::Refused(reply)) => {
            refused(code_of(&reply).unwrap_or(ErrorCode::SqlError));
            out.put(render(state, &reply, u64::MAX).as_bytes()).await?
        }
        Ok(Classified::Read { statements, items }) => {
            let outcome = answer_read(items, statements, state, config, out).await?;
            config.metrics.request("read", outcome, started);
        }
    }
    Ok(Ran::Answered)
}

/// The error code of a reply, if it is an error.
fn code_of(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        Reply::Results(_) => None,
    }
}

/// The results of a read at the session's consistency, for the shell's own commands: a
/// line of one or more statements, all in one read transaction. At most the result
/// limit, like any read.
pub(crate) async fn collect(
    sql: String,
    state: &State,
    config: &SessionConfig,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> Result<Vec<StatementResult>, Reply> {
    if state.consistency == Consistency::Linearizable {
        barrier(config).await?;
    }
    let mut items = config.readers.query(sql).map_err(|busy| Reply::error(ErrorCode::Unavailable, busy))?;
    let mut results = Vec::new();
    loop {
        match items.recv().await {
            Some(ReadItem::Output(output, permit)) => {
                output.collect_into(&mut results);
                held.push(permit);
            }
            Some(ReadItem::Done(Ok(()))) => return Ok(results),
            Some(ReadItem::Done(Err(e))) => return Err(Reply::error(ErrorCode::SqlError, &e)),
            Some(ReadItem::Refused(reply)) => return Err(reply),
            None => return Err(Reply::error(ErrorCode::Unavailable, "the reader stopped before finishing")),
        }
    }
}

/// Waits until this node has applied everything committed when the barrier began.
async fn barrier(config: &SessionConfig) -> Result<(), Reply> {
    let (tx, rx) = oneshot::channel();
    send_to_core(config, Request::ReadBarrier(Then::Session(tx)))?;
    rx.await.unwrap_or_else(|_| Err(Reply::error(ErrorCode::Unavailable, "the node is shutting down")))
}

/// Waits for a submitted write's outcome. The core (or, for a write it proposed, the
/// apply thread) answers every write exactly once, so there is no timeout here: a write
/// that takes long to apply is still answered with its result.
async fn outcome(answer: oneshot::Receiver<Reply>) -> Reply {
    answer.await.unwrap_or_else(|_| {
        Reply::error(ErrorCode::OutcomeUnknown, "the node stopped before answering; the write may have been applied")
    })
}

fn send_to_core(config: &SessionConfig, request: Request) -> Result<(), Reply> {
    submit_to_core(&config.core, request)
}

/// Writes a read's answer as its outputs arrive. JSON streams rows as they come; a table
/// needs every row to size its columns, so it collects them (at most the result limit)
/// first.
async fn answer_read(
    mut items: mpsc::UnboundedReceiver<ReadItem>,
    statements: usize,
    state: &State,
    config: &SessionConfig,
    out: &mut Out,
) -> std::io::Result<&'static str> {
    let mut results: Vec<StatementResult> = Vec::new();
    let mut stream = JsonStream::new(statements > 1);
    let mut chunk = Vec::new();
    // Answers hold their share of the node's answer budget until written (JSON) or
    // shown (a table); `held` keeps a table's shares until then.
    let mut held = Vec::new();
    let outcome = loop {
        let Some(item) = items.recv().await else { break Err("the reader stopped before finishing".to_string()) };
        match item {
            ReadItem::Done(outcome) => break outcome,
            // Only ever the first and only item: nothing was written yet.
            ReadItem::Refused(reply) => {
                out.put(render(state, &reply, u64::MAX).as_bytes()).await?;
                return Ok(code_of(&reply).map_or("ok", ErrorCode::as_str));
            }
            ReadItem::Output(output, permit) if state.json() => {
                stream.push(&mut chunk, output);
                if chunk.len() >= 64 << 10 {
                    out.put(&chunk).await?;
                    chunk.clear();
                }
                drop(permit);
            }
            ReadItem::Output(output, permit) => {
                output.collect_into(&mut results);
                held.push(permit);
            }
        }
    };
    if state.json() {
        stream.finish(&mut chunk, outcome.as_ref().err().map(|e| (ErrorCode::SqlError, e.as_str())));
        out.put(&chunk).await?;
        return Ok(if outcome.is_ok() { "ok" } else { ErrorCode::SqlError.as_str() });
    }
    let mut text = if results.is_empty() {
        String::new()
    } else {
        format::text(&Reply::Results(results), state.style, config.max_result_bytes)
    };
    if let Err(e) = &outcome {
        text.push_str(&format::error_table(ErrorCode::SqlError, e));
    }
    out.put(text.as_bytes()).await?;
    Ok(if outcome.is_ok() { "ok" } else { ErrorCode::SqlError.as_str() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_limited_without_buffering_the_excess() {
        let input = b"short\r\n0123456789abcdef\nlast".as_slice();
        let mut reader = BufReader::with_capacity(4, input);
        assert_eq!(read_line(&mut reader, 8).await.expect("reads"), Line::Bytes(b"short".to_vec()));
        assert_eq!(read_line(&mut reader, 8).await.expect("reads"), Line::TooLong);
        assert_eq!(read_line(&mut reader, 8).await.expect("reads"), Line::Bytes(b"last".to_vec()));
        assert_eq!(read_line(&mut reader, 8).await.expect("reads"), Line::End);
    }
}
