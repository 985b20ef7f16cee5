//! Accounts: a registered name's password hash and its sessions, and the single node's store
//! of them on fjall.
//!
//! A password is kept only as an Argon2id hash in PHC form (its salt and parameters inside),
//! made at the RustCrypto crate's defaults, which are OWASP's (19 MiB, two passes, one lane),
//! and checked in constant time. A session is a token the node handed out in a welcome; the
//! account keeps only its SHA-256, so that the store's files log nobody in.
//!
//! Hashing and checking take tens of milliseconds of one core and 19 MiB on purpose: call
//! them from a blocking thread, a few at a time, and only after the node's login limiter let
//! the attempt through.
//!
//! Architecture invariant: knows nothing of the protocol, the network or the room core.

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

/// A session token as the node hands it out.
pub type Token = [u8; 16];

/// Sessions an account keeps (its devices and clients); a new one beyond them ends the
/// oldest.
pub const MAX_SESSIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error(
        "another process holds them: a node is already running on this data directory; stop \
         it, or give this node its own --data-dir"
    )]
    InUse,
    #[error("the accounts store failed: {0}")]
    Store(#[from] fjall::Error),
    #[error("an account record is damaged: {0}")]
    Damaged(#[from] postcard::Error),
    #[error("the password could not be hashed: {0}")]
    Hash(String),
    #[error("no randomness for a salt")]
    Random,
}

/// One registered name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The password's Argon2id hash, in PHC string form.
    password: String,
    /// The account's sessions, oldest first.
    sessions: Vec<Session>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// SHA-256 of the token.
    token: [u8; 32],
}

impl Account {
    /// An account with the password whose hash is `password_hash` and one session, `token`.
    pub fn new(password_hash: String, token: Token) -> Self {
        Self { password: password_hash, sessions: vec![Session { token: token_hash(&token) }] }
    }

    /// Whether `password` is the account's (in constant time). A hash that cannot be read
    /// matches nothing.
    pub fn password_is(&self, password: &str) -> bool {
        PasswordHash::new(&self.password)
            .is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
    }

    /// Whether `token` is one of the account's sessions. The comparison is of hashes, so
    /// its timing tells a guesser nothing of a token.
    pub fn holds(&self, token: &Token) -> bool {
        let hash = token_hash(token);
        self.sessions.iter().any(|s| s.token == hash)
    }

    /// A login made `token` a session: it replaces `resumed` (the session it logged in
    /// with, if any), or joins the others, ending the oldest beyond [`MAX_SESSIONS`].
    pub fn start_session(&mut self, token: Token, resumed: Option<&Token>) {
        if let Some(old) = resumed {
            self.end_session(old);
        }
        self.sessions.push(Session { token: token_hash(&token) });
        let extra = self.sessions.len().saturating_sub(MAX_SESSIONS);
        self.sessions.drain(..extra);
    }

    /// `token` no longer logs in.
    pub fn end_session(&mut self, token: &Token) {
        let hash = token_hash(token);
        self.sessions.retain(|s| s.token != hash);
    }

    /// A new password: every session but `kept` ends. Returns how many ended.
    pub fn set_password(&mut self, password_hash: String, kept: &Token) -> usize {
        self.password = password_hash;
        let before = self.sessions.len();
        let hash = token_hash(kept);
        self.sessions.retain(|s| s.token == hash);
        before - self.sessions.len()
    }

    /// The record's bytes, as the stores keep it.
    ///
    /// # Errors
    /// Never in practice: the record is plain data.
    pub fn encode(&self) -> Result<Vec<u8>, AccountsError> {
        Ok(postcard::to_stdvec(self)?)
    }

