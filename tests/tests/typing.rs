//! What a person sends, the way a person sends it: a file piped into `chat`, lines typed in
//! one burst on a real terminal (tmux), a window resized while messages arrive. Each checks
//! that everything arrives once, in the order it was written, at another member and in the
//! history.

use std::io::Write;
use std::process::Stdio;

use chat_tests::{
    NodeProcess, Tmux, events_of, joined_chat, spawn_line_reader, type_a_burst, wait_child,
    wait_for,
};

/// `count` numbered lines, as a file to pipe in, and the lines themselves.
fn numbered_lines(count: usize, prefix: &str) -> (tempfile::NamedTempFile, Vec<String>) {
    let lines: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i:05}")).collect();
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for line in &lines {
        writeln!(file, "{line}").expect("written");
    }
    file.flush().expect("flushed");
    (file, lines)
}

/// The bodies of the room's history from `sender`, in the history's order.
fn history_from(node: &NodeProcess, room: &str, sender: &str) -> Vec<String> {
    let history = node
        .chat("reader", &["--room", room, "--json", "history", "--all"])
        .output()
        .expect("runs");
    assert!(history.status.success(), "{}", String::from_utf8_lossy(&history.stderr));
    let events = events_of(&history.stdout, "history");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "the history is in sequence order");
    events
        .iter()
        .filter(|e| e["sender"] == sender)
        .map(|e| e["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Pipes `count` lines into an interactive `chat` and checks that a member who was in the
/// room and the history both have each of them once, in the file's order.
fn piped_lines_arrive_in_order(node_args: &[&str], count: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), node_args);
    let (mut watcher, events) = joined_chat(&node, "watcher");
    let (file, lines) = numbered_lines(count, "line");

    let piped = node
        .chat("piper", &["--room", "general"])
        .stdin(std::fs::File::open(file.path()).expect("opens"))
        .stdout(Stdio::null())
        .status()
        .expect("runs");
    assert!(piped.success(), "the client exits 0 once every line is acknowledged: {piped}");

    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let got = wait_for(&events, "the piped lines", |e| {
            e["event"] == "message" && e["sender"] == "piper"
        });
        seen.push(got["body"].as_str().unwrap_or_default().to_owned());
    }
    assert!(seen == lines, "the member got the lines in the file's order");
    assert!(history_from(&node, "general", "piper") == lines, "the history has them in order");
    drop(watcher.stdin.take());
    assert!(wait_child(&mut watcher).success());
}

#[test]
fn a_thousand_piped_lines_arrive_once_in_order_at_the_default_rate_limit() {
    piped_lines_arrive_in_order(&[], 1000);
}

#[test]
fn ten_thousand_piped_lines_arrive_once_in_order_with_no_rate_limit() {
    piped_lines_arrive_in_order(&["--messages-per-second", "0"], 10_000);
}

