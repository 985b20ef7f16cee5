//! Rooms run by their owners and operators, over real connections and a real store: a room
//! made by an account is its own; operators kick, ban (for a while or for good) and mute,
//! invite to an invite-only room and set the topic; each action is shown in the room; the
//! owner outranks its operators; the node's operators (from its config) run every room; and
//! the rules outlive a restart.

use chat_client::{Client, ClientError, ErrorCode, Moderation, Room, RoomEvent};
use chat_tests::{PATIENCE, TestNode};

const PASSWORD: &str = "correct horse battery";

async fn account(node: &TestNode, name: &str) -> Client {
    Client::connect(node.options(name).registering(PASSWORD)).await.expect("registers")
}

fn refused_with<T: std::fmt::Debug>(result: Result<T, ClientError>, code: ErrorCode) -> String {
    match result {
        Err(ClientError::Refused(error)) if error.code == code => error.message,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

/// The next moderation shown in `room` (skipping arrivals, departures and messages).
async fn next_moderation(room: &mut Room) -> (String, Moderation) {
    loop {
        let event = tokio::time::timeout(PATIENCE, room.next()).await.expect("in time");
        match event.expect("the room goes on") {
            RoomEvent::Moderation { by, action } => return (by, action),
            RoomEvent::Error(error) => panic!("the room failed: {error}"),
            _ => {}
        }
    }
}

/// Waits until `room` ends with an error; returns it.
async fn removed(room: &mut Room) -> chat_client::ErrorFrame {
    loop {
        let event = tokio::time::timeout(PATIENCE, room.next()).await.expect("in time");
        match event {
            Some(RoomEvent::Error(error)) => return error,
            Some(_) => {}
            None => panic!("the room ended without saying why"),
        }
    }
}

fn kick(name: &str) -> Moderation {
    Moderation::Kick { name: name.into(), reason: "calm down".into() }
}

#[tokio::test]
async fn the_owner_and_operators_run_a_room_and_everyone_sees_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let ada = account(&node, "ada").await;
    let bob = account(&node, "bob").await;
    let cy = node.connect("cy").await; // A guest.
    assert!(!ada.create_room("lounge").await.expect("made"));
    let mut ada_room = ada.join("lounge", None).await.expect("joins");

    // Nobody but the owner (and the node's operators) names operators; guests moderate nothing.
    refused_with(bob.moderate("lounge", kick("cy")).await, ErrorCode::NotOperator);
    refused_with(cy.moderate("lounge", kick("bob")).await, ErrorCode::NotLoggedIn);
    ada.moderate("lounge", Moderation::Op { name: "bob".into() }).await.expect("owner ops bob");
    assert_eq!(next_moderation(&mut ada_room).await.0, "ada");

    // A kick removes cy now, told why, and the room sees it; cy may come back.
    let mut cy_room = cy.join("lounge", None).await.expect("joins");
    bob.moderate("lounge", kick("cy")).await.expect("bob kicks cy");
    let error = removed(&mut cy_room).await;
    assert_eq!(error.code, ErrorCode::Kicked);
    assert!(
        error.message.contains("bob removed you from room lounge: calm down"),
        "{}",
        error.message
    );
    assert_eq!(next_moderation(&mut ada_room).await, ("bob".into(), kick("cy")));
    let mut cy_room = cy.join("lounge", None).await.expect("a kicked name may rejoin");

    // A ban removes cy and keeps it out (also from a new connection) until unbanned.
    let ban = Moderation::Ban { name: "cy".into(), minutes: Some(60), reason: String::new() };
    bob.moderate("lounge", ban).await.expect("bob bans cy");
    assert_eq!(removed(&mut cy_room).await.code, ErrorCode::Kicked);
    let text = match cy.join("lounge", None).await {
        Err(ClientError::Refused(e)) if e.code == ErrorCode::Banned => e.message,
        other => panic!("a banned name joined: {:?}", other.map(|r| r.name().to_owned())),
    };
    assert!(text.contains("banned from room lounge until"), "{text}");
    // An operator cannot act on the owner.
    let refused = bob.moderate(
        "lounge",
        Moderation::Ban { name: "ada".into(), minutes: None, reason: String::new() },
    );
    refused_with(refused.await, ErrorCode::NotOperator);
    bob.moderate("lounge", Moderation::Unban { name: "cy".into() }).await.expect("unbans");

    // A mute refuses cy's sends, and only them, until unmuted.
    let cy_room = cy.join("lounge", None).await.expect("unbanned: joins");
    bob.moderate("lounge", Moderation::Mute { name: "cy".into(), minutes: None })
        .await
        .expect("mutes");
    let muted = cy_room.sender().send("can you hear me").await;
    assert!(
        matches!(&muted, Err(ClientError::Refused(e)) if e.code == ErrorCode::Muted),
        "{muted:?}"
    );
    ada_room.sender().send("the owner speaks").await.expect("not muted");
    bob.moderate("lounge", Moderation::Unmute { name: "cy".into() }).await.expect("unmutes");
    cy_room.sender().send("back").await.expect("unmuted");

    // The topic: shown as it is set, and to whoever joins later.
    bob.moderate("lounge", Moderation::Topic("chess on fridays".into())).await.expect("topic");
    let dee = node.connect("dee").await;
    assert_eq!(dee.join("lounge", None).await.expect("joins").topic(), "chess on fridays");
    let listed = dee.rooms().await.expect("rooms");
    let lounge = listed.iter().find(|r| r.name == "lounge").expect("listed");
    assert_eq!(lounge.topic, "chess on fridays");

    // Invite-only: only operators and invited names come in.
    ada.moderate("lounge", Moderation::InviteOnly(true)).await.expect("invite-only");
    let eve = node.connect("eve").await;
    let text = match eve.join("lounge", None).await {
        Err(ClientError::Refused(e)) if e.code == ErrorCode::InviteOnly => e.message,
        other => panic!("an uninvited name joined: {:?}", other.map(|r| r.name().to_owned())),
    };
    assert!(text.contains("invite"), "{text}");
    bob.moderate("lounge", Moderation::Invite { name: "eve".into() }).await.expect("invites");
    eve.join("lounge", None).await.expect("invited: joins");

    // Every action was shown to the room, in order.
    let mut seen = Vec::new();
    while seen.len() < 7 {
        seen.push(format!("{:?}", next_moderation(&mut ada_room).await.1));
    }
    let kinds: Vec<&str> = seen.iter().map(|s| s.split([' ', '(']).next().unwrap_or("")).collect();
    assert_eq!(kinds, ["Ban", "Unban", "Mute", "Unmute", "Topic", "InviteOnly", "Invite"]);

    // The rules outlive a restart: the topic, the invitation list, the owner.
    drop((ada_room, cy_room, ada, bob, cy, dee, eve));
    node.stop().await;
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let fay = node.connect("fay").await;
    refused_with(
        fay.join("lounge", None).await.map(|r| r.name().to_owned()),
        ErrorCode::InviteOnly,
    );
    let ada = Client::connect(node.options("ada").with_password(PASSWORD)).await.expect("in");
    assert_eq!(
        ada.join("lounge", None).await.expect("the owner joins").topic(),
        "chess on fridays"
    );
}

#[tokio::test]
async fn the_nodes_operators_run_every_room_and_may_be_the_only_ones_to_make_rooms() {
    let node = TestNode::start(|config| {
        config.operators = vec!["Root".into()];
        config.room_creation = chat_node::RoomCreation::Accounts;
    })
    .await;
    let root = account(&node, "root").await;
    let guest = node.connect("gus").await;
    let mut room = guest.join("general", None).await.expect("joins");
    // In a room of the config, which nobody owns, the node's operator kicks.
    root.moderate("general", kick("gus")).await.expect("the node's operator kicks");
    assert_eq!(removed(&mut room).await.code, ErrorCode::Kicked);
    // A guest under the operator's name is nobody: it cannot even take the name.
    assert!(Client::connect(node.options("root")).await.is_err());
    // Only accounts make rooms here.
    let text = match guest.create_room("den").await {
        Err(ClientError::Refused(e)) if e.code == ErrorCode::NotAllowed => e.message,
        other => panic!("a guest made a room: {other:?}"),
    };
    assert!(text.contains("registered users"), "{text}");
    assert!(!root.create_room("den").await.expect("an account makes one"));
}
