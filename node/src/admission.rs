//! Who may open a connection: at most so many in all and so many from one address (an IPv6
//! address counts as its /64, which one host is commonly given whole), and none for a while
//! from an address whose connection was closed for ignoring "slow down" (else connecting
//! again would get a fresh budget at once, and the limit would hold back nothing but the
//! handshakes), or that had [`HELLO_STRIKES`] hellos refused within [`STRIKE_WINDOW`]
//! (guessing at an online name's session token, or a bot retrying a taken name).
//!
//! The node asks before the TLS handshake, so a refused connection costs one packet. Each
//! admitted connection holds a [`Slot`] that gives its place back when dropped.
//!
//! A full node makes room before it refuses: the connection that has sat longest after its
//! hello without joining a room (at least `grace`) is told to close, and the new one takes
//! its place. So connections that only say hello cannot hold every place; one that joined a
//! room is never asked.
//!
//! A connection that migrates (the client's address changes under it, which QUIC allows)
//! is counted against its new address from then on ([`Admission::moved`]); one that moves to
//! an address at its limit is to be closed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chat_core::accounts::address_key;
use tokio::sync::oneshot;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The node has its most connections.
    Node,
    /// This address has its most connections.
    Address,
    /// A connection from this address was closed for ignoring "slow down" a moment ago.
    Barred,
}

impl Full {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Node => "node_full",
            Self::Address => "address_full",
            Self::Barred => "address_barred",
        }
    }
}

pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    /// How long after its hello a connection that joined nothing may be closed for room.
    grace: Duration,
    open: Mutex<Open>,
}

/// Refused hellos from one address within [`STRIKE_WINDOW`] that bar it.
pub(crate) const HELLO_STRIKES: u32 = 20;
/// How long refused hellos count against their address.
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// Refused hellos of an address within the window that are logged; later ones are not, so
/// that a flood of refusals does not flood the log.
const STRIKES_LOGGED: u32 = 3;

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// Addresses barred, until when.
    barred: HashMap<IpAddr, Instant>,
    /// Refused hellos per address: how many, since when.
    strikes: HashMap<IpAddr, (u32, Instant)>,
    /// Connections that said hello and joined nothing, oldest first: since when, which, and
    /// how to tell it to close.
    idle: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    /// The same connections by slot: since when.
    idle_since: HashMap<u64, Instant>,
    /// Slots told to close for room, not yet dropped: counted in `total`, but not as taken.
    leaving: HashSet<u64>,
    next_slot: u64,
    /// The address each slot counts against: where its connection is now.
    addresses: HashMap<u64, IpAddr>,
}

/// What a refused hello's strike came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strike {
    /// One of the first few: log it.
    Logged,
    /// One of many: say nothing.
    Quiet,
    /// The one that barred the address.
    Barred,
}

