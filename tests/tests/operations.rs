//! What an operator sees and survives: the `/metrics` endpoint, a data directory that fills
//! up and frees again, one that is read-only, a restart that tells the last run's clients at
//! once, and a port served by several threads.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chat_client::{ClientError, ErrorCode};
use chat_proto::{ClientFrame, NodeFrame};
use chat_tests::{
    PATIENCE, TestNode, encoded, hello, next_frame, next_message, program, take_messages,
};

/// One HTTP GET of the metrics listener: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let stream = TcpStream::connect(addr).expect("metrics listener");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    chat_tests::http_get(stream, path)
}

/// The value of the sample `name` (with its labels) in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_what_happens() {
    let node = TestNode::start(|config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let addr = node.metrics_addr.expect("metrics are served");
    let ada = node.connect("ada").await;
    let bob = node.connect("bob").await;
    let mut adas = ada.join("general", None).await.expect("joins");
    let mut bobs = bob.join("general", None).await.expect("joins");
    for i in 0..3 {
        adas.sender().send(format!("hello {i}")).await.expect("acked");
    }
    for room in [&mut adas, &mut bobs] {
        for _ in 0..3 {
            next_message(room).await;
        }
    }
    assert!(matches!(ada.join("nowhere", None).await, Err(ClientError::UnknownRoom(_))));

    let (status, text) =
        tokio::task::spawn_blocking(move || get(addr, "/metrics")).await.expect("scrape");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&text, "chat_connections"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "chat_room_members"), Some(2.0));
    assert_eq!(sample(&text, "chat_rooms"), Some(2.0));
    assert_eq!(sample(&text, "chat_messages_total"), Some(3.0));
    assert_eq!(sample(&text, "chat_deliveries_total"), Some(6.0));
    assert_eq!(sample(&text, "chat_history_append_seconds_count"), Some(3.0));
    assert_eq!(sample(&text, r#"chat_errors_total{kind="unknown_room"}"#), Some(1.0));
    assert_eq!(sample(&text, "chat_members_dropped_too_slow_total"), Some(0.0));

    let (status, _) =
        tokio::task::spawn_blocking(move || get(addr, "/")).await.expect("other path");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    node.stop().await;
}

/// A small tmpfs mounted on a temporary directory, unmounted on drop. Mounting needs root
/// (CI runs as root); elsewhere the tests that need one say so and pass.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str, read_only: bool) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = format!("size={size}");
        if read_only {
            options.push_str(",ro");
        }
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `dir` with one file, and returns that file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0xa5; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    // What a full page cache may still hold in small pieces.
    while file.write_all(&block[..512]).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_clearly_and_the_node_carries_on_once_space_is_back() {
    let Some(disk) = SmallDisk::mount("64m", false) else { return };
    let data_dir = disk.path().join("data");
    let node = TestNode::start_in(&data_dir, |_| {}).await;
    let ada = node.connect("ada").await;
    let room = ada.join("general", None).await.expect("joins");
    let sender = room.sender();
    let first = sender.send("before the disk filled").await.expect("acked");

    let filler = fill(disk.path());
    // The journal may take a few more writes into space it holds; then sends fail, clearly.
    let mut refused = None;
    for i in 0..1000 {
        match sender.send(format!("while full {i}")).await {
            Ok(_) => continue,
            Err(ClientError::Refused(e)) => {
                refused = Some(e);
                break;
            }
            Err(other) => panic!("expected a refusal, got {other}"),
        }
    }
    let refused = refused.expect("a send on a full disk is refused");
    assert_eq!(refused.code, ErrorCode::HistoryUnavailable);
    assert!(refused.message.contains("space"), "{}", refused.message);

    // Space is back: within a few seconds sends are acknowledged again, numbered on.
    std::fs::remove_file(&filler).expect("freed");
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        match sender.send("after the disk was freed").await {
            Ok(seq) => break seq,
            Err(ClientError::Refused(e)) if e.code == ErrorCode::HistoryUnavailable => {
                assert!(Instant::now() < deadline, "the history never came back: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(other) => panic!("expected an ack, got {other}"),
        }
    };
    assert!(after > first);
    node.stop().await;

    // Everything acknowledged is there after a restart, in order, each number once.
    let node = TestNode::start_in(&data_dir, |_| {}).await;
    let reader = node.connect("reader").await;
    let mut room = reader.join("general", Some(0)).await.expect("joins");
    let mut seqs = Vec::new();
    let mut bodies = Vec::new();
    while seqs.len() < room.history_until() as usize {
        let (message, _) = next_message(&mut room).await;
        seqs.push(message.seq);
        bodies.push(message.body);
    }
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert_eq!(bodies.first().map(String::as_str), Some("before the disk filled"));
    assert_eq!(bodies.last().map(String::as_str), Some("after the disk was freed"));
    assert_eq!(*seqs.last().expect("some"), after);
    node.stop().await;
}

#[test]
fn a_read_only_data_directory_stops_the_node_with_a_clear_error() {
    let Some(disk) = SmallDisk::mount("1m", true) else { return };
    let output = Command::new(program("chat-node"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(disk.path().join("data"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(stderr.contains(&disk.path().join("data").display().to_string()), "{stderr}");
}

#[tokio::test]
async fn a_node_that_validates_every_address_still_lets_clients_in() {
    // Above 0 handshakes in progress, that is always: every first Initial gets a Retry, and
    // the client (quinn) comes back with the token that proves its address.
    let node = TestNode::start(|config| {
        config.retry_above_handshakes = 0;
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let addr = node.metrics_addr.expect("metrics are served");
    let ada = node.connect("ada").await;
    let mut room = ada.join("general", None).await.expect("joins");
    room.sender().send("validated").await.expect("acked");
    assert_eq!(next_message(&mut room).await.0.body, "validated");
    let bob = node.connect("bob").await;
    let (_, text) =
        tokio::task::spawn_blocking(move || get(addr, "/metrics")).await.expect("scrape");
    let retried = sample(&text, r#"chat_connections_refused_total{kind="address_validation"}"#);
    assert_eq!(retried, Some(2.0), "one Retry per connection: {text}");
    drop((room, ada, bob));
}

/// A node killed and started again on its data dir recognises the connection ids of its last
/// run (`reset.key`, `node/src/cids.rs`) and resets their connections at once (a QUIC
/// stateless reset), so a client learns that its connection is gone within a round trip,
/// not after its idle timeout of a minute.
#[tokio::test]
async fn a_restarted_node_resets_the_connections_of_its_last_run_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = chat_tests::NodeProcess::start(dir.path(), &[]);
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into().expect("idle timeout")));
    let addr = node.addr.clone();
    let connected = chat_tests::raw_connection_to(
        node.ca.as_ref(),
        addr.parse().expect("address"),
        chat_proto::codes::ALPN,
        transport,
    );
    let (connection, _endpoint) = connected.await.expect("handshake");

    node.signal("KILL");
    drop(node);
    let _restarted = chat_tests::NodeProcess::start_on(dir.path(), &addr, &[]);
    let started = Instant::now();
    // Anything the client sends now reaches the new process, which knows the id as its own.
    let (mut send, _recv) = connection.open_bi().await.expect("a stream");
    let _ = send.write_all(b"anyone there?").await;
    let closed = tokio::time::timeout(PATIENCE, connection.closed()).await;
    let reason = closed.expect("the connection ended long before its idle timeout");
    assert!(matches!(reason, quinn::ConnectionError::Reset), "{reason:?}");
    println!("the client learned of the restart {:?} after it", started.elapsed());
}

/// A node whose port four threads serve, each with its own endpoint (`node/src/lanes.rs`):
/// connections are spread over them, and a client whose address changes (as behind a NAT
/// that rebinds) still reaches its own: the kernel would hash the new address to another
/// thread's socket three times in four, whose endpoint knows nothing of the connection and
/// resets it, were datagrams not steered by the connection id.
#[tokio::test]
async fn connections_spread_over_the_quic_threads_and_keep_theirs_when_their_address_changes() {
    const THREADS: usize = 4;
    let node = TestNode::start(|config| {
        config.quic_threads = THREADS;
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let addr = node.metrics_addr.expect("metrics are served");
    let mut clients = Vec::new();
    for i in 0..16 {
        clients.push(hello(&node, &format!("user{i}")).await);
    }
    let (_, text) =
        tokio::task::spawn_blocking(move || get(addr, "/metrics")).await.expect("scrape");
    let open: Vec<f64> = (0..THREADS)
        .map(|n| sample(&text, &format!(r#"chat_endpoint_connections{{endpoint="{n}"}}"#)))
        .map(|open| open.unwrap_or(0.0))
        .collect();
    assert_eq!(open.iter().sum::<f64>(), 16.0, "{text}");
    // All 16 on one thread: one chance in 4^15.
    assert!(open.iter().filter(|&&n| n > 0.0).count() > 1, "all on one thread: {open:?}");

    for round in 0..3 {
        for (i, client) in clients.iter_mut().enumerate() {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a new address");
            client.endpoint.rebind(socket).expect("rebinds");
            let (send, reader) = &mut client.control;
            send.write_all(&encoded(&ClientFrame::ListRooms)).await.expect("asks");
            let answer = next_frame(reader).await;
            assert!(
                matches!(answer, Some(NodeFrame::Rooms { .. })),
                "user{i}, move {round}: {answer:?}, connection {:?}",
                client.connection.close_reason()
            );
        }
    }
    node.stop().await;
}

/// `count` clients named `prefix0`, `prefix1`, ..., each joined to general, each on its own
/// connection (so on whichever QUIC thread its first Initial picks).
async fn in_general(
    node: &TestNode,
    prefix: &str,
    count: usize,
) -> (Vec<chat_client::Client>, Vec<chat_client::Room>) {
    let (mut clients, mut rooms) = (Vec::new(), Vec::new());
    for i in 0..count {
        let client = node.connect(&format!("{prefix}{i}")).await;
        rooms.push(client.join("general", None).await.expect("joins"));
        clients.push(client);
    }
    (clients, rooms)
}

/// A room whose members are spread over four QUIC threads: each message's fan-out wakes the
/// writers of the members on other threads through one hand-over per thread
/// (`node/src/wakes.rs`), and every member gets every message, once and in order.
#[tokio::test]
async fn a_room_spread_over_the_quic_threads_gets_every_message_in_order() {
    let node = TestNode::start(|config| config.quic_threads = 4).await;
    let (_clients, mut rooms) = in_general(&node, "member", 12).await;
    let sender = rooms[0].sender();
    let mut acked = Vec::new();
    for i in 0..30 {
        // One at a time: each message finds every writer idle, to be woken.
        let body = format!("message {i}");
        acked.push((sender.send(body.clone()).await.expect("acked"), body));
    }
    for (member, room) in rooms.iter_mut().enumerate() {
        let seen: Vec<(u64, String)> =
            take_messages(room, 30).await.into_iter().map(|(seq, _, body)| (seq, body)).collect();
        assert_eq!(seen, acked, "member{member}");
    }
    node.stop().await;
}

/// The threads share an IPv6 port as well, steering included.
#[tokio::test]
async fn the_quic_threads_share_an_ipv6_port() {
    let node = TestNode::start(|config| {
        config.listen = "[::1]:0".parse().expect("addr");
        config.quic_threads = 4;
    })
    .await;
    assert!(node.addr.is_ipv6(), "{}", node.addr);
    let (_clients, mut rooms) = in_general(&node, "v6user", 8).await;
    let seq = rooms[0].sender().send("over IPv6").await.expect("acked");
    for room in &mut rooms {
        let (message, _) = next_message(room).await;
        assert_eq!((message.seq, message.body.as_str()), (seq, "over IPv6"));
    }
    node.stop().await;
}
