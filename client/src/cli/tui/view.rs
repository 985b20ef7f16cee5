//! What the full-screen interface shows, as data: the rooms and conversations with their
//! messages, unread counts and pending lines, the connection's state and the line being
//! typed. Notices from the session and keys from the user change it; `draw` paints it. No
//! terminal here, so that every rule is tested without one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chat_client::{ChatMessage, Seq};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use super::input::{Completion, History, Input};
use crate::cli::output::{self, Link, Notice, printable};

/// Entries kept per room; older ones are dropped, and paging back fetches them again.
pub const KEPT_PER_ROOM: usize = 5000;
/// Rows the mouse wheel scrolls.
const WHEEL_ROWS: usize = 3;

/// One thing shown in a room's view.
#[derive(Debug, Clone)]
pub enum Entry {
    Message {
        message: ChatMessage,
        /// From the history (shown dimmed), not live.
        history: bool,
        /// It names the user.
        mention: bool,
    },
    /// A line of the client's own: an arrival, a departure, a notice.
    Quiet(String),
    Info(String),
    Error(String),
}

/// Where an entry sorts: messages by number; other lines after the newest message the room
/// had when they came, in the order they came.
pub type Key = (Seq, u64);

/// A line typed for a room that the node has not stored yet.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: u64,
    pub text: String,
    /// Why it was not sent, when it failed (`/retry` sends it again).
    pub failed: Option<String>,
}

/// A room or direct conversation.
#[derive(Debug)]
pub struct Room {
    /// The node's name (`@ada+bob` for a conversation).
    pub name: String,
    /// As the user sees it (`@bob`).
    pub shown: String,
    pub entries: BTreeMap<Key, Entry>,
    pub pending: Vec<Pending>,
    pub topic: String,
    /// Live messages from others since the user last looked at the room.
    pub unread: u64,
    /// Of those, how many name the user (or are direct messages).
    pub mentions: u64,
    /// Joined (its messages arrive); a conversation listed but not opened is not.
    pub joined: bool,
    /// The node has older messages than the oldest here.
    pub more_before: bool,
    /// A page of older messages was asked for and has not come yet.
    pub paging: bool,
    /// Rows scrolled up from the newest; 0 follows new messages.
    pub scroll: usize,
    /// The newest message when the user last left the room: "new messages" goes after it.
    pub read_up_to: Option<Seq>,
    /// Counts the lines that are not messages, to keep their order.
    lines: u64,
}

impl Room {
    fn new(name: &str, me: &str) -> Self {
        Self {
            name: name.to_owned(),
            shown: output::shown(name, Some(me)),
            entries: BTreeMap::new(),
            pending: Vec::new(),
            topic: String::new(),
            unread: 0,
            mentions: 0,
            joined: false,
            more_before: false,
            paging: false,
            scroll: 0,
            read_up_to: None,
            lines: 0,
        }
    }

    pub fn is_direct(&self) -> bool {
        self.name.starts_with(chat_core::names::DIRECT_PREFIX)
    }

    fn newest(&self) -> Seq {
        self.entries.keys().next_back().map_or(0, |(seq, _)| *seq)
    }

    /// The newest message number here.
    pub fn newest_message(&self) -> Option<Seq> {
        self.entries.iter().rev().find_map(|(_, entry)| match entry {
            Entry::Message { message, .. } => Some(message.seq),
            _ => None,
        })
    }

    fn line(&mut self, entry: Entry) {
        self.lines += 1;
        let key = (self.newest(), self.lines);
        self.insert(key, entry);
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        self.entries.insert(key, entry);
        if self.entries.len() > KEPT_PER_ROOM {
            self.entries.pop_first();
            self.more_before = true;
        }
    }
}

/// What the view asks of the rest of the program after a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Lines for the session, in order: typed text and commands.
    Send(Vec<String>),
    /// Paint the whole screen again.
    Clear,
    None,
}

