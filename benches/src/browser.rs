//! `chat-bench browser`: the page in headless Chromium beside the native client, in one room
//! of one node. `--sessions` browser pages (`web/test/bench.mjs`, Playwright) and as many
//! native members join; a publisher posts `--messages` probes at `--rate`, each carrying its
//! send time; every member times it to its arrival: the page when the probe's row is in the
//! page, the native member when the client library hands it over. Also the node's CPU per
//! session: to set one up (the page's load, the handshake and the join), and while idle.
//! Needs the release `chat-node`, Chromium and `npm ci` in `web/` (the tests install both).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chat_client::{Client, RoomEvent};
use hdrhistogram::Histogram;

use crate::process;

const IDLE: Duration = Duration::from_secs(10);

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub async fn run(sessions: usize, messages: usize, rate: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let web = chat_harness::free_udp_and_tcp_addr()?;
    let server = process::node(dir.path(), &["general".into()], &["--web-listen", &web], &[])?;
    let options = |name: String| process::node_options(&server.addr, dir.path(), name);
    process::wait_until_up(&options("probe".into())).await?;
    println!(
        "browser: {sessions} pages in headless Chromium and {sessions} native members in one \
         room; {messages} probes at {rate}/s"
    );

    let cpu = || server.cpu_seconds();
    let before = cpu()?;
    let mut natives = Vec::new();
    for i in 0..sessions {
        let client = Client::connect(options(format!("native{i}"))).await?;
        let room = client.join("general", None).await?;
        natives.push((client, room));
    }
    let native_setup = (cpu()? - before) / sessions as f64;

    let web_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    let port = web.rsplit(':').next().context("port")?;
    let mut script = Command::new("node")
        .arg("test/bench.mjs")
        .current_dir(&web_dir)
        .env("CHAT_PAGE", format!("http://localhost:{port}/"))
        .env("CHAT_SESSIONS", sessions.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("node runs web/test/bench.mjs (run `npm ci` in web/ first)")?;
    let lines = chat_harness::spawn_line_reader(script.stdout.take().context("stdout")?);
    let mut to_script = script.stdin.take().context("stdin")?;
    let before = cpu()?;
    let ready = lines.recv_timeout(Duration::from_secs(120)).context("the pages never joined")?;
    anyhow::ensure!(ready == "READY", "the browser script said {ready:?}");
    let browser_setup = (cpu()? - before) / sessions as f64;

    let before = cpu()?;
    tokio::time::sleep(IDLE).await;
    let idle = (cpu()? - before) / IDLE.as_secs_f64() / (2 * sessions) as f64;

    let mut readers = Vec::new();
    for (client, mut room) in natives {
        readers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("histogram");
            while latencies.len() < messages as u64 {
                match tokio::time::timeout(Duration::from_secs(60), room.next()).await {
                    Ok(Some(RoomEvent::Message { message, history: false })) => {
                        if let Some(sent) = message.body.split(' ').nth(2) {
                            let sent: u64 = sent.parse().unwrap_or(0);
                            let _ = latencies.record(now_us().saturating_sub(sent));
                        }
                    }
                    Ok(Some(_)) => {}
                    other => {
                        eprintln!(
                            "browser: a native member stopped after {} probes: {other:?}",
                            latencies.len()
                        );
                        break;
                    }
                }
            }
            drop(client);
            latencies
        }));
    }
    let publisher = Client::connect(options("publisher".into())).await?;
    let sender = publisher.join("general", None).await?.sender();
    let before = cpu()?;
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut acks = Vec::new();
    for i in 0..messages {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        acks.push(sender.post(format!("probe {i} {}", now_us())).await?);
    }
    for ack in acks {
        ack.acked().await?;
    }
    writeln!(to_script, "PROBES {messages}")?;
    to_script.flush()?;
    let mut native = Histogram::<u64>::new(3)?;
    for reader in readers {
        native.add(reader.await?)?;
    }
    let result = loop {
        let line =
            lines.recv_timeout(Duration::from_secs(150)).context("no RESULT from the pages")?;
        if let Some(json) = line.strip_prefix("RESULT ") {
            break serde_json::from_str::<serde_json::Value>(json)?;
        }
    };
    let delivery_cpu = (cpu()? - before) / (messages * 2 * sessions) as f64;
    drop(to_script); // The script reads its input until it ends.
    let _ = script.wait();
    let mut page = Histogram::<u64>::new(3)?;
    for ms in result["latencies_ms"].as_array().context("latencies")? {
        let _ = page.record((ms.as_f64().unwrap_or(0.0).max(0.0) * 1000.0) as u64);
    }
    anyhow::ensure!(native.len() == (messages * sessions) as u64, "native members missed probes");
    anyhow::ensure!(page.len() == (messages * sessions) as u64, "pages missed probes");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("| member | deliveries | p50 | p99 | max | node CPU to set a session up |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (label, h, setup) in
        [("native client", &native, native_setup), ("browser page", &page, browser_setup)]
    {
        println!(
            "| {label} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            h.len(),
            ms(h, 0.5),
            ms(h, 0.99),
            h.max() as f64 / 1000.0,
            setup * 1000.0,
        );
    }
    println!(
        "node CPU: {:.1} µs per delivery (both kinds), {:.3}% of a core per idle session",
        delivery_cpu * 1e6,
        idle * 100.0
    );
    Ok(())
}
