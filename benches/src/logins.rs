//! `chat-bench logins`: what a password guesser costs the node.
//!
//! A release `chat-node` with one registered account. A guesser connects again and again
//! (each a full QUIC handshake and a hello with a wrong password), one at a time, for
//! `--tries` tries per phase, and the node's CPU is read from /proc around each phase:
//! - with the limit and the bar out of the way: every try is a password check, an Argon2id
//!   hash;
//! - at the default limit, with the bar on refused hellos off (`--rate-limited-bar-secs 0`):
//!   after 5 tries each is refused by the limiter before any hash;
//! - at the defaults: after 20 refused hellos the address is barred, and a try costs the node
//!   one refused packet.
//!
//! The owner's login from another address is timed in each phase, after the guessing.

use std::net::IpAddr;
use std::time::Instant;

use chat_client::{Client, ClientError, ConnectOptions};

use crate::process;

const PASSWORD: &str = "the owner's own password";

pub async fn run(tries: usize, only: Option<usize>) -> anyhow::Result<()> {
    println!("logins: {tries} wrong passwords in a row from one address, one connection each");
    let phases: [(&str, &[&str]); 3] = [
        (
            "no limit (every try hashed)",
            &["--max-login-failures", "1000000", "--rate-limited-bar-secs", "0"],
        ),
        ("the limiter, no bar", &["--rate-limited-bar-secs", "0"]),
        ("the defaults (limiter, then the bar)", &[]),
    ];
    for (i, (label, flags)) in phases.into_iter().enumerate() {
        if only.is_some_and(|only| only != i + 1) {
            continue;
        }
        let dir = tempfile::tempdir()?;
        let server = process::node(dir.path(), &["general".into()], flags, &[])?;
        let options = |name: &str| process::node_options(&server.addr, dir.path(), name.into());
        process::wait_until_up(&options("probe")).await?;
        Client::connect(options("ada").registering(PASSWORD)).await?.close().await;

        let cpu_before = server.cpu_seconds()?;
        let started = Instant::now();
        let (mut failed, mut held_back, mut refused) = (0, 0, 0);
        for i in 0..tries {
            match Client::connect(options("ada").with_password(&format!("guess {i}"))).await {
                Err(ClientError::LoginFailed(_)) => failed += 1,
                Err(ClientError::TooManyLogins { .. }) => held_back += 1,
                Err(_) => refused += 1,
                Ok(_) => anyhow::bail!("a wrong password logged in"),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = server.cpu_seconds()? - cpu_before;

        let owner_from: IpAddr = "127.0.0.2".parse()?;
        let owner = ConnectOptions { local_ip: Some(owner_from), ..options("ada") };
        let login = Instant::now();
        let owner = Client::connect(owner.with_password(PASSWORD)).await;
        let owner = match owner {
            Ok(_) => format!(
                "the owner got in from elsewhere in {:.0} ms",
                login.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => format!("the owner was refused: {e}"),
        };
        println!(
            "{label}: {:.0} µs of node CPU per try ({failed} wrong password, {held_back} held \
             back, {refused} refused before the hello; {:.0} tries/s); {owner}",
            cpu * 1e6 / tries as f64,
            tries as f64 / seconds,
        );
    }
    Ok(())
}
