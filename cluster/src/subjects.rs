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
    }
}
