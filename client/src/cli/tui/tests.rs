//! The interface's views painted on ratatui's `TestBackend`, against snapshot files
//! (`snapshots/`), and its rules driven with notices and keys, with no terminal.

use chat_client::{ChatMessage, Gap, LeftReason, PageEnds};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::view::{Action, Entry, View};
use super::{History, draw};
use crate::cli::output::{Link, Notice};

/// 1 December 2026, 09:30 UTC.
const MORNING: u64 = 1_796_117_400_000;
const DAY_MS: u64 = 86_400_000;

fn view() -> View {
    let mut view =
        View::new("ada", "chat.example:7700", History::default(), jiff::tz::TimeZone::UTC);
    view.bell_enabled = true;
    view
}

fn joined(view: &mut View, room: &str, target: bool) {
    view.notice(Notice::Joined { room: room.into(), last_seq: 0, gap: None, target });
    let ends = PageEnds { more_before: false, more_after: false, first_seq: 1 };
    view.notice(Notice::HistoryEnd { room: room.into(), ends });
}

fn message(
    view: &mut View,
    room: &str,
    seq: u64,
    sender: &str,
    at: u64,
    body: &str,
    history: bool,
) {
    let message = ChatMessage {
        room: room.into(),
        seq,
        sender: sender.into(),
        timestamp_ms: at,
        body: body.into(),
    };
    view.notice(Notice::Message { message, history });
}

fn paint(view: &mut View, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
    terminal.draw(|frame| draw::draw(frame, view)).expect("painted");
    terminal
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::from(code)
}

fn alt(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::ALT)
}

fn screen(terminal: &Terminal<TestBackend>) -> String {
    terminal.backend().to_string()
}

#[test]
fn the_sidebar_shows_unread_counts_and_mentions() {
    let mut view = view();
    joined(&mut view, "general", true);
    joined(&mut view, "random", false);
    joined(&mut view, "@ada+bob", false);
    message(&mut view, "general", 1, "bob", MORNING, "morning all", false);
    message(&mut view, "random", 1, "cy", MORNING, "anyone here?", false);
    message(&mut view, "random", 2, "cy", MORNING + 1000, "ada: you?", false);
    message(&mut view, "random", 3, "ada", MORNING + 2000, "yes", false);
    message(&mut view, "@ada+bob", 1, "bob", MORNING + 3000, "psst", false);
    assert_eq!((view.rooms[1].unread, view.rooms[1].mentions), (2, 1), "own lines are not unread");
    assert_eq!(
        (view.rooms[2].unread, view.rooms[2].mentions),
        (1, 1),
        "a direct message names you"
    );
    assert!(view.bell, "a mention rings the bell");
    insta::assert_snapshot!(screen(&paint(&mut view, 80, 8)));

    // Showing the room reads it, and the room left gets its "new messages" line next time.
    assert_eq!(view.key(alt('2')), Action::Send(vec!["/switch random".into()]));
    assert_eq!(view.rooms[1].unread, 0);
    message(&mut view, "general", 2, "bob", MORNING + 4000, "while you were away", false);
    assert_eq!(view.rooms[0].unread, 1);
    view.key(alt('1'));
    let painted = screen(&paint(&mut view, 80, 8));
    let rows: Vec<&str> = painted.lines().collect();
    let mark = rows.iter().position(|r| r.contains("new messages")).expect("the line");
    assert!(
        rows[mark - 1].contains("morning all") && rows[mark + 1].contains("while you"),
        "{painted}"
    );
}

