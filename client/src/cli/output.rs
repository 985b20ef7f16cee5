//! What the `chat` program shows: every event of the session as a [`Notice`], which a sink
//! shows its way: a line each for a person or (with `--json`) one JSON object a line for
//! scripts ([`Lines`]), or the full-screen view (`tui`).
//!
//! On a terminal in line mode the lines go through the terminal's printer, so that they
//! appear above the prompt instead of through the line being typed. A person's lines never
//! carry a control character from a message: a sender cannot move the cursor or clear the
//! screen.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use chat_client::{ChatMessage, ClientError, Gap, LeftReason, Moderation, PageEnds, Seq};
use chat_proto::RoomInfo;
use serde_json::json;

/// Something the session tells the user.
#[derive(Debug, Clone)]
pub enum Notice {
    /// A room joined; `target` when typed lines now go there.
    Joined {
        room: String,
        last_seq: Seq,
        gap: Option<Gap>,
        target: bool,
    },
    /// The line between a room's history and its live messages, or the end of a page.
    HistoryEnd {
        room: String,
        ends: PageEnds,
    },
    Message {
        message: ChatMessage,
        history: bool,
    },
    /// Someone else joined `room`.
    Arrived {
        room: String,
        name: String,
    },
    /// Someone else left `room`.
    Departed {
        room: String,
        name: String,
        reason: LeftReason,
    },
    /// An operator, `by`, moderated `room`.
    Moderated {
        room: String,
        by: String,
        action: Moderation,
    },
    /// `room`'s topic, on joining it.
    Topic {
        room: String,
        topic: String,
    },
    /// Messages of `room` that the history no longer has, missed.
    Gap {
        room: String,
        gap: Gap,
    },
    /// Typed lines go to `room` from now on.
    Typing {
        room: String,
    },
    /// A line typed for `room` waits to be sent: `id` names it until its ack or failure.
    Pending {
        room: String,
        id: u64,
        text: String,
    },
    /// A one-shot's message was stored as `seq`.
    Ack {
        room: String,
        seq: Seq,
    },
    /// A typed line was stored as `seq` (a person sees it come back with its number).
    Stored {
        room: String,
        seq: Seq,
        id: u64,
    },
    /// A room made, or found made already.
    Created {
        room: String,
        existed: bool,
    },
    Left {
        room: String,
    },
    Rooms(Vec<RoomInfo>),
    /// The user's direct conversations, at the start.
    Conversations(Vec<RoomInfo>),
    Who {
        room: String,
        names: Vec<String>,
    },
    Info(String),
    Error {
        room: Option<String>,
        code: i32,
        message: String,
    },
    /// A line that was not stored, with its text so that the user can send it again.
    /// `maybe` when the connection was lost before the answer: it may have been stored.
    NotSent {
        room: String,
        id: Option<u64>,
        text: String,
        code: i32,
        message: String,
        maybe: bool,
    },
    /// A problem with what the user typed, not with the chat.
    Usage(String),
    /// Where the user types, how many of the user's lines wait for the node, and whether
    /// the connection is up.
    Status {
        room: Option<String>,
        waiting: usize,
        link: Link,
    },
}

/// The state of the connection, as the status line shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Connected,
    /// Lost; `attempt` is the attempt to connect again under way (from 1).
    Reconnecting {
        attempt: u32,
    },
}

/// Where notices go.
pub trait Sink: Send {
    fn show(&mut self, notice: Notice);
}

/// Where the lines of [`Lines`] go: standard output, or the line-mode terminal's printer.
pub trait LineSink: Send {
    fn line(&mut self, line: String);

    /// Shows `prompt` where the user types, if there is such a place.
    fn prompt(&mut self, _prompt: &str) {}
}

/// Standard output, a line at a time.
pub struct Stdout;

impl LineSink for Stdout {
    fn line(&mut self, line: String) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Shows notices. Cheap to clone.
#[derive(Clone)]
pub struct Output {
    json: bool,
    sink: Arc<Mutex<Box<dyn Sink>>>,
    /// The user's name, once connected: a direct conversation is shown as `@` and the other.
    me: Arc<OnceLock<String>>,
}

impl Output {
    /// Lines on standard output: text for a person, or JSON.
    pub fn stdout(json: bool) -> Self {
        let me = Arc::new(OnceLock::new());
        let lines = Lines { json, me: Arc::clone(&me), out: Box::new(Stdout) };
        Self { json, sink: Arc::new(Mutex::new(Box::new(lines))), me }
    }

    /// From now on, show direct conversations as `me` sees them.
    pub fn speak_as(&self, me: &str) {
        let _ = self.me.set(me.to_owned());
    }

