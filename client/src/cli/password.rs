//! Where `chat` gets a password: `CHAT_PASSWORD`, `--password-file`, or asked on the
//! terminal with nothing echoed. Never from a typed line that stays on the screen.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

/// The password given in the environment or a file, if any (the file's first line).
///
/// # Errors
/// The file cannot be read.
pub fn given(env: Option<&str>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(password) = env.filter(|p| !p.is_empty()) {
        return Ok(Some(password.to_owned()));
    }
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the password file {}", file.display()))?;
    Ok(Some(text.lines().next().unwrap_or("").to_owned()))
}

/// Whether a password can be asked for: standard input and error are a terminal.
pub fn can_ask() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks for a password on the terminal (`label` is the question), echoing nothing.
///
/// # Errors
/// Not a terminal, or the user pressed Ctrl+C or Esc.
pub fn ask(label: &str) -> anyhow::Result<String> {
    if !can_ask() {
        bail!("no terminal to ask for the password on: set CHAT_PASSWORD or pass --password-file");
    }
    let mut err = std::io::stderr();
    write!(err, "{label}: ")?;
    err.flush()?;
    crossterm::terminal::enable_raw_mode()?;
    let read = read_hidden();
    crossterm::terminal::disable_raw_mode()?;
    writeln!(err)?;
    read
}

fn read_hidden() -> anyhow::Result<String> {
    let mut password = String::new();
    loop {
        let Event::Key(key) = event::read()? else { continue };
        if key.kind == KeyEventKind::Release {
            continue;
        }
        match key.code {
            KeyCode::Enter => return Ok(password),
            KeyCode::Backspace => {
                password.pop();
            }
            KeyCode::Esc => bail!("no password given"),
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                bail!("no password given")
            }
            KeyCode::Char(c) => password.push(c),
            _ => {}
        }
    }
}

/// A new password: asked twice on a terminal (they must match), else the first line of
/// standard input.
///
/// # Errors
/// The two differ, or nothing can be read.
pub fn new_password(label: &str) -> anyhow::Result<String> {
    if can_ask() {
        let first = ask(label)?;
        if ask("the same again")? != first {
            bail!("the two passwords differ; nothing was changed");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
