//! Arrivals and departures over real connections: a member hears another join, leave and
//! disconnect, each once and in order with the messages, and nothing of it in a room above
//! the node's presence limit. (A departure by timeout, through a killed `chat` process, is in
//! `programs.rs`.)

use chat_client::{LeftReason, Room, RoomEvent};
use chat_tests::{PATIENCE, TestNode};

/// What `room` tells after its history, up to and including an event that `last` matches.
async fn told_until(room: &mut Room, last: impl Fn(&str) -> bool) -> Vec<String> {
    let mut told = Vec::new();
    loop {
        let event = tokio::time::timeout(PATIENCE, room.next())
            .await
            .unwrap_or_else(|_| panic!("waited in vain after {told:?}"))
            .expect("the room stream goes on");
        let line = match event {
            RoomEvent::Message { message, history: false } => {
                format!("{}: {}", message.sender, message.body)
            }
            RoomEvent::Arrived { name } => format!("{name} arrived"),
            RoomEvent::Left { name, reason } => format!("{name} {}", reason.as_str()),
            RoomEvent::Moderation { by, action } => format!("{by}: {action:?}"),
            RoomEvent::HistoryEnd(_) | RoomEvent::Message { .. } => continue,
            RoomEvent::Error(error) => panic!("the room failed: {error}"),
        };
        let done = last(&line);
        told.push(line);
        if done {
            return told;
        }
    }
}

#[tokio::test]
async fn a_member_hears_others_join_leave_and_disconnect_once_in_order_with_the_messages() {
    let node = TestNode::start(|_| {}).await;
    let ada = node.connect("ada").await;
    let mut watching = ada.join("general", None).await.expect("joins");

    let bob = node.connect("bob").await;
    let bobs = bob.join("general", None).await.expect("joins");
    bobs.sender().send("hi").await.expect("stored");
    let cy = node.connect("cy").await;
    let cys = cy.join("general", None).await.expect("joins");
    bobs.leave().await; // Bob stays online.
    cys.sender().send("bye").await.expect("stored");
    cy.close().await;

    let told = told_until(&mut watching, |line| line.starts_with("cy ") && line != "cy arrived");
    assert_eq!(
        told.await,
        ["bob arrived", "bob: hi", "cy arrived", "bob left", "cy: bye", "cy disconnected"],
    );
    assert_eq!(LeftReason::Disconnected.as_str(), "disconnected");
    assert_eq!(ada.who("general").await.expect("who"), ["ada"]);
    drop(bob);
}

#[tokio::test]
async fn a_room_above_the_presence_limit_hears_no_arrivals_or_departures() {
    let node = TestNode::start(|config| config.presence_limit = 2).await;
    let ada = node.connect("ada").await;
    assert_eq!(ada.limits().presence_limit, 2, "the welcome says where the limit is");
    let mut watching = ada.join("general", None).await.expect("joins");
    let bob = node.connect("bob").await;
    let bobs = bob.join("general", None).await.expect("joins");
    // A third member makes the room too big to be told of: neither cy's arrival nor its
    // departure is sent; bob's, in a room of two again, is.
    let cy = node.connect("cy").await;
    let cys = cy.join("general", None).await.expect("joins");
    cys.sender().send("cy was here").await.expect("stored");
    cys.leave().await;
    bobs.sender().send("now me").await.expect("stored");
    bobs.leave().await;
    let told = told_until(&mut watching, |line| line == "bob left").await;
    assert_eq!(told, ["bob arrived", "cy: cy was here", "bob: now me", "bob left"]);
    drop((bob, cy));
}
