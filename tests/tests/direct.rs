//! Direct messages over real connections: pushed live to a user who is online, stored for
//! one who is not and listed for the two users only, and closed to anyone else. (Across two
//! cluster nodes: `cluster.rs`; `/msg` in the `chat` program: `programs.rs`.)

use chat_client::{ClientError, ErrorCode};
use chat_tests::{PATIENCE, TestNode, next_message};

#[tokio::test]
async fn a_direct_message_reaches_its_user_live_and_the_answer_comes_back() {
    let node = TestNode::start(|_| {}).await;
    let (ada, bob) = (node.connect("ada").await, node.connect("Bob").await);
    let mut adas = ada.join("@bob", None).await.expect("ada opens the conversation");
    assert_eq!(adas.name(), "@ada+bob", "one name for the two, whoever opens it");
    assert_eq!(adas.sender().send("psst, bob").await.expect("stored"), 1);

    // Bob has not joined it: the node pushes it to him on his connection.
    let pushed = tokio::time::timeout(PATIENCE, bob.next_direct()).await.expect("in time");
    let pushed = pushed.expect("a direct message");
    assert_eq!(
        (pushed.room.as_str(), pushed.sender.as_str(), pushed.body.as_str(), pushed.seq),
        ("@ada+bob", "ada", "psst, bob", 1)
    );
    // He opens it as @ada, sees it in the history, and answers.
    let mut bobs = bob.join("@ADA", None).await.expect("bob opens it");
    assert_eq!(bobs.name(), "@ada+bob");
    let (first, history) = next_message(&mut bobs).await;
    assert_eq!((first.body.as_str(), history), ("psst, bob", true));
    bobs.sender().send("hi ada").await.expect("stored");
    assert_eq!(next_message(&mut adas).await.0.body, "psst, bob", "her own first");
    let (answer, _) = next_message(&mut adas).await;
    assert_eq!((answer.sender.as_str(), answer.body.as_str()), ("Bob", "hi ada"));
    assert_eq!(next_message(&mut bobs).await.0.body, "hi ada", "his own, in order");
}

#[tokio::test]
async fn a_direct_message_waits_for_its_user_and_nobody_else_can_read_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let ada = node.connect("ada").await;
    let adas = ada.join("@cy", None).await.expect("opens");
    adas.sender().send("for when you are back").await.expect("stored");
    let bob = node.connect("bob").await;
    let _ = ada.join("@bob", None).await.expect("an empty conversation");

    // A third user cannot join it, ask who is in it, or see it listed.
    for name in ["@ada+cy", "@cy+ADA"] {
        match bob.join(name, None).await {
            Err(ClientError::Refused(error)) => {
                assert_eq!(error.code, ErrorCode::NotAllowed);
                assert!(error.message.contains("only they can join it"), "{}", error.message);
            }
            other => panic!(
                "bob joined ada and cy's conversation: {:?}",
                other.map(|r| r.name().to_owned())
            ),
        }
    }
    assert!(matches!(bob.who("@ada+cy").await, Err(ClientError::Refused(_))));
    let listed = |rooms: Vec<chat_proto::RoomInfo>| -> Vec<(String, u64)> {
        rooms.into_iter().map(|r| (r.name, r.last_seq)).collect()
    };
    assert_eq!(
        listed(bob.rooms().await.expect("rooms")),
        [("general".into(), 0), ("random".into(), 0)]
    );
    let adas_rooms = listed(ada.rooms().await.expect("rooms"));
    assert!(adas_rooms.contains(&("@ada+cy".into(), 1)), "{adas_rooms:?}");
    assert!(!adas_rooms.iter().any(|(name, _)| name == "@ada+bob"), "not until it holds a message");

    // Cy comes online after a restart, finds the conversation listed, and reads it.
    drop((ada, adas, bob));
    node.stop().await;
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let cy = node.connect("cy").await;
    assert!(listed(cy.rooms().await.expect("rooms")).contains(&("@ada+cy".into(), 1)));
    let mut cys = cy.join("@ada", None).await.expect("opens");
    let (message, history) = next_message(&mut cys).await;
    assert_eq!(
        (message.body.as_str(), message.sender.as_str(), history),
        ("for when you are back", "ada", true)
    );
    // And writing to oneself is refused with a reason.
    match cy.join("@cy", None).await {
        Err(ClientError::UnknownRoom(text)) => assert!(text.contains("not yourself"), "{text}"),
        other => panic!("a conversation with oneself: {:?}", other.map(|r| r.name().to_owned())),
    }
}
