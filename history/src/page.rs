//! Pages of a room's history in the manner of IRCv3 `CHATHISTORY`: the newest messages, or
//! those before, after or around a sequence number, bounded in messages and in bytes, with
//! whether more lie on either side.

use crate::{Message, Seq, Stored};

/// Where a page is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The newest messages.
    Latest,
    /// The newest messages older than this sequence number.
    Before(Seq),
    /// The oldest messages newer than this sequence number.
    After(Seq),
    /// Half the page older than this sequence number, the rest from it on.
    Around(Seq),
}

/// How much one page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    pub messages: usize,
    /// The most bytes of text (senders and bodies); a page holds at least one message
    /// whatever its size, so that a long message can still be read.
    pub bytes: usize,
}

/// What [`History::page`](crate::History::page) returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The page's messages, oldest first.
    pub messages: Vec<Stored>,
    /// Retained messages older than the page exist.
    pub more_before: bool,
    /// Retained messages newer than the page exist.
    pub more_after: bool,
    /// The oldest retained message's number (`last_seq + 1` when none is retained): a page
    /// asked for before it says where the history starts.
    pub first_seq: Seq,
    /// The room's newest sequence number when the page was read.
    pub last_seq: Seq,
    /// For a page after a sequence number: the numbers `first..=last` after it that have
    /// been trimmed away. Only a store that numbers each room densely can tell.
    pub gap: Option<(Seq, Seq)>,
}

/// What a message costs a page: its text.
pub fn weight(message: &Message) -> usize {
    message.sender.len() + message.body.len()
}

/// The bytes left for a page as it fills.
#[derive(Debug)]
pub(crate) struct Budget {
    bytes: usize,
    taken_any: bool,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self { bytes, taken_any: false }
    }

    /// Takes `message` if it fits, or if it would be the page's first.
    pub(crate) fn take(&mut self, message: &Message) -> bool {
        let weight = weight(message);
        if weight <= self.bytes || !self.taken_any {
            self.bytes = self.bytes.saturating_sub(weight);
            self.taken_any = true;
            return true;
        }
        false
    }

    /// Splits off half the bytes left, for the older half of an [`Anchor::Around`] page.
    pub(crate) fn split_half(&mut self) -> Self {
        let half = self.bytes / 2;
        self.bytes -= half;
        Self { bytes: half, taken_any: false }
    }

    /// Gives back what `part` did not use.
    pub(crate) fn join(&mut self, part: Self) {
        self.bytes += part.bytes;
        self.taken_any |= part.taken_any;
    }
}

/// A page from the two sides of its anchor as a store gathered them, each oldest first and
/// each at most as long as the page may be (`older` ends nearest the anchor, `newer` starts
/// there), trimmed to `limit`'s bytes from the far ends: for a store whose numbering has
/// gaps (cluster mode's), which cannot read backwards by number.
pub fn assemble(
    anchor: Anchor,
    mut older: Vec<Stored>,
    newer: Vec<Stored>,
    first: Seq,
    last: Seq,
    limit: PageLimit,
) -> HistoryPage {
    let mut budget = Budget::new(limit.bytes);
    let mut older_budget = match anchor {
        Anchor::Around(_) => budget.split_half(),
        _ => std::mem::replace(&mut budget, Budget::new(0)),
    };
    let keep = older.iter().rev().take_while(|s| older_budget.take(&s.message)).count();
    older.drain(..older.len() - keep);
    budget.join(older_budget);
    let mut messages = older;
    messages.extend(newer.into_iter().take_while(|s| budget.take(&s.message)));
    finish(anchor, messages, first, last)
}

/// The flags of a page of `messages` (oldest first) taken at `anchor` from a room that
/// retains `first..=last`.
pub(crate) fn finish(anchor: Anchor, messages: Vec<Stored>, first: Seq, last: Seq) -> HistoryPage {
    let retained = first <= last;
    let (more_before, more_after) = match (messages.first(), messages.last()) {
        (Some(oldest), Some(newest)) => (first < oldest.seq, last > newest.seq),
        _ => {
            // Nothing on the page: what lies on either side of where it was asked for.
            let edge = match anchor {
                Anchor::Latest => last.saturating_add(1),
                Anchor::Before(seq) | Anchor::Around(seq) => seq,
                Anchor::After(seq) => seq.saturating_add(1),
            };
            (retained && first < edge, retained && last >= edge)
        }
    };
    let first_seq = if retained { first } else { last.saturating_add(1) };
    HistoryPage { messages, more_before, more_after, first_seq, last_seq: last, gap: None }
}