/// An admitted connection's place.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    id: u64,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, grace: Duration) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, grace, open: Mutex::default() })
    }

    /// A slot for one more connection from `ip`, or why there is none.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let ip = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&until) = open.barred.get(&ip) {
            if Instant::now() < until {
                return Err(Full::Barred);
            }
            open.barred.remove(&ip);
        }
        if open.by_ip.get(&ip).is_some_and(|n| *n >= self.max_per_ip) {
            return Err(Full::Address);
        }
        if open.total - open.leaving.len() >= self.max_total && !self.make_room(&mut open) {
            return Err(Full::Node);
        }
        *open.by_ip.entry(ip).or_default() += 1;
        open.total += 1;
        open.next_slot += 1;
        let id = open.next_slot;
        open.addresses.insert(id, ip);
        Ok(Slot { admission: Arc::clone(self), id })
    }

    /// Tells the connection idle longest (and at least `grace`) to close; whether one was.
    fn make_room(&self, open: &mut Open) -> bool {
        let now = Instant::now();
        while let Some(entry) = open.idle.first_entry() {
            let (since, id) = *entry.key();
            if now.duration_since(since) < self.grace {
                return false;
            }
            // Gone already if its connection ended meanwhile: then try the next.
            open.idle_since.remove(&id);
            if entry.remove().send(()).is_ok() {
                open.leaving.insert(id);
                return true;
            }
        }
        false
    }

    /// Admits no connection from `ip` for `period`.
    pub(crate) fn bar(&self, ip: IpAddr, period: Duration) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        bar(&mut open, address_key(ip), period);
    }

    /// A hello from `ip` was refused; the [`HELLO_STRIKES`]th within [`STRIKE_WINDOW`] bars
    /// the address for `period`.
    pub(crate) fn strike(&self, ip: IpAddr, period: Duration) -> Strike {
        let (ip, now) = (address_key(ip), Instant::now());
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.strikes.len() >= 1024 {
            open.strikes.retain(|_, (_, since)| now.duration_since(*since) < STRIKE_WINDOW);
        }
        let (count, since) = open.strikes.entry(ip).or_insert((0, now));
        if now.duration_since(*since) >= STRIKE_WINDOW {
            (*count, *since) = (0, now);
        }
        *count += 1;
        match *count {
            n if n >= HELLO_STRIKES && !period.is_zero() => {
                open.strikes.remove(&ip);
                bar(&mut open, ip, period);
                Strike::Barred
            }
            n if n <= STRIKES_LOGGED => Strike::Logged,
            _ => Strike::Quiet,
        }
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

fn bar(open: &mut Open, ip: IpAddr, period: Duration) {
    let now = Instant::now();
    // Bars are rare (a connection that ignored its limit); forget the spent ones.
    open.barred.retain(|_, until| *until > now);
    open.barred.insert(ip, now + period);
}

impl Slot {
    /// Names the slot for [`Admission::joined`].
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The connection said hello and has joined nothing: when the node is full it may be
    /// told to close (the receiver hears `Ok`) to make room. The receiver hears `Err` once
    /// it has joined a room.
    pub(crate) fn idle(&self) -> oneshot::Receiver<()> {
        let (tell, told) = oneshot::channel();
        let since = Instant::now();
        let mut open = self.admission.open.lock().unwrap_or_else(PoisonError::into_inner);
        remove_idle(&mut open, self.id);
        open.idle_since.insert(self.id, since);
        open.idle.insert((since, self.id), tell);
        told
    }
}

impl Admission {
    /// The connection of `slot` is at `ip` now: it counts there from now on, unless that
    /// address has its most connections or is barred (then it stays counted where it was,
    /// and is to be closed).
    pub(crate) fn moved(&self, slot: u64, ip: IpAddr) -> Result<(), Full> {
        let ip = address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(&was) = open.addresses.get(&slot) else { return Ok(()) };
        if was == ip {
            return Ok(());
        }
        if open.barred.get(&ip).is_some_and(|until| Instant::now() < *until) {
            return Err(Full::Barred);
        }
        if open.by_ip.get(&ip).is_some_and(|n| *n >= self.max_per_ip) {
            return Err(Full::Address);
        }
        uncount(&mut open, was);
        *open.by_ip.entry(ip).or_default() += 1;
        open.addresses.insert(slot, ip);
        Ok(())
    }

    /// The connection of `slot` joined a room: it keeps its place.
    pub(crate) fn joined(&self, slot: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        remove_idle(&mut open, slot);
    }
}

fn remove_idle(open: &mut Open, slot: u64) {
    if let Some(since) = open.idle_since.remove(&slot) {
        open.idle.remove(&(since, slot));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.admission.open.lock().unwrap_or_else(PoisonError::into_inner);
        remove_idle(&mut open, self.id);
        open.leaving.remove(&self.id);
        open.total -= 1;
        if let Some(ip) = open.addresses.remove(&self.id) {
            uncount(&mut open, ip);
        }
    }
}

fn uncount(open: &mut Open, ip: IpAddr) {
    if let Some(n) = open.by_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            open.by_ip.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn limits_per_address_and_in_all_and_frees_on_drop() {
        let admission = Admission::new(3, 2, Duration::ZERO);
        let a1 = admission.admit(ip(1)).expect("first");
        let _a2 = admission.admit(ip(1)).expect("second");
        assert_eq!(admission.admit(ip(1)).err(), Some(Full::Address));
        let _b1 = admission.admit(ip(2)).expect("another address");
        assert_eq!(admission.admit(ip(3)).err(), Some(Full::Node));
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _a3 = admission.admit(ip(1)).expect("a freed place");
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn a_barred_address_is_refused_for_the_period_only() {
        let admission = Admission::new(10, 10, Duration::ZERO);
        let _held = admission.admit(ip(1)).expect("admitted");
        admission.bar(ip(1), Duration::from_secs(60));
        admission.bar(ip(2), Duration::ZERO);
        assert_eq!(admission.admit(ip(1)).err(), Some(Full::Barred));
        assert!(admission.admit(ip(2)).is_ok(), "a spent bar");
        assert!(admission.admit(ip(3)).is_ok(), "another address");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_a_mapped_ipv4_as_itself() {
        let admission = Admission::new(10, 1, Duration::ZERO);
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("address");
        let other_64: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        let _held = admission.admit(one).expect("admitted");
        assert_eq!(admission.admit(same_64).err(), Some(Full::Address));
        assert!(admission.admit(other_64).is_ok());
        let _v4 = admission.admit(ip(7)).expect("admitted");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("address");
        assert_eq!(admission.admit(mapped).err(), Some(Full::Address));
    }

    #[test]
    fn refused_hellos_are_logged_a_few_times_then_bar_the_address() {
        let admission = Admission::new(10, 10, Duration::ZERO);
        let strikes: Vec<Strike> =
            (0..HELLO_STRIKES).map(|_| admission.strike(ip(1), Duration::from_secs(60))).collect();
        assert_eq!(strikes[..3], [Strike::Logged; 3]);
        assert!(strikes[3..HELLO_STRIKES as usize - 1].iter().all(|s| *s == Strike::Quiet));
        assert_eq!(strikes.last(), Some(&Strike::Barred));
        assert_eq!(admission.admit(ip(1)).err(), Some(Full::Barred));
        assert_eq!(admission.strike(ip(2), Duration::ZERO), Strike::Logged, "per address");
        for _ in 0..2 * HELLO_STRIKES {
            assert_ne!(admission.strike(ip(3), Duration::ZERO), Strike::Barred, "bars are off");
        }
    }

    #[test]
    fn forgets_an_address_with_no_connections() {
        let admission = Admission::new(10, 1, Duration::ZERO);
        drop(admission.admit(ip(1)).expect("admitted"));
        assert!(admission.open.lock().expect("lock").by_ip.is_empty());
    }

    #[test]
    fn a_full_node_makes_room_by_closing_the_longest_idle_connection_past_its_grace() {
        let admission = Admission::new(3, 10, Duration::from_millis(50));
        let member = admission.admit(ip(1)).expect("first");
        let older = admission.admit(ip(2)).expect("second");
        let newer = admission.admit(ip(3)).expect("third");
        let mut member_told = member.idle();
        admission.joined(member.id()); // Joined a room: never asked.
        assert!(member_told.try_recv().is_err());
        let mut older_told = older.idle();
        std::thread::sleep(Duration::from_millis(5));
        let mut newer_told = newer.idle();
        assert_eq!(admission.admit(ip(4)).err(), Some(Full::Node), "within the grace");
        std::thread::sleep(Duration::from_millis(60));
        let _fourth = admission.admit(ip(4)).expect("room made");
        assert!(older_told.try_recv().is_ok(), "the one idle longest is told");
        assert!(newer_told.try_recv().is_err());
        assert_eq!(admission.open(), 4, "counted until its connection ends");
        let _fifth = admission.admit(ip(5)).expect("room made again");
        assert!(newer_told.try_recv().is_ok());
        assert_eq!(admission.admit(ip(6)).err(), Some(Full::Node), "nobody idle is left");
        drop(older);
        assert_eq!(admission.admit(ip(6)).err(), Some(Full::Node), "its place was taken");
    }

    #[test]
    fn a_migrated_connection_counts_against_its_new_address() {
        let admission = Admission::new(10, 2, Duration::ZERO);
        let a = admission.admit(ip(1)).expect("first");
        let b = admission.admit(ip(1)).expect("second");
        assert_eq!(admission.admit(ip(1)).err(), Some(Full::Address));
        assert_eq!(admission.moved(a.id(), ip(2)), Ok(()));
        assert_eq!(admission.moved(b.id(), ip(2)), Ok(()));
        let _c = admission.admit(ip(1)).expect("the old address is free again");
        let _d = admission.admit(ip(1)).expect("both places");
        assert_eq!(admission.admit(ip(2)).err(), Some(Full::Address), "carried to the new one");
        assert_eq!(admission.moved(_c.id(), ip(2)), Err(Full::Address), "no third there");
        drop(a);
        assert!(admission.admit(ip(2)).is_ok(), "freed where it was counted last");
    }
}
