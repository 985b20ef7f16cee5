//! Room and user names as NATS subject tokens and key-value keys.
//!
//! Names hold letters, digits, `-`, `_` and `.` (see `chat_core::names`). A `.` separates
//! subject tokens, so it is written as `=`, which names never hold: the mapping is reversible
//! and keeps names readable in `nats` tools.

/// The subjects of every room's messages.
pub const ROOMS_WILDCARD: &str = "chat.room.>";

/// The subject of one room's messages.
pub fn room_subject(room: &str) -> String {
    format!("chat.room.{}", token(room))
}

/// A name as one subject token or key part.
pub fn token(name: &str) -> String {
    name.replace('.', "=")
}

/// The name a [`token`] was made from.
pub fn name(token: &str) -> String {
    token.replace('=', ".")
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
    }
}
