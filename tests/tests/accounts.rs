//! Accounts over real connections and a real store: a registered name needs its password
//! (or a session of the account), online or not; registration is first come, once; the
//! store keeps no clear password; failed logins are held back before any hash while the
//! owner still gets in; a session ends with a logout or a password change; and the `chat`
//! program registers, keeps its session, and takes its name back at once after a SIGKILL.

use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;

use chat_client::{Client, ClientError, ConnectOptions};
use chat_tests::{NodeProcess, TestNode, joined_chat, wait_child, wait_for};

const PASSWORD: &str = "correct horse battery";

fn login_required(result: Result<Client, ClientError>) -> String {
    match result {
        Err(ClientError::LoginRequired(text)) => text,
        Err(other) => panic!("expected login required, got {other:?}"),
        Ok(client) => panic!("{} got in without the password", client.name()),
    }
}

fn login_failed(result: Result<Client, ClientError>) -> String {
    match result {
        Err(ClientError::LoginFailed(text)) => text,
        Err(other) => panic!("expected a failed login, got {other:?}"),
        Ok(client) => panic!("{} got in with a wrong password", client.name()),
    }
}

#[tokio::test]
async fn a_registered_name_needs_its_password_online_or_not_and_sessions_end() {
    let node = TestNode::start(|_| {}).await;
    let ada = Client::connect(node.options("ada").registering(PASSWORD)).await.expect("registers");
    assert!(ada.is_account());

    // Online: another connection without the password is refused, and told to log in; with
    // a wrong one it is refused as such; a password for a name nobody registered, too.
    let text = login_required(Client::connect(node.options("ADA")).await);
    assert!(text.contains("log in"), "{text}");
    let text = login_failed(Client::connect(node.options("ada").with_password("guess1234")).await);
    assert!(text.contains("wrong password"), "{text}");
    let text = login_failed(Client::connect(node.options("nobody").with_password(PASSWORD)).await);
    assert!(text.contains("no account"), "{text}");
    let again = Client::connect(node.options("ada").registering("another password")).await;
    match again {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, chat_client::ErrorCode::NameRegistered),
        other => panic!("registered twice: {:?}", other.map(|c| c.name().to_owned())),
    }

    // The owner logging in elsewhere takes the name over; the old session is told.
    let token = ada.token();
    let ada2 = Client::connect(node.options("ada").with_password(PASSWORD)).await.expect("in");
    assert!(matches!(ada.closed().await, ClientError::Replaced));
    // The first session's token still logs in (it was not logged out) ...
    let resumed = Client::connect(resuming(node.options("ada"), token)).await;
    let resumed = resumed.expect("a session of the account logs in without the password");
    assert!(resumed.is_account());
    // ... until it is logged out; then it is a stranger's token.
    let kept = resumed.token();
    resumed.logout().await.expect("logged out");
    let text = login_required(Client::connect(resuming(node.options("ada"), kept)).await);
    assert!(text.contains("registered account"), "{text}");
    drop(ada2);

    // Offline: a guest cannot take the name; the password still logs in.
    login_required(Client::connect(node.options("ada")).await);
    let ada = Client::connect(node.options("ada").with_password(PASSWORD)).await.expect("in");

    // A new password ends every other session, and the old password stops working.
    let phone = Client::connect(node.options("ada").with_password(PASSWORD)).await.expect("in");
    let phone_token = phone.token();
    assert!(matches!(ada.closed().await, ClientError::Replaced));
    let laptop = Client::connect(resuming(node.options("ada"), ada.token())).await.expect("in");
    assert_eq!(laptop.change_password(PASSWORD, "a much better one").await.expect("changed"), 2);
    login_failed(Client::connect(node.options("ada").with_password(PASSWORD)).await);
    login_required(Client::connect(resuming(node.options("ada"), phone_token)).await);
    let weak = laptop.change_password("a much better one", "short").await;
    assert!(weak.is_err(), "a password under 8 characters is refused");
    drop(laptop);
    Client::connect(node.options("ada").with_password("a much better one")).await.expect("in");

    // Guests still work as before.
    let bob = node.connect("bob").await;
    assert!(!bob.is_account());
}

