//! The line being typed (it may hold line breaks), the lines typed before (kept between
//! runs), and Tab's candidates.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Lines kept for Up, Down and Ctrl-R, here and in the file.
const KEPT: usize = 1000;

/// The text being typed, with a cursor.
#[derive(Debug, Default)]
pub struct Input {
    text: Vec<char>,
    /// The cursor's place in `text`, in characters.
    cursor: usize,
}

impl Input {
    pub fn text(&self) -> String {
        self.text.iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn chars(&self) -> &[char] {
        &self.text
    }

    /// The cursor's place, in characters.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The text before the cursor and after it.
    pub fn split(&self) -> (String, String) {
        (self.text[..self.cursor].iter().collect(), self.text[self.cursor..].iter().collect())
    }

    pub fn set(&mut self, text: &str) {
        self.text = text.chars().collect();
        self.cursor = self.text.len();
    }

    pub fn take(&mut self) -> String {
        self.cursor = 0;
        self.text.drain(..).collect()
    }

    /// Pasted text: the lines it completes, in order (the first with what was typed before
    /// it); the rest stays typed.
    pub fn paste(&mut self, text: &str) -> Vec<String> {
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut parts = text.split('\n');
        let mut done = Vec::new();
        if let Some(first) = parts.next() {
            first.chars().for_each(|c| self.insert(c));
        }
        for part in parts {
            done.push(self.take());
            part.chars().for_each(|c| self.insert(c));
        }
        done
    }

    pub fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, if c == '\t' { ' ' } else { c });
        self.cursor += 1;
    }

    pub fn on_first_row(&self) -> bool {
        !self.text[..self.cursor].contains(&'\n')
    }

    pub fn on_last_row(&self) -> bool {
        !self.text[self.cursor..].contains(&'\n')
    }

    /// Where the word before the cursor starts (in characters), and the word.
    pub fn word_before_cursor(&self) -> (usize, String) {
        let mut start = self.cursor;
        while start > 0 && !self.text[start - 1].is_whitespace() {
            start -= 1;
        }
        (start, self.text[start..self.cursor].iter().collect())
    }

    /// Puts `with` in place of the text from `start` to the cursor.
    pub fn replace_to_cursor(&mut self, start: usize, with: &str) {
        self.text.splice(start..self.cursor, with.chars());
        self.cursor = start + with.chars().count();
    }

    /// The editing keys (Emacs's, as readline has them).
    pub fn key(&mut self, key: KeyEvent) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let (start, end) = (self.row_start(), self.row_end());
        match key.code {
            KeyCode::Char('a') if ctrl => self.cursor = start,
            KeyCode::Char('e') if ctrl => self.cursor = end,
            KeyCode::Char('b') if ctrl => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Char('f') if ctrl => self.cursor = (self.cursor + 1).min(self.text.len()),
            KeyCode::Char('u') if ctrl => {
                self.text.drain(start..self.cursor);
                self.cursor = start;
            }
            KeyCode::Char('k') if ctrl => drop(self.text.drain(self.cursor..end)),
            KeyCode::Char('w') if ctrl => {
                let mut from = self.cursor;
                while from > 0 && self.text[from - 1] == ' ' {
                    from -= 1;
                }
                while from > 0 && !" \n".contains(self.text[from - 1]) {
                    from -= 1;
                }
                self.text.drain(from..self.cursor);
                self.cursor = from;
            }
            KeyCode::Char('d') if ctrl => self.delete(),
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => self.insert(c),
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.text.remove(self.cursor);
            }
            KeyCode::Delete => self.delete(),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.text.len()),
            KeyCode::Home => self.cursor = start,
            KeyCode::End => self.cursor = end,
            KeyCode::Up => self.vertical(false),
            KeyCode::Down => self.vertical(true),
            _ => {}
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    fn row_start(&self) -> usize {
        self.text[..self.cursor].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1)
    }

    fn row_end(&self) -> usize {
        self.text[self.cursor..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(self.text.len(), |i| self.cursor + i)
    }

    /// Up or Down inside a text of several rows, keeping the column where it can.
    fn vertical(&mut self, down: bool) {
        let column = self.cursor - self.row_start();
        let target_start = if down {
            let end = self.row_end();
            if end == self.text.len() {
                return;
            }
            end + 1
        } else {
            let start = self.row_start();
            if start == 0 {
                return;
            }
            self.text[..start - 1].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1)
        };
        let target_end = self.text[target_start..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(self.text.len(), |i| target_start + i);
        self.cursor = (target_start + column).min(target_end);
    }
}

/// The lines typed before, newest last; kept in a file between runs (one JSON string a
/// line, so that a line break stays in its line).
#[derive(Debug, Default)]
pub struct History {
    lines: VecDeque<String>,
    /// Where Up and Down are; `lines.len()` is the text being typed.
    browsing: usize,
    /// What was being typed before Up was pressed, for Down to bring back.
    draft: String,
    /// Ctrl-R's match, counted from the newest.
    pub found: Option<usize>,
    file: Option<PathBuf>,
}

impl History {
    /// The history in `file`, or an empty one kept there from now on.
    pub fn load(file: Option<PathBuf>) -> Self {
        let mut lines: VecDeque<String> = file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
            .unwrap_or_default();
        let too_many = lines.len() > KEPT;
        while lines.len() > KEPT {
            lines.pop_front();
        }
        let history = Self { browsing: lines.len(), lines, file, ..Self::default() };
        if too_many {
            history.rewrite();
        }
        history
    }

