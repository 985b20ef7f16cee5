//! What the `chat` program prints: a line per event, for a person or (with `--json`) as one
//! JSON object per line for scripts.
//!
//! On a terminal the lines go through the terminal's printer, so that they appear above the
//! prompt instead of through the line being typed. A person's lines never carry a control
//! character from a message: a sender cannot move the cursor or clear the screen.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use chat_client::{ChatMessage, ClientError, Gap, LeftReason, Moderation, PageEnds, Seq};
use chat_proto::RoomInfo;
use serde_json::json;

/// Where printed lines go.
pub trait Sink: Send {
    fn line(&mut self, line: String);

    /// Shows `prompt` where the user types, if there is such a place.
    fn prompt(&mut self, _prompt: &str) {}
}

struct Stdout;

impl Sink for Stdout {
    fn line(&mut self, line: String) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Prints events. Cheap to clone.
#[derive(Clone)]
pub struct Output {
    json: bool,
    sink: Arc<Mutex<Box<dyn Sink>>>,
    /// The user's name, once connected: a direct conversation is shown as `@` and the other.
    me: Arc<std::sync::OnceLock<String>>,
}

impl Output {
    pub fn stdout(json: bool) -> Self {
        Self { json, sink: Arc::new(Mutex::new(Box::new(Stdout))), me: Arc::default() }
    }

    /// From now on, show direct conversations as `me` sees them.
    pub fn speak_as(&self, me: &str) {
        let _ = self.me.set(me.to_owned());
    }

    /// How a person sees `room`: a direct conversation (`@ada+bob`) as `@` and the other user;
    /// JSON keeps the node's name.
    pub fn shown(&self, room: &str) -> String {
        match (chat_core::RoomName::parse(room), self.me.get()) {
            (Ok(name), Some(me)) if name.direct_pair().is_some() => name.shown_to(me),
            _ => room.to_owned(),
        }
    }

    /// From now on, print through `sink` (the terminal's printer).
    pub fn redirect(&self, sink: Box<dyn Sink>) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }

    fn emit(&self, value: serde_json::Value, human: impl FnOnce() -> String) {
        let line = if self.json { value.to_string() } else { printable(&human()) };
        self.sink.lock().unwrap_or_else(PoisonError::into_inner).line(line);
    }

    /// A room joined; `target` when typed lines now go there.
    pub fn joined(&self, room: &str, last_seq: Seq, gap: Option<Gap>, target: bool) {
        let shown = self.shown(room);
        self.emit(json!({"event": "joined", "room": room, "last_seq": last_seq}), || {
            let target = if target { format!("; typing into {shown}") } else { String::new() };
            format!("-- joined {shown} (newest message #{last_seq}){target}")
        });
        if let Some(gap) = gap {
            self.gap(room, gap);
        }
    }

    pub fn gap(&self, room: &str, gap: Gap) {
        let shown = self.shown(room);
        self.emit(
            json!({"event": "gap", "room": room, "first": gap.first, "last": gap.last}),
            || {
                format!(
                    "-- {shown}: messages #{}..#{} are no longer in the history and were missed",
                    gap.first, gap.last
                )
            },
        );
    }

