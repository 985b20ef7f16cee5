//! Pages of history: the newest, before, after and around a sequence number, bounded in
//! messages and bytes, with no overlap and no gap from one page to the next.

use chat_history::{Anchor, Config, Durability, History, HistoryPage, Message, PageLimit};

fn open(dir: &std::path::Path, cap: u64) -> History {
    History::open(Config {
        path: dir.to_path_buf(),
        cap,
        cap_by_prefix: Vec::new(),
        durability: Durability::Buffered,
    })
    .expect("history opens")
}

/// Appends `count` messages "m1", "m2", ... to `room` and waits until all are stored.
fn fill(history: &History, room: &str, count: u64) {
    history.create_room(room).expect("created");
    let (done, stored) = std::sync::mpsc::channel();
    for i in 1..=count {
        let done = done.clone();
        let message = Message { sender: "ada".into(), timestamp_ms: i, body: format!("m{i}") };
        history.append(room, message, Box::new(move |r| drop(done.send(r))));
    }
    for _ in 0..count {
        stored.recv().expect("completion").expect("stored");
    }
}

fn seqs(page: &HistoryPage) -> Vec<u64> {
    page.messages.iter().map(|s| s.seq).collect()
}

const PAGE: PageLimit = PageLimit { messages: 500, bytes: 1 << 20 };

#[test]
fn paging_back_from_the_newest_covers_the_room_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 10_000);
    fill(&history, "general", 10_000);

    let newest = history.page("general", Anchor::Latest, PageLimit { messages: 50, ..PAGE });
    let newest = newest.expect("reads");
    assert_eq!(seqs(&newest), (9_951..=10_000).collect::<Vec<_>>());
    assert_eq!(newest.messages[0].message.body, "m9951");
    assert_eq!((newest.more_before, newest.more_after), (true, false));
    assert_eq!((newest.first_seq, newest.last_seq), (1, 10_000));

    let mut seen = seqs(&newest);
    let mut page = newest;
    while page.more_before {
        let oldest = page.messages[0].seq;
        page = history.page("general", Anchor::Before(oldest), PAGE).expect("reads");
        assert!(page.more_after);
        assert!(page.messages.last().expect("a page").seq == oldest - 1, "no gap, no overlap");
        seen.splice(0..0, seqs(&page));
    }
    assert_eq!(seen, (1..=10_000).collect::<Vec<_>>());
    assert_eq!(page.messages[0].seq, 1, "down to the first retained one");
}

#[test]
fn paging_forward_and_around_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 10_000);
    fill(&history, "general", 10_000);

    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = history.page("general", Anchor::After(after), PAGE).expect("reads");
        seen.extend(seqs(&page));
        if !page.more_after {
            break;
        }
        after = page.messages.last().expect("a page").seq;
    }
    assert_eq!(seen, (1..=10_000).collect::<Vec<_>>());
    let past_the_end = history.page("general", Anchor::After(10_000), PAGE).expect("reads");
    assert!(past_the_end.messages.is_empty());
    assert_eq!((past_the_end.more_before, past_the_end.more_after), (true, false));

    let around = history.page("general", Anchor::Around(5_000), PageLimit { messages: 10, ..PAGE });
    let around = around.expect("reads");
    assert_eq!(seqs(&around), (4_995..=5_004).collect::<Vec<_>>());
    assert_eq!((around.more_before, around.more_after), (true, true));
    let at_the_start =
        history.page("general", Anchor::Around(2), PageLimit { messages: 10, ..PAGE });
    assert_eq!(seqs(&at_the_start.expect("reads")), (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_page_asked_for_before_the_retained_history_says_where_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 1_000);
    fill(&history, "general", 1_500);

    let trimmed = history.page("general", Anchor::Before(100), PAGE).expect("reads");
    assert!(trimmed.messages.is_empty());
    assert_eq!((trimmed.more_before, trimmed.more_after, trimmed.first_seq), (false, true, 501));
    let oldest = history.page("general", Anchor::Before(600), PAGE).expect("reads");
    assert_eq!(seqs(&oldest), (501..=599).collect::<Vec<_>>());
    assert!(!oldest.more_before);

    history.create_room("empty").expect("created");
    let empty = history.page("empty", Anchor::Latest, PAGE).expect("reads");
    assert!(empty.messages.is_empty());
    assert_eq!(
        (empty.more_before, empty.more_after, empty.first_seq, empty.last_seq),
        (false, false, 1, 0)
    );
    assert!(history.page("nowhere", Anchor::Latest, PAGE).is_err());
}

#[test]
fn a_page_is_bounded_in_bytes_but_holds_at_least_one_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 100);
    history.create_room("general").expect("created");
    for i in 0..20 {
        let body = format!("{i:>97}"); // 3 bytes of sender and 97 of body: 100 a message
        history
            .append_blocking("general", Message { sender: "ada".into(), timestamp_ms: 1, body })
            .expect("stored");
    }
    let page = history.page("general", Anchor::Latest, PageLimit { messages: 500, bytes: 1_000 });
    let page = page.expect("reads");
    assert_eq!(seqs(&page), (11..=20).collect::<Vec<_>>(), "ten of 100 bytes fit in 1,000");
    assert!(page.more_before);

    let tiny = history.page("general", Anchor::After(0), PageLimit { messages: 500, bytes: 10 });
    assert_eq!(seqs(&tiny.expect("reads")), vec![1], "one message, however long");
}
