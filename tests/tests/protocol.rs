//! The protocol spoken wrongly, by hand over bare QUIC: each mistake gets a typed error or
//! close, and a well-behaved client on the same node notices nothing.

use chat_proto::io::FrameReader;
use chat_proto::{ClientFrame, ErrorCode, NodeFrame, codec, codes};
use chat_tests::{
    TestNode, encoded, expect_joined, hello, next_frame, next_message, raw_connection,
};

/// A room stream on which `bytes` are written raw.
async fn room_stream(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> (quinn::SendStream, FrameReader<quinn::RecvStream>) {
    let (mut send, recv) = connection.open_bi().await.expect("room stream");
    send.write_all(bytes).await.expect("written");
    (send, FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN))
}

/// Bob, a well-behaved client in room general, sends a message and gets it back as the next
/// message of the room, under the number his ack names.
async fn bystander_is_fine(room: &mut chat_client::Room) {
    let seq = room.sender().send("still fine").await.expect("acked");
    let (message, _) = next_message(room).await;
    assert_eq!((message.seq, message.body.as_str()), (seq, "still fine"));
}

fn error_code(frame: Option<NodeFrame>) -> ErrorCode {
    match frame {
        Some(NodeFrame::Error(error)) => error.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn mistakes_get_typed_errors_and_a_bystander_notices_nothing() {
    let node = TestNode::start(|_| {}).await;
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("general", None).await.expect("joins");

    // A wrong ALPN fails the handshake.
    assert!(raw_connection(&node, b"chat/0").await.is_err());
    bystander_is_fine(&mut bobs).await;

    // Garbage instead of a hello: an error, then a close with the protocol-violation code.
    let (connection, _endpoint) = raw_connection(&node, codes::ALPN).await.expect("handshake");
    let (mut send, recv) = connection.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 3, 0xde, 0xad, 0xbe]).await.expect("written");
    let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
    assert_eq!(error_code(next_frame(&mut reader).await), ErrorCode::ProtocolViolation);
    match connection.closed().await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code.into_inner(), u64::from(codes::close::PROTOCOL_VIOLATION));
        }
        other => panic!("expected a close, got {other:?}"),
    }
    bystander_is_fine(&mut bobs).await;

    let greeted = hello(&node, "ada").await;
    let ada = &greeted.connection;

    // A send before a join: an error, and that stream ends.
    let send_first = encoded(&ClientFrame::Send { client_id: 1, body: "hi".into() });
    let (_send, mut reader) = room_stream(ada, &send_first).await;
    assert_eq!(error_code(next_frame(&mut reader).await), ErrorCode::ProtocolViolation);
    assert_eq!(reader.read::<NodeFrame>().await.expect("clean end"), None);

    // A join, then a second join, an unknown frame tag and garbage on the same stream: an
    // error each, and the stream still carries a send.
    let mut bytes =
        encoded(&ClientFrame::Join { room: "random".into(), after: Some(u64::MAX), limit: 50 });
    bytes.extend(encoded(&ClientFrame::Join { room: "general".into(), after: None, limit: 50 }));
    bytes.extend([0, 0, 0, 1, 0x7f]); // variant 127: no such frame
    bytes.extend([0, 0, 0, 2, 0x04, 0xff]); // a send cut short inside its fields
    bytes.extend(encoded(&ClientFrame::Send { client_id: 7, body: "after all that".into() }));
    let (_send, mut reader) = room_stream(ada, &bytes).await;
    expect_joined(&mut reader).await;
    for _ in 0..3 {
        assert_eq!(error_code(next_frame(&mut reader).await), ErrorCode::ProtocolViolation);
    }
    let mut acked = false;
    while !acked {
        match next_frame(&mut reader).await {
            Some(NodeFrame::Message(m)) => assert_eq!(m.body, "after all that"),
            Some(NodeFrame::Ack { client_id: 7, .. }) => acked = true,
            other => panic!("expected the message and its ack, got {other:?}"),
        }
    }
    bystander_is_fine(&mut bobs).await;

    // A length prefix of 4 GiB: refused before anything is allocated; the stream ends, the
    // connection does not.
    let mut bytes =
        encoded(&ClientFrame::Join { room: "general".into(), after: Some(u64::MAX), limit: 50 });
    bytes.extend(u32::MAX.to_be_bytes());
    let (_send, mut reader) = room_stream(ada, &bytes).await;
    expect_joined(&mut reader).await;
    assert_eq!(error_code(next_frame(&mut reader).await), ErrorCode::ProtocolViolation);
    assert_eq!(reader.read::<NodeFrame>().await.expect("clean end"), None);
    let rejoin =
        encoded(&ClientFrame::Join { room: "general".into(), after: Some(u64::MAX), limit: 50 });
    let (_send, mut reader) = room_stream(ada, &rejoin).await;
    expect_joined(&mut reader).await;

    bystander_is_fine(&mut bobs).await;
    node.stop().await;
}
