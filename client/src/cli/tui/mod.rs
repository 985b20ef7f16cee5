//! The full-screen interface of the interactive `chat`, used when standard input and output
//! are a terminal: a sidebar of rooms and conversations with unread counts, a view per room,
//! a status line and the input (see `view` for what it shows and `draw` for how).
//!
//! The session does not change: it shows its notices through [`Screen`] and takes typed
//! lines as before, so that everything the line mode does (commands, reconnects, resends)
//! works here too. Keys a view handles itself (a room change, a page back) become the
//! session's own commands (`/switch`, `/history`), in order with the lines typed.
//!
//! One thread owns the terminal and paints; another reads keys. Notices and keys reach the
//! painter through one bounded channel. It paints at once after a key, so that typing never
//! waits behind a busy room, and for notices alone at once too unless it painted for notices
//! less than a [`FRAME`] ago (a busy room is painted at most 60 times a second, and a
//! message waits at most a frame). It never blocks on the session: typed lines the session
//! cannot take yet wait in order in the painter.

mod draw;
pub(crate) mod input;
mod view;

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyEventKind};
use crossterm::{execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::mpsc;

use super::output::{Notice, Sink};
pub use input::History;
pub use view::View;

/// Notices and keys waiting for the painter before the session (or the key reader) waits.
const EVENTS: usize = 4096;
/// Typed lines waiting for the session before the painter holds them.
const TYPED_LINES: usize = 64;
/// The shortest time between two paints for notices alone.
const FRAME: Duration = Duration::from_millis(16);
/// How often held lines are offered to the session again.
const RETRY: Duration = Duration::from_millis(10);

enum Incoming {
    Notice(Notice),
    Terminal(Event),
    /// The terminal cannot be read any more.
    Gone,
    Stop,
}

/// How the interface starts.
pub struct Options {
    pub me: String,
    pub server: String,
    /// Ring the terminal's bell when a message names the user.
    pub bell: bool,
    /// Where the lines typed are kept between runs.
    pub history: Option<std::path::PathBuf>,
}

/// The running interface; dropping it gives the terminal back as it was.
pub struct Tui {
    events: std_mpsc::SyncSender<Incoming>,
    painter: Option<JoinHandle<View>>,
    stop_keys: Arc<AtomicBool>,
}

/// Shows the session's notices on the screen.
struct Screen(std_mpsc::SyncSender<Incoming>);

impl Sink for Screen {
    fn show(&mut self, notice: Notice) {
        let _ = self.0.send(Incoming::Notice(notice));
    }
}

impl Tui {
    /// Takes the terminal over and starts painting. Returns the sink for the session's
    /// notices and the lines typed (`/quit` on Ctrl-C or a lost terminal).
    ///
    /// # Errors
    /// The terminal cannot be put in raw mode or drawn on.
    pub fn start(options: Options) -> io::Result<(Self, Box<dyn Sink>, mpsc::Receiver<String>)> {
        restore_on_panic();
        enter()?;
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(terminal) => terminal,
            Err(e) => {
                leave();
                return Err(e);
            }
        };
        let (events_tx, events) = std_mpsc::sync_channel(EVENTS);
        let (lines, typed) = mpsc::channel(TYPED_LINES);
        let stop_keys = Arc::new(AtomicBool::new(false));
        let keys = (events_tx.clone(), Arc::clone(&stop_keys));
        std::thread::spawn(move || read_keys(&keys.0, &keys.1));
        let mut view = View::new(
            &options.me,
            &options.server,
            History::load(options.history),
            jiff::tz::TimeZone::system(),
        );
        view.bell_enabled = options.bell;
        let painter = std::thread::spawn(move || paint(terminal, view, &events, &lines));
        let sink = Box::new(Screen(events_tx.clone()));
        Ok((Self { events: events_tx, painter: Some(painter), stop_keys }, sink, typed))
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        self.stop_keys.store(true, Ordering::Relaxed);
        let _ = self.events.send(Incoming::Stop);
        let view = self.painter.take().and_then(|painter| painter.join().ok());
        leave();
        // What was typed and never stored, said where it stays readable after the exit.
        for room in view.iter().flat_map(|view| &view.rooms) {
            for line in &room.pending {
                println!("!! {}: not sent: {}", room.shown, super::output::printable(&line.text));
            }
        }
    }
}

