//! Cluster mode: two `chat-node` processes on a three-server NATS cluster (real
//! `nats-server` processes, each with its own store; see `chat_cluster::local`), history and
//! presence replicated three times.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_client::{Anchor, Client, ClientError, ConnectOptions, Room, RoomEvent, Trust};
use chat_cluster::local::LocalNats;
use chat_tests::{NodeProcess, PATIENCE, nats_cluster, next_message, take_messages};

/// A NATS cluster of three and two chat nodes sharing a CA.
struct Chat {
    nats: LocalNats,
    nodes: Vec<NodeProcess>,
    ca: std::path::PathBuf,
    /// The nodes' flags, for a restart.
    args: Vec<String>,
    /// The certificates', then each node's data.
    _dirs: Vec<tempfile::TempDir>,
}

impl Chat {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With `extra` flags for both nodes.
    fn start_with(extra: &[&str]) -> Self {
        Self::start_on(nats_cluster(3), extra)
    }

    fn start_on(nats: LocalNats, extra: &[&str]) -> Self {
        let certs = tempfile::tempdir().expect("tempdir");
        let files = chat_certs::ensure_node_files(certs.path(), &[]).expect("certificates");
        let mut dirs = vec![certs];
        let mut nodes = Vec::new();
        let urls = nats.urls();
        let args: Vec<String> = [
            "--nats",
            &urls,
            "--replicas",
            "3",
            "--room",
            "general",
            "--room",
            "random",
            "--messages-per-second",
            "0",
            "--cert",
            files.node_cert.to_str().expect("utf-8 path"),
            "--key",
            files.node_key.to_str().expect("utf-8 path"),
        ]
        .iter()
        .chain(extra)
        .map(|arg| (*arg).to_owned())
        .collect();
        let flags: Vec<&str> = args.iter().map(String::as_str).collect();
        for _ in 0..2 {
            let data = tempfile::tempdir().expect("tempdir");
            nodes.push(NodeProcess::start(data.path(), &flags));
            dirs.push(data);
        }
        Self { nats, nodes, ca: files.ca_cert, args, _dirs: dirs }
    }

    /// Stops node `i` as SIGTERM does and starts it again on its address and data.
    fn restart(&mut self, i: usize) {
        self.nodes[i].signal("TERM");
        chat_tests::wait_child(&mut self.nodes[i].child);
        let addr = self.nodes[i].addr.clone();
        let flags: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.nodes[i] = NodeProcess::start_on(self._dirs[i + 1].path(), &addr, &flags);
    }

    /// Options for a client of node `i`, or of every node (starting with `i`) for `all`.
    fn options(&self, name: &str, i: usize, all: bool) -> ConnectOptions {
        let first = self.nodes[i].addr.clone();
        let mut servers = vec![first.clone()];
        if all {
            servers.extend(self.nodes.iter().map(|n| n.addr.clone()).filter(|a| *a != first));
        }
        ConnectOptions::new(servers.join(","), name, Trust::CaFile(self.ca.clone()))
    }

    async fn connect(&self, name: &str, node: usize) -> Client {
        Client::connect(self.options(name, node, false)).await.expect("connects")
    }
}

