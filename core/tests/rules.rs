//! The room core's rules, driven without any socket: names, presence, joins, sends, in-order
//! delivery and dropping a member that falls behind.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chat_core::accounts::{AccountsMode, Identity, LoginRules};
use chat_core::control::{ControlAction, Received};
use chat_core::{
    ConnId, Core, ErrorCode, Full, Mailbox, MemberId, Refusal, RoomName, Rules, Seq, Share,
    UserName,
};
use chat_proto::{ClientFrame, LeftReason, NodeFrame, codes};

/// A mailbox that records what it is offered, holding at most `capacity` messages.
#[derive(Clone, Default)]
struct Inbox(Rc<RefCell<InboxState>>);

#[derive(Default)]
struct InboxState {
    capacity: usize,
    got: Vec<(Seq, &'static str)>,
    replies: Vec<&'static str>,
    /// Messages (`seq body`) and replies together, in the order queued.
    log: Vec<String>,
    evicted_after: Option<Seq>,
    /// The error a removed member was told.
    removed: Option<&'static str>,
}

impl Inbox {
    fn with_capacity(capacity: usize) -> Self {
        Self(Rc::new(RefCell::new(InboxState { capacity, ..Default::default() })))
    }
    fn got(&self) -> Vec<(Seq, &'static str)> {
        self.0.borrow().got.clone()
    }
    fn replies(&self) -> Vec<&'static str> {
        self.0.borrow().replies.clone()
    }
    fn evicted_after(&self) -> Option<Seq> {
        self.0.borrow().evicted_after
    }
}

impl Mailbox for Inbox {
    type Message = &'static str;
    fn encode(frame: &NodeFrame) -> &'static str {
        let told = match frame {
            NodeFrame::Arrived { name } => format!("{name} arrived"),
            NodeFrame::Left { name, reason } => format!("{name} {}", reason.as_str()),
            NodeFrame::RoomEvent { by, action } => format!("{by}: {action:?}"),
            NodeFrame::Error(error) => error.message.clone(),
            other => panic!("the core announces nothing like {other:?}"),
        };
        Box::leak(told.into_boxed_str()) // A test's few lines.
    }
    fn offer(&self, seq: Seq, message: &&'static str) -> Result<(), Full> {
        let mut state = self.0.borrow_mut();
        if state.got.len() + state.replies.len() >= state.capacity {
            return Err(Full);
        }
        state.got.push((seq, message));
        state.log.push(format!("{seq} {message}"));
        Ok(())
    }
    fn reply(&self, message: &'static str) -> Result<(), Full> {
        let mut state = self.0.borrow_mut();
        if state.got.len() + state.replies.len() >= state.capacity {
            return Err(Full);
        }
        state.replies.push(message);
        state.log.push(message.to_owned());
        Ok(())
    }
    fn space(&self) -> usize {
        let state = self.0.borrow();
        state.capacity.saturating_sub(state.got.len() + state.replies.len())
    }
    fn evict(&self, last_seq: Seq) {
        self.0.borrow_mut().evicted_after = Some(last_seq);
    }
    fn remove(&self, frame: &'static str) {
        self.0.borrow_mut().removed = Some(frame);
    }
}

const RULES: Rules = Rules {
    max_message_len: 10,
    max_rooms_per_connection: 2,
    rate: None,
    requests: None,
    max_history_page: 500,
    presence_limit: 3,
    room_creation: chat_core::moderation::RoomCreation::Anyone,
    max_rooms: 10,
    accounts: AccountsMode::Open,
    logins: LoginRules {
        per_account_and_address: 2,
        per_address: 8,
        per_account: 20,
        forgiven: Duration::from_secs(60),
    },
};

fn core_with_rooms(rooms: &[(&str, Seq)]) -> Core<Inbox> {
    let mut core = Core::new(RULES);
    for (name, last) in rooms {
        core.add_room(RoomName::parse(name).expect("valid"), *last);
    }
    core
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).expect("valid")
}

