//! A member's outbox: the bounded queue between the room core and the task that writes the
//! member's room stream.
//!
//! The core offers each message without waiting; when the queue is full the member is
//! dropped from the room instead of slowing everyone else down: the queue is ended
//! ([`Queue::end`]), and the writer, and the task reading the member's sends, learn of it
//! ahead of any frames still queued, the writer to tell the client where it stopped.
//!
//! The queue is a `VecDeque` under a lock rather than a tokio channel: every member and every
//! connection has one, most of them empty most of the time, and a tokio channel holds a block
//! of 32 slots and its cache-padded state (about 2 KiB) from the start, where this holds
//! nothing until a frame is queued and gives its room back once it has drained.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use chat_core::{Full, Mailbox, Seq};
use chat_proto::NodeFrame;
use tokio::sync::Notify;

use crate::pages::PageRoom;

/// One frame on its way to a member's room stream.
#[derive(Debug)]
pub enum Outgoing {
    /// A room message; the writer tracks the last sequence number it wrote.
    Message(Seq, Bytes),
    /// Any other frame (an ack, an error).
    Frame(Bytes),
    /// A page of history, with its room in the node's page budget until it is written.
    /// Boxed: every slot of every member's queue is as large as the largest variant.
    Page(Box<(Bytes, PageRoom)>),
}

/// Why the core ended a member's stream.
#[derive(Debug, Clone)]
pub enum Ending {
    /// Dropped for falling behind; the last sequence number offered.
    TooSlow(Seq),
    /// Removed by an operator; the error frame that says so.
    Removed(Bytes),
}

/// The core's handle on one member; a clone goes with each of its sends to queue the ack.
#[derive(Clone)]
pub struct Outbox {
    pub queue: Queue,
}

impl Mailbox for Outbox {
    type Message = Bytes;

    fn encode(frame: &NodeFrame) -> Bytes {
        crate::reply::encode(frame)
    }

    fn offer(&self, seq: Seq, frame: &Bytes) -> Result<(), Full> {
        self.queue.try_send(Outgoing::Message(seq, frame.clone())).map_err(|_| Full)
    }

    fn reply(&self, frame: Bytes) -> Result<(), Full> {
        self.queue.try_send(Outgoing::Frame(frame)).map_err(|_| Full)
    }

    fn space(&self) -> usize {
        self.queue.space()
    }

    fn evict(&self, last_seq: Seq) {
        self.queue.end(Ending::TooSlow(last_seq));
    }

    fn remove(&self, frame: Bytes) {
        self.queue.end(Ending::Removed(frame));
    }
}

/// Frames a drained queue keeps room for; it gives back the rest.
const KEPT: usize = 32;

/// What the two sides of a frame queue share: [`queue`] makes one.
struct Channel {
    state: Mutex<State>,
    /// Wakes the reader: a frame came, or the last sender went.
    readable: Notify,
    /// Wakes senders waiting for room.
    writable: Notify,
    /// Wakes whoever waits for the member's end.
    ended: Notify,
    capacity: usize,
}

struct State {
    frames: VecDeque<Outgoing>,
    senders: usize,
    /// Senders waiting for room: the reader wakes them only when there are some.
    waiting: usize,
    /// The reader is gone: sends fail.
    closed: bool,
    /// Why the core ended the member, once it has.
    ending: Option<Ending>,
}

impl Channel {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes once the core has ended the member, with why; never if it does not (a
    /// member that leaves is not ended).
    async fn ending(&self) -> Ending {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(ending) = self.lock().ending.clone() {
                return ending;
            }
            ended.await;
        }
    }
}

/// The sending side of a frame queue. Cloning it adds a sender; the reader sees the queue
/// end once every sender is gone and the frames are read.
pub struct Queue(Arc<Channel>);

/// The reading side of a frame queue.
pub struct Queued(Arc<Channel>);

/// A queue that holds at most `capacity` frames.
pub fn queue(capacity: usize) -> (Queue, Queued) {
    let state =
        State { frames: VecDeque::new(), senders: 1, waiting: 0, closed: false, ending: None };
    let channel = Arc::new(Channel {
        state: Mutex::new(state),
        readable: Notify::new(),
        writable: Notify::new(),
        ended: Notify::new(),
        capacity: capacity.max(1),
    });
    (Queue(Arc::clone(&channel)), Queued(channel))
}

impl Queue {
    /// Queues `frame` unless the queue is full or its reader gone; then gives it back.
    pub fn try_send(&self, frame: Outgoing) -> Result<(), Outgoing> {
        {
            let mut state = self.0.lock();
            if state.closed || state.frames.len() >= self.0.capacity {
                return Err(frame);
            }
            state.frames.push_back(frame);
        }
        self.0.readable.notify_one();
        Ok(())
    }

    /// Queues `frame` once there is room; gives it back if the reader is gone.
    pub async fn send(&self, frame: Outgoing) -> Result<(), Outgoing> {
        loop {
            // Registered before the try, so that room made after it is not missed.
            let room = self.0.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut state = self.0.lock();
                if state.closed {
                    return Err(frame);
                }
                if state.frames.len() < self.0.capacity {
                    state.frames.push_back(frame);
                    drop(state);
                    self.0.readable.notify_one();
                    return Ok(());
                }
                // Counted under the same lock as the check, so that the reader, making
                // room, knows to wake it.
                state.waiting += 1;
            }
            let _waiting = Waiting(&self.0);
            room.await;
        }
    }

    /// Ends the member (the core dropped it, or an operator removed it): the writer and the
    /// reader of its sends learn why, past any frames still queued.
    pub fn end(&self, ending: Ending) {
        self.0.lock().ending = Some(ending);
        self.0.ended.notify_waiters();
    }

    /// Completes once the member is ended; see [`Queue::end`].
    pub async fn ending(&self) -> Ending {
        self.0.ending().await
    }

    /// How many more frames fit.
    pub fn space(&self) -> usize {
        self.0.capacity.saturating_sub(self.0.lock().frames.len())
    }
}

