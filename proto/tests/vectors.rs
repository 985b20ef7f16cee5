//! The frames as bytes, for the browser page's codec (`web/src/codec.ts`): every variant
//! of both directions, encoded here and checked in as `web/test/vectors.json`, which the
//! page's own test decodes and encodes again. A change to the frames that is not carried
//! to the page fails one side or the other.
//!
//! After changing the frames: `UPDATE_VECTORS=1 cargo test -p chat-proto --test vectors`,
//! then bring `web/src/codec.ts` along until `npm test` in `web/` passes.

use chat_proto::{
    Anchor, ChatMessage, ClientFrame, ErrorCode, ErrorFrame, Gap, LeftReason, Limits, Login,
    Moderation, NodeFrame, PageEnds, RoomInfo, Secret, Welcome, codec,
};

fn client_frames() -> Vec<ClientFrame> {
    let mut frames = vec![
        ClientFrame::Hello { name: "ada".into(), resume: None, login: None },
        ClientFrame::Hello {
            name: "bøb".into(),
            resume: Some(std::array::from_fn(|i| (i * 17) as u8)),
            login: Some(Login::Password("correct horse".into())),
        },
        ClientFrame::Hello {
            name: "cyd".into(),
            resume: None,
            login: Some(Login::Register(Secret("s3cret!!".into()))),
        },
        ClientFrame::ListRooms,
        ClientFrame::Who { room: "general".into() },
        ClientFrame::Join { room: "general".into(), after: None, limit: 100 },
        ClientFrame::Join { room: "@ada+bob".into(), after: Some(300), limit: 500 },
        ClientFrame::Send { client_id: 0, body: "hello".into() },
        ClientFrame::Send {
            client_id: (1 << 53) - 1, body: "𝄞 émoji 👋 and RTL שלום".into()
        },
        ClientFrame::CreateRoom { room: "new-room".into() },
        ClientFrame::Register { password: "hunter22".into() },
        ClientFrame::ChangePassword { old: "hunter22".into(), new: "hunter33".into() },
        ClientFrame::Logout,
        ClientFrame::MarkRead { room: "general".into(), seq: 16_384 },
    ];
    for (request_id, anchor) in
        [Anchor::Latest, Anchor::Before(128), Anchor::After(1), Anchor::Around(99_999)]
            .into_iter()
            .enumerate()
    {
        frames.push(ClientFrame::History { request_id: request_id as u64, anchor, limit: 50 });
    }
    for action in moderations() {
        frames.push(ClientFrame::Moderate { room: "general".into(), action });
    }
    frames
}

fn moderations() -> Vec<Moderation> {
    vec![
        Moderation::Kick { name: "eve".into(), reason: "spam".into() },
        Moderation::Ban { name: "eve".into(), minutes: Some(60), reason: String::new() },
        Moderation::Ban { name: "eve".into(), minutes: None, reason: "for good".into() },
        Moderation::Unban { name: "eve".into() },
        Moderation::Mute { name: "eve".into(), minutes: Some(5) },
        Moderation::Unmute { name: "eve".into() },
        Moderation::Op { name: "bob".into() },
        Moderation::Deop { name: "bob".into() },
        Moderation::Invite { name: "cyd".into() },
        Moderation::InviteOnly(true),
        Moderation::InviteOnly(false),
        Moderation::Topic("all things chat".into()),
        Moderation::DeleteRoom,
    ]
}

fn message(seq: u64, body: &str) -> ChatMessage {
    ChatMessage {
        room: "general".into(),
        seq,
        sender: "ada".into(),
        timestamp_ms: 1_764_650_000_123,
        body: body.into(),
    }
}

