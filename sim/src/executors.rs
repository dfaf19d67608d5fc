//! The simulated executors' own bookkeeping of what runs where, and the IE
//! accounting built from it, independent of the core's: the conservation
//! checks compare the two, so they fail when the core's leases, host
//! allocations or ledger drift from what actually runs.
//!
//! ```text
//!   Launch / exit / stop / host lost ─▶ per host: runs, allocation, flex & critical counts
//!                                        └▶ per pool: leased IE (hosts with flex runs),
//!                                           held IE, critical-only IE
//!   core's supply / headroom / streaming after every market input ─┐
//!                                                                  ▼
//!              exact integrals between events (micro-IE × ms): within / beyond supply,
//!              shortfall, violation episodes and time beyond one grace period
//! ```

use std::collections::{BTreeMap, HashMap};

use ebb_scheduler::{HostId, JobId, PoolId, Resources, Scheduler, TaskId, Tier};

/// Micro-IE × ms in one IE-hour.
const MICRO_IE_MS_PER_IE_HOUR: f64 = 1e6 * 3.6e6;

/// One executor host as its executor sees it.
#[derive(Clone, Debug)]
struct ExecHost {
    id: HostId,
    pool: u16,
    ie_micro: u64,
    capacity: Resources,
    alive: bool,
    /// Live runs (launched, not yet exited or stopped), with what they asked for.
    runs: Vec<(TaskId, Tier, Resources)>,
    allocated: Resources,
    n_flex: u32,
    n_critical: u32,
    /// Σ over flex runs of host IE × the run's dominant share of the host.
    held_micro: f64,
}

impl ExecHost {
    fn share_micro(&self, request: &Resources) -> f64 {
        let share = |r: u64, c: u64| if c == 0 { 0.0 } else { r as f64 / c as f64 };
        let dominant = share(request.cpu_millis, self.capacity.cpu_millis)
            .max(share(request.memory_mib, self.capacity.memory_mib))
            .max(share(request.gpus, self.capacity.gpus));
        self.ie_micro as f64 * dominant.min(1.0)
    }

    fn leased(&self) -> bool {
        self.alive && self.n_flex > 0
    }

    fn critical_only(&self) -> bool {
        self.alive && self.n_flex == 0 && self.n_critical > 0
    }
}

/// IE integrals of one pool over the run, from the executors' view and the
/// market figures the core reported (micro-IE × ms unless named otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolIntegrals {
    /// Reserved (the scenario's reservations × the catalog's IE).
    pub reserved: u128,
    /// Streaming demand in effect, capped at reserved.
    pub streaming: u128,
    /// Headroom the core kept.
    pub headroom: u128,
    /// Supply the core offered.
    pub supply: u128,
    /// Leased: IE of hosts carrying flex runs, capped at reserved − streaming.
    pub leased: u128,
    /// Leased within supply: min(leased, supply).
    pub within_supply: u128,
    /// Leased beyond supply: max(0, leased − supply).
    pub beyond_supply: u128,
    /// The part of `beyond_supply` more than one grace period into a violation.
    pub beyond_after_grace: u128,
    /// Headroom shortfall: max(0, streaming + headroom − reserved).
    pub shortfall: u128,
    /// IE of hosts carrying critical runs and no flex run (held outside the market).
    pub critical: u128,
    /// min(supply, IE of the pool's live executor hosts): the most batch could have leased.
    pub reachable: u128,
    /// Σ host IE × dominant share of the flex runs on leased hosts.
    pub held: f64,
    /// Time with leased > supply, ms.
    pub violating_ms: u64,
    /// Time more than one grace period into a violation, ms.
    pub violating_after_grace_ms: u64,
    /// Violation episodes (leased went from ≤ supply to > supply).
    pub n_violations: u64,
    /// Episodes that lasted longer than one grace period.
    pub n_long_violations: u64,
}

impl PoolIntegrals {
    /// `v` in IE-hours.
    pub fn ie_h(v: u128) -> f64 {
        v as f64 / MICRO_IE_MS_PER_IE_HOUR
    }
}