#[test]
fn a_name_online_is_refused_case_insensitively_until_it_leaves() {
    let mut core = core_with_rooms(&[]);
    core.connect(ConnId(1), "Ada", None, [1; 16], Identity::Guest, Instant::now())
        .expect("free name");
    let refusal = core
        .connect(ConnId(2), "ada", None, [2; 16], Identity::Guest, Instant::now())
        .expect_err("taken");
    assert_eq!(refusal.code(), ErrorCode::NameTaken);
    assert!(refusal.to_string().contains("already online"));
    core.disconnect(ConnId(1), LeftReason::Disconnected);
    core.connect(ConnId(2), "ada", None, [2; 16], Identity::Guest, Instant::now())
        .expect("free again");
}

#[test]
fn a_session_token_takes_the_name_and_its_rooms_from_a_stale_connection() {
    let mut core = core_with_rooms(&[("general", 0)]);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    let stale = Inbox::with_capacity(10);
    core.join(ConnId(1), MemberId(1), "general", stale.clone()).expect("joins");

    let back = core
        .connect(ConnId(2), "ada", Some([1; 16]), [2; 16], Identity::Guest, Instant::now())
        .expect("token matches");
    assert_eq!(back.replaced, Some(ConnId(1)));
    assert_eq!(core.who("general").expect("room"), Vec::<String>::new());
    core.committed("general", 1, "hi");
    assert!(stale.got().is_empty(), "the replaced connection still gets messages");
    // The stale connection's own disconnect, arriving late, must not free the name.
    core.disconnect(ConnId(1), LeftReason::Disconnected);
    assert!(
        core.connect(ConnId(3), "ada", None, [3; 16], Identity::Guest, Instant::now()).is_err()
    );
}

#[test]
fn invalid_names_and_unknown_rooms_are_refused_by_name() {
    let mut core = core_with_rooms(&[("general", 0)]);
    assert_eq!(
        core.connect(ConnId(1), "no spaces", None, [1; 16], Identity::Guest, Instant::now())
            .expect_err("invalid")
            .code(),
        ErrorCode::InvalidName
    );
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("valid");
    let refusal =
        core.join(ConnId(1), MemberId(1), "nowhere", Inbox::default()).expect_err("unknown");
    assert_eq!(refusal, Refusal::UnknownRoom("nowhere".into()));
    assert!(refusal.to_string().contains("nowhere"));
    assert_eq!(
        core.join(ConnId(1), MemberId(1), "bad/room", Inbox::default())
            .expect_err("invalid")
            .code(),
        ErrorCode::InvalidRoomName
    );
}

#[test]
fn a_connection_joins_a_room_once_and_at_most_the_limit() {
    let mut core = core_with_rooms(&[("a", 0), ("b", 0), ("c", 0)]);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "a", Inbox::default()).expect("first");
    assert_eq!(
        core.join(ConnId(1), MemberId(2), "A", Inbox::default()).expect_err("twice").code(),
        ErrorCode::AlreadyJoined
    );
    core.join(ConnId(1), MemberId(3), "b", Inbox::default()).expect("second");
    assert_eq!(
        core.join(ConnId(1), MemberId(4), "c", Inbox::default()).expect_err("third").code(),
        ErrorCode::TooManyRooms
    );
    core.leave(MemberId(1), LeftReason::Left);
    core.join(ConnId(1), MemberId(4), "c", Inbox::default()).expect("a place is free again");
}

#[test]
fn sends_are_checked_for_length_emptiness_and_membership() {
    let mut core = core_with_rooms(&[("general", 0)]);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "general", Inbox::default()).expect("joins");
    let ok = core.check_send(MemberId(1), "0123456789", Instant::now()).expect("at the limit");
    assert_eq!((ok.room.as_str(), ok.sender.as_str()), ("general", "ada"));
    assert_eq!(
        core.check_send(MemberId(1), "0123456789!", Instant::now()),
        Err(Refusal::MessageTooLong { len: 11, max: 10 })
    );
    assert_eq!(core.check_send(MemberId(1), "", Instant::now()), Err(Refusal::EmptyMessage));
    core.leave(MemberId(1), LeftReason::Left);
    assert_eq!(core.check_send(MemberId(1), "hi", Instant::now()), Err(Refusal::NotJoined));
}

