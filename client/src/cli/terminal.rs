//! The interactive `chat` on a terminal: what arrives scrolls up, and the bottom row is the
//! prompt (the room typed into) with the line being typed.
//!
//! The terminal is in raw mode and this module draws everything. The input row never wraps:
//! the line being typed scrolls sideways inside it, so that clearing it before printing
//! a received line always clears exactly that row, whatever the width. After a resize the
//! terminal may have reflowed or cut what it showed, so the screen is drawn again from the
//! lines received, newest at the bottom: none of them is lost and no stale prompt stays.
//!
//! Keys come from a thread of their own. Each key is taken as it comes, so that lines typed
//! or pasted in a burst are each sent, in order; a full queue of lines to send holds the
//! keys back in the terminal rather than dropping any.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, ClearType};
use crossterm::{cursor, execute, queue, style};
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthChar;

use super::output::LineSink;
use super::tui::input::{History, Input};

/// Lines kept to draw the screen again after a resize: more than any terminal has rows.
const RECENT_LINES: usize = 500;
/// Typed lines waiting for the session before keys are held back in the terminal.
const TYPED_LINES: usize = 64;

/// The terminal in raw mode; dropping it gives the terminal back as it was.
pub struct Terminal {
    screen: Arc<Mutex<Screen>>,
}

impl Terminal {
    /// Puts the terminal in raw mode and starts reading keys. Returns the printer for the
    /// session's output and the lines typed (`/quit` on Ctrl-C, Ctrl-D or a lost terminal).
    ///
    /// # Errors
    /// Standard input is not a terminal that can be put in raw mode.
    pub fn start() -> io::Result<(Self, Box<dyn LineSink>, mpsc::Receiver<String>)> {
        let (width, height) = terminal::size()?;
        terminal::enable_raw_mode()?;
        execute!(io::stdout(), event::EnableBracketedPaste)?;
        let screen = Arc::new(Mutex::new(Screen::new(width, height)));
        let (lines, typed) = mpsc::channel(TYPED_LINES);
        let keys = Arc::clone(&screen);
        std::thread::spawn(move || read_keys(&keys, &lines));
        let sink = Box::new(Printer(Arc::clone(&screen)));
        Ok((Self { screen }, sink, typed))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let mut out = io::stdout();
        let _ = lock(&self.screen).clear_input(&mut out);
        let _ = execute!(out, event::DisableBracketedPaste);
        let _ = terminal::disable_raw_mode();
    }
}

fn lock(screen: &Mutex<Screen>) -> MutexGuard<'_, Screen> {
    screen.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prints the session's lines above the input row.
struct Printer(Arc<Mutex<Screen>>);

impl LineSink for Printer {
    fn line(&mut self, line: String) {
        let mut out = io::stdout().lock();
        let _ = lock(&self.0).print(&mut out, &line);
    }

    fn prompt(&mut self, prompt: &str) {
        let mut out = io::stdout().lock();
        let mut screen = lock(&self.0);
        if screen.prompt != prompt {
            screen.prompt = prompt.to_owned();
            let _ = screen.draw_input(&mut out);
        }
    }
}

/// Reads keys until the terminal is gone or the session stops listening.
fn read_keys(screen: &Mutex<Screen>, lines: &mpsc::Sender<String>) {
    loop {
        let typed = match event::read() {
            Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                let mut out = io::stdout().lock();
                let mut screen = lock(screen);
                let edit = screen.editor.key(key);
                let _ = match edit {
                    Edit::Redraw => screen.redraw(&mut out),
                    _ => screen.draw_input(&mut out),
                };
                match edit {
                    Edit::Line(line) => vec![line],
                    Edit::Quit => vec!["/quit".to_owned()],
                    Edit::Redraw | Edit::Changed => continue,
                }
            }
            Ok(Event::Paste(text)) => {
                let mut out = io::stdout().lock();
                let mut screen = lock(screen);
                let typed = screen.editor.paste(&text);
                let _ = screen.draw_input(&mut out);
                typed
            }
            Ok(Event::Resize(width, height)) => {
                let mut out = io::stdout().lock();
                let mut screen = lock(screen);
                (screen.width, screen.height) = (width, height);
                let _ = screen.redraw(&mut out);
                continue;
            }
            Ok(_) => continue,
            Err(_) => vec!["/quit".to_owned()],
        };
        for line in typed {
            // Blocks while the session is busy: the keys wait in the terminal meanwhile.
            if lines.blocking_send(line).is_err() {
                return;
            }
        }
    }
}

