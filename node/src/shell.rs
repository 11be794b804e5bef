//! `lightraft shell [NODE]`: a client for people. It speaks the same protocol as `nc`
//! (the node still does everything: prompts, statements over several lines, output), and
//! adds line editing, a history kept across runs, and Ctrl-C to drop what is being typed:
//! the line, or the whole unfinished statement ([`CANCEL`]). Ctrl-D ends the session.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::config::Config;
use crate::session::{CANCEL, CONTINUATION, PROMPT};

/// Where the history is kept: `~/.lightraft_history`.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".lightraft_history"))
}

/// Runs a session with node `node` of `config` until the user or the node ends it.
pub fn run(config: &Config, node: usize) -> Result<(), String> {
    let addr = config.client_addr(node)?;
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("cannot reach node {node} at {addr}: {e}"))?;
    let reader = stream.try_clone().map_err(|e| format!("cannot read from node {node}: {e}"))?;
    let mut editor = DefaultEditor::new().map_err(|e| format!("cannot start line editing: {e}"))?;
    let history = history_file();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    // What the node sends is printed as it comes, by a thread of its own; each prompt is
    // handed over here, so the editor shows it and reads the next line.
    let (prompts_tx, prompts) = mpsc::channel();
    std::thread::spawn(move || print_replies(reader, &prompts_tx));
    while let Ok(prompt) = prompts.recv() {
        let line = match editor.readline(&prompt) {
            Ok(line) if line.trim().starts_with(".mode json") && prompt == PROMPT => {
                // JSON mode sends no prompt, which this client waits for.
                println!("lightraft shell shows the text modes; for JSON, use nc");
                String::new()
            }
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                line
            }
            // Ctrl-C: drop the unfinished statement, or just this line.
            Err(ReadlineError::Interrupted) if prompt == CONTINUATION => CANCEL.to_string(),
            Err(ReadlineError::Interrupted) => String::new(),
            Err(ReadlineError::Eof) => ".quit".to_string(),
            Err(e) => return Err(format!("cannot read a line: {e}")),
        };
        if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
            break;
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

/// Prints the node's output, holding back a prompt at its end and passing it on
/// instead. Returns when the node closes the session.
fn print_replies(mut reader: TcpStream, prompts: &mpsc::Sender<String>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 64 << 10];
    let mut stdout = std::io::stdout();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        // Output always ends with a line break; a prompt never does. So a prompt at the
        // end of what arrived is the node waiting for input.
        let prompt = [PROMPT, CONTINUATION].into_iter().find(|p| pending.ends_with(p.as_bytes()));
        let shown = match prompt {
            Some(p) => pending.len() - p.len(),
            None => pending.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1),
        };
        let _ = stdout.write_all(&pending[..shown]).and_then(|()| stdout.flush());
        pending.drain(..shown);
        if let Some(p) = prompt {
            pending.clear();
            if prompts.send(p.to_string()).is_err() {
                return;
            }
        }
    }
    let _ = stdout.write_all(&pending).and_then(|()| stdout.flush());
}
