//! Room for the pages of history on their way to clients, from one budget for the node.
//!
//! A page is read from the store into the node's memory and stays there until QUIC takes
//! it, which a client that reads nothing can put off for `write_timeout`. So a page's room is
//! taken before the page is read, and given back once it is written: every stream's pages
//! together hold at most `page_memory_mib`. A connection has at most
//! [`PAGES_PER_CONNECTION`] in hand, so a few connections that read nothing cannot take the
//! whole budget. Once QUIC has a page, quinn's send window bounds what the connection holds
//! until the client acknowledges it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Writes up to this long take no room: they are the common case, and a stream or a
/// control stream has one in progress at a time.
pub(crate) const SHORT: usize = 16 << 10;

/// Pages one connection may have in hand at once, over all its streams.
pub(crate) const PAGES_PER_CONNECTION: usize = 4;

/// The node's budget for pages in hand, in bytes.
pub(crate) struct PageMemory {
    budget: Arc<Semaphore>,
    /// Taken for a page before it is read: the most it can be.
    reserve: u32,
    total: usize,
}

impl PageMemory {
    /// A budget of `bytes` (at least one page) for pages of at most `reserve` bytes.
    pub(crate) fn new(bytes: usize, reserve: u32) -> Self {
        let total = bytes.max(reserve as usize);
        Self { budget: Arc::new(Semaphore::new(total)), reserve, total }
    }

    /// Room for a page before it is read, and one of its connection's `turns`: waits while
    /// the connection's other pages, or the node's, hold them (each is written, or its
    /// stream reset, within `write_timeout`).
    pub(crate) async fn reserve(&self, turns: &Arc<Semaphore>) -> PageRoom {
        let turn = Arc::clone(turns).acquire_owned().await.ok();
        PageRoom { permit: self.take(self.reserve).await, _turn: turn }
    }

    /// Room for a reply already made, `len` bytes long (a room listing, say), while it is
    /// written; none for a short one, which a connection has one of at a time.
    pub(crate) async fn hold(&self, len: usize) -> Option<PageRoom> {
        if len <= SHORT {
            return None;
        }
        let len = u32::try_from(len.min(self.total)).unwrap_or(u32::MAX);
        Some(PageRoom { permit: self.take(len).await, _turn: None })
    }

    async fn take(&self, bytes: u32) -> OwnedSemaphorePermit {
        let permit = Arc::clone(&self.budget).acquire_many_owned(bytes).await;
        permit.expect("the page budget is never closed")
    }

    /// Bytes not held by any page now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.budget.available_permits()
    }
}

/// One page's room, given back when dropped (once the page is written, or its stream gone),
/// with its connection's turn if it took one.
#[derive(Debug)]
pub struct PageRoom {
    permit: OwnedSemaphorePermit,
    _turn: Option<OwnedSemaphorePermit>,
}

impl PageRoom {
    /// Keeps only the room of a page that turned out to be `len` bytes: the reserve is its
    /// most, so the rest goes back at once.
    pub(crate) fn fit(&mut self, len: usize) {
        let keep = len.min(self.permit.num_permits()).max(1);
        if let Some(rest) = self.permit.split(self.permit.num_permits() - keep) {
            drop(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_page_waits_for_room_and_keeps_only_what_it_needs() {
        let memory = PageMemory::new(1000, 600);
        let (one, other) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(2)));
        let mut first = memory.reserve(&one).await;
        assert_eq!(memory.free(), 400);
        // A second page does not fit beside a whole reserve...
        let waiting = tokio::time::timeout(Duration::from_millis(20), memory.reserve(&other));
        assert!(waiting.await.is_err());
        // ...but does once the first is read and turns out short.
        first.fit(100);
        assert_eq!(memory.free(), 900);
        let second = memory.reserve(&other).await;
        assert_eq!(memory.free(), 300);
        drop((first, second));
        assert_eq!(memory.free(), 1000);
        assert_eq!(one.available_permits(), 2);
    }

    #[tokio::test]
    async fn a_connection_waits_for_its_own_turn_not_for_others() {
        let memory = PageMemory::new(10_000, 100);
        let (one, other) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(2)));
        let held = (memory.reserve(&one).await, memory.reserve(&one).await);
        let third = tokio::time::timeout(Duration::from_millis(20), memory.reserve(&one));
        assert!(third.await.is_err(), "a connection has two pages in hand at most");
        let _others = memory.reserve(&other).await;
        drop(held);
        let _third = memory.reserve(&one).await;
    }
}
