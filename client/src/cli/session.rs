//! The interactive chat: rooms joined, lines typed sent to the current room, commands, and
//! reconnecting by itself after a dropped connection.
//!
//! One loop does everything, so that nothing waits on anything else: it prints every room's
//! events (tagged with the room, through one channel), takes typed lines, hands them one at a
//! time to their room's ordered queue, collects the acks, and reconnects. Lines wait in the
//! session's outbox, in the order typed, until their room's queue takes them; while the
//! outbox is full the loop stops taking lines, so a pipe waits instead of being dropped.
//!
//! A line whose send was cut off by a lost connection may or may not have been stored. After
//! the reconnect, the rejoin replays the room's history after the last message printed:
//! each such line found there (from this user, with its text) was stored; the others were
//! not, and are sent again, ahead of what was typed later. So a line is neither lost nor
//! stored twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chat_client::{Anchor, Client, ClientError, ErrorCode, Posted, RoomEvent, RoomSender, Seq};
use futures_util::future::OptionFuture;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::output::{Link, Notice, Output};
use super::tokens::TokenFile;

/// Events buffered from all rooms before the room readers pause.
const EVENT_BUFFER: usize = 1024;
/// Typed lines the session holds before it stops taking more (while a room's queue is full,
/// or while reconnecting).
const OUTBOX: usize = 1024;
/// The first wait before reconnecting, doubled after each failed attempt up to the next.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An event of one room; `None` when its stream ended.
type Tagged = (String, Option<RoomEvent>);
type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A line for a room.
struct Line {
    room: String,
    text: String,
    /// Its place in the order typed.
    typed: u64,
    /// Sent again after a lost connection already; a second loss reports it.
    resent: bool,
    /// When cut off by a lost connection: the join of its room it was sent in. It is sent
    /// again only in a later join, once that join's history is printed.
    cut_in: Option<u64>,
    /// The client id it was last sent under: sent again, it keeps it, so that a node that
    /// stored it already does not store it twice.
    sent_as: Option<u64>,
}

struct Joined {
    /// Which join this is, counted over the session.
    id: u64,
    sender: RoomSender,
    forward: JoinHandle<()>,
    /// Messages up to here were history at the join.
    history_until: Seq,
    /// The node ended the stream: nothing more will be printed from it.
    ended: bool,
    /// The join's history is all printed, with the line that ends it.
    history_ended: bool,
}

pub struct Session {
    client: Client,
    out: Output,
    rooms: BTreeMap<String, Joined>,
    /// The newest sequence number printed per room, kept across reconnects.
    last_seen: BTreeMap<String, Seq>,
    /// The oldest one printed per room: `/history` pages back from it.
    oldest_seen: BTreeMap<String, Seq>,
    /// The user's own messages acknowledged and not yet printed, by room and number.
    unseen_acks: BTreeSet<(String, Seq)>,
    /// The user's own messages printed before their ack came (the node relays a message
    /// before it is synced, and acks it after): room, number and text.
    unacked_echoes: Vec<(String, Seq, String)>,
    current: Option<String>,
    events_tx: mpsc::Sender<Tagged>,
    events: mpsc::Receiver<Tagged>,
    /// Lines typed, in order, that no room queue has taken yet.
    outbox: VecDeque<Line>,
    /// The line being handed to its room's queue (waiting while that queue is full).
    posting: Option<Boxed<(Line, Result<Posted, ClientError>)>>,
    /// Lines in a room queue or on the wire, waiting for their ack.
    acks: JoinSet<(Line, Result<Seq, ClientError>)>,
    /// Lines whose send a lost connection cut off: looked for in the history replayed at
    /// the rejoin, and sent again if they are not there.
    unconfirmed: Vec<Line>,
    /// Lines typed so far, for their order.
    typed: u64,
    /// Rooms joined so far, to tell one join of a room from the next.
    joins: u64,
    /// While the connection is down: the next attempt to connect again, and its wait.
    reconnecting: Option<(Boxed<Result<Client, ClientError>>, Duration)>,
    /// The first line that could not be sent, for the exit code.
    failed: Option<ClientError>,
    /// The last status shown, so that it is shown only when it changes.
    status: Option<(Option<String>, usize, Link)>,
    /// Attempts to connect again since the connection was lost.
    attempts: u32,
    /// Lines that could not be sent, kept for `/retry` (the newest [`RETRY_KEPT`]).
    failed_lines: VecDeque<Line>,
    /// Where each connection's session token is kept for the next run.
    tokens: Option<TokenFile>,
    /// The user logged out: the connection is gone for good, leave at once.
    logged_out: bool,
    /// Where the account's read marker is, per room, as far as this run has moved it.
    marked: BTreeMap<String, Seq>,
}

