//! Paints a [`View`]: the sidebar of rooms, the room's messages, the status line and the
//! input, or the help screen over them.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use unicode_width::UnicodeWidthChar;

use super::view::{COMMANDS, Entry, View};
use crate::cli::output::{Link, printable};
use crate::cli::terminal::{fit, width_of};

/// Below this width the sidebar is left out: the messages need the room.
const SIDEBAR_FROM: u16 = 60;
const SIDEBAR_WIDTH: u16 = 22;
/// The input grows to this many rows, then scrolls.
const INPUT_ROWS: usize = 5;
/// The columns before a message's text on its second row and after.
const INDENT: usize = 6;

/// Colours for senders: each name gets one, the same in every run.
const PALETTE: [Color; 10] = [
    Color::Red,
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightRed,
    Color::LightGreen,
    Color::LightBlue,
    Color::LightMagenta,
];

/// The colour of `name`: FNV-1a of its lower case, so that it never changes between runs.
pub fn colour_of(name: &str) -> Color {
    let hash = name
        .to_lowercase()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

pub fn draw(frame: &mut Frame, view: &mut View) {
    let area = frame.area();
    let input_width = usize::from(area.width.max(2));
    let (input_rows, cursor) = input_lines(view, input_width);
    let input_height = u16::try_from(input_rows.len()).unwrap_or(1);
    let [main, status, input] = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(input_height),
    ])
    .areas(area);
    let messages = if area.width >= SIDEBAR_FROM {
        let [sidebar, bar, messages] = Layout::horizontal([
            Constraint::Length(SIDEBAR_WIDTH),
            Constraint::Length(1),
            Constraint::Min(1),
        ])
        .areas(main);
        frame.render_widget(Paragraph::new(sidebar_lines(view, sidebar.width)), sidebar);
        let rule: Vec<Line> = (0..bar.height).map(|_| Line::raw("│")).collect();
        frame.render_widget(Paragraph::new(rule).style(Style::new().fg(Color::DarkGray)), bar);
        messages
    } else {
        main
    };
    let rows = room_rows(view, messages.width, messages.height);
    frame.render_widget(Paragraph::new(rows), messages);
    frame.render_widget(
        Paragraph::new(status_line(view, area.width < SIDEBAR_FROM))
            .style(Style::new().add_modifier(Modifier::REVERSED)),
        status,
    );
    frame.render_widget(Paragraph::new(input_rows), input);
    let (x, y) = cursor;
    frame.set_cursor_position(Position::new(
        input.x + u16::try_from(x).unwrap_or(0),
        input.y + u16::try_from(y).unwrap_or(0),
    ));
    if view.help {
        help(frame, area);
    }
}

/// A room's line in the sidebar: its number for Alt, its name, and its unread count (with
/// `@` when something names the user).
fn sidebar_lines(view: &View, width: u16) -> Vec<Line<'static>> {
    let width = usize::from(width);
    view.rooms
        .iter()
        .enumerate()
        .map(|(i, room)| {
            let number = if i < 9 { format!("{} ", i + 1) } else { "  ".into() };
            let count = match (room.unread, room.mentions) {
                (0, _) => String::new(),
                (n, 0) => format!(" {n}"),
                (n, _) => format!(" {n}@"),
            };
            let name_room = width.saturating_sub(number.len() + count.len());
            let name = fit(&printable(&room.shown), name_room);
            let pad = " ".repeat(name_room.saturating_sub(width_of(&name)));
            let mut style = Style::new();
            if room.mentions > 0 {
                style = style.fg(Color::Yellow).add_modifier(Modifier::BOLD);
            } else if room.unread > 0 {
                style = style.add_modifier(Modifier::BOLD);
            } else if !room.joined {
                style = style.fg(Color::DarkGray);
            }
            if view.viewed == Some(i) {
                style = style.add_modifier(Modifier::REVERSED);
            }
            Line::from(vec![
                Span::styled(number, Style::new().fg(Color::DarkGray)),
                Span::styled(format!("{name}{pad}{count}"), style),
            ])
        })
        .collect()
}

