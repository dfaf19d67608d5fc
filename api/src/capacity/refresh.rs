//! Keeps a reservation source's snapshot fresh: refreshes on an interval,
//! keeps the last good snapshot when the source fails, says how old it is
//! and whether it is stale, and logs once per change of health.
//!
//! Call order: build a [`Refresher`] around a source, then either call
//! [`Refresher::refresh`] from the server's own loop or [`Refresher::spawn`]
//! a tokio task that does so every interval. Readers call
//! [`Refresher::status`] (a cheap clone) or [`Refresher::subscribe`] to be
//! woken on every attempt.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ebb_scheduler::{DurationMs, Timestamp};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{ReservationSource, Snapshot, unix_now};

/// What the capacity queries report: the last good snapshot and its health.
#[derive(Clone, Debug)]
pub struct CapacityStatus {
    /// The source, as [`ReservationSource::describe`] puts it.
    pub source: String,
    /// The last good snapshot; none until a fetch has succeeded.
    pub snapshot: Option<Arc<Snapshot>>,
    /// The latest attempt failed, or none has succeeded yet: `snapshot` is
    /// older than what the source was last asked for.
    pub stale: bool,
    /// When the latest attempt was made (ms since the Unix epoch).
    pub last_attempt_at: Option<Timestamp>,
    /// Why the latest attempt failed, if it did.
    pub last_error: Option<String>,
    /// Attempts that failed in a row.
    pub consecutive_failures: u32,
}

impl CapacityStatus {
    /// How old the snapshot is at `now`; none without a snapshot.
    pub fn age(&self, now: Timestamp) -> Option<DurationMs> {
        self.snapshot
            .as_ref()
            .map(|s| now.saturating_since(s.fetched_at))
    }
}

/// What one [`Refresher::refresh`] did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RefreshReport {
    /// The fetch succeeded and its snapshot is now current.
    pub fresh: bool,
    /// The source's health changed with this attempt (first success, first
    /// failure, or recovery): the attempts that log at `info`/`warn`.
    pub health_changed: bool,
}

/// Keeps the last good snapshot of one source.
pub struct Refresher {
    source: Arc<dyn ReservationSource>,
    status: watch::Sender<CapacityStatus>,
    /// Serializes refreshes: two at once would race to publish.
    running: Mutex<()>,
}

impl Refresher {
    /// A refresher with no snapshot yet (stale until the first success).
    pub fn new(source: Arc<dyn ReservationSource>) -> Refresher {
        let status = CapacityStatus {
            source: source.describe(),
            snapshot: None,
            stale: true,
            last_attempt_at: None,
            last_error: None,
            consecutive_failures: 0,
        };
        Refresher {
            source,
            status: watch::channel(status).0,
            running: Mutex::new(()),
        }
    }

    /// The current status.
    pub fn status(&self) -> CapacityStatus {
        self.status.borrow().clone()
    }

    /// A receiver woken after every attempt.
    pub fn subscribe(&self) -> watch::Receiver<CapacityStatus> {
        self.status.subscribe()
    }

    /// Fetches once at `now`. On success the snapshot replaces the last one;
    /// on failure the last good snapshot stays, flagged stale. Logs at
    /// `info`/`warn` only when health changes (and new item errors once when
    /// they first appear); repeated failures log at `debug`.
    pub async fn refresh(&self, now: Timestamp) -> RefreshReport {
        let _one_at_a_time = self.running.lock().await;
        let result = self.source.fetch(now).await;
        let before = self.status();
        let never_tried = before.last_attempt_at.is_none();
        let was_failing = before.last_error.is_some();
        let source = &before.source;
        match result {
            Ok(snapshot) => {
                let health_changed = never_tried || was_failing;
                if never_tried {
                    tracing::info!(
                        %source,
                        n_pools = snapshot.pools.len(),
                        n_item_errors = snapshot.errors.len(),
                        "reservation source: first snapshot"
                    );
                } else if was_failing {
                    tracing::info!(
                        %source,
                        failed_attempts = before.consecutive_failures,
                        "reservation source recovered"
                    );
                }
                log_new_item_errors(source, before.snapshot.as_deref(), &snapshot);
                self.status.send_modify(|st| {
                    st.snapshot = Some(Arc::new(snapshot));
                    st.stale = false;
                    st.last_attempt_at = Some(now);
                    st.last_error = None;
                    st.consecutive_failures = 0;
                });
                RefreshReport {
                    fresh: true,
                    health_changed,
                }
            }
            Err(error) => {
                let health_changed = never_tried || !was_failing;
                let age_ms = before.age(now).map(DurationMs::as_millis);
                if health_changed {
                    tracing::warn!(
                        %source,
                        %error,
                        snapshot_age_ms = age_ms,
                        "reservation source failing; keeping the last good snapshot"
                    );
                } else {
                    tracing::debug!(%source, %error, snapshot_age_ms = age_ms, "reservation source still failing");
                }
                self.status.send_modify(|st| {
                    st.stale = true;
                    st.last_attempt_at = Some(now);
                    st.last_error = Some(error.to_string());
                    st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                });
                RefreshReport {
                    fresh: false,
                    health_changed,
                }
            }
        }
    }

    /// Spawns a tokio task that refreshes now and then every `interval` with
    /// the wall clock, until the handle is aborted. A slow fetch delays the
    /// next one rather than stacking them up.
    pub fn spawn(self: Arc<Self>, interval: Duration) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                self.refresh(unix_now()).await;
            }
        })
    }
}

