//! The interactive chat: rooms joined, lines typed sent to the current room, commands, and
//! reconnecting by itself after a dropped connection.
//!
//! Every room's events come through one channel, tagged with the room, so that one loop
//! prints them, reads input and notices a lost connection. Sends run as tasks of their own,
//! so a slow ack never holds up typing.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_client::{Client, ClientError, ErrorCode, RoomEvent, RoomSender, Seq};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::output::Output;

/// Events buffered from all rooms before the room readers pause.
const EVENT_BUFFER: usize = 1024;
/// The longest wait between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An event of one room; `None` when its stream ended.
type Tagged = (String, Option<RoomEvent>);

struct Joined {
    sender: RoomSender,
    forward: JoinHandle<()>,
}

pub struct Session {
    client: Client,
    out: Output,
    rooms: BTreeMap<String, Joined>,
    /// The newest sequence number seen per room, kept across reconnects.
    last_seen: BTreeMap<String, Seq>,
    current: Option<String>,
    events_tx: mpsc::Sender<Tagged>,
    events: mpsc::Receiver<Tagged>,
    sends: JoinSet<(String, Result<Seq, ClientError>)>,
}

impl Session {
    pub fn new(client: Client, out: Output) -> Self {
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        Self {
            client,
            out,
            rooms: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            current: None,
            events_tx,
            events,
            sends: JoinSet::new(),
        }
    }

    /// Runs until `/quit` or the end of input (after the sends in flight are acknowledged).
    ///
    /// # Errors
    /// Only what ends the session for good: the name taken over by a newer session.
    pub async fn run(mut self, mut input: mpsc::Receiver<String>) -> Result<(), ClientError> {
        loop {
            tokio::select! {
                line = input.recv() => match line {
                    Some(line) => if !self.handle_line(line.trim()).await { break },
                    None => break,
                },
                Some((room, event)) = self.events.recv() => self.room_event(room, event).await,
                Some(sent) = self.sends.join_next() => self.sent(sent),
                lost = self.client.closed() => self.reconnect(lost).await?,
            }
        }
        while let Some(sent) = self.sends.join_next().await {
            self.sent(sent);
        }
        self.close().await;
        Ok(())
    }

    /// Leaves every room and says goodbye to the node.
    pub async fn close(self) {
        self.client.close().await;
    }

    /// Handles one typed line; false to quit.
    async fn handle_line(&mut self, line: &str) -> bool {
        let (command, arg) = line.split_once(' ').map_or((line, ""), |(c, a)| (c, a.trim()));
        // Room names are case-insensitive and the node spells them in lower case.
        let arg = &arg.to_ascii_lowercase();
        match command {
            "" => {}
            "/quit" | "/exit" => return false,
            "/join" if !arg.is_empty() => match self.join(arg, None).await {
                Ok(()) => self.current = Some(arg.clone()),
                Err(e) => self.out.error(Some(arg), &e),
            },
            "/leave" => match self.room_arg(arg) {
                Some(room) if self.rooms.contains_key(&room) => self.leave(&room),
                _ => self.out.usage("not in that room"),
            },
            "/switch" if !arg.is_empty() => {
                if self.rooms.contains_key(arg) {
                    self.current = Some(arg.to_owned());
                    self.out.info(&format!("typing into {arg}"));
                } else {
                    self.out.usage(&format!("not in room {arg}; /join it first"));
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
            "/help" => self.out.info(
                "commands: /join ROOM, /leave [ROOM], /switch ROOM, /rooms, /who [ROOM], /quit; \
                 anything else is sent to the current room",
            ),
            _ if command.starts_with('/') => {
                self.out.usage(&format!("unknown command {command}; /help lists them"));
            }
            _ => self.send(line.to_owned()),
        }
        true
    }

    /// The room an argument names, or the current room when there is none.
    fn room_arg(&self, arg: &str) -> Option<String> {
        if arg.is_empty() { self.current.clone() } else { Some(arg.to_owned()) }
    }

    fn send(&mut self, body: String) {
        let Some(joined) = self.current.as_ref().and_then(|room| self.rooms.get(room)) else {
            return self.out.usage("not in a room: /join ROOM first");
        };
        let sender = joined.sender.clone();
        self.sends.spawn(async move { (sender.room().to_owned(), sender.send(body).await) });
    }

    fn sent(&mut self, sent: Result<(String, Result<Seq, ClientError>), tokio::task::JoinError>) {
        match sent {
            Ok((room, Ok(seq))) => self.out.stored(&room, seq),
            Ok((room, Err(e))) => self.out.error(Some(&room), &e),
            Err(_) => {}
        }
    }

    /// Joins `room` after `after` and starts forwarding its events.
    pub async fn join(&mut self, room: &str, after: Option<Seq>) -> Result<(), ClientError> {
        if self.rooms.contains_key(room) {
            self.current = Some(room.to_owned());
            return Ok(());
        }
        let mut joined = self.client.join(room, after).await?;
        let name = joined.name().to_owned();
        self.out.joined(&name, joined.history_until(), joined.gap());
        let sender = joined.sender();
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
        self.rooms.insert(name.clone(), Joined { sender, forward });
        if self.current.is_none() {
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
        }
    }

    async fn room_event(&mut self, room: String, event: Option<RoomEvent>) {
        match event {
            Some(RoomEvent::Message { message, history }) => {
                self.last_seen.insert(room, message.seq);
                self.out.message(&message, history);
            }
            Some(RoomEvent::Error(error)) if error.code == ErrorCode::TooSlow => {
                let after = error.last_seq.or_else(|| self.last_seen.get(&room).copied());
                self.out.info(&format!("{room}: {}; rejoining", error.message));
                self.rooms.remove(&room);
                if let Err(e) = self.join(&room, after).await {
                    self.out.error(Some(&room), &e);
                }
            }
            Some(RoomEvent::Error(error)) => {
                self.out.error(Some(&room), &ClientError::from_frame(error));
            }
            // A stream that ends on its own: the connection is going, which `closed` handles.
            None => {}
        }
    }

    /// Connects again after `lost`, and rejoins every room after the last message seen.
    async fn reconnect(&mut self, lost: ClientError) -> Result<(), ClientError> {
        if matches!(lost, ClientError::Replaced) {
            return Err(lost);
        }
        self.out.error(None, &lost);
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for joined in std::mem::take(&mut self.rooms).into_values() {
            joined.forward.abort();
        }
        let mut backoff = Duration::from_millis(200);
        let client = loop {
            tokio::time::sleep(backoff).await;
            match self.client.reconnect().await {
                Ok(client) => break client,
                Err(
                    e @ (ClientError::NameTaken(_)
                    | ClientError::InvalidName(_)
                    | ClientError::NotTrusted { .. }),
                ) => {
                    return Err(e);
                }
                Err(e) => {
                    self.out.info(&format!("reconnecting: {e}"));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        self.client = client;
        self.out.info(&format!("reconnected to {}", self.client.server()));
        for room in rooms {
            let after = self.last_seen.get(&room).copied();
            if let Err(e) = self.join(&room, after).await {
                self.out.error(Some(&room), &e);
            }
        }
        Ok(())
    }
}
