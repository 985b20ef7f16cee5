//! User and room names.
//!
//! Both are ASCII so that they read the same in every terminal and can be used as they are in
//! file names and message-bus subjects. Both compare case-insensitively: `Ada` and `ada` are
//! one user (who keeps the spelling they signed in with), and room names are stored in lower
//! case.
//!
//! A direct conversation is a room of two users named `@` and their names in lower case, in
//! order, joined by `+` (`@ada+bob`): `@` and `+` are in no room or user name, so it cannot
//! clash with a room. A user addresses it as `@` and the other's name (`@bob`).

use std::fmt;

/// Longest user name, in characters.
pub const MAX_USER_NAME_LEN: usize = 32;
/// What a direct conversation's name starts with, and no room's does.
pub const DIRECT_PREFIX: &str = "@";

/// Longest room name, in characters.
pub const MAX_ROOM_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("{what} {name:?} is longer than {max} characters")]
    TooLong { what: &'static str, name: String, max: usize },
    #[error(
        "{what} {name:?} has a character outside letters, digits, '-', '_' and '.', \
         or does not start with a letter or digit"
    )]
    BadCharacter { what: &'static str, name: String },
    #[error("{0:?} is not a direct conversation: write @ and the other user's name, as in @ada")]
    BadDirect(String),
    #[error("a direct conversation is with someone else, not yourself")]
    DirectToSelf,
}

/// A valid user name, in the spelling its holder chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserName(String);

/// A valid room name, in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

impl UserName {
    /// # Errors
    /// A name that is empty, too long or has a character outside the allowed set.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check("user name", name, MAX_USER_NAME_LEN)?;
        Ok(Self(name.to_owned()))
    }

    /// The form under which names are compared.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl RoomName {
    /// A room's name, or a direct conversation's full name (`@ada+bob`, in either order).
    ///
    /// # Errors
    /// A name that is empty, too long or has a character outside the allowed set.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if let Some(pair) = name.strip_prefix('@') {
            let bad = || NameError::BadDirect(name.to_owned());
            let (a, b) = pair.split_once('+').ok_or_else(bad)?;
            let a = UserName::parse(a).map_err(|_| bad())?;
            let b = UserName::parse(b).map_err(|_| bad())?;
            return Self::direct(&a, &b);
        }
        check("room name", name, MAX_ROOM_NAME_LEN)?;
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The room `asker` means by `name`: a direct conversation for `@` and another user's
    /// name, else as [`parse`](Self::parse).
    ///
    /// # Errors
    /// As for `parse`, and a conversation with oneself.
    pub fn resolve(name: &str, asker: &UserName) -> Result<Self, NameError> {
        match name.strip_prefix('@') {
            Some(other) if !other.contains('+') => {
                let other =
                    UserName::parse(other).map_err(|_| NameError::BadDirect(name.to_owned()))?;
                Self::direct(asker, &other)
            }
            _ => Self::parse(name),
        }
    }

    /// The direct conversation of `a` and `b`.
    ///
    /// # Errors
    /// [`NameError::DirectToSelf`] when they are one user.
    pub fn direct(a: &UserName, b: &UserName) -> Result<Self, NameError> {
        let (mut a, mut b) = (a.key(), b.key());
        if a == b {
            return Err(NameError::DirectToSelf);
        }
        if b < a {
            std::mem::swap(&mut a, &mut b);
        }
        Ok(Self(format!("@{a}+{b}")))
    }

    /// The two users (their names in lower case) of a direct conversation; `None` for a room.
    pub fn direct_pair(&self) -> Option<(&str, &str)> {
        self.0.strip_prefix('@')?.split_once('+')
    }

    /// Whether `user` may be in this room: anyone in a room, the two in a conversation.
    pub fn admits(&self, user: &UserName) -> bool {
        let key = user.key();
        self.direct_pair().is_none_or(|(a, b)| a == key || b == key)
    }

    /// Whether `user`'s listing of the rooms shows this one, whose newest message is
    /// `last_seq`: every room, and the user's own conversations once they hold a message.
    pub fn listed_for(&self, user: &UserName, last_seq: u64) -> bool {
        self.direct_pair().is_none() || (self.admits(user) && last_seq > 0)
    }

    /// How `me` calls this room: a conversation as `@` and the other user, a room as is.
    pub fn shown_to(&self, me: &str) -> String {
        match self.direct_pair() {
            Some((a, b)) => format!("@{}", if a.eq_ignore_ascii_case(me) { b } else { a }),
            None => self.0.clone(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(what: &'static str, name: &str, max: usize) -> Result<(), NameError> {
    let first_ok = name.chars().next().ok_or(NameError::Empty)?.is_ascii_alphanumeric();
    if name.len() > max {
        return Err(NameError::TooLong { what, name: name.to_owned(), max });
    }
    let rest_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !first_ok || !rest_ok {
        return Err(NameError::BadCharacter { what, name: name.to_owned() });
    }
    Ok(())
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rooms are looked up by the name the history spells them with, without parsing it again.
impl std::borrow::Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_compare_without_case_but_keep_it() {
        let ada = UserName::parse("Ada").expect("valid");
        assert_eq!(ada.as_str(), "Ada");
        assert_eq!(ada.key(), UserName::parse("aDA").expect("valid").key());
    }

    #[test]
    fn room_names_are_lower_case() {
        assert_eq!(RoomName::parse("General").expect("valid").as_str(), "general");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", " ada", "ada lovelace", "-ada", "ad\u{e9}", "a/b", "a\0"] {
            assert!(UserName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            UserName::parse(&"a".repeat(33)),
            Err(NameError::TooLong { max: 32, .. })
        ));
        assert!(RoomName::parse(&"r".repeat(64)).is_ok());
        assert!(RoomName::parse(&"r".repeat(65)).is_err());
    }

    #[test]
    fn a_direct_conversation_has_one_name_for_both_and_admits_only_them() {
        let (ada, bob) =
            (UserName::parse("Ada").expect("valid"), UserName::parse("bob").expect("valid"));
        let room = RoomName::resolve("@Bob", &ada).expect("valid");
        assert_eq!(room.as_str(), "@ada+bob");
        assert_eq!(RoomName::resolve("@ADA", &bob), Ok(room.clone()));
        assert_eq!(RoomName::parse("@bob+ada"), Ok(room.clone()));
        assert_eq!(room.direct_pair(), Some(("ada", "bob")));
        assert!(room.admits(&ada) && room.admits(&bob));
        assert!(!room.admits(&UserName::parse("cy").expect("valid")));
        assert_eq!((room.shown_to("ADA"), room.shown_to("bob")), ("@bob".into(), "@ada".into()));
        assert_eq!(RoomName::resolve("@ada", &ada), Err(NameError::DirectToSelf));
        for bad in ["@", "@+", "@ada+", "@a b", "@ada+bob+cy", "ada+bob"] {
            assert!(RoomName::resolve(bad, &ada).is_err(), "{bad:?} was accepted");
        }
        let general = RoomName::parse("general").expect("valid");
        assert!(general.admits(&ada) && general.direct_pair().is_none());
    }
}