#[test]
fn a_room_shows_day_lines_history_dimmed_and_pending_and_failed_sends() {
    let mut view = view();
    joined(&mut view, "general", true);
    message(&mut view, "general", 1, "bob", MORNING - DAY_MS, "yesterday's news", true);
    message(&mut view, "general", 2, "cy", MORNING, "today", true);
    view.notice(Notice::Arrived { room: "general".into(), name: "dee".into() });
    message(&mut view, "general", 3, "dee", MORNING + 60_000, "hello ada!", false);
    view.notice(Notice::Pending { room: "general".into(), id: 1, text: "on its way".into() });
    view.notice(Notice::Pending { room: "general".into(), id: 2, text: "refused".into() });
    view.notice(Notice::NotSent {
        room: "general".into(),
        id: Some(2),
        text: "refused".into(),
        code: 9,
        message: "sending too fast".into(),
        maybe: false,
    });
    view.notice(Notice::Departed {
        room: "general".into(),
        name: "cy".into(),
        reason: LeftReason::TimedOut,
    });
    insta::assert_snapshot!(screen(&paint(&mut view, 80, 12)));

    // The node's copy of the pending line replaces it; the failed one stays until /retry.
    message(&mut view, "general", 4, "ada", MORNING + 61_000, "on its way", false);
    let room = &view.rooms[0];
    assert_eq!(room.pending.len(), 1);
    assert!(room.pending[0].failed.is_some());
    let painted = screen(&paint(&mut view, 80, 12));
    assert_eq!(painted.matches("on its way").count(), 1, "once, not also as pending: {painted}");
    // Sent again: pending once more, under the same number.
    view.notice(Notice::Pending { room: "general".into(), id: 2, text: "refused".into() });
    assert!(view.rooms[0].pending.iter().all(|p| p.failed.is_none()));
}

#[test]
fn the_status_line_says_reconnecting_with_the_attempt_and_what_is_queued() {
    let mut view = view();
    joined(&mut view, "general", true);
    view.notice(Notice::Topic { room: "general".into(), topic: "all things chat".into() });
    message(&mut view, "general", 1, "bob", MORNING, "before the cut", false);
    view.notice(Notice::Status {
        room: Some("general".into()),
        waiting: 3,
        link: Link::Reconnecting { attempt: 4 },
    });
    insta::assert_snapshot!(screen(&paint(&mut view, 100, 5)));
}

#[test]
fn a_narrow_terminal_drops_the_sidebar_and_counts_other_rooms_in_the_status() {
    let mut view = view();
    joined(&mut view, "general", true);
    joined(&mut view, "random", false);
    message(&mut view, "random", 1, "cy", MORNING, "ping ada", false);
    message(
        &mut view,
        "general",
        1,
        "bob",
        MORNING,
        "a long line that has to wrap on a terminal this narrow",
        false,
    );
    view.key(KeyEvent::from(KeyCode::Char('x')));
    insta::assert_snapshot!(screen(&paint(&mut view, 30, 8)));
}

#[test]
fn wide_characters_and_right_to_left_text_keep_the_layout() {
    let mut view = view();
    joined(&mut view, "general", true);
    joined(&mut view, "日本語の部屋", false);
    message(
        &mut view,
        "general",
        1,
        "bob",
        MORNING,
        "漢字かな交じり文と絵文字 🎉🎉🎉 が折り返される長い行です",
        false,
    );
    message(&mut view, "general", 2, "cy", MORNING, "שלום עולם, مرحبا بالعالم", false);
    for c in "入力も 🎉".chars() {
        view.key(KeyEvent::from(KeyCode::Char(c)));
    }
    let terminal = paint(&mut view, 64, 7);
    insta::assert_snapshot!(screen(&terminal));
    // Every row is as wide as the screen: no wide character spills over an edge.
    for row in screen(&terminal).lines() {
        let inner = row.split('"').nth(1).unwrap_or_default();
        assert!(unicode_width::UnicodeWidthStr::width(inner) <= 64, "{row}");
    }
}

#[test]
fn paging_back_asks_for_the_page_before_once_at_the_top() {
    let mut view = view();
    view.notice(Notice::Joined { room: "general".into(), last_seq: 100, gap: None, target: true });
    for seq in 51..=100 {
        message(&mut view, "general", seq, "bob", MORNING + seq, &format!("message {seq}"), true);
    }
    let ends = PageEnds { more_before: true, more_after: false, first_seq: 1 };
    view.notice(Notice::HistoryEnd { room: "general".into(), ends });
    paint(&mut view, 80, 20);
    let mut asked = 0;
    for _ in 0..10 {
        if view.key(key(KeyCode::PageUp)) == Action::Send(vec!["/history".into()]) {
            asked += 1;
        }
        paint(&mut view, 80, 20);
    }
    assert_eq!(asked, 1, "one page asked for until it comes");
    let painted = screen(&paint(&mut view, 80, 20));
    assert!(painted.contains("message 51") && painted.contains("loading earlier"), "{painted}");
    // The page comes: older messages go above, in order.
    for seq in 1..=50 {
        message(&mut view, "general", seq, "bob", MORNING + seq, &format!("message {seq}"), true);
    }
    let ends = PageEnds { more_before: false, more_after: true, first_seq: 1 };
    view.notice(Notice::HistoryEnd { room: "general".into(), ends });
    for _ in 0..10 {
        assert_eq!(view.key(key(KeyCode::PageUp)), Action::None, "nothing more to ask for");
        paint(&mut view, 80, 20);
    }
    let painted = screen(&paint(&mut view, 80, 20));
    assert!(
        painted.contains("the beginning of general") && painted.contains("message 1 "),
        "{painted}"
    );
    let seqs: Vec<u64> = view.rooms[0]
        .entries
        .values()
        .filter_map(|e| match e {
            Entry::Message { message, .. } => Some(message.seq),
            _ => None,
        })
        .collect();
    assert!(seqs.iter().copied().eq(1..=100));
    view.key(key(KeyCode::Esc));
    assert!(screen(&paint(&mut view, 80, 20)).contains("message 100"), "Esc goes back down");
}

