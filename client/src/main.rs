//! `chat`: the command-line chat client.
//!
//! With no subcommand it joins the rooms given, prints each one's history and then live
//! messages, and sends every line typed to the current room (line editing on a terminal,
//! plain lines from a pipe). The subcommands do one thing and exit: `send`, `history`,
//! `rooms`, `who`. Each kind of failure has its own exit code (see the README).

mod cli {
    pub mod config;
    pub mod output;
    pub mod password;
    pub mod session;
    pub mod terminal;
    pub mod tokens;
    pub mod tui;
}

use std::io::IsTerminal;

use chat_client::{Anchor, Client, ClientError, ConnectOptions};
use clap::{Parser, Subcommand};
use cli::config::{Flags, NoTrust, Settings};
use cli::output::Output;
use cli::session::Session;
use cli::terminal::Terminal;
use cli::tokens::TokenFile;
use cli::tui::{Options as TuiOptions, Tui};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "chat", version, about = "Chat through a chat node over QUIC")]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Send to the --room and exit once the node has stored it (--lines: one message a line)
    ///
    /// The words given are one message. With none, all of standard input is one message (its
    /// new lines kept). With --lines, each line of standard input is a message of its own,
    /// sent in order.
    Send {
        /// The message; when absent it is read from standard input
        message: Vec<String>,
        /// Send each line of standard input as its own message, in order (empty lines are
        /// skipped); exits once every one is acknowledged
        #[arg(long, conflicts_with = "message")]
        lines: bool,
    },
    /// Print a page of the --room's history and exit: the newest messages, or those
    /// before or after a sequence number
    History {
        /// The messages after this sequence number
        #[arg(long, conflicts_with = "before")]
        after: Option<u64>,
        /// The messages before this sequence number
        #[arg(long)]
        before: Option<u64>,
        /// At most this many (the node caps it at its page size)
        #[arg(long, default_value_t = chat_client::JOIN_PAGE)]
        limit: u32,
        /// Every retained message (after --after, if given), page after page
        #[arg(long, conflicts_with_all = ["before", "limit"])]
        all: bool,
    },
    /// List the node's rooms
    Rooms,
    /// Make a room (where the node lets its users), and exit
    Create {
        /// The room's name (letters, digits, '-', '_', '.')
        room: String,
    },
    /// List who is in the --room
    Who,
    /// Register your --name with a password, so that nobody else can use it; then log in
    ///
    /// The password comes from CHAT_PASSWORD or --password-file, else it is asked for twice
    /// on the terminal, else it is the first line of standard input. This machine keeps the
    /// session, so the interactive `chat` logs in without asking.
    Register,
    /// Change your account's password; every other session of the account ends
    ///
    /// The current password comes from CHAT_PASSWORD or --password-file, else it is asked
    /// for; the new one is asked for twice, else read from standard input's first line.
    Passwd,
    /// End the session this machine keeps for your --name: it no longer logs in
    Logout,
}

/// Exit code for a bad configuration or command line (clap uses 2 for its own).
const EXIT_USAGE: u8 = 2;

fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(chat());
    // Not waiting for the runtime: a read of standard input in flight (a pipe left open after
    // /quit or /logout) cannot be cancelled, and would hold the exit until its next line.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code.into());
}

async fn chat() -> u8 {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let out = Output::stdout(cli.flags.json);
    match run(cli, out.clone()).await {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(error) => {
                out.error(None, error);
                error.exit_code() as u8
            }
            None => {
                eprintln!("chat: {e:#}");
                if e.is::<NoTrust>() { 4 } else { EXIT_USAGE }
            }
        },
    }
}

