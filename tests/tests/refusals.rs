//! What a client is refused, and that the refusal is clear and leaves it usable.

use std::time::Duration;

use chat_client::{Client, ClientError, ErrorCode};
use chat_tests::{TestNode, next_message};

#[tokio::test]
async fn a_taken_name_gets_an_error_and_a_closed_connection() {
    let node = TestNode::start(|_| {}).await;
    let _ada = node.connect("ada").await;
    let refused = Client::connect(node.options("ADA")).await.err().expect("refused");
    assert!(
        matches!(&refused, ClientError::NameTaken(text) if text.contains("\"ADA\" is already online")),
        "{refused:?}"
    );
    assert_eq!(refused.exit_code(), 5);

    // The node closed that connection: a raw client that says hello sees the close code.
    let (connection, _endpoint) =
        chat_tests::raw_connection(&node, chat_proto::codes::ALPN).await.expect("handshake");
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    let hello = chat_proto::ClientFrame::Hello { name: "ada".into(), resume: None, login: None };
    send.write_all(&chat_proto::encode(&hello, 1024).expect("encodes")).await.expect("written");
    let mut reader = chat_proto::io::FrameReader::new(&mut recv, 1 << 20);
    let frame = reader.read::<chat_proto::NodeFrame>().await.expect("reads");
    assert!(
        matches!(frame, Some(chat_proto::NodeFrame::Error(ref e)) if e.code == ErrorCode::NameTaken),
        "{frame:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), connection.closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code.into_inner(),
                u64::from(chat_proto::codes::close::NAME_TAKEN)
            );
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test]
async fn an_invalid_name_is_refused_with_the_rule() {
    let node = TestNode::start(|_| {}).await;
    let refused = Client::connect(node.options("ada lovelace")).await.err().expect("refused");
    assert!(
        matches!(&refused, ClientError::InvalidName(text) if text.contains("letters, digits")),
        "{refused:?}"
    );
    node.stop().await;
}

#[tokio::test]
async fn an_unknown_room_gets_an_error_naming_it_and_the_connection_stays() {
    let node = TestNode::start(|_| {}).await;
    let ada = node.connect("ada").await;
    let refused = ada.join("nowhere", None).await.err().expect("refused");
    assert!(
        matches!(&refused, ClientError::UnknownRoom(text) if text.contains("\"nowhere\"")),
        "{refused:?}"
    );
    assert_eq!(refused.exit_code(), 6);
    let mut room = ada.join("general", None).await.expect("the connection still works");
    room.sender().send("still here").await.expect("acked");
    assert_eq!(next_message(&mut room).await.0.body, "still here");
    node.stop().await;
}

#[tokio::test]
async fn an_over_long_or_empty_message_is_refused_and_the_stream_goes_on() {
    let node = TestNode::start(|c| c.max_message_len = 100).await;
    let ada = node.connect("ada").await;
    assert_eq!(ada.limits().max_message_len, 100);
    let mut room = ada.join("general", None).await.expect("joins");
    let sender = room.sender();

    // The library refuses locally...
    let local = sender.send("x".repeat(101)).await.expect_err("too long");
    assert_eq!(local.exit_code(), 7);
    // ...and the node refuses what gets past it: just over the limit, and far over the
    // frame limit.
    for len in [101, 100_000] {
        let ack = sender.send_unchecked("x".repeat(len)).await.expect("written");
        let refused = ack.await.expect_err("refused by the node");
        assert!(
            matches!(&refused, ClientError::MessageTooLong(text) if text.contains("100 bytes")),
            "{refused:?}"
        );
    }
    let empty = sender.send("").await.expect_err("empty");
    assert!(
        matches!(&empty, ClientError::Refused(e) if e.code == ErrorCode::EmptyMessage),
        "{empty:?}"
    );

    // Nothing of that was stored or relayed; the stream and the connection still work.
    assert_eq!(sender.send("x".repeat(100)).await.expect("at the limit is fine"), 1);
    let (m, _) = next_message(&mut room).await;
    assert_eq!((m.seq, m.body.len()), (1, 100));
    assert_eq!(ada.rooms().await.expect("rooms")[0].last_seq, 1);
    node.stop().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_what_to_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let other = tempfile::tempdir().expect("tempdir");
    let stranger = chat_certs::ensure_node_files(other.path(), &[]).expect("another CA");
    let mut options = node.options("ada");
    options.trust = chat_client::Trust::CaFile(stranger.ca_cert);
    let refused = Client::connect(options).await.err().expect("not trusted");
    assert_eq!(refused.exit_code(), 4, "{refused:?}");
    assert!(refused.to_string().contains("--ca"), "{refused}");

    // Pinning the node certificate's fingerprint works instead.
    let der = chat_certs::load_certs(&node.data_dir.join("certs/node.pem")).expect("node cert");
    let mut options = node.options("ada");
    options.trust = chat_client::Trust::Fingerprint(
        chat_certs::parse_fingerprint(&chat_certs::fingerprint(&der[0])).expect("fingerprint"),
    );
    Client::connect(options).await.expect("pinned fingerprint is trusted");
    node.stop().await;
}

#[tokio::test]
async fn an_unreachable_node_is_reported_as_such() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("port");
    let addr = socket.local_addr().expect("addr");
    drop(socket);
    let options = chat_client::ConnectOptions::new(
        addr.to_string(),
        "ada",
        chat_client::Trust::Fingerprint([0; 32]),
    );
    let refused = Client::connect(options).await.err().expect("unreachable");
    assert_eq!(refused.exit_code(), 3, "{refused:?}");
}