/// Retries `attempt` until it returns `Some`, for state that other nodes learn of through
/// NATS a moment later.
async fn eventually<T, F: Future<Output = Option<T>>>(mut attempt: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "the cluster did not converge in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_two_nodes_see_one_room_in_one_order_with_its_history() {
    let chat = Chat::start();
    let (ada, bob) = (chat.connect("ada", 0).await, chat.connect("bob", 1).await);
    let mut ada_room = ada.join("general", None).await.expect("joins on node 0");
    let mut bob_room = bob.join("general", None).await.expect("joins on node 1");

    // Both send at once, each from its own node.
    let send = |room: &Room, who: &'static str| {
        let sender = room.sender();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                acked.push(sender.send(format!("{who} {i}")).await.expect("acked"));
            }
            acked
        })
    };
    let (ada_sends, bob_sends) = (send(&ada_room, "ada"), send(&bob_room, "bob"));
    let ada_seen = take_messages(&mut ada_room, 100).await;
    let bob_seen = take_messages(&mut bob_room, 100).await;
    assert_eq!(ada_seen, bob_seen, "both nodes deliver the same messages in the same order");
    let seqs: Vec<u64> = ada_seen.iter().map(|(seq, ..)| *seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers increase: {seqs:?}");
    let mut acked = ada_sends.await.expect("ada's sends");
    acked.extend(bob_sends.await.expect("bob's sends"));
    acked.sort_unstable();
    assert_eq!(acked, seqs, "every ack's seq is a delivered message");
    for who in ["ada", "bob"] {
        let bodies: Vec<&str> =
            ada_seen.iter().filter(|(_, s, _)| s == who).map(|(_, _, b)| b.as_str()).collect();
        let sent: Vec<String> = (0..50).map(|i| format!("{who} {i}")).collect();
        assert_eq!(bodies, sent, "each sender's messages stay in the order sent");
    }

    // History on join, from either node.
    for node in [0, 1] {
        let late = chat.connect(&format!("late{node}"), node).await;
        let mut room = late.join("general", Some(0)).await.expect("joins");
        let history = take_messages(&mut room, 100).await;
        assert_eq!(history, ada_seen, "the history on node {node}");
        // And after a given seq, only what came later.
        let mut tail = late.join("general", Some(seqs[89])).await.err();
        assert!(tail.take().is_some(), "a second stream in the same room is refused");
        // A fresh join gets the newest page, and pages back from there.
        let fresh = chat.connect(&format!("fresh{node}"), node).await;
        let mut room = fresh.join("general", None).await.expect("joins");
        assert_eq!(take_messages(&mut room, 50).await, ada_seen[50..].to_vec(), "node {node}");
        let page = room.sender().history(Anchor::Before(seqs[50]), 30).await.expect("a page");
        let older: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(older, seqs[20..50].to_vec(), "the page before, on node {node}");
        assert!(page.ends.more_before && page.ends.more_after);
    }
    let rejoin = chat.connect("carol", 1).await;
    let mut room = rejoin.join("general", Some(seqs[89])).await.expect("joins");
    assert_eq!(take_messages(&mut room, 10).await, ada_seen[90..].to_vec());

    // Who-is-online and the room list span both nodes.
    let who = eventually(|| async {
        let names = ada.who("general").await.expect("who");
        (names.contains(&"bob".to_owned()) && names.contains(&"carol".to_owned())).then_some(names)
    })
    .await;
    assert!(who.contains(&"ada".to_owned()), "{who:?}");
    let rooms = bob.rooms().await.expect("rooms");
    let general = rooms.iter().find(|r| r.name == "general").expect("general is listed");
    assert_eq!(general.last_seq, *seqs.last().expect("messages"));
    assert!(matches!(ada.who("nowhere").await, Err(ClientError::UnknownRoom(_))));
    assert!(matches!(bob.join("nowhere", None).await, Err(ClientError::UnknownRoom(_))));

    // Arrivals and departures on the other node are heard too, each once.
    let dave = chat.connect("dave", 1).await;
    dave.join("general", None).await.expect("joins").leave().await;
    let mut told = Vec::new();
    while told.last().is_none_or(|last: &String| !last.starts_with("dave left")) {
        let event = tokio::time::timeout(PATIENCE, ada_room.next()).await.expect("in time");
        match event.expect("ada's room goes on") {
            RoomEvent::Arrived { name } if name == "dave" => told.push("dave arrived".into()),
            RoomEvent::Left { name, reason } if name == "dave" => {
                told.push(format!("dave left ({})", reason.as_str()));
            }
            _ => {}
        }
    }
    assert_eq!(told, ["dave arrived", "dave left (left)"]);

    // A direct message from node 0 reaches its user on node 1 live, and the answer returns.
    let eve = chat.connect("eve", 1).await;
    let mut adas = ada.join("@eve", None).await.expect("opens on node 0");
    adas.sender().send("hello eve").await.expect("stored");
    let pushed = tokio::time::timeout(PATIENCE, eve.next_direct()).await.expect("in time");
    let pushed = pushed.expect("a direct message");
    assert_eq!((pushed.room.as_str(), pushed.body.as_str()), ("@ada+eve", "hello eve"));
    let mut eves = eve.join("@ada", None).await.expect("opens on node 1");
    assert_eq!(next_message(&mut eves).await.0.body, "hello eve", "in its history");
    eves.sender().send("hi from node 1").await.expect("stored");
    assert_eq!(next_message(&mut adas).await.0.body, "hello eve");
    assert_eq!(next_message(&mut adas).await.0.body, "hi from node 1");
    let listed = |rooms: Vec<chat_proto::RoomInfo>| rooms.iter().any(|r| r.name == "@ada+eve");
    assert!(listed(eve.rooms().await.expect("rooms")) && listed(ada.rooms().await.expect("rooms")));
    assert!(!listed(bob.rooms().await.expect("rooms")), "listed for its two users only");
    assert!(bob.join("@ada+eve", None).await.is_err(), "closed to anyone else");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_history_longer_than_a_page_is_read_whole_once_in_order_from_either_node() {
    let chat = Chat::start();
    let ada = chat.connect("ada", 0).await;
    // Two rooms share the stream's numbering: general's numbers are every other one.
    // Only the senders are kept: their own messages go unread, their acks still come.
    let general = ada.join("general", None).await.expect("joins").sender();
    let random = ada.join("random", None).await.expect("joins").sender();
    let mut acks = Vec::new();
    for i in 0..1200 {
        acks.push(general.post(format!("g{i}")).await.expect("queued"));
        acks.push(random.post(format!("r{i}")).await.expect("queued"));
    }
    let mut stored = Vec::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let seq = ack.acked().await.expect("stored");
        if i % 2 == 0 {
            stored.push(seq);
        }
    }
    // One sender's messages are stored in the order posted.
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "stored out of the order posted");
    for node in [0, 1] {
        // A resume from the start: more than two pages, caught up by the client library.
        let reader = chat.connect(&format!("reader{node}"), node).await;
        let mut room = reader.join("general", Some(0)).await.expect("joins");
        let got = take_messages(&mut room, stored.len()).await;
        let seqs: Vec<u64> = got.iter().map(|(seq, ..)| *seq).collect();
        assert_eq!(seqs, stored, "every message once, in order, on node {node}");
        let mut bodies: Vec<&str> = got.iter().map(|(_, _, body)| body.as_str()).collect();
        bodies.sort_unstable();
        let mut posted: Vec<String> = (0..1200).map(|i| format!("g{i}")).collect();
        posted.sort_unstable();
        assert_eq!(bodies, posted, "general's messages only, on node {node}");
        // Paging back from the newest to the first: no overlap, no gap.
        let sender = room.sender();
        let mut back = Vec::new();
        let mut anchor = Anchor::Latest;
        loop {
            let page = sender.history(anchor, 500).await.expect("a page");
            let first = page.messages.first().map(|m| m.seq);
            back.splice(0..0, page.messages.iter().map(|m| m.seq));
            match first {
                Some(first) if page.ends.more_before => anchor = Anchor::Before(first),
                _ => break,
            }
        }
        assert_eq!(back, stored, "paged back whole on node {node}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn names_and_the_history_cap_hold_across_nodes() {
    let chat = Chat::start_with(&["--history-cap", "5"]);
    let ada = chat.connect("ada", 0).await;
    // The cap is the stream's limit per room: the other node's history has the newest five.
    let room = ada.join("general", None).await.expect("joins");
    for i in 0..8 {
        room.sender().send(format!("m{i}")).await.expect("acked");
    }
    let bob = chat.connect("bob", 1).await;
    let mut kept = bob.join("general", None).await.expect("joins");
    let bodies: Vec<String> =
        take_messages(&mut kept, 5).await.into_iter().map(|(_, _, body)| body).collect();
    assert_eq!(bodies, ["m3", "m4", "m5", "m6", "m7"]);

    // A name online on one node is refused on the other, in any spelling.
    match Client::connect(chat.options("ADA", 1, false)).await {
        Err(ClientError::NameTaken(text)) => assert!(text.contains("ADA"), "{text}"),
        Err(e) => panic!("expected name taken, got {e}"),
        Ok(_) => panic!("a second ada was let in on the other node"),
    }
    // Once ada leaves, the name is free on every node.
    ada.close().await;
    let again =
        eventually(|| async { Client::connect(chat.options("ada", 1, false)).await.ok() }).await;
    assert_eq!(again.name(), "ada");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_s_clients_resume_on_the_other_and_miss_nothing() {
    let mut chat = Chat::start_with(&["--presence-ttl-secs", "5"]);
    // Cy is on the node that dies, and does not come back.
    let cy = chat.connect("cy", 0).await;
    let _cy_room = cy.join("general", None).await.expect("joins");
    let ada = Client::connect(chat.options("ada", 0, true)).await.expect("connects");
    assert_eq!(ada.server(), chat.nodes[0].addr);
    let bob = chat.connect("bob", 1).await;
    let mut ada_room = ada.join("general", None).await.expect("joins");
    let bob_room = bob.join("general", None).await.expect("joins");
    let bob_sender = bob_room.sender();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push((bob_sender.send(format!("before {i}")).await.expect("acked"), i));
    }
    let seen = take_messages(&mut ada_room, 20).await;
    let last_seen = seen.last().expect("messages").0;

    chat.nodes[0].child.kill().expect("kill -9 node 0");
    // The dead node's names stay taken until their TTL runs out, then come free.
    let refused = Client::connect(chat.options("cy", 1, false)).await;
    assert!(matches!(refused, Err(ClientError::NameTaken(_))), "{:?}", refused.err());
    drop(cy);
    // Bob goes on talking while ada's node is gone.
    let mut after = Vec::new();
    for i in 0..20 {
        after.push(bob_sender.send(format!("after {i}")).await.expect("acked"));
    }
    // Ada's library notices the loss, reconnects to the other node with her session token
    // (her name is still claimed by the dead node) and rejoins after the last seq she saw.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match ada_room.next().await {
                Some(RoomEvent::Message { .. }) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("ada's stream ends once the node is gone");
    assert!(!matches!(ended, Some(RoomEvent::Message { .. })));
    let ada = ada.reconnect().await.expect("ada reconnects to the other node");
    assert_eq!(ada.server(), chat.nodes[1].addr);
    let mut room = ada.join("general", Some(last_seen)).await.expect("rejoins");
    let resumed = take_messages(&mut room, 20).await;
    let seqs: Vec<u64> = resumed.iter().map(|(seq, ..)| *seq).collect();
    assert_eq!(seqs, after, "ada gets exactly what she missed, in order");
    assert!(resumed.iter().zip(0..).all(|((_, _, body), i)| *body == format!("after {i}")));
    let cy = eventually(|| async { Client::connect(chat.options("cy", 1, false)).await.ok() });
    let cy = cy.await;
    let who = eventually(|| async {
        let names = cy.who("general").await.expect("who");
        (!names.contains(&"cy".to_owned())).then_some(names)
    })
    .await;
    assert_eq!(who, ["ada", "bob"], "the dead node's memberships expired, ada's moved");
    // And the live stream goes on from there.
    let seq = bob_sender.send("welcome back").await.expect("acked");
    let (live, history) = next_message(&mut room).await;
    assert_eq!((live.seq, live.body.as_str(), history), (seq, "welcome back", false));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_stream_leader_loses_no_acknowledged_message() {
    let mut chat = Chat::start();
    let ada = chat.connect("ada", 0).await;
    let room = ada.join("general", None).await.expect("joins");
    let sender = room.sender();
    let leader = {
        let cluster = cluster_client(&chat, 10_000).await;
        cluster.log.leader().await.expect("stream info").expect("the stream has a leader")
    };

    // Sends with up to 32 in flight; the leader dies a third of the way through.
    let mut acked = BTreeMap::new();
    let mut refused = 0;
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..600u32 {
        if i == 200 {
            assert!(chat.nats.kill(&leader), "the leader {leader} is one of ours");
        }
        if in_flight.len() >= 32 {
            record(in_flight.join_next().await, &mut acked, &mut refused);
        }
        let ack = sender.send_unchecked(format!("m{i}")).await.expect("the stream is open");
        in_flight.spawn(async move { (i, ack.await) });
    }
    while let Some(done) = in_flight.join_next().await {
        record(Some(done), &mut acked, &mut refused);
    }
    assert!(acked.len() > 300, "most sends are acknowledged ({} refused)", refused);
    println!("{} acked, {refused} refused while NATS elected a new leader", acked.len());

    // Every acknowledged message is in the history, from either node, under its seq.
    for node in [0, 1] {
        let reader = chat.connect(&format!("reader{node}"), node).await;
        let mut room = reader.join("general", Some(0)).await.expect("joins");
        let mut stored = BTreeMap::new();
        let deadline = Instant::now() + PATIENCE;
        while stored.len() < acked.len() {
            let next = tokio::time::timeout_at(deadline.into(), room.next()).await;
            if let Ok(Some(RoomEvent::HistoryEnd(_))) = next {
                continue;
            }
            let Ok(Some(RoomEvent::Message { message, .. })) = next else {
                let missing: Vec<u64> =
                    acked.keys().filter(|seq| !stored.contains_key(*seq)).copied().collect();
                panic!(
                    "node {node}: {} of {} acked messages, then {next:?}; missing {missing:?}",
                    stored.len(),
                    acked.len()
                );
            };
            stored.insert(message.seq, message.body);
        }
        for (seq, body) in &acked {
            assert_eq!(stored.get(seq), Some(body), "acked message {seq} on node {node}");
        }
    }
}

/// A finished send: its number and its ack.
type Sent = Result<(u32, Result<u64, ClientError>), tokio::task::JoinError>;

fn record(done: Option<Sent>, acked: &mut BTreeMap<u64, String>, refused: &mut usize) {
    match done.expect("a send in flight").expect("the send task") {
        (i, Ok(seq)) => {
            acked.insert(seq, format!("m{i}"));
        }
        (i, Err(e)) => {
            if *refused < 3 {
                println!("send {i} refused: {e}");
            }
            *refused += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_and_a_ban_made_on_one_node_hold_on_the_other_and_names_register_once() {
    let mut chat = Chat::start();
    let password = "correct horse battery";
    let ada = Client::connect(chat.options("ada", 0, false).registering(password))
        .await
        .expect("registers on node 0");
    assert!(ada.is_account());
    ada.close().await;
    // At once on node 1: the name needs its password, and the password logs in.
    match Client::connect(chat.options("ada", 1, false)).await {
        Err(ClientError::LoginRequired(_)) => {}
        other => panic!("node 1 let a guest use ada: {:?}", other.map(|c| c.name().to_owned())),
    }
    let on_one = Client::connect(chat.options("ada", 1, false).with_password(password))
        .await
        .expect("logs in on node 1");
    assert!(on_one.is_account());

    // A ban made on node 1 removes the member on node 0 at once, and keeps it out there.
    assert!(!on_one.create_room("club").await.expect("made"));
    // A topic set on node 1 is in node 0's listings, node 0 started after it or not.
    let topic = chat_client::Moderation::Topic("members only".into());
    on_one.moderate("club", topic).await.expect("the owner sets the topic");
    chat.restart(0);
    let listed = chat.connect("lister", 0).await;
    let rooms = eventually(|| async {
        let rooms = listed.rooms().await.ok()?;
        rooms.iter().any(|r| r.name == "club").then_some(rooms)
    })
    .await;
    let club = rooms.iter().find(|r| r.name == "club").expect("listed");
    assert_eq!(club.topic, "members only", "node 0's listing, after a restart");
    let bob = chat.connect("bob", 0).await;
    let mut bobs = eventually(|| async { bob.join("club", None).await.ok() }).await;
    let ban =
        chat_client::Moderation::Ban { name: "bob".into(), minutes: None, reason: "spam".into() };
    on_one.moderate("club", ban).await.expect("the owner bans bob");
    let removed = loop {
        match tokio::time::timeout(PATIENCE, bobs.next()).await.expect("in time") {
            Some(RoomEvent::Error(error)) => break error,
            Some(_) => {}
            None => panic!("bob's room ended without saying why"),
        }
    };
    assert_eq!(removed.code, chat_client::ErrorCode::Kicked);
    match bob.join("club", None).await {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, chat_client::ErrorCode::Banned),
        other => panic!("a banned name joined on node 0: {:?}", other.map(|r| r.name().to_owned())),
    }
    // Deleted on node 1: its member on node 0 is removed, and it is gone on both.
    let cat = chat.connect("cat", 0).await;
    let mut cats = cat.join("club", None).await.expect("cat joins on node 0");
    on_one.moderate("club", chat_client::Moderation::DeleteRoom).await.expect("deleted");
    loop {
        match tokio::time::timeout(PATIENCE, cats.next()).await.expect("in time") {
            Some(RoomEvent::Error(error)) => break assert!(error.message.contains("deleted")),
            Some(_) => {}
            None => panic!("cat's room ended without saying why"),
        }
    }
    eventually(|| async {
        let rooms = cat.rooms().await.ok()?;
        (!rooms.iter().any(|r| r.name == "club")).then_some(())
    })
    .await;

    // Registrations of one name on both nodes at once: exactly one wins.
    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let options = chat.options("dora", i % 2, false).registering(&format!("password {i}"));
            tokio::spawn(Client::connect(options))
        })
        .collect();
    let mut won = Vec::new();
    for attempt in attempts {
        if let Ok(client) = attempt.await.expect("ran") {
            won.push(client);
        }
    }
    assert_eq!(won.len(), 1, "one registration of dora across the two nodes");
}

/// The cluster's own connection to the chat's NATS, as a node with `history_cap` would make
/// it (it sets the stream's cap, so give the nodes' own).
async fn cluster_client(chat: &Chat, history_cap: u64) -> chat_cluster::Cluster {
    let config = chat_cluster::ClusterConfig {
        urls: vec![chat.nats.urls()],
        replicas: 3,
        history_cap,
        direct_history_cap: 10_000,
        max_age: None,
        presence_ttl: Duration::from_secs(15),
    };
    chat_cluster::Cluster::connect(&config).await.expect("NATS")
}

/// A fresh reader on `node` reads `room` from its start: every number in `stored`, once, in
/// order, and nothing else.
async fn read_whole(chat: &Chat, node: usize, reader: &str, room: &str, stored: &[u64]) {
    let client = chat.connect(reader, node).await;
    let mut joined = client.join(room, Some(0)).await.expect("joins");
    let got = take_messages(&mut joined, stored.len()).await;
    let seqs: Vec<u64> = got.iter().map(|(seq, ..)| *seq).collect();
    if seqs != stored {
        let first_wrong = seqs.iter().zip(stored).position(|(a, b)| a != b);
        panic!(
            "{reader} on node {node}: not every message once in order; first difference at {first_wrong:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30000_message_room_is_read_whole_once_in_order_through_each_node_after_each_fault() {
    let mut chat = Chat::start_with(&["--history-cap", "40000"]);
    // Stored the way a node stores a send, 256 publishes in flight at a time.
    let cluster = cluster_client(&chat, 40_000).await;
    let mut stored = Vec::with_capacity(30_000);
    for chunk in 0..(30_000 / 256 + 1) {
        let mut acks = Vec::new();
        for i in chunk * 256..((chunk + 1) * 256).min(30_000) {
            let message = chat_history::Message {
                sender: "ada".into(),
                timestamp_ms: 0,
                body: format!("m{i}"),
            };
            let id = format!("fill:{i}");
            acks.push(cluster.log.publish("general", &message, &id).await.expect("published"));
        }
        for ack in acks {
            stored.push(ack.await.expect("acknowledged"));
        }
    }
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "stored in the order published");

    for node in [0, 1] {
        read_whole(&chat, node, &format!("calm{node}"), "general", &stored).await;
    }
    // The stream's leader killed: a new one answers the pages.
    let leader = cluster.log.leader().await.expect("stream info").expect("a leader");
    assert!(chat.nats.kill(&leader), "the leader {leader} is one of ours");
    for node in [0, 1] {
        read_whole(&chat, node, &format!("leaderless{node}"), "general", &stored).await;
    }
    // A node killed: the other serves the whole room still.
    chat.nodes[1].child.kill().expect("killed");
    read_whole(&chat, 0, "survivor", "general", &stored).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_rooms_with_members_on_both_nodes_all_join() {
    const ROOMS: usize = 2000;
    // The request budget off: at its 50 a second, 2,000 joins take 40 s.
    let chat =
        Chat::start_with(&["--max-rooms-per-connection", "2000", "--requests-per-second", "0"]);
    let maker = chat.connect("maker", 0).await;
    for i in 0..ROOMS {
        maker.create_room(&format!("r{i}")).await.expect("created");
    }
    let mut joins = Vec::new();
    for node in [0, 1] {
        let client = chat.connect(&format!("member{node}"), node).await;
        let started = Instant::now();
        let mut rooms = Vec::with_capacity(ROOMS);
        for i in 0..ROOMS {
            let joined = client.join(&format!("r{i}"), None).await;
            rooms.push(joined.unwrap_or_else(|e| panic!("join {i} on node {node}: {e}")));
        }
        println!("node {node}: {ROOMS} joins in {:?}", started.elapsed());
        joins.push((client, rooms));
    }
    // A message in the last room reaches its member on the other node.
    let seq = joins[0].1[ROOMS - 1].sender().send("last").await.expect("acked");
    let (message, history) = next_message(&mut joins[1].1[ROOMS - 1]).await;
    assert_eq!((message.seq, message.body.as_str(), history), (seq, "last", false));
}

#[tokio::test(flavor = "multi_thread")]
async fn who_and_room_lists_in_a_burst_all_answer_and_make_no_consumer() {
    // More requests within a consumer's 30 s lifetime than a stream takes consumers (1,000),
    // as many clients asking at once would make them.
    const REQUESTS: usize = 1500;
    let chat = Chat::start_with(&["--requests-per-second", "0"]);
    let (ada, bob) = (chat.connect("ada", 0).await, chat.connect("bob", 1).await);
    let _rooms = (ada.join("general", None).await, bob.join("general", None).await);
    for client in [&ada, &bob] {
        eventually(|| async {
            (client.who("general").await.ok()? == ["ada", "bob"]).then_some(())
        })
        .await;
    }
    let before: Vec<_> = ["KV_chat_members", "KV_chat_nodes"]
        .iter()
        .map(|stream| chat.nats.consumers(stream).expect("the bucket's stream"))
        .collect();
    for i in 0..REQUESTS {
        let client = if i % 2 == 0 { &ada } else { &bob };
        if i % 3 == 0 {
            let rooms = client.rooms().await.unwrap_or_else(|e| panic!("room list {i}: {e}"));
            let general = rooms.iter().find(|room| room.name == "general").expect("general");
            assert_eq!(general.members, 2, "request {i}");
        } else {
            let who = client.who("general").await.unwrap_or_else(|e| panic!("who {i}: {e}"));
            assert_eq!(who, ["ada", "bob"], "request {i}");
        }
    }
    let after: Vec<_> = ["KV_chat_members", "KV_chat_nodes"]
        .iter()
        .map(|stream| chat.nats.consumers(stream).expect("the bucket's stream"))
        .collect();
    assert_eq!(before, after, "{REQUESTS} requests made no consumer (one watch per node each)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_repeated_under_its_id_is_stored_once() {
    let chat = Chat::start();
    let cluster = cluster_client(&chat, 40_000).await;
    let message =
        chat_history::Message { sender: "ada".into(), timestamp_ms: 0, body: "once".into() };
    let first = cluster.log.publish("general", &message, "ada:7").await.expect("published");
    let first = first.await.expect("acknowledged");
    let again = cluster.log.publish("general", &message, "ada:7").await.expect("published");
    assert_eq!(again.await.expect("acknowledged"), first, "acknowledged under the first number");
    let other = cluster.log.publish("general", &message, "ada:8").await.expect("published");
    assert!(other.await.expect("acknowledged") > first, "another id is another message");
    let stored = cluster.log.range("general", 1, u64::MAX, 10).await.expect("read");
    let bodies: Vec<&str> = stored.iter().map(|s| s.message.body.as_str()).collect();
    assert_eq!(bodies, ["once", "once"], "the repeat was not stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_nats_server_is_left_for_a_healthy_one_and_nothing_is_missed() {
    let freeze = |nats: &LocalNats, server: &str| nats.signal(server, "STOP");
    let thaw = |nats: &LocalNats, server: &str| nats.signal(server, "CONT");
    through_a_fault(&Chat::start(), "frozen", freeze, thaw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_cut_off_the_network_is_left_and_nothing_is_missed_once_it_is_back() {
    let chat = Chat::start_on(partitionable_nats(), &[]);
    through_a_fault(&chat, "cut off", LocalNats::partition, LocalNats::heal).await;
}

/// Three NATS servers in network namespaces of their own, so that one can be cut off.
fn partitionable_nats() -> LocalNats {
    // The namespaces are made with iproute2's `ip` (and need root, as the tests run).
    chat_tests::ensure_program("ip", "-V", "iproute2");
    let install_dir = chat_tests::program_dir().join("..").join("nats-server");
    LocalNats::start_partitionable(3, &install_dir).expect("NATS in namespaces")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_nats_server_froze_catches_its_members_up_and_drops_none() {
    // A cap above any backlog here: what the cap trims, no node can catch up on.
    let chat = Chat::start_with(&["--history-cap", "1000000"]);
    let server = chat.nats.serving(&format!("chat-node {}", chat.nodes[1].child.id()));
    let server = server.expect("node 1 is on NATS");
    let ada = chat.connect("ada", 0).await;
    let sender = ada.join("general", None).await.expect("joins").sender();
    let bob = chat.connect("bob", 1).await;
    let mut bob_room = bob.join("general", None).await.expect("joins");
    // Bob reads throughout, as a client does, until he has seen the last acked message.
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(u64::MAX);
    let reading = tokio::spawn(async move {
        let mut live = Vec::new();
        while live.last() < Some(&*last_rx.borrow_and_update()) {
            tokio::select! {
                (message, history) = next_message(&mut bob_room) => {
                    assert!(!history, "bob's messages are live");
                    live.push(message.seq);
                }
                _ = last_rx.changed() => {}
            }
        }
        live
    });
    // Ada keeps 32 sends in flight throughout.
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let sending = tokio::spawn(async move {
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        for i in 0.. {
            let turn = std::sync::Arc::clone(&in_flight).acquire_owned().await.expect("open");
            let ack = sender.send_unchecked(format!("m{i}")).await.expect("the stream is open");
            let acks_tx = acks_tx.clone();
            tokio::spawn(async move {
                let _ = acks_tx.send(ack.await);
                drop(turn);
            });
        }
    });
    let mut acked = Vec::new();
    let mut ack_more = async |acked: &mut Vec<u64>, n: usize| {
        let (count, deadline) = (acked.len(), Instant::now() + Duration::from_secs(60));
        while acked.len() < count + n {
            let next = tokio::time::timeout_at(deadline.into(), acks.recv()).await;
            if let Ok(seq) = next.expect("acks came in time").expect("sending") {
                acked.push(seq);
            }
        }
    };
    ack_more(&mut acked, 100).await;
    assert!(chat.nats.signal(&server, "STOP"), "froze {server}");
    // Until node 1 is on another server, node 0 stores a backlog that node 1's subscription
    // never hears (unless node 0 was on the frozen server too).
    let node_1 = format!("chat-node {}", chat.nodes[1].child.id());
    let before = acked.len();
    let moved = eventually(|| async {
        let now_on = chat.nats.serving(&node_1).filter(|now_on| *now_on != server);
        tokio::time::sleep(Duration::from_millis(100)).await;
        now_on
    });
    let moved = tokio::select! {
        moved = moved => moved,
        () = async { loop { ack_more(&mut acked, 1).await } } => unreachable!(),
    };
    println!("node 1 moved from {server} to {moved}; {} acked meanwhile", acked.len() - before);
    ack_more(&mut acked, 100).await;
    assert!(chat.nats.signal(&server, "CONT"), "thawed {server}");
    ack_more(&mut acked, 100).await;
    sending.abort();

    acked.sort_unstable();
    last_tx.send_replace(*acked.last().expect("acked"));
    let live = reading.await.expect("bob read");
    println!("bob read {} messages", live.len());
    assert!(live.windows(2).all(|w| w[0] < w[1]), "bob got them once, in order");
    let missed: Vec<&u64> = acked.iter().filter(|seq| live.binary_search(seq).is_err()).collect();
    assert!(missed.is_empty(), "bob missed {} acked messages: {missed:?}", missed.len());
}

/// Ada on node 0 sends one message after another while `fault` strikes the NATS server that
/// node 0 is on: acks must come again while the server is still down (the node moved to a
/// healthy one). Once it is mended and 20 more are acked: one sender's messages are stored
/// in the order sent, bob on node 1 got every one live, once, in order, and a reader on
/// either node finds every one in the history.
async fn through_a_fault(
    chat: &Chat,
    what: &str,
    fault: impl Fn(&LocalNats, &str) -> bool,
    mend: impl Fn(&LocalNats, &str) -> bool,
) {
    let node_pid = chat.nodes[0].child.id();
    let server = chat.nats.serving(&format!("chat-node {node_pid}")).expect("node 0 is on NATS");
    let ada = chat.connect("ada", 0).await;
    let sender = ada.join("general", None).await.expect("joins").sender();
    let bob = chat.connect("bob", 1).await;
    let mut bob_room = bob.join("general", None).await.expect("joins");
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let sending = tokio::spawn(async move {
        for i in 0.. {
            let ack = sender.send_unchecked(format!("m{i}")).await.expect("the stream is open");
            let _ = acks_tx.send((i, ack.await));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut acked: Vec<(u32, u64)> = Vec::new();
    // Returns when the first of the twenty was acknowledged.
    let mut ack_twenty_more = async |acked: &mut Vec<(u32, u64)>, patience: Duration| {
        let (count, deadline) = (acked.len(), Instant::now() + patience);
        let mut first = None;
        while acked.len() < count + 20 {
            let next = tokio::time::timeout_at(deadline.into(), acks.recv()).await;
            match next.expect("acks came in time").expect("sending") {
                (i, Ok(seq)) => acked.push((i, seq)),
                (i, Err(e)) => println!("send {i} not acknowledged: {e}"),
            }
            first = first.or_else(|| (acked.len() > count).then(Instant::now));
        }
        first.expect("twenty were acknowledged")
    };
    ack_twenty_more(&mut acked, PATIENCE).await;
    assert!(fault(&chat.nats, &server), "{what}: {server}");
    let struck = Instant::now();
    let back = ack_twenty_more(&mut acked, Duration::from_secs(60)).await;
    let now_on = chat.nats.serving(&format!("chat-node {node_pid}"));
    println!("{server} {what}: acks again after {:?}, node 0 now on {now_on:?}", back - struck);
    assert!(now_on.is_some_and(|now_on| now_on != server), "node 0 moved off {server}");
    assert!(mend(&chat.nats, &server), "mended {server}");
    ack_twenty_more(&mut acked, PATIENCE).await;
    sending.abort();

    acked.sort_unstable();
    let stored: Vec<u64> = acked.iter().map(|(_, seq)| *seq).collect();
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "stored out of the order sent: {acked:?}");
    let mut live = Vec::new();
    while live.last() != stored.last() {
        let (message, history) = next_message(&mut bob_room).await;
        assert!(!history, "bob's messages are live");
        live.push(message.seq);
    }
    assert!(live.windows(2).all(|w| w[0] < w[1]), "bob got them once, in order");
    let missed: Vec<&u64> = stored.iter().filter(|seq| !live.contains(seq)).collect();
    assert!(missed.is_empty(), "bob missed {missed:?}");
    for node in [0, 1] {
        let client = chat.connect(&format!("reader{node}"), node).await;
        let mut room = client.join("general", Some(0)).await.expect("joins");
        let mut seen = Vec::new();
        while seen.last() != stored.last() {
            let (message, _) = next_message(&mut room).await;
            seen.push(message.seq);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "read once, in order, on node {node}");
        let missing: Vec<&u64> = stored.iter().filter(|seq| !seen.contains(seq)).collect();
        assert!(missing.is_empty(), "acked but not in the history on node {node}: {missing:?}");
    }
}
