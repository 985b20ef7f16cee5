//! The history's log: numbering, order, the cap, gaps, and recovery after reopening.

use std::sync::{Arc, Mutex};

use chat_history::{
    Anchor, Config, Durability, History, HistoryError, HistoryPage, Message, PageLimit, Subscriber,
};

fn open(dir: &std::path::Path, cap: u64) -> History {
    History::open(Config {
        path: dir.to_path_buf(),
        cap,
        cap_by_prefix: Vec::new(),
        durability: Durability::Sync,
    })
    .expect("history opens")
}

fn msg(body: &str) -> Message {
    Message { sender: "ada".into(), timestamp_ms: 1, body: body.into() }
}

/// The retained messages of `room` after `after` (from the first for `None`), at most `limit`.
fn read(
    history: &History,
    room: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<HistoryPage, HistoryError> {
    let limit = PageLimit { messages: limit, bytes: usize::MAX };
    history.page(room, Anchor::After(after.unwrap_or(0)), limit)
}

fn bodies(page: &HistoryPage) -> Vec<(u64, String)> {
    page.messages.iter().map(|s| (s.seq, s.message.body.clone())).collect()
}

#[test]
fn appends_are_numbered_per_room_and_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 100);
    assert!(history.create_room("a").expect("created"));
    assert!(history.create_room("ab").expect("created"));
    assert!(!history.create_room("a").expect("exists"), "a second create is a no-op");
    for i in 1..=3 {
        assert_eq!(history.append_blocking("a", msg(&format!("a{i}"))).expect("stored"), i);
    }
    assert_eq!(history.append_blocking("ab", msg("ab1")).expect("stored"), 1);

    let page = read(&history, "a", None, 100).expect("reads");
    assert_eq!(bodies(&page), vec![(1, "a1".into()), (2, "a2".into()), (3, "a3".into())]);
    assert_eq!((page.gap, page.last_seq), (None, 3));
    let after = read(&history, "a", Some(1), 1).expect("reads");
    assert_eq!(bodies(&after), vec![(2, "a2".into())], "after and limit are honoured");
    let names: Vec<String> = history.rooms().expect("lists").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "ab"]);
}

#[test]
fn an_unknown_room_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 10);
    assert!(
        matches!(history.append_blocking("nope", msg("x")), Err(HistoryError::UnknownRoom(r)) if r == "nope")
    );
    assert!(matches!(read(&history, "nope", None, 10), Err(HistoryError::UnknownRoom(_))));
}

#[test]
fn the_cap_trims_the_oldest_and_a_read_from_before_it_reports_the_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 3);
    history.create_room("r").expect("created");
    for i in 1..=5 {
        history.append_blocking("r", msg(&i.to_string())).expect("stored");
    }
    let all = read(&history, "r", None, 100).expect("reads");
    assert_eq!(bodies(&all), vec![(3, "3".into()), (4, "4".into()), (5, "5".into())]);
    assert_eq!(all.gap, Some((1, 2)), "a reader from the start missed 1 and 2");
    let from_one = read(&history, "r", Some(1), 100).expect("reads");
    assert_eq!(from_one.gap, Some((2, 2)));
    let from_two = read(&history, "r", Some(2), 100).expect("reads");
    assert_eq!((from_two.gap, from_two.messages.len()), (None, 3));
    let up_to_date = read(&history, "r", Some(5), 100).expect("reads");
    assert!(up_to_date.messages.is_empty() && up_to_date.gap.is_none());
}

#[test]
fn a_reopened_history_keeps_its_messages_and_never_reuses_a_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..3u64 {
        let history = open(dir.path(), 100);
        history.create_room("r").expect("created");
        let seq = history.append_blocking("r", msg(&format!("round {round}"))).expect("stored");
        assert_eq!(seq, round + 1);
        assert_eq!(read(&history, "r", None, 100).expect("reads").messages.len() as u64, round + 1);
        if round == 1 {
            history.close().expect("closes");
        } // Rounds 0 and 2 just drop the handle, as a crash would.
    }
    let history = open(dir.path(), 100);
    assert!(history.delete_room("r").expect("deleted"));
    assert!(read(&history, "r", None, 10).is_err());
    history.create_room("r").expect("recreated");
    assert_eq!(history.append_blocking("r", msg("new")).expect("stored"), 4, "numbering goes on");
}

