//! The server under test as its own process: the release `chat-node` (or this program's own
//! `relay` floor) started on a free loopback port, with its CPU time and memory read from
//! /proc, and killed when the run ends however it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_client::{Client, ConnectOptions, Trust};

/// Clock ticks per second in /proc/PID/stat: 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// A server process, killed on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: String,
}

impl ServerProcess {
    /// Starts the release `chat-node` on a free port with its history in `data_dir`, with the
    /// harness's `flags` and then the user's `user_flags` (which thus win) added.
    pub fn node(
        data_dir: &Path,
        rooms: &[String],
        flags: &[&str],
        user_flags: &[String],
    ) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let mut command = Command::new(sibling("chat-node")?);
        command
            .args(["--listen", &addr, "--room", &rooms.join(",")])
            .args(["--messages-per-second", "0", "--max-connections-per-ip", "1000000"])
            .args(["--max-connections", "1000000"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .args(user_flags)
            .env("RUST_LOG", "warn");
        Self::spawn(command, addr)
    }

    /// Starts this program's bare QUIC relay (the floor) on a free port; it writes its CA
    /// to `dir`.
    pub fn relay(dir: &Path) -> anyhow::Result<Self> {
        let addr = free_addr()?;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["relay", "--listen", &addr, "--dir"]).arg(dir);
        Self::spawn(command, addr)
    }

    fn spawn(mut command: Command, addr: String) -> anyhow::Result<Self> {
        let child = command.stdout(Stdio::null()).spawn().context("starting the server")?;
        Ok(Self { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU seconds the process has used.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    /// Resident memory now and at its peak, in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        memory_kib(self.pid())
    }
}

/// User plus system CPU seconds process `pid` has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    Ok((ticks(11) + ticks(12)) / CLOCK_TICKS)
}

/// Microseconds so far in which some task on the machine waited for the disk (Linux's
/// pressure stall information), or `None` where the kernel does not report it.
pub fn io_stall_us() -> Option<u64> {
    let pressure = std::fs::read_to_string("/proc/pressure/io").ok()?;
    let some = pressure.lines().find(|line| line.starts_with("some "))?;
    some.split_whitespace().find_map(|field| field.strip_prefix("total="))?.parse().ok()
}

/// Resident memory of process `pid` now and at its peak, in KiB.
pub fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("reading the server's memory (is it still running?)")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> anyhow::Result<String> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(format!("127.0.0.1:{port}"))
}

/// A program built beside this one.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
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

/// Waits until a client can connect to the node.
pub async fn wait_until_up(options: &ConnectOptions) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
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