/// The whole interface's state.
pub struct View {
    pub me: String,
    pub server: String,
    /// Rooms in the sidebar's order: rooms as joined, then direct conversations.
    pub rooms: Vec<Room>,
    /// Lines with no room (before any join), shown when no room is.
    pub home: Room,
    /// The room shown (an index into `rooms`), where typed lines go.
    pub viewed: Option<usize>,
    pub link: Link,
    /// Lines waiting for the node, as the session counts them.
    pub waiting: usize,
    pub input: Input,
    pub history: History,
    completion: Option<Completion>,
    /// Ctrl-R: searching the input history for this text.
    pub search: Option<String>,
    pub help: bool,
    /// Ring the terminal's bell after the next paint.
    pub bell: bool,
    pub bell_enabled: bool,
    /// Names seen, for Tab.
    names: BTreeSet<String>,
    /// `/switch`es sent and not yet answered: their answers do not move the view again.
    switches: VecDeque<String>,
    pub zone: jiff::tz::TimeZone,
    /// Rows a page scroll moves, as the last paint measured them (a guess before it).
    pub page: usize,
    /// How far up the room shown can scroll, as the last paint found (`usize::MAX` when it
    /// did not look that far).
    pub top: usize,
}

/// The commands Tab completes, as the session takes them.
pub const COMMANDS: &[&str] = &[
    "/ban",
    "/create",
    "/delete",
    "/deop",
    "/help",
    "/history",
    "/invite",
    "/inviteonly",
    "/join",
    "/kick",
    "/leave",
    "/logout",
    "/msg",
    "/mute",
    "/op",
    "/passwd",
    "/query",
    "/quit",
    "/register",
    "/retry",
    "/rooms",
    "/switch",
    "/topic",
    "/unban",
    "/unmute",
    "/who",
];

impl View {
    pub fn new(me: &str, server: &str, history: History, zone: jiff::tz::TimeZone) -> Self {
        Self {
            me: me.to_owned(),
            server: server.to_owned(),
            rooms: Vec::new(),
            home: Room::new(server, me),
            viewed: None,
            link: Link::Connected,
            waiting: 0,
            input: Input::default(),
            history,
            completion: None,
            search: None,
            help: false,
            bell: false,
            bell_enabled: true,
            names: BTreeSet::new(),
            switches: VecDeque::new(),
            zone,
            page: 10,
            top: usize::MAX,
        }
    }

    /// The room shown, or the home view.
    pub fn shown_room(&self) -> &Room {
        self.viewed.and_then(|i| self.rooms.get(i)).unwrap_or(&self.home)
    }

    pub fn shown_room_mut(&mut self) -> &mut Room {
        match self.viewed {
            Some(i) if i < self.rooms.len() => &mut self.rooms[i],
            _ => &mut self.home,
        }
    }

