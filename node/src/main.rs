//! The `lightraft` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lightraft::bench::{self, BenchArgs};
use lightraft::config::Config;
use lightraft::{server, up};

/// SQLite made distributed by Raft. Start node N of ./lightraft.toml with
/// `lightraft N`, or every node at once with `lightraft up`; then talk SQL with
/// `nc 127.0.0.1 6453`.
#[derive(Parser, Debug)]
#[command(name = "lightraft", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// The index (0-based) of the [[nodes]] block to run.
    #[arg(value_name = "NODE_INDEX")]
    index: Option<String>,
    /// The configuration file.
    #[arg(long, short, default_value = "lightraft.toml", global = true)]
    config: PathBuf,
    /// For a node not in the config: the client address (HOST:PORT) of a running member,
    /// which is asked to add this node to the cluster. Needs --rpc and --client.
    #[arg(long, value_name = "MEMBER")]
    join: Option<String>,
    /// For a node not in the config: where it listens for peers (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    rpc: Option<String>,
    /// For a node not in the config: where it listens for clients (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    client: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every node of the config on this machine; Ctrl-C stops them all.
    Up,
    /// Measure writes and linearizable reads per second against a running cluster.
    Bench {
        /// Concurrent client sessions.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds per phase (writes, then reads).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Spread sessions over every node instead of connecting to the leader.
        #[arg(long)]
        spread: bool,
    },
    /// A session with node NODE (default 0) for people: line editing, history across
    /// runs, Ctrl-C drops what is being typed, Ctrl-D quits. `nc` works as well.
    Shell {
        /// The node to talk to (its index in the config).
        #[arg(default_value_t = 0)]
        node: usize,
    },
    /// Write a consistent copy of one node's data to FILE while the cluster serves: a
    /// SQLite database, or with --sql the SQL that rebuilds it in a new cluster. Run it on
    /// that node's machine.
    Backup {
        /// The node whose data to copy (its index in the config).
        #[arg(long)]
        node: usize,
        /// Write SQL (as `.dump` does) instead of a database file.
        #[arg(long)]
        sql: bool,
        /// The file to create; it must not exist yet.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (&cli.command, &cli.index) {
        (Some(Command::Up), _) => {
            init_logging();
            up::run(&cli.config)
        }
        (Some(Command::Bench { clients, seconds, spread }), _) => {
            bench::run(&BenchArgs { config: cli.config.clone(), clients: *clients, seconds: *seconds, spread: *spread })
        }
        (Some(Command::Shell { node }), _) => {
            Config::load(&cli.config).and_then(|config| lightraft::shell::run(&config, *node))
        }
        (Some(Command::Backup { node, sql, file }), _) => Config::load(&cli.config)
            .and_then(|config| lightraft::backup::run(&config, *node, file, *sql))
            .map(|done| println!("{done}")),
        (None, Some(index)) => run_node(&cli, index),
        (None, None) => {
            Err("Usage: lightraft <node index> [--config FILE] | lightraft up | lightraft shell | lightraft bench | lightraft backup (see --help)".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lightraft: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_node(cli: &Cli, index: &str) -> Result<(), String> {
    let index: usize =
        index.parse().map_err(|_| format!("{index:?} is not a node index. Usage: lightraft <node index>"))?;
    let config_path = &cli.config;
    let config = Config::load(config_path)?;
    let listed = index < config.nodes.len();
    let join = match (&cli.join, &cli.rpc, &cli.client) {
        (None, None, None) if listed => None,
        (None, ..) => {
            return Err(format!(
                "node {index} is not in {} (it lists nodes 0 to {}): to add it to the running cluster, start it with \
                 --join <client address of a member> --rpc HOST:PORT --client HOST:PORT",
                config_path.display(),
                config.nodes.len() - 1
            ))
        }
        (Some(_), ..) if listed => {
            return Err(format!(
                "node {index} is in {}, which gives its addresses; --join is for a node with a new index \
                 (to replace node {index}, remove it with .remove and join a new node in its place)",
                config_path.display()
            ))
        }
        (Some(member), Some(rpc), Some(client)) => {
            let parse = |what: &str, text: &str| {
                std::net::ToSocketAddrs::to_socket_addrs(text)
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("--{what} {text:?} is not HOST:PORT"))
            };
            Some(server::Join { member: member.clone(), rpc: parse("rpc", rpc)?, client: parse("client", client)? })
        }
        (Some(_), ..) => {
            return Err("--join needs --rpc HOST:PORT and --client HOST:PORT: where this node listens".into())
        }
    };
    // Every replica computes 'localtime' the same way: as UTC.
    // SAFETY (edition 2024 wording): no other thread exists yet.
    std::env::set_var("TZ", "UTC");
    init_logging();
    server::run(&config, index, join)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}