    /// A record from its bytes.
    ///
    /// # Errors
    /// The bytes are not a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, AccountsError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// `password`'s Argon2id hash with a fresh salt, in PHC string form. Slow on purpose.
///
/// # Errors
/// No randomness, or the hasher failed.
pub fn hash_password(password: &str) -> Result<String, AccountsError> {
    let salt: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| AccountsError::Random)?
        .expose();
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountsError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

fn token_hash(token: &Token) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The single node's accounts: one fjall database (beside the history's), a record per
/// account under its name's key (the lower-case name).
pub struct LocalAccounts {
    db: fjall::Database,
    accounts: fjall::Keyspace,
    /// Rooms' rules (owner, operators, bans), as the node encodes them, by room name.
    rooms: fjall::Keyspace,
    /// Read markers: `account \0 room` to the last sequence number read (big-endian).
    markers: fjall::Keyspace,
    /// Makes a create's look-then-insert, and an update's read-change-write, one step.
    writing: Mutex<()>,
}

impl LocalAccounts {
    /// Opens (or makes) the store in `path`.
    ///
    /// # Errors
    /// The database cannot be opened (another node holds it, or the disk fails).
    pub fn open(path: &Path) -> Result<Self, AccountsError> {
        let db = fjall::Database::builder(path).open().map_err(|e| match e {
            fjall::Error::Locked => AccountsError::InUse,
            e => AccountsError::Store(e),
        })?;
        let accounts = db.keyspace("accounts", fjall::KeyspaceCreateOptions::default)?;
        let rooms = db.keyspace("rooms", fjall::KeyspaceCreateOptions::default)?;
        let markers = db.keyspace("markers", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self { db, accounts, rooms, markers, writing: Mutex::new(()) })
    }

    /// The account of the name whose key is `key`, if it is registered.
    ///
    /// # Errors
    /// The store failed, or the record is damaged.
    pub fn get(&self, key: &str) -> Result<Option<Account>, AccountsError> {
        self.accounts.get(key)?.map(|bytes| Account::decode(&bytes)).transpose()
    }

