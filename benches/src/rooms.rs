//! `chat-bench rooms`: many rooms in cluster mode, each with a member on both of two nodes
//! (three NATS servers, replicas 3). Prints each node's join latency (every room joined one
//! after the other by one connection, with the node's request budget off), then the CPU that NATS and the nodes spend while the
//! rooms sit idle, and a message's way from one node to the other in the last room.

use std::time::{Duration, Instant};

use chat_client::{Client, ConnectOptions, Trust};

use crate::process::{self, ServerProcess, cpu_seconds};

pub async fn run(rooms: usize, idle_secs: f64, single: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let install_dir = std::env::current_exe()?.with_file_name("..").join("nats-server");
    let nats = chat_cluster::local::LocalNats::start(3, &install_dir)?;
    let files = chat_certs::ensure_node_files(&dir.path().join("certs"), &[])?;
    let names: Vec<String> = (0..rooms).map(|r| format!("r{r}")).collect();
    let (cert, key) = (files.node_cert.display().to_string(), files.node_key.display().to_string());
    let (per_connection, most) = (rooms.to_string(), (rooms + 10).to_string());
    let urls = nats.urls();
    let cluster = ["--nats", &urls, "--replicas", "3"];
    // The request budget off: the joins are timed, not paced at 50 a second.
    let flags = [
        "--requests-per-second",
        "0",
        "--cert",
        &cert,
        "--key",
        &key,
        "--max-rooms-per-connection",
        &per_connection,
        "--max-rooms",
        &most,
    ];
    let options = |node: &ServerProcess, name: &str| {
        ConnectOptions::new(&node.addr, name, Trust::CaFile(files.ca_cert.clone()))
    };
    // One after the other: the first sets up the streams and buckets, the second finds them.
    let mut nodes = Vec::new();
    let flags = if single { flags.to_vec() } else { [&cluster[..], &flags].concat() };
    for i in 0..if single { 1 } else { 2 } {
        let data_dir = dir.path().join(format!("node{i}"));
        let node = process::node(&data_dir, &["lobby".into()], &flags, &[])?;
        process::wait_until_up(&options(&node, &format!("probe{i}"))).await?;
        nodes.push(node);
    }
    let maker = Client::connect(options(&nodes[0], "maker")).await?;
    let started = Instant::now();
    for room in &names {
        maker.create_room(room).await?;
    }
    println!(
        "{rooms} rooms made in {:.1} s; two members of each room, {}",
        started.elapsed().as_secs_f64(),
        if single { "on a single node" } else { "one on each of two cluster nodes" }
    );

    let mut members = Vec::new();
    for i in 0..2 {
        let node = &nodes[i % nodes.len()];
        let client = Client::connect(options(node, &format!("member{i}"))).await?;
        let mut joined = Vec::with_capacity(rooms);
        let mut took = Vec::with_capacity(rooms);
        for room in &names {
            let started = Instant::now();
            joined.push(client.join(room, None).await?);
            took.push(started.elapsed());
        }
        took.sort_unstable();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "node {i} joins: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            at(0.5),
            at(0.99),
            at(1.0)
        );
        members.push((client, joined));
    }

    let nats_pids = nats.pids();
    let node_pids: Vec<u32> = nodes.iter().map(ServerProcess::pid).collect();
    let total = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p).unwrap_or(0.0)).sum::<f64>();
    // Let the joins' own work settle before measuring the idle cost.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (nats_before, nodes_before, started) =
        (total(&nats_pids), total(&node_pids), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let share = |before: f64, pids: &[u32]| (total(pids) - before) / elapsed * 100.0;
    println!(
        "idle for {elapsed:.0} s: NATS (3 servers) {:.2}% of one core, nodes (2) {:.2}%",
        share(nats_before, &nats_pids),
        share(nodes_before, &node_pids)
    );

    let started = Instant::now();
    let seq = members[0].1[rooms - 1].sender().send("across").await?;
    let acked = started.elapsed();
    loop {
        match members[1].1[rooms - 1].next().await {
            Some(chat_client::RoomEvent::Message { message, .. }) if message.seq == seq => break,
            Some(_) => {}
            None => anyhow::bail!("the other node's member left the last room"),
        }
    }
    println!(
        "a message in the last room: acked in {:.2} ms, on the other node in {:.2} ms",
        acked.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
