//! One client connection.
//!
//! The first bidirectional stream is the control stream: it must open with a hello, which
//! the core accepts (the node answers with a welcome) or refuses (the node answers with an
//! error frame and closes the connection with a code saying why). After the welcome the
//! control stream answers room listings and who-is-online, and every further bidirectional
//! stream is a room stream served by its own task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_core::accounts::Identity;
use chat_core::control::{self, ControlAction, Hello, Received};
use chat_core::names::DIRECT_PREFIX;
use chat_core::{ConnId, Connected, ErrorCode, Refusal, RoomName, SessionToken, UserName};
use chat_history::{Anchor, PageLimit};
use chat_proto::io::{FrameReader, write_frame};
use chat_proto::{
    ClientFrame, ErrorFrame, LeftReason, Login, NodeFrame, RoomInfo, Seq, UNREAD_COUNTED, Welcome,
    codec, codes,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};
use web_transport_quinn::{RecvStream, SendStream, Session};

use crate::admission::Slot;
use crate::admission::{HELLO_STRIKES, STRIKE_WINDOW, Strike};
use crate::mailbox::{Outbox, Outgoing};
use crate::reply::error_frame;
use crate::seams::DirectoryError;
use crate::{Conn, Shared, login, moderation, room};

/// How a client reached the node: the native protocol on QUIC, or a browser's WebTransport
/// session (HTTP/3), whose streams carry the same frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Native,
    Browser,
}

impl Flavor {
    /// Bidirectional streams the connection keeps open besides its room streams: the
    /// control stream, and a WebTransport session's CONNECT request, open as long as it is.
    pub(crate) fn streams_beside_rooms(self) -> u32 {
        match self {
            Self::Native => 1,
            Self::Browser => 2,
        }
    }
}

/// Serves one connection from handshake to close.
///
/// The incoming connection comes boxed, and the handshakes run in a box of their own: the
/// task is sized for the largest state it can be in, and it lives as long as the
/// connection, so it is to hold only what the open connection needs.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    incoming: Box<quinn::Incoming>,
    slot: Slot,
    flavor: Flavor,
) {
    let id = ConnId(shared.next_id());
    let span = info_span!("conn", id = id.0, remote = %incoming.remote_address(), ?flavor);
    shared.metrics.connections.inc();
    serve_in_span(&shared, id, incoming, &slot, flavor).instrument(span).await;
    shared.metrics.connections.dec();
}

/// The connection's life inside its span: opened and greeted, served, then cleaned up.
async fn serve_in_span(
    shared: &Arc<Shared>,
    id: ConnId,
    incoming: Box<quinn::Incoming>,
    slot: &Slot,
    flavor: Flavor,
) {
    let opening = Box::pin(open_and_greet(shared, id, incoming, slot.id(), flavor));
    let Some((connection, greeted)) = opening.await else { return };
    let conn = Arc::new(Conn {
        id,
        connection: Arc::clone(&connection),
        name: greeted.name,
        token: greeted.token,
        slot: slot.id(),
        frames: Arc::new(tokio::sync::Semaphore::new(2 * shared.limits.max_frame_len as usize)),
        pages: Arc::new(tokio::sync::Semaphore::new(crate::pages::PAGES_PER_CONNECTION)),
        flavor,
    });
    let rooms = run(shared, &conn, greeted.send, greeted.reader, greeted.pushed, slot).await;
    shared.core().disconnect(id, departure(&connection));
    shared.directory.release(id);
    shared.connections().remove(&id);
    drain(rooms).await;
    if *shared.stopping.borrow() {
        connection.close(codes::close::GOING_AWAY, b"the node is shutting down");
    }
    info!("disconnected");
}