/// One pool's current figures (micro-IE) and their integrals.
#[derive(Clone, Debug)]
struct PoolBook {
    managed: bool,
    reserved: u64,
    streaming: u64,
    headroom: u64,
    supply: u64,
    leased: u64,
    held: f64,
    critical: u64,
    /// IE of the pool's live executor hosts.
    host_ie: u64,
    last_ms: u64,
    violating_since: Option<u64>,
    acc: PoolIntegrals,
}

impl PoolBook {
    /// Integrates the figures in force since the last change up to `now`.
    fn accrue(&mut self, now: u64, grace_ms: u64) {
        let dt = now.saturating_sub(self.last_ms);
        if dt > 0 && self.managed {
            let d = u128::from(dt);
            let a = &mut self.acc;
            let streaming = self.streaming.min(self.reserved);
            let leased = self.leased.min(self.reserved - streaming);
            let beyond = self.leased.saturating_sub(self.supply);
            a.reserved += u128::from(self.reserved) * d;
            a.streaming += u128::from(streaming) * d;
            a.headroom += u128::from(self.headroom) * d;
            a.supply += u128::from(self.supply) * d;
            a.leased += u128::from(leased) * d;
            a.within_supply += u128::from(self.leased.min(self.supply)) * d;
            a.beyond_supply += u128::from(beyond) * d;
            a.shortfall +=
                u128::from((self.streaming + self.headroom).saturating_sub(self.reserved)) * d;
            a.held += self.held * dt as f64;
            a.reachable += u128::from(self.supply.min(self.host_ie)) * d;
            if let Some(since) = self.violating_since {
                a.violating_ms += dt;
                let from = self.last_ms.max(since + grace_ms);
                if now > from {
                    a.beyond_after_grace += u128::from(beyond) * u128::from(now - from);
                    a.violating_after_grace_ms += now - from;
                }
            }
        }
        if dt > 0 {
            self.acc.critical += u128::from(self.critical) * u128::from(dt);
        }
        self.last_ms = self.last_ms.max(now);
    }

    /// After a change at `now`: opens or closes a violation episode.
    fn update_violation(&mut self, now: u64, grace_ms: u64) {
        let violating = self.managed && self.leased > self.supply;
        match (violating, self.violating_since) {
            (true, None) => {
                self.violating_since = Some(now);
                self.acc.n_violations += 1;
            }
            (false, Some(since)) => {
                if now - since > grace_ms {
                    self.acc.n_long_violations += 1;
                }
                self.violating_since = None;
            }
            _ => {}
        }
    }
}

/// Every simulated executor and the per-pool accounting built from them.
#[derive(Debug)]
pub struct Executors {
    hosts: Vec<ExecHost>,
    by_id: HashMap<HostId, u32>,
    pools: Vec<PoolBook>,
    grace_ms: u64,
    /// Test hook: forget the n-th release (see [`crate::RunOptions`]).
    forget_release: Option<u64>,
    n_releases: u64,
}

impl Executors {
    /// Pools in scenario order: whether each is market-managed and its
    /// reserved micro-IE. `grace_ms`: how long a violation may last before
    /// it counts as beyond one grace period.
    pub fn new(
        managed: &[bool],
        reserved_micro: &[u64],
        grace_ms: u64,
        forget_release: Option<u64>,
    ) -> Self {
        let pools = managed
            .iter()
            .zip(reserved_micro)
            .map(|(&managed, &reserved)| PoolBook {
                managed,
                reserved,
                streaming: 0,
                headroom: 0,
                supply: 0,
                leased: 0,
                held: 0.0,
                critical: 0,
                host_ie: 0,
                last_ms: 0,
                violating_since: None,
                acc: PoolIntegrals::default(),
            })
            .collect();
        Executors {
            hosts: Vec::new(),
            by_id: HashMap::new(),
            pools,
            grace_ms,
            forget_release,
            n_releases: 0,
        }
    }

    /// A host of the scenario's fleet, added before the run starts; returns its index.
    pub fn add_host(&mut self, id: HostId, pool: u16, ie_micro: u64, capacity: Resources) -> u32 {
        let idx = self.hosts.len() as u32;
        self.pools[pool as usize].host_ie += ie_micro;
        self.by_id.insert(id.clone(), idx);
        self.hosts.push(ExecHost {
            id,
            pool,
            ie_micro,
            capacity,
            alive: true,
            runs: Vec::new(),
            allocated: Resources::default(),
            n_flex: 0,
            n_critical: 0,
            held_micro: 0.0,
        });
        idx
    }

