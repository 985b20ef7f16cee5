//! The send rate limit of one connection: a token bucket.
//!
//! The bucket holds up to `burst` tokens and gains `per_second` of them every second; each
//! send takes one. A send that finds the bucket empty is refused (the client is told to slow
//! down) and counts as a strike; an accepted send clears the strikes. A connection that
//! piles up `burst` strikes in a row is not slowing down and is to be closed. Time is passed
//! in, never read, so the rules can be tested without waiting.
//!
//! The client library keeps the same bucket to pace its own sends, so that a well-behaved
//! client never hears "slow down".

use std::time::{Duration, Instant};

/// How fast one connection may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sends per second, sustained.
    pub per_second: f64,
    /// Sends allowed at once after a quiet spell.
    pub burst: u32,
}

/// What a connection's send gets from its [`RateLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: go ahead.
    Allow,
    /// Over the limit: refuse this send; the next token arrives after `retry_after`.
    SlowDown { retry_after: Duration },
    /// Over the limit for `burst` sends in a row: close the connection.
    Disconnect,
}

/// One connection's token bucket.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: Rate,
    tokens: f64,
    updated: Instant,
    strikes: u32,
}

impl Rate {
    /// The rate of a node configured with `messages_per_second` (0: no limit) in bursts of
    /// `burst`.
    pub fn per_connection(messages_per_second: u32, burst: u32) -> Option<Self> {
        (messages_per_second > 0)
            .then(|| Self { per_second: f64::from(messages_per_second), burst: burst.max(1) })
    }
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        let burst = f64::from(rate.burst.max(1));
        Self {
            rate: Rate { burst: rate.burst.max(1), ..rate },
            tokens: burst,
            updated: now,
            strikes: 0,
        }
    }

    /// Takes a token for one send at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        match self.take(now) {
            Ok(()) => {
                self.strikes = 0;
                Verdict::Allow
            }
            Err(retry_after) => {
                self.strikes += 1;
                if self.strikes >= self.rate.burst {
                    Verdict::Disconnect
                } else {
                    Verdict::SlowDown { retry_after }
                }
            }
        }
    }

    /// Returns a token taken for something that turned out not to count.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(f64::from(self.rate.burst));
    }

    /// Whether the bucket has refilled by `now`, so that it is as good as a new one.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate.per_second >= f64::from(self.rate.burst)
    }

    /// Takes a token, or says how long until one is there.
    ///
    /// # Errors
    /// The bucket is empty; the duration is the wait for the next token.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.tokens =
            (self.tokens + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate.per_second > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate.per_second))
        } else {
            Err(Duration::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate { per_second: 10.0, burst: 3 };

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(RATE, start);
        for _ in 0..3 {
            assert_eq!(limit.check(start), Verdict::Allow);
        }
        let Verdict::SlowDown { retry_after } = limit.check(start) else {
            panic!("over the burst")
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        // One token per 100 ms, and the refused send above did not use one up.
        assert_eq!(limit.check(start + Duration::from_millis(100)), Verdict::Allow);
        assert!(matches!(
            limit.check(start + Duration::from_millis(150)),
            Verdict::SlowDown { .. }
        ));
        assert_eq!(limit.check(start + Duration::from_millis(200)), Verdict::Allow);
    }

    #[test]
    fn a_quiet_spell_refills_the_bucket_only_up_to_the_burst() {
        let start = Instant::now();
        let mut limit = RateLimit::new(RATE, start);
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limit.check(later), Verdict::Allow);
        }
        assert!(matches!(limit.check(later), Verdict::SlowDown { .. }));
    }

    #[test]
    fn a_sender_that_does_not_slow_down_is_disconnected() {
        let start = Instant::now();
        let mut limit = RateLimit::new(RATE, start);
        for _ in 0..3 {
            limit.check(start);
        }
        assert!(matches!(limit.check(start), Verdict::SlowDown { .. }));
        assert!(matches!(limit.check(start), Verdict::SlowDown { .. }));
        assert_eq!(limit.check(start), Verdict::Disconnect);
    }

    #[test]
    fn an_accepted_send_clears_the_strikes() {
        let start = Instant::now();
        let mut limit = RateLimit::new(RATE, start);
        for _ in 0..3 {
            limit.check(start);
        }
        // Twice as fast as allowed for a long time: throttled, never disconnected.
        for step in 1..1000 {
            let verdict = limit.check(start + Duration::from_millis(50 * step));
            assert_ne!(verdict, Verdict::Disconnect, "step {step}");
        }
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut limit = RateLimit::new(RATE, start);
        for _ in 0..3 {
            limit.check(start);
        }
        assert!(matches!(limit.check(start - Duration::from_secs(1)), Verdict::SlowDown { .. }));
    }
}