/// The QUIC handshake (and WebTransport's) within the handshake timeout, then the hello.
async fn open_and_greet(
    shared: &Arc<Shared>,
    id: ConnId,
    incoming: Box<quinn::Incoming>,
    slot: u64,
    flavor: Flavor,
) -> Option<(Arc<Session>, Greeted)> {
    let timeout = shared.config.handshake_timeout;
    shared.handshaking.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let handshake = tokio::time::timeout(timeout, open_session(*incoming, flavor)).await;
    shared.handshaking.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let connection = match handshake {
        Ok(Ok(connection)) => Arc::new(connection),
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return None;
        }
        Err(_) => {
            debug!("handshake timed out");
            return None;
        }
    };
    let greeted = greet(shared, id, &connection, slot, flavor).await?;
    Some((connection, greeted))
}

/// The QUIC handshake, and for a browser the WebTransport one after it: its HTTP/3
/// settings and its CONNECT request, which must ask for [`crate::web::SESSION_PATH`].
async fn open_session(incoming: quinn::Incoming, flavor: Flavor) -> anyhow::Result<Session> {
    let connection = incoming.await?;
    if flavor == Flavor::Native {
        return Ok(Session::raw(connection));
    }
    let request = web_transport_quinn::Request::accept(connection).await?;
    if request.url.path() != crate::web::SESSION_PATH {
        let path = request.url.path().to_owned();
        request.reject(web_transport_quinn::http::StatusCode::NOT_FOUND).await?;
        anyhow::bail!(
            "a WebTransport session asked for {path:?}, not {}",
            crate::web::SESSION_PATH
        );
    }
    Ok(request.ok().await?)
}

/// Direct messages waiting to be pushed on a connection's control stream.
const INBOX: usize = 256;

/// A connection welcomed: its control stream, its user, and its inbox's frames.
struct Greeted {
    send: SendStream,
    reader: FrameReader<RecvStream>,
    name: UserName,
    token: SessionToken,
    pushed: mpsc::Receiver<Outgoing>,
}

/// Waits for the hello and answers it. `None` when the connection was refused or lost.
async fn greet(
    shared: &Shared,
    id: ConnId,
    connection: &Arc<Session>,
    slot: u64,
    flavor: Flavor,
) -> Option<Greeted> {
    let hello = async {
        let (send, recv) = connection.accept_bi().await.ok()?;
        let mut reader = FrameReader::new(recv, shared.limits.max_frame_len as usize)
            .with_frame_deadline(shared.config.frame_timeout);
        let received = Received::from_read(reader.read().await);
        Some((send, reader, received))
    };
    let timeout = shared.config.handshake_timeout;
    let Ok(Some((mut send, reader, received))) = tokio::time::timeout(timeout, hello).await else {
        shared.metrics.error("hello_timeout");
        connection.close(codes::close::HELLO_TIMEOUT, b"no hello in time");
        return None;
    };
    let Hello { name, resume, login } = match control::greeting(received) {
        Ok(hello) => hello,
        Err(refusal) => {
            refuse(shared, connection, &mut send, &refusal).await;
            return None;
        }
    };
    let token: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new()).ok()?.expose();
    let ip = connection.remote_address().ip();
    let connected = match UserName::parse(&name) {
        Ok(user) => welcome_as(shared, id, &user, resume, login.as_ref(), token, ip).await,
        // An invalid name is left to the core to refuse with its reason.
        Err(_) => shared.core().connect(id, &name, resume, token, Identity::Guest, Instant::now()),
    };
    let connected = match connected {
        Ok(connected) => connected,
        Err(refusal) => {
            // The name as the client sent it, escaped; a few times per address, not a flood.
            let strike = match refusal.code() {
                ErrorCode::NameTaken
                | ErrorCode::InvalidName
                | ErrorCode::LoginRequired
                | ErrorCode::WrongPassword
                | ErrorCode::UnknownAccount
                | ErrorCode::TooManyLogins => {
                    shared.admission.strike(ip, shared.config.rate_limited_bar)
                }
                _ => Strike::Logged, // Not the client's doing.
            };
            match strike {
                Strike::Logged => info!(?name, %refusal, "refused hello"),
                Strike::Quiet => debug!(?name, %refusal, "refused hello"),
                Strike::Barred => warn!(
                    %ip,
                    "barred an address after {HELLO_STRIKES} refused hellos within {STRIKE_WINDOW:?}"
                ),
            }
            refuse(shared, connection, &mut send, &refusal).await;
            return None;
        }
    };
    // Pushed frames wait for the welcome: the loop that writes them starts after it.
    let (inbox, pushed) = mpsc::channel(INBOX);
    shared.core().attach_inbox(id, Outbox { queue: inbox, evicted: None });
    if let Some(old) = connected.replaced
        && let Some((stale, _)) = shared.connections().remove(&old)
    {
        info!(name = %connected.name, old = old.0, "session taken over by a reconnect");
        stale.close(codes::close::SESSION_REPLACED, b"this session was resumed elsewhere");
    }
    shared.connections().insert(id, (Arc::clone(connection), slot));
    // Now its room streams, and the window for them (see `endpoint`), before the welcome
    // so that the client has them when it joins.
    let streams = first_room_streams(shared) + flavor.streams_beside_rooms();
    connection.set_max_concurrent_bi_streams(streams.into());
    connection.set_receive_window(shared.windows.welcomed.into());
    let welcome = NodeFrame::Welcome(Welcome {
        name: connected.name.to_string(),
        token,
        account: shared.core().is_account(id),
        limits: shared.limits,
    });
    if write_frame(&mut send, &welcome, codec::MAX_NODE_FRAME_LEN).await.is_err() {
        shared.core().disconnect(id, departure(connection));
        shared.directory.release(id);
        return None;
    }
    info!(name = %connected.name, "online");
    Some(Greeted { send, reader, name: connected.name, token, pushed })
}

