//! Room and user names as NATS subject tokens and key-value keys.
//!
//! Names hold letters, digits, `-`, `_` and `.` (see `chat_core::names`). A `.` separates
//! subject tokens, so it is written as `=`, which names never hold; a direct conversation's
//! `@` and `+` (`@ada+bob`), which key-value keys cannot hold, are both written `/`
//! (`/ada/bob`): a leading `/` is the `@`, the next the `+`. The mapping is reversible and
//! keeps names readable in `nats` tools.

/// The subjects of every room's messages.
pub const ROOMS_WILDCARD: &str = "chat.room.>";
/// The subjects of every direct conversation's messages.
pub const DIRECT_WILDCARD: &str = "chat.dm.>";
/// Where the stream republishes each room's messages once it has stored them, with their
/// numbers: plain NATS subjects that the nodes with members there subscribe to.
pub const LIVE_ROOMS_WILDCARD: &str = "chat.live.room.>";
/// Where the direct conversations' stream republishes its messages.
pub const LIVE_DIRECT_WILDCARD: &str = "chat.live.dm.>";

/// Whether `room` names a direct conversation (whose messages have a stream of their own).
pub fn is_direct(room: &str) -> bool {
    room.starts_with(chat_core::names::DIRECT_PREFIX)
}

/// The subject of one room's (or direct conversation's) messages.
pub fn room_subject(room: &str) -> String {
    match is_direct(room) {
        true => format!("chat.dm.{}", token(room)),
        false => format!("chat.room.{}", token(room)),
    }
}

/// The subject on which the stream republishes a room's messages.
pub fn live_subject(room: &str) -> String {
    format!("chat.live.{}", &room_subject(room)["chat.".len()..])
}

/// The room a message subject (a room's or a direct conversation's) names.
pub fn room_of(subject: &str) -> Option<String> {
    let token = subject.strip_prefix("chat.room.").or_else(|| subject.strip_prefix("chat.dm."))?;
    Some(name(token))
}

/// A name as one subject token or key part.
pub fn token(name: &str) -> String {
    name.replace('.', "=").replace(['@', '+'], "/")
}

/// The name a [`token`] was made from.
pub fn name(token: &str) -> String {
    let name = token.replace('=', ".");
    match name.strip_prefix('/') {
        Some(pair) => format!("@{}", pair.replacen('/', "+", 1)),
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_dots_round_trip_into_one_token() {
        let encoded = token("team.ops-1_x");
        assert!(!encoded.contains('.'));
        assert_eq!(name(&encoded), "team.ops-1_x");
        assert_eq!(room_subject("a.b"), "chat.room.a=b");
        assert_eq!(token("@ada.l+bob"), "/ada=l/bob");
        assert_eq!(name(&token("@ada.l+bob")), "@ada.l+bob");
        assert_eq!(room_subject("@ada+bob"), "chat.dm./ada/bob");
        assert_eq!(live_subject("a.b"), "chat.live.room.a=b");
        assert_eq!(live_subject("@ada+bob"), "chat.live.dm./ada/bob");
        assert_eq!(room_of(&room_subject("@ada.l+bob")).as_deref(), Some("@ada.l+bob"));
        assert_eq!(room_of(&room_subject("a.b")).as_deref(), Some("a.b"));
        assert_eq!(room_of("chat.notice.a"), None);
    }
}
