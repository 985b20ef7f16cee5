//! The frame codec: a big-endian `u32` length, then that many bytes of postcard.
//!
//! Decoding checks the length against the caller's limit before it allocates or waits for
//! the body, so a peer cannot make the reader reserve memory by announcing a large frame.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

/// Size of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// The largest message body any node may be configured to accept.
pub const MAX_MESSAGE_LEN_LIMIT: usize = 1 << 20;

/// Room for the fields around a body in a frame (names, numbers, tags).
pub const FRAME_OVERHEAD: usize = 512;

/// The largest frame a node sends; clients read node frames up to this length.
pub const MAX_NODE_FRAME_LEN: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    #[error("a frame took longer than {0:?} to arrive whole; the stream was given up")]
    Stalled(std::time::Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes `frame` with its length prefix, refusing one whose body exceeds `max_len`.
///
/// # Errors
/// [`FrameError::TooLong`] when the encoded body is over `max_len`.
pub fn encode<T: Serialize>(frame: &T, max_len: usize) -> Result<Bytes, FrameError> {
    let len = postcard::experimental::serialized_size(frame)?;
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
    buf.put_u32(len as u32);
    buf.resize(PREFIX_LEN + len, 0);
    postcard::to_slice(frame, &mut buf[PREFIX_LEN..])?;
    Ok(buf.freeze())
}

/// Takes one whole frame off the front of `buf`, if one is there.
///
/// Returns `Ok(None)` when more bytes are needed; then `buf` is left untouched.
///
/// # Errors
/// [`FrameError::TooLong`] as soon as the prefix announces more than `max_len`, and
/// [`FrameError::Malformed`] for a body that is not a `T`.
pub fn decode<T: DeserializeOwned>(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<T>, FrameError> {
    let Some(len) = peek_len(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < PREFIX_LEN + len {
        return Ok(None);
    }
    let frame = buf.split_to(PREFIX_LEN + len);
    Ok(Some(postcard::from_bytes(&frame[PREFIX_LEN..])?))
}

/// Reads the length prefix, if complete, and checks it against the limit.
pub(crate) fn peek_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, NodeFrame};

    #[test]
    fn a_borrowed_message_frame_encodes_as_the_owned_one() {
        let body = "é".repeat(300);
        let owned = NodeFrame::Message(crate::ChatMessage {
            room: "general".into(),
            seq: 1 << 40,
            sender: "ada".into(),
            timestamp_ms: 1_796_000_000_000,
            body: body.clone(),
        });
        let borrowed =
            crate::MessageFrameRef::new("general", 1 << 40, "ada", 1_796_000_000_000, &body);
        let bytes = encode(&borrowed, usize::MAX).expect("encodes");
        assert_eq!(bytes, encode(&owned, usize::MAX).expect("encodes"));
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        assert_eq!(decode::<NodeFrame>(&mut buf, usize::MAX).expect("decodes"), Some(owned));
    }

    #[test]
    fn round_trip_across_split_reads() {
        let frames = [
            ClientFrame::Hello { name: "ada".into(), resume: Some([7; 16]), login: None },
            ClientFrame::Join { room: "general".into(), after: Some(41), limit: 50 },
            ClientFrame::Send { client_id: 9, body: "héllo".into() },
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            wire.extend_from_slice(&encode(frame, 1024).expect("encodes"));
        }
        // Feed the bytes one at a time: the decoder must wait, never misparse.
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(frame) = decode::<ClientFrame>(&mut buf, 1024).expect("decodes") {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = decode::<ClientFrame>(&mut buf, 1024).expect_err("too long");
        assert!(matches!(err, FrameError::TooLong { len, max: 1024 } if len == u32::MAX as usize));
    }

    #[test]
    fn encode_refuses_a_frame_over_the_limit() {
        let frame = ClientFrame::Send { client_id: 1, body: "x".repeat(100) };
        assert!(matches!(encode(&frame, 50), Err(FrameError::TooLong { max: 50, .. })));
    }

    #[test]
    fn the_client_id_of_a_send_is_read_from_its_first_bytes() {
        let frame = ClientFrame::Send { client_id: 300_000, body: "x".repeat(1000) };
        let bytes = encode(&frame, 2000).expect("encodes");
        assert_eq!(
            ClientFrame::send_id_from_head(&bytes[PREFIX_LEN..PREFIX_LEN + 16]),
            Some(300_000)
        );
        let join = encode(&ClientFrame::Join { room: "r".into(), after: None, limit: 50 }, 100)
            .expect("encodes");
        assert_eq!(ClientFrame::send_id_from_head(&join[PREFIX_LEN..]), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(decode::<NodeFrame>(&mut buf, 64), Err(FrameError::Malformed(_))));
    }
}