/// Judges the hello of `user` (its account, if registered), claims the name in the
/// directory (in cluster mode, every node's) and has the core welcome it; a new account is
/// registered then, and a login becomes one of the account's sessions.
async fn welcome_as(
    shared: &Shared,
    id: ConnId,
    user: &UserName,
    resume: Option<SessionToken>,
    login: Option<&Login>,
    token: SessionToken,
    ip: std::net::IpAddr,
) -> Result<Connected, Refusal> {
    let identified = login::identify(shared, user, resume, login, ip).await?;
    let identity = identified.identity;
    let owner = identity == Identity::Account;
    match shared.directory.claim(id, user, token, resume, owner).await {
        Ok(true) => {}
        Ok(false) => return Err(Refusal::NameTaken(user.to_string())),
        Err(e) => return Err(Refusal::DirectoryUnavailable(e.to_string())),
    }
    let connected =
        shared.core().connect(id, user.as_str(), resume, token, identity, Instant::now());
    let settled = match connected {
        Ok(connected) => {
            login::settle(shared, user, identified, token, resume).await.map(|()| connected)
        }
        Err(refusal) => Err(refusal),
    };
    if settled.is_err() {
        shared.core().disconnect(id, LeftReason::Disconnected);
        shared.directory.release(id);
    }
    settled
}

