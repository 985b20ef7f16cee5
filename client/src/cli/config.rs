//! The `chat` program's settings: a TOML file, `CHAT_*` variables and flags, in rising order
//! of precedence.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chat_client::{ConnectOptions, Trust};
use serde::Deserialize;

/// The node's port when the config names a host without one.
const DEFAULT_PORT: u16 = 7700;
/// The CA a node started in this directory with the defaults makes.
const DEFAULT_CA: &str = "chat-data/certs/ca.pem";

/// The keys of a client config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port`; or give `host` and `port` apart.
    pub server: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(alias = "user")]
    pub name: Option<String>,
    pub room: Option<String>,
    pub rooms: Option<Vec<String>>,
    pub ca: Option<PathBuf>,
    pub fingerprint: Option<String>,
    /// Ring the terminal's bell when a message names you (the full-screen view; default true).
    pub bell: Option<bool>,
}

/// Settings from the command line (flags and environment), before the file is laid under.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// TOML config file (keys: server or host and port, name, room or rooms, ca, fingerprint,
    /// bell)
    #[arg(long, global = true, env = "CHAT_CLIENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node, as HOST:PORT; the nodes of a cluster separated by commas, tried in turn
    /// [default: localhost:7700]
    #[arg(long, global = true, env = "CHAT_SERVER")]
    pub server: Option<String>,
    /// Your user name (letters, digits, '-', '_', '.'; compared without case)
    #[arg(long, global = true, env = "CHAT_NAME")]
    pub name: Option<String>,
    /// A room to join (repeatable; the first is where typed lines go)
    #[arg(long = "room", global = true)]
    pub rooms: Vec<String>,
    /// The CA certificate to trust (the node logs its path at start)
    /// [default: chat-data/certs/ca.pem if it exists]
    #[arg(long, global = true, env = "CHAT_CA")]
    pub ca: Option<PathBuf>,
    /// Trust exactly the node certificate with this SHA-256 fingerprint instead of a CA
    #[arg(long, global = true, env = "CHAT_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Print one JSON object per line for every event
    #[arg(long, global = true)]
    pub json: bool,
    /// On a terminal, print a line per event above a prompt instead of the full screen
    #[arg(long, global = true)]
    pub plain: bool,
    /// No terminal bell when a message names you
    #[arg(long, global = true)]
    pub no_bell: bool,
    /// A file whose first line is your account's password (else CHAT_PASSWORD, else it is
    /// asked for on the terminal when the name is registered)
    #[arg(long, global = true, env = "CHAT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Your account's password, from the environment only (a flag would show it to `ps`)
    #[arg(skip = std::env::var("CHAT_PASSWORD").ok())]
    pub password: Option<String>,
}

/// Everything the program needs, resolved.
#[derive(Debug)]
pub struct Settings {
    pub server: String,
    pub name: Option<String>,
    pub rooms: Vec<String>,
    pub trust: Trust,
    /// The account's password, when given (`CHAT_PASSWORD` or `--password-file`).
    pub password: Option<String>,
    /// Ring the bell on a mention (`--no-bell` or `bell = false` turn it off).
    pub bell: bool,
}

impl Settings {
    pub fn resolve(flags: &Flags) -> anyhow::Result<Self> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let server = match (&flags.server, &file.server, &file.host) {
            (Some(server), _, _) | (None, Some(server), _) => server.clone(),
            (None, None, Some(host)) => format!("{host}:{}", file.port.unwrap_or(DEFAULT_PORT)),
            (None, None, None) => format!("localhost:{}", file.port.unwrap_or(DEFAULT_PORT)),
        };
        let rooms = if flags.rooms.is_empty() {
            file.rooms.clone().or_else(|| file.room.clone().map(|r| vec![r])).unwrap_or_default()
        } else {
            flags.rooms.clone()
        };
        let fingerprint = flags.fingerprint.as_ref().or(file.fingerprint.as_ref());
        let ca = flags.ca.as_ref().or(file.ca.as_ref());
        let trust = match (fingerprint, ca) {
            (Some(fingerprint), _) => {
                Trust::Fingerprint(chat_certs::parse_fingerprint(fingerprint)?)
            }
            (None, Some(ca)) => Trust::CaFile(ca.clone()),
            (None, None) if Path::new(DEFAULT_CA).exists() => Trust::CaFile(DEFAULT_CA.into()),
            (None, None) => bail!(NoTrust),
        };
        let password =
            super::password::given(flags.password.as_deref(), flags.password_file.as_deref())?;
        let bell = !flags.no_bell && file.bell.unwrap_or(true);
        Ok(Self { server, name: flags.name.clone().or(file.name), rooms, trust, password, bell })
    }

    /// Connect options for `name`, which a hello needs.
    pub fn options(&self) -> anyhow::Result<ConnectOptions> {
        let Some(name) = &self.name else {
            bail!("no user name: pass --name NAME (or set `name` in the config file)");
        };
        let options = ConnectOptions::new(self.server.clone(), name.clone(), self.trust.clone());
        Ok(match &self.password {
            Some(password) => options.with_password(password),
            None => options,
        })
    }

    /// The room a one-shot command works on.
    pub fn room(&self) -> anyhow::Result<&str> {
        match self.rooms.first() {
            Some(room) => Ok(room),
            None => bail!("no room: pass --room NAME (or set `room` in the config file)"),
        }
    }
}

/// No CA or fingerprint was given and the default CA file is absent.
#[derive(Debug, thiserror::Error)]
#[error(
    "no certificate to trust: pass --ca FILE with the CA the node printed at start \
     (DATA_DIR/certs/ca.pem), or --fingerprint with its certificate's SHA-256"
)]
pub struct NoTrust;

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_flags_win() {
        let file: FileConfig =
            toml::from_str(include_str!("../../../examples/client.toml")).expect("example parses");
        assert_eq!(file.server.as_deref(), Some("localhost:7700"));
        let dir = std::env::temp_dir().join(format!("chat-client-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("client.toml");
        std::fs::write(
            &path,
            "host = \"example.org\"\nport = 9000\nuser = \"ada\"\nroom = \"a\"\nca = \"ca.pem\"",
        )
        .expect("written");
        let flags = Flags { config: Some(path), rooms: vec!["b".into()], ..Flags::default() };
        let settings = Settings::resolve(&flags).expect("resolves");
        assert_eq!(settings.server, "example.org:9000");
        assert_eq!(settings.name.as_deref(), Some("ada"));
        assert_eq!(settings.rooms, ["b"]);
        assert_eq!(settings.trust, Trust::CaFile("ca.pem".into()));
    }
}
