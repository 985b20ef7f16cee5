//! One room: its members and the order in which they receive its messages.
//!
//! Messages arrive from the history with their sequence numbers, possibly out of order when
//! several writes complete at once. The room hands them to every member strictly in sequence
//! order, holding back any that arrive ahead of a missing one. A member whose mailbox is full
//! is dropped from the room (and told the last sequence number it was given) rather than
//! slowing down the others.

use std::collections::{BTreeMap, HashMap};

use chat_proto::NodeFrame;

use crate::{MemberId, Seq, UserName};

/// Where a member's messages go: in the node, a bounded queue that a stream writer drains.
pub trait Mailbox {
    /// A frame as the members' queues hold it, made once and shared by every member.
    type Message: Clone;
    /// Makes the message for a frame the core itself announces (an arrival, a departure).
    fn encode(frame: &NodeFrame) -> Self::Message;
    /// Queues a message without waiting.
    ///
    /// # Errors
    /// [`Full`] when the member's queue has no room; the member is then dropped.
    fn offer(&self, seq: Seq, message: &Self::Message) -> Result<(), Full>;
    /// Queues a frame meant only for this member (the ack of its own send) without waiting.
    ///
    /// # Errors
    /// [`Full`] as for [`offer`](Self::offer); the member is then dropped.
    fn reply(&self, message: Self::Message) -> Result<(), Full>;
    /// How many more messages the queue takes now.
    fn space(&self) -> usize;
    /// The member has been dropped for falling behind; `last_seq` is the last one offered.
    fn evict(&self, last_seq: Seq);
    /// The member has been removed from the room (by an operator): write `frame`, the error
    /// that says why, after what is queued, and end the stream.
    fn remove(&self, frame: Self::Message);
}

/// A mailbox had no room for one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A member that was dropped because its mailbox was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub member: MemberId,
    pub name: UserName,
    pub last_seq: Seq,
}

/// Most messages held back waiting for a missing predecessor. A history that completes
/// writes in order never needs any; the bound keeps a broken one from growing memory.
pub const MAX_HELD_BACK: usize = 65_536;

pub struct Room<B: Mailbox> {
    /// The newest sequence number handed to the members.
    delivered: Seq,
    held_back: BTreeMap<Seq, B::Message>,
    members: HashMap<MemberId, Member<B>>,
}

struct Member<B> {
    name: UserName,
    mailbox: B,
    last_offered: Seq,
}

impl<B: Mailbox> Room<B> {
    /// A room whose history ends at `last_seq`.
    pub fn new(last_seq: Seq) -> Self {
        Self { delivered: last_seq, held_back: BTreeMap::new(), members: HashMap::new() }
    }

    /// Adds a member. It will be offered every message after the returned sequence number;
    /// the ones up to it are in the history.
    pub fn join(&mut self, member: MemberId, name: UserName, mailbox: B) -> Seq {
        let last_offered = self.delivered;
        self.members.insert(member, Member { name, mailbox, last_offered });
        last_offered
    }

    /// Removes a member on an operator's word, its mailbox told with `frame`.
    pub fn remove(&mut self, member: MemberId, frame: B::Message) {
        if let Some(gone) = self.members.remove(&member) {
            gone.mailbox.remove(frame);
        }
    }

    /// Removes a member; returns its name if it was in the room.
    pub fn leave(&mut self, member: MemberId) -> Option<UserName> {
        self.members.remove(&member).map(|gone| gone.name)
    }

    /// Drops a member for falling behind, telling its mailbox.
    pub fn evict(&mut self, member: MemberId) -> Option<Evicted> {
        let gone = self.members.remove(&member)?;
        gone.mailbox.evict(gone.last_offered);
        Some(Evicted { member, name: gone.name, last_seq: gone.last_offered })
    }

    /// Queues `frame` (no room message) for every member but `except`. Returns the members
    /// dropped because their mailboxes were full.
    pub fn announce(&mut self, except: Option<MemberId>, frame: &B::Message) -> Vec<Evicted> {
        let full: Vec<MemberId> = self
            .members
            .iter()
            .filter(|&(&id, member)| {
                Some(id) != except && member.mailbox.reply(frame.clone()).is_err()
            })
            .map(|(&id, _)| id)
            .collect();
        full.into_iter().filter_map(|id| self.evict(id)).collect()
    }

    /// A message the history has stored under `seq`. Returns the members dropped because
    /// their mailboxes were full.
    pub fn committed(&mut self, seq: Seq, message: B::Message) -> Vec<Evicted> {
        let mut evicted = Vec::new();
        if seq <= self.delivered {
            return evicted; // Already delivered: a duplicate.
        }
        if seq != self.delivered + 1 {
            if self.held_back.len() < MAX_HELD_BACK {
                self.held_back.insert(seq, message);
            }
            return evicted;
        }
        self.deliver(seq, &message, &mut evicted);
        while let Some(entry) = self.held_back.first_entry() {
            if *entry.key() != self.delivered + 1 {
                break;
            }
            let (seq, message) = entry.remove_entry();
            self.deliver(seq, &message, &mut evicted);
        }
        evicted
    }

    /// A message from a log that delivers each room's messages in order but numbers them
    /// with gaps (a stream shared by every room): hands it on unless it was delivered
    /// already. Nothing is held back.
    pub fn committed_in_order(&mut self, seq: Seq, message: B::Message) -> Vec<Evicted> {
        let mut evicted = Vec::new();
        if seq > self.delivered {
            self.deliver(seq, &message, &mut evicted);
        }
        evicted
    }

    fn deliver(&mut self, seq: Seq, message: &B::Message, evicted: &mut Vec<Evicted>) {
        self.delivered = seq;
        for (&id, member) in &mut self.members {
            if member.mailbox.offer(seq, message).is_ok() {
                member.last_offered = seq;
            } else {
                evicted.push(Evicted {
                    member: id,
                    name: member.name.clone(),
                    last_seq: member.last_offered,
                });
            }
        }
        for gone in evicted.iter() {
            if let Some(member) = self.members.remove(&gone.member) {
                member.mailbox.evict(gone.last_seq);
            }
        }
    }

    /// The newest sequence number handed to the members.
    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    /// The names of the members, sorted, each once (a user may be in a room twice only
    /// through a stale connection, which presence resolves).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.members.values().map(|m| m.name.as_str().to_owned()).collect();
        names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
        names.dedup_by_key(|n| n.to_ascii_lowercase());
        names
    }

    /// How many more messages every member's queue takes now (unbounded with no member).
    pub fn space(&self) -> usize {
        self.members.values().map(|m| m.mailbox.space()).min().unwrap_or(usize::MAX)
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }
}