    /// The index of host `id`.
    pub fn host_idx(&self, id: &HostId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The pool (scenario index) of host `h`.
    pub fn pool_of(&self, h: u32) -> u16 {
        self.hosts[h as usize].pool
    }

    /// Host `h`'s id.
    pub fn host_id(&self, h: u32) -> &HostId {
        &self.hosts[h as usize].id
    }

    /// Hosts of pool `pool` that are alive, in index order.
    pub fn live_hosts_of(&self, pool: u16) -> Vec<u32> {
        (0..self.hosts.len() as u32)
            .filter(|&h| self.hosts[h as usize].pool == pool && self.hosts[h as usize].alive)
            .collect()
    }

    /// Number of hosts ever added.
    pub fn n_hosts(&self) -> u32 {
        self.hosts.len() as u32
    }

    /// True if host `h` is up.
    pub fn is_alive(&self, h: u32) -> bool {
        self.hosts[h as usize].alive
    }

    /// Applies `change` to host `h` and moves its pool's figures with it.
    fn change_host(&mut self, now: u64, h: u32, change: impl FnOnce(&mut ExecHost)) {
        let host = &mut self.hosts[h as usize];
        let (was_leased, was_critical, was_held, was_alive) = (
            host.leased(),
            host.critical_only(),
            host.held_micro,
            host.alive,
        );
        let pool = &mut self.pools[host.pool as usize];
        pool.accrue(now, self.grace_ms);
        change(host);
        let (ie, leased, critical) = (host.ie_micro, host.leased(), host.critical_only());
        let held_delta =
            if leased { host.held_micro } else { 0.0 } - if was_leased { was_held } else { 0.0 };
        match (was_leased, leased) {
            (false, true) => pool.leased += ie,
            (true, false) => pool.leased -= ie,
            _ => {}
        }
        match (was_critical, critical) {
            (false, true) => pool.critical += ie,
            (true, false) => pool.critical -= ie,
            _ => {}
        }
        pool.held += held_delta;
        match (was_alive, host.alive) {
            (false, true) => pool.host_ie += ie,
            (true, false) => pool.host_ie -= ie,
            _ => {}
        }
        pool.update_violation(now, self.grace_ms);
    }

    /// The executor of host `h` received a Launch for `task`.
    pub fn launch(&mut self, now: u64, h: u32, task: TaskId, tier: Tier, request: &Resources) {
        let share = self.hosts[h as usize].share_micro(request);
        self.change_host(now, h, |host| {
            host.allocated
                .checked_add_assign(request)
                .expect("executor allocation overflow");
            match tier {
                Tier::Flex => {
                    host.n_flex += 1;
                    host.held_micro += share;
                }
                Tier::Critical => host.n_critical += 1,
            }
            host.runs.push((task, tier, request.clone()));
        });
    }

    /// The run of `task` on host `h` ended (exited, failed or stopped).
    pub fn release(&mut self, now: u64, h: u32, task: TaskId) {
        self.n_releases += 1;
        if self.forget_release == Some(self.n_releases) {
            return;
        }
        let Some(at) = self.hosts[h as usize].runs.iter().position(|r| r.0 == task) else {
            return;
        };
        let share = {
            let host = &self.hosts[h as usize];
            host.share_micro(&host.runs[at].2)
        };
        self.change_host(now, h, |host| {
            let (_, tier, request) = host.runs.swap_remove(at);
            host.allocated
                .checked_sub_assign(&request)
                .expect("executor allocation underflow");
            match tier {
                Tier::Flex => {
                    host.n_flex -= 1;
                    host.held_micro = if host.n_flex == 0 {
                        0.0
                    } else {
                        host.held_micro - share
                    };
                }
                Tier::Critical => host.n_critical -= 1,
            }
        });
    }

    /// Host `h` is gone with everything on it; returns the tasks that ran there.
    pub fn host_lost(&mut self, now: u64, h: u32) -> Vec<TaskId> {
        let mut tasks = Vec::new();
        self.change_host(now, h, |host| {
            tasks = host.runs.drain(..).map(|r| r.0).collect();
            host.allocated = Resources::default();
            host.n_flex = 0;
            host.n_critical = 0;
            host.held_micro = 0.0;
            host.alive = false;
        });
        tasks
    }

    /// Host `h` is back (empty) after a loss.
    pub fn host_back(&mut self, now: u64, h: u32) {
        self.change_host(now, h, |host| host.alive = true);
    }

    /// The core's market figures for pool `pool` after a market input.
    pub fn set_market(
        &mut self,
        now: u64,
        pool: usize,
        streaming: u64,
        headroom: u64,
        supply: u64,
    ) {
        let grace = self.grace_ms;
        let p = &mut self.pools[pool];
        p.accrue(now, grace);
        p.streaming = streaming;
        p.headroom = headroom;
        p.supply = supply;
        p.update_violation(now, grace);
    }

    /// Per pool: leased micro-IE now, in the executors' view.
    pub fn leased_micro(&self, pool: usize) -> u64 {
        self.pools[pool].leased
    }

    /// Per pool: true if leased exceeds supply now.
    pub fn is_violating(&self, pool: usize) -> bool {
        self.pools[pool].violating_since.is_some()
    }

    /// Closes the books at `end` and returns every pool's integrals.
    pub fn finish(&mut self, end: u64) -> Vec<PoolIntegrals> {
        let grace = self.grace_ms;
        for p in &mut self.pools {
            p.accrue(end, grace);
            if let Some(since) = p.violating_since
                && end - since > grace
            {
                p.acc.n_long_violations += 1;
            }
        }
        self.pools.iter().map(|p| p.acc.clone()).collect()
    }

    /// Live runs per job, in the executors' view.
    pub fn runs_per_job(&self) -> BTreeMap<JobId, u32> {
        let mut out = BTreeMap::new();
        for h in &self.hosts {
            for r in &h.runs {
                *out.entry(r.0.job).or_default() += 1;
            }
        }
        out
    }

    /// Compares the executors' view with the core's now: per pool the leased
    /// IE, per host the allocation and the number of tasks. Returns the
    /// disagreements (empty unless one side is wrong).
    pub fn check_against_core(
        &self,
        now: u64,
        core: &Scheduler,
        pool_ids: &[PoolId],
    ) -> Vec<String> {
        let mut errors = Vec::new();
        for (i, id) in pool_ids.iter().enumerate() {
            if !self.pools[i].managed {
                continue;
            }
            let Some(status) = core.pool(id) else {
                errors.push(format!("t={now} ms: pool {id} unknown to the core"));
                continue;
            };
            let mine = self.pools[i].leased;
            if status.leased.as_micro() != mine {
                errors.push(format!(
                    "t={now} ms: pool {id}: core reports {} IE leased, the executors run flex work on {} IE of hosts",
                    status.leased.as_f64(),
                    mine as f64 / 1e6
                ));
            }
        }
        for h in &self.hosts {
            let core_host = core.host(&h.id);
            match (h.alive, core_host) {
                (true, Some(c))
                    if c.allocated() != &h.allocated || c.tasks().len() != h.runs.len() =>
                {
                    errors.push(format!(
                        "t={now} ms: host {}: core has {} tasks holding {:?}, the executor runs {} holding {:?}",
                        h.id,
                        c.tasks().len(),
                        c.allocated(),
                        h.runs.len(),
                        h.allocated
                    ));
                }
                (true, None) => errors.push(format!(
                    "t={now} ms: host {} is up but unknown to the core",
                    h.id
                )),
                (false, Some(c)) if !c.tasks().is_empty() => errors.push(format!(
                    "t={now} ms: host {} is down but the core still places {} tasks on it",
                    h.id,
                    c.tasks().len()
                )),
                _ => {}
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IE: u64 = 1_000_000;
    const H: u64 = 3_600_000;

    fn req(cpu: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_mib: 1024,
            ..Resources::default()
        }
    }

    fn cap() -> Resources {
        Resources {
            cpu_millis: 64_000,
            memory_mib: 256 * 1024,
            ..Resources::default()
        }
    }

    fn task(i: u32) -> TaskId {
        TaskId::new(JobId(0), i)
    }

    /// One pool, two 1-IE hosts, supply 1 IE: a timeline worked out by hand.
    #[test]
    fn integrals_follow_the_event_times() {
        let grace = 60_000;
        let mut ex = Executors::new(&[true], &[4 * IE], grace, None);
        let a = ex.add_host("a".into(), 0, IE, cap());
        let b = ex.add_host("b".into(), 0, IE, cap());
        ex.set_market(0, 0, 2 * IE, IE, IE); // streaming 2, headroom 1, supply 1
        ex.launch(0, a, task(0), Tier::Flex, &req(32_000)); // half of host a
        // 1 h within supply. Then a second host is leased: 1 IE beyond supply.
        ex.launch(H, b, task(1), Tier::Flex, &req(64_000));
        // 30 s later (within grace) it ends; then again for 2 min (beyond grace by 1 min).
        ex.release(H + 30_000, b, task(1));
        ex.launch(2 * H, b, task(2), Tier::Flex, &req(64_000));
        ex.release(2 * H + 120_000, b, task(2));
        // Demand rises above reserved for 1 h: streaming 4, headroom 1 → shortfall 1, supply 0.
        ex.set_market(3 * H, 0, 4 * IE, IE, 0);
        ex.release(3 * H + 10 * 60_000, a, task(0)); // a violation of 10 min (host a)
        ex.set_market(4 * H, 0, 2 * IE, IE, IE);
        let p = ex.finish(5 * H).remove(0);
        let ie_h = PoolIntegrals::ie_h;
        assert!((ie_h(p.reserved) - 20.0).abs() < 1e-9);
        assert!((ie_h(p.supply) - 4.0).abs() < 1e-9, "{}", ie_h(p.supply));
        assert!((ie_h(p.shortfall) - 1.0).abs() < 1e-9);
        // Beyond supply: 30 s + 2 min of host b, 10 min of host a.
        let beyond_h = (30.0 + 120.0 + 600.0) / 3600.0;
        assert!((ie_h(p.beyond_supply) - beyond_h).abs() < 1e-9);
        assert_eq!(p.n_violations, 3);
        assert_eq!(
            p.n_long_violations, 2,
            "the 2-minute and the 10-minute episodes"
        );
        assert_eq!(p.violating_ms, 750_000);
        assert_eq!(p.violating_after_grace_ms, 60_000 + 540_000);
        // Host a leased from 0 to 3h10m, within supply until 3h; b within never.
        let within_h = 3.0;
        assert!((ie_h(p.within_supply) - within_h).abs() < 1e-9);
        // Held: host a's task holds half its IE while it runs (3h10m); b's tasks all of b.
        let held_h = p.held / MICRO_IE_MS_PER_IE_HOUR;
        assert!((held_h - (0.5 * (3.0 + 10.0 / 60.0) + 150.0 / 3600.0)).abs() < 1e-9);
        // Leased is capped at reserved − streaming for the identity: 3h..3h10m streaming is 4 of 4.
        let leased_h = 3.0 + 150.0 / 3600.0;
        assert!(
            (ie_h(p.leased) - leased_h).abs() < 1e-9,
            "{}",
            ie_h(p.leased)
        );
    }

    #[test]
    fn critical_only_hosts_and_losses_are_counted() {
        let mut ex = Executors::new(&[true], &[4 * IE], 0, None);
        let a = ex.add_host("a".into(), 0, IE, cap());
        ex.set_market(0, 0, 0, 0, 4 * IE);
        ex.launch(0, a, task(0), Tier::Critical, &req(1000));
        ex.launch(H, a, task(1), Tier::Flex, &req(1000)); // now leased, not critical-only
        let lost = ex.host_lost(2 * H, a);
        assert_eq!(lost.len(), 2);
        assert_eq!(ex.leased_micro(0), 0);
        let p = ex.finish(3 * H).remove(0);
        assert!((PoolIntegrals::ie_h(p.critical) - 1.0).abs() < 1e-9);
        assert!((PoolIntegrals::ie_h(p.within_supply) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_forgotten_release_keeps_the_host_leased() {
        let mut ex = Executors::new(&[true], &[4 * IE], 0, Some(1));
        let a = ex.add_host("a".into(), 0, IE, cap());
        ex.launch(0, a, task(0), Tier::Flex, &req(1000));
        ex.release(H, a, task(0));
        assert_eq!(
            ex.leased_micro(0),
            IE,
            "the corrupted view still leases host a"
        );
    }
}