/// The node is killed while a long pipe is being sent, with many lines in flight, and
/// restarted: the client reconnects by itself, finds which of the cut-off lines were stored,
/// sends the others again, and exits 0 with every line stored once, in the file's order.
#[test]
fn piped_lines_survive_the_node_being_killed_midway() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Paced, so that the pipe is still going when the node dies: 2,000 lines at 1,000 a
    // second.
    let rate = ["--messages-per-second", "1000", "--message-burst", "100"];
    let mut node = NodeProcess::start(dir.path(), &rate);
    let addr = node.addr.clone();
    let (file, lines) = numbered_lines(2000, "line");
    let mut piper = node
        .chat("piper", &["--room", "general", "--json"])
        .stdin(std::fs::File::open(file.path()).expect("opens"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    let events = spawn_line_reader(piper.stdout.take().expect("stdout"));
    for _ in 0..300 {
        wait_for(&events, "the first acks", |e| e["event"] == "ack");
    }
    node.signal("KILL");
    wait_child(&mut node.child);
    let node = NodeProcess::start_on(dir.path(), &addr, &rate);
    wait_for(&events, "the reconnect", |e| {
        e["event"] == "info" && e["message"] == format!("reconnected to {addr}").as_str()
    });
    let status = wait_child(&mut piper);
    let said: Vec<String> =
        events.try_iter().filter(|l| !l.contains(r#""event":"message""#)).collect();
    assert!(status.success(), "{status}: {said:#?}");
    let stored = history_from(&node, "general", "piper");
    assert_eq!(stored.len(), lines.len(), "every line once");
    assert!(stored == lines, "in the file's order");
}

#[test]
fn send_lines_sends_each_line_in_order_and_send_sends_all_of_stdin_as_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let (file, lines) = numbered_lines(300, "script");
    let sent = node
        .chat("script", &["--room", "general", "--json", "send", "--lines"])
        .stdin(std::fs::File::open(file.path()).expect("opens"))
        .output()
        .expect("runs");
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    assert_eq!(events_of(&sent.stdout, "ack").len(), 300, "an ack per line");
    assert!(history_from(&node, "general", "script") == lines);

    let mut one = node
        .chat("poet", &["--room", "general", "send"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    one.stdin.take().expect("stdin").write_all(b"roses\nviolets\n").expect("written");
    let one = one.wait_with_output().expect("exits");
    assert!(one.status.success());
    assert_eq!(history_from(&node, "general", "poet"), ["roses\nviolets"]);
}

#[test]
fn piped_input_waits_for_the_joins_history_page_before_exiting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--messages-per-second", "0"]);
    let (before, _) = numbered_lines(700, "old");
    let filled = node
        .chat("filler", &["--room", "general", "send", "--lines"])
        .stdin(std::fs::File::open(before.path()).expect("opens"))
        .output()
        .expect("runs");
    assert!(filled.status.success());

    let (file, lines) = numbered_lines(20, "new");
    let inputs = [Stdio::from(std::fs::File::open(file.path()).expect("opens")), Stdio::null()];
    for (input, history_len) in inputs.into_iter().zip([700, 720]) {
        let run = node
            .chat("late", &["--room", "general", "--json"])
            .stdin(input)
            .output()
            .expect("runs");
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let history: Vec<u64> =
            events_of(&run.stdout, "history").iter().filter_map(|e| e["seq"].as_u64()).collect();
        let newest = history_len - 49..=history_len;
        assert!(history.iter().copied().eq(newest), "the newest page before the exit");
        let ended = events_of(&run.stdout, "history_end");
        assert_eq!(ended.len(), 1, "and the line that ends it");
        assert_eq!(ended[0]["more_before"], true);
    }
    assert!(history_from(&node, "general", "late") == lines);
}

/// An interactive `chat` in line mode on a terminal of its own, once it shows its prompt.
fn chat_on_terminal(node: &NodeProcess, name: &str, width: u16) -> Tmux {
    let tmux = Tmux::start(&node.chat(name, &["--room", "general", "--plain"]), width, 30);
    tmux.wait_for_screen("the prompt", |s| s.contains("[general]>"));
    tmux
}

#[test]
fn fifty_lines_typed_in_one_burst_all_arrive_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--room", "general", "--room", "random"]);
    let (mut watcher, events) = joined_chat(&node, "watcher");
    let typist = chat_on_terminal(&node, "typist", 100);

    let lines = type_a_burst(&typist, &events, "typist", 50);
    assert!(history_from(&node, "general", "typist") == lines);
    // Each line is on the typist's screen once: the node's copy, not also the typed echo.
    let screen = typist.wait_for_screen("the last line", |s| s.contains("typed line 50"));
    assert_eq!(screen.matches("typed line 50").count(), 1, "{screen}");

    // The prompt names the room typed into, and /join says where lines go now.
    typist.send_keys(&["/join random", "Enter"]);
    typist.wait_for_screen("the new room in the prompt", |s| {
        s.contains("typing into random") && s.contains("[random]>")
    });
    typist.send_keys(&["/quit", "Enter"]);
    let deadline = std::time::Instant::now() + chat_tests::PATIENCE;
    while typist.running() {
        assert!(std::time::Instant::now() < deadline, "chat did not quit");
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    drop(watcher.stdin.take());
    assert!(wait_child(&mut watcher).success());
}

#[test]
fn a_resize_while_messages_arrive_loses_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let say = |text: &str| {
        let sent = node.chat("bob", &["--room", "general", "send", text]).output().expect("runs");
        assert!(sent.status.success());
    };
    say("before the resize");
    let ada = chat_on_terminal(&node, "ada", 80);
    ada.wait_for_screen("the history", |s| s.contains("before the resize"));
    let half = "a half-typed line that is wider than the narrow window ";
    ada.send_keys(&[half]);
    ada.wait_for_screen("the typed text", |s| s.contains("wider than the"));

    ada.resize(50, 30);
    say("arrived while narrow");
    ada.wait_for_screen("the message", |s| s.contains("arrived while narrow"));
    ada.resize(80, 30);
    say("arrived after");
    let screen = ada.wait_for_screen("the last message", |s| s.contains("arrived after"));
    for line in ["before the resize", "arrived while narrow", "arrived after"] {
        assert_eq!(screen.matches(line).count(), 1, "{line:?} once on the screen:\n{screen}");
    }
    assert_eq!(screen.matches("[general]").count(), 1, "one prompt, no stale piece:\n{screen}");
    assert!(screen.contains("wider than the narrow window"), "the typed text:\n{screen}");

    // The half-typed line is whole: finishing it sends all of it.
    ada.send_keys(&["done", "Enter"]);
    ada.wait_for_screen("the sent line", |s| s.contains("ada: a half-typed line"));
    let mine = history_from(&node, "general", "ada");
    assert_eq!(mine, [format!("{half}done")]);
}
