//! The programs as a user runs them: `chat-node` in its own process, `chat` clients talking
//! through pipes, SIGTERM, and SIGKILL in the middle of sends.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chat_tests::{PATIENCE, program};
use serde_json::Value;

/// A `chat-node` process on a free loopback port.
struct NodeProcess {
    child: Child,
    addr: String,
    ca: String,
}

impl NodeProcess {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        // Ask the OS for a free UDP port, then hand it to the node.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        Self::start_on(data_dir, &format!("127.0.0.1:{port}"), extra)
    }

    fn start_on(data_dir: &Path, addr: &str, extra: &[&str]) -> Self {
        let addr = addr.to_owned();
        let mut child = Command::new(program("chat-node"))
            .args(["--listen", &addr, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("chat-node starts");
        // Wait for the "listening" line, which comes after the history and certificate.
        let stderr = child.stderr.take().expect("stderr");
        let lines = spawn_line_reader(stderr);
        loop {
            let line = lines.recv_timeout(PATIENCE).expect("the node says it is listening");
            if line.contains("listening") {
                break;
            }
        }
        // Keep draining the log so that the node never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        let ca = data_dir.join("certs/ca.pem").display().to_string();
        Self { child, addr, ca }
    }

    fn chat(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program("chat"));
        command.args(["--server", &self.addr, "--ca", &self.ca, "--name", name]).args(args);
        command
    }

    /// An interactive `chat --json` in room general, fed through a pipe, once it has joined.
    fn joined_chat(&self, name: &str) -> (Child, mpsc::Receiver<String>) {
        let mut child = self
            .chat(name, &["--room", "general", "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("chat starts");
        let events = json_events(&mut child);
        wait_for(&events, "the join", |e| e["event"] == "joined");
        (child, events)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_line_reader(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

/// JSON events from a `chat --json` process, until one matches.
fn wait_for(
    events: &mpsc::Receiver<String>,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let line = events.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("no {what} in time"));
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        if matches(&event) {
            return event;
        }
    }
}

fn json_events(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    spawn_line_reader(stdout)
}

#[test]
fn two_chat_processes_talk_through_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--room", "general", "--room", "random"]);
    let (mut ada, ada_events) = node.joined_chat("ada");
    let (mut bob, bob_events) = node.joined_chat("bob");

    let mut ada_in = ada.stdin.take().expect("stdin");
    writeln!(ada_in, "hello bob").expect("typed");
    let ack = wait_for(&ada_events, "ada's ack", |e| e["event"] == "ack");
    assert_eq!(ack["seq"], 1);
    let got = wait_for(&bob_events, "bob's message", |e| e["event"] == "message");
    assert_eq!(
        (got["sender"].as_str(), got["body"].as_str(), got["seq"].as_u64()),
        (Some("ada"), Some("hello bob"), Some(1))
    );

    let mut bob_in = bob.stdin.take().expect("stdin");
    writeln!(bob_in, "/join random").expect("typed");
    wait_for(&bob_events, "bob's second join", |e| e["event"] == "joined" && e["room"] == "random");
    writeln!(bob_in, "in random").expect("typed");
    writeln!(bob_in, "/switch general").expect("typed");
    writeln!(bob_in, "hi ada").expect("typed");
    writeln!(bob_in, "/who").expect("typed");
    let who = wait_for(&bob_events, "who", |e| e["event"] == "who");
    assert_eq!(who["names"], serde_json::json!(["ada", "bob"]));
    let got =
        wait_for(&ada_events, "ada's message", |e| e["event"] == "message" && e["sender"] == "bob");
    assert_eq!(
        (got["room"].as_str(), got["body"].as_str(), got["seq"].as_u64()),
        (Some("general"), Some("hi ada"), Some(2))
    );

    // A third process with a taken name fails with its exit code and a clear message.
    let taken =
        node.chat("ADA", &["--room", "general"]).stdin(Stdio::null()).output().expect("runs");
    assert_eq!(taken.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&taken.stdout).contains("already online"));
    let unknown = node.chat("cy", &["--room", "nowhere", "history"]).output().expect("runs");
    assert_eq!(unknown.status.code(), Some(6));

    // End of input: each client waits for its acks and exits 0.
    drop(ada_in);
    drop(bob_in);
    assert!(ada.wait().expect("exits").success());
    assert!(bob.wait().expect("exits").success());

    // One-shot commands see the same history.
    let history =
        node.chat("cy", &["--room", "general", "--json", "history"]).output().expect("runs");
    assert!(history.status.success());
    let bodies: Vec<String> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "history")
        .map(|e| e["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bodies, ["hello bob", "hi ada"]);
    let sent = node
        .chat("cy", &["--room", "random", "send", "from", "a", "script"])
        .output()
        .expect("runs");
    assert!(sent.status.success());
    assert!(String::from_utf8_lossy(&sent.stdout).contains("sent to random as #2"));
}

#[test]
fn sigterm_tells_clients_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(dir.path(), &[]);
    let (mut ada, events) = node.joined_chat("ada");
    node.signal("TERM");
    let status = wait_child(&mut node.child);
    assert_eq!(status.code(), Some(0), "the node exits 0 on SIGTERM");
    let gone = wait_for(&events, "the going-away notice", |e| e["event"] == "error");
    assert!(gone["message"].as_str().unwrap_or_default().contains("shutting down"), "{gone}");
    let _ = ada.kill();
}

#[test]
fn the_chat_program_reconnects_and_misses_nothing_after_the_node_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(dir.path(), &[]);
    let addr = node.addr.clone();
    let (mut ada, events) = node.joined_chat("ada");
    let sent = node.chat("bob", &["--room", "general", "send", "before"]).output().expect("runs");
    assert!(sent.status.success());
    wait_for(&events, "the first message", |e| e["event"] == "message" && e["body"] == "before");

    node.signal("KILL");
    wait_child(&mut node.child);
    let node = NodeProcess::start_on(dir.path(), &addr, &[]);
    // Sent while ada is still reconnecting: she must get it from the history after seq 1.
    let sent =
        node.chat("bob", &["--room", "general", "send", "while", "away"]).output().expect("runs");
    assert!(sent.status.success());
    wait_for(&events, "the reconnect", |e| e["event"] == "info" && e["message"] == "reconnected");
    let rejoined = wait_for(&events, "the rejoin", |e| e["event"] == "joined");
    assert_eq!(rejoined["last_seq"], 2);
    let missed = wait_for(&events, "the missed message", |e| {
        e["event"] == "history" || e["event"] == "message"
    });
    assert_eq!((missed["seq"].as_u64(), missed["body"].as_str()), (Some(2), Some("while away")));

    let mut ada_in = ada.stdin.take().expect("stdin");
    writeln!(ada_in, "back again").expect("typed");
    let ack = wait_for(&events, "the ack", |e| e["event"] == "ack");
    assert_eq!(ack["seq"], 3);
    drop(ada_in);
    assert!(ada.wait().expect("exits").success());
}