    /// The name the user speaks as, once connected.
    pub fn me(&self) -> Option<&str> {
        self.me.get().map(String::as_str)
    }

    /// How a person sees `room`: a direct conversation (`@ada+bob`) as `@` and the other
    /// user.
    pub fn shown(&self, room: &str) -> String {
        shown(room, self.me())
    }

    /// From now on, show through `sink`.
    pub fn redirect(&self, sink: Box<dyn Sink>) {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }

    /// From now on, lines go to `out` (the line-mode terminal's printer), made as before.
    pub fn redirect_lines(&self, out: Box<dyn LineSink>) {
        self.redirect(Box::new(Lines { json: self.json, me: Arc::clone(&self.me), out }));
    }

    pub fn show(&self, notice: Notice) {
        self.sink.lock().unwrap_or_else(PoisonError::into_inner).show(notice);
    }

    pub fn joined(&self, room: &str, last_seq: Seq, gap: Option<Gap>, target: bool) {
        self.show(Notice::Joined { room: room.into(), last_seq, gap, target });
    }

    pub fn history_end(&self, room: &str, ends: PageEnds) {
        self.show(Notice::HistoryEnd { room: room.into(), ends });
    }

    pub fn message(&self, message: &ChatMessage, history: bool) {
        self.show(Notice::Message { message: message.clone(), history });
    }

    pub fn arrived(&self, room: &str, name: &str) {
        self.show(Notice::Arrived { room: room.into(), name: name.into() });
    }

    pub fn moderated(&self, room: &str, by: &str, action: &Moderation) {
        self.show(Notice::Moderated { room: room.into(), by: by.into(), action: action.clone() });
    }

    pub fn topic(&self, room: &str, topic: &str) {
        self.show(Notice::Topic { room: room.into(), topic: topic.into() });
    }

    pub fn typing(&self, room: &str) {
        self.show(Notice::Typing { room: room.into() });
    }

    pub fn departed(&self, room: &str, name: &str, reason: LeftReason) {
        self.show(Notice::Departed { room: room.into(), name: name.into(), reason });
    }

    pub fn pending(&self, room: &str, id: u64, text: &str) {
        self.show(Notice::Pending { room: room.into(), id, text: text.into() });
    }

    pub fn ack(&self, room: &str, seq: Seq) {
        self.show(Notice::Ack { room: room.into(), seq });
    }

    pub fn stored(&self, room: &str, seq: Seq, id: u64) {
        self.show(Notice::Stored { room: room.into(), seq, id });
    }

    pub fn created(&self, room: &str, existed: bool) {
        self.show(Notice::Created { room: room.into(), existed });
    }

    pub fn left(&self, room: &str) {
        self.show(Notice::Left { room: room.into() });
    }

    pub fn rooms(&self, rooms: &[RoomInfo]) {
        self.show(Notice::Rooms(rooms.to_vec()));
    }

    pub fn who(&self, room: &str, names: &[String]) {
        self.show(Notice::Who { room: room.into(), names: names.to_vec() });
    }

    pub fn info(&self, text: &str) {
        self.show(Notice::Info(text.into()));
    }

    pub fn error(&self, room: Option<&str>, error: &ClientError) {
        let (code, message) = (error.exit_code(), error.to_string());
        self.show(Notice::Error { room: room.map(Into::into), code, message });
    }

    pub fn not_sent(
        &self,
        room: &str,
        id: Option<u64>,
        text: &str,
        error: &ClientError,
        maybe: bool,
    ) {
        let (room, text) = (room.into(), text.into());
        let (code, message) = (error.exit_code(), error.to_string());
        self.show(Notice::NotSent { room, id, text, code, message, maybe });
    }

    pub fn status(&self, room: Option<&str>, waiting: usize, link: Link) {
        self.show(Notice::Status { room: room.map(Into::into), waiting, link });
    }

    pub fn usage(&self, text: &str) {
        self.show(Notice::Usage(text.into()));
    }
}

/// How a person sees `room`, as `me`: a direct conversation as `@` and the other user.
pub fn shown(room: &str, me: Option<&str>) -> String {
    match (chat_core::RoomName::parse(room), me) {
        (Ok(name), Some(me)) if name.direct_pair().is_some() => name.shown_to(me),
        _ => room.to_owned(),
    }
}

/// Notices as lines: text for a person, or JSON for scripts (which keeps the node's room
/// names).
pub struct Lines {
    json: bool,
    me: Arc<OnceLock<String>>,
    out: Box<dyn LineSink>,
}

impl Sink for Lines {
    fn show(&mut self, notice: Notice) {
        if let Notice::Status { room, waiting, link } = &notice {
            let room = room.as_deref().map(|room| shown(room, self.me()));
            return self.out.prompt(&prompt(room.as_deref(), *waiting, *link));
        }
        if let Notice::Joined { room, gap: Some(gap), .. } = &notice {
            let gap_notice = Notice::Gap { room: room.clone(), gap: *gap };
            self.line(&notice);
            return self.line(&gap_notice);
        }
        self.line(&notice);
    }
}

impl Lines {
    fn me(&self) -> Option<&str> {
        self.me.get().map(String::as_str)
    }