/// Answers the control stream and accepts room streams until the connection ends or the
/// node stops. Returns the room tasks still running.
async fn run(
    shared: &Arc<Shared>,
    conn: &Arc<Conn>,
    mut send: SendStream,
    mut reader: FrameReader<RecvStream>,
    mut pushed: mpsc::Receiver<Outgoing>,
    slot: &Slot,
) -> JoinSet<()> {
    let connection = &conn.connection;
    // Until it joins a room, a full node may close it to make room for a new connection.
    let mut make_room = slot.idle();
    let mut idle = true;
    let mut rooms = JoinSet::new();
    let mut stopping = shared.stopping.clone();
    let most_rooms = shared.limits.max_rooms_per_connection;
    let mut allowed_rooms = first_room_streams(shared);
    loop {
        tokio::select! {
            read = reader.read::<ClientFrame>() => {
                if let Err(codec::FrameError::Io(e)) = &read {
                    // The connection ended under the read: nothing to answer.
                    debug!(error = %e, "control stream ended");
                    break;
                }
                let action = shared.core().on_control(conn.id, Received::from_read(read), Instant::now());
                // Boxed: the answers' futures are large, and held inline they would size
                // every connection's task for its whole life.
                let answering = Box::pin(answer(shared, conn, &mut send, action));
                let Some(reply) = answering.await else { break };
                if let NodeFrame::Error(e) = &reply {
                    shared.metrics.error_code(e.code);
                }
                let Ok(reply) = codec::encode(&reply, codec::MAX_NODE_FRAME_LEN) else { break };
                let _room = shared.pages.hold(reply.len()).await;
                if !write_control(shared, connection, &mut send, reply).await {
                    break;
                }
            }
            // A direct message of a conversation the user is not in.
            Some(Outgoing::Message(_, frame) | Outgoing::Frame(frame)) = pushed.recv() => {
                if !write_control(shared, connection, &mut send, frame).await {
                    break;
                }
            }
            told = &mut make_room, if idle => {
                idle = false;
                if told.is_ok() {
                    info!("closed to make room for a new connection: it had joined no room");
                    shared.metrics.error("made_room");
                    connection.close(codes::close::MADE_ROOM, b"the node is full, and this connection had joined no room");
                    break;
                }
            }
            stream = connection.accept_bi() => {
                let Ok((room_send, room_recv)) = stream else { break };

                rooms.spawn(room::serve(Arc::clone(shared), Arc::clone(conn), room_send, room_recv).in_current_span());
                while rooms.try_join_next().is_some() {}
                if rooms.len() >= allowed_rooms as usize && allowed_rooms < most_rooms {
                    // All in use: allow twice as many (plus the streams beside them).
                    allowed_rooms = (allowed_rooms * 2).min(most_rooms);
                    let streams = allowed_rooms + conn.flavor.streams_beside_rooms();
                    connection.set_max_concurrent_bi_streams(streams.into());
                }
            }
            () = crate::stopping(&mut stopping) => break,
        }
    }
    rooms
}