/// The status line: the connection, who the user is, and the room shown with its topic.
fn status_line(view: &View, narrow: bool) -> Line<'static> {
    let link = match view.link {
        Link::Connected => "connected".to_owned(),
        Link::Reconnecting { attempt } => format!("reconnecting (attempt {attempt})"),
    };
    let waiting = match (view.link, view.waiting) {
        (_, 0) => String::new(),
        (Link::Connected, n) => format!(" · {n} sending"),
        (Link::Reconnecting { .. }, n) => format!(" · {n} queued until it is back"),
    };
    let room = view.shown_room();
    let mut text = format!(" {link}{waiting}");
    if view.viewed.is_some() {
        text.push_str(&format!(" │ {}", room.shown));
        if !room.topic.is_empty() {
            text.push_str(&format!(": {}", room.topic));
        }
    }
    if narrow {
        // No sidebar: the other rooms' unread counts are here instead.
        let others: Vec<String> = view
            .rooms
            .iter()
            .enumerate()
            .filter(|(i, r)| view.viewed != Some(*i) && r.unread > 0)
            .map(|(i, r)| {
                format!("{}:{}{}", i + 1, r.unread, if r.mentions > 0 { "@" } else { "" })
            })
            .collect();
        if !others.is_empty() {
            text.push_str(&format!(" │ {}", others.join(" ")));
        }
    }
    text.push_str(&format!(" │ {} on {}", view.me, view.server));
    Line::raw(printable(&text).replace('\n', " "))
}

/// The rows of the room shown that fit in `height`, scrolled as the room is; sets the
/// view's page size and how far up there is to scroll.
fn room_rows(view: &mut View, width: u16, height: u16) -> Vec<Line<'static>> {
    let (width, height) = (usize::from(width.max(1)), usize::from(height));
    view.page = height.saturating_sub(2).max(1);
    let (me, zone) = (view.me.clone(), view.zone.clone());
    let room = view.shown_room_mut();
    // Newest first (each entry's rows pushed last row first), until the screen and the
    // scroll are filled; turned the right way round at the end.
    let wanted = height + room.scroll;
    let mut rows: Vec<Line<'static>> = Vec::new();
    let push = |rows: &mut Vec<Line<'static>>, lines: Vec<Line<'static>>| {
        rows.extend(lines.into_iter().rev());
    };
    for pending in room.pending.iter().rev() {
        let (text, style) = match &pending.failed {
            None => (
                format!("… {me}: {}", pending.text),
                Style::new().fg(Color::DarkGray).add_modifier(Modifier::ITALIC),
            ),
            Some(why) => (
                format!("✗ {me}: {} (not sent: {why}; /retry sends it again)", pending.text),
                Style::new().fg(Color::Red),
            ),
        };
        push(&mut rows, wrap(&[(printable(&text), style)], width, INDENT));
    }
    let mut entries = room.entries.values().rev();
    let mut reached_top = true;
    while let Some(entry) = entries.next() {
        if rows.len() >= wanted {
            reached_top = false;
            break;
        }
        push(&mut rows, entry_rows(entry, &me, &zone, width));
        let Entry::Message { message, .. } = entry else { continue };
        let older = entries.clone().find_map(|e| match e {
            Entry::Message { message, .. } => Some(message),
            _ => None,
        });
        if let Some(read) = room.read_up_to
            && message.seq > read
            && older.is_none_or(|older| older.seq <= read)
            && !message.sender.eq_ignore_ascii_case(&me)
        {
            rows.push(rule("new messages", width, Style::new().fg(Color::LightRed)));
        }
        // A day line above the first message of each day.
        let day = local_day(message.timestamp_ms, &zone);
        if older.is_none_or(|older| local_day(older.timestamp_ms, &zone) != day) {
            let style = Style::new().fg(Color::DarkGray);
            rows.push(rule(&day_name(message.timestamp_ms, &zone), width, style));
        }
    }
    if reached_top {
        let said = match (room.more_before, room.paging) {
            (_, true) => "loading earlier messages…".to_owned(),
            (true, false) => "PageUp shows earlier messages".to_owned(),
            (false, false) if room.joined => format!("the beginning of {}", room.shown),
            (false, false) => String::new(),
        };
        if !said.is_empty() {
            rows.push(rule(&said, width, Style::new().fg(Color::DarkGray)));
        }
    }
    // How far up there is to scroll: unknown (more than asked for) until the top is reached.
    let top = if reached_top { rows.len().saturating_sub(height) } else { usize::MAX };
    room.scroll = room.scroll.min(top);
    let skip = room.scroll;
    view.top = top;
    // Fewer rows than the screen: they sit at the bottom, as in every chat.
    let mut shown: Vec<Line<'static>> = rows.into_iter().skip(skip).take(height).collect();
    shown.resize(height, Line::raw(""));
    shown.reverse();
    shown
}

