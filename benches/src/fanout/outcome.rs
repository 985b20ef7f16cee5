//! What one fan-out run measured, printed for a person or as JSON, and the choice of the
//! median run of several.

use hdrhistogram::Histogram;

use super::Scenario;

/// What one run measured.
pub struct Outcome {
    pub target: &'static str,
    pub latency_us: Histogram<u64>,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// This process's CPU: the members' and the publisher's.
    pub harness_cpu_seconds: f64,
    pub peak_rss_kib: u64,
    /// Time during the run in which some task on the machine (the node's syncs included)
    /// waited for the disk, in ms: far more than the node's own syncs take says the disk
    /// stalled, and then a tail in the node's latency is the disk's.
    pub io_stall_ms: Option<f64>,
}

impl Outcome {
    /// p50, p90, p99, p99.9 and max, in µs.
    fn percentiles(&self) -> [u64; 5] {
        let h = &self.latency_us;
        let q = |q| h.value_at_quantile(q);
        [q(0.5), q(0.9), q(0.99), q(0.999), h.max()]
    }

    fn deliveries_per_second(&self) -> f64 {
        self.deliveries as f64 / self.seconds
    }

    pub fn print(&self) {
        let [p50, p90, p99, p999, max] = self.percentiles();
        let stalls = self
            .io_stall_ms
            .map_or(String::new(), |ms| format!("; waiting on the disk {ms:.0} ms"));
        println!(
            "{:>6}: p50 {p50} µs, p90 {p90}, p99 {p99}, p99.9 {p999}, max {max}; {:.0} deliveries/s; \
             lost {}, duplicated {}; server CPU {:.2} s ({:.2} µs per delivery), harness CPU \
             {:.2} µs per delivery, peak memory {:.1} MiB{stalls}",
            self.target,
            self.deliveries_per_second(),
            self.lost,
            self.duplicated,
            self.cpu_seconds,
            self.cpu_seconds * 1e6 / self.deliveries.max(1) as f64,
            self.harness_cpu_seconds * 1e6 / self.deliveries.max(1) as f64,
            self.peak_rss_kib as f64 / 1024.0,
        );
    }

    pub fn json(&self, scenario: &Scenario) -> serde_json::Value {
        let [p50, p90, p99, p999, max] = self.percentiles();
        serde_json::json!({
            "target": self.target,
            "members": scenario.members,
            "rooms": scenario.rooms,
            "messages": scenario.messages,
            "size": scenario.size,
            "rate": scenario.rate,
            "window": scenario.rate.is_none().then_some(scenario.window),
            "p50_us": p50, "p90_us": p90, "p99_us": p99, "p999_us": p999, "max_us": max,
            "deliveries_per_s": self.deliveries_per_second().round(),
            "lost": self.lost,
            "duplicated": self.duplicated,
            "cpu_s": self.cpu_seconds,
            "harness_cpu_s": self.harness_cpu_seconds,
            "peak_rss_kib": self.peak_rss_kib,
            "io_stall_ms": self.io_stall_ms,
        })
    }
}

/// Of several runs, the one whose p99 is the median (the lower middle one of an even count).
pub fn median_run(mut runs: Vec<Outcome>) -> Option<Outcome> {
    runs.sort_by_key(|run| run.latency_us.value_at_quantile(0.99));
    let middle = runs.len().checked_sub(1)? / 2;
    Some(runs.swap_remove(middle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p99_us: u64) -> Outcome {
        let mut latency_us = Histogram::new(3).expect("histogram");
        latency_us.record(p99_us).expect("recorded");
        Outcome {
            target: "node",
            latency_us,
            deliveries: 1,
            lost: 0,
            duplicated: 0,
            seconds: 1.0,
            cpu_seconds: 0.0,
            harness_cpu_seconds: 0.0,
            peak_rss_kib: 0,
            io_stall_ms: None,
        }
    }

    #[test]
    fn the_median_run_is_the_middle_p99() {
        let p99 = |runs: Vec<u64>| {
            median_run(runs.into_iter().map(run).collect()).map(|o| o.latency_us.max())
        };
        assert_eq!(p99(vec![500, 100, 300]), Some(300));
        assert_eq!(p99(vec![400, 100, 300, 200]), Some(200), "the lower middle of four");
        assert_eq!(p99(vec![700]), Some(700));
        assert_eq!(p99(vec![]), None);
    }
}