/// What the screen shows: the lines received and the input row.
pub(crate) struct Screen {
    width: u16,
    height: u16,
    prompt: String,
    editor: Editor,
    /// The lines printed, oldest first, for drawing the screen again.
    recent: VecDeque<String>,
}

impl Screen {
    pub(crate) fn new(width: u16, height: u16) -> Self {
        Self {
            width,
            height,
            prompt: "> ".into(),
            editor: Editor::default(),
            recent: VecDeque::new(),
        }
    }

    /// Prints `line` above the input row. The line is printable already (`Output` made it
    /// so): no control character in it but new lines.
    pub(crate) fn print(&mut self, out: &mut impl Write, line: &str) -> io::Result<()> {
        queue!(out, cursor::MoveToColumn(0), terminal::Clear(ClearType::CurrentLine))?;
        write_rows(out, line)?;
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.to_owned());
        self.draw_input(out)
    }

    /// Draws the screen again at its size: as many of the newest lines as fit above the
    /// input row, then the input row.
    pub(crate) fn redraw(&mut self, out: &mut impl Write) -> io::Result<()> {
        let width = usize::from(self.width.max(1));
        let room = usize::from(self.height.max(2)) - 1;
        let mut rows: Vec<String> = Vec::with_capacity(room);
        for line in self.recent.iter().rev() {
            let line_rows = screen_rows(line, width);
            if rows.len() + line_rows.len() > room {
                break;
            }
            rows.splice(0..0, line_rows);
        }
        // Row by row, each cleared as it is written, and then what is below: clearing the
        // whole screen at once makes some terminals (tmux) keep a copy of it in the
        // scrollback, which a later resize brings back into view.
        queue!(out, cursor::MoveTo(0, 0))?;
        for row in &rows {
            queue!(out, terminal::Clear(ClearType::CurrentLine), style::Print(row))?;
            out.write_all(b"\r\n")?;
        }
        if rows.is_empty() {
            queue!(out, cursor::MoveToNextLine(1))?;
        }
        queue!(out, terminal::Clear(ClearType::FromCursorDown))?;
        if rows.is_empty() {
            queue!(out, cursor::MoveTo(0, 0))?;
        }
        self.draw_input(out)
    }

    /// Draws the input row: the prompt and the part of the line around the cursor.
    pub(crate) fn draw_input(&mut self, out: &mut impl Write) -> io::Result<()> {
        // The last column stays free: a character there would wrap the row on some terminals.
        let room = usize::from(self.width.max(2)) - 1;
        let prompt = fit(&self.prompt, room / 2);
        let (visible, cursor_at) = self.editor.view(room - width_of(&prompt));
        queue!(
            out,
            cursor::MoveToColumn(0),
            terminal::Clear(ClearType::CurrentLine),
            style::Print(&prompt),
            style::Print(visible),
            cursor::MoveToColumn(u16::try_from(width_of(&prompt) + cursor_at).unwrap_or(u16::MAX)),
        )?;
        out.flush()
    }

    /// Leaves the input row empty, the cursor at its start (when the program ends).
    fn clear_input(&self, out: &mut impl Write) -> io::Result<()> {
        queue!(out, cursor::MoveToColumn(0), terminal::Clear(ClearType::CurrentLine))?;
        out.flush()
    }
}

/// Writes the rows of a printed line, each ending with a new line (raw mode needs the `\r`).
fn write_rows(out: &mut impl Write, line: &str) -> io::Result<()> {
    for row in line.split('\n') {
        out.write_all(row.as_bytes())?;
        out.write_all(b"\r\n")?;
    }
    Ok(())
}

/// Columns `text` takes on a terminal.
pub(crate) fn width_of(text: &str) -> usize {
    text.chars().map(|c| c.width().unwrap_or(0)).sum()
}