    /// The line between a room's history and its live messages.
    pub fn history_end(&self, room: &str, ends: PageEnds) {
        let shown = self.shown(room);
        self.emit(
            json!({"event": "history_end", "room": room, "more_before": ends.more_before, "first_seq": ends.first_seq}),
            || {
                if ends.more_before {
                    format!("-- {shown}: end of history; /history shows earlier messages")
                } else {
                    format!("-- {shown}: end of history")
                }
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
                    self.shown(&message.room),
                    message.seq,
                    clock(message.timestamp_ms),
                    message.sender,
                    message.body
                )
            },
        );
    }

    /// Someone else joined `room`.
    pub fn arrived(&self, room: &str, name: &str) {
        let shown = self.shown(room);
        self.emit(json!({"event": "arrived", "room": room, "name": name}), || {
            format!("-- {shown}: {name} joined")
        });
    }

    /// An operator, `by`, moderated `room`.
    pub fn moderated(&self, room: &str, by: &str, action: &Moderation) {
        let shown = self.shown(room);
        let for_how_long = |minutes: &Option<u32>| match minutes {
            Some(m) => format!(" for {m} min"),
            None => String::new(),
        };
        let because =
            |reason: &str| if reason.is_empty() { String::new() } else { format!(" ({reason})") };
        let (kind, name, said) = match action {
            Moderation::Kick { name, reason } => {
                ("kick", Some(name), format!("removed {name}{}", because(reason)))
            }
            Moderation::Ban { name, minutes, reason } => (
                "ban",
                Some(name),
                format!("banned {name}{}{}", for_how_long(minutes), because(reason)),
            ),
            Moderation::Unban { name } => ("unban", Some(name), format!("unbanned {name}")),
            Moderation::Mute { name, minutes } => {
                ("mute", Some(name), format!("muted {name}{}", for_how_long(minutes)))
            }
            Moderation::Unmute { name } => ("unmute", Some(name), format!("unmuted {name}")),
            Moderation::Op { name } => ("op", Some(name), format!("made {name} an operator")),
            Moderation::Deop { name } => {
                ("deop", Some(name), format!("made {name} no longer an operator"))
            }
            Moderation::Invite { name } => ("invite", Some(name), format!("invited {name}")),
            Moderation::InviteOnly(true) => {
                ("invite_only", None, "made the room invite-only".to_owned())
            }
            Moderation::InviteOnly(false) => {
                ("invite_only", None, "opened the room to everyone".to_owned())
            }
            Moderation::Topic(topic) => {
                ("topic", None, format!("set the topic: {}", printable(topic)))
            }
            Moderation::DeleteRoom => ("delete", None, "deleted the room".to_owned()),
        };
        let event = json!({"event": "moderation", "room": room, "by": by, "action": kind, "name": name, "detail": said});
        self.emit(event, || format!("-- {shown}: {by} {said}"));
    }

    /// `room`'s topic, on joining it.
    pub fn topic(&self, room: &str, topic: &str) {
        let shown = self.shown(room);
        self.emit(json!({"event": "topic", "room": room, "topic": topic}), || {
            format!("-- {shown}: topic: {}", printable(topic))
        });
    }

    /// Someone else left `room`.
    pub fn departed(&self, room: &str, name: &str, reason: LeftReason) {
        let shown = self.shown(room);
        let code = match reason {
            LeftReason::Left => "left",
            LeftReason::Disconnected => "disconnected",
            LeftReason::TimedOut => "timed_out",
            _ => "dropped",
        };
        self.emit(json!({"event": "departed", "room": room, "name": name, "reason": code}), || {
            match reason {
                LeftReason::Left => format!("-- {shown}: {name} left"),
                other => format!("-- {shown}: {name} left ({})", other.as_str()),
            }
        });
    }

    pub fn ack(&self, room: &str, seq: Seq) {
        let shown = self.shown(room);
        self.emit(json!({"event": "ack", "room": room, "seq": seq}), || {
            format!("-- sent to {shown} as #{seq}")
        });
    }

    /// An ack in a conversation: scripts get the event; a person already sees the message
    /// come back with its number.
    pub fn stored(&self, room: &str, seq: Seq) {
        if self.json {
            self.ack(room, seq);
        }
    }

    /// A room made, or found made already.
    pub fn created(&self, room: &str, existed: bool) {
        self.emit(json!({"event": "created", "room": room, "existed": existed}), || {
            if existed { format!("-- {room} exists already") } else { format!("-- created {room}") }
        });
    }

    pub fn left(&self, room: &str) {
        let shown = self.shown(room);
        self.emit(json!({"event": "left", "room": room}), || format!("-- left {shown}"));
    }

    pub fn rooms(&self, rooms: &[RoomInfo]) {
        let list: Vec<_> = rooms
            .iter()
            .map(|r| {
                json!({"name": r.name, "last_seq": r.last_seq, "members": r.members,
                       "topic": r.topic, "unread": r.unread})
            })
            .collect();
        self.emit(json!({"event": "rooms", "rooms": list}), || {
            let lines: Vec<String> = rooms
                .iter()
                .map(|r| {
                    let unread = match r.unread {
                        Some(0) | None => String::new(),
                        Some(n) if n >= chat_proto::UNREAD_COUNTED => format!(", {n}+ unread"),
                        Some(n) => format!(", {n} unread"),
                    };
                    let topic = if r.topic.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", printable(&r.topic))
                    };
                    format!(
                        "  {} ({} online, newest #{}{unread}){topic}",
                        self.shown(&r.name),
                        r.members,
                        r.last_seq
                    )
                })
                .collect();
            format!("-- rooms:\n{}", lines.join("\n"))
        });
    }

    pub fn who(&self, room: &str, names: &[String]) {
        let shown = self.shown(room);
        self.emit(json!({"event": "who", "room": room, "names": names}), || {
            format!(
                "-- in {shown}: {}",
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
                Some(room) => format!("!! {}: {error}", self.shown(room)),
                None => format!("!! {error}"),
            },
        );
    }

    /// A message that was not stored, with its text so that the user can send it again.
    /// `maybe` when the connection was lost before the answer: it may have been stored.
    pub fn not_sent(&self, room: &str, text: &str, error: &ClientError, maybe: bool) {
        let shown = self.shown(room);
        self.emit(
            json!({"event": "not_sent", "room": room, "body": text, "code": error.exit_code(), "message": error.to_string(), "maybe_stored": maybe}),
            || {
                let what = if maybe { "may not have been sent" } else { "was not sent" };
                format!("!! {shown}: {what} ({error}): {text}")
            },
        );
    }

    /// Where the user types: the room, and how many of the user's lines wait for the node.
    pub fn prompt(&self, room: Option<&str>, waiting: usize, reconnecting: bool) {
        let mut prompt = format!("[{}", room.map_or("no room".into(), |room| self.shown(room)));
        if reconnecting {
            prompt.push_str(" · reconnecting");
        }
        if waiting > 0 {
            prompt.push_str(&format!(" · {waiting} sending"));
        }
        prompt.push_str("]> ");
        self.sink.lock().unwrap_or_else(PoisonError::into_inner).prompt(&prompt);
    }

    /// A problem with what the user typed, not with the chat.
    pub fn usage(&self, text: &str) {
        self.emit(json!({"event": "error", "message": text}), || format!("!! {text}"));
    }
}

/// `text` with every control character that could move the cursor or change the terminal
/// shown in caret notation instead (ESC as `^[`, as `cat -v` shows it); tabs become spaces
/// and new lines stay.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => shown.push('\n'),
            '\t' => shown.push(' '),
            '\u{7f}' => shown.push_str("^?"),
            // C0 controls, `^@` to `^_`.
            c if u32::from(c) < 0x20 => {
                shown.push('^');
                shown.push(char::from(b'@' + c as u8));
            }
            // C1 controls are ESC and a letter in one: shown as the two.
            c if c.is_control() => {
                shown.push_str("^[");
                shown.push(char::from_u32(u32::from(c) - 0x40).unwrap_or('?'));
            }
            c => shown.push(c),
        }
    }
    shown
}

/// `HH:MM:SS` in UTC.
fn clock(timestamp_ms: u64) -> String {
    let secs = timestamp_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