/// The answer to a control request, or `None` once the connection is to end (the request
/// said goodbye, logged out, or broke the protocol).
async fn answer(
    shared: &Arc<Shared>,
    conn: &Conn,
    send: &mut SendStream,
    action: ControlAction,
) -> Option<NodeFrame> {
    let connection = &conn.connection;
    let reply = match action {
        ControlAction::ListRooms => match shared.directory.rooms(&conn.name).await {
            Ok(rooms) => match with_unread(shared, conn, with_topics(shared, rooms)).await {
                Ok(rooms) => NodeFrame::Rooms { rooms },
                Err(refusal) => error_frame(&refusal, None).into(),
            },
            Err(e) => unavailable(&e).into(),
        },
        ControlAction::MarkRead { room, seq } => {
            match shared.accounts.mark(conn.name.key(), room.clone(), seq).await {
                Ok(seq) => NodeFrame::Marked { room, seq },
                Err(e) => error_frame(&Refusal::AccountsUnavailable(e.to_string()), None).into(),
            }
        }
        ControlAction::Who { room } => match shared.directory.who(&room).await {
            Ok(Ok(names)) => NodeFrame::Members { room, names },
            Ok(Err(refusal)) => error_frame(&refusal, None).into(),
            Err(e) => unavailable(&e).into(),
        },
        ControlAction::CreateRoom { room } => match create_room(shared, conn, &room).await {
            Ok(existed) => NodeFrame::RoomCreated { room: room.to_string(), existed },
            Err(refusal) => error_frame(&refusal, None).into(),
        },
        ControlAction::Register { password } => {
            let ip = connection.remote_address().ip();
            match login::register(shared, conn.id, &conn.name, &password, conn.token, ip).await {
                Ok(()) => {
                    info!(name = %conn.name, "registered");
                    NodeFrame::Registered { name: conn.name.to_string() }
                }
                Err(refusal) => error_frame(&refusal, None).into(),
            }
        }
        ControlAction::ChangePassword { old, new } => {
            let ip = connection.remote_address().ip();
            match login::change_password(shared, &conn.name, &old, &new, conn.token, ip).await {
                Ok(ended) => {
                    info!(name = %conn.name, sessions_ended = ended, "password changed");
                    NodeFrame::PasswordChanged {
                        sessions_ended: u32::try_from(ended).unwrap_or(u32::MAX),
                    }
                }
                Err(refusal) => error_frame(&refusal, None).into(),
            }
        }
        ControlAction::Logout => {
            let reply = match login::logout(shared, &conn.name, conn.token).await {
                Ok(()) => NodeFrame::LoggedOut,
                Err(refusal) => error_frame(&refusal, None).into(),
            };
            shared.core().disconnect(conn.id, LeftReason::Disconnected);
            say_last(send, &reply).await;
            info!(name = %conn.name, "logged out");
            connection.close(codes::close::NORMAL, b"logged out");
            return None;
        }
        ControlAction::Moderate { room, action } => {
            match moderation::moderate(shared, &conn.name, &room, action).await {
                Ok(()) => NodeFrame::Moderated { room: room.to_string() },
                Err(refusal) => error_frame(&refusal, None).into(),
            }
        }
        ControlAction::Refuse(refusal) => error_frame(&refusal, None).into(),
        ControlAction::Close(refusal) => {
            warn!(%refusal, "closed a connection on its control stream");
            refuse(shared, connection, send, &refusal).await;
            if refusal == Refusal::RateLimited {
                shared.bar(connection);
            }
            return None;
        }
        ControlAction::Bye => {
            // Before the close, so that its rooms hear the user quit, not that
            // the node dropped it.
            shared.core().disconnect(conn.id, LeftReason::Disconnected);
            connection.close(codes::close::NORMAL, b"bye");
            return None;
        }
    };
    Some(reply)
}

/// Makes `room` unless it exists or the node has its most rooms; returns whether it existed.
/// An account that makes a room owns it.
async fn create_room(shared: &Arc<Shared>, conn: &Conn, room: &RoomName) -> Result<bool, Refusal> {
    let rooms = shared.room_names().await?;
    if rooms.iter().any(|existing| *existing == room.as_str()) {
        return Ok(true);
    }
    let named = rooms.iter().filter(|existing| !existing.starts_with(DIRECT_PREFIX));
    shared.core().check_room_count(named.count())?;
    shared.create_room(room).await.map_err(Refusal::Unanswerable)?;
    if shared.core().is_account(conn.id) {
        moderation::set_owner(shared, room, &conn.name).await?;
    }
    info!(%room, by = %conn.name, "room made");
    Ok(false)
}

/// `rooms` with their topics, which the core has from the rooms' rules (on every node in
/// cluster mode: it watches them all).
fn with_topics(shared: &Shared, mut rooms: Vec<RoomInfo>) -> Vec<RoomInfo> {
    let core = shared.core();
    for room in &mut rooms {
        if let Ok(name) = RoomName::parse(&room.name) {
            room.topic = core.topic(&name);
        }
    }
    rooms
}

/// `rooms` with, for an account, the messages after its read marker in each room it marked:
/// exact on a single node (its numbers are gap-free), counted from a page of the history in
/// cluster mode (whose numbers are shared by every room), up to [`UNREAD_COUNTED`].
async fn with_unread(
    shared: &Shared,
    conn: &Conn,
    mut rooms: Vec<RoomInfo>,
) -> Result<Vec<RoomInfo>, Refusal> {
    if !shared.core().is_account(conn.id) {
        return Ok(rooms);
    }
    let markers = shared.accounts.markers(conn.name.key()).await;
    let markers: HashMap<String, Seq> =
        markers.map_err(|e| Refusal::AccountsUnavailable(e.to_string()))?.into_iter().collect();
    for room in &mut rooms {
        let Some(&read) = markers.get(&room.name) else { continue };
        let unread = if shared.config.cluster.is_none() || room.last_seq <= read {
            room.last_seq.saturating_sub(read)
        } else {
            counted(shared, &room.name, read).await
        };
        room.unread = Some(u32::try_from(unread).unwrap_or(u32::MAX).min(UNREAD_COUNTED));
    }
    Ok(rooms)
}

