//! The chat client library: connect to a node, join rooms, send and receive messages.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chat_client::ClientError> {
//! use chat_client::{Client, ConnectOptions, Trust};
//! let client = Client::connect(ConnectOptions::new(
//!     "localhost:7700",
//!     "ada",
//!     Trust::CaFile("chat-data/certs/ca.pem".into()),
//! ))
//! .await?;
//! let mut room = client.join("general", None).await?;
//! let seq = room.sender().send("hello").await?;
//! while let Some(event) = room.next().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Client`]: one QUIC connection: the hello, room listings, who-is-online, joins, and
//!   the direct messages the node pushes for conversations not joined.
//! - `pace`: how a connection keeps below the node's send rate.
//! - [`Room`]: one joined room: its events (history, then live messages) and a
//!   [`RoomSender`] whose sends resolve to the sequence number the node acknowledged.
//! - [`ClientError`]: everything that can go wrong, each with a sentence for a person and an
//!   exit code for the `chat` program.

mod error;
mod pace;
mod room;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chat_proto::io::{FrameReader, write_frame};
use chat_proto::{ClientFrame, Limits, Login, NodeFrame, SessionToken, codec, codes};
use quinn::{RecvStream, SendStream};
use tokio::sync::{Mutex, mpsc, oneshot};

pub use chat_certs::Trust;
pub use chat_proto::{
    Anchor, ChatMessage, ErrorCode, ErrorFrame, Gap, LeftReason, Moderation, PageEnds, RoomInfo,
    Seq, UNREAD_COUNTED,
};
pub use error::ClientError;
use pace::{Pace, RequestPace};
pub use room::{JOIN_PAGE, Page, Posted, Room, RoomEvent, RoomSender, SLOW_DOWN_RETRIES};

/// How long a connection attempt may take before the server counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an otherwise quiet connection sends a keep-alive. It also lets a client learn
/// soon that a restarted node has forgotten its connection (the node answers with a reset).
const KEEP_ALIVE: Duration = Duration::from_secs(3);
/// Silence after which the client gives a connection up, in milliseconds (the node may set a
/// shorter one).
const IDLE_TIMEOUT_MS: u32 = 15_000;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `host:port` of the node; several nodes of a cluster separated by commas, tried in
    /// turn.
    pub server: String,
    pub name: String,
    pub trust: Trust,
    /// The session token of an earlier connection, to take the name back from it (and, for
    /// an account, to log in without the password while the account keeps the session).
    pub resume: Option<SessionToken>,
    /// The account's password, or a password to register the name with.
    pub login: Option<Login>,
    /// The local address to connect from; any of this machine's by default.
    pub local_ip: Option<IpAddr>,
}

impl ConnectOptions {
    pub fn new(server: impl Into<String>, name: impl Into<String>, trust: Trust) -> Self {
        Self {
            server: server.into(),
            name: name.into(),
            trust,
            resume: None,
            login: None,
            local_ip: None,
        }
    }

    /// These options logging in to the name's account with `password`.
    #[must_use]
    pub fn with_password(self, password: &str) -> Self {
        Self { login: Some(Login::Password(password.into())), ..self }
    }

    /// These options registering the name with `password` (and logging in to it).
    #[must_use]
    pub fn registering(self, password: &str) -> Self {
        Self { login: Some(Login::Register(password.into())), ..self }
    }

    /// The nodes to try: `server` split at its commas.
    fn servers(&self) -> Vec<String> {
        self.server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
    }
}

/// Control requests waiting for their answer, oldest first.
type Replies = Arc<std::sync::Mutex<VecDeque<oneshot::Sender<NodeFrame>>>>;

/// Direct messages pushed and not yet taken with [`Client::next_direct`]; more are dropped
/// (they stay in the conversation's history).
const DIRECTS_HELD: usize = 1024;