    fn line(&mut self, notice: &Notice) {
        let line = if self.json {
            json(notice).map(|value| value.to_string())
        } else {
            self.human(notice).map(|line| printable(&line))
        };
        if let Some(line) = line {
            self.out.line(line);
        }
    }

    /// The line a person reads, if the notice has one.
    fn human(&self, notice: &Notice) -> Option<String> {
        let shown = |room: &str| shown(room, self.me());
        Some(match notice {
            Notice::Joined { room, last_seq, target, .. } => {
                let shown = shown(room);
                let target = if *target { format!("; typing into {shown}") } else { String::new() };
                format!("-- joined {shown} (newest message #{last_seq}){target}")
            }
            Notice::Gap { room, gap } => format!("-- {}: {}", shown(room), missed(*gap)),
            Notice::HistoryEnd { room, ends } if ends.more_before => {
                format!("-- {}: end of history; /history shows earlier messages", shown(room))
            }
            Notice::HistoryEnd { room, .. } => format!("-- {}: end of history", shown(room)),
            Notice::Message { message, .. } => format!(
                "[{} #{} {}] {}: {}",
                shown(&message.room),
                message.seq,
                clock(message.timestamp_ms),
                message.sender,
                message.body
            ),
            Notice::Arrived { room, name } => format!("-- {}: {name} joined", shown(room)),
            Notice::Departed { room, name, reason: LeftReason::Left } => {
                format!("-- {}: {name} left", shown(room))
            }
            Notice::Departed { room, name, reason } => {
                format!("-- {}: {name} left ({})", shown(room), reason.as_str())
            }
            Notice::Moderated { room, by, action } => {
                format!("-- {}: {by} {}", shown(room), moderation(action).2)
            }
            Notice::Topic { room, topic } => format!("-- {}: topic: {topic}", shown(room)),
            Notice::Typing { room } => format!("-- typing into {}", shown(room)),
            Notice::Ack { room, seq } => format!("-- sent to {} as #{seq}", shown(room)),
            // The prompt counts the lines waiting, and a line comes back with its number.
            Notice::Pending { .. } | Notice::Stored { .. } | Notice::Status { .. } => return None,
            Notice::Created { room, existed: true } => format!("-- {room} exists already"),
            Notice::Created { room, existed: false } => format!("-- created {room}"),
            Notice::Left { room } => format!("-- left {}", shown(room)),
            Notice::Rooms(rooms) => {
                let lines: Vec<String> =
                    rooms.iter().map(|r| room_line(r, &shown(&r.name))).collect();
                format!("-- rooms:\n{}", lines.join("\n"))
            }
            Notice::Conversations(rooms) if rooms.is_empty() => return None,
            Notice::Conversations(rooms) => {
                let listed: Vec<String> = rooms
                    .iter()
                    .map(|room| format!("{} (newest #{})", shown(&room.name), room.last_seq))
                    .collect();
                format!("-- direct conversations: {}; /query NAME opens one", listed.join(", "))
            }
            Notice::Who { room, names } => format!(
                "-- in {}: {}",
                shown(room),
                if names.is_empty() { "nobody".into() } else { names.join(", ") }
            ),
            Notice::Info(text) => format!("-- {text}"),
            Notice::Error { room: Some(room), message, .. } => {
                format!("!! {}: {message}", shown(room))
            }
            Notice::Error { room: None, message, .. } | Notice::Usage(message) => {
                format!("!! {message}")
            }
            Notice::NotSent { room, text, message, maybe, .. } => {
                let what = if *maybe { "may not have been sent" } else { "was not sent" };
                format!("!! {}: {what} ({message}): {text}", shown(room))
            }
        })
    }
}

/// What a gap in a room's history says.
pub fn missed(gap: Gap) -> String {
    format!("messages #{}..#{} are no longer in the history and were missed", gap.first, gap.last)
}

/// A room in a listing: `NAME (N online, newest #S, U unread): TOPIC`.
pub fn room_line(room: &RoomInfo, shown: &str) -> String {
    let unread = match room.unread {
        Some(0) | None => String::new(),
        Some(n) if n >= chat_proto::UNREAD_COUNTED => format!(", {n}+ unread"),
        Some(n) => format!(", {n} unread"),
    };
    let topic = if room.topic.is_empty() { String::new() } else { format!(": {}", room.topic) };
    format!("  {shown} ({} online, newest #{}{unread}){topic}", room.members, room.last_seq)
}

/// The JSON object scripts read, if the notice has one.
fn json(notice: &Notice) -> Option<serde_json::Value> {
    Some(match notice {
        Notice::Joined { room, last_seq, .. } => {
            json!({"event": "joined", "room": room, "last_seq": last_seq})
        }
        Notice::Gap { room, gap } => {
            json!({"event": "gap", "room": room, "first": gap.first, "last": gap.last})
        }
        Notice::HistoryEnd { room, ends } => json!({
            "event": "history_end", "room": room, "more_before": ends.more_before,
            "first_seq": ends.first_seq
        }),
        Notice::Message { message, history } => json!({
            "event": if *history { "history" } else { "message" },
            "room": message.room,
            "seq": message.seq,
            "sender": message.sender,
            "timestamp_ms": message.timestamp_ms,
            "body": message.body,
        }),
        Notice::Arrived { room, name } => json!({"event": "arrived", "room": room, "name": name}),
        Notice::Departed { room, name, reason } => {
            let code = match reason {
                LeftReason::Left => "left",
                LeftReason::Disconnected => "disconnected",
                LeftReason::TimedOut => "timed_out",
                _ => "dropped",
            };
            json!({"event": "departed", "room": room, "name": name, "reason": code})
        }
        Notice::Moderated { room, by, action } => {
            let (kind, name, said) = moderation(action);
            json!({"event": "moderation", "room": room, "by": by, "action": kind, "name": name, "detail": said})
        }
        Notice::Topic { room, topic } => json!({"event": "topic", "room": room, "topic": topic}),
        Notice::Typing { room } => {
            json!({"event": "info", "message": format!("typing into {room}")})
        }
        Notice::Ack { room, seq } | Notice::Stored { room, seq, .. } => {
            json!({"event": "ack", "room": room, "seq": seq})
        }
        Notice::Pending { .. } | Notice::Status { .. } => return None,
        Notice::Created { room, existed } => {
            json!({"event": "created", "room": room, "existed": existed})
        }
        Notice::Left { room } => json!({"event": "left", "room": room}),
        Notice::Rooms(rooms) => {
            let list: Vec<_> = rooms
                .iter()
                .map(|r| {
                    json!({"name": r.name, "last_seq": r.last_seq, "members": r.members,
                           "topic": r.topic, "unread": r.unread})
                })
                .collect();
            json!({"event": "rooms", "rooms": list})
        }
        Notice::Conversations(rooms) if rooms.is_empty() => return None,
        Notice::Conversations(rooms) => {
            let list: Vec<_> =
                rooms.iter().map(|r| json!({"name": r.name, "last_seq": r.last_seq})).collect();
            json!({"event": "conversations", "rooms": list})
        }
        Notice::Who { room, names } => json!({"event": "who", "room": room, "names": names}),
        Notice::Info(text) => json!({"event": "info", "message": text}),
        Notice::Error { room, code, message } => {
            json!({"event": "error", "room": room, "code": code, "message": message})
        }
        Notice::NotSent { room, text, code, message, maybe, .. } => json!({
            "event": "not_sent", "room": room, "body": text, "code": code, "message": message,
            "maybe_stored": maybe
        }),
        Notice::Usage(text) => json!({"event": "error", "message": text}),
    })
}

/// A moderation action as scripts name it, whom it names, and as a person reads it.
pub fn moderation(action: &Moderation) -> (&'static str, Option<&String>, String) {
    let for_how_long = |minutes: &Option<u32>| match minutes {
        Some(m) => format!(" for {m} min"),
        None => String::new(),
    };
    let because =
        |reason: &str| if reason.is_empty() { String::new() } else { format!(" ({reason})") };
    match action {
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
        Moderation::InviteOnly(true) => ("invite_only", None, "made the room invite-only".into()),
        Moderation::InviteOnly(false) => {
            ("invite_only", None, "opened the room to everyone".into())
        }
        Moderation::Topic(topic) => ("topic", None, format!("set the topic: {topic}")),
        Moderation::DeleteRoom => ("delete", None, "deleted the room".into()),
    }
}

/// The line-mode prompt: the room, whether the connection is down, and how many of the
/// user's lines wait for the node.
fn prompt(room: Option<&str>, waiting: usize, link: Link) -> String {
    let mut prompt = format!("[{}", room.unwrap_or("no room"));
    if let Link::Reconnecting { .. } = link {
        prompt.push_str(" · reconnecting");
    }
    if waiting > 0 {
        prompt.push_str(&format!(" · {waiting} sending"));
    }
    prompt.push_str("]> ");
    prompt
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
