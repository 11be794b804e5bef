//! A small client for the session protocol in `.mode json`, used by `lightraft bench`
//! and by the tests.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::session::PROMPT;

/// One session, switched to JSON mode.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    /// Connects, reads the banner up to the first prompt, and switches to `.mode json`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut client = Client { reader: BufReader::new(read), writer };
        let mut banner = Vec::new();
        while !banner.ends_with(PROMPT.as_bytes()) {
            let mut byte = [0u8; 1];
            if client.reader.read(&mut byte).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the prompt"));
            }
            banner.push(byte[0]);
        }
        client.request(".mode json").await?;
        Ok(client)
    }

    /// Sends one line and parses the one JSON line that answers it.
    pub async fn request(&mut self, line: &str) -> io::Result<serde_json::Value> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\n").await?;
        self.read_reply().await
    }

    /// Sends raw bytes (which may be anything) followed by a newline.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<serde_json::Value> {
        self.writer.write_all(bytes).await?;
        self.writer.write_all(b"\n").await?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> io::Result<serde_json::Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the node closed the session"));
        }
        serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}: {line:?}")))
    }
}
