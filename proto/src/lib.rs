//! The chat wire protocol: the frames that client and node exchange, and the codec that turns
//! them into bytes.
//!
//! # Layout
//! - [`frame`]: the frames. [`ClientFrame`] flows from client to node, [`NodeFrame`] back.
//! - [`codec`]: length-prefixed postcard encoding; the length is checked against the limit
//!   before anything is allocated.
//! - [`codes`]: the numbers that travel outside frames: ALPN, connection close codes and
//!   stream reset codes.
//! - `io` (feature `io`): read and write frames over any tokio `AsyncRead`/`AsyncWrite`.
//!
//! Architecture invariant: this crate knows nothing of QUIC, sockets or the room logic.

pub mod codec;
pub mod codes;
pub mod frame;
#[cfg(feature = "io")]
pub mod io;

pub use codec::{FrameError, decode, encode};
pub use frame::*;
