//! The full-screen `chat` on real terminals (tmux): two people chat, one changes rooms with
//! a key, pages back through the history, is named by the other and sees them leave; lines
//! typed in a burst arrive in order; the terminal is given back after `/quit`, Ctrl-C and a
//! node that went away. The screen is read back as a person sees it.

use std::io::Write;

use chat_tests::{NodeProcess, Tmux, events_of, joined_chat, type_a_burst, wait_child};

const WIDTH: u16 = 100;
const HEIGHT: u16 = 30;

/// The full-screen `chat` of `name` in the rooms given, once it shows the first one.
fn screen_chat(node: &NodeProcess, name: &str, rooms: &[&str]) -> Tmux {
    let mut args = Vec::new();
    for room in rooms {
        args.extend(["--room", room]);
    }
    let tmux = Tmux::start_reporting_exit(&node.chat(name, &args), WIDTH, HEIGHT);
    let first = format!("[{}]", rooms[0]);
    tmux.wait_for_screen("the input line", |s| s.contains(&first) && s.contains("connected"));
    tmux
}

/// Stores `count` numbered messages from `sender` in `room`.
fn fill(node: &NodeProcess, room: &str, sender: &str, count: usize) {
    let mut text = Vec::new();
    for i in 1..=count {
        writeln!(text, "old-{i:05}").expect("written");
    }
    let mut send = node
        .chat(sender, &["--room", room, "send", "--lines"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("runs");
    send.stdin.take().expect("stdin").write_all(&text).expect("piped");
    assert!(wait_child(&mut send).success());
}

/// The sidebar row of `room`.
fn sidebar_row<'a>(screen: &'a str, room: &str) -> &'a str {
    screen
        .lines()
        .find(|row| row.split('│').next().is_some_and(|side| side.contains(room)))
        .unwrap_or_else(|| panic!("no {room} in the sidebar:\n{screen}"))
}

/// What a terminal given back shows: the program's exit and a terminal in its usual mode
/// (`icanon` and `echo` on again, which raw mode turns off), and no piece of the interface.
fn assert_given_back(tmux: &Tmux, code: i32) {
    let screen = tmux.wait_for_screen("the exit", |s| s.contains("exited") && s.contains("speed"));
    assert!(screen.contains(&format!("exited {code}")), "{screen}");
    let modes: Vec<&str> = screen.split_whitespace().collect();
    assert!(modes.contains(&"icanon") && modes.contains(&"echo"), "cooked again:\n{screen}");
    assert!(!screen.contains('│'), "the alternate screen is gone:\n{screen}");
}

