//! User and room names.
//!
//! Both are ASCII so that they read the same in every terminal and can be used as they are in
//! file names and message-bus subjects. Both compare case-insensitively: `Ada` and `ada` are
//! one user (who keeps the spelling they signed in with), and room names are stored in lower
//! case.

use std::fmt;

/// Longest user name, in characters.
pub const MAX_USER_NAME_LEN: usize = 32;
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
    /// # Errors
    /// A name that is empty, too long or has a character outside the allowed set.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check("room name", name, MAX_ROOM_NAME_LEN)?;
        Ok(Self(name.to_ascii_lowercase()))
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
}
