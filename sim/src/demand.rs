//! Streaming demand per pool: the built-in diurnal generator and CSV time
//! series, sampled every `sim.demand_step`; and failover events.

use std::f64::consts::TAU;

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand_distr::{Distribution, Normal};

use crate::scenario::{DemandKind, DemandSpec, Scenario, ValueScale};

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
                    load_csv(&path, d)
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

/// Reads a demand CSV: `#` comment lines, a header naming (at least) the
/// spec's time and value columns, then rows with increasing times. Returns
/// `(time_s, level)` with levels in `[0, 1]` (min–max normalized, or taken
/// as fractions). Errors name the file's line.
fn load_csv(path: &std::path::Path, d: &DemandSpec) -> Result<Vec<(u64, f64)>> {
    let file = std::fs::File::open(path).context("opening the CSV file")?;
    parse_csv(file, d)
}

fn parse_csv(input: impl std::io::Read, d: &DemandSpec) -> Result<Vec<(u64, f64)>> {
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let headers = reader.headers().context("reading the CSV header")?.clone();
    // The reader stands at the start of the line after the header.
    let header_line = reader.position().line().saturating_sub(1);
    let column = |name: &str, key: &str| {
        headers.iter().position(|h| h == name).with_context(|| {
            format!(
                "line {header_line}: the header has no column `{name}` (`demand.{key}`); found `{}`",
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })
    };
    let (tc, vc) = (
        column(&d.time_column, "time_column")?,
        column(&d.value_column, "value_column")?,
    );
    let unit_ms = d.time_unit.0 as f64;
    let mut points: Vec<(u64, f64)> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader
            .read_record(&mut record)
            .with_context(|| format!("line {}", reader.position().line()))?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, csv::Position::line);
        let field = |i: usize, name: &str| -> Result<&str> {
            match record.get(i) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => bail!("line {line}: missing value in column `{name}`"),
            }
        };
        let t_raw = field(tc, &d.time_column)?;
        let t: f64 = t_raw.parse().map_err(|_| {
            anyhow!(
                "line {line}: `{}` value `{t_raw}` is not a number",
                d.time_column
            )
        })?;
        ensure!(
            t.is_finite() && t >= 0.0,
            "line {line}: `{}` value `{t_raw}` must be a finite, non-negative time",
            d.time_column
        );
        let t_s = (t * unit_ms / 1000.0).round() as u64;
        let v_raw = field(vc, &d.value_column)?;
        let v: f64 = v_raw.parse().map_err(|_| {
            anyhow!(
                "line {line}: `{}` value `{v_raw}` is not a number",
                d.value_column
            )
        })?;
        ensure!(
            v.is_finite() && v >= 0.0,
            "line {line}: `{}` value `{v_raw}` must be finite and non-negative (demand cannot be negative)",
            d.value_column
        );
        if d.value_scale == ValueScale::Fraction {
            ensure!(
                v <= 1.0,
                "line {line}: `{}` value `{v_raw}` is above 1 (`value_scale = \"fraction\"` takes values in [0, 1])",
                d.value_column
            );
        }
        if let Some(last) = points.last() {
            ensure!(
                t_s > last.0,
                "line {line}: `{}` must increase (in whole seconds) from row to row",
                d.time_column
            );
        }
        points.push((t_s, v));
    }
    ensure!(points.len() >= 2, "needs at least two data rows");
    if d.value_scale == ValueScale::MinMax {
        let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        for p in &mut points {
            p.1 = (p.1 - lo) / span;
        }
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

    fn spec(extra: &str) -> DemandSpec {
        let text = format!(
            "pool = \"p\"\nkind = \"csv\"\npeak_ie = 10\ntrough_ie = 1\nfile = \"x.csv\"\n{extra}"
        );
        toml::from_str(&text).expect("demand spec parses")
    }

    #[test]
    fn named_columns_with_a_time_unit() {
        let d = spec(
            "time_column = \"minute\"\nvalue_column = \"demand_fraction\"\ntime_unit = \"1m\"\nvalue_scale = \"fraction\"",
        );
        let csv = "# a comment\nminute,other,demand_fraction\n0,x,0.25\n5,y,1\n10,z,0\n";
        let pts = parse_csv(csv.as_bytes(), &d).expect("parses");
        assert_eq!(pts, vec![(0, 0.25), (300, 1.0), (600, 0.0)]);
        // Min–max (the default) stretches the same values over [0, 1].
        let d = spec(
            "time_column = \"minute\"\nvalue_column = \"demand_fraction\"\ntime_unit = \"1m\"",
        );
        let csv = "minute,demand_fraction\n0,2\n5,4\n10,3\n";
        assert_eq!(
            parse_csv(csv.as_bytes(), &d).expect("parses"),
            vec![(0, 0.0), (300, 1.0), (600, 0.5)]
        );
    }

    /// Every bad file names the line (counting comments and the header) and the column.
    #[test]
    fn bad_rows_name_their_line() {
        let named = "time_column = \"minute\"\nvalue_column = \"demand_fraction\"";
        let cases = [
            (
                "",
                "time_s,value\n0,1\n300,-2\n",
                "line 3: `value` value `-2` must be finite and non-negative",
            ),
            (
                "",
                "time_s,value\n0,1\n300,\n",
                "line 3: missing value in column `value`",
            ),
            (
                "",
                "time_s,value\n0,1\n300\n",
                "line 3: missing value in column `value`",
            ),
            (
                "",
                "# c\n# c\ntime_s,value\n0,1\nsoon,2\n",
                "line 5: `time_s` value `soon` is not a number",
            ),
            (
                "",
                "time_s,value\n0,1\n0,2\n",
                "line 3: `time_s` must increase",
            ),
            ("", "time_s,value\n0,1\n", "at least two data rows"),
            (
                "",
                "t,v\n0,1\n1,2\n",
                "line 1: the header has no column `time_s` (`demand.time_column`)",
            ),
            (
                named,
                "minute,demand\n0,1\n1,2\n",
                "no column `demand_fraction` (`demand.value_column`); found `minute,demand`",
            ),
            (
                "value_scale = \"fraction\"",
                "time_s,value\n0,0.5\n1,1.5\n",
                "line 3: `value` value `1.5` is above 1",
            ),
            (
                "",
                "time_s,value\n0,1\n1,NaN\n",
                "line 3: `value` value `NaN` must be finite",
            ),
        ];
        for (extra, csv, want) in cases {
            let err = format!(
                "{:#}",
                parse_csv(csv.as_bytes(), &spec(extra)).expect_err(csv)
            );
            assert!(
                err.contains(want),
                "{csv:?}: `{err}` does not contain `{want}`"
            );
        }
    }
}
