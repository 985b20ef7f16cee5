//! The programs as a user runs them: `chat-node` in its own process, `chat` clients talking
//! through pipes, SIGTERM, and SIGKILL in the middle of sends.

use std::io::Write;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use chat_tests::{NodeProcess, PATIENCE, joined_chat, wait_child, wait_for};
use serde_json::Value;

#[test]
fn two_chat_processes_talk_through_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--room", "general", "--room", "random"]);
    let (mut ada, ada_events) = joined_chat(&node, "ada");
    let (mut bob, bob_events) = joined_chat(&node, "bob");

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
    // A room made at runtime, joined at once.
    writeln!(bob_in, "/create lounge").expect("typed");
    let made = wait_for(&bob_events, "the room made", |e| e["event"] == "created");
    assert_eq!((made["room"].as_str(), made["existed"].as_bool()), (Some("lounge"), Some(false)));
    wait_for(&bob_events, "the join of it", |e| e["event"] == "joined" && e["room"] == "lounge");
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

    // A direct message: pushed to bob, who has not opened the conversation, and answered.
    writeln!(ada_in, "/msg bob psst, just you").expect("typed");
    let got = wait_for(&bob_events, "the direct message", |e| {
        e["event"] == "message" && e["room"] == "@ada+bob"
    });
    assert_eq!(
        (got["sender"].as_str(), got["body"].as_str()),
        (Some("ada"), Some("psst, just you"))
    );
    writeln!(bob_in, "/msg ada got it").expect("typed");
    let got = wait_for(&ada_events, "the answer", |e| {
        e["event"] == "message" && e["room"] == "@ada+bob" && e["sender"] == "bob"
    });
    assert_eq!(got["body"].as_str(), Some("got it"));

    // A third process with a taken name (someone else: not ada's session token) fails with
    // its exit code and a clear message.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let taken = node
        .chat("ADA", &["--room", "general"])
        .env("CHAT_CLIENT_DATA_DIR", elsewhere.path())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(taken.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&taken.stdout).contains("already online"));
    let unknown = node.chat("cy", &["--room", "nowhere", "history"]).output().expect("runs");
    assert_eq!(unknown.status.code(), Some(6));
    let made = node.chat("cy", &["create", "nowhere"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&made.stdout).contains("created nowhere"));

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
fn the_node_logs_plainly_and_says_what_stops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    // Logs into a pipe: no colour escapes.
    assert!(node.start_log.iter().all(|l| !l.contains('\x1b')), "{:#?}", node.start_log);
    // The fingerprint that --fingerprint takes is logged, labelled for it, and works.
    let pin = node
        .start_log
        .iter()
        .find_map(|l| l.split("--fingerprint ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint for --fingerprint in {:#?}", node.start_log));
    let pinned = std::process::Command::new(chat_tests::program("chat"))
        .args(["--server", &node.addr, "--fingerprint", pin, "--name", "pinned", "--room"])
        .args(["general", "send", "pinned hello"])
        .output()
        .expect("runs");
    assert!(pinned.status.success(), "{}", String::from_utf8_lossy(&pinned.stderr));

    // A second node on the same data directory: told why, in one line, no backtrace.
    let second = std::process::Command::new(chat_tests::program("chat-node"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("runs");
    assert_eq!(second.status.code(), Some(1));
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("a node is already running on this data directory"), "{said}");
    assert!(!said.contains("backtrace") && !said.contains('\x1b'), "{said}");

    // A limit over what the protocol carries is refused, not quietly lowered.
    let other = tempfile::tempdir().expect("tempdir");
    let too_long = std::process::Command::new(chat_tests::program("chat-node"))
        .args(["--listen", "127.0.0.1:0", "--max-message-len", "2000000", "--data-dir"])
        .arg(other.path())
        .output()
        .expect("runs");
    assert_eq!(too_long.status.code(), Some(1));
    let said = String::from_utf8_lossy(&too_long.stderr);
    assert!(said.contains("max_message_len is 2000000 bytes, over the"), "{said}");
}

#[test]
fn sigterm_tells_clients_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(dir.path(), &[]);
    let (mut ada, events) = joined_chat(&node, "ada");
    node.signal("TERM");
    let status = wait_child(&mut node.child);
    assert_eq!(status.code(), Some(0), "the node exits 0 on SIGTERM");
    // Said once, with what the client does about it (not "reconnect later").
    let gone = wait_for(&events, "the going-away notice", |e| e["event"] == "info");
    let said = gone["message"].as_str().unwrap_or_default();
    assert!(said.contains("shutting down") && said.contains("reconnecting by itself"), "{gone}");
    let _ = ada.kill();
}

