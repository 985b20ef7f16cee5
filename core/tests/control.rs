//! The control stream's and a room stream's opening rules, frames in and actions out, with
//! no socket: the node's readers only turn what they read into [`Received`].

use chat_core::control::{self, ControlAction, Hello, Received};
use chat_core::{ErrorCode, Opening, Refusal, opening};
use chat_proto::ClientFrame;
use chat_proto::codes::close;

fn frame(frame: ClientFrame) -> Received {
    Received::Frame(frame)
}

#[test]
fn the_control_stream_must_open_with_a_hello() {
    let hello = ClientFrame::Hello { name: "ada".into(), resume: Some([7; 16]), login: None };
    assert_eq!(
        control::greeting(frame(hello)),
        Ok(Hello { name: "ada".into(), resume: Some([7; 16]), login: None })
    );
    for first in [
        frame(ClientFrame::ListRooms),
        frame(ClientFrame::Join { room: "general".into(), after: None, limit: 50 }),
        Received::Malformed("undecodable frame".into()),
        Received::Ended,
    ] {
        let refusal = control::greeting(first).expect_err("refused");
        assert_eq!(refusal, Refusal::NoHello);
        assert_eq!(
            (refusal.code(), refusal.close_code()),
            (ErrorCode::ProtocolViolation, close::PROTOCOL_VIOLATION)
        );
    }
}

#[test]
fn after_the_welcome_the_control_stream_answers_listings_who_and_creations_and_nothing_else() {
    assert_eq!(control::request(frame(ClientFrame::ListRooms)), ControlAction::ListRooms);
    assert_eq!(
        control::request(frame(ClientFrame::Who { room: "general".into() })),
        ControlAction::Who { room: "general".into() }
    );
    let ControlAction::Refuse(refusal) =
        control::request(frame(ClientFrame::Send { client_id: 1, body: "hi".into() }))
    else {
        panic!("a send on the control stream is answered, and the stream goes on")
    };
    assert_eq!(
        refusal.to_string(),
        "the control stream takes room listings, who requests, room creations and account requests, not a send"
    );
    let ControlAction::Close(refusal) = control::request(Received::Malformed("bad".into())) else {
        panic!("bytes that are not a frame end the connection")
    };
    assert_eq!(refusal.close_code(), close::PROTOCOL_VIOLATION);
    assert_eq!(control::request(Received::Ended), ControlAction::Bye);
}

#[test]
fn a_room_stream_must_open_with_a_join() {
    assert_eq!(
        opening(frame(ClientFrame::Join { room: "general".into(), after: Some(9), limit: 50 })),
        Opening::Join { room: "general".into(), after: Some(9), limit: 50 }
    );
    assert_eq!(opening(Received::Ended), Opening::Ended);
    let Opening::Refuse(refusal) = opening(frame(ClientFrame::ListRooms)) else {
        panic!("only a join opens a room stream")
    };
    assert_eq!(refusal.to_string(), "a room stream starts with a join, not a room listing");
    assert_eq!(
        opening(Received::Malformed("truncated".into())),
        Opening::Refuse(Refusal::Malformed("truncated".into()))
    );
}
