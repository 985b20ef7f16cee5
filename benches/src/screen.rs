//! `chat-bench screen`: the full-screen `chat` under a busy room, as a person sees it.
//!
//! The `chat` program runs in a pseudo-terminal (`script` makes one) of 120x40; what it
//! writes is fed to a terminal emulator (vt100), and a thing counts as on the screen when the
//! emulator shows it. A typist presses a key every 50 ms (the input row must show it:
//! keystroke-to-screen), and a prober posts a numbered message every 100 ms into the room
//! shown (from its post to the screen: message-to-screen). Three phases: a quiet node; a
//! loader posting `--rate` messages a second into the room shown; the same load into the
//! other room while the quiet one is shown. For each: both latencies and `chat`'s CPU.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chat_client::Client;
use hdrhistogram::Histogram;

use crate::process::{self, ServerProcess, cpu_seconds};

const COLS: u16 = 120;
const ROWS: u16 = 40;
const KEY_EVERY: Duration = Duration::from_millis(50);
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Characters typed before the line is cleared (Ctrl-U) and typing starts again.
const TYPED_MAX: usize = 40;

/// What is being waited for on the screen, and since when.
enum Awaited {
    /// The input row ends with this text.
    Typed(String),
    /// This text is somewhere on the screen.
    Shown(String),
}

/// The emulated terminal and the latencies measured on it.
struct Glass {
    parser: vt100::Parser,
    awaited: Vec<(Awaited, Instant)>,
    keys: Histogram<u64>,
    messages: Histogram<u64>,
}

impl Glass {
    fn new() -> Self {
        Self {
            parser: vt100::Parser::new(nonzero(ROWS), nonzero(COLS), 0),
            awaited: Vec::new(),
            keys: Histogram::new(3).expect("histogram"),
            messages: Histogram::new(3).expect("histogram"),
        }
    }

    /// Takes what `chat` wrote and times everything that is now on the screen.
    fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
        if self.awaited.is_empty() {
            return;
        }
        let screen = self.parser.screen();
        let contents = screen.contents();
        let input_row = screen.rows(0, COLS).last().unwrap_or_default();
        let input_row = input_row.trim_end();
        let now = Instant::now();
        let (keys, messages) = (&mut self.keys, &mut self.messages);
        self.awaited.retain(|(awaited, since)| {
            let micros = u64::try_from(now.duration_since(*since).as_micros()).unwrap_or(u64::MAX);
            match awaited {
                Awaited::Typed(text) if input_row.ends_with(text.as_str()) => {
                    let _ = keys.record(micros);
                    false
                }
                Awaited::Shown(text) if contents.contains(text.as_str()) => {
                    let _ = messages.record(micros);
                    false
                }
                _ => true,
            }
        });
    }

    fn contents(&self) -> String {
        self.parser.screen().contents()
    }
}

fn nonzero(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).expect("not zero")
}

type Shared = Arc<Mutex<Glass>>;

fn lock(glass: &Shared) -> std::sync::MutexGuard<'_, Glass> {
    glass.lock().unwrap_or_else(PoisonError::into_inner)
}

pub async fn run(seconds: f64, rate: u64) -> anyhow::Result<()> {
    let phase = Duration::from_secs_f64(seconds);
    println!(
        "screen: chat in a {COLS}x{ROWS} pseudo-terminal; a key every {} ms, a probe message \
         every {} ms into the room shown; load {rate}/s; {seconds} s a phase",
        KEY_EVERY.as_millis(),
        PROBE_EVERY.as_millis()
    );
    let dir = tempfile::tempdir()?;
    let rooms = ["busy".to_owned(), "quiet".to_owned()];
    let server = process::node(dir.path(), &rooms, &[], &[])?;
    let options = |name: &str| process::node_options(&server.addr, dir.path(), name.into());
    process::wait_until_up(&options("probe")).await?;

    let glass: Shared = Arc::new(Mutex::new(Glass::new()));
    let mut chat = start_chat(&server, dir.path())?;
    let mut keyboard = chat.stdin.take().context("chat's input")?;
    let output = chat.stdout.take().context("chat's output")?;
    let reader = Arc::clone(&glass);
    std::thread::spawn(move || read_screen(output, &reader));
    wait_for_screen(&glass, "the input row", |s| s.contains("[busy]") && s.contains("connected"))
        .await?;
    let chat_pid = child_of(chat.id())?;

    let prober = Arc::new(Client::connect(options("prober")).await?);
    let loader = Arc::new(Client::connect(options("loader")).await?);
    println!("| phase | keystroke p50 / p99 / max | message p50 / p99 / max | chat CPU |");
    println!("| --- | --- | --- | --- |");
    let phases = [
        ("quiet node, room shown", None, "busy"),
        ("load into the room shown", Some("busy"), "busy"),
        ("load into another room", Some("busy"), "quiet"),
    ];
    for (number, (label, load, shown)) in phases.into_iter().enumerate() {
        if shown == "quiet" {
            keyboard.write_all(b"\x1b2")?; // Alt+2: the second room of the sidebar.
            keyboard.flush()?;
            wait_for_screen(&glass, "the quiet room", |s| s.contains("[quiet]")).await?;
        }
        {
            let mut glass = lock(&glass);
            glass.keys.reset();
            glass.messages.reset();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let loading = load.map(|room| {
            tokio::spawn(load_room(Arc::clone(&loader), room, rate, Arc::clone(&stop)))
        });
        let cpu_before = cpu_seconds(chat_pid)?;
        let started = Instant::now();
        let probing = tokio::spawn(probe(
            Arc::clone(&prober),
            shown,
            number,
            Arc::clone(&glass),
            Arc::clone(&stop),
        ));
        type_keys(&mut keyboard, &glass, phase).await?;
        stop.store(true, Ordering::Relaxed);
        let sent = probing.await??;
        if let Some(loading) = loading {
            loading.await??;
        }
        let cpu = (cpu_seconds(chat_pid)? - cpu_before) / started.elapsed().as_secs_f64();
        // The last probes and keys get their chance to show: until they have, or for 5 s
        // at most (a busy machine paints late; one scrolled past is never seen).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&glass).awaited.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut glass = lock(&glass);
        // Scrolled past between two paints, in a busy room shown: counted, not timed.
        let missed = glass.awaited.len();
        glass.awaited.clear();
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {label} | {:.1} / {:.1} / {:.1} ms ({} keys) | {:.1} / {:.1} / {:.1} ms ({} of {sent} probes seen) | {:.1}% of a core |",
            ms(&glass.keys, 0.5),
            ms(&glass.keys, 0.99),
            glass.keys.max() as f64 / 1000.0,
            glass.keys.len(),
            ms(&glass.messages, 0.5),
            ms(&glass.messages, 0.99),
            glass.messages.max() as f64 / 1000.0,
            glass.messages.len(),
            cpu * 100.0,
        );
        if missed > 0 {
            println!("  ({missed} keys or probes were never seen on the screen)");
        }
    }
    keyboard.write_all(b"\x03")?; // Ctrl-C
    let _ = chat.kill();
    Ok(())
}

