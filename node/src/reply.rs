//! The frames the node answers with, built in one place for every stream: a refusal as an
//! error frame, a stored message as a `Message` frame. Below `connection` and `room`, which
//! both use it.

use bytes::Bytes;
use chat_core::{Refusal, Seq};
use chat_history::Message;
use chat_proto::{ErrorFrame, MessageFrameRef, codec};
use serde::Serialize;
use tracing::warn;

/// Encodes a node frame. Node frames are built from checked input and always fit.
pub(crate) fn encode(frame: &impl Serialize) -> Bytes {
    codec::encode(frame, codec::MAX_NODE_FRAME_LEN).unwrap_or_else(|e| {
        warn!(error = %e, "a node frame did not encode");
        Bytes::new()
    })
}

/// The error frame for a refusal, answering `client_id` if it is about one send.
pub(crate) fn error_frame(refusal: &Refusal, client_id: Option<u64>) -> ErrorFrame {
    let retry_after_ms =
        refusal.retry_after().map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
    ErrorFrame { client_id, retry_after_ms, ..ErrorFrame::new(refusal.code(), refusal.to_string()) }
}

/// A message of `room` as the history stored it, as the frame its members get: encoded
/// from the record, whose text is copied once, into the frame.
pub(crate) fn message_frame(room: &str, seq: Seq, message: &Message) -> Bytes {
    encode(&MessageFrameRef::new(room, seq, &message.sender, message.timestamp_ms, &message.body))
}
