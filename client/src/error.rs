//! [`ClientError`]: what went wrong, in words for a person, with an exit code per kind.

use chat_proto::{ErrorCode, ErrorFrame, Seq, codes};

use crate::ConnectOptions;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(
        "cannot reach the chat node at {server}: {detail}. Is it running, and is that its address and UDP port?"
    )]
    Unreachable { server: String, detail: String },
    #[error("{detail}. {hint}")]
    NotTrusted { detail: String, hint: String },
    #[error("{0}")]
    NameTaken(String),
    #[error("{0}")]
    InvalidName(String),
    /// The name is a registered account (or the node takes only accounts), and no password
    /// or session of it was given.
    #[error("{0}")]
    LoginRequired(String),
    /// The password was wrong, or no account has the name.
    #[error("{0}")]
    LoginFailed(String),
    /// Too many failed logins; try again after `retry_after`.
    #[error("{message}")]
    TooManyLogins { message: String, retry_after: Option<std::time::Duration> },
    #[error("{0}")]
    UnknownRoom(String),
    #[error("{0}")]
    MessageTooLong(String),
    #[error("{}", .0.message)]
    Refused(ErrorFrame),
    #[error("dropped from room {room} for reading too slowly; rejoin after {last_seq} to resume")]
    TooSlow { room: String, last_seq: Seq },
    #[error("{0}")]
    SlowDown(String),
    /// The node could not confirm that the message was stored: it may have been.
    #[error("{0}")]
    MaybeStored(String),
    #[error("the node closed the connection because it kept sending after being told to slow down")]
    RateLimited,
    #[error(
        "the node at {0} refused the connection: it has as many connections as it takes, in all or from your address; try again later"
    )]
    NodeFull(String),
    #[error("the connection to the node was lost: {0}")]
    ConnectionLost(String),
    #[error("the node is shutting down; reconnect later or to another node")]
    GoingAway,
    #[error("this session was taken over by a newer connection with the same name")]
    Replaced,
    #[error("TLS setup: {0}")]
    Tls(#[from] chat_certs::CertError),
    #[error("the node broke the protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The `chat` program's exit code for this error (see the README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Unreachable { .. } => 3,
            Self::NotTrusted { .. } | Self::Tls(_) => 4,
            Self::NameTaken(_) => 5,
            Self::UnknownRoom(_) => 6,
            Self::MessageTooLong(_) => 7,
            Self::InvalidName(_) => 8,
            Self::LoginRequired(_) | Self::LoginFailed(_) => 11,
            Self::TooManyLogins { .. } => 10,
            Self::ConnectionLost(_) | Self::GoingAway | Self::Replaced | Self::TooSlow { .. } => 9,
            Self::SlowDown(_) | Self::RateLimited | Self::NodeFull(_) => 10,
            Self::MaybeStored(_) => 9,
            Self::Refused(_) | Self::Protocol(_) => 1,
        }
    }

    /// Whether another node of a cluster might serve where this one could not: it cannot be
    /// reached, is full, is going away, or cannot reach the cluster's store.
    pub fn node_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::NodeFull(_)
            | Self::GoingAway
            | Self::ConnectionLost(_) => true,
            Self::Refused(frame) => frame.code == ErrorCode::HistoryUnavailable,
            _ => false,
        }
    }

    /// Whether a send that failed with this error may have been stored all the same: the
    /// connection went before its answer came.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::ConnectionLost(_) | Self::GoingAway)
    }

    /// The error a node's error frame stands for.
    pub fn from_frame(frame: ErrorFrame) -> Self {
        match frame.code {
            ErrorCode::NameTaken => Self::NameTaken(frame.message),
            ErrorCode::InvalidName => Self::InvalidName(frame.message),
            ErrorCode::UnknownRoom | ErrorCode::InvalidRoomName => Self::UnknownRoom(frame.message),
            ErrorCode::MessageTooLong => Self::MessageTooLong(frame.message),
            ErrorCode::ShuttingDown => Self::GoingAway,
            ErrorCode::SlowDown => Self::SlowDown(frame.message),
            ErrorCode::MaybeStored => Self::MaybeStored(frame.message),
            ErrorCode::LoginRequired | ErrorCode::AccountRequired => {
                Self::LoginRequired(frame.message)
            }
            ErrorCode::WrongPassword | ErrorCode::UnknownAccount => {
                Self::LoginFailed(frame.message)
            }
            ErrorCode::TooManyLogins => Self::TooManyLogins {
                retry_after: frame.retry_after_ms.map(std::time::Duration::from_millis),
                message: frame.message,
            },
            _ => Self::Refused(frame),
        }
    }

    /// The error a failed or closed connection stands for.
    pub fn from_connection(error: quinn::ConnectionError, options: &ConnectOptions) -> Self {
        use quinn::ConnectionError as E;
        match error {
            E::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                match u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX) {
                    codes::close::NAME_TAKEN => Self::NameTaken(reason),
                    codes::close::GOING_AWAY => Self::GoingAway,
                    codes::close::SESSION_REPLACED => Self::Replaced,
                    codes::close::REFUSED => Self::InvalidName(reason),
                    codes::close::RATE_LIMITED => Self::RateLimited,
                    codes::close::LOGIN_REQUIRED => Self::LoginRequired(reason),
                    codes::close::LOGIN_FAILED => Self::LoginFailed(reason),
                    codes::close::TOO_MANY_LOGINS => {
                        Self::TooManyLogins { message: reason, retry_after: None }
                    }
                    _ => Self::ConnectionLost(format!("the node closed it ({reason})")),
                }
            }
            E::TransportError(e) if e.to_string().contains("certificate") => Self::NotTrusted {
                detail: format!("the node's certificate is not trusted ({})", e.reason),
                hint: trust_hint(options),
            },
            E::ConnectionClosed(close)
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Self::NodeFull(options.server.clone())
            }
            E::TimedOut => {
                Self::Unreachable { server: options.server.clone(), detail: "timed out".into() }
            }
            other => Self::ConnectionLost(other.to_string()),
        }
    }

    /// The error for a stream operation that failed: the connection's reason if it closed.
    pub(crate) fn lost(
        connection: &quinn::Connection,
        detail: impl std::fmt::Display,
        options: &ConnectOptions,
    ) -> Self {
        match connection.close_reason() {
            Some(reason) => Self::from_connection(reason, options),
            None => Self::ConnectionLost(detail.to_string()),
        }
    }
}

fn trust_hint(options: &ConnectOptions) -> String {
    match &options.trust {
        chat_certs::Trust::CaFile(path) => format!(
            "It was checked against the CA in {}; pass the CA file the node printed at start \
             (--ca DATA_DIR/certs/ca.pem) or its certificate's fingerprint (--fingerprint)",
            path.display()
        ),
        chat_certs::Trust::CaPem(_) => "Pass the CA the node printed at start with --ca".into(),
        chat_certs::Trust::Fingerprint(_) => {
            "Its fingerprint differs from the one pinned with --fingerprint; check it with \
             `chat-certs fingerprint node.pem` on the node"
                .into()
        }
    }
}