/// Warns once about each item error that the previous snapshot did not have.
fn log_new_item_errors(source: &str, before: Option<&Snapshot>, after: &Snapshot) {
    let old: BTreeSet<String> = before
        .map(|s| s.errors.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    for e in &after.errors {
        let message = e.to_string();
        if !old.contains(&message) {
            tracing::warn!(%source, "reservation source: {message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::capacity::{BoxFuture, Item, ItemError, SourceError};

    /// A source that replays scripted results (a fake, for unit tests only).
    struct Scripted {
        results: StdMutex<VecDeque<Result<Vec<ItemError>, String>>>,
    }

    impl ReservationSource for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }

        fn fetch(&self, now: Timestamp) -> BoxFuture<'_, Result<Snapshot, SourceError>> {
            let next = self
                .results
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err("script ran out".to_owned()));
            Box::pin(async move {
                next.map(|errors| Snapshot {
                    source: "scripted".into(),
                    fetched_at: now,
                    pools: Vec::new(),
                    instance_types: Vec::new(),
                    n_untagged_instances: 0,
                    errors,
                })
                .map_err(|message| SourceError::Config {
                    field: "script".into(),
                    message,
                })
            })
        }
    }

    #[derive(Clone, Default)]
    struct Logs(Arc<StdMutex<Vec<u8>>>);

    impl io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn ms(t: u64) -> Timestamp {
        Timestamp::from_millis(t)
    }

    #[tokio::test]
    async fn keeps_the_last_good_snapshot_and_logs_once_per_change() {
        let unknown = ItemError::UnknownInstanceType {
            instance_type: "x1.weird".into(),
            item: Item::Reservation("r-1".into()),
        };
        let script = [
            Ok(vec![]),
            Err("throttled".to_owned()),
            Err("throttled".to_owned()),
            Err("timed out".to_owned()),
            Ok(vec![unknown.clone()]),
            Ok(vec![unknown]),
        ];
        let source = Arc::new(Scripted {
            results: StdMutex::new(script.into_iter().collect()),
        });
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // Other tests' threads hit these log callsites first, without a
        // subscriber. tracing-core works a callsite's interest out before
        // linking it into its registry, so a registration that straddles
        // `set_default` can cache "never" and miss the rebuild that
        // `set_default` does: one log line then goes missing (seen once in
        // CI). Rebuilding just before each logging call leaves only a
        // registration that straddles both, microseconds apart.
        let rebuild = tracing::callsite::rebuild_interest_cache;

        let r = Refresher::new(source);
        let st = r.status();
        assert!(st.stale && st.snapshot.is_none() && st.age(ms(0)).is_none());

        rebuild();
        let report = r.refresh(ms(1_000)).await;
        assert_eq!(
            report,
            RefreshReport {
                fresh: true,
                health_changed: true
            }
        );
        let st = r.status();
        assert!(!st.stale);
        assert_eq!(st.snapshot.as_ref().unwrap().fetched_at, ms(1_000));

        // Three failures: the snapshot from 1 000 ms stays, stale, ageing.
        for (t, changed) in [(2_000, true), (3_000, false), (4_000, false)] {
            rebuild();
            let report = r.refresh(ms(t)).await;
            assert_eq!(
                report,
                RefreshReport {
                    fresh: false,
                    health_changed: changed
                }
            );
            let st = r.status();
            assert!(st.stale);
            assert_eq!(st.snapshot.as_ref().unwrap().fetched_at, ms(1_000));
            assert_eq!(st.age(ms(t)), Some(DurationMs::from_millis(t - 1_000)));
            assert_eq!(st.last_attempt_at, Some(ms(t)));
        }
        let st = r.status();
        assert_eq!(st.consecutive_failures, 3);
        assert!(st.last_error.as_deref().unwrap().contains("timed out"));

        rebuild();
        let report = r.refresh(ms(5_000)).await;
        assert_eq!(
            report,
            RefreshReport {
                fresh: true,
                health_changed: true
            }
        );
        let st = r.status();
        assert!(!st.stale && st.last_error.is_none() && st.consecutive_failures == 0);
        assert_eq!(st.age(ms(5_000)), Some(DurationMs::ZERO));
        rebuild();
        let report = r.refresh(ms(6_000)).await;
        assert_eq!(
            report,
            RefreshReport {
                fresh: true,
                health_changed: false
            }
        );

        let lines = logs.lines();
        let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
        assert_eq!(count("first snapshot"), 1, "{lines:#?}");
        assert_eq!(
            count("failing; keeping the last good snapshot"),
            1,
            "{lines:#?}"
        );
        assert_eq!(count("recovered"), 1, "{lines:#?}");
        // The item error appears in two snapshots but is logged once.
        assert_eq!(count("unknown instance type x1.weird"), 1, "{lines:#?}");
        assert_eq!(lines.len(), 4, "{lines:#?}");
    }

    #[tokio::test]
    async fn a_source_that_never_worked_is_stale_without_a_snapshot() {
        let source = Arc::new(Scripted {
            results: StdMutex::new([Err("no credentials".to_owned())].into_iter().collect()),
        });
        let r = Refresher::new(source);
        let report = r.refresh(ms(10)).await;
        assert_eq!(
            report,
            RefreshReport {
                fresh: false,
                health_changed: true
            }
        );
        let st = r.status();
        assert!(st.stale && st.snapshot.is_none());
        assert!(st.last_error.unwrap().contains("no credentials"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_spawned_task_refreshes_every_interval() {
        let source = Arc::new(Scripted {
            results: StdMutex::new((0..3).map(|_| Ok(vec![])).collect()),
        });
        let r = Arc::new(Refresher::new(source));
        let mut rx = r.subscribe();
        let task = Arc::clone(&r).spawn(Duration::from_secs(60));
        for _ in 0..3 {
            rx.changed().await.unwrap();
        }
        assert!(!r.status().stale);
        task.abort();
    }
}
