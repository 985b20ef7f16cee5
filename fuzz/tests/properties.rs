//! Property tests, in CI: the codec round trip for any frame, the decoder and the room core
//! on random bytes, and the room core over 200 seeded long runs.

use bytes::BytesMut;
use chat_proto::{
    Anchor, ChatMessage, ClientFrame, ErrorCode, ErrorFrame, Gap, NodeFrame, PageEnds, codec,
};
use proptest::prelude::*;

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (".{0,40}", any::<Option<[u8; 16]>>()).prop_map(|(name, resume)| ClientFrame::Hello {
            name,
            resume,
            login: None
        }),
        Just(ClientFrame::ListRooms),
        ".{0,40}".prop_map(|room| ClientFrame::Who { room }),
        (".{0,40}", any::<Option<u64>>(), any::<u32>())
            .prop_map(|(room, after, limit)| ClientFrame::Join { room, after, limit }),
        (any::<u64>(), ".{0,300}")
            .prop_map(|(client_id, body)| ClientFrame::Send { client_id, body }),
        (any::<u64>(), anchor(), any::<u32>()).prop_map(|(request_id, anchor, limit)| {
            ClientFrame::History { request_id, anchor, limit }
        }),
    ]
}

fn anchor() -> impl Strategy<Value = Anchor> {
    prop_oneof![
        Just(Anchor::Latest),
        any::<u64>().prop_map(Anchor::Before),
        any::<u64>().prop_map(Anchor::After),
        any::<u64>().prop_map(Anchor::Around),
    ]
}

fn page_ends() -> impl Strategy<Value = PageEnds> {
    (any::<bool>(), any::<bool>(), any::<u64>()).prop_map(|(more_before, more_after, first_seq)| {
        PageEnds { more_before, more_after, first_seq }
    })
}

fn node_frame() -> impl Strategy<Value = NodeFrame> {
    let codes = prop::sample::select(vec![
        ErrorCode::NameTaken,
        ErrorCode::UnknownRoom,
        ErrorCode::TooSlow,
        ErrorCode::SlowDown,
        ErrorCode::ProtocolViolation,
    ]);
    prop_oneof![
        (".{0,40}", any::<u64>(), ".{0,20}", any::<u64>(), ".{0,300}").prop_map(
            |(room, seq, sender, timestamp_ms, body)| {
                NodeFrame::Message(ChatMessage { room, seq, sender, timestamp_ms, body })
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(client_id, seq)| NodeFrame::Ack { client_id, seq }),
        (".{0,40}", any::<u64>(), any::<Option<(u64, u64)>>(), ".{0,40}").prop_map(
            |(room, last_seq, gap, topic)| {
                let gap = gap.map(|(first, last)| Gap { first, last });
                NodeFrame::Joined { room, last_seq, gap, topic }
            }
        ),
        (codes, ".{0,80}", any::<Option<u64>>(), any::<Option<u64>>()).prop_map(
            |(code, message, client_id, last_seq)| {
                NodeFrame::Error(ErrorFrame {
                    code,
                    message,
                    client_id,
                    last_seq,
                    retry_after_ms: None,
                })
            }
        ),
        (".{0,40}", prop::collection::vec(".{0,20}", 0..10))
            .prop_map(|(room, names)| NodeFrame::Members { room, names }),
        page_ends().prop_map(NodeFrame::HistoryEnd),
        (any::<u64>(), page_ends(), ".{0,40}", any::<u64>(), ".{0,100}").prop_map(
            |(request_id, ends, room, seq, body)| {
                let message =
                    ChatMessage { room, seq, sender: "ada".into(), timestamp_ms: 1, body };
                NodeFrame::Page { request_id, messages: vec![message], ends }
            }
        ),
    ]
}

/// Encodes `frames` back to back, then decodes them from pieces of `step` bytes.
fn round_trip<T>(frames: &[T], step: usize) -> Vec<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut wire = Vec::new();
    for frame in frames {
        wire.extend_from_slice(&codec::encode(frame, 4096).expect("encodes"));
    }
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for piece in wire.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec::decode::<T>(&mut buf, 4096).expect("decodes") {
            decoded.push(frame);
        }
    }
    assert!(buf.is_empty(), "nothing left over");
    decoded
}

proptest! {
    #[test]
    fn client_frames_survive_the_codec(frames in prop::collection::vec(client_frame(), 1..8), step in 1usize..64) {
        prop_assert_eq!(round_trip(&frames, step), frames);
    }

    #[test]
    fn node_frames_survive_the_codec(frames in prop::collection::vec(node_frame(), 1..8), step in 1usize..64) {
        prop_assert_eq!(round_trip(&frames, step), frames);
    }

    #[test]
    fn the_send_id_is_read_from_the_head_of_any_send(client_id in any::<u64>(), body in ".{0,100}") {
        let encoded = codec::encode(&ClientFrame::Send { client_id, body }, 4096).expect("encodes");
        let head = &encoded[codec::PREFIX_LEN..(codec::PREFIX_LEN + 16).min(encoded.len())];
        prop_assert_eq!(ClientFrame::send_id_from_head(head), Some(client_id));
    }

    #[test]
    fn the_decoder_takes_any_bytes(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        chat_fuzz::frames::run(&data);
    }

    #[test]
    fn the_decoder_takes_valid_frames_with_damage(
        frames in prop::collection::vec(client_frame(), 1..6),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut data = vec![7];
        for frame in &frames {
            data.extend_from_slice(&codec::encode(frame, 4096).expect("encodes"));
        }
        for (at, byte) in damage {
            let at = at.index(data.len());
            data[at] = byte;
        }
        chat_fuzz::frames::run(&data);
    }

    #[test]
    fn the_room_core_matches_the_model_on_any_events(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        chat_fuzz::room_core::run(&data);
    }
}

/// Long runs from fixed seeds: reproducible, and long enough to reach deep states.
#[test]
fn the_room_core_matches_the_model_over_seeded_long_runs() {
    for seed in 1..=200u64 {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let data: Vec<u8> = (0..2_000)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        chat_fuzz::room_core::run(&data);
    }
}
