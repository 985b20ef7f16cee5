//! Presence: which user names are online, on which connection.
//!
//! A name belongs to one connection at a time. A second hello with the same name is refused,
//! unless it carries the session token of the connection that holds the name: then the
//! user is taking its name back from its own stale connection (one the network lost before
//! the idle timeout noticed), and that connection is to be closed.

use std::collections::HashMap;

use crate::{ConnId, SessionToken, UserName};

#[derive(Debug, Default)]
pub struct Presence {
    claims: HashMap<String, Claim>,
}

#[derive(Debug)]
struct Claim {
    conn: ConnId,
    token: SessionToken,
}

/// The outcome of a successful claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The name was free.
    Fresh,
    /// The name was held by this earlier connection of the same user, which must be closed.
    TookOver(ConnId),
}

/// The name is held by another connection, and no matching token was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken;

impl Presence {
    /// Gives `name` to `conn` under `token`, unless someone else holds it. The `owner` of
    /// the name (logged in to its account) takes it from whoever holds it.
    ///
    /// # Errors
    /// [`Taken`] when another connection holds the name, `resume` is not its token and this
    /// is not the name's owner.
    pub fn claim(
        &mut self,
        name: &UserName,
        conn: ConnId,
        resume: Option<SessionToken>,
        token: SessionToken,
        owner: bool,
    ) -> Result<Claimed, Taken> {
        let new = Claim { conn, token };
        match self.claims.get_mut(&name.key()) {
            None => {
                self.claims.insert(name.key(), new);
                Ok(Claimed::Fresh)
            }
            Some(held) if (owner || resume == Some(held.token)) && held.conn != conn => {
                let old = std::mem::replace(held, new);
                Ok(Claimed::TookOver(old.conn))
            }
            Some(_) => Err(Taken),
        }
    }

    /// Frees `name` if `conn` still holds it (it may have been taken over).
    pub fn release(&mut self, name: &UserName, conn: ConnId) {
        if self.claims.get(&name.key()).is_some_and(|held| held.conn == conn) {
            self.claims.remove(&name.key());
        }
    }

    /// The connection holding the name whose key (lower case) is `key`.
    pub fn holder(&self, key: &str) -> Option<ConnId> {
        self.claims.get(key).map(|claim| claim.conn)
    }

    pub fn is_online(&self, name: &UserName) -> bool {
        self.claims.contains_key(&name.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UserName {
        UserName::parse(s).expect("valid")
    }

    #[test]
    fn a_name_has_one_holder() {
        let mut p = Presence::default();
        assert_eq!(p.claim(&name("ada"), ConnId(1), None, [1; 16], false), Ok(Claimed::Fresh));
        assert_eq!(p.claim(&name("ADA"), ConnId(2), None, [2; 16], false), Err(Taken));
        assert_eq!(p.claim(&name("ada"), ConnId(2), Some([9; 16]), [2; 16], false), Err(Taken));
    }

    #[test]
    fn the_token_takes_a_name_back_once() {
        let mut p = Presence::default();
        p.claim(&name("ada"), ConnId(1), None, [1; 16], false).expect("free");
        assert_eq!(
            p.claim(&name("ada"), ConnId(2), Some([1; 16]), [2; 16], false),
            Ok(Claimed::TookOver(ConnId(1)))
        );
        // The old token is spent; the stale connection's late release frees nothing.
        assert_eq!(p.claim(&name("ada"), ConnId(3), Some([1; 16]), [3; 16], false), Err(Taken));
        p.release(&name("ada"), ConnId(1));
        assert!(p.is_online(&name("ada")));
        p.release(&name("ada"), ConnId(2));
        assert!(!p.is_online(&name("ada")));
    }

    #[test]
    fn the_owner_takes_its_name_from_anyone() {
        let mut p = Presence::default();
        p.claim(&name("ada"), ConnId(1), None, [1; 16], false).expect("free");
        assert_eq!(
            p.claim(&name("ada"), ConnId(2), None, [2; 16], true),
            Ok(Claimed::TookOver(ConnId(1)))
        );
    }
}
