//! Wakes across lanes, held while a message is fanned out and handed over once per lane.
//!
//! A lane's runtime is single-threaded: a task woken from any other thread is queued for it
//! and its driver woken, a `write` to its eventfd each time. A room's fan-out wakes the
//! writer of every member it offers a frame to, so at 100 members split over two lanes the
//! sender's lane made some 35 of those system calls per message (benches/RESULTS.md, "One
//! endpoint per thread"). Instead, while [`holding`] runs, a wake of a member's writer
//! (spawned with [`spawn`]) that lives on another lane is held; at its end the held wakes go
//! to each lane at once: its doorbell takes the list and a relay task there wakes them all,
//! from its own thread, where a wake is a push onto a local queue.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio::sync::Notify;

/// Where other threads leave the wakes of one lane's tasks.
#[derive(Default)]
pub(crate) struct Doorbell {
    held: Mutex<Vec<Waker>>,
    ring: Notify,
}

thread_local! {
    /// The lane this thread runs, if it runs one.
    static LANE: RefCell<Option<Arc<Doorbell>>> = const { RefCell::new(None) };
    /// How deep in [`holding`] this thread is.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The wakes held meanwhile, for tasks of other lanes.
    static HELD: RefCell<Vec<(Arc<Doorbell>, Waker)>> = const { RefCell::new(Vec::new()) };
}

/// Makes this thread `bell`'s lane: call it on the lane's thread, before its runtime runs.
pub(crate) fn enter(bell: Arc<Doorbell>) {
    LANE.set(Some(bell));
}

/// The lane's relay task: wakes here what other threads left at its doorbell.
pub(crate) async fn relay(bell: Arc<Doorbell>) {
    let mut wakes = Vec::new();
    loop {
        bell.ring.notified().await;
        std::mem::swap(&mut wakes, &mut *bell.held.lock().unwrap_or_else(PoisonError::into_inner));
        for wake in wakes.drain(..) {
            wake.wake();
        }
    }
}

/// Runs `f`, holding the wakes it makes of other lanes' tasks until it returns.
pub fn holding<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.set(DEPTH.get() + 1);
    let _hand_over = HandOver;
    f()
}

/// Hands the held wakes over when the outermost [`holding`] ends, even by a panic.
struct HandOver;

impl Drop for HandOver {
    fn drop(&mut self) {
        let depth = DEPTH.get() - 1;
        DEPTH.set(depth);
        if depth > 0 {
            return;
        }
        let mut held = HELD.take();
        while let Some((bell, wake)) = held.pop() {
            if !held.iter().any(|(other, _)| Arc::ptr_eq(other, &bell)) {
                // A lone wake costs the lane one system call either way.
                wake.wake();
                continue;
            }
            let same_lane = held.extract_if(.., |(other, _)| Arc::ptr_eq(other, &bell));
            let mut queued = bell.held.lock().unwrap_or_else(PoisonError::into_inner);
            queued.push(wake);
            queued.extend(same_lane.map(|(_, wake)| wake));
            drop(queued);
            bell.ring.notify_one();
        }
        // Its room kept for the next message.
        HELD.set(held);
    }
}

/// A task's waker that knows the task's lane.
struct LaneWaker {
    lane: Arc<Doorbell>,
    task: Waker,
}

impl Wake for LaneWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let elsewhere = DEPTH.get() > 0
            && LANE.with_borrow(|here| {
                !here.as_ref().is_some_and(|here| Arc::ptr_eq(here, &self.lane))
            });
        if elsewhere {
            HELD.with_borrow_mut(|held| held.push((Arc::clone(&self.lane), self.task.clone())));
        } else {
            self.task.wake_by_ref();
        }
    }
}

/// Spawns `future` on this thread's runtime; on a lane, with its wakes from other threads'
/// fan-outs held and handed over with the rest of its lane's.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match LANE.with_borrow(Clone::clone) {
        Some(lane) => tokio::spawn(OnLane { future: Box::pin(future), lane, waker: None }),
        None => tokio::spawn(future),
    }
}

/// A future whose wakes go through its lane's [`LaneWaker`].
struct OnLane<F> {
    future: Pin<Box<F>>,
    lane: Arc<Doorbell>,
    /// The task's own waker and the lane's around it, made again only if the task's changes.
    waker: Option<(Waker, Waker)>,
}

impl<F: Future> Future for OnLane<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let lane = match &mut this.waker {
            Some((task, lane)) if task.will_wake(cx.waker()) => &*lane,
            waker => {
                let task = cx.waker().clone();
                let around = LaneWaker { lane: Arc::clone(&this.lane), task: task.clone() };
                &waker.insert((task, Waker::from(Arc::new(around)))).1
            }
        };
        this.future.as_mut().poll(&mut Context::from_waker(lane))
    }
}