fn entry_rows(
    entry: &Entry,
    me: &str,
    zone: &jiff::tz::TimeZone,
    width: usize,
) -> Vec<Line<'static>> {
    match entry {
        Entry::Message { message, history, mention } => {
            let mine = message.sender.eq_ignore_ascii_case(me);
            let time = Style::new().fg(Color::DarkGray);
            let mut name = Style::new().fg(colour_of(&message.sender));
            let mut body = Style::new();
            if mine {
                name = Style::new().add_modifier(Modifier::BOLD);
            }
            if *mention {
                body = body.fg(Color::Yellow).add_modifier(Modifier::BOLD);
                name = name.add_modifier(Modifier::BOLD);
            }
            let mut parts = vec![
                (format!("{} ", clock(message.timestamp_ms, zone)), time),
                (format!("{}: ", printable(&message.sender)), name),
                (printable(&message.body), body),
            ];
            if *history {
                for (_, style) in &mut parts {
                    *style = style.add_modifier(Modifier::DIM);
                }
            }
            wrap(&parts, width, INDENT)
        }
        Entry::Quiet(text) => wrap(&[(text.clone(), Style::new().fg(Color::DarkGray))], width, 2),
        Entry::Info(text) => {
            wrap(&[(format!("-- {text}"), Style::new().fg(Color::Cyan))], width, 3)
        }
        Entry::Error(text) => {
            wrap(&[(format!("!! {text}"), Style::new().fg(Color::Red))], width, 3)
        }
    }
}

/// `parts` wrapped to `width` columns: at line breaks in the text, and where a row is full
/// (a wide character that would not fit goes to the next row). Rows after the first start
/// `indent` columns in.
fn wrap(parts: &[(String, Style)], width: usize, indent: usize) -> Vec<Line<'static>> {
    let indent = indent.min(width / 2);
    let mut rows = Vec::new();
    let mut row: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for (text, style) in parts {
        let mut piece = String::new();
        for c in text.chars() {
            let w = c.width().unwrap_or(0);
            if c == '\n' || used + w > width {
                row.push(Span::styled(std::mem::take(&mut piece), *style));
                rows.push(Line::from(std::mem::take(&mut row)));
                row.push(Span::raw(" ".repeat(indent)));
                used = indent;
                if c == '\n' {
                    continue;
                }
            }
            piece.push(c);
            used += w;
        }
        row.push(Span::styled(piece, *style));
    }
    rows.push(Line::from(row));
    rows
}

/// A row across the width with `text` in it: `── text ──`.
fn rule(text: &str, width: usize, style: Style) -> Line<'static> {
    let text = fit(text, width.saturating_sub(6));
    let side = width.saturating_sub(width_of(&text) + 2) / 2;
    let line = format!("{} {text} {}", "─".repeat(side), "─".repeat(side));
    Line::styled(line, style)
}

fn local(timestamp_ms: u64, zone: &jiff::tz::TimeZone) -> Option<jiff::Zoned> {
    let ms = i64::try_from(timestamp_ms).ok()?;
    Some(jiff::Timestamp::from_millisecond(ms).ok()?.to_zoned(zone.clone()))
}

fn local_day(timestamp_ms: u64, zone: &jiff::tz::TimeZone) -> Option<jiff::civil::Date> {
    local(timestamp_ms, zone).map(|t| t.date())
}