    #[cfg(test)]
    pub fn lines(&self) -> impl DoubleEndedIterator<Item = &String> {
        self.lines.iter()
    }

    /// A line typed: kept, unless it holds a password or repeats the one before.
    pub fn add(&mut self, line: &str) {
        let secret = ["/register", "/passwd"].iter().any(|c| line.trim_start().starts_with(c));
        let kept = !secret && !line.trim().is_empty();
        if kept && self.lines.back().map(String::as_str) != Some(line) {
            if self.lines.len() == KEPT {
                self.lines.pop_front();
            }
            self.lines.push_back(line.to_owned());
            self.append(line);
        }
        self.browsing = self.lines.len();
    }

    pub fn older(&mut self, input: &mut Input) {
        if self.browsing == 0 {
            return;
        }
        if self.browsing == self.lines.len() {
            self.draft = input.text();
        }
        self.browsing -= 1;
        input.set(&self.lines[self.browsing]);
    }

    pub fn newer(&mut self, input: &mut Input) {
        if self.browsing >= self.lines.len() {
            return;
        }
        self.browsing += 1;
        match self.lines.get(self.browsing) {
            Some(line) => input.set(line),
            None => input.set(&std::mem::take(&mut self.draft)),
        }
    }

    /// Ctrl-R: the newest line holding `query`, skipping `skip` newer matches' worth of lines.
    pub fn find(&mut self, query: &str, skip: usize) {
        let query = query.to_lowercase();
        self.found = self
            .lines
            .iter()
            .rev()
            .enumerate()
            .skip(skip)
            .find(|(_, line)| line.to_lowercase().contains(&query))
            .map(|(i, _)| i)
            .or(self.found);
    }

    pub fn found_line(&self) -> Option<String> {
        let i = self.found?;
        self.lines.iter().rev().nth(i).cloned()
    }

    fn append(&self, line: &str) {
        let Some(path) = &self.file else { return };
        let appended = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            writeln!(file, "{}", serde_json::Value::from(line))
        })();
        if let Err(e) = appended {
            tracing::debug!(path = %path.display(), error = %e, "the input history was not kept");
        }
    }

    /// Writes the file anew with the lines kept (it grew past what is kept).
    fn rewrite(&self) {
        let Some(path) = &self.file else { return };
        let text: String = self
            .lines
            .iter()
            .map(|l| format!("{}\n", serde_json::Value::from(l.as_str())))
            .collect();
        let aside = path.with_extension("new");
        if std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, path)).is_err() {
            tracing::debug!(path = %path.display(), "the input history was not trimmed");
        }
    }
}

/// Tab's candidates for one word, and the one shown.
#[derive(Debug)]
pub struct Completion {
    start: usize,
    candidates: Vec<String>,
    next: usize,
}

impl Completion {
    pub fn new(start: usize, candidates: Vec<String>) -> Self {
        Self { start, candidates, next: 0 }
    }

    /// Puts the next candidate in place of the word.
    pub fn next(&mut self, input: &mut Input) {
        let Some(candidate) = self.candidates.get(self.next % self.candidates.len().max(1)) else {
            return;
        };
        input.replace_to_cursor(self.start, candidate);
        self.next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(input: &mut Input, text: &str) {
        text.chars().for_each(|c| input.key(KeyEvent::from(KeyCode::Char(c))));
    }

    #[test]
    fn the_history_keeps_lines_between_runs_but_never_a_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("input_history");
        let mut history = History::load(Some(file.clone()));
        for line in ["first", "two\nrows", "/register hunter22", "/passwd a b", "last"] {
            history.add(line);
        }
        let again = History::load(Some(file.clone()));
        assert_eq!(again.lines().collect::<Vec<_>>(), ["first", "two\nrows", "last"]);
        let text = std::fs::read_to_string(&file).expect("kept");
        assert!(!text.contains("hunter22"), "{text}");

        let (mut again, mut input) = (again, Input::default());
        typed(&mut input, "draft");
        again.older(&mut input);
        again.older(&mut input);
        assert_eq!(input.text(), "two\nrows");
        again.newer(&mut input);
        again.newer(&mut input);
        assert_eq!(input.text(), "draft", "Down past the newest brings the draft back");
        again.find("FIR", 0);
        assert_eq!(again.found_line().as_deref(), Some("first"));
    }

    #[test]
    fn the_history_file_is_trimmed_to_what_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("input_history");
        let lines: String = (0..KEPT + 10).map(|i| format!("\"line {i}\"\n")).collect();
        std::fs::write(&file, lines).expect("written");
        let history = History::load(Some(file.clone()));
        assert_eq!(history.lines().count(), KEPT);
        assert_eq!(history.lines().next().map(String::as_str), Some("line 10"));
        assert_eq!(std::fs::read_to_string(&file).expect("kept").lines().count(), KEPT);
    }

    #[test]
    fn editing_keys_work_across_rows() {
        let mut input = Input::default();
        typed(&mut input, "one");
        input.insert('\n');
        typed(&mut input, "second row");
        input.key(KeyEvent::from(KeyCode::Up));
        assert!(input.on_first_row());
        input.key(KeyEvent::new(KeyCode::Char('k'), KeyModifiers::CONTROL));
        typed(&mut input, "!");
        assert_eq!(input.text(), "one!\nsecond row");
        input.key(KeyEvent::from(KeyCode::Down));
        input.key(KeyEvent::from(KeyCode::End));
        input.key(KeyEvent::new(KeyCode::Char('w'), KeyModifiers::CONTROL));
        assert_eq!(input.text(), "one!\nsecond ");
    }
}
