//! The server under test as its own process: the release `chat-node` (or this program's own
//! `relay` floor) started on a free loopback port through `chat_harness`, which also reads
//! its CPU time and memory from /proc and kills it when the run ends however it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_client::{Client, ConnectOptions, Trust};

pub use chat_harness::{ServerProcess, cpu_seconds, io_stall_us, memory_kib};

/// Starts the release `chat-node` on a free port with its history in `data_dir`, with the
/// harness's `flags` and then the user's `user_flags` (which thus win) added.
pub fn node(
    data_dir: &Path,
    rooms: &[String],
    flags: &[&str],
    user_flags: &[String],
) -> anyhow::Result<ServerProcess> {
    let addr = chat_harness::free_addr()?;
    let mut command = ServerProcess::node_command(&sibling("chat-node")?, &addr, data_dir);
    command
        .args(["--room", &rooms.join(",")])
        .args(["--messages-per-second", "0", "--max-connections-per-ip", "1000000"])
        .args(["--max-connections", "1000000"])
        .args(flags)
        .args(user_flags)
        .env("RUST_LOG", std::env::var("CHAT_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()));
    ServerProcess::start(command, addr, None)
}

/// Starts this program's bare QUIC relay (the floor) on a free port; it writes its CA to
/// `dir`.
pub fn relay(dir: &Path) -> anyhow::Result<ServerProcess> {
    let addr = chat_harness::free_addr()?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["relay", "--listen", &addr, "--dir"]).arg(dir);
    ServerProcess::start(command, addr, None)
}

/// A program built beside this one.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p chat-node`",
            path.display()
        );
    }
    Ok(path)
}

/// Options for a client of the node in `data_dir`, which made its CA there.
pub fn node_options(addr: &str, data_dir: &Path, name: String) -> ConnectOptions {
    ConnectOptions::new(addr, name, Trust::CaFile(data_dir.join("certs/ca.pem")))
}

/// Waits until a client can connect to the node. A cluster node's first start sets up the
/// streams and buckets, which three NATS servers on this machine take a while to agree on.
pub async fn wait_until_up(options: &ConnectOptions) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match Client::connect(options.clone()).await {
            Ok(client) => {
                client.close().await;
                return Ok(());
            }
            Err(e) if Instant::now() > deadline => bail!("the node did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
