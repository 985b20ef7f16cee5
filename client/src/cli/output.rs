//! What the `chat` program prints: a line per event, for a person or (with `--json`) as one
//! JSON object per line for scripts.
//!
//! On a terminal the lines go through the line editor's printer, so that they appear above
//! the prompt instead of through the line being typed.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use chat_client::{ChatMessage, ClientError, Gap, Seq};
use chat_proto::RoomInfo;
use serde_json::json;

/// Where printed lines go.
pub trait Sink: Send {
    fn line(&mut self, line: String);
}

struct Stdout;

impl Sink for Stdout {
    fn line(&mut self, line: String) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

impl<P: rustyline::ExternalPrinter + Send> Sink for P {
    fn line(&mut self, line: String) {
        let _ = self.print(format!("{line}\n"));
    }
}

/// Prints events. Cheap to clone.
#[derive(Clone)]
pub struct Output {
    json: bool,
    sink: Arc<Mutex<Box<dyn Sink>>>,
}

impl Output {
    pub fn stdout(json: bool) -> Self {
        Self { json, sink: Arc::new(Mutex::new(Box::new(Stdout))) }
    }

    /// From now on, print through `sink` (the line editor's printer).
    pub fn redirect(&self, sink: Box<dyn Sink>) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }

    fn emit(&self, value: serde_json::Value, human: impl FnOnce() -> String) {
        let line = if self.json { value.to_string() } else { human() };
        self.sink.lock().unwrap_or_else(PoisonError::into_inner).line(line);
    }

    pub fn joined(&self, room: &str, last_seq: Seq, gap: Option<Gap>) {
        self.emit(json!({"event": "joined", "room": room, "last_seq": last_seq}), || {
            format!("-- joined {room} (newest message #{last_seq})")
        });
        if let Some(gap) = gap {
            self.gap(room, gap);
        }
    }

    pub fn gap(&self, room: &str, gap: Gap) {
        self.emit(
            json!({"event": "gap", "room": room, "first": gap.first, "last": gap.last}),
            || {
                format!(
                    "-- {room}: messages #{}..#{} are no longer in the history and were missed",
                    gap.first, gap.last
                )
            },
        );
    }

    pub fn message(&self, message: &ChatMessage, history: bool) {
        let kind = if history { "history" } else { "message" };
        self.emit(
            json!({
                "event": kind,
                "room": message.room,
                "seq": message.seq,
                "sender": message.sender,
                "timestamp_ms": message.timestamp_ms,
                "body": message.body,
            }),
            || {
                format!(
                    "[{} #{} {}] {}: {}",
                    message.room,
                    message.seq,
                    clock(message.timestamp_ms),
                    message.sender,
                    message.body
                )
            },
        );
    }

    pub fn ack(&self, room: &str, seq: Seq) {
        self.emit(json!({"event": "ack", "room": room, "seq": seq}), || {
            format!("-- sent to {room} as #{seq}")
        });
    }

    /// An ack in a conversation: scripts get the event; a person already sees the message
    /// come back with its number.
    pub fn stored(&self, room: &str, seq: Seq) {
        if self.json {
            self.ack(room, seq);
        }
    }

    pub fn left(&self, room: &str) {
        self.emit(json!({"event": "left", "room": room}), || format!("-- left {room}"));
    }

    pub fn rooms(&self, rooms: &[RoomInfo]) {
        let list: Vec<_> = rooms
            .iter()
            .map(|r| json!({"name": r.name, "last_seq": r.last_seq, "members": r.members}))
            .collect();
        self.emit(json!({"event": "rooms", "rooms": list}), || {
            let lines: Vec<String> = rooms
                .iter()
                .map(|r| format!("  {} ({} online, newest #{})", r.name, r.members, r.last_seq))
                .collect();
            format!("-- rooms:\n{}", lines.join("\n"))
        });
    }

    pub fn who(&self, room: &str, names: &[String]) {
        self.emit(json!({"event": "who", "room": room, "names": names}), || {
            format!(
                "-- in {room}: {}",
                if names.is_empty() { "nobody".into() } else { names.join(", ") }
            )
        });
    }

    pub fn info(&self, text: &str) {
        self.emit(json!({"event": "info", "message": text}), || format!("-- {text}"));
    }

    pub fn error(&self, room: Option<&str>, error: &ClientError) {
        self.emit(
            json!({"event": "error", "room": room, "code": error.exit_code(), "message": error.to_string()}),
            || match room {
                Some(room) => format!("!! {room}: {error}"),
                None => format!("!! {error}"),
            },
        );
    }

    /// A problem with what the user typed, not with the chat.
    pub fn usage(&self, text: &str) {
        self.emit(json!({"event": "error", "message": text}), || format!("!! {text}"));
    }
}

/// `HH:MM:SS` in UTC.
fn clock(timestamp_ms: u64) -> String {
    let secs = timestamp_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