#[tokio::test]
async fn fifty_connections_register_one_name_at_once_and_exactly_one_wins() {
    let node = TestNode::start(|config| config.max_login_failures = 100).await;
    let attempts = (0..50).map(|i| {
        let options = node.options("carol").registering(&format!("password number {i}"));
        tokio::spawn(Client::connect(options))
    });
    let mut won = Vec::new();
    for attempt in attempts {
        if let Ok(client) = attempt.await.expect("attempt ran") {
            won.push(client);
        }
    }
    assert_eq!(won.len(), 1, "exactly one registration of the name succeeds");
    assert!(won[0].is_account());
}

#[tokio::test]
async fn the_store_keeps_no_clear_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let password = "unmistakable-clear-text-7391";
    let ada = Client::connect(node.options("ada").registering(password)).await.expect("registers");
    ada.close().await;
    node.stop().await;
    let mut files = vec![dir.path().join("accounts")];
    let mut read = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).expect("dir").map(|e| e.expect("entry").path()));
            continue;
        }
        let bytes = std::fs::read(&path).expect("file");
        read += bytes.len();
        let found = bytes.windows(password.len()).any(|w| w == password.as_bytes());
        assert!(!found, "{} holds the password in clear", path.display());
    }
    assert!(read > 0, "the accounts store has files");
    // And the account is there after the restart, behind its password.
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    login_required(Client::connect(node.options("ada")).await);
    Client::connect(node.options("ada").with_password(password)).await.expect("in");
}

#[tokio::test]
async fn failed_logins_are_held_back_and_the_owner_still_gets_in_from_elsewhere() {
    let node = TestNode::start(|config| config.max_login_failures = 3).await;
    Client::connect(node.options("ada").registering(PASSWORD))
        .await
        .expect("registers")
        .close()
        .await;
    for i in 0..3 {
        login_failed(
            Client::connect(node.options("ada").with_password(&format!("guess {i}"))).await,
        );
    }
    // The next try is held back before its hash, with when to try again; the right password
    // from this address too.
    for password in ["guess 3", PASSWORD] {
        match Client::connect(node.options("ada").with_password(password)).await {
            Err(ClientError::TooManyLogins { message, retry_after }) => {
                assert!(message.contains("try again in"), "{message}");
                let wait = retry_after.expect("a typed wait");
                assert!(wait.as_secs() >= 1, "{wait:?}");
            }
            other => {
                panic!("expected too many logins, got {:?}", other.map(|c| c.name().to_owned()))
            }
        }
    }
    // The owner, from another address, is not held back.
    let elsewhere: IpAddr = "127.0.0.2".parse().expect("ip");
    let owner = node.options("ada").with_password(PASSWORD);
    let owner = ConnectOptions { local_ip: Some(elsewhere), ..owner };
    Client::connect(owner).await.expect("the owner logs in from another address");
}

/// Options that present `token`, a session kept from an earlier connection.
fn resuming(options: ConnectOptions, token: [u8; 16]) -> ConnectOptions {
    ConnectOptions { resume: Some(token), ..options }
}

#[test]
fn chat_registers_keeps_its_session_and_takes_its_name_back_after_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    // `chat register` with the password on standard input (no terminal).
    let mut register = node
        .chat("ada", &["register"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    writeln!(register.stdin.take().expect("stdin"), "{PASSWORD}").expect("typed");
    let registered = register.wait_with_output().expect("exits");
    assert!(registered.status.success(), "{}", String::from_utf8_lossy(&registered.stdout));
    assert!(String::from_utf8_lossy(&registered.stdout).contains("registered ada"));

    // Somebody else, with no session and no password, is refused with its exit code.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let refused = node
        .chat("ada", &["--room", "general", "send", "hi"])
        .env("CHAT_CLIENT_DATA_DIR", elsewhere.path())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert_eq!(refused.status.code(), Some(11));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("registered account"));
    // With the password it gets in.
    let sent = node
        .chat("ada", &["--room", "general", "send", "from a script"])
        .env("CHAT_CLIENT_DATA_DIR", elsewhere.path())
        .env("CHAT_PASSWORD", PASSWORD)
        .output()
        .expect("runs");
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stdout));

    // The interactive chat logs in with the session register kept; killed, and started
    // again, it takes the name back at once (its dead connection is not waited for).
    let (mut chat, _events) = joined_chat(&node, "ada");
    // (As a guest it would be refused as taken until the node timed the dead one out.)
    chat.kill().expect("SIGKILL");
    wait_child(&mut chat);
    let (mut again, events) = joined_chat(&node, "ada");
    // `/logout` ends the session: the next run has no session to log in with.
    writeln!(again.stdin.as_mut().expect("stdin"), "/logout").expect("typed");
    wait_for(&events, "the logout", |e| {
        e["event"] == "info" && e["message"].as_str().is_some_and(|m| m.contains("logged out"))
    });
    assert!(wait_child(&mut again).success());
    let after =
        node.chat("ada", &["--room", "general"]).stdin(Stdio::null()).output().expect("runs");
    assert_eq!(after.status.code(), Some(11), "{}", String::from_utf8_lossy(&after.stdout));
}