#[test]
fn every_member_gets_every_message_once_in_sequence_order() {
    let mut core = core_with_rooms(&[("general", 5)]);
    let inboxes: Vec<Inbox> = (0..3).map(|_| Inbox::with_capacity(100)).collect();
    for (i, inbox) in inboxes.iter().enumerate() {
        let conn = ConnId(i as u64);
        core.connect(
            conn,
            &format!("user{i}"),
            None,
            [i as u8; 16],
            Identity::Guest,
            Instant::now(),
        )
        .expect("free");
        let joined = core.join(conn, MemberId(i as u64), "general", inbox.clone()).expect("joins");
        assert_eq!(joined.history_until, 5, "history covers what came before the join");
    }
    // Writes complete out of order; a duplicate and a stale one come in too.
    let room = room("general");
    for (seq, body) in [(7, "c"), (6, "b"), (6, "b"), (3, "old"), (9, "e"), (8, "d")] {
        assert!(core.committed(room.as_str(), seq, body).is_empty());
    }
    for inbox in &inboxes {
        assert_eq!(inbox.got(), vec![(6, "b"), (7, "c"), (8, "d"), (9, "e")]);
    }
    assert_eq!(core.who("general").expect("room"), vec!["user0", "user1", "user2"]);
}

#[test]
fn a_log_with_gaps_in_its_numbering_is_delivered_as_it_comes_without_repeats() {
    // Cluster mode: the stream numbers every room's messages in one sequence.
    let mut core = core_with_rooms(&[("general", 10)]);
    let inbox = Inbox::with_capacity(100);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "general", inbox.clone()).expect("joins");
    let room = room("general");
    for (seq, body) in [(14, "a"), (20, "b"), (20, "b"), (9, "old"), (31, "c")] {
        assert!(core.committed_in_order(room.as_str(), seq, body).is_empty());
    }
    assert_eq!(inbox.got(), vec![(14, "a"), (20, "b"), (31, "c")]);
    assert_eq!(core.delivered(&room), Some(31));
}

#[test]
fn a_member_that_falls_behind_is_dropped_alone_and_told_where_it_stopped() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let slow = Inbox::with_capacity(3); // fast's arrival, then two messages.
    let fast = Inbox::with_capacity(100);
    core.connect(ConnId(1), "slow", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.connect(ConnId(2), "fast", None, [2; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "general", slow.clone()).expect("joins");
    core.join(ConnId(2), MemberId(2), "general", fast.clone()).expect("joins");

    let room = room("general");
    let mut evicted = Vec::new();
    for (seq, body) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        evicted.extend(core.committed(room.as_str(), seq, body));
    }
    assert_eq!(evicted.len(), 1);
    assert_eq!((evicted[0].member, evicted[0].last_seq), (MemberId(1), 2));
    assert_eq!(slow.evicted_after(), Some(2));
    assert_eq!(fast.got().len(), 4);
    assert_eq!(fast.replies(), vec!["slow dropped by the node"], "the room hears it left");
    assert_eq!(core.who("general").expect("room"), vec!["fast"]);
    // Its connection may rejoin the room.
    core.join(ConnId(1), MemberId(3), "general", Inbox::with_capacity(10)).expect("rejoins");
}

#[test]
fn a_member_whose_own_ack_does_not_fit_is_dropped_like_one_that_falls_behind() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let sender = Inbox::with_capacity(2);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "general", sender.clone()).expect("joins");

    core.committed("general", 1, "mine");
    assert_eq!(Core::reply(MemberId(1), &sender, "ack 1"), Ok(()), "the ack fits");
    let overflow = Core::reply(MemberId(1), &sender, "ack 2").expect_err("no room for the ack");
    let dropped = core.reply_overflowed(overflow).expect("dropped");
    assert_eq!((dropped.member, dropped.last_seq), (MemberId(1), 1));
    assert_eq!(sender.replies(), vec!["ack 1"]);
    assert_eq!(sender.evicted_after(), Some(1), "told where to resume");
    assert_eq!(core.who("general").expect("room"), Vec::<String>::new());

    // An ack for a member that has left still goes out while its stream drains, and one
    // that does not fit then drops nobody.
    let left = Inbox::with_capacity(1);
    core.join(ConnId(1), MemberId(2), "general", left.clone()).expect("rejoins");
    core.leave(MemberId(2), LeftReason::Left);
    assert_eq!(Core::reply(MemberId(2), &left, "ack 3"), Ok(()));
    let overflow = Core::reply(MemberId(2), &left, "ack 4").expect_err("no room");
    assert_eq!(core.reply_overflowed(overflow), None);
    assert_eq!((left.replies(), left.evicted_after()), (vec!["ack 3"], None));
}

