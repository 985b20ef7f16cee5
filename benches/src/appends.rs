//! `chat-bench appends`: the history alone, with `window` appends in flight, to see group
//! commit at work: messages per second with one sync per batch (or none, buffered).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use chat_history::{Config as HistoryConfig, Durability, History, Message};

pub fn run(messages: usize, window: usize, size: usize, buffered: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let durability = durability(buffered);
    let history = History::open(HistoryConfig {
        path: dir.path().into(),
        cap: 10_000,
        cap_by_prefix: Vec::new(),
        durability,
    })?;
    history.create_room("bench")?;
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let message = Message { sender: "bench".into(), timestamp_ms: 0, body: "x".repeat(size) };
    let began = Instant::now();
    for _ in 0..messages {
        let (count, freed) = &*in_flight;
        let mut n = freed
            .wait_while(count.lock().map_err(|_| anyhow::anyhow!("poisoned"))?, |n| *n >= window)
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        *n += 1;
        drop(n);
        let done = Arc::clone(&in_flight);
        history.append(
            "bench",
            message.clone(),
            Box::new(move |stored| {
                if stored.is_err() {
                    eprintln!("an append failed: {stored:?}");
                }
                let (count, freed) = &*done;
                if let Ok(mut n) = count.lock() {
                    *n -= 1;
                }
                freed.notify_one();
            }),
        );
    }
    history.flush()?;
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "appends: {messages} of {size} B, {window} in flight, {:?} durability: {elapsed:.2} s, {:.0} messages/s",
        durability,
        messages as f64 / elapsed
    );
    history.close()?;
    Ok(())
}

fn durability(buffered: bool) -> Durability {
    if buffered { Durability::Buffered } else { Durability::Sync }
}
