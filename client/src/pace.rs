//! [`Pace`]: how a connection keeps below the node's send rate.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chat_proto::Limits;

/// How a connection keeps to the node's send rate, shared by all its rooms.
///
/// The node checks its token bucket when it reads a send, the client when it writes one, and
/// the network moves the two apart: a send delayed on its way arrives bunched with the next
/// one, and a node that stalls (a slow disk, a cluster electing a leader) reads many at once.
/// So the client keeps a margin: a smaller burst and a slightly slower rate than the node's,
/// and never more unacknowledged sends than that margin of the burst, so that what piles up
/// during a stall still fits the node's bucket. A well-behaved client then does not hear
/// "slow down"; if the network bunches sends beyond that margin after all, the refused one
/// is sent again (`Posted::acked`), which could put it behind a later one.
#[derive(Clone)]
pub(crate) struct Pace {
    /// The client's own bucket; `None` when the node sets no limit.
    bucket: Option<Arc<Mutex<chat_core::RateLimit>>>,
    /// Sends written but not yet answered, over all rooms of the connection.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
}

/// Unacknowledged sends per connection when the node sets no rate limit: enough to keep a
/// long pipe moving over a slow link, and a bound on what a lost connection leaves unknown.
const MAX_IN_FLIGHT: usize = 256;
/// The share of its sustained rate the client uses, below the node's.
const RATE_SHARE: f64 = 0.95;

impl Pace {
    pub(crate) fn new(limits: Limits) -> Self {
        let node_rate =
            chat_core::Rate::per_connection(limits.messages_per_second, limits.message_burst);
        let Some(node_rate) = node_rate else {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            return Self { bucket: None, in_flight };
        };
        let (bucket, margin) = below(node_rate);
        Self {
            bucket: Some(Arc::new(Mutex::new(bucket))),
            in_flight: Arc::new(tokio::sync::Semaphore::new(margin as usize)),
        }
    }

    /// Takes a token for one more send, or says how long until there is one.
    pub(crate) fn try_turn(&self) -> Result<(), Duration> {
        match &self.bucket {
            Some(bucket) => {
                bucket.lock().unwrap_or_else(PoisonError::into_inner).take(Instant::now())
            }
            None => Ok(()),
        }
    }

    /// Whether the node limits the rate, so that a send it found too fast is sent again.
    pub(crate) fn paced(&self) -> bool {
        self.bucket.is_some()
    }
}

/// A bucket a margin below the node's `rate`, and the margin (a quarter of its burst).
fn below(rate: chat_core::Rate) -> (chat_core::RateLimit, u32) {
    let margin = rate.burst.div_ceil(4);
    let rate = chat_core::Rate {
        per_second: rate.per_second * RATE_SHARE,
        burst: (rate.burst - margin).max(1),
    };
    (chat_core::RateLimit::new(rate, Instant::now()), margin)
}

/// How a connection keeps to the node's request budget (joins, history pages, room lists,
/// who), with the same margin as [`Pace`]: each request waits for its turn, so that a
/// client catching up on a long history is not told to slow down.
#[derive(Clone)]
pub(crate) struct RequestPace(Option<Arc<Mutex<chat_core::RateLimit>>>);

impl RequestPace {
    pub(crate) fn new(limits: Limits) -> Self {
        let rate =
            chat_core::Rate::per_connection(limits.requests_per_second, limits.request_burst);
        Self(rate.map(|rate| Arc::new(Mutex::new(below(rate).0))))
    }

    /// Waits until one more request fits.
    pub(crate) async fn turn(&self) {
        let Some(bucket) = &self.0 else { return };
        loop {
            let taken = bucket.lock().unwrap_or_else(PoisonError::into_inner).take(Instant::now());
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}