    /// Registers `key` as `account`, durably; `false` if it is registered already.
    ///
    /// # Errors
    /// The store failed.
    pub fn create(&self, key: &str, account: &Account) -> Result<bool, AccountsError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.accounts.contains_key(key)? {
            return Ok(false);
        }
        self.write(key, account)?;
        Ok(true)
    }

    /// Changes `key`'s account with `change`, durably; `None` if it is not registered.
    ///
    /// # Errors
    /// The store failed, or the record is damaged.
    pub fn update<T>(
        &self,
        key: &str,
        change: impl FnOnce(&mut Account) -> T,
    ) -> Result<Option<T>, AccountsError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut account) = self.get(key)? else { return Ok(None) };
        let out = change(&mut account);
        self.write(key, &account)?;
        Ok(Some(out))
    }

    fn write(&self, key: &str, account: &Account) -> Result<(), AccountsError> {
        self.accounts.insert(key, account.encode()?)?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(())
    }

    /// `account`'s read markers: each room it marked and the last sequence number read.
    ///
    /// # Errors
    /// The store failed.
    pub fn markers(&self, account: &str) -> Result<Vec<(String, u64)>, AccountsError> {
        let prefix = format!("{account}\0");
        let mut markers = Vec::new();
        for entry in self.markers.prefix(prefix.as_bytes()) {
            let (key, value) = entry.into_inner()?;
            let room = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let seq = value.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            markers.push((room, seq));
        }
        Ok(markers)
    }

    /// Moves `account`'s marker in `room` to `seq`, unless it is there or further; returns
    /// where it is. Written to the operating system, not synced: a power cut may lose the
    /// newest marks, which the client makes again.
    ///
    /// # Errors
    /// The store failed.
    pub fn mark(&self, account: &str, room: &str, seq: u64) -> Result<u64, AccountsError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let key = format!("{account}\0{room}");
        let old = self.markers.get(&key)?;
        let old = old.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes);
        if seq <= old {
            return Ok(old);
        }
        self.markers.insert(&key, seq.to_be_bytes())?;
        self.db.persist(fjall::PersistMode::Buffer)?;
        Ok(seq)
    }

    /// Every room's record (the node's encoding of its rules).
    ///
    /// # Errors
    /// The store failed.
    pub fn room_records(&self) -> Result<Vec<(String, Vec<u8>)>, AccountsError> {
        let mut records = Vec::new();
        for entry in self.rooms.iter() {
            let (key, value) = entry.into_inner()?;
            records.push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
        }
        Ok(records)
    }

    /// `room`'s record, if it has one.
    ///
    /// # Errors
    /// The store failed.
    pub fn room_record(&self, room: &str) -> Result<Option<Vec<u8>>, AccountsError> {
        Ok(self.rooms.get(room)?.map(|v| v.to_vec()))
    }

    /// Changes `room`'s record with `change` (given the record, if any), durably, unless
    /// `change` fails; returns the new record.
    ///
    /// # Errors
    /// The store failed (outer), or `change` did (inner).
    pub fn update_room_record<E>(
        &self,
        room: &str,
        change: impl FnOnce(Option<&[u8]>) -> Result<Vec<u8>, E>,
    ) -> Result<Result<Vec<u8>, E>, AccountsError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.rooms.get(room)?;
        let new = match change(old.as_deref()) {
            Ok(new) => new,
            Err(e) => return Ok(Err(e)),
        };
        self.rooms.insert(room, new.as_slice())?;
        self.db.persist(fjall::PersistMode::SyncAll)?;
        Ok(Ok(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_kept_as_an_argon2id_hash_and_checked() {
        let hash = hash_password("correct horse").expect("hashed");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        let account = Account::new(hash.clone(), [1; 16]);
        assert!(account.password_is("correct horse"));
        assert!(!account.password_is("correct horsf"));
        // A fresh salt each time.
        assert_ne!(hash, hash_password("correct horse").expect("hashed"));
    }

    #[test]
    fn sessions_start_rotate_end_and_a_new_password_keeps_one() {
        let mut account = Account::new("x".into(), [1; 16]);
        account.start_session([2; 16], Some(&[1; 16]));
        assert!(!account.holds(&[1; 16]) && account.holds(&[2; 16]));
        account.start_session([3; 16], None);
        assert!(account.holds(&[2; 16]) && account.holds(&[3; 16]));
        assert_eq!(account.set_password("y".into(), &[3; 16]), 1);
        assert!(!account.holds(&[2; 16]) && account.holds(&[3; 16]));
        account.end_session(&[3; 16]);
        assert!(!account.holds(&[3; 16]));
        for n in 0..40 {
            account.start_session([n; 16], None);
        }
        assert_eq!(account.sessions.len(), MAX_SESSIONS);
        assert!(account.holds(&[39; 16]) && !account.holds(&[0; 16]));
    }

    #[test]
    fn the_store_registers_a_name_once_and_keeps_no_clear_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalAccounts::open(dir.path()).expect("opens");
        let account = Account::new(hash_password("hunter22hunter").expect("hashed"), [1; 16]);
        assert!(store.create("ada", &account).expect("created"));
        assert!(!store.create("ada", &account).expect("answered"));
        assert_eq!(store.get("ada").expect("read"), Some(account));
        let ended = store.update("ada", |a| a.set_password("z".into(), &[9; 16])).expect("updated");
        assert_eq!(ended, Some(1));
        assert_eq!(store.update("bob", |_| ()).expect("answered"), None);
    }

    #[test]
    fn markers_move_forward_only_and_are_listed_per_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalAccounts::open(dir.path()).expect("opens");
        assert_eq!(store.mark("ada", "general", 5).expect("marked"), 5);
        assert_eq!(store.mark("ada", "general", 3).expect("marked"), 5);
        store.mark("ada", "@ada+bob", 2).expect("marked");
        store.mark("adam", "general", 9).expect("marked");
        let mut markers = store.markers("ada").expect("listed");
        markers.sort();
        assert_eq!(markers, [("@ada+bob".to_owned(), 2), ("general".to_owned(), 5)]);
    }
}
