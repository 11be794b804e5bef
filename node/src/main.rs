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
        (None, Some(index)) => run_node(&cli.config, index),
        (None, None) => {
            Err("Usage: lightraft <node index> [--config FILE] | lightraft up | lightraft bench (see --help)".into())
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

fn run_node(config_path: &std::path::Path, index: &str) -> Result<(), String> {
    let index: usize =
        index.parse().map_err(|_| format!("{index:?} is not a node index. Usage: lightraft <node index>"))?;
    let config = Config::load(config_path)?;
    config.client_addr(index)?;
    // Every replica computes 'localtime' the same way: as UTC.
    // SAFETY (edition 2024 wording): no other thread exists yet.
    std::env::set_var("TZ", "UTC");
    init_logging();
    server::run(&config, index)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
