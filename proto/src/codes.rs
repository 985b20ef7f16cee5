//! Numbers that travel outside frames: the ALPN string, the application error codes with which
//! the node closes a connection, and the codes with which a room stream is reset.
//!
//! These are part of the protocol: once published, a code keeps its meaning.

/// The ALPN protocol name; its suffix is the protocol version. A client speaking another
/// version fails the TLS handshake instead of misreading frames.
pub const ALPN: &[u8] = b"chat/2";

/// Application error codes used to close a whole connection.
pub mod close {
    /// The client said goodbye, or the node closed an idle session.
    pub const NORMAL: u32 = 0;
    /// The peer broke the protocol: an undecodable frame, a frame on the wrong stream, a
    /// frame over the size limit.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The user name in the hello is already online.
    pub const NAME_TAKEN: u32 = 2;
    /// The same user reconnected with its session token; this older connection is replaced.
    pub const SESSION_REPLACED: u32 = 3;
    /// The node is shutting down; reconnect later or to another node.
    pub const GOING_AWAY: u32 = 4;
    /// The hello was refused for another reason (an invalid name, too many connections).
    pub const REFUSED: u32 = 5;
    /// The hello did not arrive in time.
    pub const HELLO_TIMEOUT: u32 = 6;
    /// The connection went on sending far over its rate limit after being told to slow down.
    pub const RATE_LIMITED: u32 = 7;
    /// The name is a registered account, and the hello did not log in to it (no password,
    /// or the node takes only accounts and the name has none).
    pub const LOGIN_REQUIRED: u32 = 8;
    /// The hello's password was wrong, or named no account.
    pub const LOGIN_FAILED: u32 = 9;
    /// Too many failed logins for the account or from the address; try again later.
    pub const TOO_MANY_LOGINS: u32 = 10;
    /// The node was full, and this connection, which had joined no room since its hello, was
    /// closed to make room for a new one.
    pub const MADE_ROOM: u32 = 11;
}

/// Codes with which the node resets (stops writing) a room stream.
pub mod reset {
    /// The member did not read its room stream fast enough and was dropped from the room.
    /// The last frame before the reset is an error frame that carries the last sequence
    /// number delivered, so that the client can rejoin after it.
    pub const TOO_SLOW: u32 = 1;
}