fn node_frames() -> Vec<NodeFrame> {
    let ends = PageEnds { more_before: true, more_after: false, first_seq: 1 };
    let mut frames = vec![
        NodeFrame::Welcome(Welcome {
            name: "ada".into(),
            token: [255; 16],
            account: true,
            limits: Limits {
                max_message_len: 4096,
                max_frame_len: 4608,
                max_rooms_per_connection: 64,
                history_cap: 10_000,
                direct_history_cap: 10_000,
                messages_per_second: 100,
                message_burst: 200,
                max_history_page: 500,
                requests_per_second: 50,
                request_burst: 200,
                presence_limit: 500,
            },
        }),
        NodeFrame::Rooms {
            rooms: vec![
                RoomInfo {
                    name: "general".into(),
                    last_seq: 42,
                    members: 3,
                    topic: "hi".into(),
                    unread: Some(7),
                },
                RoomInfo {
                    name: "random".into(),
                    last_seq: 0,
                    members: 0,
                    topic: String::new(),
                    unread: None,
                },
            ],
        },
        NodeFrame::Rooms { rooms: vec![] },
        NodeFrame::Members { room: "general".into(), names: vec!["ada".into(), "bob".into()] },
        NodeFrame::Joined { room: "general".into(), last_seq: 42, gap: None, topic: String::new() },
        NodeFrame::Joined {
            room: "general".into(),
            last_seq: 42,
            gap: Some(Gap { first: 1, last: 9 }),
            topic: "t".into(),
        },
        NodeFrame::Message(message(1, "hello")),
        NodeFrame::Message(message(300_000_000_000, "𝄞 émoji 👋 and RTL שלום")),
        NodeFrame::Ack { client_id: 7, seq: 43 },
        NodeFrame::HistoryEnd(ends),
        NodeFrame::Page { request_id: 3, messages: vec![message(2, "a"), message(3, "b")], ends },
        NodeFrame::Page {
            request_id: 4,
            messages: vec![],
            ends: PageEnds { more_before: false, more_after: true, first_seq: 0 },
        },
        NodeFrame::Arrived { name: "bob".into() },
        NodeFrame::RoomCreated { room: "new-room".into(), existed: false },
        NodeFrame::Registered { name: "ada".into() },
        NodeFrame::PasswordChanged { sessions_ended: 2 },
        NodeFrame::LoggedOut,
        NodeFrame::Moderated { room: "general".into() },
        NodeFrame::Marked { room: "general".into(), seq: 43 },
    ];
    for reason in
        [LeftReason::Left, LeftReason::Disconnected, LeftReason::TimedOut, LeftReason::Dropped]
    {
        frames.push(NodeFrame::Left { name: "bob".into(), reason });
    }
    for action in moderations() {
        frames.push(NodeFrame::RoomEvent { by: "ada".into(), action });
    }
    for code in error_codes() {
        frames.push(NodeFrame::Error(ErrorFrame::new(code, format!("{code:?} happened"))));
    }
    frames.push(NodeFrame::Error(ErrorFrame {
        code: ErrorCode::TooSlow,
        message: "too slow".into(),
        client_id: Some(9),
        last_seq: Some(41),
        retry_after_ms: Some(1500),
    }));
    frames
}

/// Every error code, in the enum's order.
fn error_codes() -> Vec<ErrorCode> {
    use ErrorCode::*;
    let all = vec![
        NameTaken,
        InvalidName,
        UnknownRoom,
        InvalidRoomName,
        AlreadyJoined,
        TooManyRooms,
        MessageTooLong,
        EmptyMessage,
        TooSlow,
        HistoryUnavailable,
        ProtocolViolation,
        ShuttingDown,
        SlowDown,
        NotAllowed,
        LoginRequired,
        WrongPassword,
        UnknownAccount,
        NameRegistered,
        TooManyLogins,
        AccountRequired,
        InvalidPassword,
        NotLoggedIn,
        Banned,
        InviteOnly,
        Muted,
        Kicked,
        NotOperator,
        MaybeStored,
    ];
    // No code after the last: the variant after it does not decode.
    assert!(postcard::from_bytes::<ErrorCode>(&[all.len() as u8]).is_err(), "a new error code");
    all
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn vectors() -> String {
    let mut entries = Vec::new();
    for frame in client_frames() {
        let bytes = codec::encode(&frame, usize::MAX).expect("encodes");
        entries
            .push(serde_json::json!({"direction": "client", "frame": frame, "hex": hex(&bytes)}));
    }
    for frame in node_frames() {
        let bytes = codec::encode(&frame, usize::MAX).expect("encodes");
        entries.push(serde_json::json!({"direction": "node", "frame": frame, "hex": hex(&bytes)}));
    }
    let mut text = serde_json::to_string_pretty(&entries).expect("json");
    text.push('\n');
    text
}

#[test]
fn the_pages_vectors_are_the_frames_of_chat_proto() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/test/vectors.json");
    let made = vectors();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(&path, &made).expect("vectors written");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == made,
        "web/test/vectors.json is not what chat-proto encodes now: run \
         `UPDATE_VECTORS=1 cargo test -p chat-proto --test vectors`, then make web/src/codec.ts \
         pass `npm test` in web/"
    );
}