#[test]
fn sends_over_the_rate_are_told_to_slow_down_and_a_connection_that_goes_on_is_closed() {
    let mut core = Core::new(RULES.with_rate(10, 3));
    for name in ["general", "random"] {
        core.add_room(room(name), 0);
    }
    let start = Instant::now();
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, start).expect("free");
    core.join(ConnId(1), MemberId(1), "general", Inbox::default()).expect("joins");
    core.join(ConnId(1), MemberId(2), "random", Inbox::default()).expect("joins");
    // The burst is the connection's, shared by its rooms; a refused body takes its token too.
    core.check_send(MemberId(1), "one", start).expect("within the burst");
    assert_eq!(core.check_send(MemberId(2), "", start), Err(Refusal::EmptyMessage));
    core.check_send(MemberId(2), "three", start).expect("within the burst");

    let slow_down = core.check_send(MemberId(1), "four", start).expect_err("over the burst");
    assert_eq!(
        slow_down,
        Refusal::SlowDown { per_second: 10, retry_after: Duration::from_millis(100) }
    );
    assert_eq!(slow_down.code(), ErrorCode::SlowDown);
    assert_eq!(
        slow_down.to_string(),
        "you are sending faster than the node allows (10 messages a second); the message was \
         not sent: wait 100 ms and send it again"
    );
    // A token every 100 ms, handed in by the clock the test moves.
    core.check_send(MemberId(1), "later", start + Duration::from_millis(100)).expect("a token");

    // Sending on regardless: a strike per refusal, and the burst's worth closes it.
    let later = start + Duration::from_millis(150);
    assert!(matches!(core.check_send(MemberId(2), "x", later), Err(Refusal::SlowDown { .. })));
    assert!(matches!(core.check_send(MemberId(2), "x", later), Err(Refusal::SlowDown { .. })));
    let closed = core.check_send(MemberId(2), "x", later).expect_err("closed");
    assert_eq!(closed, Refusal::RateLimited);
    assert_eq!(closed.close_code(), codes::close::RATE_LIMITED);
}

#[test]
fn a_node_with_no_rate_limit_takes_any_number_of_sends_at_once() {
    let mut core = Core::new(RULES.with_rate(0, 200));
    core.add_room(room("general"), 0);
    let now = Instant::now();
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, now).expect("free");
    core.join(ConnId(1), MemberId(1), "general", Inbox::default()).expect("joins");
    for _ in 0..10_000 {
        core.check_send(MemberId(1), "hi", now).expect("no limit");
    }
}

#[test]
fn every_refusal_that_ends_a_connection_has_its_close_code() {
    let core = core_with_rooms(&[]);
    assert_eq!(Refusal::NameTaken("ada".into()).close_code(), codes::close::NAME_TAKEN);
    assert_eq!(Refusal::DirectoryUnavailable("down".into()).close_code(), codes::close::REFUSED);
    assert_eq!(Refusal::NotConnected.close_code(), codes::close::PROTOCOL_VIOLATION);
    assert_eq!(Refusal::NoHello.close_code(), codes::close::PROTOCOL_VIOLATION);
    let wrong = Refusal::UnexpectedFrame { expected: "a room stream takes sends", got: "a join" };
    assert_eq!(wrong.to_string(), "a room stream takes sends, not a join");
    assert_eq!(wrong.code(), ErrorCode::ProtocolViolation);
    let oversized = core.oversized(5000);
    assert_eq!(oversized.code(), ErrorCode::MessageTooLong);
    assert_eq!(
        oversized.to_string(),
        "a frame of 5000 bytes is over the limit of 10 bytes for a message; it was not sent"
    );
}

/// What `inbox` got, messages and notices together in the order queued.
fn told(inbox: &Inbox) -> Vec<String> {
    inbox.0.borrow().log.clone()
}