/// The rows `line` takes on a terminal `width` columns wide, as the terminal wraps it.
fn screen_rows(line: &str, width: usize) -> Vec<String> {
    let mut rows = Vec::new();
    for part in line.split('\n') {
        let (mut row, mut used) = (String::new(), 0);
        for c in part.chars() {
            let w = c.width().unwrap_or(0);
            if used + w > width {
                rows.push(std::mem::take(&mut row));
                used = 0;
            }
            row.push(c);
            used += w;
        }
        rows.push(row);
    }
    rows
}

/// `text` cut to at most `columns` wide.
pub(crate) fn fit(text: &str, columns: usize) -> String {
    let mut used = 0;
    text.chars()
        .take_while(|c| {
            used += c.width().unwrap_or(0);
            used <= columns
        })
        .collect()
}

/// What a key did to the line being typed.
#[derive(Debug, PartialEq, Eq)]
enum Edit {
    /// The line was changed, or the cursor moved.
    Changed,
    /// Enter: this line is done.
    Line(String),
    /// Ctrl-C, or Ctrl-D on an empty line.
    Quit,
    /// Ctrl-L: draw the screen again.
    Redraw,
}

/// The line being typed, with a cursor and the lines typed before: the full screen's
/// [`Input`] and [`History`] (not kept in a file here), shown in one row.
#[derive(Default)]
pub(crate) struct Editor {
    input: Input,
    /// The first character shown when the line is wider than the row.
    scroll: usize,
    history: History,
}

