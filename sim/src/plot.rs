//! SVG plots with plotters: stacked capacity over time, queue depth, and
//! preemptions for a run; a policy comparison for a sweep.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::engine::Outcome;

const W: u32 = 1100;
const H: u32 = 420;

/// Writes `capacity.svg`, `queue.svg` and `preemptions.svg` into `dir`.
pub fn run_plots(out: &Outcome, dir: &Path) -> Result<()> {
    capacity(out, &dir.join("capacity.svg"))?;
    queue(out, &dir.join("queue.svg"))?;
    preemptions(out, &dir.join("preemptions.svg"))?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

type Root<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type TimeChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A white canvas at `path` for one run plot.
fn canvas(path: &Path) -> Result<Root<'_>> {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    Ok(root)
}

/// The frame every run plot shares: "scenario / policy — title", hours on x
/// from 0 to the run's end, `y_desc` on y from 0 to `y_max`.
fn time_chart<'a, 'b>(
    root: &'a Root<'b>,
    out: &Outcome,
    title: &str,
    y_desc: &str,
    y_max: f64,
) -> Result<TimeChart<'a, 'b>> {
    let t_max = out.summary.duration_h.max(1e-9);
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!(
                "{} / {} — {title}",
                out.summary.scenario, out.summary.policy
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// Splits one pool's reserved IE into streaming, headroom kept, leased and
/// idle parts that add up to exactly reserved: streaming first (capped at
/// reserved), then leased (capped at what streaming leaves), then the
/// headroom still kept, and the rest idle. Headroom eaten by leases beyond
/// supply shows once, as leased; a shortfall shows as a stack at reserved.
pub fn capacity_split(reserved: f64, streaming: f64, headroom: f64, leased: f64) -> [f64; 4] {
    let s = streaming.clamp(0.0, reserved);
    let l = leased.clamp(0.0, reserved - s);
    let h = headroom.clamp(0.0, reserved - s - l);
    [s, h, l, reserved - s - l - h]
}

/// Fleet-wide (all market-managed pools) streaming, headroom, leased and
/// idle IE per sample, stacked: the top of the stack is the reserved IE,
/// drawn as a line; supply is drawn as a dashed line.
fn capacity(out: &Outcome, path: &Path) -> Result<()> {
    // (t, [streaming, headroom, leased, idle], reserved, supply)
    let mut rows: Vec<(f64, [f64; 4], f64, f64)> = Vec::new();
    for s in &out.pool_series {
        let (Some(h), Some(l), Some(sup)) = (s.headroom_ie, s.leased_ie, s.supply_ie) else {
            continue;
        };
        let part = capacity_split(s.reserved_ie, s.streaming_ie, h, l);
        match rows.last_mut() {
            Some((t, acc, r, su)) if *t == s.t_h => {
                acc.iter_mut().zip(part).for_each(|(a, p)| *a += p);
                *r += s.reserved_ie;
                *su += sup;
            }
            _ => rows.push((s.t_h, part, s.reserved_ie, sup)),
        }
    }
    let layers = [
        ("idle (supply not leased)", RGBColor(200, 200, 200)),
        ("leased to batch", RGBColor(46, 139, 87)),
        ("headroom", RGBColor(255, 165, 0)),
        ("streaming", RGBColor(65, 105, 225)),
    ];
    let root = canvas(path)?;
    let y_max = rows.iter().map(|r| r.2).fold(1.0, f64::max) * 1.05;
    let mut chart = time_chart(
        &root,
        out,
        "capacity in instance equivalents (all market pools)",
        "IE",
        y_max,
    )?;
    // Draw the tallest cumulative layer first so lower layers paint over it.
    for (k, &(label, color)) in layers.iter().enumerate() {
        let upto = 4 - k; // idle: all four; streaming: only itself
        let series = rows
            .iter()
            .map(|(t, p, ..)| (*t, p[..upto].iter().sum::<f64>()));
        chart
            .draw_series(AreaSeries::new(series, 0.0, color.mix(0.85)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            rows.iter().map(|r| (r.0, r.2)),
            BLACK.stroke_width(2),
        ))
        .map_err(err)?
        .label("reserved")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            rows.iter().map(|r| (r.0, r.1[0] + r.1[1] + r.3)),
            6,
            4,
            RGBColor(139, 0, 0).stroke_width(2),
        ))
        .map_err(err)?
        .label("streaming + headroom + supply (leases above it eat headroom)")
        .legend(|(x, y)| {
            PathElement::new([(x, y), (x + 15, y)], RGBColor(139, 0, 0).stroke_width(2))
        });
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn queue(out: &Outcome, path: &Path) -> Result<()> {
    let root = canvas(path)?;
    let y_max = out
        .fleet_series
        .iter()
        .map(|s| s.queue_depth.max(s.tasks_placed) as f64)
        .fold(1.0, f64::max)
        * 1.05;
    let mut chart = time_chart(&root, out, "queued and placed tasks", "tasks", y_max)?;
    let queued = out
        .fleet_series
        .iter()
        .map(|s| (s.t_h, s.queue_depth as f64));
    chart
        .draw_series(LineSeries::new(queued, RED.stroke_width(2)))
        .map_err(err)?
        .label("queue depth (pending tasks)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED.stroke_width(2)));
    let placed = out
        .fleet_series
        .iter()
        .map(|s| (s.t_h, s.tasks_placed as f64));
    chart
        .draw_series(LineSeries::new(placed, BLUE.stroke_width(2)))
        .map_err(err)?
        .label("placed tasks")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn preemptions(out: &Outcome, path: &Path) -> Result<()> {
    let root = canvas(path)?;
    let t_max = out.summary.duration_h.max(1e-9);
    let y_max = out
        .fleet_series
        .iter()
        .map(|s| f64::from(s.preemptions))
        .fold(1.0, f64::max)
        * 1.1;
    let title = format!(
        "preemptions per sample interval ({} total)",
        out.summary.n_preemptions
    );
    let mut chart = time_chart(&root, out, &title, "preemptions", y_max)?;
    let step = out
        .fleet_series
        .get(1)
        .map_or(t_max, |s| s.t_h - out.fleet_series[0].t_h);
    chart
        .draw_series(
            out.fleet_series
                .iter()
                .filter(|s| s.preemptions > 0)
                .map(|s| {
                    // A sample counts the preemptions of the interval before it.
                    Rectangle::new(
                        [(s.t_h - step, 0.0), (s.t_h, f64::from(s.preemptions))],
                        RGBColor(178, 34, 34).filled(),
                    )
                }),
        )
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One metric of a sweep for one policy: its values over seeds.
pub struct SweepBar {
    /// Policy name.
    pub policy: String,
    /// Median over seeds.
    pub p50: f64,
    /// 90th percentile over seeds.
    pub p90: f64,
    /// Minimum over seeds.
    pub min: f64,
    /// Maximum over seeds.
    pub max: f64,
}

/// A grid of panels, one per metric: for each policy a min–max bar with
/// the p50 (circle) and p90 (cross) over seeds.
pub fn sweep(path: &Path, title: &str, panels: &[(String, Vec<SweepBar>)]) -> Result<()> {
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (W, 330 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let areas = root.split_evenly((rows, cols));
    for ((metric, bars), area) in panels.iter().zip(areas) {
        let n = bars.len();
        let lo = bars.iter().map(|b| b.min).fold(f64::INFINITY, f64::min);
        let hi = bars.iter().map(|b| b.max).fold(f64::NEG_INFINITY, f64::max);
        let (y0, y1, zoomed) = sweep_axis(lo, hi);
        let caption = if zoomed {
            format!("{metric} — axis from {}, not zero", short(y0))
        } else {
            metric.clone()
        };
        let names: Vec<String> = bars.iter().map(|b| b.policy.clone()).collect();
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(65)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.08, b.min), (x + 0.08, b.max)],
                    RGBColor(100, 149, 237).mix(0.6).filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Circle::new((x, b.p50), 5, BLACK.filled())))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Cross::new(
                    (x, b.p90),
                    6,
                    RED.stroke_width(2),
                )))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The y range of a sweep panel for values in `[lo, hi]`: from zero when
/// that still shows the differences between policies, else zoomed onto
/// them (`true`: the axis does not start at zero, and the caption says so).
/// Zoom when the spread is under a fifth of the largest magnitude: from
/// zero, a 20% difference is still a visible fifth of the panel.
pub fn sweep_axis(lo: f64, hi: f64) -> (f64, f64, bool) {
    let spread = hi - lo;
    let scale = hi.abs().max(lo.abs());
    if lo >= 0.0 && spread >= 0.2 * scale {
        let pad = (spread * 0.1).max(1e-9);
        return (0.0, hi + pad, false);
    }
    if hi <= 0.0 && spread >= 0.2 * scale {
        let pad = (spread * 0.1).max(1e-9);
        return (lo - pad, 0.0, false);
    }
    // All policies agree within 20%: show where they differ.
    let pad = (spread * 0.15).max(scale * 0.005).max(1e-9);
    let (y0, y1) = (lo - pad, hi + pad);
    let crosses_zero = y0 <= 0.0 && y1 >= 0.0;
    (y0, y1, !crosses_zero)
}

fn short(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capacity_stack_never_exceeds_reserved() {
        let cases = [
            // (reserved, streaming, headroom, leased)
            (10.0, 4.0, 2.0, 3.0),  // ordinary
            (10.0, 4.0, 2.0, 6.0),  // leases beyond supply eat headroom
            (10.0, 12.0, 1.2, 0.0), // streaming above reserved
            (10.0, 8.0, 4.0, 0.0),  // shortfall: streaming + headroom above reserved
            (10.0, 0.0, 0.0, 15.0), // unreasonably many leases
        ];
        for (r, s, h, l) in cases {
            let p = capacity_split(r, s, h, l);
            let sum: f64 = p.iter().sum();
            assert!((sum - r).abs() < 1e-9, "{p:?}");
            assert!(p.iter().all(|v| *v >= 0.0), "{p:?}");
        }
        assert_eq!(capacity_split(10.0, 4.0, 2.0, 6.0), [4.0, 0.0, 6.0, 0.0]);
        assert_eq!(capacity_split(10.0, 4.0, 2.0, 3.0), [4.0, 2.0, 3.0, 1.0]);
    }

    #[test]
    fn sweep_axes_zoom_only_when_differences_are_small() {
        // Harvest 40% vs 80%: from zero.
        assert!(!sweep_axis(40.0, 80.0).2);
        assert_eq!(sweep_axis(40.0, 80.0).0, 0.0);
        // Goodput 10,000 vs 10,150 CPU-h: zoomed, and the differences fill the panel.
        let (y0, y1, zoomed) = sweep_axis(10_000.0, 10_150.0);
        assert!(zoomed);
        assert!(y0 > 9_900.0 && y1 < 10_250.0, "{y0}..{y1}");
        // One value: still a range around it.
        let (y0, y1, _) = sweep_axis(5.0, 5.0);
        assert!(y0 < 5.0 && y1 > 5.0);
        // Zero everywhere: a range that includes zero, not called zoomed.
        let (y0, y1, zoomed) = sweep_axis(0.0, 0.0);
        assert!(y0 <= 0.0 && y1 > 0.0 && !zoomed);
    }
}
