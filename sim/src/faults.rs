//! Executor faults drawn up front from the seed's `faults/host/<n>` streams
//! (so every policy sees the same failures), plus the scheduled ones:
//! host losses and repairs, drains and their end, whole-pool losses.

use rand_distr::{Distribution, Exp};

use crate::rng;
use crate::scenario::{FaultKind, Scenario};

/// One fault event, on the executors of the simulation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Host `host` is lost with its work.
    HostDown(u32),
    /// Host `host` is back, empty.
    HostUp(u32),
    /// Host `host` drains.
    DrainStart(u32),
    /// Host `host` takes new work again.
    DrainEnd(u32),
    /// `[[faults.scheduled]]` entry `i` happens (hosts are picked when it does).
    Scheduled(u32),
}

/// The random faults of every host over `[0, duration]`, and the scheduled
/// ones, as `(time_ms, fault)` in no particular order. `n_hosts`: hosts in
/// executor index order.
pub fn build(sc: &Scenario, seed: u64, n_hosts: u32) -> Vec<(u64, Fault)> {
    let f = &sc.faults;
    let end = sc.sim.duration.0;
    let mut out = Vec::new();
    let per_ms = |per_day: f64| per_day / 86_400_000.0;
    for h in 0..n_hosts {
        let mut draws = rng::stream(seed, &format!("faults/host/{h}"));
        if f.host_failures_per_day > 0.0 {
            for t in arrivals(&mut draws, per_ms(f.host_failures_per_day), end) {
                out.push((t, Fault::HostDown(h)));
                if let Some(r) = f.host_repair {
                    out.push((t + r.0, Fault::HostUp(h)));
                }
            }
        }
        if f.host_drains_per_day > 0.0 {
            for t in arrivals(&mut draws, per_ms(f.host_drains_per_day), end) {
                out.push((t, Fault::DrainStart(h)));
                out.push((t + f.drain_duration.0, Fault::DrainEnd(h)));
            }
        }
    }
    for (i, s) in f.scheduled.iter().enumerate() {
        out.push((s.at.0, Fault::Scheduled(i as u32)));
    }
    out
}

/// The faults a scheduled entry turns into once its hosts are known
/// (`hosts`: the pool's live hosts in host order) at `now`.
pub fn expand(sc: &Scenario, i: u32, now: u64, live_hosts: &[u32]) -> Vec<(u64, Fault)> {
    let s = &sc.faults.scheduled[i as usize];
    let n = match s.kind {
        FaultKind::PoolLost => live_hosts.len(),
        _ => s.hosts.unwrap_or(0) as usize,
    };
    let mut out = Vec::new();
    for &h in live_hosts.iter().take(n) {
        let (start, stop) = match s.kind {
            FaultKind::HostLost | FaultKind::PoolLost => (Fault::HostDown(h), Fault::HostUp(h)),
            FaultKind::HostDrain => (Fault::DrainStart(h), Fault::DrainEnd(h)),
        };
        out.push((now, start));
        if let Some(d) = s.duration {
            out.push((now + d.0, stop));
        }
    }
    out
}

/// Poisson arrivals at `per_ms` in `(0, end)`.
fn arrivals(draws: &mut rng::SimRng, per_ms: f64, end: u64) -> Vec<u64> {
    let gap = Exp::new(per_ms).expect("positive rate");
    let mut t = 0.0;
    let mut out = Vec::new();
    loop {
        t += gap.sample(draws);
        if t >= end as f64 {
            return out;
        }
        out.push(t as u64);
    }
}
