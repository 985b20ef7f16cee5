//! Accounts' rules: who may go online under a registered name, what a password must be, and
//! how many failed logins an account and an address get before they must wait.
//!
//! The node asks the accounts store what it knows of a hello's name and credentials (a
//! [`Standing`]) and the core decides: a guest, an account, or a refusal. Passwords are
//! checked by the store (Argon2id, deliberately slow); the core's [`Logins`] limiter is asked
//! before each check, so that a flood of guesses is refused before it costs a hash.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::rate::{Rate, RateLimit};

/// Shortest password, in characters: NIST SP 800-63B's floor for a memorised secret.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes: enough for any passphrase, and it bounds the hash's input.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Whether the node takes guests (names with no account) or only accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountsMode {
    /// Anyone may go online under a name nobody registered (the first to take it holds it
    /// while online); registered names need their password.
    Open,
    /// Every name must be registered; a hello may register its own.
    Required,
}

/// What a hello offered to prove its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// No password (perhaps a session token, which the store judges).
    Nothing,
    /// The account's password.
    Password,
    /// A password to register the name with.
    Register,
}

/// What the accounts store found for a hello's name and credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No account has the name.
    Unregistered,
    /// The name's account, proven by its password or by a session it holds.
    Proven,
    /// The name's account; the password offered is not its password.
    WrongPassword,
    /// The name's account; the hello offered neither its password nor one of its sessions.
    Unproven,
}

/// Who a welcomed connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A name with no account: held while online, by the first to take it.
    Guest,
    /// A registered name whose owner logged in: it takes the name over from any connection
    /// holding it (the owner's own, lost or on another device).
    Account,
    /// A name to register: the node creates the account (which fails if another hello got
    /// there first), then the connection is the account's.
    NewAccount,
}

/// Why a password is refused for registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("a password may have at most {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
}

/// Checks a new password against the rules: long enough to resist guessing, short enough to
/// bound the hash's work.
///
/// # Errors
/// Too short or too long.
pub fn check_password(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordError::TooLong)
    } else if password.chars().count() < MIN_PASSWORD_CHARS {
        Err(PasswordError::TooShort)
    } else {
        Ok(())
    }
}

/// The address logins and connections are counted under: an IPv6 address as its /64, which
/// one host is commonly given whole, and an IPv4-mapped one as the IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// How many password checks may fail before the next must wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoginRules {
    /// Failed logins to one account from one address, at once; then one per `forgiven`.
    pub per_account_and_address: u32,
    /// Password checks from one address (to any accounts, registrations included); four
    /// times the above, as one person may own several accounts.
    pub per_address: u32,
    /// Failed logins to one account from anywhere: ten times the first, so that many
    /// addresses guessing together are held back too.
    pub per_account: u32,
    /// How long it takes to forgive one failure.
    pub forgiven: Duration,
}

impl LoginRules {
    /// `failures` from one address to one account, one forgiven every `forgiven`.
    pub fn new(failures: u32, forgiven: Duration) -> Self {
        let failures = failures.max(1);
        Self {
            per_account_and_address: failures,
            per_address: failures.saturating_mul(4),
            per_account: failures.saturating_mul(10),
            forgiven,
        }
    }

    fn rate(&self, burst: u32) -> Rate {
        Rate { per_second: 1.0 / self.forgiven.as_secs_f64().max(0.001), burst }
    }
}

/// Buckets kept per key before full ones are forgotten (a full bucket is the same as none).
const TRACKED: usize = 65_536;

/// The failed-login limiter: token buckets per account and address, per address, and per
/// account. A password check takes a token from each before it runs; a success gives them
/// back, so only failures count.
#[derive(Debug)]
pub struct Logins {
    rules: LoginRules,
    pairs: HashMap<(String, IpAddr), RateLimit>,
    addresses: HashMap<IpAddr, RateLimit>,
    accounts: HashMap<String, RateLimit>,
}

/// A password check the limiter let through, to be settled once its outcome is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    account: String,
    address: IpAddr,
    registering: bool,
    /// When it began.
    at: Instant,
}

/// One of the limiter's three kinds of bucket.
#[derive(Debug, Clone, Copy)]
enum Bucket {
    AccountAndAddress,
    Address,
    Account,
}

impl Attempt {
    /// The buckets the attempt takes from: a registration only its address's.
    fn buckets(&self) -> &'static [Bucket] {
        if self.registering {
            &[Bucket::Address]
        } else {
            &[Bucket::AccountAndAddress, Bucket::Address, Bucket::Account]
        }
    }
}

impl Logins {
    pub fn new(rules: LoginRules) -> Self {
        Self { rules, pairs: HashMap::new(), addresses: HashMap::new(), accounts: HashMap::new() }
    }