#[test]
fn tab_completes_names_commands_and_rooms() {
    let mut view = view();
    joined(&mut view, "general", true);
    joined(&mut view, "random", false);
    message(&mut view, "general", 1, "bobby", MORNING, "hi", false);
    message(&mut view, "general", 2, "bea", MORNING, "hi", false);
    let typed = |view: &mut View, text: &str| {
        for c in text.chars() {
            view.key(KeyEvent::from(KeyCode::Char(c)));
        }
    };
    typed(&mut view, "b");
    view.key(key(KeyCode::Tab));
    assert_eq!(view.input.text(), "bea: ");
    view.key(key(KeyCode::Tab));
    assert_eq!(view.input.text(), "bobby: ", "Tab again: the next name");
    view.input.take();
    typed(&mut view, "/sw");
    view.key(key(KeyCode::Tab));
    typed(&mut view, "ra");
    view.key(key(KeyCode::Tab));
    assert_eq!(view.input.text(), "/switch random ");
}

#[test]
fn keys_send_lines_in_order_and_line_breaks_stay_in_one_message() {
    let mut view = view();
    joined(&mut view, "general", true);
    view.key(KeyEvent::from(KeyCode::Char('a')));
    view.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT));
    view.key(KeyEvent::from(KeyCode::Char('b')));
    assert_eq!(view.key(key(KeyCode::Enter)), Action::Send(vec!["a\nb".into()]));
    assert_eq!(view.paste("one\ntwo\r\nthr"), Action::Send(vec!["one".into(), "two".into()]));
    assert_eq!(view.input.text(), "thr");
    view.key(key(KeyCode::Enter));
    view.key(key(KeyCode::Up));
    assert_eq!(view.input.text(), "thr", "Up brings back the last line");
    view.input.take();
    for c in "/help".chars() {
        view.key(KeyEvent::from(KeyCode::Char(c)));
    }
    assert_eq!(view.key(key(KeyCode::Enter)), Action::None, "/help is shown here");
    assert!(view.help);
    insta::assert_snapshot!(screen(&paint(&mut view, 100, 30)));
    view.key(key(KeyCode::Esc));
    let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
    assert_eq!(view.key(ctrl_c), Action::Send(vec!["/quit".into()]));
}

#[test]
fn a_join_the_session_makes_shows_that_room_but_a_switch_asked_for_does_not_move_back() {
    let mut view = view();
    joined(&mut view, "general", true);
    joined(&mut view, "random", false);
    joined(&mut view, "help", false);
    // Alt+2 then Alt+3 quickly: the session's answer to the first must not pull the view back.
    view.key(alt('2'));
    view.key(alt('3'));
    view.notice(Notice::Typing { room: "random".into() });
    view.notice(Notice::Typing { room: "help".into() });
    assert_eq!(view.shown_room().name, "help");
    // A /join typed: the session moves the target, and the view follows.
    joined(&mut view, "new", true);
    assert_eq!(view.shown_room().name, "new");
    view.notice(Notice::Left { room: "new".into() });
    assert!(view.rooms.iter().all(|r| r.name != "new"));
    view.notice(Notice::Joined {
        room: "general".into(),
        last_seq: 9,
        gap: Some(Gap { first: 1, last: 4 }),
        target: false,
    });
    let painted = screen(&paint(&mut view, 80, 10));
    assert!(!painted.contains("#1..#4"), "the gap is said in its own room");
    view.key(alt('1'));
    assert!(screen(&paint(&mut view, 80, 10)).contains("#1..#4"));
}