#[test]
fn the_chat_program_reconnects_and_misses_nothing_after_the_node_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(dir.path(), &[]);
    let addr = node.addr.clone();
    let (mut ada, events) = joined_chat(&node, "ada");
    let sent = node.chat("bob", &["--room", "general", "send", "before"]).output().expect("runs");
    assert!(sent.status.success());
    wait_for(&events, "the first message", |e| e["event"] == "message" && e["body"] == "before");

    node.signal("KILL");
    wait_child(&mut node.child);
    // Typed before ada's client knows: cut off by the lost connection, it must be sent
    // again after the reconnect (it is not in the history), once.
    let mut ada_in = ada.stdin.take().expect("stdin");
    writeln!(ada_in, "typed while away").expect("typed");
    let node = NodeProcess::start_on(dir.path(), &addr, &[]);
    // Sent while ada is still reconnecting: she must get it from the history after seq 1.
    let sent =
        node.chat("bob", &["--room", "general", "send", "while", "away"]).output().expect("runs");
    assert!(sent.status.success());
    let lost = wait_for(&events, "the lost connection", |e| e["event"] == "info");
    let said = lost["message"].as_str().unwrap_or_default();
    assert!(said.contains("reconnecting by itself"), "{lost}");
    // Failed attempts are not reported one by one: the next word is the reconnect.
    let next = wait_for(&events, "the reconnect", |e| e["event"] == "info");
    assert_eq!(next["message"], format!("reconnected to {addr}").as_str());
    // Bob's message and ada's cut-off line, in whichever order the node took them (ada may
    // be back before bob sends): each once, nothing missed.
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 2 {
        let message = wait_for(&events, "the missed message and the line typed while away", |e| {
            e["event"] == "history" || e["event"] == "message"
        });
        got.insert(message["seq"].as_u64().unwrap_or_default(), message["body"].clone());
    }
    let bodies: std::collections::BTreeSet<_> = got.values().filter_map(|b| b.as_str()).collect();
    assert_eq!(bodies, ["typed while away", "while away"].into(), "{got:?}");
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [2, 3]);

    writeln!(ada_in, "back again").expect("typed");
    let ack = wait_for(&events, "the ack", |e| e["event"] == "ack" && e["seq"] != 3);
    assert_eq!(ack["seq"], 4);
    drop(ada_in);
    assert!(ada.wait().expect("exits").success());
}

/// Kills the node with SIGKILL 20 times at random moments while two clients send with many
/// messages in flight. After every restart, each acknowledged message is in the history
/// exactly once, under the seq its ack named, in order, and no seq is used twice.
#[test]
fn a_crash_loop_loses_no_acknowledged_message() {
    const ROUNDS: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut random = Random::from_clock();
    println!("crash loop seed {}", random.0);
    let mut acked = std::collections::BTreeMap::<u64, String>::new();
    for round in 0..=ROUNDS {
        // No rate limit, and a cap that trims nothing, so that every message can be checked.
        let mut node = NodeProcess::start(
            dir.path(),
            &["--messages-per-second", "0", "--history-cap", "1000000"],
        );
        let stored = runtime.block_on(read_history(&node, &format!("auditor{round}")));
        check_history(&stored, &acked, round);
        if round == ROUNDS {
            break;
        }
        let (tx, rx) = mpsc::channel();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                runtime.spawn(send_until_killed(node.options(&format!("w{w}r{round}")), tx.clone()))
            })
            .collect();
        // A random moment: sometimes before the first ack, mostly amid them.
        std::thread::sleep(Duration::from_millis(random.below(400)));
        node.signal("KILL");
        wait_child(&mut node.child);
        // Acks that were on their way when the node died still count.
        std::thread::sleep(Duration::from_millis(100));
        for writer in writers {
            writer.abort();
        }
        for (seq, body) in rx.try_iter() {
            assert!(acked.insert(seq, body).is_none(), "seq {seq} was acknowledged twice");
        }
    }
    println!("{} messages acknowledged across {ROUNDS} kills", acked.len());
    assert!(acked.len() >= ROUNDS * 50, "only {} messages were acknowledged", acked.len());
}

/// Sends as fast as acks allow (up to 256 in flight), reporting each acknowledged message,
/// until the task is aborted.
async fn send_until_killed(
    options: chat_client::ConnectOptions,
    acks: mpsc::Sender<(u64, String)>,
) {
    let Ok(client) = chat_client::Client::connect(options).await else { return };
    let Ok(room) = client.join("general", Some(u64::MAX)).await else { return };
    let sender = room.sender();
    drop(room);
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let name = client.name().to_owned();
    for i in 0.. {
        let Ok(permit) = std::sync::Arc::clone(&window).acquire_owned().await else { return };
        let body = format!("{name} {i}");
        let Ok(ack) = sender.send_unchecked(body.clone()).await else { return };
        let acks = acks.clone();
        tokio::spawn(async move {
            if let Ok(seq) = ack.await {
                let _ = acks.send((seq, body));
            }
            drop(permit);
        });
    }
}