    fn index(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r.name == room)
    }

    /// The room named `room`, added to the sidebar if new.
    fn room(&mut self, room: &str) -> &mut Room {
        let i = match self.index(room) {
            Some(i) => i,
            None => {
                let new = Room::new(room, &self.me);
                // Rooms before conversations, each kind in the order first seen.
                let at = if new.is_direct() {
                    self.rooms.len()
                } else {
                    self.rooms.iter().position(Room::is_direct).unwrap_or(self.rooms.len())
                };
                self.rooms.insert(at, new);
                if let Some(viewed) = self.viewed.as_mut()
                    && *viewed >= at
                {
                    *viewed += 1;
                }
                at
            }
        };
        &mut self.rooms[i]
    }

    /// The room a notice about `room` goes to: that room when known, else the one shown.
    fn room_or_shown(&mut self, room: Option<&str>) -> &mut Room {
        match room.and_then(|room| self.index(room)) {
            Some(i) => &mut self.rooms[i],
            None => self.shown_room_mut(),
        }
    }

    /// Shows room `i`: its unread counts are read, and the room left gets its "new
    /// messages" mark.
    fn view(&mut self, i: usize) {
        if self.viewed == Some(i) || i >= self.rooms.len() {
            return;
        }
        if let Some(left) = self.viewed.and_then(|v| self.rooms.get_mut(v)) {
            left.read_up_to = left.newest_message();
            left.scroll = 0;
        }
        self.viewed = Some(i);
        let room = &mut self.rooms[i];
        (room.unread, room.mentions) = (0, 0);
    }

    /// Whether `message` names the user: a word of it is the name, `@` and the name, or it
    /// is a direct message.
    fn mentions_me(&self, message: &ChatMessage) -> bool {
        if message.room.starts_with(chat_core::names::DIRECT_PREFIX) {
            return true;
        }
        message
            .body
            .split(|c: char| !(c.is_alphanumeric() || "-_.".contains(c)))
            .any(|word| word.trim_end_matches('.').eq_ignore_ascii_case(&self.me))
    }

    pub fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Joined { room, target, gap, .. } => {
                let r = self.room(&room);
                r.joined = true;
                r.paging = false;
                if let Some(gap) = gap {
                    r.line(Entry::Error(output::missed(gap)));
                }
                if target {
                    self.follow(&room);
                }
            }
            Notice::HistoryEnd { room, ends } => {
                let r = self.room(&room);
                r.more_before = ends.more_before;
                r.paging = false;
            }
            Notice::Message { message, history } => self.message(message, history),
            Notice::Arrived { room, name } => {
                self.room(&room).line(Entry::Quiet(format!("→ {name} joined")));
                self.names.insert(name);
            }
            Notice::Departed { room, name, reason } => {
                let why = match reason {
                    chat_client::LeftReason::Left => String::new(),
                    other => format!(" ({})", other.as_str()),
                };
                self.room(&room).line(Entry::Quiet(format!("← {name} left{why}")));
            }
            Notice::Moderated { room, by, action } => {
                let r = self.room(&room);
                if let chat_client::Moderation::Topic(topic) = &action {
                    r.topic = topic.clone();
                }
                let said = output::moderation(&action).2;
                r.line(Entry::Info(printable(&format!("{by} {said}"))));
            }
            Notice::Topic { room, topic } => self.room(&room).topic = topic,
            Notice::Typing { room } => {
                if self.switches.front() == Some(&room) {
                    self.switches.pop_front();
                } else {
                    self.follow(&room);
                }
            }
            Notice::Pending { room, id, text } => {
                let r = self.room(&room);
                match r.pending.iter_mut().find(|p| p.id == id) {
                    Some(again) => again.failed = None,
                    None => r.pending.push(Pending { id, text, failed: None }),
                }
                r.scroll = 0;
            }
            Notice::Stored { room, id, .. } => self.room(&room).pending.retain(|p| p.id != id),
            Notice::NotSent { room, id, text, message, maybe, .. } => {
                let why =
                    if maybe { format!("{message}; it may have been stored") } else { message };
                let r = self.room(&room);
                match r.pending.iter_mut().find(|p| Some(p.id) == id) {
                    Some(line) => line.failed = Some(why),
                    None => r.line(Entry::Error(printable(&format!("not sent ({why}): {text}")))),
                }
            }
            Notice::Left { room } => self.remove(&room),
            Notice::Conversations(rooms) => {
                for info in rooms {
                    let r = self.room(&info.name);
                    if !r.joined {
                        r.unread = u64::from(info.unread.unwrap_or(0));
                        r.mentions = r.unread;
                    }
                }
            }
            Notice::Who { room, names } => {
                let said = if names.is_empty() { "nobody".into() } else { names.join(", ") };
                let shown = output::shown(&room, Some(&self.me));
                self.room(&room).line(Entry::Info(format!("in {shown}: {said}")));
                self.names.extend(names);
            }
            Notice::Rooms(rooms) => {
                self.shown_room_mut().line(Entry::Info("rooms:".into()));
                for info in rooms {
                    let line = output::room_line(&info, &output::shown(&info.name, Some(&self.me)));
                    self.shown_room_mut().line(Entry::Info(printable(&line)));
                }
            }
            Notice::Created { room, existed } => {
                let said = if existed {
                    format!("{room} exists already")
                } else {
                    format!("created {room}")
                };
                self.shown_room_mut().line(Entry::Info(said));
            }
            Notice::Info(text) => self.shown_room_mut().line(Entry::Info(printable(&text))),
            Notice::Usage(text) => self.shown_room_mut().line(Entry::Error(printable(&text))),
            Notice::Error { room, message, .. } => {
                self.room_or_shown(room.as_deref()).line(Entry::Error(printable(&message)));
            }
            Notice::Status { waiting, link, .. } => (self.waiting, self.link) = (waiting, link),
            Notice::Gap { room, gap } => self.room(&room).line(Entry::Error(output::missed(gap))),
            Notice::Ack { .. } => {}
        }
    }

    /// The session moved where typed lines go (a `/join`, a `/query`): show that room.
    fn follow(&mut self, room: &str) {
        if let Some(i) = self.index(room) {
            self.view(i);
        }
    }

    fn remove(&mut self, room: &str) {
        let Some(i) = self.index(room) else { return };
        self.rooms.remove(i);
        self.viewed = match self.viewed {
            Some(v) if v == i => (!self.rooms.is_empty()).then(|| i.min(self.rooms.len() - 1)),
            Some(v) if v > i => Some(v - 1),
            other => other,
        };
    }

    fn message(&mut self, message: ChatMessage, history: bool) {
        let mine = message.sender.eq_ignore_ascii_case(&self.me);
        let mention = !mine && self.mentions_me(&message);
        self.names.insert(message.sender.clone());
        let viewed = self.viewed.and_then(|i| self.rooms.get(i)).map(|r| r.name.as_str())
            == Some(message.room.as_str());
        let room = self.room(&message.room);
        if mine && !history {
            // The node's copy of a line typed here: it is no longer pending.
            if let Some(echo) =
                room.pending.iter().position(|p| p.failed.is_none() && p.text == message.body)
            {
                room.pending.remove(echo);
            }
        }
        if !history && !mine {
            if !viewed {
                room.unread += 1;
                room.mentions += u64::from(mention);
            }
            if mention {
                self.bell = self.bell_enabled;
            }
        }
        let room = self.room(&message.room);
        if room.scroll > 0 && !history {
            room.scroll += 1; // Keeps the rows in view where they are.
        }
        let key = (message.seq, 0);
        room.insert(key, Entry::Message { message, history, mention });
    }

    /// Handles a key; what the program is to do about it.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        if key.code != KeyCode::Tab {
            self.completion = None;
        }
        if ctrl && key.code == KeyCode::Char('c') {
            return Action::Send(vec!["/quit".into()]);
        }
        if self.help {
            if matches!(
                key.code,
                KeyCode::Esc | KeyCode::F(1) | KeyCode::Char('q') | KeyCode::Enter
            ) {
                self.help = false;
            }
            return Action::None;
        }
        if let Some(query) = &mut self.search {
            match key.code {
                KeyCode::Esc => self.search = None,
                KeyCode::Char('g') if ctrl => self.search = None,
                KeyCode::Char('r') if ctrl => {
                    let skip = self.history.found.map_or(0, |f| f + 1);
                    self.history.find(&query.clone(), skip);
                }
                KeyCode::Backspace => {
                    query.pop();
                    self.history.find(&query.clone(), 0);
                }
                KeyCode::Char(c) if !ctrl => {
                    query.push(c);
                    self.history.find(&query.clone(), 0);
                }
                KeyCode::Enter | KeyCode::Right | KeyCode::Left => {
                    if let Some(found) = self.history.found_line() {
                        self.input.set(&found);
                    }
                    self.search = None;
                }
                _ => {}
            }
            return Action::None;
        }
        match key.code {
            KeyCode::Char('d') if ctrl && self.input.is_empty() => {
                return Action::Send(vec!["/quit".into()]);
            }
            KeyCode::Char('l') if ctrl => return Action::Clear,
            KeyCode::Char('n') if ctrl => return self.step(1),
            KeyCode::Char('p') if ctrl => return self.step(-1),
            KeyCode::Char('r') if ctrl => {
                self.search = Some(String::new());
                self.history.found = None;
            }
            KeyCode::Char(c @ '1'..='9') if alt => {
                let i = usize::from(c as u8 - b'1');
                return self.choose(i);
            }
            KeyCode::Enter if alt || key.modifiers.contains(KeyModifiers::SHIFT) => {
                self.input.insert('\n');
            }
            KeyCode::Enter => return self.submit(),
            KeyCode::Char('j' | 'm') if ctrl => return self.submit(),
            KeyCode::F(1) => self.help = true,
            KeyCode::PageUp => return self.scroll_up(self.page),
            KeyCode::PageDown => self.scroll_down(self.page),
            KeyCode::Esc => self.shown_room_mut().scroll = 0,
            KeyCode::Tab => self.complete(),
            KeyCode::Up if self.input.on_first_row() => self.history.older(&mut self.input),
            KeyCode::Down if self.input.on_last_row() => self.history.newer(&mut self.input),
            _ => self.input.key(key),
        }
        Action::None
    }

    /// Pasted text: each line it completes is sent, in order; the rest stays typed.
    pub fn paste(&mut self, text: &str) -> Action {
        let done: Vec<String> =
            self.input.paste(text).into_iter().flat_map(|line| self.accept(line)).collect();
        if done.is_empty() { Action::None } else { Action::Send(done) }
    }

    pub fn mouse(&mut self, mouse: MouseEvent) -> Action {
        match mouse.kind {
            MouseEventKind::ScrollUp => self.scroll_up(WHEEL_ROWS),
            MouseEventKind::ScrollDown => {
                self.scroll_down(WHEEL_ROWS);
                Action::None
            }
            _ => Action::None,
        }
    }

    fn scroll_up(&mut self, rows: usize) -> Action {
        let top = self.top;
        let room = self.shown_room_mut();
        room.scroll = (room.scroll + rows).min(top);
        // At the top of what is here: ask the node for the page before it.
        if room.scroll >= top && room.more_before && !room.paging && room.joined {
            room.paging = true;
            return Action::Send(vec!["/history".into()]);
        }
        Action::None
    }

    fn scroll_down(&mut self, rows: usize) {
        let room = self.shown_room_mut();
        room.scroll = room.scroll.saturating_sub(rows);
    }

    /// Enter: the line typed, for the session (or the help screen for `/help`).
    fn submit(&mut self) -> Action {
        let line = self.input.take();
        let lines = self.accept(line);
        if lines.is_empty() { Action::None } else { Action::Send(lines) }
    }

    /// A line done: for the session, unless the view answers it itself (`/help`).
    fn accept(&mut self, line: String) -> Vec<String> {
        if line.trim().is_empty() {
            return Vec::new();
        }
        self.history.add(&line);
        self.shown_room_mut().scroll = 0;
        match line.trim() {
            "/help" => {
                self.help = true;
                Vec::new()
            }
            _ => vec![line],
        }
    }

    /// Ctrl-N and Ctrl-P: the next or the previous room in the sidebar.
    fn step(&mut self, by: isize) -> Action {
        if self.rooms.is_empty() {
            return Action::None;
        }
        let n = self.rooms.len() as isize;
        let from = self.viewed.map_or(-1, |v| v as isize);
        let to = (from + by).rem_euclid(n) as usize;
        self.choose(to)
    }

    /// Shows room `i` of the sidebar and sends typed lines there.
    fn choose(&mut self, i: usize) -> Action {
        let Some(room) = self.rooms.get(i) else { return Action::None };
        let (name, joined) = (room.name.clone(), room.joined);
        self.view(i);
        if joined {
            self.switches.push_back(name.clone());
            Action::Send(vec![format!("/switch {name}")])
        } else {
            Action::Send(vec![format!("/join {name}")])
        }
    }

    /// Tab: completes the word before the cursor (a command, a room, a name); Tab again
    /// goes on to the next candidate.
    fn complete(&mut self) {
        if let Some(completion) = &mut self.completion {
            return completion.next(&mut self.input);
        }
        let (start, word) = self.input.word_before_cursor();
        let first_word = self.input.chars()[..start].iter().all(|c| c.is_whitespace());
        let command = self.input.text().split(' ').next().unwrap_or("").to_owned();
        let candidates: Vec<String> = if first_word && word.starts_with('/') {
            COMMANDS.iter().map(|c| format!("{c} ")).collect()
        } else if !first_word
            && matches!(command.as_str(), "/join" | "/switch" | "/leave" | "/who" | "/delete")
        {
            self.rooms.iter().map(|r| format!("{} ", r.shown)).collect()
        } else {
            let suffix = if first_word { ": " } else { " " };
            self.names
                .iter()
                .filter(|n| !n.eq_ignore_ascii_case(&self.me))
                .map(|n| format!("{n}{suffix}"))
                .collect()
        };
        let lower = word.to_lowercase();
        let candidates: Vec<String> =
            candidates.into_iter().filter(|c| c.to_lowercase().starts_with(&lower)).collect();
        if candidates.is_empty() {
            return;
        }
        let mut completion = Completion::new(start, candidates);
        completion.next(&mut self.input);
        self.completion = Some(completion);
    }
}