#[test]
fn two_people_chat_change_rooms_page_back_are_named_and_see_each_other_leave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &["--room", "general", "--room", "random", "--messages-per-second", "0"],
    );
    fill(&node, "general", "archivist", 500);
    let ada = screen_chat(&node, "ada", &["general", "random"]);
    ada.wait_for_screen("the newest history", |s| s.contains("old-00500"));

    // Paging back, page by page from the node, to the room's first message.
    let mut screen = ada.screen();
    for _ in 0..400 {
        if screen.contains("the beginning of general") {
            break;
        }
        ada.send_keys(&["PageUp"]);
        let before = screen.clone();
        screen =
            ada.wait_for_screen("the page scrolled", |s| s != before || s.contains("beginning"));
    }
    assert!(
        screen.contains("old-00001") && screen.contains("the beginning of general"),
        "{screen}"
    );
    ada.send_keys(&["Escape"]);
    ada.wait_for_screen("the newest again", |s| s.contains("old-00500"));

    let bob = screen_chat(&node, "bob", &["general", "random"]);
    ada.wait_for_screen("bob's arrival", |s| s.contains("→ bob joined"));
    bob.send_keys(&["hello ada, welcome back", "Enter"]);
    ada.wait_for_screen("bob's message", |s| s.contains("bob: hello ada, welcome back"));
    // Tab completes bob's name at the start of an answer.
    ada.send_keys(&["b", "Tab", "hi!", "Enter"]);
    bob.wait_for_screen("ada's answer", |s| s.contains("ada: bob: hi!"));

    // Alt+2: random is shown and typed into; general counts what ada misses there, with a
    // mark for the message that names her.
    ada.send_keys(&["M-2"]);
    ada.wait_for_screen("random shown", |s| s.contains("[random]"));
    bob.send_keys(&["one for nobody", "Enter", "ada, are you there?", "Enter"]);
    let screen =
        ada.wait_for_screen("the unread counts", |s| sidebar_row(s, "general").contains("2@"));
    assert!(!screen.contains("are you there"), "general is not shown:\n{screen}");
    ada.send_keys(&["in random now", "Enter"]);
    bob.send_keys(&["M-2"]);
    bob.wait_for_screen("ada's line in random", |s| s.contains("ada: in random now"));

    ada.send_keys(&["M-1"]);
    let screen = ada.wait_for_screen("general again", |s| s.contains("ada, are you there?"));
    assert!(screen.contains("new messages"), "where she left off:\n{screen}");
    assert!(!sidebar_row(&screen, "general").contains('@'), "read now:\n{screen}");

    bob.send_keys(&["/quit", "Enter"]);
    assert_given_back(&bob, 0);
    ada.wait_for_screen("bob's departure", |s| s.contains("← bob left"));
    ada.send_keys(&["/quit", "Enter"]);
    assert_given_back(&ada, 0);

    // What was typed is in the history, each line once.
    let history =
        node.chat("reader", &["--room", "random", "--json", "history"]).output().expect("runs");
    let bodies: Vec<String> = events_of(&history.stdout, "history")
        .iter()
        .filter(|e| e["sender"] == "ada")
        .map(|e| e["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(bodies, ["in random now"]);
}

#[test]
fn fifty_lines_typed_in_one_burst_on_the_full_screen_arrive_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let (mut watcher, events) = joined_chat(&node, "watcher");
    let typist = screen_chat(&node, "typist", &["general"]);
    type_a_burst(&typist, &events, "typist", 50);
    // Stored, each is on the screen once: pending lines give way to the node's copies.
    let screen = typist.wait_for_screen("the last line stored", |s| {
        s.contains("typist: typed line 50") && !s.contains('…')
    });
    assert_eq!(screen.matches("typed line 50").count(), 1, "{screen}");
    // Narrower than the sidebar needs, then wide again: painted anew each time.
    typist.resize(40, HEIGHT);
    let narrow = typist.wait_for_screen("the narrow screen", |s| !s.contains("1 general"));
    assert_eq!(narrow.matches("typed line 50").count(), 1, "{narrow}");
    assert!(narrow.lines().all(|row| row.chars().count() <= 40), "{narrow}");
    typist.resize(WIDTH, HEIGHT);
    let wide = typist.wait_for_screen("the sidebar again", |s| s.contains("1 general"));
    assert_eq!(wide.matches("typed line 50").count(), 1, "{wide}");
    typist.send_keys(&["C-c"]);
    assert_given_back(&typist, 0);
    drop(watcher.stdin.take());
    assert!(wait_child(&mut watcher).success());
}

#[test]
fn the_terminal_is_given_back_after_the_node_went_away_and_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(dir.path(), &[]);
    let ada = screen_chat(&node, "ada", &["general"]);
    node.signal("KILL");
    wait_child(&mut node.child);
    ada.wait_for_screen("the reconnect", |s| s.contains("reconnecting (attempt"));
    ada.send_keys(&["lost in the void", "Enter"]);
    ada.wait_for_screen("the queued line", |s| s.contains("1 queued"));
    // Ctrl-C waits for the queued line; a second one leaves at once, saying it was not sent.
    ada.send_keys(&["C-c"]);
    ada.send_keys(&["C-c"]);
    let screen = ada.wait_for_screen("the exit", |s| s.contains("exited"));
    assert!(screen.contains("lost in the void"), "the unsent line is told:\n{screen}");
    assert_given_back(&ada, 9);
}
