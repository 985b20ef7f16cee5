//! The benchmark tools, run end to end as a user runs them: `chat-bench fanout` against a
//! `chat-node` process and the floor relay, and `chat-bench connections`. Their figures are
//! printed, not asserted (timing belongs to the benchmarks); what is checked is that every
//! message arrived exactly once and that the reports are whole.

use std::process::Command;

use chat_tests::program;
use serde_json::Value;

fn bench(args: &[&str]) -> String {
    let out = Command::new(program("chat-bench")).args(args).output().expect("chat-bench runs");
    assert!(
        out.status.success(),
        "chat-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One JSON object per line, as `--json` prints them.
fn runs(out: &str) -> Vec<Value> {
    out.lines().map(|line| serde_json::from_str(line).expect("a JSON run")).collect()
}

fn assert_clean(run: &Value) {
    assert_eq!(run["lost"], 0, "{run}");
    assert_eq!(run["duplicated"], 0, "{run}");
    let at = |key: &str| run[key].as_u64().unwrap_or_else(|| panic!("{key} in {run}"));
    assert!(at("p50_us") <= at("p99_us") && at("p99_us") <= at("max_us"), "{run}");
    assert!(run["deliveries_per_s"].as_f64().is_some_and(|d| d > 0.0), "{run}");
}

#[test]
fn fanout_delivers_every_message_once_through_the_node_and_the_floor() {
    let out = bench(&[
        "fanout",
        "--members",
        "3",
        "--rooms",
        "2",
        "--messages",
        "200",
        "--rate",
        "2000",
        "--floor",
        "--json",
    ]);
    let runs = runs(&out);
    let targets: Vec<_> = runs.iter().map(|run| run["target"].as_str()).collect();
    assert_eq!(targets, [Some("node"), Some("floor")]);
    for run in &runs {
        assert_clean(run);
        assert_eq!((run["members"].as_u64(), run["rooms"].as_u64()), (Some(3), Some(2)));
    }
}

#[test]
fn fanout_saturates_a_window_of_unacknowledged_messages() {
    let out = bench(&["fanout", "--members", "2", "--messages", "500", "--window", "16", "--json"]);
    let runs = runs(&out);
    assert_eq!(runs.len(), 1, "{out}");
    assert_clean(&runs[0]);
    assert_eq!(runs[0]["window"], 16);
}

#[test]
fn fanout_through_the_client_library_delivers_every_message_once_and_reports_the_harness_cpu() {
    let args = ["--members", "2", "--messages", "500", "--window", "16", "--library", "--json"];
    let out = bench(&[&["fanout"], &args[..]].concat());
    let runs = runs(&out);
    assert_eq!(runs.len(), 1, "{out}");
    assert_clean(&runs[0]);
    assert!(runs[0]["harness_cpu_s"].as_f64().is_some_and(|s| s >= 0.0), "{out}");
}

#[test]
fn connections_holds_every_connection_and_reports_its_cost() {
    let out = bench(&["connections", "20"]);
    assert!(out.contains("connections: 20 open and joined"), "{out}");
    assert!(out.contains("handshakes per second of node CPU"), "{out}");
    assert!(out.contains("KiB per connection"), "{out}");
}

#[test]
fn requests_floods_joins_beside_a_bystander_and_reports_both() {
    let out = bench(&["requests", "--history", "20", "--seconds", "1"]);
    let served = |phase: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(phase)).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("bystander p50"), "{line}");
        let before = line.split(" joins/s served").next().unwrap_or_default();
        before.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    assert!(out.lines().any(|l| l.starts_with("quiet: bystander p50")), "{out}");
    assert!(served("join flood, no budget") > 0.0, "{out}");
    served("join flood, default budget");
}

#[test]
fn screen_times_keys_and_messages_on_the_full_screen_chat_under_load() {
    // The benchmark gives chat its pseudo-terminal with util-linux's `script`.
    chat_tests::ensure_program("script", "--version", "bsdutils");
    let out = bench(&["screen", "--seconds", "1", "--rate", "200"]);
    for phase in ["quiet node", "load into the room shown", "load into another room"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("| {phase}")))
            .unwrap_or_else(|| panic!("{out}"));
        // Every probe posted was seen on the screen, and keys were timed.
        let probes = row.split(" probes seen").next().and_then(|r| r.rsplit('(').next());
        let (seen, sent) =
            probes.and_then(|p| p.split_once(" of ")).unwrap_or_else(|| panic!("{row}"));
        assert_eq!(seen, sent, "{row}");
        assert!(!row.contains("(0 keys)") && row.contains("of a core"), "{row}");
    }
}