async fn run(cli: Cli, out: Output) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.flags)?;
    let mut options = settings.options()?;
    // The interactive chat takes its name back from its own crashed run, and logs in to its
    // account with the session kept (see `tokens`); so does `logout`, to end that session.
    let keeps_session = matches!(cli.command, None | Some(Command::Logout));
    let tokens = keeps_session.then(|| TokenFile::new(&options.server, &options.name));
    let tokens = tokens.flatten();
    options.resume = tokens.as_ref().and_then(TokenFile::load);
    match cli.command {
        Some(Command::Register) => return register(options, &out).await,
        Some(Command::Passwd) => return change_password(options, &settings, &out).await,
        Some(Command::Logout) => {
            let client = connect(options).await?;
            client.logout().await?;
            if let Some(tokens) = &tokens {
                tokens.remove();
            }
            out.info("logged out: this session no longer logs in");
            return Ok(());
        }
        _ => {}
    }
    let client = connect(options).await?;
    let result = match cli.command {
        None => return interactive(&settings, &cli.flags, client, out, tokens).await,
        Some(command) => one_shot(command, &settings, &client, &out).await,
    };
    // A one-shot's login is not kept: its session ends with it, so that scripts do not
    // pile sessions up on the account (pushing out the ones people's clients keep).
    if client.is_account() {
        let _ = client.logout().await;
    }
    // Say goodbye even after an error, so that the node frees the name at once.
    client.close().await;
    result
}

/// Connects; a registered name with no password given has it asked for on the terminal.
async fn connect(options: ConnectOptions) -> anyhow::Result<Client> {
    match Client::connect(options.clone()).await {
        Err(ClientError::LoginRequired(message))
            if options.login.is_none() && cli::password::can_ask() =>
        {
            eprintln!("{message}");
            let password = cli::password::ask(&format!("password for {}", options.name))?;
            Ok(Client::connect(options.with_password(&password)).await?)
        }
        connected => Ok(connected?),
    }
}

/// `chat register`: registers the name and keeps the session for the interactive `chat`.
async fn register(options: ConnectOptions, out: &Output) -> anyhow::Result<()> {
    let password = match &options.login {
        Some(chat_proto::Login::Password(given)) => given.0.clone(),
        _ => cli::password::new_password(&format!("a password for {}", options.name))?,
    };
    let client = Client::connect(options.registering(&password)).await?;
    if let Some(tokens) = TokenFile::new(client.server(), client.name())
        && let Err(e) = tokens.store(&client.token())
    {
        tracing::warn!(path = %tokens.path().display(), error = %e, "cannot keep the session token");
    }
    out.info(&format!(
        "registered {}: the name needs its password now (this machine keeps the session)",
        client.name()
    ));
    client.close().await;
    Ok(())
}

/// `chat passwd`: logs in with the current password and sets a new one.
async fn change_password(
    options: ConnectOptions,
    settings: &Settings,
    out: &Output,
) -> anyhow::Result<()> {
    let old = match &settings.password {
        Some(old) => old.clone(),
        None => cli::password::ask(&format!("current password for {}", options.name))?,
    };
    let client = Client::connect(options.with_password(&old)).await?;
    let new = cli::password::new_password("new password")?;
    let ended = client.change_password(&old, &new).await;
    client.close().await;
    out.info(&format!("password changed; {} other session(s) ended", ended?));
    Ok(())
}