impl Editor {
    fn key(&mut self, key: KeyEvent) -> Edit {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Enter => return Edit::Line(self.take_line()),
            KeyCode::Char('j' | 'm') if ctrl => return Edit::Line(self.take_line()),
            KeyCode::Char('c') if ctrl => return Edit::Quit,
            KeyCode::Char('d') if ctrl && self.input.is_empty() => return Edit::Quit,
            KeyCode::Char('l') if ctrl => return Edit::Redraw,
            KeyCode::Tab => self.input.insert(' '),
            KeyCode::Up => self.history.older(&mut self.input),
            KeyCode::Down => self.history.newer(&mut self.input),
            _ => self.input.key(key),
        }
        Edit::Changed
    }

    /// Pasted text: every line it completes is done, in order; the rest stays typed.
    fn paste(&mut self, text: &str) -> Vec<String> {
        let done = self.input.paste(text);
        for line in &done {
            self.history.add(line);
            self.scroll = 0;
        }
        done
    }

    fn take_line(&mut self) -> String {
        let line = self.input.take();
        self.scroll = 0;
        self.history.add(&line);
        line
    }

    /// The part of the line to show in `columns`, and the cursor's column in it. Scrolls so
    /// that the cursor stays in view.
    fn view(&mut self, columns: usize) -> (String, usize) {
        let columns = columns.max(2);
        let (line, cursor) = (self.input.chars(), self.input.cursor());
        let width = |chars: &[char]| chars.iter().map(|c| c.width().unwrap_or(0)).sum::<usize>();
        self.scroll = self.scroll.min(cursor);
        // The cursor needs a column of its own after the characters before it.
        while width(&line[self.scroll..cursor]) >= columns {
            self.scroll += 1;
        }
        // After a widening, show again what now fits before the cursor.
        while self.scroll > 0 && width(&line[self.scroll - 1..cursor]) < columns {
            self.scroll -= 1;
        }
        let mut used = 0;
        let visible: String = line[self.scroll..]
            .iter()
            .take_while(|c| {
                used += c.width().unwrap_or(0);
                used < columns
            })
            .collect();
        (visible, width(&line[self.scroll..cursor]))
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use super::*;
    use crate::cli::output::printable;

    /// A [`Screen`] drawing into a terminal emulator of the same size.
    struct Fixture {
        screen: Screen,
        term: vt100::Parser,
    }

    fn size(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).expect("not zero")
    }

    impl Fixture {
        fn new(width: u16, height: u16) -> Self {
            let term = vt100::Parser::new(size(height), size(width), 0);
            Self { screen: Screen::new(width, height), term }
        }

        fn draw(&mut self, f: impl FnOnce(&mut Screen, &mut Vec<u8>) -> io::Result<()>) {
            let mut bytes = Vec::new();
            f(&mut self.screen, &mut bytes).expect("drawn");
            self.term.process(&bytes);
        }

        fn print(&mut self, line: &str) {
            self.draw(|s, out| s.print(out, line));
        }

        fn type_text(&mut self, text: &str) {
            for c in text.chars() {
                assert_eq!(self.screen.editor.key(KeyEvent::from(KeyCode::Char(c))), Edit::Changed);
            }
            self.draw(Screen::draw_input);
        }

        /// The window is resized: the terminal first, then the screen draws itself again.
        fn resize(&mut self, width: u16, height: u16) {
            self.term.screen_mut().set_size(size(height), size(width));
            (self.screen.width, self.screen.height) = (width, height);
            self.draw(Screen::redraw);
        }

        fn rows(&self) -> Vec<String> {
            let screen = self.term.screen();
            screen.rows(0, screen.size().1.get()).map(|r| r.trim_end().to_owned()).collect()
        }

        fn cursor(&self) -> (u16, u16) {
            self.term.screen().cursor_position()
        }
    }

    #[test]
    fn a_resize_keeps_every_received_line_and_one_input_row() {
        let mut f = Fixture::new(80, 10);
        f.screen.prompt = "[general]> ".into();
        f.print("first message");
        f.type_text(&"half typed ".repeat(6));
        // Narrower: a message arrives while the window is 50 columns wide; then wide again.
        f.resize(50, 10);
        f.print("arrived while narrow");
        f.resize(80, 10);

        let rows = f.rows();
        let text: Vec<&str> = rows.iter().map(String::as_str).filter(|r| !r.is_empty()).collect();
        assert_eq!(text[..2], ["first message", "arrived while narrow"], "{rows:#?}");
        assert_eq!(text.len(), 3, "two messages and one input row: {rows:#?}");
        assert!(text[2].starts_with("[general]> half typed half"), "{rows:#?}");
        assert!(text[2].chars().count() < 80, "the input row never wraps: {rows:#?}");
    }

    #[test]
    fn more_lines_than_rows_show_the_newest_above_the_input_row() {
        let mut f = Fixture::new(40, 5);
        for i in 1..=20 {
            f.print(&format!("line {i}"));
        }
        f.resize(30, 6);
        assert_eq!(f.rows(), ["line 16", "line 17", "line 18", "line 19", "line 20", ">"]);
    }

    #[test]
    fn a_long_line_scrolls_sideways_with_the_cursor() {
        let mut f = Fixture::new(20, 3);
        f.type_text("abcdefghijklmnopqrstuvwxyz");
        let row = f.rows()[0].clone();
        assert!(row.starts_with("> ") && row.ends_with('z') && row.chars().count() < 20, "{row}");
        assert_eq!(f.cursor(), (0, u16::try_from(row.chars().count()).expect("fits")));
        f.screen.editor.key(KeyEvent::from(KeyCode::Home));
        f.draw(Screen::draw_input);
        assert!(f.rows()[0].starts_with("> abc"), "{:?}", f.rows());
        assert_eq!(f.cursor(), (0, 2));
    }

    #[test]
    fn a_message_cannot_move_the_cursor_or_clear_the_screen() {
        let mut f = Fixture::new(40, 4);
        f.print("kept");
        f.print(&printable("evil\x1b[2J\x1b[H\rgone"));
        assert_eq!(f.rows()[..2], ["kept", "evil^[[2J^[[H^Mgone"]);
    }

    #[test]
    fn keys_and_pastes_complete_lines_in_order() {
        let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
        let mut editor = Editor::default();
        for c in "one".chars() {
            editor.key(KeyEvent::from(KeyCode::Char(c)));
        }
        assert_eq!(editor.key(KeyEvent::from(KeyCode::Enter)), Edit::Line("one".into()));
        assert_eq!(editor.paste("two\nthree\r\nfour"), ["two", "three"]);
        assert_eq!(editor.key(ctrl('j')), Edit::Line("four".into()));
        editor.key(KeyEvent::from(KeyCode::Up));
        assert_eq!(editor.key(KeyEvent::from(KeyCode::Enter)), Edit::Line("four".into()));
        assert_eq!(editor.key(ctrl('d')), Edit::Quit);
    }
}
