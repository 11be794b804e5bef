//! The client session: what a person (or a script) typing into `nc` sees.
//!
//! One line is one request. SQL goes to the Raft core; lines starting with `.` are shell
//! commands, as in the sqlite3 shell. Whatever arrives (an over-long line, invalid
//! UTF-8, binary garbage) gets a clear error, and the session goes on.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::core::Event;
use crate::format;
use crate::protocol::{Consistency, ErrorCode, Reply, Request};

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

const HELP: &str = "\
Each line is one request. SQL runs on the cluster; several statements separated by ;
on one line run as one transaction (all applied or none).
  .mode table|json               output as tables (default) or one JSON line per request
  .consistency linearizable|local
                                 reads see every acknowledged write (default), or this
                                 node's copy at once, possibly stale
  .status                        this node's role, term, leader, commit and applied index
  .tables                        list tables
  .schema [TABLE]                show CREATE statements
  .help                          this text
  .quit                          close the session";

/// What every session needs to know.
#[derive(Clone)]
pub struct SessionConfig {
    /// This node's index.
    pub node: u64,
    /// The longest accepted line.
    pub max_line: usize,
    /// The client timeout.
    pub timeout: Duration,
    /// The Raft core.
    pub core: SyncSender<Event>,
}

/// Accepts client connections forever.
pub async fn serve(listener: TcpListener, config: SessionConfig) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let config = config.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, config).await {
                        debug!("client {addr} disconnected: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("accepting a client failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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

/// A session's settings.
struct State {
    json: bool,
    consistency: Consistency,
}

async fn session(stream: TcpStream, config: SessionConfig) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(format!("{LOGO}Connected to node {}\n{PROMPT}", config.node).as_bytes()).await?;
    let mut state = State { json: false, consistency: Consistency::Linearizable };
    loop {
        let (output, quit) = match read_line(&mut reader, config.max_line).await? {
            Line::End => return Ok(()),
            Line::TooLong => {
                let message = format!("the line is longer than {} bytes and was ignored", config.max_line);
                (error(&state, ErrorCode::BadRequest, &message), false)
            }
            Line::Bytes(bytes) => match String::from_utf8(bytes) {
                Err(_) => (error(&state, ErrorCode::BadRequest, "the line is not valid UTF-8 and was ignored"), false),
                Ok(text) => {
                    let text = text.trim();
                    if text.is_empty() {
                        (String::new(), false)
                    } else if text.starts_with('.') {
                        dot_command(text, &mut state, &config).await
                    } else {
                        let reply = ask_sql(&config, text.to_string(), state.consistency).await;
                        (render(&state, &reply), false)
                    }
                }
            },
        };
        write.write_all(output.as_bytes()).await?;
        if quit {
            return write.shutdown().await;
        }
        if !state.json {
            write.write_all(PROMPT.as_bytes()).await?;
        }
    }
}

fn render(state: &State, reply: &Reply) -> String {
    if state.json {
        format::json(reply)
    } else {
        format::table(reply)
    }
}

fn error(state: &State, code: ErrorCode, message: &str) -> String {
    render(state, &Reply::error(code, message))
}

/// Runs a shell command. Returns the output and whether to close the session.
async fn dot_command(text: &str, state: &mut State, config: &SessionConfig) -> (String, bool) {
    let mut words = text.split_whitespace();
    let command = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let ok = |state: &State, key: &str, value: &str| {
        if state.json {
            serde_json::json!({ key: value }).to_string() + "\n"
        } else {
            format!("{key} is {value}\n")
        }
    };
    match (command, args.as_slice()) {
        (".quit" | ".exit", []) => {
            let out = if state.json { "{\"bye\":true}\n".to_string() } else { "bye\n".to_string() };
            (out, true)
        }
        (".help", []) => {
            let out =
                if state.json { serde_json::json!({ "help": HELP }).to_string() + "\n" } else { format!("{HELP}\n") };
            (out, false)
        }
        (".mode", ["json"]) => {
            state.json = true;
            (ok(state, "mode", "json"), false)
        }
        (".mode", ["table"]) => {
            state.json = false;
            (ok(state, "mode", "table"), false)
        }
        (".consistency", ["linearizable"]) => {
            state.consistency = Consistency::Linearizable;
            (ok(state, "consistency", "linearizable"), false)
        }
        (".consistency", ["local"]) => {
            state.consistency = Consistency::Local;
            (ok(state, "consistency", "local"), false)
        }
        (".status", []) => {
            let (tx, rx) = oneshot::channel();
            if config.core.try_send(Event::Client(Request::Status(tx))).is_err() {
                return (error(state, ErrorCode::Unavailable, "the node is busy or shutting down"), false);
            }
            match tokio::time::timeout(config.timeout, rx).await {
                Ok(Ok(report)) => (format::status(&report, state.json), false),
                _ => (error(state, ErrorCode::Unavailable, "the node did not report its status"), false),
            }
        }
        (".tables", []) => {
            let sql = format!(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '{}' ORDER BY name",
                sqlite_sm::APPLIED_TABLE
            );
            (render(state, &ask_sql(config, sql, state.consistency).await), false)
        }
        (".schema", [] | [_]) => {
            let filter = args.first().map_or(String::new(), |t| format!(" AND tbl_name = '{}'", t.replace('\'', "''")));
            let sql = format!(
                "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' AND tbl_name <> '{}'{filter} ORDER BY tbl_name, type DESC, name",
                sqlite_sm::APPLIED_TABLE
            );
            (render(state, &ask_sql(config, sql, state.consistency).await), false)
        }
        _ => {
            let message = format!("unknown command or wrong arguments: {text} (try .help)");
            (error(state, ErrorCode::BadRequest, &message), false)
        }
    }
}

/// Sends a line to the Raft core and waits for its answer. The core answers every request
/// by its deadline; the wait here is only a guard against a core that stopped.
async fn ask_sql(config: &SessionConfig, sql: String, consistency: Consistency) -> Reply {
    let (tx, rx) = oneshot::channel();
    match config.core.try_send(Event::Client(Request::Sql { sql, consistency, reply: tx })) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Reply::error(ErrorCode::Unavailable, "the node is overloaded; nothing was done");
        }
        Err(TrySendError::Disconnected(_)) => {
            return Reply::error(ErrorCode::Unavailable, "the node is shutting down; nothing was done");
        }
    }
    match tokio::time::timeout(config.timeout * 2 + Duration::from_secs(1), rx).await {
        Ok(Ok(reply)) => reply,
        _ => Reply::error(
            ErrorCode::OutcomeUnknown,
            "the node stopped before answering; the request may have been applied",
        ),
    }
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