#[test]
fn concurrent_appends_complete_in_order_with_distinct_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 100_000);
    history.create_room("r").expect("created");
    // Every message the subscriber is handed and every completion, as (which, seq, append),
    // in one log.
    let log = Arc::new(Mutex::new(Vec::new()));
    type Log = Arc<Mutex<Vec<(&'static str, u64, i32)>>>;
    struct Recorder(Log);
    impl Subscriber for Recorder {
        fn stored(&self, room: &str, seq: u64, message: &Message) {
            assert_eq!(room, "r");
            let i = message.body.parse().expect("a number");
            self.0.lock().expect("lock").push(("stored", seq, i));
        }
    }
    history.subscribe(Arc::new(Recorder(Arc::clone(&log)))).expect("the first subscriber");
    assert!(history.subscribe(Arc::new(Recorder(Arc::clone(&log)))).is_err(), "only one");
    for i in 0..5_000 {
        let durable_log = Arc::clone(&log);
        history.append(
            "r",
            msg(&i.to_string()),
            Box::new(move |r| {
                durable_log.lock().expect("lock").push(("durable", r.expect("durable"), i));
            }),
        );
    }
    history.flush().expect("flushed");
    let log = log.lock().expect("lock").clone();
    let expected: Vec<(u64, i32)> = (0..5_000).map(|i| (i as u64 + 1, i)).collect();
    for which in ["stored", "durable"] {
        let seen: Vec<_> =
            log.iter().filter(|(w, ..)| *w == which).map(|&(_, seq, i)| (seq, i)).collect();
        assert_eq!(seen, expected, "{which} completions run in append order, gap-free");
    }
    for i in 0..5_000 {
        let at = |which| log.iter().position(|&(w, _, n)| w == which && n == i);
        assert!(at("stored") < at("durable"), "append {i} was durable before it was stored");
    }
    history.close().expect("closes");
    assert!(matches!(history.append_blocking("r", msg("late")), Err(HistoryError::Closed)));
}

#[test]
fn appends_from_many_threads_keep_each_threads_order_whoever_writes_them() {
    // One thread waits for every append, so it mostly finds the history idle and writes its
    // own; two others append in bursts, which the writer thread takes over.
    let dir = tempfile::tempdir().expect("tempdir");
    let history = open(dir.path(), 100_000);
    history.create_room("r").expect("created");
    type Log = Arc<Mutex<Vec<(u64, String)>>>;
    struct Recorder(Log);
    impl Subscriber for Recorder {
        fn stored(&self, _room: &str, seq: u64, message: &Message) {
            self.0.lock().expect("lock").push((seq, message.body.clone()));
        }
    }
    let stored: Log = Arc::default();
    let durable: Log = Arc::default();
    history.subscribe(Arc::new(Recorder(Arc::clone(&stored)))).expect("subscribed");
    const WAITED: usize = 300;
    const BURSTS: usize = 10;
    const BURST: usize = 200;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..WAITED {
                let body = format!("w:{i}");
                let seq = history.append_blocking("r", msg(&body)).expect("stored");
                durable.lock().expect("lock").push((seq, body));
            }
        });
        for thread in ["b0", "b1"] {
            let (history, durable) = (&history, &durable);
            scope.spawn(move || {
                for i in 0..BURSTS * BURST {
                    let body = format!("{thread}:{i}");
                    let durable = Arc::clone(durable);
                    history.append(
                        "r",
                        msg(&body),
                        Box::new(move |r| {
                            durable.lock().expect("lock").push((r.expect("durable"), body));
                        }),
                    );
                    if i % BURST == BURST - 1 {
                        history.flush().expect("flushed");
                    }
                }
            });
        }
    });
    history.flush().expect("flushed");
    let total = WAITED + 2 * BURSTS * BURST;
    let stored = stored.lock().expect("lock").clone();
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "stored in order, gap-free");
    let mut durable = durable.lock().expect("lock").clone();
    durable.sort();
    assert_eq!(durable, stored, "every append completed with the number it was stored under");
    for thread in ["w", "b0", "b1"] {
        let own: Vec<usize> = stored
            .iter()
            .filter_map(|(_, body)| body.strip_prefix(&format!("{thread}:")))
            .map(|i| i.parse().expect("a number"))
            .collect();
        let sent = if thread == "w" { WAITED } else { BURSTS * BURST };
        assert_eq!(own, (0..sent).collect::<Vec<_>>(), "{thread}'s appends in its order");
    }
}

#[test]
fn rooms_named_with_a_prefix_keep_their_own_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        path: dir.path().to_path_buf(),
        cap: 5,
        cap_by_prefix: vec![("@".into(), 2)],
        durability: Durability::Sync,
    };
    let history = History::open(config).expect("history opens");
    for room in ["general", "@ada+bob"] {
        history.create_room(room).expect("created");
        for i in 1..=6 {
            history.append_blocking(room, msg(&format!("m{i}"))).expect("stored");
        }
    }
    let kept = |room| bodies(&read(&history, room, None, 100).expect("read")).len();
    assert_eq!((kept("general"), kept("@ada+bob")), (5, 2));
}
