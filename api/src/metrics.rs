//! Prometheus metrics (prometheus-client, the Prometheus project's own Rust
//! client), served as text on the HTTP port's `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Jobs with ready tasks, per tier.
    pub queue_jobs: Family<Labels, Gauge>,
    /// Tasks by state, per tier.
    pub tasks: Family<Labels, Gauge>,
    /// Time to plan, persist and commit one round.
    pub round_seconds: Histogram,
    /// Rounds committed.
    pub rounds: Counter,
    /// Placements committed (launches sent).
    pub placements: Counter,
    /// Preemptions started.
    pub preemptions: Counter,
    /// Per pool: supply and leased IE.
    pub pool_supply_ie: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Per pool: leased IE.
    pub pool_leased_ie: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Executor streams connected now.
    pub executors_connected: Gauge,
    /// Hosts the core knows, by state.
    pub hosts: Family<Labels, Gauge>,
    /// Time one store write (an fsynced batch) takes.
    pub store_write_seconds: Histogram,
    /// Records written to the log.
    pub store_records: Counter,
    /// Size of the store file.
    pub store_bytes: Gauge,
    /// Snapshots written.
    pub snapshots: Counter,
    /// Inputs refused (bad requests, stale executor reports).
    pub refused_inputs: Family<Labels, Counter>,
    /// 1 while this replica leads, 0 while it follows.
    pub leader: Gauge,
    /// Election won → core rebuilt and serving, for the latest takeover.
    pub takeover_seconds: Gauge<f64, AtomicU64>,
    /// 1 while the store is unreachable and writes wait (nothing is
    /// acknowledged meanwhile).
    pub store_unavailable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `ebb_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ebb");
        // Rounds and writes range from well under a millisecond (an empty
        // round, a small fsync) to seconds (100,000 placements): 100 µs
        // doubling 18 times reaches 13 s.
        let buckets = || exponential_buckets(0.0001, 2.0, 18);
        let m = Metrics {
            queue_jobs: Family::default(),
            tasks: Family::default(),
            round_seconds: Histogram::new(buckets()),
            rounds: Counter::default(),
            placements: Counter::default(),
            preemptions: Counter::default(),
            pool_supply_ie: Family::default(),
            pool_leased_ie: Family::default(),
            executors_connected: Gauge::default(),
            hosts: Family::default(),
            store_write_seconds: Histogram::new(buckets()),
            store_records: Counter::default(),
            store_bytes: Gauge::default(),
            snapshots: Counter::default(),
            refused_inputs: Family::default(),
            leader: Gauge::default(),
            takeover_seconds: Gauge::default(),
            store_unavailable: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "queue_jobs",
            "Jobs with ready tasks, per tier",
            m.queue_jobs.clone(),
        );
        registry.register("tasks", "Tasks by state and tier", m.tasks.clone());
        registry.register(
            "round_duration_seconds",
            "Time to plan, persist and commit one scheduling round",
            m.round_seconds.clone(),
        );
        registry.register("rounds", "Scheduling rounds committed", m.rounds.clone());
        registry.register(
            "placements",
            "Task placements committed",
            m.placements.clone(),
        );
        registry.register("preemptions", "Preemptions started", m.preemptions.clone());
        registry.register(
            "pool_supply_ie",
            "Supply per pool in IE",
            m.pool_supply_ie.clone(),
        );
        registry.register(
            "pool_leased_ie",
            "Leased capacity per pool in IE",
            m.pool_leased_ie.clone(),
        );
        registry.register(
            "executors_connected",
            "Executor streams connected",
            m.executors_connected.clone(),
        );
        registry.register(
            "hosts",
            "Hosts the scheduler knows, by state",
            m.hosts.clone(),
        );
        registry.register(
            "store_write_duration_seconds",
            "Time one durable store write takes",
            m.store_write_seconds.clone(),
        );
        registry.register(
            "store_records",
            "Records appended to the log",
            m.store_records.clone(),
        );
        registry.register(
            "store_bytes",
            "Size of the store on disk",
            m.store_bytes.clone(),
        );
        registry.register("snapshots", "Snapshots written", m.snapshots.clone());
        registry.register(
            "refused_inputs",
            "Inputs refused, by kind",
            m.refused_inputs.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (schedules and accepts writes)",
            m.leader.clone(),
        );
        registry.register(
            "takeover_seconds",
            "Election won to core rebuilt, for the latest takeover",
            m.takeover_seconds.clone(),
        );
        registry.register(
            "store_unavailable",
            "1 while store writes wait for the store to come back",
            m.store_unavailable.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// A label set of one pair.
pub fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

/// A label set of two pairs.
pub fn labels2(k1: &str, v1: &str, k2: &str, v2: &str) -> Labels {
    vec![
        (k1.to_owned(), v1.to_owned()),
        (k2.to_owned(), v2.to_owned()),
    ]
}
