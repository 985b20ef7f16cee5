//! The session token kept between runs of the interactive `chat`: one file per server and
//! name under the user's data directory, readable by the user alone. A `chat` started again
//! after a crash presents it, and so takes its name back from its own dead connection at once
//! instead of waiting for the node to time that connection out.
//!
//! One-shot commands (`chat send`, `chat rooms`) do not use it: they would take the name over
//! from the user's running `chat`.

use std::io::Write;
use std::path::{Path, PathBuf};

use chat_proto::SessionToken;

/// Where the data directory is, if not the platform's: for tests and several profiles.
pub const DATA_DIR_VARIABLE: &str = "CHAT_CLIENT_DATA_DIR";

/// The user's data directory for `chat`: `$CHAT_CLIENT_DATA_DIR`, else
/// `$XDG_DATA_HOME/chat`, else `~/.local/share/chat`; `None` with no home at all.
pub fn data_dir() -> Option<PathBuf> {
    let var = |key| std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    var(DATA_DIR_VARIABLE)
        .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("chat")))
        .or_else(|| var("HOME").map(|home| home.join(".local/share/chat")))
}

/// The token file of one server and name.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// The file for `server` and `name`: `sessions/SERVER,NAME` under [`data_dir`].
    pub fn new(server: &str, name: &str) -> Option<Self> {
        let dir = data_dir()?;
        // Names compare without case; a server's ':' (and anything odd) is kept out of paths.
        let file: String = format!("{server},{}", name.to_ascii_lowercase())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || ",.-_".contains(c) { c } else { '_' })
            .collect();
        Some(Self { path: dir.join("sessions").join(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The token kept, if there is a readable one.
    pub fn load(&self) -> Option<SessionToken> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let text = text.trim();
        let mut token = [0u8; 16];
        if text.len() != 32 {
            return None;
        }
        for (byte, pair) in token.iter_mut().zip(text.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(token)
    }

    /// Forgets the token (after a logout).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Keeps `token`, replacing the file whole (written aside, then renamed), readable and
    /// writable by the user alone.
    ///
    /// # Errors
    /// The directory or the file cannot be written.
    pub fn store(&self, token: &SessionToken) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let aside = self.path.with_extension("new");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            options.mode(0o600);
            // The directory too, when this makes it; an existing one is left as it is.
            let _ = std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir);
        }
        let mut file = options.open(&aside)?;
        writeln!(file, "{hex}")?;
        file.sync_all()?;
        std::fs::rename(&aside, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_kept_for_its_user_alone_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = TokenFile { path: dir.path().join("sessions/localhost_7700,ada") };
        assert_eq!(file.load(), None);
        let token: SessionToken = std::array::from_fn(|i| i as u8 * 17);
        file.store(&token).expect("stored");
        assert_eq!(file.load(), Some(token));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file.path()).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(file.path(), "not a token").expect("written");
        assert_eq!(file.load(), None, "a damaged file is ignored");
    }
}