/// The messages of `room` after `read`, up to [`UNREAD_COUNTED`] (a page of history).
async fn counted(shared: &Shared, room: &str, read: Seq) -> Seq {
    let Ok(room) = RoomName::parse(room) else { return 0 };
    let history = Arc::clone(&shared.history);
    let limit = PageLimit { messages: UNREAD_COUNTED as usize, bytes: usize::MAX };
    let page = tokio::task::spawn_blocking(move || history.page(&room, Anchor::After(read), limit));
    match page.await {
        Ok(Ok(page)) => page.messages.len() as Seq,
        _ => 0,
    }
}

/// Why a member of `connection` is leaving its rooms, as the rooms are told: the connection
/// timed out, was closed by the node, was closed or lost by the client, or is still open
/// (the client closed the room's stream).
pub(crate) fn departure(connection: &Session) -> LeftReason {
    use web_transport_quinn::SessionError;
    match connection.close_reason() {
        None => LeftReason::Left,
        Some(SessionError::ConnectionError(quinn::ConnectionError::TimedOut)) => {
            LeftReason::TimedOut
        }
        Some(SessionError::ConnectionError(quinn::ConnectionError::LocallyClosed)) => {
            LeftReason::Dropped
        }
        Some(_) => LeftReason::Disconnected,
    }
}

/// The room streams a connection may open at first.
fn first_room_streams(shared: &Shared) -> u32 {
    shared.limits.max_rooms_per_connection.min(crate::FIRST_ROOM_STREAMS)
}

/// Lets the room tasks finish writing what they have (acks in flight during a shutdown).
async fn drain(mut rooms: JoinSet<()>) {
    let drained = tokio::time::timeout(crate::DRAIN_TIMEOUT, async {
        while rooms.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        rooms.abort_all();
    }
}

/// The answer to a request the directory could not serve.
fn unavailable(e: &DirectoryError) -> ErrorFrame {
    error_frame(&Refusal::Unanswerable(e.to_string()), None)
}

/// Sends `refusal` on the control stream, gives it a moment to arrive, and closes the
/// connection with its close code (whose reason repeats it, for clients that miss the frame).
async fn refuse(shared: &Shared, connection: &Session, send: &mut SendStream, refusal: &Refusal) {
    let error = error_frame(refusal, None);
    shared.metrics.error_code(error.code);
    let reason = error.message.clone();
    say_last(send, &NodeFrame::Error(error)).await;
    connection.close(refusal.close_code(), reason.as_bytes());
}

/// Writes `bytes` to the control stream; false if the connection is gone, or was closed
/// because its client let the write make no progress for `write_timeout` (it reads nothing
/// of its control stream: it is closed, not waited for).
async fn write_control(
    shared: &Shared,
    connection: &Session,
    send: &mut SendStream,
    bytes: bytes::Bytes,
) -> bool {
    match tokio::time::timeout(shared.config.write_timeout, send.write_chunk(bytes)).await {
        Ok(written) => written.is_ok(),
        Err(_) => {
            shared.metrics.error("write_timeout");
            connection.close(codes::close::PROTOCOL_VIOLATION, b"the control stream was not read");
            false
        }
    }
}

/// Writes `frame` as the control stream's last and gives it a moment to arrive, before the
/// connection is closed.
async fn say_last(send: &mut SendStream, frame: &NodeFrame) {
    if write_frame(send, frame, codec::MAX_NODE_FRAME_LEN).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
}