    /// Lets one password check for `account` (its key) from `ip` go ahead at `now`, or says
    /// how long to wait (for the emptiest bucket). A registration counts against the
    /// address only. A refused check takes nothing.
    ///
    /// # Errors
    /// One of the buckets is empty: wait the duration.
    pub fn begin(
        &mut self,
        account: &str,
        ip: IpAddr,
        registering: bool,
        now: Instant,
    ) -> Result<Attempt, Duration> {
        forget_full(&mut self.pairs, now);
        forget_full(&mut self.addresses, now);
        forget_full(&mut self.accounts, now);
        let address = address_key(ip);
        let attempt = Attempt { account: account.to_owned(), address, registering, at: now };
        let (mut taken, mut wait) = (Vec::with_capacity(3), None);
        for &bucket in attempt.buckets() {
            match self.bucket(bucket, &attempt).take(now) {
                Ok(()) => taken.push(bucket),
                Err(until) => wait = wait.max(Some(until)),
            }
        }
        let Some(wait) = wait else { return Ok(attempt) };
        for bucket in taken {
            self.bucket(bucket, &attempt).give_back();
        }
        Err(wait)
    }

    /// The check succeeded: it was the owner, and costs nothing (a registration still
    /// counts).
    pub fn succeeded(&mut self, attempt: &Attempt) {
        if !attempt.registering {
            for &bucket in attempt.buckets() {
                self.bucket(bucket, attempt).give_back();
            }
        }
    }

    /// `attempt`'s bucket of kind `bucket`, a full one (as of the attempt) if it had none.
    fn bucket(&mut self, bucket: Bucket, attempt: &Attempt) -> &mut RateLimit {
        let (rules, at) = (self.rules, attempt.at);
        let full = |burst| move || RateLimit::new(rules.rate(burst), at);
        match bucket {
            Bucket::AccountAndAddress => self
                .pairs
                .entry((attempt.account.clone(), attempt.address))
                .or_insert_with(full(rules.per_account_and_address)),
            Bucket::Address => {
                self.addresses.entry(attempt.address).or_insert_with(full(rules.per_address))
            }
            Bucket::Account => {
                self.accounts.entry(attempt.account.clone()).or_insert_with(full(rules.per_account))
            }
        }
    }
}

/// Forgets the buckets that have refilled, once there are many: an attacker cycling names or
/// addresses grows no map past [`TRACKED`] but by what it is still being held back for.
fn forget_full<K>(buckets: &mut HashMap<K, RateLimit>, now: Instant) {
    if buckets.len() >= TRACKED {
        buckets.retain(|_, bucket| !bucket.is_full(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn failures_from_one_address_wait_and_the_owner_elsewhere_does_not() {
        let now = Instant::now();
        let mut logins = Logins::new(LoginRules::new(5, MINUTE));
        for _ in 0..5 {
            logins.begin("ada", ip("192.0.2.1"), false, now).expect("within the budget");
        }
        let wait = logins.begin("ada", ip("192.0.2.1"), false, now).expect_err("held back");
        assert_eq!(wait, MINUTE);
        // The owner, from elsewhere, is not held back, and its success costs nothing.
        for _ in 0..20 {
            let attempt = logins.begin("ada", ip("198.51.100.7"), false, now).expect("owner");
            logins.succeeded(&attempt);
        }
        // A failure is forgiven after a minute.
        logins.begin("ada", ip("192.0.2.1"), false, now + MINUTE).expect("forgiven");
    }

    #[test]
    fn one_address_guessing_many_accounts_is_held_back() {
        let now = Instant::now();
        let mut logins = Logins::new(LoginRules::new(5, MINUTE));
        for n in 0..20 {
            logins.begin(&format!("user{n}"), ip("2001:db8::1"), false, now).expect("budget");
        }
        // Another host of the same /64 is the same address.
        assert!(logins.begin("bob", ip("2001:db8::2"), false, now).is_err());
        assert!(logins.begin("bob", ip("2001:db8:0:1::2"), false, now).is_ok());
    }

    #[test]
    fn many_addresses_guessing_one_account_are_held_back() {
        let now = Instant::now();
        let mut logins = Logins::new(LoginRules::new(5, MINUTE));
        for n in 0..50u8 {
            logins.begin("ada", IpAddr::from([10, 0, 0, n]), false, now).expect("budget");
        }
        assert!(logins.begin("ada", ip("10.0.1.1"), false, now).is_err());
    }

    #[test]
    fn a_refused_check_takes_nothing() {
        let now = Instant::now();
        let mut logins = Logins::new(LoginRules::new(1, MINUTE));
        logins.begin("ada", ip("192.0.2.1"), false, now).expect("first");
        // Held back by the pair; the address and the account keep their tokens.
        for _ in 0..10 {
            assert!(logins.begin("ada", ip("192.0.2.1"), false, now).is_err());
        }
        for n in 0..3 {
            logins.begin(&format!("u{n}"), ip("192.0.2.1"), false, now).expect("address budget");
        }
    }

    #[test]
    fn password_rules() {
        assert_eq!(check_password("short"), Err(PasswordError::TooShort));
        assert_eq!(check_password("ééééééé"), Err(PasswordError::TooShort)); // Characters.
        assert_eq!(check_password("correct horse"), Ok(()));
        assert_eq!(check_password(&"x".repeat(1025)), Err(PasswordError::TooLong));
    }
}
