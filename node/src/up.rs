//! `lightraft up`: every node of the config on this machine, in one command.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use tokio::process::{Child, Command};

use crate::config::{Config, SECRET_ENV};
use crate::server::shutdown_signal;

/// Starts one `lightraft <index>` process per node, prints how to connect, and stops them
/// all cleanly on Ctrl-C (or when one of them fails). Without a configured secret, it
/// makes one for this run and hands it to every node (never printed), so even a local
/// cluster's peer ports admit only its own nodes.
pub fn run(config_path: &Path) -> Result<(), String> {
    let config = Config::load(config_path)?;
    let generated = match config.secret()? {
        Some(_) => None,
        None => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            Some(STANDARD.encode(bytes))
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the lightraft binary: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let mut children = Vec::new();
        for index in 0..config.nodes.len() {
            let mut command = Command::new(&exe);
            command.arg(index.to_string()).arg("--config").arg(config_path).stdin(Stdio::null());
            if let Some(secret) = &generated {
                command.env(SECRET_ENV, secret);
            }
            let child = command.spawn().map_err(|e| format!("cannot start node {index}: {e}"))?;
            children.push(child);
        }
        // The banner says "connect", so it waits until every node listens for clients.
        let addrs = (0..config.nodes.len()).map(|i| config.client_addr(i)).collect::<Result<Vec<_>, _>>()?;
        tokio::select! {
            () = listening(&addrs) => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                println!("(Not every node listens after 30 seconds; see their logs.)");
            }
            (index, status) = first_exit(&mut children) => {
                stop_all(&mut children).await;
                return Err(format!("node {index} exited ({status}) before it was ready; stopping the others"));
            }
        }
        println!("Started {} nodes of cluster {:?}. Connect with:", children.len(), config.cluster.name);
        if generated.is_some() {
            println!("(No cluster secret is configured, so this run made one for its nodes.)");
        }
        for index in 0..config.nodes.len() {
            let addr = config.client_addr(index)?;
            println!("  nc {} {}    # node {index}", addr.ip(), addr.port());
        }
        println!("Press Ctrl-C to stop them all.");

        let outcome = tokio::select! {
            signal = shutdown_signal() => {
                println!("{signal}: stopping the nodes");
                Ok(())
            }
            (index, status) = first_exit(&mut children) => {
                Err(format!("node {index} exited ({status}); stopping the others"))
            }
        };
        stop_all(&mut children).await;
        outcome
    })
}

/// Returns once every address accepts a connection.
async fn listening(addrs: &[std::net::SocketAddr]) {
    for addr in addrs {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until any child exits; returns its index and exit status.
async fn first_exit(children: &mut [Child]) -> (usize, String) {
    loop {
        for (index, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return (index, status.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks every node to stop (SIGTERM: a leader hands over leadership first), then kills
/// whatever is still running after ten seconds.
async fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal number.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