#[test]
fn members_hear_arrivals_and_departures_once_in_order_with_the_messages() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let ada = Inbox::with_capacity(100);
    for (conn, name) in [(1, "ada"), (2, "bob"), (3, "cy")] {
        core.connect(ConnId(conn), name, None, [conn as u8; 16], Identity::Guest, Instant::now())
            .expect("free");
    }
    core.join(ConnId(1), MemberId(1), "general", ada.clone()).expect("joins");
    core.join(ConnId(2), MemberId(2), "general", Inbox::with_capacity(100)).expect("joins");
    core.committed("general", 1, "hi");
    core.join(ConnId(3), MemberId(3), "general", Inbox::with_capacity(100)).expect("joins");
    core.leave(MemberId(2), LeftReason::Left);
    core.committed("general", 2, "bye");
    core.disconnect(ConnId(3), LeftReason::TimedOut);
    // Leaving a room one has left already, or a connection that is gone, tells nobody.
    core.leave(MemberId(2), LeftReason::Left);
    core.disconnect(ConnId(3), LeftReason::Disconnected);
    assert_eq!(
        told(&ada),
        ["bob arrived", "1 hi", "cy arrived", "bob left", "2 bye", "cy timed out"],
        "nobody hears of their own arrival"
    );
}

#[test]
fn a_session_taken_over_is_heard_as_a_disconnect_and_the_new_one_arrives() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let bob = Inbox::with_capacity(100);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.connect(ConnId(2), "bob", None, [2; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(2), MemberId(2), "general", bob.clone()).expect("joins");
    core.join(ConnId(1), MemberId(1), "general", Inbox::with_capacity(100)).expect("joins");
    core.connect(ConnId(3), "ada", Some([1; 16]), [3; 16], Identity::Guest, Instant::now())
        .expect("resumes");
    core.join(ConnId(3), MemberId(3), "general", Inbox::with_capacity(100)).expect("rejoins");
    assert_eq!(told(&bob), ["ada arrived", "ada disconnected", "ada arrived"]);
}

#[test]
fn rooms_above_the_presence_limit_hear_no_arrivals_or_departures() {
    // RULES announces in rooms of at most 3 members.
    let mut core = core_with_rooms(&[("general", 0)]);
    let ada = Inbox::with_capacity(100);
    for (conn, name) in [(1, "ada"), (2, "bob"), (3, "cy"), (4, "dee")] {
        core.connect(ConnId(conn), name, None, [conn as u8; 16], Identity::Guest, Instant::now())
            .expect("free");
    }
    core.join(ConnId(1), MemberId(1), "general", ada.clone()).expect("joins");
    for conn in 2..=4 {
        core.join(ConnId(conn), MemberId(conn), "general", Inbox::with_capacity(100))
            .expect("joins");
    }
    core.leave(MemberId(4), LeftReason::Left); // The room had 4 members: not told.
    core.leave(MemberId(3), LeftReason::Left);
    assert_eq!(told(&ada), ["bob arrived", "cy arrived", "cy left"]);
}

#[test]
fn a_member_that_cannot_take_an_arrival_is_dropped_and_the_others_hear_it_left() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let (ada, full) = (Inbox::with_capacity(100), Inbox::with_capacity(0));
    for (conn, name) in [(1, "ada"), (2, "bob"), (3, "cy")] {
        core.connect(ConnId(conn), name, None, [conn as u8; 16], Identity::Guest, Instant::now())
            .expect("free");
    }
    core.join(ConnId(1), MemberId(1), "general", ada.clone()).expect("joins");
    core.join(ConnId(2), MemberId(2), "general", full.clone()).expect("joins");
    core.join(ConnId(3), MemberId(3), "general", Inbox::with_capacity(100)).expect("joins");
    assert_eq!(told(&ada), ["bob arrived", "cy arrived", "bob dropped by the node"]);
    assert_eq!(full.evicted_after(), Some(0));
    assert_eq!(core.who("general").expect("room"), ["ada", "cy"]);
}

#[test]
fn a_stopping_node_announces_nothing() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let ada = Inbox::with_capacity(100);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.connect(ConnId(2), "bob", None, [2; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "general", ada.clone()).expect("joins");
    core.join(ConnId(2), MemberId(2), "general", Inbox::with_capacity(100)).expect("joins");
    core.stop_announcing();
    core.disconnect(ConnId(2), LeftReason::Disconnected);
    assert_eq!(told(&ada), ["bob arrived"]);
}

