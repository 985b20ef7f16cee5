//! The programs under test as processes, for the tests and the benchmarks alike: a server
//! (`chat-node`, or the benchmarks' floor) started on a free loopback port from a command,
//! killed on drop however the run ends, with what it costs read from /proc.
//!
//! Architecture invariant: knows nothing of the chat; it runs programs and reads /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Clock ticks per second in /proc/PID/stat: 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// A server process, killed on drop.
pub struct ServerProcess {
    pub child: Child,
    /// The `host:port` it listens on.
    pub addr: String,
    /// What it logged before it said it was ready (see [`ServerProcess::start`]).
    pub start_log: Vec<String>,
}

impl ServerProcess {
    /// The command that starts the `chat-node` at `program` on `addr` with its data in
    /// `data_dir`; add flags to it, then [`start`](Self::start) it.
    pub fn node_command(program: &Path, addr: &str, data_dir: &Path) -> Command {
        let mut command = Command::new(program);
        command.args(["--listen", addr, "--data-dir"]).arg(data_dir);
        command
    }

    /// Starts `command`, a server that listens on `addr`. With `ready`, waits up to
    /// `patience` for a line of its log (stderr) that holds `ready`, keeps the lines up to it
    /// in `start_log`, and then passes the rest on to this process's stderr, each line
    /// tagged with the server's address; without, its stderr is this process's.
    ///
    /// # Errors
    /// The program cannot be started, or it did not say it was ready in time (the error
    /// holds its log).
    pub fn start(
        mut command: Command,
        addr: String,
        ready: Option<(&str, Duration)>,
    ) -> anyhow::Result<Self> {
        command.stdout(Stdio::null());
        if ready.is_some() {
            command.stderr(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", command.get_program().to_string_lossy()))?;
        let mut start_log = Vec::new();
        if let Some((ready, patience)) = ready {
            let lines = spawn_line_reader(child.stderr.take().context("its stderr")?);
            loop {
                match lines.recv_timeout(patience) {
                    Ok(line) if line.contains(ready) => {
                        start_log.push(line);
                        break;
                    }
                    Ok(line) => start_log.push(line),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!("the server did not start ({e}); its log:\n{}", start_log.join("\n"));
                    }
                }
            }
            // Keep draining the log so that the server never blocks on a full pipe.
            let name = addr.clone();
            std::thread::spawn(move || {
                while let Ok(line) = lines.recv() {
                    eprintln!("[{name}] {line}");
                }
            });
        }
        Ok(Self { child, addr, start_log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU seconds the process has used.
    ///
    /// # Errors
    /// Its /proc entry cannot be read (it has ended).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds(self.pid())
    }

    /// Resident memory now and at its peak, in KiB.
    ///
    /// # Errors
    /// Its /proc entry cannot be read (it has ended).
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        memory_kib(self.pid())
    }

    /// Sends it `signal` (a name for `kill -s`: `TERM`, `KILL`, ...).
    ///
    /// # Errors
    /// `kill` could not be run, or failed.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args(["-s", signal, &self.pid().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -s {signal} failed");
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with a port that was free a moment ago.
///
/// # Errors
/// No UDP socket could be bound.
pub fn free_addr() -> anyhow::Result<String> {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(format!("127.0.0.1:{port}"))
}

/// A loopback address whose port was free a moment ago in both UDP and TCP (a node's
/// `--web-listen` uses the number for both).
///
/// # Errors
/// No such port was found.
pub fn free_udp_and_tcp_addr() -> anyhow::Result<String> {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    anyhow::bail!("no port was free in both UDP and TCP")
}

/// The lines `out` writes, as they come, until it ends.
pub fn spawn_line_reader(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// User plus system CPU seconds process `pid` has used.
///
/// # Errors
/// Its /proc entry cannot be read or parsed.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    Ok((ticks(11) + ticks(12)) / CLOCK_TICKS)
}

/// Resident memory of process `pid` now and at its peak, in KiB.
///
/// # Errors
/// Its /proc entry cannot be read (it has ended).
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

/// Microseconds so far in which some task on the machine waited for the disk (Linux's
/// pressure stall information), or `None` where the kernel does not report it.
pub fn io_stall_us() -> Option<u64> {
    let pressure = std::fs::read_to_string("/proc/pressure/io").ok()?;
    let some = pressure.lines().find(|line| line.starts_with("some "))?;
    some.split_whitespace().find_map(|field| field.strip_prefix("total="))?.parse().ok()
}
