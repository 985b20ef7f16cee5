//! `chat-bench`: measures the node as a user runs it.
//!
//! - `fanout` (`fanout/`): the time from a publisher's send to the receipt at every member,
//!   against a `chat-node` process, beside the floor of a bare QUIC relay (`relay.rs`).
//! - `soak` (`soak.rs`): many clients for many minutes, the node's memory over time.
//! - `connections` (`connections.rs`): many idle connections, memory per connection.
//! - `appends` (`appends.rs`): the history alone, to see group commit at work.
//! - `requests` (`requests.rs`): a connection that joins as fast as it can, beside a
//!   bystander's latency.
//!
//! - `browser` (`browser.rs`): the page in headless Chromium beside the native client.
//!
//! `process.rs` starts the server under test as its own process and reads its costs.

mod appends;
mod browser;
mod connections;
mod fanout;
mod logins;
mod nats_floor;
mod plot;
mod process;
mod relay;
mod requests;
mod rooms;
mod screen;
mod soak;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// The harness decodes every delivery (several small allocations each), and glibc's
/// allocator was a third of its time at saturation. (The node keeps glibc's: mimalloc saved
/// it under 10% of CPU at saturation for 50% more memory with 1000 members.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Fan-out latency benchmarks of the chat node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One publisher sends to rooms of members; prints the fan-out latency percentiles,
    /// deliveries per second, lost and duplicated deliveries, and the server's CPU and memory.
    /// Needs the release `chat-node` beside this program.
    Fanout {
        /// Members per room (the publisher is not one of them)
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Rooms, each with its own members
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Messages to send, spread over the rooms
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Messages per second (open loop)
        #[arg(long, default_value_t = 1000, conflicts_with = "window")]
        rate: u64,
        /// Saturate instead: send as fast as acks allow with this many unacknowledged
        #[arg(long)]
        window: Option<usize>,
        /// Bytes per message body (at least 30)
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Also run the bare QUIC relay (the floor) and print the node/floor ratios
        #[arg(long)]
        floor: bool,
        /// Also run two nodes in cluster mode on a three-server NATS cluster (history
        /// replicated three times; nats-server installed if missing) and print the
        /// cluster/node ratios
        #[arg(long)]
        cluster: bool,
        /// One JSON object per run instead of text
        #[arg(long)]
        json: bool,
        /// Write an SVG plot of the latency distribution here (every server of the run)
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Extra members of the first room that never read, to see that the others' latency
        /// does not move; prints how many the node dropped as too slow
        #[arg(long, default_value_t = 0)]
        stalled: usize,
        /// The node's members use the client library (its reader task and event channel)
        /// instead of reading their stream by hand; "harness CPU" then shows what the
        /// library costs a member
        #[arg(long)]
        library: bool,
        /// Run it this many times and report the run with the median p99 (a shared machine's
        /// disk and neighbours make single runs' tails noisy)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        runs: u16,
        /// Flags passed on to `chat-node`, e.g. `-- --durability buffered`
        #[arg(last = true)]
        node_args: Vec<String>,
    },
    /// Many clients for many minutes against a release `chat-node` process: prints the
    /// node's memory over time (build it first: `cargo build --release -p chat-node`).
    Soak {
        /// Client connections, each a member of one room
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// Rooms the clients are spread over
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        /// Length of the run
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Messages per second each client sends
        #[arg(long, default_value_t = 0.2)]
        rate: f64,
        /// Bytes per message body
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Seconds between memory reports
        #[arg(long, default_value_t = 10)]
        report_secs: u64,
    },
    /// Runs every fan-out scenario of the results file, node beside floor: 1, 10, 100 and
    /// 1000 members; 100 B and 1 KiB; 1 and 100 rooms; and saturation with 100 members
    Matrix {
        /// One JSON object per run instead of text
        #[arg(long)]
        json: bool,
        /// Write an SVG plot of each scenario's latency distribution into this directory
        #[arg(long)]
        plots: Option<PathBuf>,
        /// Run each scenario this many times and report the run with the median p99
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        runs: u16,
    },
    /// Opens N connections to a `chat-node` process, each joined to a room, then idles:
    /// prints the handshakes per second and the node's memory per connection
    Connections {
        /// Connections to open
        #[arg(default_value_t = 10_000)]
        count: usize,
        /// Flags passed on to `chat-node`, e.g. `-- --max-rooms-per-connection 4`
        #[arg(last = true)]
        node_args: Vec<String>,
    },
    /// A connection that joins rooms as fast as it can, with the node's request budget off
    /// and at its default, beside a bystander member timing its own messages: prints the
    /// joins per second served, node CPU per join and the bystander's latency
    Requests {
        /// Messages in each room before the flood
        #[arg(long, default_value_t = 1000)]
        history: usize,
        /// Seconds per phase
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// A password guesser against one account, with no login limit, with the limiter, and
    /// at the defaults (limiter, then the bar): prints the node's CPU per try
    Logins {
        /// Wrong passwords per phase
        #[arg(long, default_value_t = 200)]
        tries: usize,
        /// Run only this phase (1 to 3), e.g. to profile it
        #[arg(long)]
        phase: Option<usize>,
    },
    /// The full-screen `chat` in a pseudo-terminal under a busy room: prints keystroke-to-
    /// screen and message-to-screen latency and chat's CPU (needs `chat` and the release
    /// `chat-node` beside this program, and util-linux's `script`)
    Screen {
        /// Seconds per phase
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Messages per second the loader posts
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
    /// The browser page (headless Chromium, Playwright) beside the native client in one room:
    /// each one's latency from a publisher's send to the message on the page or in the
    /// client, and the node's CPU per session (needs the release `chat-node`, Chromium, and
    /// `npm ci` in web/)
    Browser {
        /// Browser pages, and as many native members
        #[arg(long, default_value_t = 5)]
        sessions: usize,
        /// Probe messages
        #[arg(long, default_value_t = 500)]
        messages: usize,
        /// Probes per second
        #[arg(long, default_value_t = 100)]
        rate: u64,
    },
    /// Many rooms in cluster mode (three NATS servers, two nodes) with a member of each on
    /// both nodes: prints join latency, the CPU NATS and the nodes spend while the rooms are
    /// idle, and a message from one node to the other (needs the release `chat-node`)
    Rooms {
        /// Rooms, each joined on both nodes
        #[arg(long, default_value_t = 10_000)]
        rooms: usize,
        /// Seconds of idling to measure
        #[arg(long, default_value_t = 30.0)]
        idle: f64,
        /// The same on one single node (no NATS), to compare
        #[arg(long)]
        single: bool,
    },
    /// Cluster mode's NATS path with no chat node: a publish as a node appends, its ack, and
    /// its arrival on a second connection subscribed as a following node is (the floor under
    /// `fanout --cluster`)
    NatsFloor {
        /// Messages to publish
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Messages per second
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Publish as fast as NATS takes them, this many unacknowledged at once, instead of
        /// at `--rate` (the floor under `fanout --cluster --window`)
        #[arg(long)]
        window: Option<usize>,
    },
    /// The bare QUIC relay that `fanout --floor` measures (started by it)
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Durable appends straight to the history (no network): messages per second with many
    /// appends in flight, to see group commit at work.
    Appends {
        /// Messages to append
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Appends in flight at once
        #[arg(long, default_value_t = 1000)]
        window: usize,
        /// Bytes per message body
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Skip the fsync (`durability = "buffered"`)
        #[arg(long)]
        buffered: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fanout {
            members,
            rooms,
            messages,
            rate,
            window,
            size,
            floor,
            cluster,
            json,
            plot,
            stalled,
            library,
            runs,
            node_args,
        } => {
            let rate = window.is_none().then_some(rate);
            let scenario = fanout::Scenario {
                members,
                rooms,
                messages,
                size,
                rate,
                window: window.unwrap_or(0),
                stalled,
                progress: !json,
                library,
            };
            let also = Also { floor, cluster };
            if !compare(scenario, also, json, plot.as_deref(), &node_args, runs.into()).await? {
                bail!("deliveries were lost or duplicated");
            }
            Ok(())
        }
        Command::Relay { listen, dir } => relay::serve(listen, &dir).await,
        Command::Requests { history, seconds } => requests::run(history, seconds).await,
        Command::NatsFloor { messages, rate, window } => {
            nats_floor::run(messages, rate, window).await
        }
        Command::Browser { sessions, messages, rate } => {
            browser::run(sessions, messages, rate).await
        }
        Command::Rooms { rooms, idle, single } => rooms::run(rooms, idle, single).await,
        Command::Logins { tries, phase } => logins::run(tries, phase).await,
        Command::Screen { seconds, rate } => screen::run(seconds, rate).await,
        Command::Connections { count, node_args } => connections::run(count, &node_args).await,
        Command::Matrix { json, plots, runs } => {
            if let Some(dir) = &plots {
                std::fs::create_dir_all(dir)?;
            }
            let mut failed = 0;
            for (scenario, floor) in fanout::matrix() {
                let scenario = fanout::Scenario { progress: !json, ..scenario };
                let plot = plots.as_ref().map(|dir| dir.join(format!("{}.svg", scenario.name())));
                let also = Also { floor, cluster: false };
                if !compare(scenario, also, json, plot.as_deref(), &[], runs.into()).await? {
                    failed += 1;
                }
            }
            if failed > 0 {
                bail!("{failed} scenarios lost or duplicated deliveries");
            }
            Ok(())
        }
        Command::Appends { messages, window, size, buffered } => {
            appends::run(messages, window, size, buffered)
        }
        Command::Soak { clients, rooms, minutes, rate, size, report_secs } => {
            soak::run(soak::Soak { clients, rooms, minutes, rate, size, report_secs }).await
        }
    }
}

/// What a fan-out run measures beside the single node.
#[derive(Clone, Copy)]
struct Also {
    /// The bare QUIC relay.
    floor: bool,
    /// Two nodes in cluster mode on three NATS servers.
    cluster: bool,
}

/// Runs a scenario `runs` times on the node and on what `also` asks for, prints them all,
/// then the run with the median p99 of each server with the ratios to the node, and plots
/// those to `plot`. Returns whether every delivery of every run arrived exactly once.
async fn compare(
    scenario: fanout::Scenario,
    also: Also,
    json: bool,
    plot: Option<&std::path::Path>,
    node_args: &[String],
    runs: usize,
) -> anyhow::Result<bool> {
    fanout::check(&scenario)?;
    if !json {
        println!(
            "fanout: {} members in each of {} rooms, {} messages of {} B, {}",
            scenario.members,
            scenario.rooms,
            scenario.messages,
            scenario.size,
            scenario
                .rate
                .map_or(format!("saturating, {} in flight", scenario.window), |r| format!(
                    "{r} msg/s"
                ))
        );
    }
    let (mut nodes, mut floors, mut clusters) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        if runs > 1 && !json {
            println!("run {run} of {runs}");
        }
        nodes.push(fanout::node(scenario, node_args).await?);
        if also.floor {
            floors.push(fanout::floor(scenario).await?);
        }
        if also.cluster {
            clusters.push(fanout::cluster(scenario, node_args).await?);
        }
        let this_run = [nodes.last(), floors.last(), clusters.last()];
        for outcome in this_run.into_iter().flatten().filter(|_| runs > 1 || json) {
            if json {
                println!("{}", outcome.json(&scenario));
            } else {
                outcome.print();
            }
        }
    }
    let everything_arrived =
        nodes.iter().chain(&floors).chain(&clusters).all(|o| o.lost + o.duplicated == 0);
    let (node, floor, cluster) =
        (fanout::median_run(nodes), fanout::median_run(floors), fanout::median_run(clusters));
    let node = node.context("no run")?;
    let outcomes: Vec<&fanout::Outcome> =
        std::iter::once(&node).chain(&floor).chain(&cluster).collect();
    if !json {
        if runs > 1 {
            println!("the run with the median p99, of each server:");
        }
        for outcome in &outcomes {
            outcome.print();
        }
    }
    if !json {
        let ratio = |a: &fanout::Outcome, b: &fanout::Outcome, q: f64| {
            a.latency_us.value_at_quantile(q) as f64
                / b.latency_us.value_at_quantile(q).max(1) as f64
        };
        if let Some(floor) = &floor {
            let (p50, p99) = (ratio(&node, floor, 0.5), ratio(&node, floor, 0.99));
            println!("node/floor: p50 {p50:.2}, p99 {p99:.2}");
        }
        if let Some(cluster) = &cluster {
            let (p50, p99) = (ratio(cluster, &node, 0.5), ratio(cluster, &node, 0.99));
            println!("cluster/node: p50 {p50:.2}, p99 {p99:.2}");
        }
    }
    if let Some(path) = plot {
        plot::latency(path, &scenario.name(), &outcomes)?;
        if !json {
            println!("plot: {}", path.display());
        }
    }
    Ok(everything_arrived)
}