#[test]
fn a_direct_conversation_is_for_its_two_users_and_pushed_to_the_one_not_in_it() {
    let mut core = core_with_rooms(&[("general", 0)]);
    let now = Instant::now();
    for (conn, name) in [(1, "ada"), (2, "Bob"), (3, "cy")] {
        core.connect(ConnId(conn), name, None, [conn as u8; 16], Identity::Guest, now)
            .expect("free");
    }
    let bobs_inbox = Inbox::with_capacity(10);
    core.attach_inbox(ConnId(2), bobs_inbox.clone());

    // `@bob` is ada's conversation with bob, which does not exist until the node makes it.
    let admitted = core.admit(ConnId(1), "@bob").expect("ada may");
    assert_eq!((admitted.room.as_str(), admitted.known), ("@ada+bob", false));
    assert_eq!(
        core.join(ConnId(1), MemberId(1), "@bob", Inbox::with_capacity(10)),
        Err(Refusal::UnknownRoom("@ada+bob".into()))
    );
    core.add_room(admitted.room.clone(), 0);
    core.join(ConnId(1), MemberId(1), "@bob", Inbox::with_capacity(10)).expect("joins");

    // Nobody else may join it, or ask who is in it.
    let refused = core.join(ConnId(3), MemberId(3), "@ada+bob", Inbox::default());
    let refusal = refused.expect_err("cy is not in it");
    assert_eq!(refusal.code(), ErrorCode::NotAllowed);
    assert_eq!(
        refusal.to_string(),
        "@ada+bob is the direct conversation of ada and bob; only they can join it"
    );
    let who = ClientFrame::Who { room: "@ada+bob".into() };
    assert!(matches!(
        core.on_control(ConnId(3), Received::Frame(who.clone()), now),
        ControlAction::Refuse(Refusal::NotInConversation { .. })
    ));
    assert_eq!(
        core.on_control(ConnId(2), Received::Frame(ClientFrame::Who { room: "@ADA".into() }), now),
        ControlAction::Who { room: "@ada+bob".into() }
    );

    // Bob is online but not in it: its messages are pushed to him, once each.
    core.committed("@ada+bob", 1, "hi bob");
    core.heard_direct("bob", "@ada+bob", 1, &"hi bob");
    assert_eq!(bobs_inbox.got(), [(1, "hi bob")]);
    // Once he is in it, it comes through the room instead.
    core.join(ConnId(2), MemberId(2), "@ada", Inbox::with_capacity(10)).expect("joins");
    core.committed("@ada+bob", 2, "there you are");
    assert_eq!(bobs_inbox.got().len(), 1);

    // Listings show every room, and one's own conversations once they hold a message.
    let (ada, cy) = (UserName::parse("ada").expect("valid"), UserName::parse("cy").expect("valid"));
    let direct = room("@ada+bob");
    assert!(direct.listed_for(&ada, 2) && !direct.listed_for(&cy, 2));
    assert!(!direct.listed_for(&ada, 0), "an empty conversation is not listed");
    assert!(room("general").listed_for(&cy, 0));
}

#[test]
fn a_direct_message_for_a_user_online_elsewhere_is_shared_with_the_other_nodes() {
    use std::sync::{Arc, Mutex};
    let mut core = core_with_rooms(&[("@ada+bob", 0)]);
    let shared: Arc<Mutex<Vec<String>>> = Arc::default();
    let told = Arc::clone(&shared);
    core.share_with_other_nodes(move |share| {
        let line = match share {
            Share::Direct { to, room, seq, message } => format!("{to} {room} {seq} {message}"),
            Share::Presence { room, frame } => format!("{room} {frame:?}"),
        };
        told.lock().expect("lock").push(line);
    });
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    core.join(ConnId(1), MemberId(1), "@bob", Inbox::with_capacity(10)).expect("joins");
    core.committed("@ada+bob", 1, "hi");
    assert_eq!(
        *shared.lock().expect("lock"),
        ["@ada+bob Arrived { name: \"ada\" }", "bob @ada+bob 1 hi"],
        "ada is here and in it; bob is not here"
    );
}

