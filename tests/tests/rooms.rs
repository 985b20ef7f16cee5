//! Rooms made at runtime over real connections: made by one user, joined by another, listed,
//! kept across a restart; refused where the node lets nobody make rooms, past its most, and
//! for names that are not rooms'.

use chat_client::{ClientError, ErrorCode};
use chat_tests::{TestNode, next_message};

fn refused(result: Result<bool, ClientError>) -> chat_client::ErrorFrame {
    match result {
        Err(ClientError::Refused(error)) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_room_made_at_runtime_is_joined_listed_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |config| config.max_rooms = 3).await;
    let ada = node.connect("ada").await;
    match ada.join("lounge", None).await {
        Err(ClientError::UnknownRoom(text)) => assert!(text.contains("/create"), "{text}"),
        other => {
            panic!("joined a room that does not exist: {:?}", other.map(|r| r.name().to_owned()))
        }
    }
    assert!(!ada.create_room("Lounge").await.expect("made"), "it did not exist");
    assert!(ada.create_room("lounge").await.expect("made"), "a second time: it exists");
    let bob = node.connect("bob").await;
    let mut bobs = bob.join("lounge", None).await.expect("bob joins it");
    ada.join("lounge", None)
        .await
        .expect("ada joins it")
        .sender()
        .send("first!")
        .await
        .expect("stored");
    assert_eq!(next_message(&mut bobs).await.0.body, "first!");
    let names: Vec<String> =
        bob.rooms().await.expect("rooms").into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["general", "lounge", "random"]);

    // general, random and lounge: the most this node keeps. Conversations do not count.
    ada.join("@bob", None).await.expect("a conversation").sender().send("hi").await.expect("ok");
    let full = refused(ada.create_room("attic").await);
    assert_eq!(full.code, ErrorCode::TooManyRooms);
    assert!(full.message.contains("3 rooms"), "{}", full.message);
    let direct = ada.create_room("@bob+cy").await;
    assert!(
        matches!(direct, Err(ClientError::UnknownRoom(ref text)) if text.contains("/msg")),
        "{direct:?}"
    );
    assert!(matches!(ada.create_room("no spaces").await, Err(ClientError::UnknownRoom(_))));

    drop((ada, bob, bobs));
    node.stop().await;
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let cy = node.connect("cy").await;
    let mut lounge = cy.join("lounge", Some(0)).await.expect("still there after a restart");
    assert_eq!(next_message(&mut lounge).await.0.body, "first!");
}

#[tokio::test]
async fn a_node_can_let_nobody_make_rooms() {
    let node =
        TestNode::start(|config| config.room_creation = chat_node::RoomCreation::Nobody).await;
    let ada = node.connect("ada").await;
    let off = refused(ada.create_room("lounge").await);
    assert_eq!(off.code, ErrorCode::NotAllowed);
    assert!(off.message.contains("lets nobody make rooms"), "{}", off.message);
}