/// `HH:MM` in the local time.
fn clock(timestamp_ms: u64, zone: &jiff::tz::TimeZone) -> String {
    local(timestamp_ms, zone).map_or_else(|| "--:--".into(), |t| t.strftime("%H:%M").to_string())
}

/// The day as a person reads it: `Tuesday 1 December 2026`.
fn day_name(timestamp_ms: u64, zone: &jiff::tz::TimeZone) -> String {
    local(timestamp_ms, zone).map_or_else(String::new, |t| t.strftime("%A %-d %B %Y").to_string())
}

/// The input rows: the room typed into, then the text, wrapped; and the cursor's column and
/// row among them.
fn input_lines(view: &View, width: usize) -> (Vec<Line<'static>>, (usize, usize)) {
    if let Some(query) = &view.search {
        let found = view.history.found_line().unwrap_or_default();
        let text = format!("(search) {query}: {}", found.replace('\n', " ⏎ "));
        let shown = fit(&printable(&text), width.saturating_sub(1));
        let x = width_of(&format!("(search) {query}"));
        return (vec![Line::raw(shown)], (x.min(width - 1), 0));
    }
    let label =
        format!("[{}] ", view.viewed.map_or("no room", |_| view.shown_room().shown.as_str()));
    let (before, after) = view.input.split();
    let label_style = Style::new().fg(Color::Cyan);
    let before_rows =
        wrap(&[(label.clone(), label_style), (printable(&before), Style::new())], width, 2);
    let cursor_row = before_rows.len() - 1;
    let cursor_x = before_rows.last().map_or(0, Line::width);
    let mut rows = wrap(
        &[
            (label, label_style),
            (printable(&before), Style::new()),
            (printable(&after), Style::new()),
        ],
        width,
        2,
    );
    let (mut x, mut y) = (cursor_x, cursor_row);
    if x >= width {
        (x, y) = (2, y + 1);
        if rows.len() <= y {
            rows.push(Line::raw(""));
        }
    }
    // At most a few rows, the cursor's among them.
    let first = (y + 1).saturating_sub(INPUT_ROWS);
    let rows: Vec<Line<'static>> = rows.into_iter().skip(first).take(INPUT_ROWS).collect();
    (rows, (x, y - first))
}

/// The help screen: the keys and every command.
fn help(frame: &mut Frame, area: Rect) {
    let keys = [
        ("Enter", "send the line to the room shown"),
        ("Alt+Enter", "a line break in the message"),
        ("Alt+1..9", "show that room of the sidebar"),
        ("Ctrl+N / Ctrl+P", "the next / previous room"),
        ("PageUp / PageDown", "scroll (and fetch earlier messages)"),
        ("mouse wheel", "scroll"),
        ("Esc", "back to the newest messages"),
        ("Tab", "complete a name, command or room"),
        ("Up / Down", "lines typed before (kept between runs)"),
        ("Ctrl+R", "search them"),
        ("Ctrl+L", "paint the screen again"),
        ("Ctrl+C, /quit", "leave (twice: at once)"),
        ("F1, /help", "this screen; Esc closes it"),
    ];
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(format!("{key:>18}  "), Style::new().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled("Commands:", Style::new().add_modifier(Modifier::BOLD)));
    lines.push(Line::raw(COMMANDS.join(" ")));
    lines.push(Line::raw(
        "/msg NAME TEXT and /query NAME open a direct conversation; the room's operators \
         have /topic /kick /ban /mute /op /invite /inviteonly /delete; anything else is \
         sent to the room shown.",
    ));
    let width = area.width.saturating_sub(4).min(90);
    let inner = usize::from(width.saturating_sub(2).max(1));
    let rows: usize = lines.iter().map(|line| line.width().div_ceil(inner).max(1)).sum();
    let height = area.height.saturating_sub(2).min(u16::try_from(rows + 2).unwrap_or(u16::MAX));
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(Block::new().borders(Borders::ALL).title(" chat: keys and commands ")),
        popup,
    );
}
