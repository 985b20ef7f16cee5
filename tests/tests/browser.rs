//! The browser page, in a real browser: headless Chromium (Debian's package) driven by
//! Playwright (`web/test/e2e.mjs`), against the built `chat-node` with `--web-listen`,
//! beside a native user of the client library. And the page's build and codec: `web/dist`
//! is what `web/src` builds, and the codec reads and writes chat-proto's frames.
//!
//! What is missing is installed the way CI needs it: Chromium with apt-get, the page's
//! npm packages with `npm ci` (Node.js and npm are on the machine).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chat_client::Client;
use chat_tests::{NodeProcess, PATIENCE, ensure_program, spawn_line_reader, wait_child};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web")
}

/// `npm ci` in `web/` once, when its packages are not there yet.
fn ensure_npm_packages() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if web_dir().join("node_modules/playwright-core").exists()
            && web_dir().join("node_modules/esbuild").exists()
        {
            return;
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(web_dir())
            .status()
            .expect("npm runs (Node.js and npm are needed for the page's tests)");
        assert!(status.success(), "npm ci in web/ failed");
    });
}

fn node_script(args: &[&str]) -> std::process::Output {
    Command::new("node").args(args).current_dir(web_dir()).output().expect("node runs")
}

#[test]
fn the_embedded_page_is_what_its_sources_build_and_its_codec_speaks_chat_proto() {
    ensure_npm_packages();
    let built = node_script(&["build.mjs", "--check"]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let typed = node_script(&["node_modules/typescript/bin/tsc", "--noEmit"]);
    assert!(typed.status.success(), "tsc: {}", String::from_utf8_lossy(&typed.stdout));
    let tested = node_script(&["build.mjs", "--test"]);
    let out = String::from_utf8_lossy(&tested.stdout);
    assert!(tested.status.success(), "the codec's tests failed:\n{out}");
    // Every vector was tried (100 today), and none failed.
    let passed: usize = out
        .lines()
        .find_map(|line| line.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a pass count");
    assert!(passed >= 90, "only {passed} codec tests ran:\n{out}");
    assert!(out.contains("# fail 0"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_user_and_a_native_user_talk_and_the_page_misses_nothing_across_a_restart() {
    ensure_program("chromium", "--version", "chromium");
    ensure_npm_packages();
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = chat_harness::free_addr().expect("a free port");
    let web = chat_harness::free_udp_and_tcp_addr().expect("a free port");
    let flags = [
        "--web-listen",
        web.as_str(),
        "--max-message-len",
        "300",
        "--room",
        "general,random",
        "--max-history-page",
        "20",
    ];
    let mut node = NodeProcess::start_on(dir.path(), &addr, &flags);
    let port = web.rsplit(':').next().expect("port");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-screenshots");
    let mut script = Command::new("node")
        .arg("test/e2e.mjs")
        .current_dir(web_dir())
        .env("CHAT_PAGE", format!("http://localhost:{port}/"))
        .env("CHAT_SCREENSHOTS", &shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the browser script starts");
    let steps = spawn_line_reader(script.stdout.take().expect("stdout"));
    let mut answer = script.stdin.take().expect("stdin");
    let next_step = |wanted: &str| loop {
        let line = steps
            .recv_timeout(PATIENCE * 3)
            .unwrap_or_else(|_| panic!("the browser script did not reach {wanted}"));
        eprintln!("browser: {line}");
        assert!(
            !line.starts_with("FAIL"),
            "the browser test failed: {line} (screenshots in {})",
            shots.display()
        );
        if line == format!("STEP {wanted}") {
            return;
        }
    };
    let go = |answer: &mut std::process::ChildStdin| {
        answer.write_all(b"GO\n").and_then(|()| answer.flush()).expect("the script reads");
    };

    // ada in the browser wrote first; bob on the native client reads her and answers.
    next_step("sent");
    let bob = Client::connect(node.options("bob")).await.expect("bob connects");
    let mut general = bob.join("general", None).await.expect("bob joins");
    let (said, history) = chat_tests::next_message(&mut general).await;
    assert_eq!(
        (said.sender.as_str(), said.body.as_str(), history),
        ("ada", "hello from the browser", true)
    );
    general.sender().send("hello from native").await.expect("stored");
    go(&mut answer);

    // ada's burst and cyd's history were checked in the browser; bob sees the burst too.
    next_step("burst");
    let mut burst = Vec::new();
    while burst.len() < 30 {
        let (m, _) = chat_tests::next_message(&mut general).await;
        if m.body.starts_with("burst ") {
            burst.push(m.body);
        }
    }
    let expected: Vec<String> = (0..30).map(|i| format!("burst {i}")).collect();
    assert_eq!(burst, expected, "the burst, in the order typed");
    let random = bob.join("random", None).await.expect("bob joins random");
    random.sender().send("over in random").await.expect("stored");
    go(&mut answer);

    // The node restarts; what is said while the pages are away reaches them after.
    next_step("restart");
    drop((general, random, bob));
    node.signal("TERM");
    assert_eq!(wait_child(&mut node.child).code(), Some(0));
    let node = NodeProcess::start_on(dir.path(), &addr, &flags);
    let dan = Client::connect(node.options("dan")).await.expect("dan connects");
    let general = dan.join("general", None).await.expect("dan joins");
    for i in 1..=50 {
        general.sender().send(format!("while you were away {i}")).await.expect("stored");
    }
    go(&mut answer);

    next_step("done");
    go(&mut answer);
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = script.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the browser script did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "the browser script failed (screenshots in {})", shots.display());
}

/// `GET path` over TLS from `addr`, trusting `ca`: the status line and the body.
fn https_get(addr: &str, ca: &Path, path: &str) -> (String, String) {
    let trust = chat_certs::Trust::CaFile(ca.to_path_buf());
    let config = chat_certs::client_config(&trust, b"http/1.1").expect("client config");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("tls");
    let tcp = std::net::TcpStream::connect(addr).expect("the page's port");
    chat_tests::http_get(rustls::StreamOwned::new(tls, tcp), path)
}

#[test]
fn off_loopback_the_page_is_served_over_https_with_the_nodes_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = chat_harness::free_udp_and_tcp_addr().expect("a free port");
    let port = free.rsplit(':').next().expect("port");
    let everywhere = format!("0.0.0.0:{port}");
    let node = NodeProcess::start(dir.path(), &["--web-listen", &everywhere]);
    let ca = Path::new(&node.ca);
    let (status, page) = https_get(&format!("127.0.0.1:{port}"), ca, "/");
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    assert!(page.contains("<script type=\"module\" src=\"/app.js\">"), "{page}");
    // On every address, the page connects to the host it was loaded from.
    let (_, info) = https_get(&format!("127.0.0.1:{port}"), ca, "/session.json");
    assert!(
        info.contains(&format!("{{\"host\":null,\"port\":{port},\"path\":\"/chat\",\"hashes\":[[")),
        "{info}"
    );
    // Plain HTTP gets nothing there.
    let mut plain = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("connects");
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("request");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP was answered off loopback");
}

/// A WebTransport client that accepts the certificates the node's page names.
fn web_client(web: std::net::SocketAddr) -> web_transport_quinn::Client {
    let page = std::net::TcpStream::connect(web).expect("the page's port");
    let (_, info) = chat_tests::http_get(page, "/session.json");
    let info: serde_json::Value = serde_json::from_str(&info).expect("session info");
    let hashes: Vec<Vec<u8>> = info["hashes"]
        .as_array()
        .expect("hashes")
        .iter()
        .map(|hash| {
            hash.as_array()
                .expect("bytes")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8)
                .collect()
        })
        .collect();
    assert_eq!(hashes.len(), 2, "the served certificate's hash and the next one's");
    web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(hashes)
        .expect("a client")
}

fn url(web: std::net::SocketAddr, path: &str) -> url::Url {
    url::Url::parse(&format!("https://127.0.0.1:{}{path}", web.port())).expect("url")
}

/// The same protocol as a native connection, over WebTransport without a browser: the
/// hello, a join, a send that a native member gets; a session at another path is refused,
/// and one that says nothing is closed with the hello timeout's code, as natives are.
#[tokio::test(flavor = "multi_thread")]
async fn a_webtransport_session_speaks_the_native_frames_and_keeps_the_native_limits() {
    use chat_proto::io::FrameReader;
    use chat_proto::{ClientFrame, NodeFrame, codec, codes};
    let web: std::net::SocketAddr =
        chat_harness::free_udp_and_tcp_addr().expect("a free port").parse().expect("addr");
    let node = chat_tests::TestNode::start(|config| {
        config.web_listen = Some(web);
        config.handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let client = web_client(web);
    let native = Client::connect(node.options("bob")).await.expect("bob connects");
    let mut bobs_room = native.join("general", None).await.expect("bob joins");

    let session = client.connect(url(web, "/chat")).await.expect("a session");
    let (mut control, control_in) = session.open_bi().await.expect("a control stream");
    let hello = ClientFrame::Hello { name: "ada".into(), resume: None, login: None };
    control.write_all(&chat_tests::encoded(&hello)).await.expect("hello sent");
    let mut control_in = FrameReader::new(control_in, codec::MAX_NODE_FRAME_LEN);
    match control_in.read::<NodeFrame>().await.expect("an answer").expect("a frame, not the end") {
        NodeFrame::Welcome(welcome) => assert_eq!(welcome.name, "ada"),
        other => panic!("expected a welcome, got {other:?}"),
    }
    let (mut room, room_in) = session.open_bi().await.expect("a room stream");
    let join = ClientFrame::Join { room: "general".into(), after: None, limit: 10 };
    room.write_all(&chat_tests::encoded(&join)).await.expect("join sent");
    let mut room_in = FrameReader::new(room_in, codec::MAX_NODE_FRAME_LEN);
    assert!(matches!(
        room_in.read::<NodeFrame>().await.expect("joined").expect("a frame, not the end"),
        NodeFrame::Joined { .. }
    ));
    let too_long = ClientFrame::Send { client_id: 1, body: "x".repeat(5000) };
    room.write_all(&chat_tests::encoded(&too_long)).await.expect("sent");
    let send = ClientFrame::Send { client_id: 2, body: "over webtransport".into() };
    room.write_all(&chat_tests::encoded(&send)).await.expect("sent");
    let (mut refused, mut acked) = (false, false);
    while !(refused && acked) {
        match room_in.read::<NodeFrame>().await.expect("a frame").expect("a frame, not the end") {
            NodeFrame::Error(e) if e.client_id == Some(1) => {
                assert_eq!(e.code, chat_proto::ErrorCode::MessageTooLong, "{e:?}");
                refused = true;
            }
            NodeFrame::Ack { client_id: 2, .. } => acked = true,
            NodeFrame::Message(_) | NodeFrame::HistoryEnd(_) | NodeFrame::Arrived { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (said, _) = chat_tests::next_message(&mut bobs_room).await;
    assert_eq!((said.sender.as_str(), said.body.as_str()), ("ada", "over webtransport"));

    // Another path: no session.
    assert!(client.connect(url(web, "/elsewhere")).await.is_err(), "only /chat is served");

    // A session that says nothing is closed once the hello is late, with its code.
    let silent = client.connect(url(web, "/chat")).await.expect("a session");
    let closed = tokio::time::timeout(PATIENCE, silent.closed()).await.expect("closed in time");
    match closed {
        web_transport_quinn::SessionError::WebTransportError(
            web_transport_quinn::WebTransportError::Closed(code, _),
        ) => assert_eq!(code, codes::close::HELLO_TIMEOUT),
        other => panic!("expected the hello timeout's close, got {other:?}"),
    }
    node.stop().await;
}