#[test]
fn a_room_is_made_by_name_where_the_node_lets_users_up_to_its_most() {
    let now = Instant::now();
    let create = |room: &str| Received::Frame(ClientFrame::CreateRoom { room: room.into() });
    let mut core = core_with_rooms(&[("general", 0)]);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, now).expect("free");
    assert_eq!(
        core.on_control(ConnId(1), create("Lounge"), now),
        ControlAction::CreateRoom { room: room("lounge") }
    );
    assert_eq!(
        core.on_control(ConnId(1), create("@ada+bob"), now),
        ControlAction::Refuse(Refusal::CreateDirect)
    );
    assert!(matches!(
        core.on_control(ConnId(1), create("no spaces"), now),
        ControlAction::Refuse(Refusal::InvalidRoomName(_))
    ));
    // RULES keeps 10 rooms at most.
    assert_eq!(core.check_room_count(9), Ok(()));
    assert_eq!(core.check_room_count(10), Err(Refusal::NodeFullOfRooms(10)));

    let mut closed = Core::<Inbox>::new(
        RULES.with_room_creation(chat_core::moderation::RoomCreation::Nobody, 10),
    );
    closed.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, now).expect("free");
    let refused = closed.on_control(ConnId(1), create("lounge"), now);
    assert_eq!(
        refused,
        ControlAction::Refuse(Refusal::RoomCreationOff(
            chat_core::moderation::RoomCreation::Nobody
        ))
    );
}

#[test]
fn a_registered_name_needs_its_owner_and_the_owner_takes_it_back() {
    use chat_core::accounts::{Offered, Standing};
    let mut core = core_with_rooms(&[("general", 0)]);
    let ada = UserName::parse("ada").expect("valid");
    let who = |core: &mut Core<Inbox>, offered, standing| {
        core.authenticate(&ada, offered, standing, None).map_err(|r| r.code())
    };
    assert_eq!(who(&mut core, Offered::Nothing, Standing::Unregistered), Ok(Identity::Guest));
    assert_eq!(who(&mut core, Offered::Register, Standing::Unregistered), Ok(Identity::NewAccount));
    assert_eq!(who(&mut core, Offered::Nothing, Standing::Proven), Ok(Identity::Account));
    assert_eq!(who(&mut core, Offered::Password, Standing::Proven), Ok(Identity::Account));
    assert_eq!(who(&mut core, Offered::Nothing, Standing::Unproven), Err(ErrorCode::LoginRequired));
    assert_eq!(
        who(&mut core, Offered::Password, Standing::WrongPassword),
        Err(ErrorCode::WrongPassword)
    );
    assert_eq!(
        who(&mut core, Offered::Password, Standing::Unregistered),
        Err(ErrorCode::UnknownAccount)
    );
    assert_eq!(
        who(&mut core, Offered::Register, Standing::Unproven),
        Err(ErrorCode::NameRegistered)
    );
    // Each refusal of a login has its own close code.
    let refused = core.authenticate(&ada, Offered::Nothing, Standing::Unproven, None);
    assert_eq!(refused.expect_err("refused").close_code(), codes::close::LOGIN_REQUIRED);

    // A guest holding the name loses it to the owner, who needs no token of its session.
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, Instant::now()).expect("free");
    let back = core
        .connect(ConnId(2), "ada", None, [2; 16], Identity::Account, Instant::now())
        .expect("the owner");
    assert_eq!(back.replaced, Some(ConnId(1)));
    assert!(core.is_account(ConnId(2)));
    let guest = core.connect(ConnId(3), "ada", None, [3; 16], Identity::Guest, Instant::now());
    assert_eq!(guest.expect_err("taken").code(), ErrorCode::NameTaken);
}

#[test]
fn a_node_that_requires_accounts_refuses_guests() {
    use chat_core::accounts::{Offered, Standing};
    let rules = RULES.with_accounts(AccountsMode::Required, RULES.logins);
    let mut core: Core<Inbox> = Core::new(rules);
    let bob = UserName::parse("bob").expect("valid");
    let guest = core.authenticate(&bob, Offered::Nothing, Standing::Unregistered, None);
    assert_eq!(guest.expect_err("refused").code(), ErrorCode::AccountRequired);
    let new = core.authenticate(&bob, Offered::Register, Standing::Unregistered, None);
    assert_eq!(new, Ok(Identity::NewAccount));
}