/// Reads the control stream: answers go to the requests waiting, in order; a message is a
/// direct message the node pushed. Ends with the stream, failing the requests left.
async fn read_control(
    mut reader: FrameReader<RecvStream>,
    replies: Replies,
    directs: mpsc::Sender<ChatMessage>,
) {
    while let Ok(Some(frame)) = reader.read::<NodeFrame>().await {
        match frame {
            NodeFrame::Message(message) => {
                if directs.try_send(message).is_err() {
                    tracing::debug!("a pushed direct message was dropped: none are being read");
                }
            }
            answer => {
                let waiting = replies.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                if let Some(reply) = waiting {
                    let _ = reply.send(answer);
                }
            }
        }
    }
    replies.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// A connection to a node, online under a name.
pub struct Client {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Requests are written here, each leaving its reply's place in `replies` in the same
    /// step, so that the control reader hands the answers out in order.
    control: Mutex<SendStream>,
    replies: Replies,
    /// Direct messages pushed on the control stream.
    directs: Mutex<mpsc::Receiver<ChatMessage>>,
    control_reader: tokio::task::JoinHandle<()>,
    name: String,
    token: SessionToken,
    /// Whether the connection is logged in to the name's account.
    account: std::sync::atomic::AtomicBool,
    limits: Limits,
    /// The node's send rate limit, kept here too so that sends wait instead of being refused.
    pace: Pace,
    requests: RequestPace,
    /// The options with `server` naming the one node this connection went to.
    options: ConnectOptions,
    /// Every server the client was given, and which of them this connection went to.
    servers: String,
    server_index: usize,
}

impl Client {
    /// Connects, says hello and waits for the welcome. With several servers, a node that
    /// cannot serve (unreachable, full, going away) passes the turn to the next one.
    ///
    /// # Errors
    /// No server can be reached, a certificate is not trusted, the name is taken or invalid.
    pub async fn connect(options: ConnectOptions) -> Result<Self, ClientError> {
        Self::connect_from(options, 0).await
    }

    async fn connect_from(options: ConnectOptions, first: usize) -> Result<Self, ClientError> {
        let servers = options.servers();
        if servers.is_empty() {
            return Err(ClientError::Unreachable {
                server: options.server.clone(),
                detail: "no server given".into(),
            });
        }
        let mut turn = 0;
        loop {
            let index = (first + turn) % servers.len();
            let one = ConnectOptions { server: servers[index].clone(), ..options.clone() };
            match Self::connect_to(&one).await {
                Ok(mut client) => {
                    client.servers = options.server;
                    client.server_index = index;
                    return Ok(client);
                }
                Err(e) if e.node_unavailable() && turn + 1 < servers.len() => {
                    tracing::info!(server = %one.server, error = %e, "trying the next server");
                    turn += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects to the one node that `options.server` names.
    async fn connect_to(options: &ConnectOptions) -> Result<Self, ClientError> {
        let (host, addr) = resolve(&options.server).await?;
        let any = if addr.is_ipv6() { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) };
        let bind = SocketAddr::new(options.local_ip.unwrap_or(any), 0);
        let endpoint = quic_endpoint(&options.trust, codes::ALPN, bind, transport())?;

        let server = options.server.clone();
        let unreachable =
            |detail: String| ClientError::Unreachable { server: server.clone(), detail };
        let connecting = endpoint.connect(addr, &host).map_err(|e| unreachable(e.to_string()))?;
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(ClientError::from_connection(e, options)),
            Ok(Ok(connection)) => connection,
        };

        let (mut send, recv) =
            connection.open_bi().await.map_err(|e| ClientError::from_connection(e, options))?;
        let hello = ClientFrame::Hello {
            name: options.name.clone(),
            resume: options.resume,
            login: options.login.clone(),
        };
        write_frame(&mut send, &hello, codec::MAX_NODE_FRAME_LEN)
            .await
            .map_err(|e| ClientError::lost(&connection, e, options))?;
        let mut reader = FrameReader::new(recv, codec::MAX_NODE_FRAME_LEN);
        let welcome = match reader.read::<NodeFrame>().await {
            Ok(Some(NodeFrame::Welcome(welcome))) => welcome,
            Ok(Some(NodeFrame::Error(error))) => return Err(ClientError::from_frame(error)),
            Ok(Some(other)) => {
                return Err(ClientError::Protocol(format!("expected a welcome, got {other:?}")));
            }
            Ok(None) => return Err(ClientError::lost(&connection, "no welcome", options)),
            Err(e) => return Err(ClientError::lost(&connection, e, options)),
        };
        let replies = Replies::default();
        let (directs_in, directs) = mpsc::channel(DIRECTS_HELD);
        let control_reader = tokio::spawn(read_control(reader, Arc::clone(&replies), directs_in));
        // Registered now: a reconnect logs in (its session token first, then the password).
        let login = match options.login.clone() {
            Some(Login::Register(password)) => Some(Login::Password(password)),
            login => login,
        };
        Ok(Self {
            endpoint,
            connection,
            control: Mutex::new(send),
            replies,
            directs: Mutex::new(directs),
            control_reader,
            name: welcome.name,
            token: welcome.token,
            account: std::sync::atomic::AtomicBool::new(welcome.account),
            limits: welcome.limits,
            pace: Pace::new(welcome.limits),
            requests: RequestPace::new(welcome.limits),
            options: ConnectOptions { login, ..options.clone() },
            servers: options.server.clone(),
            server_index: 0,
        })
    }

    /// Connects again with the same options, taking the name back from this connection
    /// (which may be dead without knowing it yet). With several servers it starts with the
    /// one after this connection's, whose node may be what failed.
    ///
    /// # Errors
    /// As for [`connect`](Self::connect).
    pub fn reconnect(&self) -> impl Future<Output = Result<Self, ClientError>> + Send + 'static {
        let options = ConnectOptions {
            server: self.servers.clone(),
            resume: Some(self.token),
            ..self.options.clone()
        };
        Self::connect_from(options, self.server_index + 1)
    }

    /// The `host:port` of the node this connection went to.
    pub fn server(&self) -> &str {
        &self.options.server
    }

    /// The name as the node stored it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's limits, from the welcome.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn token(&self) -> SessionToken {
        self.token
    }

    /// Whether the connection is logged in to its name's account (else it is a guest's).
    pub fn is_account(&self) -> bool {
        self.account.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers this guest's name with `password`: from now on the name needs it (or a
    /// session of the account, such as this one).
    ///
    /// # Errors
    /// The name is registered already, the password breaks the node's rules, too many
    /// attempts from this address, or the connection is lost.
    pub async fn register(&self, password: &str) -> Result<(), ClientError> {
        match self.request(ClientFrame::Register { password: password.into() }).await? {
            NodeFrame::Registered { .. } => {
                self.account.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Changes the account's password; every other session of the account ends (their
    /// tokens no longer log in). Returns how many ended.
    ///
    /// # Errors
    /// A wrong `old` password, a `new` one that breaks the rules, a guest's session, or
    /// the connection is lost.
    pub async fn change_password(&self, old: &str, new: &str) -> Result<u32, ClientError> {
        let frame = ClientFrame::ChangePassword { old: old.into(), new: new.into() };
        match self.request(frame).await? {
            NodeFrame::PasswordChanged { sessions_ended } => Ok(sessions_ended),
            other => Err(unexpected(other)),
        }
    }

    /// Ends this session for good: its token no longer logs in, and the node closes the
    /// connection.
    ///
    /// # Errors
    /// The connection is lost before the node answers.
    pub async fn logout(&self) -> Result<(), ClientError> {
        match self.request(ClientFrame::Logout).await? {
            NodeFrame::LoggedOut => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The rooms of the node.
    ///
    /// # Errors
    /// The connection is lost.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, ClientError> {
        match self.request(ClientFrame::ListRooms).await? {
            NodeFrame::Rooms { rooms } => Ok(rooms),
            other => Err(unexpected(other)),
        }
    }

    /// Makes `room`, where the node lets its users; `Ok(true)` if it existed already.
    ///
    /// # Errors
    /// An invalid name, a node that lets nobody make rooms or has its most, or the
    /// connection is lost.
    pub async fn create_room(&self, room: &str) -> Result<bool, ClientError> {
        match self.request(ClientFrame::CreateRoom { room: room.to_owned() }).await? {
            NodeFrame::RoomCreated { existed, .. } => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    /// Moderates `room` (its owner and operators, and the node's operators): kick, ban or
    /// mute a name, name operators, invite, make it invite-only, set its topic.
    ///
    /// # Errors
    /// Not an operator there (or a guest), a name that ranks as high, an unknown room, or
    /// the connection is lost.
    pub async fn moderate(&self, room: &str, action: Moderation) -> Result<(), ClientError> {
        match self.request(ClientFrame::Moderate { room: room.to_owned(), action }).await? {
            NodeFrame::Moderated { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Moves the account's read marker in `room` to `seq` (it never moves back); returns
    /// where it is. Room listings then count the messages after it ([`RoomInfo::unread`]).
    ///
    /// # Errors
    /// A guest's session, a room the user may not be in, or the connection is lost.
    pub async fn mark_read(&self, room: &str, seq: Seq) -> Result<Seq, ClientError> {
        match self.request(ClientFrame::MarkRead { room: room.to_owned(), seq }).await? {
            NodeFrame::Marked { seq, .. } => Ok(seq),
            other => Err(unexpected(other)),
        }
    }

    /// The names of the users in `room`.
    ///
    /// # Errors
    /// An unknown room, or the connection is lost.
    pub async fn who(&self, room: &str) -> Result<Vec<String>, ClientError> {
        match self.request(ClientFrame::Who { room: room.to_owned() }).await? {
            NodeFrame::Members { names, .. } => Ok(names),
            other => Err(unexpected(other)),
        }
    }

    /// The next direct message the node pushed: one in a conversation this client has not
    /// joined (those it has joined arrive in their room). `None` once the connection is gone.
    pub async fn next_direct(&self) -> Option<ChatMessage> {
        self.directs.lock().await.recv().await
    }

    async fn request(&self, frame: ClientFrame) -> Result<NodeFrame, ClientError> {
        self.requests.turn().await;
        let (reply, answer) = oneshot::channel();
        {
            let mut send = self.control.lock().await;
            self.replies.lock().unwrap_or_else(PoisonError::into_inner).push_back(reply);
            write_frame(&mut *send, &frame, codec::MAX_NODE_FRAME_LEN)
                .await
                .map_err(|e| ClientError::lost(&self.connection, e, &self.options))?;
        }
        match answer.await {
            Ok(NodeFrame::Error(error)) => Err(ClientError::from_frame(error)),
            Ok(reply) => Ok(reply),
            Err(_) => {
                Err(ClientError::lost(&self.connection, "control stream ended", &self.options))
            }
        }
    }

    /// Joins `room`, receiving its history after `after` (all of it for `None`), then live
    /// messages.
    ///
    /// # Errors
    /// An unknown room, a room joined already, too many rooms, or the connection is lost.
    pub async fn join(&self, room: &str, after: Option<Seq>) -> Result<Room, ClientError> {
        self.requests.turn().await;
        let (send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| ClientError::from_connection(e, &self.options))?;
        Room::open(self, room, after, send, recv).await
    }

    /// Resolves when the connection ends, with the reason.
    pub async fn closed(&self) -> ClientError {
        let error = self.connection.closed().await;
        ClientError::from_connection(error, &self.options)
    }

    /// Says goodbye and waits until the node has seen it.
    pub async fn close(self) {
        self.connection.close(codes::close::NORMAL.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

impl Drop for Client {
    /// Dropping the client ends its connection (and with it every room stream), so that
    /// no task keeps a forgotten connection alive.
    fn drop(&mut self) {
        self.control_reader.abort();
        self.connection.close(codes::close::NORMAL.into(), b"bye");
    }
}

/// The transport settings of a client's connection to a node, for tools that speak the
/// protocol by hand to connect as the client does.
///
/// The client does not search for a larger packet size than QUIC's 1,200 bytes (MTU
/// discovery): what it sends is small (a message body is a few KiB at most), and every probe
/// is a full-size packet of padding that the node must parse, which quinn does a byte at a
/// time; the probes were a sixth of the node's CPU per handshake (benches/RESULTS.md). The
/// node searches its own direction, where history pages go.
pub fn transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS))))
        .mtu_discovery_config(None);
    transport
}

/// A QUIC client endpoint on `bind` that trusts `trust` and speaks `alpn`, with `transport`'s
/// settings: what [`Client::connect`] connects with, and what tools and tests that speak the
/// protocol by hand (or test another ALPN) build theirs with.
///
/// # Errors
/// The TLS configuration cannot be made (an unreadable CA file), or `bind` cannot be bound.
pub fn quic_endpoint(
    trust: &Trust,
    alpn: &[u8],
    bind: SocketAddr,
    transport: quinn::TransportConfig,
) -> Result<quinn::Endpoint, ClientError> {
    let tls = chat_certs::client_config(trust, alpn)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Unreachable {
        server: format!("(this machine's {bind})"),
        detail: format!("cannot bind the local UDP socket: {e}"),
    })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

fn unexpected(frame: NodeFrame) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {frame:?}"))
}

/// Splits `host:port` and resolves it.
async fn resolve(server: &str) -> Result<(String, SocketAddr), ClientError> {
    let unreachable =
        |detail: String| ClientError::Unreachable { server: server.to_owned(), detail };
    let (host, _) = server
        .rsplit_once(':')
        .ok_or_else(|| unreachable("the server must be given as HOST:PORT".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| unreachable(format!("cannot resolve the address: {e}")))?
        .collect();
    addrs.sort_by_key(SocketAddr::is_ipv6); // IPv4 first: the node listens on 0.0.0.0 by default.
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| unreachable("the name resolves to no address".into()))?;
    Ok((host, addr))
}
