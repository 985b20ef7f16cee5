//! A member's room stream driven through the core with no socket: inputs in, actions out,
//! the clock moved by hand. The node's reader only turns frames into these inputs and carries
//! the actions out (`node/src/room.rs`), so these are the stream's rules.

use std::time::{Duration, Instant};

use chat_core::accounts::Identity;
use chat_core::control::{ControlAction, Received};
use chat_core::{
    ConnId, Core, ErrorCode, Full, Mailbox, MemberId, Refusal, RoomName, Rules, Seq, StreamAction,
    StreamInput,
};
use chat_proto::{Anchor, ClientFrame, LeftReason, NodeFrame};

/// A mailbox that takes everything; these tests look at the actions, not at deliveries.
struct Open;

impl Mailbox for Open {
    type Message = ();
    fn encode(_frame: &NodeFrame) {}
    fn offer(&self, _seq: Seq, _message: &()) -> Result<(), Full> {
        Ok(())
    }
    fn reply(&self, _message: ()) -> Result<(), Full> {
        Ok(())
    }
    fn space(&self) -> usize {
        usize::MAX
    }
    fn evict(&self, _last_seq: Seq) {}
    fn remove(&self, _frame: Self::Message) {}
}

/// A node with room general, a rate of 10 a second in bursts of 3, messages of at most 10
/// bytes, and ada's stream in it as member 1, joined at `start`.
fn ada_in_general(start: Instant) -> Core<Open> {
    let mut core = Core::new(Rules::new(10, 2).with_rate(10, 3));
    core.add_room(RoomName::parse("general").expect("valid"), 0);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, start).expect("free");
    core.join(ConnId(1), MemberId(1), "general", Open).expect("joins");
    core
}

fn send(client_id: u64, body: &str) -> StreamInput {
    StreamInput::Send { client_id, body: body.into() }
}

#[test]
fn a_burst_is_appended_then_refused_then_the_connection_is_closed() {
    let start = Instant::now();
    let mut core = ada_in_general(start);
    let mut actions = Vec::new();
    for id in 1..=6 {
        actions.push(core.on_stream(MemberId(1), send(id, "hi"), start));
    }
    for action in &actions[..3] {
        let StreamAction::Append { outgoing, body, .. } = action else { panic!("{action:?}") };
        assert_eq!(
            (outgoing.room.as_str(), outgoing.sender.as_str(), body.as_str()),
            ("general", "ada", "hi")
        );
    }
    let slow_down = Refusal::SlowDown { per_second: 10, retry_after: Duration::from_millis(100) };
    assert_eq!(actions[3], StreamAction::Refuse { refusal: slow_down.clone(), client_id: Some(4) });
    assert_eq!(actions[4], StreamAction::Refuse { refusal: slow_down, client_id: Some(5) });
    // The burst's worth of refusals in a row: the connection is to be closed.
    assert_eq!(actions[5], StreamAction::Close(Refusal::RateLimited));
}

#[test]
fn a_paced_sender_is_never_refused() {
    let start = Instant::now();
    let mut core = ada_in_general(start);
    for n in 0..1_000u64 {
        let now = start + Duration::from_millis(100 * n);
        let action = core.on_stream(MemberId(1), send(n, "paced"), now);
        assert!(matches!(action, StreamAction::Append { .. }), "send {n}: {action:?}");
    }
}

#[test]
fn bad_frames_are_answered_and_the_stream_ends_only_when_it_cannot_go_on() {
    let now = Instant::now();
    let mut core = ada_in_general(now);
    let oversized =
        core.on_stream(MemberId(1), StreamInput::Oversized { len: 5000, client_id: Some(7) }, now);
    let StreamAction::Refuse { refusal, client_id: Some(7) } = oversized else {
        panic!("{oversized:?}")
    };
    assert_eq!(refusal.code(), ErrorCode::MessageTooLong);

    let long = core.on_stream(MemberId(1), send(8, "eleven byte"), now);
    assert_eq!(
        long,
        StreamAction::Refuse {
            refusal: Refusal::MessageTooLong { len: 11, max: 10 },
            client_id: Some(8)
        }
    );

    let join = core.on_stream(MemberId(1), StreamInput::Other { frame: "a join" }, now);
    let StreamAction::Refuse { refusal, client_id: None } = join else { panic!("{join:?}") };
    assert_eq!(refusal.to_string(), "a room stream takes sends, not a join");

    let skippable = StreamInput::Malformed { detail: "not a frame".into(), skippable: true };
    assert!(matches!(core.on_stream(MemberId(1), skippable, now), StreamAction::Refuse { .. }));
    let stuck = StreamInput::Malformed { detail: "cut short".into(), skippable: false };
    assert_eq!(
        core.on_stream(MemberId(1), stuck, now),
        StreamAction::RefuseAndEnd(Refusal::Malformed("cut short".into()))
    );
}

#[test]
fn a_stream_whose_member_was_dropped_is_told_so() {
    let now = Instant::now();
    let mut core = ada_in_general(now);
    core.leave(MemberId(1), LeftReason::Left);
    assert_eq!(
        core.on_stream(MemberId(1), send(1, "late"), now),
        StreamAction::Refuse { refusal: Refusal::NotJoined, client_id: Some(1) }
    );
}

#[test]
fn requests_share_one_budget_per_connection_refused_then_closed() {
    let start = Instant::now();
    let mut core = Core::new(Rules::new(10, 2).with_request_rate(10, 3));
    core.add_room(RoomName::parse("general").expect("valid"), 5);
    core.connect(ConnId(1), "ada", None, [1; 16], Identity::Guest, start).expect("free");
    core.join(ConnId(1), MemberId(1), "general", Open).expect("joins");
    let who = || Received::Frame(ClientFrame::Who { room: "general".into() });
    let history = StreamInput::History { request_id: 7, anchor: Anchor::Latest, limit: 10_000 };

    // Two listings and a page: the burst of three.
    assert_eq!(
        core.on_control(ConnId(1), who(), start),
        ControlAction::Who { room: "general".into() }
    );
    assert_eq!(
        core.on_control(ConnId(1), Received::Frame(ClientFrame::ListRooms), start),
        ControlAction::ListRooms
    );
    assert_eq!(
        core.on_stream(MemberId(1), history.clone(), start),
        StreamAction::Page { request_id: 7, anchor: Anchor::Latest, messages: 500 },
        "the page asked for is capped"
    );
    // Then "slow down", on either stream, with how long to wait.
    let slow_down =
        Refusal::RequestsTooFast { per_second: 10, retry_after: Duration::from_millis(100) };
    assert_eq!(core.on_control(ConnId(1), who(), start), ControlAction::Refuse(slow_down.clone()));
    assert_eq!(
        core.on_stream(MemberId(1), history.clone(), start),
        StreamAction::Refuse { refusal: slow_down.clone(), client_id: Some(7) }
    );
    assert_eq!(slow_down.code(), ErrorCode::SlowDown);
    // A burst's worth of refusals in a row: closed.
    assert_eq!(
        core.on_control(ConnId(1), who(), start),
        ControlAction::Close(Refusal::RateLimited)
    );
    // A connection that waits is answered again.
    let later = start + Duration::from_secs(1);
    core.connect(ConnId(2), "bob", None, [2; 16], Identity::Guest, start).expect("free");
    assert!(core.check_request(ConnId(2), start).is_ok());
    assert!(core.check_request(ConnId(1), later).is_ok(), "the bucket refilled");
}