/// Lines that could not be sent that `/retry` can send again.
const RETRY_KEPT: usize = 256;

/// How often an account's read markers follow what was printed.
const MARK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Session {
    pub fn new(client: Client, out: Output, tokens: Option<TokenFile>) -> Self {
        out.speak_as(client.name());
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        keep_token(tokens.as_ref(), &client);
        Self {
            client,
            out,
            rooms: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            oldest_seen: BTreeMap::new(),
            unseen_acks: BTreeSet::new(),
            unacked_echoes: Vec::new(),
            current: None,
            events_tx,
            events,
            outbox: VecDeque::new(),
            posting: None,
            acks: JoinSet::new(),
            unconfirmed: Vec::new(),
            typed: 0,
            joins: 0,
            reconnecting: None,
            failed: None,
            status: None,
            attempts: 0,
            failed_lines: VecDeque::new(),
            tokens,
            logged_out: false,
            marked: BTreeMap::new(),
        }
    }

    /// Runs until `/quit` or the end of input, and then until every line typed is
    /// acknowledged and everything the node sent for the rooms (their history and the
    /// user's own messages) is printed. A second `/quit` leaves at once.
    ///
    /// # Errors
    /// What ends the session for good (the name taken over by a newer session, or taken by
    /// someone else while reconnecting), or the first line that could not be sent.
    pub async fn run(mut self, mut input: mpsc::Receiver<String>) -> Result<(), ClientError> {
        let mut input_open = true;
        let mut quitting = false;
        let mut marks = tokio::time::interval(MARK_EVERY);
        marks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.resend_unconfirmed();
            self.start_posting();
            self.show_status();
            if quitting && self.settled() {
                break;
            }
            tokio::select! {
                line = input.recv(), if input_open && self.outbox.len() < OUTBOX => match line {
                    Some(line) => {
                        if !self.handle_line(line.trim()).await {
                            if quitting || self.logged_out {
                                break;
                            }
                            quitting = true;
                            if !self.settled() {
                                self.out.info(
                                    "leaving once what you typed is sent; /quit again (or Ctrl-C) leaves at once",
                                );
                            }
                        }
                    }
                    None => (input_open, quitting) = (false, true),
                },
                Some((room, event)) = self.events.recv() => self.room_event(room, event).await,
                Some(message) = self.client.next_direct(), if self.reconnecting.is_none() => {
                    self.direct(message).await;
                }
                Some((mut line, posted)) = OptionFuture::from(self.posting.as_mut()) => {
                    self.posting = None;
                    match posted {
                        Ok(posted) => {
                            line.sent_as = Some(posted.client_id());
                            self.acks.spawn(async move { (line, posted.acked().await) });
                        }
                        Err(e) => self.not_sent(line, e),
                    }
                }
                Some(acked) = self.acks.join_next() => {
                    if let Ok((line, result)) = acked {
                        self.acked(line, result);
                    }
                }
                _ = marks.tick(), if self.client.is_account() && self.reconnecting.is_none() => {
                    self.mark_read().await;
                }
                lost = self.client.closed(), if self.reconnecting.is_none() => self.lost(lost)?,
                Some(attempt) = OptionFuture::from(self.reconnecting.as_mut().map(|(a, _)| a)) => {
                    self.reconnected(attempt).await?;
                }
            }
        }
        self.report_unsent();
        if self.client.is_account() && !self.logged_out {
            self.mark_read().await;
        }
        let failed = self.failed.take();
        self.close().await;
        failed.map_or(Ok(()), Err)
    }

    /// Says which direct conversations the user has, so that messages written while they
    /// were away are found.
    pub async fn list_conversations(&self) {
        let Ok(rooms) = self.client.rooms().await else { return };
        let direct = rooms
            .into_iter()
            .filter(|room| room.name.starts_with(chat_core::names::DIRECT_PREFIX))
            .collect();
        self.out.show(Notice::Conversations(direct));
    }

    /// Moves the account's read markers up to what has been printed in each room.
    async fn mark_read(&mut self) {
        let behind: Vec<(String, Seq)> = self
            .last_seen
            .iter()
            .filter(|(room, seq)| self.marked.get(*room).is_none_or(|marked| marked < *seq))
            .map(|(room, seq)| (room.clone(), *seq))
            .collect();
        for (room, seq) in behind {
            match self.client.mark_read(&room, seq).await {
                Ok(at) => {
                    self.marked.insert(room, at);
                }
                Err(e) => tracing::debug!(%room, error = %e, "a read marker was not moved"),
            }
        }
    }

    /// Leaves every room and says goodbye to the node.
    pub async fn close(self) {
        self.client.close().await;
    }

    /// Whether everything is done: no line waits, and every room has printed its history
    /// and the user's own acknowledged messages.
    fn settled(&self) -> bool {
        self.outbox.is_empty()
            && self.unconfirmed.is_empty()
            && self.posting.is_none()
            && self.acks.is_empty()
            && self.reconnecting.is_none()
            && self.rooms.iter().all(|(name, joined)| {
                joined.ended
                    || (joined.history_ended
                        && !self.unseen_acks.iter().any(|(room, _)| room == name))
            })
    }

    fn show_status(&mut self) {
        let waiting = self.outbox.len()
            + self.unconfirmed.len()
            + usize::from(self.posting.is_some())
            + self.acks.len();
        let link = match self.reconnecting {
            Some(_) => Link::Reconnecting { attempt: self.attempts },
            None => Link::Connected,
        };
        let status = (self.current.clone(), waiting, link);
        if self.status.as_ref() != Some(&status) {
            self.out.status(status.0.as_deref(), status.1, status.2);
            self.status = Some(status);
        }
    }

    /// Hands the oldest waiting line to its room's queue, unless one is on its way already.
    fn start_posting(&mut self) {
        while self.posting.is_none() && self.reconnecting.is_none() {
            let Some(head) = self.outbox.front() else { return };
            // Lines of a room wait behind its cut-off ones until those are found in the
            // rejoined history or sent again, so that the order typed holds.
            if self.unconfirmed.iter().any(|cut| cut.room == head.room) {
                return;
            }
            let Some(line) = self.outbox.pop_front() else { return };
            let Some(joined) = self.rooms.get(&line.room) else {
                let error = ClientError::UnknownRoom(format!("no longer in room {}", line.room));
                self.not_sent(line, error);
                continue;
            };
            let sender = joined.sender.clone();
            self.posting = Some(Box::pin(async move {
                let posted = match line.sent_as {
                    Some(id) => sender.post_again(line.text.clone(), id).await,
                    None => sender.post(line.text.clone()).await,
                };
                (line, posted)
            }));
        }
    }

    fn acked(&mut self, line: Line, result: Result<Seq, ClientError>) {
        match result {
            Ok(seq) => {
                let echo =
                    self.unacked_echoes.iter().position(|(r, s, _)| *r == line.room && *s == seq);
                let printed = self.last_seen.get(&line.room).is_some_and(|seen| *seen >= seq);
                match echo {
                    Some(echo) => drop(self.unacked_echoes.swap_remove(echo)),
                    None if !printed => drop(self.unseen_acks.insert((line.room.clone(), seq))),
                    None => {}
                }
                self.out.stored(&line.room, seq, line.typed);
            }
            Err(e) => self.not_sent(line, e),
        }
    }

    /// A line that was not stored, or (after a lost connection) may not have been: kept to
    /// be checked against the history at the rejoin, or reported with its text.
    fn not_sent(&mut self, mut line: Line, error: ClientError) {
        let cut_off = error.outcome_unknown();
        let echoed = self
            .unacked_echoes
            .iter()
            .position(|(r, _, text)| *r == line.room && *text == line.text);
        if let Some(echoed) = echoed {
            self.unacked_echoes.swap_remove(echoed);
            if cut_off {
                // Its ack was lost, but the room relayed it: it was stored.
                return;
            }
        }
        if cut_off && !line.resent {
            line.cut_in = Some(self.rooms.get(&line.room).map_or(0, |joined| joined.id));
            self.unconfirmed.push(line);
            return;
        }
        let maybe = cut_off || matches!(error, ClientError::MaybeStored(_));
        self.out.not_sent(&line.room, Some(line.typed), &line.text, &error, maybe);
        self.failed.get_or_insert(error);
        self.keep_failed(line);
    }

    /// A line for the outbox, shown as waiting to be sent.
    fn queue(&mut self, line: Line) {
        self.out.pending(&line.room, line.typed, &line.text);
        self.outbox.push_back(line);
    }

    fn keep_failed(&mut self, line: Line) {
        if self.failed_lines.len() == RETRY_KEPT {
            self.failed_lines.pop_front();
        }
        self.failed_lines.push_back(line);
    }

    /// `/retry`: the lines that could not be sent, sent again in the order typed.
    fn retry(&mut self) {
        if self.failed_lines.is_empty() {
            return self.out.usage("/retry: no line is waiting to be sent again");
        }
        let mut lines: Vec<Line> = self.failed_lines.drain(..).collect();
        lines.sort_by_key(|line| line.typed);
        self.out.info(&format!("sending {} line(s) again", lines.len()));
        for mut line in lines {
            (line.resent, line.cut_in) = (false, None);
            self.queue(line);
        }
    }

    /// A message of this user's in a rejoined room's history: a line cut off by the lost
    /// connection that was stored after all.
    fn confirm(&mut self, room: &str, text: &str) {
        let found = self.unconfirmed.iter().position(|l| l.room == room && l.text == text);
        if let Some(found) = found {
            self.unconfirmed.remove(found);
        }
    }

    /// Sends again, ahead of everything typed later, the cut-off lines of each room that is
    /// joined again and whose history is printed: they were not in it.
    fn resend_unconfirmed(&mut self) {
        if self.unconfirmed.is_empty() || self.reconnecting.is_some() {
            return;
        }
        let replayed = |line: &Line| {
            self.rooms.get(&line.room).is_some_and(|joined| {
                Some(joined.id) != line.cut_in
                    && self.last_seen.get(&line.room).copied().unwrap_or(0) >= joined.history_until
            })
        };
        let (mut again, keep): (Vec<Line>, Vec<Line>) =
            std::mem::take(&mut self.unconfirmed).into_iter().partition(|l| replayed(l));
        self.unconfirmed = keep;
        again.sort_by_key(|line| std::cmp::Reverse(line.typed));
        for mut line in again {
            line.resent = true;
            self.outbox.push_front(line);
        }
    }

    /// `/history`: the `limit` messages of `room` before the oldest one printed.
    async fn page_back(&mut self, room: &str, limit: u32) {
        let Some(joined) = self.rooms.get(room) else { return };
        let anchor = match self.oldest_seen.get(room) {
            Some(&oldest) => Anchor::Before(oldest),
            None => Anchor::Before(joined.history_until.saturating_add(1)),
        };
        match joined.sender.history(anchor, limit).await {
            Ok(page) => {
                if let Some(first) = page.messages.first() {
                    self.oldest_seen.insert(room.to_owned(), first.seq);
                }
                for message in &page.messages {
                    self.out.message(message, true);
                }
                self.out.history_end(room, page.ends);
            }
            Err(e) => self.out.error(Some(room), &e),
        }
    }

    /// At a forced quit: the lines that will not be sent, each with its text.
    fn report_unsent(&mut self) {
        let unsent = std::mem::take(&mut self.outbox).into_iter();
        for line in std::mem::take(&mut self.unconfirmed).into_iter().chain(unsent) {
            let error = ClientError::ConnectionLost("left before it could be sent".into());
            self.out.not_sent(&line.room, Some(line.typed), &line.text, &error, line.resent);
            self.failed.get_or_insert(error);
        }
    }

    /// A direct message pushed for a conversation not joined: shown, and the conversation
    /// joined from there on so that the next ones come in order.
    async fn direct(&mut self, message: chat_client::ChatMessage) {
        let room = message.room.clone();
        if self.rooms.contains_key(&room) {
            return; // Joined meanwhile: the room's stream has it.
        }
        self.out.message(&message, false);
        let shown = self.out.shown(&room);
        match self.join(&room, Some(message.seq), false).await {
            Ok(()) => self.out.info(&format!(
                "{shown}: /query {} types there, /msg {} TEXT answers",
                &shown[1..],
                &shown[1..]
            )),
            Err(e) => self.out.error(Some(&room), &e),
        }
    }

    /// `/msg NAME TEXT`: `text` for the conversation with `name`, joined first if need be.
    async fn message_to(&mut self, name: &str, text: &str) {
        let room = self.canonical(&format!("@{name}"));
        if let Err(e) = self.join(&room, None, false).await {
            return self.out.error(Some(&room), &e);
        }
        self.typed += 1;
        let (room, text) = (room, text.to_owned());
        self.queue(Line {
            room,
            text,
            typed: self.typed,
            resent: false,
            cut_in: None,
            sent_as: None,
        });
    }

    /// The node's name for the room `room` means to this user: `@bob` is the conversation
    /// with bob, as the node spells it (`@ada+bob`).
    fn canonical(&self, room: &str) -> String {
        let me = chat_core::UserName::parse(self.client.name());
        match me.and_then(|me| chat_core::RoomName::resolve(room, &me)) {
            Ok(room) => room.to_string(),
            Err(_) => room.to_ascii_lowercase(),
        }
    }

    /// Handles one typed line; false to quit.
    async fn handle_line(&mut self, line: &str) -> bool {
        let (command, arg) = line.split_once(' ').map_or((line, ""), |(c, a)| (c, a.trim()));
        if command == "/msg" {
            match arg.split_once(' ') {
                Some((name, text)) if !text.trim().is_empty() => {
                    self.message_to(name, text.trim()).await;
                }
                _ => self.out.usage("/msg NAME TEXT"),
            }
            return true;
        }
        match command {
            "/register" => {
                match arg {
                    "" => self.out.usage("/register PASSWORD (or `chat register`, which asks for it unseen)"),
                    password => match self.client.register(password).await {
                        Ok(()) => self.out.info(&format!(
                            "registered {}: the name needs its password now (this machine keeps the session)",
                            self.client.name()
                        )),
                        Err(e) => self.out.error(None, &e),
                    },
                }
                return true;
            }
            "/passwd" => {
                match arg.split_once(' ') {
                    Some((old, new)) => match self.client.change_password(old, new.trim()).await {
                        Ok(ended) => self
                            .out
                            .info(&format!("password changed; {ended} other session(s) ended")),
                        Err(e) => self.out.error(None, &e),
                    },
                    None => self.out.usage("/passwd OLD NEW (or `chat passwd`, which asks unseen)"),
                }
                return true;
            }
            "/delete" => {
                match self.room_arg(arg) {
                    // The room's name, typed out: a deletion is not undone.
                    Some(room) if !arg.is_empty() => {
                        if let Err(e) =
                            self.client.moderate(&room, chat_client::Moderation::DeleteRoom).await
                        {
                            self.out.error(Some(&room), &e);
                        }
                    }
                    _ => self.out.usage(
                        "/delete ROOM (its owner, or the node's operators; its history goes too)",
                    ),
                }
                return true;
            }
            "/kick" | "/ban" | "/unban" | "/mute" | "/unmute" | "/op" | "/deop" | "/invite"
            | "/inviteonly" | "/topic" => {
                match (&self.current, moderation(command, arg)) {
                    (Some(room), Ok(action)) => {
                        let room = room.clone();
                        if let Err(e) = self.client.moderate(&room, action).await {
                            self.out.error(Some(&room), &e);
                        }
                    }
                    (None, _) => {
                        self.out.usage(&format!("{command} acts on a room: /join one first"))
                    }
                    (_, Err(usage)) => self.out.usage(usage),
                }
                return true;
            }
            "/logout" => {
                self.logged_out = true;
                let logged_out = match self.client.logout().await {
                    Ok(()) => "logged out: this session no longer logs in",
                    Err(_) => "logged out here; the node may not have heard",
                };
                if let Some(tokens) = &self.tokens {
                    tokens.remove();
                }
                self.out.info(logged_out);
                return false;
            }
            _ => {}
        }
        let arg = &self.canonical_arg(command, arg);
        match command {
            "" => {}
            "/quit" | "/exit" => return false,
            "/retry" => self.retry(),
            "/join" if !arg.is_empty() => {
                if let Err(e) = self.join(arg, None, true).await {
                    self.out.error(Some(arg), &e);
                }
            }
            "/leave" => match self.room_arg(arg) {
                Some(room) if self.rooms.contains_key(&room) => self.leave(&room),
                _ => self.out.usage("not in that room"),
            },
            "/switch" if !arg.is_empty() => {
                let shown = self.out.shown(arg);
                if self.rooms.contains_key(arg) {
                    self.current = Some(arg.to_owned());
                    self.out.typing(arg);
                } else {
                    self.out.usage(&format!("not in {shown}; /join it first"));
                }
            }
            "/create" if !arg.is_empty() => match self.client.create_room(arg).await {
                Ok(existed) => {
                    self.out.created(arg, existed);
                    if let Err(e) = self.join(arg, None, true).await {
                        self.out.error(Some(arg), &e);
                    }
                }
                Err(e) => self.out.error(Some(arg), &e),
            },
            "/query" if !arg.is_empty() => {
                if let Err(e) = self.join(arg, None, true).await {
                    self.out.error(Some(arg), &e);
                }
            }
            "/rooms" => match self.client.rooms().await {
                Ok(rooms) => self.out.rooms(&rooms),
                Err(e) => self.out.error(None, &e),
            },
            "/who" => match self.room_arg(arg) {
                Some(room) => match self.client.who(&room).await {
                    Ok(names) => self.out.who(&room, &names),
                    Err(e) => self.out.error(Some(&room), &e),
                },
                None => self.out.usage("/who ROOM, or /join a room first"),
            },
            "/history" => match (&self.current, arg.parse::<u32>()) {
                (Some(room), Ok(limit)) => self.page_back(&room.clone(), limit).await,
                (Some(room), Err(_)) if arg.is_empty() => {
                    self.page_back(&room.clone(), chat_client::JOIN_PAGE).await;
                }
                (None, _) => self.out.usage("/history [N], in a room: /join one first"),
                (Some(_), Err(_)) => self.out.usage("/history [N]: N is how many messages"),
            },
            "/help" => self.out.info(
                "commands: /join ROOM, /create ROOM, /leave [ROOM], /switch ROOM, /rooms, /who [ROOM], \
                 /history [N], /retry (sends again the lines that failed), /msg NAME TEXT, /query NAME (a direct conversation, also \
                 @NAME where a room goes), /register PASSWORD, /passwd OLD NEW, /logout, /quit; \
                 operators of the room typed into: /topic TEXT, /kick NAME [REASON], \
                 /ban NAME [MINUTES] [REASON], /unban NAME, /mute NAME [MINUTES], /unmute NAME, \
                 /op NAME, /deop NAME, /invite NAME, /inviteonly on|off, /delete ROOM; anything \
                 else is sent to the room named in the prompt",
            ),
            _ if command.starts_with('/') => {
                self.out.usage(&format!("unknown command {command}; /help lists them"));
            }
            _ => match &self.current {
                Some(room) => {
                    self.typed += 1;
                    let (room, text) = (room.clone(), line.to_owned());
                    self.queue(Line { room, text, typed: self.typed, resent: false, cut_in: None, sent_as: None });
                }
                None => self.out.usage("not in a room: /join ROOM first"),
            },
        }
        true
    }

    /// A command's argument as the node names it: a room (in lower case, as the node spells
    /// rooms) or, for `/query NAME` and `@NAME`, a direct conversation.
    fn canonical_arg(&self, command: &str, arg: &str) -> String {
        match command {
            "/query" if !arg.is_empty() => self.canonical(&format!("@{arg}")),
            _ if arg.is_empty() => String::new(),
            _ => self.canonical(arg),
        }
    }

    /// The room an argument names, or the current room when there is none.
    fn room_arg(&self, arg: &str) -> Option<String> {
        if arg.is_empty() { self.current.clone() } else { Some(arg.to_owned()) }
    }

    /// Joins `room` after `after` and starts forwarding its events; `target` makes it the
    /// room typed lines go to (the first room joined is that anyway).
    pub async fn join(
        &mut self,
        room: &str,
        after: Option<Seq>,
        target: bool,
    ) -> Result<(), ClientError> {
        let room = &self.canonical(room);
        if self.rooms.contains_key(room) {
            if target {
                self.current = Some(room.to_owned());
                let shown = self.out.shown(room);
                self.out.info(&format!("already in {shown}; typing into {shown}"));
            }
            return Ok(());
        }
        let mut joined = self.client.join(room, after).await?;
        let name = joined.name().to_owned();
        let target = target || self.current.is_none();
        self.out.joined(&name, joined.history_until(), joined.gap(), target);
        if !joined.topic().is_empty() {
            self.out.topic(&name, joined.topic());
        }
        let (sender, history_until) = (joined.sender(), joined.history_until());
        let tx = self.events_tx.clone();
        let tag = name.clone();
        let forward = tokio::spawn(async move {
            while let Some(event) = joined.next().await {
                if tx.send((tag.clone(), Some(event))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send((tag, None)).await;
        });
        self.last_seen.entry(name.clone()).or_insert(after.unwrap_or(0));
        self.joins += 1;
        let joined = Joined {
            id: self.joins,
            sender,
            forward,
            history_until,
            ended: false,
            history_ended: false,
        };
        self.rooms.insert(name.clone(), joined);
        if target {
            self.current = Some(name);
        }
        Ok(())
    }

    fn leave(&mut self, room: &str) {
        if let Some(joined) = self.rooms.remove(room) {
            // Dropping the room's sender and reader finishes the stream: the node lets go.
            joined.forward.abort();
            self.out.left(room);
        }
        if self.current.as_deref() == Some(room) {
            self.current = self.rooms.keys().next().cloned();
            if let Some(now) = &self.current {
                self.out.typing(now);
            }
        }
    }

    async fn room_event(&mut self, room: String, event: Option<RoomEvent>) {
        match event {
            Some(RoomEvent::Message { message, history }) => {
                let seen = self.last_seen.entry(room.clone()).or_default();
                *seen = (*seen).max(message.seq);
                let oldest = self.oldest_seen.entry(room.clone()).or_insert(message.seq);
                *oldest = (*oldest).min(message.seq);
                let acked = self.unseen_acks.remove(&(room.clone(), message.seq));
                if !acked && message.sender == self.client.name() {
                    if history {
                        // Replayed at a rejoin: perhaps a line the lost connection cut off.
                        self.confirm(&room, &message.body);
                    } else {
                        self.unacked_echoes.push((room.clone(), message.seq, message.body.clone()));
                    }
                }
                self.out.message(&message, history);
            }
            Some(RoomEvent::HistoryEnd(ends)) => {
                self.out.history_end(&room, ends);
                if let Some(joined) = self.rooms.get_mut(&room) {
                    joined.history_ended = true;
                }
            }
            Some(RoomEvent::Arrived { name }) => self.out.arrived(&room, &name),
            Some(RoomEvent::Moderation { by, action }) => self.out.moderated(&room, &by, &action),
            Some(RoomEvent::Left { name, reason }) => self.out.departed(&room, &name, reason),
            Some(RoomEvent::Error(error)) if error.code == ErrorCode::TooSlow => {
                let after = error.last_seq.or_else(|| self.last_seen.get(&room).copied());
                self.out.info(&format!("{room}: {}; rejoining", error.message));
                let target = self.current.as_deref() == Some(room.as_str());
                if let Some(joined) = self.rooms.remove(&room) {
                    joined.forward.abort();
                }
                if let Err(e) = self.join(&room, after, target).await {
                    self.out.error(Some(&room), &e);
                }
            }
            Some(RoomEvent::Error(error)) => {
                self.out.error(Some(&room), &ClientError::from_frame(error));
            }
            // The stream ended: the connection is going (which `closed` handles), or the
            // node ended the membership after an error printed above.
            None => {
                if let Some(joined) = self.rooms.get_mut(&room) {
                    joined.ended = true;
                }
            }
        }
    }

    /// The connection is gone: say so once, and start connecting again.
    fn lost(&mut self, lost: ClientError) -> Result<(), ClientError> {
        if matches!(lost, ClientError::Replaced) {
            return Err(lost);
        }
        let reason = match lost {
            ClientError::GoingAway => "the node is shutting down".to_owned(),
            other => other.to_string(),
        };
        self.out.info(&format!(
            "lost the connection to {} ({reason}); reconnecting by itself, and what you type \
             meanwhile is sent once it is back",
            self.client.server()
        ));
        for joined in self.rooms.values_mut() {
            joined.forward.abort();
            joined.ended = false;
        }
        self.attempts = 1;
        self.reconnecting = Some((self.attempt(FIRST_BACKOFF), FIRST_BACKOFF));
        Ok(())
    }

    fn attempt(&self, wait: Duration) -> Boxed<Result<Client, ClientError>> {
        let attempt = self.client.reconnect();
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            attempt.await
        })
    }

    /// One attempt to connect again is over: rejoin every room after the last message
    /// printed, or try again later.
    async fn reconnected(
        &mut self,
        attempt: Result<Client, ClientError>,
    ) -> Result<(), ClientError> {
        let client = match attempt {
            Ok(client) => client,
            Err(
                e @ (ClientError::NameTaken(_)
                | ClientError::InvalidName(_)
                | ClientError::NotTrusted { .. }),
            ) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "reconnect attempt failed");
                let wait = self.reconnecting.as_ref().map_or(FIRST_BACKOFF, |(_, w)| *w);
                let wait = (wait * 2).min(MAX_BACKOFF);
                self.attempts += 1;
                self.reconnecting = Some((self.attempt(wait), wait));
                return Ok(());
            }
        };
        self.reconnecting = None;
        self.unacked_echoes.clear();
        self.client = client;
        self.out.info(&format!("reconnected to {}", self.client.server()));
        keep_token(self.tokens.as_ref(), &self.client);
        let target = self.current.clone();
        let rooms: Vec<String> = std::mem::take(&mut self.rooms).into_keys().collect();
        for room in rooms {
            let after = self.last_seen.get(&room).copied();
            if let Err(e) = self.join(&room, after, false).await {
                self.out.error(Some(&room), &e);
            }
        }
        self.current = target.filter(|room| self.rooms.contains_key(room));
        Ok(())
    }
}