async fn one_shot(
    command: Command,
    settings: &Settings,
    client: &Client,
    out: &Output,
) -> anyhow::Result<()> {
    match command {
        Command::Rooms => out.rooms(&client.rooms().await?),
        Command::Create { room } => {
            let existed = client.create_room(&room).await?;
            out.created(&room.to_ascii_lowercase(), existed);
        }
        Command::Who => {
            let room = settings.room()?;
            out.who(room, &client.who(room).await?);
        }
        Command::Register | Command::Passwd | Command::Logout => {
            unreachable!("handled before connecting")
        }
        Command::Send { lines: true, .. } => {
            send_lines(settings.room()?, client, out).await?;
        }
        Command::Send { message, .. } => {
            let room = settings.room()?;
            let body = if message.is_empty() {
                std::io::read_to_string(std::io::stdin())?.trim_end_matches('\n').to_owned()
            } else {
                message.join(" ")
            };
            // After the newest possible number: no history, just the send.
            let joined = client.join(room, Some(u64::MAX)).await?;
            let seq = joined.sender().send(body).await?;
            out.ack(joined.name(), seq);
        }
        Command::History { after, before, limit, all } => {
            let room = settings.room()?;
            // After the newest possible number: no history, just the stream for the requests.
            let joined = client.join(room, Some(u64::MAX)).await?;
            let sender = joined.sender();
            let mut anchor = match (after, before) {
                (Some(after), _) => Anchor::After(after),
                (None, Some(before)) => Anchor::Before(before),
                (None, None) if all => Anchor::After(0),
                (None, None) => Anchor::Latest,
            };
            loop {
                let page = sender.history(anchor, if all { u32::MAX } else { limit }).await?;
                for message in &page.messages {
                    out.message(message, true);
                }
                match page.messages.last() {
                    Some(newest) if all && page.ends.more_after => {
                        anchor = Anchor::After(newest.seq)
                    }
                    _ => {
                        out.history_end(joined.name(), page.ends);
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// `chat send --lines`: every line of standard input to `room`, in order, pipelined; an
/// ack printed for each, and every line that failed printed with its text.
async fn send_lines(room: &str, client: &Client, out: &Output) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut joined = client.join(room, Some(u64::MAX)).await?;
    let sender = joined.sender();
    // The room's own messages are not wanted here, but must be read for the acks to come.
    let drain = tokio::spawn(async move { while joined.next().await.is_some() {} });
    let mut acks = JoinSet::new();
    let mut failed = None;
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = input.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        match sender.post(line.clone()).await {
            Ok(posted) => {
                acks.spawn(async move { (line, posted.acked().await) });
            }
            Err(e) => {
                out.not_sent(room, None, &line, &e, false);
                failed.get_or_insert(e);
            }
        }
        while let Some(Ok(done)) = acks.try_join_next() {
            report(room, done, out, &mut failed);
        }
    }
    while let Some(Ok(done)) = acks.join_next().await {
        report(room, done, out, &mut failed);
    }
    drain.abort();
    failed.map_or(Ok(()), |e| Err(e.into()))
}

fn report(
    room: &str,
    (line, acked): (String, Result<chat_client::Seq, ClientError>),
    out: &Output,
    failed: &mut Option<ClientError>,
) {
    match acked {
        Ok(seq) => out.ack(room, seq),
        Err(e) => {
            out.not_sent(room, None, &line, &e, e.outcome_unknown());
            failed.get_or_insert(e);
        }
    }
}

/// What the interactive chat shows on: the full screen, a terminal's lines, or a pipe.
#[expect(dead_code, reason = "held for what dropping it gives back: the terminal")]
enum Display {
    Full(Tui),
    Lines(Terminal),
    Piped,
}

async fn interactive(
    settings: &Settings,
    flags: &Flags,
    client: Client,
    out: Output,
    tokens: Option<TokenFile>,
) -> anyhow::Result<()> {
    // On a terminal, the screen is drawn by `Tui` or `Terminal` from here on (until dropped).
    let on_terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let (display, input) = if on_terminal && !flags.plain && !flags.json {
        let options = TuiOptions {
            me: client.name().to_owned(),
            server: client.server().to_owned(),
            bell: settings.bell,
            history: cli::tokens::data_dir()
                .map(|dir| dir.join("input").join(client.name().to_ascii_lowercase())),
        };
        let (tui, screen, typed) = Tui::start(options)?;
        out.redirect(screen);
        (Display::Full(tui), typed)
    } else if on_terminal {
        let (terminal, printer, typed) = Terminal::start()?;
        out.redirect_lines(printer);
        (Display::Lines(terminal), typed)
    } else {
        (Display::Piped, piped_input())
    };
    out.info(&format!(
        "connected to {} as {}; /help lists the commands",
        client.server(),
        client.name()
    ));
    let mut session = Session::new(client, out.clone(), tokens);
    for room in &settings.rooms {
        if let Err(e) = session.join(room, None, false).await {
            session.close().await;
            drop(display);
            return Err(e.into());
        }
    }
    session.list_conversations().await;
    let result = session.run(input).await;
    if !matches!(display, Display::Piped) {
        drop(display);
        // What is said from here on (the error that ended the session) goes to the terminal
        // given back.
        out.redirect_lines(Box::new(cli::output::Stdout));
    }
    Ok(result?)
}

/// Lines from a pipe; the channel closes at the end of input. The channel is small: a pipe
/// faster than the node waits instead of filling memory.
fn piped_input() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    rx
}