/// The whole history of room general, as (seq, body).
async fn read_history(node: &NodeProcess, name: &str) -> Vec<(u64, String)> {
    let client = chat_client::Client::connect(node.options(name)).await.expect("connects");
    let mut room = client.join("general", Some(0)).await.expect("joins");
    let mut stored = Vec::new();
    let mut last = 0;
    while last < room.history_until() {
        let (message, history) = chat_tests::next_message(&mut room).await;
        assert!(history, "only history before anyone sends");
        last = message.seq;
        stored.push((message.seq, message.body));
    }
    client.close().await;
    stored
}

fn check_history(
    stored: &[(u64, String)],
    acked: &std::collections::BTreeMap<u64, String>,
    round: usize,
) {
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "after restart {round}: numbers are in order, gap-free and never reused"
    );
    let by_seq: std::collections::HashMap<_, _> = stored.iter().cloned().collect();
    for (seq, body) in acked {
        assert_eq!(
            by_seq.get(seq),
            Some(body),
            "after restart {round}: acknowledged #{seq} is missing or different"
        );
    }
    let mut bodies: Vec<&String> = stored.iter().map(|(_, body)| body).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), stored.len(), "after restart {round}: a message is stored twice");
}

/// A small xorshift generator, seeded from the clock and printed, for random moments.
struct Random(u64);

impl Random {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_chat_killed_and_started_again_takes_its_name_back_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let (mut ada, _events) = joined_chat(&node, "ada");
    // SIGKILL: no goodbye; the node holds the name until the idle timeout (30 s).
    let _ = ada.kill();
    let _ = ada.wait();
    let started = std::time::Instant::now();
    let (mut again, events) = joined_chat(&node, "ada");
    assert!(started.elapsed() < Duration::from_secs(10), "it did not wait for the timeout");
    let mut typed = again.stdin.take().expect("stdin");
    writeln!(typed, "back").expect("typed");
    let ack = wait_for(&events, "the ack", |e| e["event"] == "ack");
    assert_eq!(ack["room"], "general");
    drop(typed);
    assert!(wait_child(&mut again).success());
    // The token is the user's alone, in a file of its own.
    let sessions = dir.path().join("clients/sessions");
    let file = std::fs::read_dir(&sessions).expect("a sessions dir").next().expect("a file");
    let file = file.expect("entry").path();
    assert!(file.to_string_lossy().ends_with(",ada"), "{}", file.display());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
}

#[test]
fn a_vanished_client_frees_its_name_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--idle-timeout-secs", "5"]);
    let (_bob, bob_events) = joined_chat(&node, "bob");
    let (mut ada, _events) = joined_chat(&node, "ada");
    wait_for(&bob_events, "ada's arrival", |e| e["event"] == "arrived" && e["name"] == "ada");
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
    let gone = wait_for(&bob_events, "ada's departure", |e| e["event"] == "departed");
    assert_eq!((gone["name"].as_str(), gone["reason"].as_str()), (Some("ada"), Some("timed_out")));
}

/// Lines the node refused are kept: `/retry` sends them again, in the order typed, and says
/// so; each that fails again is told again with its text.
#[test]
fn retry_sends_the_lines_that_failed_again_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--max-message-len", "16"]);
    let mut chat = node
        .chat("ada", &["--room", "general", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("chat starts");
    let mut typed = chat.stdin.take().expect("stdin");
    let events = chat_tests::spawn_line_reader(chat.stdout.take().expect("stdout"));
    writeln!(typed, "first line, far too long\nshort\nsecond line, too long as well")
        .expect("typed");
    let mut failed = Vec::new();
    while failed.len() < 2 {
        let event = wait_for(&events, "the refusals", |e| e["event"] == "not_sent");
        failed.push(event["body"].as_str().unwrap_or_default().to_owned());
    }
    writeln!(typed, "/retry").expect("typed");
    wait_for(&events, "the retry", |e| e["message"] == "sending 2 line(s) again");
    let mut again = Vec::new();
    while again.len() < 2 {
        let event = wait_for(&events, "the refusals again", |e| e["event"] == "not_sent");
        again.push(event["body"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(failed, ["first line, far too long", "second line, too long as well"]);
    assert_eq!(again, failed, "sent again in the order typed");
    drop(typed);
    wait_child(&mut chat);
}