/// Keeps `client`'s session token for the next run, if there is a place for it.
fn keep_token(tokens: Option<&TokenFile>, client: &Client) {
    if let Some(tokens) = tokens
        && let Err(e) = tokens.store(&client.token())
    {
        tracing::warn!(path = %tokens.path().display(), error = %e, "cannot keep the session token");
    }
}

/// A moderation command's action, or its usage.
fn moderation(command: &str, arg: &str) -> Result<chat_client::Moderation, &'static str> {
    use chat_client::Moderation as M;
    let (name, rest) = arg.split_once(' ').map_or((arg, ""), |(n, r)| (n, r.trim()));
    let name = name.to_owned();
    // An optional number of minutes first, then the rest as the reason.
    let (minutes, reason) = match rest.split_once(' ').map_or((rest, ""), |(m, r)| (m, r.trim())) {
        (m, r) if m.parse::<u32>().is_ok() => (m.parse().ok(), r.to_owned()),
        _ => (None, rest.to_owned()),
    };
    let needs_name = |usage| if name.is_empty() { Err(usage) } else { Ok(()) };
    Ok(match command {
        "/topic" => M::Topic(arg.to_owned()),
        "/inviteonly" => match arg {
            "on" => M::InviteOnly(true),
            "off" => M::InviteOnly(false),
            _ => return Err("/inviteonly on|off"),
        },
        "/kick" => {
            needs_name("/kick NAME [REASON]")?;
            M::Kick { name, reason: rest.to_owned() }
        }
        "/ban" => {
            needs_name("/ban NAME [MINUTES] [REASON]")?;
            M::Ban { name, minutes, reason }
        }
        "/mute" => {
            needs_name("/mute NAME [MINUTES]")?;
            M::Mute { name, minutes }
        }
        "/unban" => {
            needs_name("/unban NAME")?;
            M::Unban { name }
        }
        "/unmute" => {
            needs_name("/unmute NAME")?;
            M::Unmute { name }
        }
        "/op" => {
            needs_name("/op NAME")?;
            M::Op { name }
        }
        "/deop" => {
            needs_name("/deop NAME")?;
            M::Deop { name }
        }
        _ => {
            needs_name("/invite NAME")?;
            M::Invite { name }
        }
    })
}
