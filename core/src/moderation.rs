//! Who runs a room and what they may do: its owner (the account that made it), its
//! operators (named by the owner), and the node's operators (named in the node's config),
//! who may kick, ban and mute members, invite names to an invite-only room and set its topic.
//!
//! A room's [`RoomRules`] are a record the node keeps (in cluster mode, shared by every node);
//! [`apply`] is the one place an action is judged and written into them, so that a node
//! applying a change read back from the store (its own or another node's) judges alike.
//! Times are wall-clock milliseconds, handed in.

use std::collections::{BTreeMap, BTreeSet};

use chat_proto::Moderation;
use serde::{Deserialize, Serialize};

use crate::{Refusal, UserName};

/// Who may make rooms at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomCreation {
    #[default]
    Anyone,
    /// Registered users, logged in.
    Accounts,
    /// The node's operators.
    Operators,
    /// Nobody: only the config's rooms.
    Nobody,
}

/// Longest topic, in bytes.
pub const MAX_TOPIC: usize = 512;

/// A room's owner, operators, topic, and who is kept out or quiet. Names are user keys
/// (lower case).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRules {
    pub owner: Option<String>,
    pub operators: BTreeSet<String>,
    pub topic: String,
    pub invite_only: bool,
    pub invited: BTreeSet<String>,
    /// Banned names, each until a time (ms since the epoch) or for good.
    pub banned: BTreeMap<String, Option<u64>>,
    /// Muted names, likewise.
    pub muted: BTreeMap<String, Option<u64>>,
    /// Counts the changes: a node applies a record newer than the one it has.
    pub revision: u64,
    /// The change that made this revision, for the nodes that announce it.
    pub last: Option<RoomEvent>,
}

/// A moderation action as the room is told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// Who did it (as the name is spelled).
    pub by: String,
    pub action: Moderation,
}

/// How much a name may do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    Member,
    Operator,
    Owner,
    /// Named in the node's config: may do anything in every room.
    NodeOperator,
}

impl RoomRules {
    /// `key`'s rank here, with the node's operators `node_operators`.
    pub fn rank(&self, key: &str, node_operators: &BTreeSet<String>) -> Rank {
        if node_operators.contains(key) {
            Rank::NodeOperator
        } else if self.owner.as_deref() == Some(key) {
            Rank::Owner
        } else if self.operators.contains(key) {
            Rank::Operator
        } else {
            Rank::Member
        }
    }

    /// Whether `key` is banned at `now_ms`.
    pub fn is_banned(&self, key: &str, now_ms: u64) -> bool {
        in_force(self.banned.get(key), now_ms)
    }

    /// Why `user` (logged in to its account or not) may not join at `now_ms`, if it may not.
    ///
    /// # Errors
    /// Banned, or an invite-only room the name is not invited to.
    pub fn check_join(
        &self,
        room: &str,
        user: &UserName,
        account: bool,
        node_operators: &BTreeSet<String>,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        let key = user.key();
        // Ranks belong to accounts: a guest under an operator's name is a member.
        let rank = if account { self.rank(&key, node_operators) } else { Rank::Member };
        if rank >= Rank::Operator {
            return Ok(());
        }
        if self.is_banned(&key, now_ms) {
            let until_ms = self.banned.get(&key).copied().flatten();
            return Err(Refusal::Banned { room: room.to_owned(), until_ms });
        }
        if self.invite_only && !self.invited.contains(&key) {
            return Err(Refusal::InviteOnly(room.to_owned()));
        }
        Ok(())
    }
}

fn in_force(until: Option<&Option<u64>>, now_ms: u64) -> bool {
    match until {
        None => false,
        Some(None) => true,
        Some(Some(until)) => *until > now_ms,
    }
}