fn enter() -> io::Result<()> {
    terminal::enable_raw_mode()?;
    let entered = execute!(
        io::stdout(),
        terminal::EnterAlternateScreen,
        event::EnableBracketedPaste,
        event::EnableMouseCapture
    );
    if entered.is_err() {
        leave();
    }
    entered
}

/// Gives the terminal back: the screen as it was before, the cursor shown, cooked mode.
fn leave() {
    let _ = execute!(
        io::stdout(),
        event::DisableMouseCapture,
        event::DisableBracketedPaste,
        terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = terminal::disable_raw_mode();
}

/// A panic anywhere gives the terminal back first, so that its message can be read.
fn restore_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            leave();
            previous(info);
        }));
    });
}

fn read_keys(events: &std_mpsc::SyncSender<Incoming>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let event = match event::poll(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => event::read(),
            Err(e) => Err(e),
        };
        let sent = match event {
            Ok(event) => events.send(Incoming::Terminal(event)),
            Err(_) => {
                let _ = events.send(Incoming::Gone);
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The painter: applies notices and keys to the view, hands typed lines to the session and
/// paints, until told to stop.
fn paint(
    mut terminal: Terminal<CrosstermBackend<io::Stdout>>,
    mut view: View,
    events: &std_mpsc::Receiver<Incoming>,
    lines: &mpsc::Sender<String>,
) -> View {
    let mut held: VecDeque<String> = VecDeque::new();
    // Paints for notices alone are spaced a frame apart; paints for keys do not count.
    let mut last_notice_paint = Instant::now() - FRAME;
    let mut dirty = true;
    let mut clear = false;
    loop {
        // A key paints at once; notices alone paint at once too, unless a paint for notices
        // was less than a frame ago.
        let mut keyed = false;
        let wait = if !held.is_empty() {
            RETRY
        } else if dirty {
            FRAME.saturating_sub(last_notice_paint.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        let first = match events.recv_timeout(wait) {
            Ok(event) => Some(event),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return view,
        };
        for event in first.into_iter().chain(std::iter::from_fn(|| events.try_recv().ok())) {
            dirty = true;
            let action = match event {
                Incoming::Stop => return view,
                Incoming::Gone => view::Action::Send(vec!["/quit".into()]),
                Incoming::Notice(notice) => {
                    view.notice(notice);
                    view::Action::None
                }
                Incoming::Terminal(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                    keyed = true;
                    view.key(key)
                }
                Incoming::Terminal(Event::Paste(text)) => {
                    keyed = true;
                    view.paste(&text)
                }
                Incoming::Terminal(Event::Mouse(mouse)) => {
                    keyed = true;
                    view.mouse(mouse)
                }
                Incoming::Terminal(Event::Resize(..)) => {
                    keyed = true;
                    clear = true;
                    view::Action::None
                }
                Incoming::Terminal(_) => view::Action::None,
            };
            match action {
                view::Action::Send(typed) => held.extend(typed),
                view::Action::Clear => clear = true,
                view::Action::None => {}
            }
            if keyed {
                break; // Paint what this key did before taking more.
            }
        }
        while let Some(line) = held.pop_front() {
            match lines.try_send(line) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(line)) => {
                    held.push_front(line);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => held.clear(),
            }
        }
        let for_notices = !keyed && !clear;
        if dirty && (!for_notices || last_notice_paint.elapsed() >= FRAME) {
            if clear {
                let _ = terminal.clear();
                clear = false;
            }
            let _ = terminal.draw(|frame| draw::draw(frame, &mut view));
            if std::mem::take(&mut view.bell) {
                let _ = io::stdout().write_all(b"\x07").and_then(|()| io::stdout().flush());
            }
            if for_notices {
                last_notice_paint = Instant::now();
            }
            dirty = false;
        }
    }
}

#[cfg(test)]
mod tests;