#[test]
fn sigkill_during_sends_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..3 {
        let mut node = NodeProcess::start(dir.path(), &[]);
        let options = chat_client::ConnectOptions::new(
            node.addr.clone(),
            format!("writer{round}"),
            chat_client::Trust::CaFile(node.ca.clone().into()),
        );
        // Many sends in flight; the node is killed while they are being acknowledged.
        let (tx, rx) = std::sync::mpsc::channel();
        let sender_task = runtime.spawn(async move {
            let client = chat_client::Client::connect(options).await.expect("connects");
            let sender = client.join("general", Some(u64::MAX)).await.expect("joins").sender();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..5_000 {
                let body = format!("round {round} message {i}");
                let Ok(ack) = sender.send_unchecked(body.clone()).await else { break };
                let acks = tx.clone();
                tasks.spawn(async move {
                    if let Ok(seq) = ack.await {
                        let _ = acks.send((seq, body));
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
        let before = acked.len();
        while acked.len() < before + 200 + round * 97 {
            acked.push(rx.recv_timeout(PATIENCE).expect("acks arrive"));
        }
        node.signal("KILL");
        wait_child(&mut node.child);
        // Acks that were on their way when the node died still count.
        std::thread::sleep(Duration::from_millis(100));
        acked.extend(rx.try_iter());
        sender_task.abort();
    }

    // Every acknowledged message is in the history, once, under the seq its ack named.
    let node = NodeProcess::start(dir.path(), &[]);
    let output =
        node.chat("auditor", &["--room", "general", "--json", "history"]).output().expect("runs");
    assert!(output.status.success());
    let stored: std::collections::BTreeMap<u64, String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "history")
        .map(|e| {
            (e["seq"].as_u64().unwrap_or(0), e["body"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert!(acked.len() >= 600, "only {} acks", acked.len());
    for (seq, body) in &acked {
        assert_eq!(stored.get(seq), Some(body), "acknowledged #{seq} is missing or different");
    }
    let seqs: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "numbers are gap-free and never reused"
    );
}

fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "the process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_vanished_client_frees_its_name_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--idle-timeout-secs", "5"]);
    let (mut ada, _events) = node.joined_chat("ada");
    // SIGKILL: the process sends no goodbye; the node only notices the silence.
    let _ = ada.kill();
    let _ = ada.wait();
    let taken = node.chat("ada", &["rooms"]).output().expect("runs");
    assert_eq!(taken.status.code(), Some(5), "the name is still held right after the kill");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let output = node.chat("ada", &["rooms"]).output().expect("runs");
        if output.status.success() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the name was never freed");
        std::thread::sleep(Duration::from_millis(250));
    }
}
