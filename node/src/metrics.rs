//! What operators see: the node's counters in the Prometheus text format, served over plain
//! HTTP at `/metrics` on an address of their choosing (off unless configured).
//!
//! The HTTP side is deliberately tiny: one `GET /metrics` per connection, a bounded request,
//! a timeout, a few scrapes at once. Rates (messages per second and so on) are what
//! Prometheus computes from the counters, e.g. `rate(chat_messages_total[1m])`.

use std::net::SocketAddr;
use std::sync::Arc;

use chat_proto::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{info, warn};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Kind {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Endpoint {
    endpoint: String,
}

/// The node's metrics. Cheap to update from any thread.
pub(crate) struct Metrics {
    registry: Registry,
    /// Client connections open now.
    pub connections: Gauge,
    /// Client connections open now, by the endpoint that serves them.
    endpoint_connections: Family<Endpoint, Gauge>,
    /// Connections refused before the handshake, by reason.
    pub refused: Family<Kind, Counter>,
    /// Rooms that exist.
    pub rooms: Gauge,
    /// Room memberships (a connection's stream in a room) now.
    pub members: Gauge,
    /// Messages stored and relayed.
    pub messages: Counter,
    /// Messages written to members' room streams.
    pub deliveries: Counter,
    /// Time from handing a message to the history to its being durable.
    pub history_append: Histogram,
    /// Members dropped from a room because they did not read fast enough.
    pub dropped_too_slow: Counter,
    /// Error frames sent to clients, and connections closed for misbehaving, by kind.
    pub errors: Family<Kind, Counter>,
    /// Password hashes and checks run (each costs tens of milliseconds of a core).
    pub password_hashes: Counter,
}

impl Metrics {
    /// The gauge of the connections that `endpoint` serves.
    pub(crate) fn endpoint_connections(&self, endpoint: String) -> Gauge {
        self.endpoint_connections.get_or_create(&Endpoint { endpoint }).clone()
    }

    pub(crate) fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("chat"),
            connections: Gauge::default(),
            endpoint_connections: Family::default(),
            refused: Family::default(),
            rooms: Gauge::default(),
            members: Gauge::default(),
            messages: Counter::default(),
            deliveries: Counter::default(),
            // 50 µs to about 3 s.
            history_append: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            dropped_too_slow: Counter::default(),
            errors: Family::default(),
            password_hashes: Counter::default(),
        };
        let r = &mut metrics.registry;
        r.register("connections", "Client connections open", metrics.connections.clone());
        r.register(
            "endpoint_connections",
            "Client connections open, by endpoint: a QUIC thread's number, or web for browsers",
            metrics.endpoint_connections.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused before the handshake, by reason",
            metrics.refused.clone(),
        );
        r.register("rooms", "Rooms that exist", metrics.rooms.clone());
        r.register("room_members", "Room memberships open", metrics.members.clone());
        r.register("messages", "Messages stored and relayed", metrics.messages.clone());
        r.register(
            "deliveries",
            "Messages written to members' room streams",
            metrics.deliveries.clone(),
        );
        r.register(
            "history_append_seconds",
            "Time from handing a message to the history until it is durable",
            metrics.history_append.clone(),
        );
        r.register(
            "members_dropped_too_slow",
            "Members dropped from a room for not reading fast enough",
            metrics.dropped_too_slow.clone(),
        );
        r.register(
            "errors",
            "Errors sent to clients and connections closed for misbehaving, by kind",
            metrics.errors.clone(),
        );
        r.register(
            "password_hashes",
            "Password hashes and checks run (Argon2id)",
            metrics.password_hashes.clone(),
        );
        metrics
    }

    pub(crate) fn password_hash(&self) {
        self.password_hashes.inc();
    }

    /// Counts an error of `kind`.
    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&Kind { kind }).inc();
    }

    /// Counts an error frame sent to a client.
    pub(crate) fn error_code(&self, code: ErrorCode) {
        self.error(code_name(code));
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Kind { kind: reason }).inc();
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(error = %e, "metrics did not encode");
        }
        text
    }
}

/// The label of an error code.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NameTaken => "name_taken",
        ErrorCode::InvalidName => "invalid_name",
        ErrorCode::UnknownRoom => "unknown_room",
        ErrorCode::InvalidRoomName => "invalid_room_name",
        ErrorCode::AlreadyJoined => "already_joined",
        ErrorCode::TooManyRooms => "too_many_rooms",
        ErrorCode::MessageTooLong => "message_too_long",
        ErrorCode::EmptyMessage => "empty_message",
        ErrorCode::TooSlow => "too_slow",
        ErrorCode::HistoryUnavailable => "history_unavailable",
        ErrorCode::ProtocolViolation => "protocol_violation",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::SlowDown => "slow_down",
        ErrorCode::NotAllowed => "not_allowed",
        ErrorCode::LoginRequired => "login_required",
        ErrorCode::WrongPassword => "wrong_password",
        ErrorCode::UnknownAccount => "unknown_account",
        ErrorCode::NameRegistered => "name_registered",
        ErrorCode::TooManyLogins => "too_many_logins",
        ErrorCode::AccountRequired => "account_required",
        ErrorCode::InvalidPassword => "invalid_password",
        ErrorCode::NotLoggedIn => "not_logged_in",
        _ => "other",
    }
}

/// Binds the metrics listener.
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics address {addr}: {e}"))?;
    info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
    Ok(listener)
}

/// Answers scrapes until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let handler: crate::http::Handler = Arc::new(move |path| match path {
        "/metrics" => crate::http::Response::ok(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => crate::http::Response::not_found("try /metrics\n"),
    });
    crate::http::serve(listener, None, handler).await;
}