#[tokio::test]
async fn read_markers_follow_the_account_across_connections_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let ada = Client::connect(node.options("ada").registering(PASSWORD)).await.expect("registers");
    let bob = node.connect("bob").await;
    let general = bob.join("general", None).await.expect("joins").sender();
    for i in 0..5 {
        general.send(format!("message {i}")).await.expect("stored");
    }
    let unread = |rooms: Vec<chat_client::RoomInfo>, name: &str| {
        rooms.into_iter().find(|r| r.name == name).expect("listed").unread
    };
    assert_eq!(unread(ada.rooms().await.expect("rooms"), "general"), None, "never read");
    assert_eq!(ada.mark_read("general", 3).await.expect("marked"), 3);
    assert_eq!(ada.mark_read("general", 1).await.expect("marked"), 3, "a marker never moves back");
    assert_eq!(unread(ada.rooms().await.expect("rooms"), "general"), Some(2));
    // A guest has no markers.
    assert_eq!(unread(bob.rooms().await.expect("rooms"), "general"), None);
    assert!(bob.mark_read("general", 5).await.is_err());
    // Another connection of the account (another device) sees the same; so does the account
    // after a restart of the node.
    drop(ada);
    let phone = Client::connect(node.options("ada").with_password(PASSWORD)).await.expect("in");
    assert_eq!(unread(phone.rooms().await.expect("rooms"), "general"), Some(2));
    drop((phone, general, bob));
    node.stop().await;
    let node = TestNode::start_in(dir.path(), |_| {}).await;
    let ada = Client::connect(node.options("ada").with_password(PASSWORD)).await.expect("in");
    assert_eq!(unread(ada.rooms().await.expect("rooms"), "general"), Some(2));
    ada.mark_read("general", 5).await.expect("marked");
    assert_eq!(unread(ada.rooms().await.expect("rooms"), "general"), Some(0));
}

#[test]
fn the_operator_sets_a_password_with_chat_node_and_the_node_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set_password = |password: &str| {
        std::process::Command::new(chat_tests::program("chat-node"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["set-password", "root"])
            .env("CHAT_PASSWORD", password)
            .output()
            .expect("runs")
    };
    let made = set_password(PASSWORD);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(String::from_utf8_lossy(&made.stdout).contains("root: registered"));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let node = NodeProcess::start(dir.path(), &["--operator", "root"]);
    runtime.block_on(async {
        let root = Client::connect(node.options("root").with_password(PASSWORD)).await;
        let root = root.expect("the operator logs in");
        let guest = Client::connect(node.options("gus")).await.expect("a guest");
        let mut room = guest.join("general", None).await.expect("joins");
        let kick = chat_client::Moderation::Kick { name: "gus".into(), reason: String::new() };
        root.moderate("general", kick).await.expect("the node's operator kicks in a config room");
        while !matches!(room.next().await, Some(chat_client::RoomEvent::Error(_)) | None) {}
    });
    // While the node runs, its data directory is its own.
    let busy = set_password("another password");
    assert_eq!(busy.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("already running"));
    drop(node);

    let reset = set_password("a forgotten one reset");
    assert!(reset.status.success(), "{}", String::from_utf8_lossy(&reset.stderr));
    assert!(String::from_utf8_lossy(&reset.stdout).contains("a new password; 1 session(s) ended"));
    let node = NodeProcess::start(dir.path(), &[]);
    runtime.block_on(async {
        login_failed(Client::connect(node.options("root").with_password(PASSWORD)).await);
        Client::connect(node.options("root").with_password("a forgotten one reset"))
            .await
            .expect("in");
    });
}
