//! The frame decoder fed arbitrary bytes, as a node reads them off a stream: in pieces of
//! arbitrary size, against a size limit. Whatever comes in, decoding must not panic nor
//! allocate past the limit, and every frame it accepts must encode back to a frame that
//! decodes to the same value.

use bytes::BytesMut;
use chat_proto::{ClientFrame, NodeFrame, codec};
use serde::{Serialize, de::DeserializeOwned};

/// The frame limit the driver reads with: small, so that long prefixes are exercised.
const LIMIT: usize = 1024;

/// Decodes `data` as a stream of client frames and as one of node frames. The first byte
/// sets how many bytes arrive at a time.
pub fn run(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else { return };
    let step = usize::from(step % 32) + 1;
    stream::<ClientFrame>(rest, step);
    stream::<NodeFrame>(rest, step);
    let _ = ClientFrame::send_id_from_head(rest);
}

fn stream<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8], step: usize) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match codec::decode::<T>(&mut buf, LIMIT) {
                Ok(Some(frame)) => round_trip(&frame),
                Ok(None) => break,
                // A stream with a bad frame ends here, as the node ends it.
                Err(_) => return,
            }
        }
        assert!(buf.len() < LIMIT + codec::PREFIX_LEN + step, "the buffer stays bounded");
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(frame: &T) {
    let encoded = codec::encode(frame, codec::MAX_NODE_FRAME_LEN).expect("a decoded frame encodes");
    let mut buf = BytesMut::from(&encoded[..]);
    let again = codec::decode::<T>(&mut buf, codec::MAX_NODE_FRAME_LEN)
        .expect("an encoded frame decodes")
        .expect("whole");
    assert_eq!(&again, frame);
    assert!(buf.is_empty());
}
