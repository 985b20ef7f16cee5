//! `chat-node`: run a chat node.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use chat_node::{Node, Settings};
use clap::Parser;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "A QUIC chat node with a durable per-room history")]
struct Cli {
    /// TOML config file; flags and CHAT_* variables override its keys
    #[arg(long, env = "CHAT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Registers NAME with a password, or gives its account a new one (ending every session
    /// of it): the first operator's account, or a user's forgotten password. On a single
    /// node, with the node stopped (it opens the data directory's accounts itself); in
    /// cluster mode (`--nats`), at any time. The password is CHAT_PASSWORD, else the first
    /// line of standard input.
    SetPassword {
        /// The account's name
        name: String,
    },
}

/// Prints what stopped the node as its error chain (no backtrace: the chain says what went
/// wrong and what to do) and exits 1.
#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // web_transport_quinn warns of every browser tab that closes without saying so.
            EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                EnvFilter::new("info,fjall=warn,lsm_tree=warn,web_transport_quinn=error")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let config = cli.settings.or(file).resolve();
    if let Some(Command::SetPassword { name }) = cli.command {
        let password = match std::env::var("CHAT_PASSWORD") {
            Ok(password) if !password.is_empty() => password,
            _ => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        let said = chat_node::set_password(&config, &name, &password).await?;
        println!("{said}");
        return Ok(());
    }
    let node = Node::start(config).await?;
    tracing::info!(addr = %node.local_addr()?, "listening");
    node.run(shutdown_signal()).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
