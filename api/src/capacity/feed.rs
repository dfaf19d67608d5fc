//! Connects a configured reservation source (`[capacity]`) to the running
//! server: builds the source, adds its pools to the market setup, and feeds
//! every fresh snapshot to the driver as market inputs.
//!
//! ```text
//!  [capacity] ─▶ open() ─▶ StaticFile | Ec2 ─▶ Refresher ─┬─▶ status (ListPools: age, stale, errors)
//!                   │                         every       └─▶ driver: CapacitySnapshot
//!                   └─▶ pool defs ─▶ market.pools           refresh_interval     (types, reservations,
//!                                    (configured at startup)                      streaming demand)
//! ```
//!
//! A failed refresh changes nothing in the market: the core keeps the last
//! reservations it was given (with their terms, so one that ends while the
//! source is down still stops counting at its end), and capacity queries
//! report the snapshot as stale with its age and the error.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ebb_scheduler as core;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{CapacityStatus, PoolDef, Refresher, ReservationSource, StaticFile, unix_now};
use crate::config::{CapacitySetup, Config, PoolSetup};
use crate::driver::Request;
use crate::ha::Leadership;

/// An opened source, ready to be fed to a driver.
pub struct OpenSource {
    refresher: Arc<Refresher>,
    interval: Duration,
    streaming: bool,
}

/// Builds the configured source and adds its pools to `config.market.pools`
/// (default headroom, the source's region) where the config does not list
/// them already, so the driver configures them at startup. A static file is
/// read once here, so a broken file stops the server at startup with the
/// error naming the line and field.
pub async fn open(config: &mut Config) -> anyhow::Result<Option<OpenSource>> {
    let Some(setup) = config.capacity.clone() else {
        return Ok(None);
    };
    let market = &config.scheduler.market;
    let catalog = core::Catalog::builtin()
        .with_overrides(&market.catalog_overrides, &market.reference_instance_type)
        .map_err(|e| anyhow::anyhow!("scheduler.market catalog: {e}"))?;
    let (source, pools) = build(&setup, catalog).await?;
    for def in pools {
        if !config.market.pools.iter().any(|p| p.id == def.id) {
            config.market.pools.push(PoolSetup {
                id: def.id.clone(),
                region: def.region.clone(),
                headroom: core::HeadroomPolicy::default(),
                reservations: Vec::new(),
            });
        }
    }
    Ok(Some(OpenSource {
        refresher: Arc::new(Refresher::new(source)),
        interval: setup.refresh_interval,
        streaming: setup.streaming_demand,
    }))
}

async fn build(
    setup: &CapacitySetup,
    catalog: core::Catalog,
) -> anyhow::Result<(Arc<dyn ReservationSource>, Vec<PoolDef>)> {
    if let Some(path) = &setup.static_file {
        let file = StaticFile::load(path, catalog)
            .with_context(|| format!("capacity.static_file {}", path.display()))?;
        let pools = file
            .snapshot_at(unix_now())
            .with_context(|| format!("capacity.static_file {}", path.display()))?
            .pools
            .into_iter()
            .map(|p| p.pool)
            .collect();
        return Ok((Arc::new(file), pools));
    }
    #[cfg(feature = "ec2")]
    if let Some(ec2) = &setup.ec2 {
        let pools = ec2.pools.clone();
        let source = super::Ec2::new(ec2.clone(), catalog)
            .await
            .context("capacity.ec2")?;
        return Ok((Arc::new(source), pools));
    }
    anyhow::bail!("capacity: give exactly one of `static_file` and `[capacity.ec2]`")
}

impl OpenSource {
    /// The source's health, for capacity queries.
    pub fn status(&self) -> watch::Receiver<CapacityStatus> {
        self.refresher.subscribe()
    }

    /// Feeds the leader, for as long as the replica runs: each time this
    /// replica starts leading it attaches the source to its driver, then
    /// refreshes every interval and feeds what changed. A follower neither
    /// polls the source nor feeds anything.
    pub async fn follow(self, leadership: Leadership) {
        let name = self.refresher.status().source;
        let mut ticker = tokio::time::interval(self.interval);
        // A slow fetch delays the next one rather than stacking them up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut attached_term = 0;
        // The last refusal, so a snapshot refused on every refresh warns once.
        let mut last_refusal: Option<String> = None;
        loop {
            let Some(driver) = leadership.leading().await else {
                return; // the replica stopped
            };
            let term = leadership.term();
            if term != attached_term {
                let name = name.clone();
                match driver
                    .call(|reply| Request::AttachReservationSource { name, reply })
                    .await
                {
                    Ok(()) => attached_term = term,
                    Err(e) => {
                        tracing::warn!(error = %e, "attaching the reservation source; retrying");
                        ticker.tick().await;
                        continue;
                    }
                }
            }
            ticker.tick().await;
            if !self.refresher.refresh(unix_now()).await.fresh {
                continue;
            }
            let Some(snapshot) = self.refresher.status().snapshot else {
                continue;
            };
            let streaming = self.streaming;
            let Ok(driver) = leadership.driver() else {
                continue;
            };
            match driver
                .call(|reply| Request::CapacitySnapshot {
                    snapshot,
                    streaming,
                    reply,
                })
                .await
            {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(n_inputs = n, "reservation source: market updated");
                    }
                    last_refusal = None;
                }
                Err(crate::error::ApiError::Unavailable(_)) => {}
                Err(e) => {
                    let message = e.to_string();
                    if last_refusal.as_ref() != Some(&message) {
                        tracing::warn!(error = %message, "reservation source: snapshot refused");
                    } else {
                        tracing::debug!(error = %message, "reservation source: snapshot still refused");
                    }
                    last_refusal = Some(message);
                }
            }
        }
    }
}