/// `action` by `by` (of `rank` in the room) at `now_ms`, written into `rules` (its revision
/// counted, and it as the last change).
///
/// # Errors
/// The actor's rank does not allow it (operators act on members; only the owner and the
/// node's operators name operators), a name or topic that breaks the rules.
pub fn apply(
    rules: &mut RoomRules,
    by: &UserName,
    rank: Rank,
    action: &Moderation,
    node_operators: &BTreeSet<String>,
    now_ms: u64,
) -> Result<(), Refusal> {
    if rank < Rank::Operator {
        return Err(Refusal::NotOperator);
    }
    let until = |minutes: &Option<u32>| minutes.map(|m| now_ms + u64::from(m) * 60_000);
    // A name acted on must rank below the actor: operators cannot remove each other.
    let target = |name: &str| -> Result<String, Refusal> {
        let name = UserName::parse(name).map_err(Refusal::InvalidName)?;
        let key = name.key();
        if rules.rank(&key, node_operators) >= rank {
            return Err(Refusal::Outranked(name.to_string()));
        }
        Ok(key)
    };
    match action {
        Moderation::Kick { name, .. } => {
            target(name)?;
        }
        Moderation::Ban { name, minutes, .. } => {
            let key = target(name)?;
            rules.banned.insert(key, until(minutes));
        }
        Moderation::Unban { name } => {
            rules.banned.remove(&key_of(name)?);
        }
        Moderation::Mute { name, minutes } => {
            let key = target(name)?;
            rules.muted.insert(key, until(minutes));
        }
        Moderation::Unmute { name } => {
            rules.muted.remove(&key_of(name)?);
        }
        Moderation::Op { name } | Moderation::Deop { name } => {
            if rank < Rank::Owner {
                return Err(Refusal::NotOperator);
            }
            let key = target(name)?;
            if matches!(action, Moderation::Op { .. }) {
                rules.operators.insert(key);
            } else {
                rules.operators.remove(&key);
            }
        }
        Moderation::Invite { name } => {
            rules.invited.insert(key_of(name)?);
        }
        Moderation::InviteOnly(on) => rules.invite_only = *on,
        Moderation::Topic(topic) => {
            if topic.len() > MAX_TOPIC {
                return Err(Refusal::TopicTooLong { len: topic.len(), max: MAX_TOPIC });
            }
            rules.topic = topic.clone();
        }
        Moderation::DeleteRoom => {
            if rank < Rank::Owner {
                return Err(Refusal::NotOperator);
            }
            // A room made again under the name starts afresh: no owner, bans or topic.
            *rules = RoomRules { revision: rules.revision, ..RoomRules::default() };
        }
    }
    // Expired bans and mutes go when the rules change anyway.
    rules.banned.retain(|_, until| until.is_none_or(|until| until > now_ms));
    rules.muted.retain(|_, until| until.is_none_or(|until| until > now_ms));
    rules.revision += 1;
    rules.last = Some(RoomEvent { by: by.to_string(), action: action.clone() });
    Ok(())
}

/// A wall-clock time (ms since the epoch) for a person: UTC, to the minute.
pub fn when(ms: u64) -> String {
    let minutes = ms / 60_000;
    let (days, minute_of_day) = (minutes / 1440, minutes % 1440);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", minute_of_day / 60, minute_of_day % 60)
}

/// The calendar date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn key_of(name: &str) -> Result<String, Refusal> {
    Ok(UserName::parse(name).map_err(Refusal::InvalidName)?.key())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserName {
        UserName::parse(name).expect("valid")
    }

    fn ban(name: &str, minutes: Option<u32>) -> Moderation {
        Moderation::Ban { name: name.into(), minutes, reason: String::new() }
    }

    #[test]
    fn operators_act_on_members_and_only_owners_name_operators() {
        let none = BTreeSet::new();
        let mut rules = RoomRules { owner: Some("ada".into()), ..RoomRules::default() };
        let ada = rules.rank("ada", &none);
        assert_eq!(ada, Rank::Owner);
        apply(&mut rules, &user("ada"), ada, &Moderation::Op { name: "Bob".into() }, &none, 0)
            .expect("the owner names an operator");
        let bob = rules.rank("bob", &none);
        assert_eq!(bob, Rank::Operator);
        apply(&mut rules, &user("bob"), bob, &ban("cy", Some(10)), &none, 0).expect("bans");
        assert!(rules.is_banned("cy", 599_999) && !rules.is_banned("cy", 600_000));
        let refused = apply(&mut rules, &user("bob"), bob, &ban("ada", None), &none, 0);
        assert_eq!(refused.expect_err("outranked").code(), crate::ErrorCode::NotOperator);
        let refused =
            apply(&mut rules, &user("bob"), bob, &Moderation::Op { name: "cy".into() }, &none, 0);
        assert!(refused.is_err(), "an operator cannot name operators");
        let cy = rules.rank("cy", &none);
        let refused =
            apply(&mut rules, &user("cy"), cy, &Moderation::Topic("mine".into()), &none, 0);
        assert_eq!(refused, Err(Refusal::NotOperator));
        assert_eq!(rules.revision, 2);
        assert_eq!(rules.last.as_ref().map(|e| e.by.as_str()), Some("bob"));
    }

    #[test]
    fn times_read_as_dates() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(when(1_796_083_200_000), "2026-12-01 00:00 UTC");
    }

    #[test]
    fn joins_are_checked_against_bans_and_invitations() {
        let ops: BTreeSet<String> = ["root".to_owned()].into();
        let mut rules = RoomRules { owner: Some("ada".into()), ..RoomRules::default() };
        rules.banned.insert("cy".into(), None);
        rules.invite_only = true;
        rules.invited.insert("dee".into());
        let join = |name: &str, account| rules.check_join("r", &user(name), account, &ops, 0);
        assert!(matches!(join("cy", true), Err(Refusal::Banned { .. })));
        assert!(matches!(join("eve", true), Err(Refusal::InviteOnly(_))));
        assert_eq!(join("dee", false), Ok(()));
        assert_eq!(join("ada", true), Ok(()));
        assert_eq!(join("root", true), Ok(()), "node operators go anywhere");
        assert!(join("ada", false).is_err(), "a guest under the owner's name is a member");
    }
}
