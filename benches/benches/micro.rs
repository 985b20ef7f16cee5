//! Micro-benchmarks of the hot path's parts, with criterion: a message frame's encode and
//! decode, the room core's fan-out step to 100 members, and a history append with and
//! without the sync. `cargo bench -p chat-bench --bench micro`.

use std::cell::Cell;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use chat_core::{ConnId, Core, Full, Mailbox, MemberId, RoomName, Rules, Seq};
use chat_history::{Config, Durability, History, Message};
use chat_proto::{ChatMessage, NodeFrame, codec};
use criterion::{Criterion, criterion_group, criterion_main};

fn message_frame() -> NodeFrame {
    NodeFrame::Message(ChatMessage {
        room: "general".into(),
        seq: 123_456,
        sender: "ada".into(),
        timestamp_ms: 1_790_000_000_000,
        body: "x".repeat(100),
    })
}

fn frames(c: &mut Criterion) {
    let frame = message_frame();
    c.bench_function("encode a 100-byte message frame", |b| {
        b.iter(|| codec::encode(black_box(&frame), codec::MAX_NODE_FRAME_LEN))
    });
    let encoded = codec::encode(&frame, codec::MAX_NODE_FRAME_LEN).expect("encodes");
    c.bench_function("decode a 100-byte message frame", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&encoded[..]);
            codec::decode::<NodeFrame>(black_box(&mut buf), codec::MAX_NODE_FRAME_LEN)
        })
    });
}

/// A mailbox that only counts, so that the core's own work is what is timed.
#[derive(Default)]
struct Counter(Cell<u64>);

impl Mailbox for Counter {
    type Message = Bytes;
    fn encode(_frame: &chat_proto::NodeFrame) -> Bytes {
        Bytes::new()
    }
    fn offer(&self, _seq: Seq, message: &Bytes) -> Result<(), Full> {
        black_box(message);
        self.0.set(self.0.get() + 1);
        Ok(())
    }
    fn reply(&self, message: Bytes) -> Result<(), Full> {
        black_box(message);
        Ok(())
    }
    fn space(&self) -> usize {
        usize::MAX
    }
    fn evict(&self, _last_seq: Seq) {}
    fn remove(&self, _frame: Self::Message) {}
}

fn core_fanout(c: &mut Criterion) {
    let mut core = Core::new(Rules::new(4096, 4));
    let room = RoomName::parse("general").expect("valid");
    core.add_room(room.clone(), 0);
    for i in 0..100u64 {
        core.connect(
            ConnId(i),
            &format!("user{i}"),
            None,
            [0; 16],
            chat_core::accounts::Identity::Guest,
            std::time::Instant::now(),
        )
        .expect("online");
        core.join(ConnId(i), MemberId(i), "general", Counter::default()).expect("joined");
    }
    let frame = codec::encode(&message_frame(), codec::MAX_NODE_FRAME_LEN).expect("encodes");
    let mut seq = 0;
    c.bench_function("core: commit one message to 100 members", |b| {
        b.iter(|| {
            seq += 1;
            core.committed(room.as_str(), seq, frame.clone())
        })
    });
}

fn history_append(c: &mut Criterion) {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(Config {
            path: dir.path().into(),
            cap: 10_000,
            cap_by_prefix: Vec::new(),
            durability,
        })
        .expect("opens");
        history.create_room("general").expect("room");
        let message = Message { sender: "ada".into(), timestamp_ms: 0, body: "x".repeat(100) };
        c.bench_function(&format!("history: one append, waited for, {durability:?}"), |b| {
            b.iter(|| history.append_blocking("general", message.clone()).expect("stored"))
        });
        history.close().expect("closes");
    }
}

criterion_group!(benches, frames, core_fanout, history_append);
criterion_main!(benches);