/// `chat` in a pseudo-terminal of [`COLS`] x [`ROWS`], watching `busy` and `quiet`.
fn start_chat(server: &ServerProcess, dir: &std::path::Path) -> anyhow::Result<Child> {
    let chat = process::sibling("chat")?;
    let ca = dir.join("certs/ca.pem");
    let line = format!(
        "stty rows {ROWS} cols {COLS}; exec '{}' --server {} --ca '{}' --name viewer --room busy --room quiet --no-bell",
        chat.display(),
        server.addr,
        ca.display()
    );
    Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("CHAT_CLIENT_DATA_DIR", dir.join("client"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("`script` (util-linux) starts chat in a pseudo-terminal")
}

/// The one child of `pid` (`chat`, under `script`).
fn child_of(pid: u32) -> anyhow::Result<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    children.split_whitespace().next().and_then(|c| c.parse().ok()).context("chat's process")
}

fn read_screen(mut output: impl Read, glass: &Shared) {
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n) = output.read(&mut buf) {
        if n == 0 {
            return;
        }
        lock(glass).feed(&buf[..n]);
    }
}

async fn wait_for_screen(
    glass: &Shared,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let contents = lock(glass).contents();
        if ready(&contents) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no {what} on chat's screen:\n{contents}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Types a key every [`KEY_EVERY`] for `phase`, each awaited on the input row.
async fn type_keys(
    keyboard: &mut impl Write,
    glass: &Shared,
    phase: Duration,
) -> anyhow::Result<()> {
    let mut typed = String::new();
    let mut tick = tokio::time::interval(KEY_EVERY);
    let end = Instant::now() + phase;
    while Instant::now() < end {
        tick.tick().await;
        if typed.len() == TYPED_MAX {
            keyboard.write_all(b"\x15")?; // Ctrl-U empties the line.
            keyboard.flush()?;
            typed.clear();
            continue;
        }
        let c = char::from(b'a' + (typed.len() % 26) as u8);
        typed.push(c);
        lock(glass).awaited.push((Awaited::Typed(typed.clone()), Instant::now()));
        keyboard.write_all(c.to_string().as_bytes())?;
        keyboard.flush()?;
    }
    tick.tick().await; // The last key shows before the line is emptied.
    keyboard.write_all(b"\x15")?;
    keyboard.flush()?;
    Ok(())
}

/// Posts a numbered probe into `room` every [`PROBE_EVERY`], each awaited on the screen.
async fn probe(
    client: Arc<Client>,
    room: &'static str,
    phase: usize,
    glass: Shared,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<usize> {
    let mut joined = client.join(room, Some(u64::MAX)).await?;
    let sender = joined.sender();
    let drain = tokio::spawn(async move { while joined.next().await.is_some() {} });
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        sent += 1;
        let body = format!("probe-{phase}-{sent:06}");
        lock(&glass).awaited.push((Awaited::Shown(body.clone()), Instant::now()));
        let _ = sender.post(body).await?;
    }
    drain.abort();
    Ok(sent)
}

/// Posts `rate` messages a second into `room`, in bursts every 10 ms, until stopped.
async fn load_room(
    client: Arc<Client>,
    room: &'static str,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut joined = client.join(room, Some(u64::MAX)).await?;
    let sender = joined.sender();
    let drain = tokio::spawn(async move { while joined.next().await.is_some() {} });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (started, mut sent) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            sent += 1;
            let _ = sender.post(format!("load message {sent} with some text to read")).await?;
        }
    }
    drain.abort();
    Ok(())
}