#[test]
fn failed_logins_wait_before_any_hash_and_a_success_costs_nothing() {
    use chat_core::accounts::{Offered, Standing};
    use chat_proto::{Login, Secret};
    let mut core = core_with_rooms(&[]);
    let ada = UserName::parse("ada").expect("valid");
    let guess = Login::Password(Secret::from("guess"));
    let (attacker, owner) = ("192.0.2.1".parse().expect("ip"), "198.51.100.2".parse().expect("ip"));
    let now = Instant::now();
    for _ in 0..RULES.logins.per_account_and_address {
        let attempt = core.begin_login(&ada, Some(&guess), attacker, now).expect("a turn");
        let refused =
            core.authenticate(&ada, Offered::Password, Standing::WrongPassword, attempt.as_ref());
        assert_eq!(refused.expect_err("wrong").code(), ErrorCode::WrongPassword);
    }
    let held = core.begin_login(&ada, Some(&guess), attacker, now).expect_err("held back");
    assert_eq!(held.code(), ErrorCode::TooManyLogins);
    assert_eq!(held.retry_after(), Some(Duration::from_secs(60)));
    assert_eq!(held.close_code(), codes::close::TOO_MANY_LOGINS);
    for _ in 0..10 {
        let attempt = core.begin_login(&ada, Some(&guess), owner, now).expect("the owner's turn");
        core.authenticate(&ada, Offered::Password, Standing::Proven, attempt.as_ref()).expect("in");
    }
    // A hello with no password needs no turn; a weak password to register is refused first.
    assert_eq!(core.begin_login(&ada, None, attacker, now), Ok(None));
    let weak = Login::Register(Secret::from("short"));
    let refused = core.begin_login(&ada, Some(&weak), owner, now).expect_err("weak");
    assert_eq!(refused.code(), ErrorCode::InvalidPassword);
}

#[test]
fn new_room_rules_are_told_and_carried_out_once() {
    use chat_core::moderation::{RoomEvent, RoomRules};
    use chat_proto::Moderation;
    let mut core = core_with_rooms(&[("general", 0)]);
    let (ada, cy) = (Inbox::with_capacity(10), Inbox::with_capacity(10));
    let now = Instant::now();
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Account, now).expect("free");
    core.connect(ConnId(2), "cy", None, [2; 16], Identity::Guest, now).expect("free");
    core.join(ConnId(1), MemberId(1), "general", ada.clone()).expect("joins");
    core.join(ConnId(2), MemberId(2), "general", cy.clone()).expect("joins");
    let general = room("general");

    // A mute for a minute: cy's sends are refused until it ends.
    let mut rules = RoomRules { revision: 1, ..RoomRules::default() };
    rules.muted.insert("cy".into(), Some(60_000));
    rules.last = Some(RoomEvent {
        by: "ada".into(),
        action: Moderation::Mute { name: "cy".into(), minutes: Some(1) },
    });
    core.install_rules(&general, rules.clone(), now, 0);
    let muted = core.check_send(MemberId(2), "hi", now).expect_err("muted");
    assert_eq!(muted.code(), ErrorCode::Muted);
    core.check_send(MemberId(2), "hi", now + Duration::from_secs(60)).expect("the mute ended");
    // The same revision again (the store's echo of this node's own change) is not news.
    core.install_rules(&general, rules.clone(), now, 0);
    assert_eq!(ada.replies().iter().filter(|r| r.contains("Mute")).count(), 1);

    // A kick removes cy's member, told why, and the room hears of it.
    rules.revision = 2;
    rules.last = Some(RoomEvent {
        by: "ada".into(),
        action: Moderation::Kick { name: "CY".into(), reason: "enough".into() },
    });
    core.install_rules(&general, rules, now, 0);
    let removed = cy.0.borrow().removed.expect("cy was removed");
    assert!(removed.contains("ada removed you from room general: enough"), "{removed}");
    assert_eq!(core.check_send(MemberId(2), "hi", now).expect_err("gone"), Refusal::NotJoined);
    assert_eq!(core.who("general").expect("known"), ["ada"]);
}

/// The replies to a full window of sends (an echo and an ack each) fit the room a sender's
/// queue must have free before its next send is read, and that room fits the queue: the
/// node never waits for more room than there is.
#[test]
fn a_full_window_of_replies_fits_the_room_kept_for_it() {
    for member_queue in [1, 2, 3, 4, 7, 64, 1024, 1025, 100_000] {
        let in_flight = chat_core::sends_in_flight(member_queue);
        let room = chat_core::room_before_send(member_queue);
        assert!(room <= member_queue, "queue {member_queue}: room {room}");
        if member_queue >= 2 {
            assert!(
                2 * in_flight <= room,
                "queue {member_queue}: {in_flight} in flight, room {room}"
            );
        }
    }
}
