//! The driver's market requests: demand, forecasts, failovers, reservations,
//! and ledger ranges answered from cumulative samples.

use std::collections::BTreeMap;

use ebb_proto::v1 as pb;
use ebb_scheduler as core;

use super::Driver;
use crate::auth::Principal;
use crate::convert;
use crate::error::ApiError;
use crate::finance::{self, Grouping, PoolMeta, RateSource};
use crate::records::{LedgerSample, Record};

impl Driver {
    pub(super) fn pool_wire(&self, pool: &core::PoolId) -> Result<pb::Pool, ApiError> {
        self.core
            .pool(pool)
            .map(|p| convert::pool_to_wire(&p))
            .ok_or_else(|| ApiError::NotFound(format!("pool `{pool}` not found")))
    }

    fn configured(&self, pool: &core::PoolId) -> Result<(), ApiError> {
        if self.server.pool_specs.contains_key(pool) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "pool `{pool}` is not configured (configure it in the server's [[market.pools]])"
            )))
        }
    }

    pub(super) fn streaming_demand(
        &mut self,
        pool: String,
        demand: u64,
    ) -> Result<pb::Pool, ApiError> {
        let pool = core::PoolId::from(pool);
        self.configured(&pool)?;
        let now = self.now();
        self.input(
            Record::StreamingDemand {
                now,
                pool: pool.clone(),
                demand_micro_ie: demand,
            },
            "",
        )?;
        self.pool_wire(&pool)
    }

    pub(super) fn forecast(
        &mut self,
        pool: String,
        points: Vec<(u64, u64)>,
    ) -> Result<(), ApiError> {
        let pool = core::PoolId::from(pool);
        self.configured(&pool)?;
        let now = self.now();
        self.input(Record::Forecast { now, pool, points }, "")
    }

    pub(super) fn get_forecast(
        &self,
        pool: &str,
    ) -> Result<pb::GetDemandForecastResponse, ApiError> {
        let pool = core::PoolId::from(pool);
        self.configured(&pool)?;
        Ok(match self.server.forecasts.get(&pool) {
            None => pb::GetDemandForecastResponse::default(),
            Some((at, points)) => pb::GetDemandForecastResponse {
                points: points
                    .iter()
                    .map(|(t, ie)| pb::ForecastPoint {
                        time: Some(convert::ms_to_wire(*t)),
                        demand_micro_ie: *ie,
                    })
                    .collect(),
                report_time: Some(convert::ms_to_wire(*at)),
            },
        })
    }

    pub(super) fn failover(&mut self, region: String, active: bool) -> Result<(), ApiError> {
        let now = self.now();
        self.input(
            Record::Failover {
                now,
                region,
                active,
            },
            "",
        )
    }

    pub(super) fn reservations(&self) -> pb::ListReservationsResponse {
        pb::ListReservationsResponse {
            pools: self
                .server
                .pool_specs
                .keys()
                .map(|pool| pb::PoolReservations {
                    pool: pool.to_string(),
                    reservations: self
                        .server
                        .reservations
                        .get(pool)
                        .map(|r| r.iter().map(convert::reservation_to_wire).collect())
                        .unwrap_or_default(),
                })
                .collect(),
            source: self
                .reservation_source
                .clone()
                .unwrap_or_else(|| "api".into()),
        }
    }

    pub(super) fn set_reservations(
        &mut self,
        req: pb::SetReservationsRequest,
    ) -> Result<pb::Pool, ApiError> {
        if let Some(source) = &self.reservation_source {
            return Err(ApiError::FailedPrecondition(format!(
                "reservations come from `{source}`; SetReservations is refused while it is configured"
            )));
        }
        let pool = core::PoolId::from(req.pool.as_str());
        self.configured(&pool)?;
        let reservations = req
            .reservations
            .iter()
            .enumerate()
            .map(|(i, r)| convert::reservation_from_wire(r, &format!("reservations[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let now = self.now();
        self.input(
            Record::Reservations {
                now,
                pool: pool.clone(),
                reservations,
            },
            "",
        )?;
        self.pool_wire(&pool)
    }

    /// Applies a reservation source's snapshot: instance types the core's
    /// catalog lacks, then per configured pool its reservations (with their
    /// terms: the core counts each only while active) and, with `streaming`,
    /// its streaming figure as streaming demand — each only where it changed,
    /// so a steady source adds nothing to the log. Pools the server does not
    /// configure are skipped (the server configures every source pool at
    /// startup, so this is a pool added to the source since). Returns how
    /// many inputs were applied.
    pub(super) fn capacity_snapshot(
        &mut self,
        snapshot: &crate::capacity::Snapshot,
        streaming: bool,
    ) -> Result<usize, ApiError> {
        let now = self.now();
        let mut n_applied = 0;
        let new_types: Vec<core::InstanceType> = snapshot
            .instance_types
            .iter()
            .filter(|t| self.core.catalog().get(&t.name).is_none())
            .cloned()
            .collect();
        if !new_types.is_empty() {
            self.input(
                Record::InstanceTypes {
                    now,
                    types: new_types,
                },
                "",
            )?;
            n_applied += 1;
        }
        for pool in &snapshot.pools {
            let id = &pool.pool.id;
            if !self.server.pool_specs.contains_key(id) {
                tracing::warn!(pool = %id, "the reservation source reports a pool the server does not configure; restart the server to add it");
                continue;
            }
            let reservations = pool.core_reservations();
            if self.server.reservations.get(id) != Some(&reservations) {
                self.input(
                    Record::Reservations {
                        now,
                        pool: id.clone(),
                        reservations,
                    },
                    "",
                )?;
                n_applied += 1;
            }
            if let (true, Some(ie)) = (streaming, pool.streaming_ie) {
                let demand_micro_ie = ie.as_micro();
                if self.fed_streaming.get(id) != Some(&demand_micro_ie) {
                    self.input(
                        Record::StreamingDemand {
                            now,
                            pool: id.clone(),
                            demand_micro_ie,
                        },
                        "",
                    )?;
                    self.fed_streaming.insert(id.clone(), demand_micro_ie);
                    n_applied += 1;
                }
            }
        }
        Ok(n_applied)
    }

    /// The cumulative samples bounding a range: (start time, start sample,
    /// end time, end sample). An end at or after now is answered live.
    fn samples(
        &mut self,
        start: Option<u64>,
        end: Option<u64>,
    ) -> Result<(u64, LedgerSample, u64, LedgerSample), ApiError> {
        let now = self.now();
        if let (Some(s), Some(e)) = (start, end)
            && s > e
        {
            return Err(ApiError::field("start_time", "must not be after end_time"));
        }
        let decode = |(t, bytes): (u64, Vec<u8>)| -> Result<(u64, LedgerSample), ApiError> {
            let s = LedgerSample::decode(&bytes)
                .map_err(|e| ApiError::Internal(format!("ledger sample at {t}: {e}")))?;
            Ok((t, s))
        };
        let store_err = |e: crate::store::StoreError| ApiError::Internal(e.to_string());
        let empty = LedgerSample {
            entries: Vec::new(),
            pools: Vec::new(),
            prices: Vec::new(),
        };
        let (end_t, end_s) = match end {
            Some(e) if e < now => match self.store.sample_at_or_before(e).map_err(store_err)? {
                Some(x) => decode(x)?,
                None => (e, empty.clone()),
            },
            _ => (now, self.ledger_sample(now)),
        };
        let (start_t, start_s) = match start {
            None => match self.store.first_sample().map_err(store_err)? {
                Some(x) => decode(x)?,
                None => (end_t, end_s.clone()),
            },
            Some(s) => match self.store.sample_at_or_before(s).map_err(store_err)? {
                Some(x) => decode(x)?,
                // Before the first sample the ledger was empty.
                None => (s, empty),
            },
        };
        Ok((start_t, start_s, end_t, end_s))
    }

    pub(super) fn ledger(
        &mut self,
        p: &Principal,
        start: Option<u64>,
        end: Option<u64>,
    ) -> Result<pb::GetLedgerResponse, ApiError> {
        let (st, ss, et, es) = self.samples(start, end)?;
        let mut entries = convert::ledger_to_wire(&ss, &es);
        if let Some(team) = p.team() {
            entries.retain(|e| e.team == team);
        }
        Ok(pb::GetLedgerResponse {
            entries,
            start_time: Some(convert::ms_to_wire(st)),
            end_time: Some(convert::ms_to_wire(et)),
        })
    }

    pub(super) fn pool_totals(
        &mut self,
        start: Option<u64>,
        end: Option<u64>,
    ) -> Result<pb::GetPoolTotalsResponse, ApiError> {
        let (st, ss, et, es) = self.samples(start, end)?;
        Ok(pb::GetPoolTotalsResponse {
            pools: convert::pool_totals_to_wire(&ss, &es),
            start_time: Some(convert::ms_to_wire(st)),
            end_time: Some(convert::ms_to_wire(et)),
        })
    }

    /// What the finance figures need per pool: region, family (of its
    /// reservations' types), and the reserved and on-demand rates per
    /// IE-hour. The on-demand rate is the catalog reference type's price
    /// (one IE is one reference instance), which values every family's IE
    /// alike, as the IE rule does.
    fn pool_meta(&self) -> (BTreeMap<core::PoolId, PoolMeta>, u64, RateSource) {
        let catalog = self.core.catalog();
        let to_micros = |usd: f64| (usd * 1e6).round() as u64;
        let on_demand = to_micros(catalog.reference().on_demand_usd_per_hour);
        let (reserved, source) = match self.config.finance.reserved_usd_per_ie_hour {
            Some(usd) => (to_micros(usd), RateSource::Configured),
            None => (on_demand, RateSource::OnDemand),
        };
        let meta = self
            .core
            .pools()
            .into_iter()
            .map(|p| {
                let mut families: Vec<&str> = self
                    .server
                    .reservations
                    .get(&p.pool)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| catalog.get(&r.instance_type).map(|t| t.family()))
                    .collect();
                families.sort_unstable();
                families.dedup();
                let family = match families.as_slice() {
                    [] => "-".to_string(),
                    [one] => one.to_string(),
                    _ => "mixed".to_string(),
                };
                let m = PoolMeta {
                    region: p.region,
                    family,
                    reserved_rate_micros: reserved,
                    rate_source: source,
                    on_demand_rate_micros: on_demand,
                };
                (p.pool, m)
            })
            .collect();
        (meta, reserved, source)
    }

    /// The cumulative sample bounding a range at `at`: live at or after
    /// now; else the latest stored at or before `at`; else (before the
    /// first sample, e.g. one retention deleted) the earliest stored.
    fn sample_for(&self, at: u64, now: u64) -> Result<(u64, LedgerSample), ApiError> {
        if at >= now {
            return Ok((now, self.ledger_sample(now)));
        }
        let store_err = |e: crate::store::StoreError| ApiError::Internal(e.to_string());
        let found = match self.store.sample_at_or_before(at).map_err(store_err)? {
            Some(x) => Some(x),
            None => self.store.first_sample().map_err(store_err)?,
        };
        match found {
            Some((t, bytes)) => {
                let s = LedgerSample::decode(&bytes)
                    .map_err(|e| ApiError::Internal(format!("ledger sample at {t}: {e}")))?;
                Ok((t, s))
            }
            None => Ok((now, self.ledger_sample(now))),
        }
    }

    pub(super) fn utilization(
        &mut self,
        start: Option<u64>,
        end: Option<u64>,
        step_ms: u64,
        by: Grouping,
    ) -> Result<pb::GetUtilizationResponse, ApiError> {
        /// A day: the dashboard's default view.
        const DEFAULT_RANGE_MS: u64 = 24 * 3600 * 1000;
        /// Caps the work (and reply size) of one request: a week at
        /// one-minute steps.
        const MAX_STEPS: u64 = 10_080;
        let now = self.now();
        let end = end.unwrap_or(now).min(now);
        let start = start.unwrap_or(end.saturating_sub(DEFAULT_RANGE_MS));
        if start > end {
            return Err(ApiError::field("start_time", "must not be after end_time"));
        }
        // With no step asked for, hourly steps (the down-sampled resolution),
        // coarser for ranges over ~6 weeks: the totals are sums of steps, so
        // a counter reset (see `finance`) costs at most one step, not the range.
        let step = if step_ms == 0 {
            (end - start).div_ceil(1_000).max(3_600_000)
        } else {
            step_ms
        };
        if (end - start).div_ceil(step) > MAX_STEPS {
            return Err(ApiError::field(
                "step_seconds",
                format!("gives more than {MAX_STEPS} steps over the range; choose a longer step"),
            ));
        }
        let mut bounds: Vec<u64> = (0..)
            .map(|i| start + i * step)
            .take_while(|b| *b < end)
            .collect();
        bounds.push(end);
        let mut samples: Vec<(u64, LedgerSample)> = Vec::with_capacity(bounds.len());
        for b in bounds {
            let (t, s) = self.sample_for(b, now)?;
            // Bounds in one gap between samples map to the same sample.
            if samples.last().is_none_or(|(last, _)| *last < t) {
                samples.push((t, s));
            }
        }
        let (meta, reserved_rate, source) = self.pool_meta();
        let series = finance::series(&samples, &meta, by);
        let totals = finance::totals(&series);
        let (st, et) = (
            samples.first().map_or(start, |s| s.0),
            samples.last().map_or(end, |s| s.0),
        );
        Ok(pb::GetUtilizationResponse {
            series: series
                .iter()
                .map(convert::utilization_row_to_wire)
                .collect(),
            totals: totals
                .iter()
                .map(convert::utilization_row_to_wire)
                .collect(),
            start_time: Some(convert::ms_to_wire(st)),
            end_time: Some(convert::ms_to_wire(et)),
            reserved_rate_source: match source {
                RateSource::Configured => "configured",
                RateSource::OnDemand => "on-demand",
            }
            .into(),
            reserved_rate_micros: reserved_rate,
            on_demand_rate_micros: meta.values().next().map_or(0, |m| m.on_demand_rate_micros),
        })
    }
}
