//! Streaming demand per pool: the built-in diurnal generator and CSV time
//! series, sampled every `sim.demand_step`; and failover events.

use std::f64::consts::TAU;

use anyhow::{Context, Result, ensure};
use rand_distr::{Distribution, Normal};

use crate::scenario::{DemandKind, DemandSpec, Scenario};

/// One pool's demand reports: `(time_ms, ie)` every `demand_step` from zero.
#[derive(Clone, Debug)]
pub struct DemandSeries {
    /// Index of the pool in `fleet.pools`.
    pub pool_idx: usize,
    /// Reports in time order.
    pub points: Vec<(u64, f64)>,
}

/// Builds every pool's demand reports for the whole run.
pub fn build(sc: &Scenario, seed: u64) -> Result<Vec<DemandSeries>> {
    let mut out = Vec::new();
    for (i, d) in sc.demand.iter().enumerate() {
        let pool_idx = sc
            .fleet
            .pools
            .iter()
            .position(|p| p.id == d.pool)
            .expect("validated");
        let region = &sc.fleet.pools[pool_idx].region;
        let offset_h = sc
            .fleet
            .regions
            .iter()
            .find(|r| &r.name == region)
            .map_or(0.0, |r| r.utc_offset_hours);
        let curve = match d.kind {
            DemandKind::Diurnal => Curve::Diurnal { offset_h },
            DemandKind::Csv => {
                let rel = d.file.as_deref().expect("validated");
                let path = sc.resolve(rel);
                Curve::Csv(
                    load_csv(&path)
                        .with_context(|| format!("`demand[{i}].file` ({})", path.display()))?,
                )
            }
        };
        let mut rng = crate::rng::stream(seed, &format!("demand/{}", d.pool));
        let noise = (d.noise > 0.0).then(|| Normal::new(0.0, d.noise).expect("validated"));
        let step = sc.sim.demand_step.0;
        let mut points = Vec::new();
        let mut t = 0;
        while t <= sc.sim.duration.0 {
            let level = curve.level(d, t);
            let mut ie = d.trough_ie + level * (d.peak_ie - d.trough_ie);
            if let Some(n) = &noise {
                ie *= 1.0 + n.sample(&mut rng);
            }
            points.push((t, ie.max(0.0)));
            t += step;
        }
        out.push(DemandSeries { pool_idx, points });
    }
    Ok(out)
}

enum Curve {
    Diurnal { offset_h: f64 },
    Csv(Vec<(u64, f64)>),
}

impl Curve {
    /// Position between trough (0) and peak (1) at simulation time `t_ms`.
    fn level(&self, d: &DemandSpec, t_ms: u64) -> f64 {
        match self {
            Curve::Diurnal { offset_h } => {
                let local_h = t_ms as f64 / 3_600_000.0 + offset_h;
                (1.0 + (TAU * (local_h - d.peak_hour) / 24.0).cos()) / 2.0
            }
            Curve::Csv(points) => {
                let period = points.last().map_or(1, |p| p.0) + step_of(points);
                let t = (t_ms / 1000 + d.shift.0 / 1000) % period.max(1);
                interpolate(points, t)
            }
        }
    }
}

fn step_of(points: &[(u64, f64)]) -> u64 {
    if points.len() >= 2 {
        points[1].0 - points[0].0
    } else {
        1
    }
}

/// Linear interpolation in a sorted `(time_s, level)` series, holding the ends.
fn interpolate(points: &[(u64, f64)], t: u64) -> f64 {
    let i = points.partition_point(|p| p.0 <= t);
    if i == 0 {
        return points[0].1;
    }
    if i == points.len() {
        return points[i - 1].1;
    }
    let (t0, v0) = points[i - 1];
    let (t1, v1) = points[i];
    v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64
}

/// Reads a `time_s,value` CSV (lines starting with `#` are comments) and
/// min–max normalizes the values to `[0, 1]`.
fn load_csv(path: &std::path::Path) -> Result<Vec<(u64, f64)>> {
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_path(path)
        .context("opening the CSV file")?;
    let headers = reader.headers().context("reading the CSV header")?.clone();
    ensure!(
        headers.len() >= 2 && &headers[0] == "time_s" && &headers[1] == "value",
        "the header must be `time_s,value`, found `{}`",
        headers.iter().collect::<Vec<_>>().join(",")
    );
    let mut points: Vec<(u64, f64)> = Vec::new();
    for (n, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("row {}", n + 1))?;
        let t: u64 = row[0].parse().with_context(|| {
            format!("row {}: time_s `{}` is not a whole number", n + 1, &row[0])
        })?;
        let v: f64 = row[1]
            .parse()
            .with_context(|| format!("row {}: value `{}` is not a number", n + 1, &row[1]))?;
        ensure!(v.is_finite(), "row {}: value must be finite", n + 1);
        if let Some(last) = points.last() {
            ensure!(t > last.0, "row {}: time_s must increase", n + 1);
        }
        points.push((t, v));
    }
    ensure!(points.len() >= 2, "needs at least two rows");
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    for p in &mut points {
        p.1 = (p.1 - lo) / span;
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_holds_ends_and_is_linear_between() {
        let pts = [(0, 0.0), (10, 1.0), (20, 0.0)];
        let cases = [(0, 0.0), (5, 0.5), (10, 1.0), (15, 0.5), (25, 0.0)];
        for (t, want) in cases {
            assert!((interpolate(&pts, t) - want).abs() < 1e-12, "t={t}");
        }
    }
}