/// A sender counted among those waiting for room, until it stops waiting.
struct Waiting<'a>(&'a Channel);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Clone for Queue {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(Arc::clone(&self.0))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let last = {
            let mut state = self.0.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.0.readable.notify_one();
        }
    }
}

impl Queued {
    /// Moves up to `limit` frames into `batch`, waiting for one if there is none; 0 once
    /// every sender is gone and every frame read.
    pub async fn recv_many(&self, batch: &mut Vec<Outgoing>, limit: usize) -> usize {
        loop {
            {
                let mut state = self.0.lock();
                if !state.frames.is_empty() {
                    let taken = limit.max(1).min(state.frames.len());
                    batch.extend(state.frames.drain(..taken));
                    if state.frames.is_empty() && state.frames.capacity() > KEPT {
                        state.frames = VecDeque::new();
                    }
                    let waiting = state.waiting > 0;
                    drop(state);
                    if waiting {
                        self.0.writable.notify_waiters();
                    }
                    return taken;
                }
                if state.senders == 0 {
                    return 0;
                }
            }
            // A frame queued since the check left a permit: this returns at once.
            self.0.readable.notified().await;
        }
    }

    /// Completes once the member is ended; see [`Queue::end`].
    pub async fn ending(&self) -> Ending {
        self.0.ending().await
    }

    /// The next frame; `None` once every sender is gone and every frame read.
    pub async fn recv(&self) -> Option<Outgoing> {
        let mut one = Vec::with_capacity(1);
        self.recv_many(&mut one, 1).await;
        one.pop()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.0.lock();
            state.closed = true;
            std::mem::take(&mut state.frames)
        };
        // Outside the lock: a page's frame gives its room in the page budget back.
        drop(dropped);
        self.0.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Outgoing {
        Outgoing::Message(n, Bytes::new())
    }

    fn seqs(batch: &[Outgoing]) -> Vec<u64> {
        batch.iter().map(|f| if let Outgoing::Message(seq, _) = f { *seq } else { 0 }).collect()
    }

    #[tokio::test]
    async fn frames_come_out_in_order_and_a_full_queue_refuses() {
        let (queue, queued) = queue(3);
        for n in 1..=3 {
            assert!(queue.try_send(frame(n)).is_ok());
        }
        assert!(queue.try_send(frame(4)).is_err(), "full");
        assert_eq!(queue.space(), 0);
        let mut batch = Vec::new();
        assert_eq!(queued.recv_many(&mut batch, 2).await, 2);
        assert_eq!(queued.recv_many(&mut batch, 2).await, 1);
        assert_eq!(seqs(&batch), [1, 2, 3]);
        assert_eq!(queue.space(), 3);
    }

    #[tokio::test]
    async fn the_reader_wakes_for_a_frame_and_ends_after_the_last_sender() {
        let (queue, queued) = queue(8);
        let other = queue.clone();
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(frame) = queued.recv().await {
                seen.push(frame);
            }
            seqs(&seen)
        });
        tokio::task::yield_now().await;
        queue.try_send(frame(1)).expect("room");
        drop(queue);
        other.try_send(frame(2)).expect("room");
        drop(other);
        assert_eq!(reader.await.expect("reader"), [1, 2]);
    }

    #[tokio::test]
    async fn a_waiting_send_goes_once_there_is_room_and_fails_once_the_reader_is_gone() {
        let (queue, queued) = queue(1);
        queue.try_send(frame(1)).expect("room");
        let sender = queue.clone();
        let waiting = tokio::spawn(async move { sender.send(frame(2)).await.is_ok() });
        tokio::task::yield_now().await;
        let mut batch = Vec::new();
        queued.recv_many(&mut batch, 8).await;
        assert!(waiting.await.expect("sender"), "sent once the first was read");
        queued.recv_many(&mut batch, 8).await;
        assert_eq!(seqs(&batch), [1, 2]);
        queue.try_send(frame(3)).expect("room");
        let sender = queue.clone();
        let blocked = tokio::spawn(async move { sender.send(frame(4)).await.is_err() });
        tokio::task::yield_now().await;
        drop(queued);
        assert!(blocked.await.expect("sender"), "the reader went");
        assert!(queue.try_send(frame(5)).is_err());
    }

    #[tokio::test]
    async fn both_sides_learn_that_the_member_ended_even_with_the_queue_full() {
        let (queue, queued) = queue(1);
        queue.try_send(frame(1)).expect("room");
        let sender = queue.clone();
        let reader = tokio::spawn(async move { queued.ending().await });
        let writer = tokio::spawn(async move { sender.ending().await });
        tokio::task::yield_now().await;
        queue.end(Ending::TooSlow(7));
        for ended in [reader.await.expect("reader"), writer.await.expect("writer")] {
            assert!(matches!(ended, Ending::TooSlow(7)));
        }
        assert!(matches!(queue.ending().await, Ending::TooSlow(7)), "and later callers");
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_room_back() {
        let (queue, queued) = queue(1000);
        for n in 0..500 {
            queue.try_send(frame(n)).expect("room");
        }
        let mut batch = Vec::new();
        while batch.len() < 500 {
            queued.recv_many(&mut batch, 64).await;
        }
        assert!(queue.0.lock().frames.capacity() <= KEPT);
    }
}
