//! Round repacking: a bounded local search that moves a round's own
//! placements so that they leave hosts the round opened empty again.
//!
//! A greedy host search places one task at a time and never revisits a
//! choice, so on mixed shapes it opens a host or two more than needed (5–20%
//! on the small snapshots of docs/BENCHMARKS.md, "Packing against exact
//! optima"), whatever order it sees the tasks in. This module works on plain
//! resource vectors, not on the state: given the hosts a round touched (their
//! capacity and the load the search may not move) and where the round put
//! each movable task, it empties one opened host at a time. The victim's
//! tasks go to the other hosts even if that overfills them, then a local
//! search of moves and swaps drives the total overflow to zero (the classic
//! "remove a bin, repair" scheme for bin packing). If the repair fails within
//! its budget, the host stays open and the search stops.
//!
//! The result is only a proposal. The planner replays it through every
//! feasibility checker and keeps the round's own placements if any check
//! refuses (see `round::Planner::repack_tier`), so nothing here can place
//! work where the pipeline would not.
//!
//! Deterministic: integer arithmetic, hosts and tasks in the caller's order,
//! and a SplitMix64 sequence from a fixed seed for the random kicks.

use crate::model::splitmix64;

/// Dimensions compared: CPU, memory, disk, network, GPUs.
pub(crate) const N_DIMS: usize = 5;

/// An amount per dimension, in the units of [`crate::Resources`].
pub(crate) type Load = [u64; N_DIMS];

/// Move and swap evaluations one repair may spend before it gives up.
///
/// On the 30 snapshots of the optimal bench (60–100 tasks, 5–21 hosts) the
/// repairs that succeed need at most 18,000 evaluations, so this is over
/// five times what success took; it bounds what a *failing* repair costs,
/// which is the common case once a round already packs tightly: with
/// [`MAX_FAILED_CLOSES`] failures, about 1–2 ms for 89 tasks on the shared
/// benchmark machine (docs/BENCHMARKS.md, "Round repacking").
pub(crate) const EVAL_BUDGET: u64 = 100_000;

/// Hosts the repack tries to close without success before it stops. A
/// repair can fail on the least loaded host and succeed on the next (its
/// tasks may be easier to pair), but every failure costs a whole
/// [`EVAL_BUDGET`], so a round that packs tightly already pays at most this
/// many budgets.
const MAX_FAILED_CLOSES: u32 = 2;

/// Steps during which a task may not return to the host it left (tabu
/// search's tenure): long enough to stop two hosts trading the same task
/// back and forth, short next to the hundreds of steps a repair may take.
const TABU_STEPS: u64 = 7;

/// Fixed seed of the kick sequence: any constant does; a fixed one keeps a
/// plan a function of the state alone.
const SEED: u64 = 0x6562_625f_7265_7061; // "ebb_repa"

/// Probability, in 1/256ths, that a step with no improving move makes a
/// random move instead of the least bad one (the prototype's 70%: enough
/// noise to leave a plateau, enough greed to finish quickly).
const KICK_IN_256: u64 = 179;

/// A host the round touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RepackHost {
    /// Capacity per dimension.
    pub(crate) capacity: Load,
    /// Load the repack may not move: work placed before the round and the
    /// round's tasks that carry constraints.
    pub(crate) fixed: Load,
    /// True if the host was empty before the round and holds no fixed load,
    /// so emptying it saves a host.
    pub(crate) may_empty: bool,
}

/// Overflow of one host in 2⁻³² units of capacity, rounded up (so any
/// overflow counts), summed over dimensions. A dimension with no capacity
/// counts every unit loaded as a whole host.
fn overflow(load: &Load, capacity: &Load) -> u128 {
    let mut sum = 0u128;
    for d in 0..N_DIMS {
        if load[d] > capacity[d] {
            let over = u128::from(load[d] - capacity[d]) << 32;
            sum += over.div_ceil(u128::from(capacity[d].max(1)));
        }
    }
    sum
}

fn add(a: &Load, b: &Load) -> Load {
    std::array::from_fn(|d| a[d] + b[d])
}

fn sub(a: &Load, b: &Load) -> Load {
    std::array::from_fn(|d| a[d] - b[d])
}

/// Sum of a load's shares of a capacity, in 2⁻²⁰ units.
fn size(load: &Load, capacity: &Load) -> u128 {
    (0..N_DIMS)
        .map(|d| (u128::from(load[d]) << 20) / u128::from(capacity[d].max(1)))
        .sum()
}

struct Search<'a> {
    hosts: &'a [RepackHost],
    items: &'a [Load],
    assign: Vec<usize>,
    loads: Vec<Load>,
    closed: Vec<bool>,
    rng: u64,
    evals: u64,
    /// Repair steps taken (the tabu clock).
    step: u64,
    /// Per item: the host it last left, and at which step.
    left: Vec<Option<(usize, u64)>>,
}

/// (overflow change, item, target host, item swapped back, if any).
type Move = (i128, usize, usize, Option<usize>);

impl Search<'_> {
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(1);
        splitmix64(self.rng)
    }

    fn over(&self, j: usize) -> u128 {
        overflow(&self.loads[j], &self.hosts[j].capacity)
    }

    /// Keeps the better of `best` and `candidate`; among equal deltas, each
    /// of the `n_ties` seen so far is kept with equal probability.
    fn consider(&mut self, best: &mut Option<Move>, n_ties: &mut u64, candidate: Move) {
        match best {
            Some(b) if candidate.0 > b.0 => {}
            Some(b) if candidate.0 == b.0 => {
                *n_ties += 1;
                if self.next_random().is_multiple_of(*n_ties) {
                    *best = Some(candidate);
                }
            }
            _ => {
                *best = Some(candidate);
                *n_ties = 1;
            }
        }
    }

    /// True if item `i` left host `k` within the last [`TABU_STEPS`] steps.
    fn is_tabu(&self, i: usize, k: usize) -> bool {
        self.left[i].is_some_and(|(host, step)| host == k && self.step - step <= TABU_STEPS)
    }

    fn move_item(&mut self, i: usize, to: usize) {
        let from = self.assign[i];
        self.left[i] = Some((from, self.step));
        self.loads[from] = sub(&self.loads[from], &self.items[i]);
        self.loads[to] = add(&self.loads[to], &self.items[i]);
        self.assign[i] = to;
    }

    /// Tries to close `victim`: its items go where they overflow least,
    /// then moves and swaps repair the overflow. False (and the caller
    /// restores) if the budget runs out first.
    fn close(&mut self, victim: usize) -> bool {
        self.closed[victim] = true;
        for i in 0..self.items.len() {
            if self.assign[i] != victim {
                continue;
            }
            let mut best: Option<(u128, usize)> = None;
            for j in 0..self.hosts.len() {
                if self.closed[j] {
                    continue;
                }
                let after = overflow(
                    &add(&self.loads[j], &self.items[i]),
                    &self.hosts[j].capacity,
                );
                let delta = after - self.over(j);
                if best.is_none_or(|(b, _)| delta < b) {
                    best = Some((delta, j));
                }
            }
            let Some((_, j)) = best else { return false };
            self.move_item(i, j);
        }
        self.repair()
    }

    /// Moves and swaps until no open host overflows, or the budget is spent.
    fn repair(&mut self) -> bool {
        let n_hosts = self.hosts.len();
        loop {
            let overflowing: Vec<usize> = (0..n_hosts)
                .filter(|&j| !self.closed[j] && self.over(j) > 0)
                .collect();
            if overflowing.is_empty() {
                return true;
            }
            if self.evals >= EVAL_BUDGET {
                return false;
            }
            let j = overflowing[(self.next_random() % overflowing.len() as u64) as usize];
            let on_j: Vec<usize> = (0..self.items.len())
                .filter(|&i| self.assign[i] == j)
                .collect();
            let over_j = self.over(j) as i128;
            self.step += 1;
            // (delta, item, target host, swapped item); equal deltas are
            // chosen among at random (reservoir sampling), so a plateau is
            // walked rather than the same two hosts swapped back and forth.
            let mut best: Option<Move> = None;
            let mut n_ties = 0u64;
            for &i in &on_j {
                let without = sub(&self.loads[j], &self.items[i]);
                for k in 0..n_hosts {
                    if k == j || self.closed[k] {
                        continue;
                    }
                    let cap_j = &self.hosts[j].capacity;
                    let cap_k = &self.hosts[k].capacity;
                    let over_k = self.over(k) as i128;
                    let with = add(&self.loads[k], &self.items[i]);
                    self.evals += 1;
                    let delta = overflow(&without, cap_j) as i128 + overflow(&with, cap_k) as i128
                        - over_j
                        - over_k;
                    if !self.is_tabu(i, k) {
                        self.consider(&mut best, &mut n_ties, (delta, i, k, None));
                    }
                    for i2 in 0..self.items.len() {
                        if self.assign[i2] != k || self.items[i2] == self.items[i] {
                            continue;
                        }
                        self.evals += 1;
                        let nj = add(&without, &self.items[i2]);
                        let nk = sub(&with, &self.items[i2]);
                        let delta = overflow(&nj, cap_j) as i128 + overflow(&nk, cap_k) as i128
                            - over_j
                            - over_k;
                        if !self.is_tabu(i, k) && !self.is_tabu(i2, j) {
                            self.consider(&mut best, &mut n_ties, (delta, i, k, Some(i2)));
                        }
                    }
                }
            }
            let Some((delta, i, k, swap)) = best else {
                return false; // a single open host overflows: nowhere to go
            };
            if delta >= 0 && self.next_random() % 256 < KICK_IN_256 {
                let i = on_j[(self.next_random() % on_j.len() as u64) as usize];
                let open: Vec<usize> = (0..n_hosts)
                    .filter(|&k| k != j && !self.closed[k])
                    .collect();
                let k = open[(self.next_random() % open.len() as u64) as usize];
                self.move_item(i, k);
                continue;
            }
            self.move_item(i, k);
            if let Some(i2) = swap {
                self.move_item(i2, j);
            }
        }
    }
}

/// Proposes a new host (an index into `hosts`) for every item, given the
/// round's own `start` assignment, that leaves at least one more
/// `may_empty` host without items and no host over capacity; `None` if
/// none was found within [`EVAL_BUDGET`] per closed host.
///
/// Hosts are closed one at a time, the least loaded first (ties: lower
/// index), until [`MAX_FAILED_CLOSES`] hosts could not be closed or none is
/// left to try.
pub(crate) fn repack(hosts: &[RepackHost], items: &[Load], start: &[usize]) -> Option<Vec<usize>> {
    debug_assert_eq!(items.len(), start.len());
    let mut loads: Vec<Load> = hosts.iter().map(|h| h.fixed).collect();
    for (item, &j) in items.iter().zip(start) {
        loads[j] = add(&loads[j], item);
    }
    let mut s = Search {
        hosts,
        items,
        assign: start.to_vec(),
        // A host the start leaves empty stays closed: the repack never opens one.
        closed: hosts
            .iter()
            .zip(&loads)
            .map(|(h, l)| h.may_empty && *l == [0; N_DIMS])
            .collect(),
        loads,
        rng: SEED,
        evals: 0,
        step: 0,
        left: vec![None; items.len()],
    };
    let mut n_closed = 0;
    let mut tried = vec![false; hosts.len()];
    let mut n_failed = 0;
    while n_failed < MAX_FAILED_CLOSES {
        // The emptiable host with items that is least loaded.
        let victim = (0..hosts.len())
            .filter(|&j| {
                hosts[j].may_empty && !s.closed[j] && !tried[j] && s.loads[j] != [0; N_DIMS]
            })
            .min_by_key(|&j| (size(&s.loads[j], &hosts[j].capacity), j));
        let Some(victim) = victim else { break };
        // Volume bound: the open hosts less the victim must hold all the load.
        let fits = (0..N_DIMS).all(|d| {
            let (mut load, mut cap) = (0u128, 0u128);
            for j in (0..hosts.len()).filter(|&j| !s.closed[j]) {
                load += u128::from(s.loads[j][d]);
                if j != victim {
                    cap += u128::from(hosts[j].capacity[d]);
                }
            }
            load <= cap
        });
        if !fits {
            break;
        }
        let (assign, loads) = (s.assign.clone(), s.loads.clone());
        s.evals = 0;
        if s.close(victim) {
            n_closed += 1;
        } else {
            s.assign = assign;
            s.loads = loads;
            s.closed[victim] = false;
            tried[victim] = true;
            n_failed += 1;
        }
    }

    (n_closed > 0).then_some(s.assign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(capacity: Load, fixed: Load, may_empty: bool) -> RepackHost {
        RepackHost {
            capacity,
            fixed,
            may_empty,
        }
    }

    /// Independent recount: per host, fixed load plus every item assigned
    /// there, within capacity in every dimension.
    fn within_capacity(hosts: &[RepackHost], items: &[Load], assign: &[usize]) -> bool {
        let mut loads: Vec<Load> = hosts.iter().map(|h| h.fixed).collect();
        for (item, &j) in items.iter().zip(assign) {
            for d in 0..N_DIMS {
                loads[j][d] += item[d];
            }
        }
        loads
            .iter()
            .zip(hosts)
            .all(|(l, h)| (0..N_DIMS).all(|d| l[d] <= h.capacity[d]))
    }

    fn n_used(assign: &[usize]) -> usize {
        let mut used: Vec<usize> = assign.to_vec();
        used.sort_unstable();
        used.dedup();
        used.len()
    }

    /// Exhaustive minimum of hosts used over every assignment (small cases).
    fn brute_force_min(hosts: &[RepackHost], items: &[Load]) -> usize {
        let n = items.len();
        let m = hosts.len();
        let mut best = usize::MAX;
        let mut assign = vec![0usize; n];
        loop {
            if within_capacity(hosts, items, &assign) {
                let mut used: Vec<usize> = assign.clone();
                used.extend((0..m).filter(|&j| !hosts[j].may_empty));
                best = best.min(n_used(&used));
            }
            // Next assignment in base m.
            let mut k = 0;
            loop {
                if k == n {
                    return best;
                }
                assign[k] += 1;
                if assign[k] < m {
                    break;
                }
                assign[k] = 0;
                k += 1;
            }
        }
    }

    const CAP: Load = [100, 100, 100, 100, 0];

    fn item(cpu: u64, mem: u64) -> Load {
        [cpu, mem, 1, 1, 0]
    }

    /// The greedy trap: first fit in this order uses three hosts, two suffice
    /// (a 60/40 and a 40/60 pair up with their complements).
    #[test]
    fn closes_a_host_the_greedy_opened() {
        let hosts = vec![host(CAP, [0; 5], true); 3];
        let items = vec![
            item(60, 40),
            item(30, 30),
            item(40, 60),
            item(40, 30),
            item(30, 40),
        ];
        // First fit: h0 = 60/40 + 30/30 (90/70); 40/60 → h1; 40/30 → h1 (80/90);
        // 30/40 → h2.
        let start = vec![0, 0, 1, 1, 2];
        assert!(within_capacity(&hosts, &items, &start));
        let got = repack(&hosts, &items, &start).expect("two hosts suffice");
        assert!(within_capacity(&hosts, &items, &got), "{got:?}");
        assert_eq!(n_used(&got), 2);
        assert_eq!(brute_force_min(&hosts, &items), 2);
    }

    /// Hosts holding fixed load are never emptied, and fixed load counts
    /// against capacity.
    #[test]
    fn fixed_load_stays_and_counts() {
        let hosts = vec![host(CAP, [90, 0, 0, 0, 0], false), host(CAP, [0; 5], true)];
        // 20 CPU does not fit beside the fixed 90: the repack cannot close h1.
        let items = vec![item(20, 10)];
        assert_eq!(repack(&hosts, &items, &[1]), None);
        // 10 CPU does: h1 closes, the item joins the fixed load.
        let items = vec![item(10, 10)];
        assert_eq!(repack(&hosts, &items, &[1]), Some(vec![0]));
    }

    /// Encoding seed 5 of the optimal bench as the default policy packs it
    /// largest first: 11 hosts where 10 suffice. Three chunk shapes (A: 12
    /// vCPU, 24 GiB, 150 GiB disk, 1 Gbps; B: 8 vCPU, 8 GiB, 200 GiB, 3
    /// Gbps; C: 8 vCPU, 8 GiB, 50 GiB, 1 Gbps), counts per host below. A
    /// descent that always took the first of equally good moves traded the
    /// same task between two hosts here until its budget (even 2,000,000
    /// evaluations) ran out; the random choice among equal moves closes the
    /// eleventh host (the tabu tenure is what the brute-force test needs).
    #[test]
    fn closes_the_host_largest_first_wastes_on_encoding_seed_5() {
        let shapes: [Load; 3] = [
            [12_000, 24_576, 153_600, 1_000, 0],
            [8_000, 8_192, 204_800, 3_000, 0],
            [8_000, 8_192, 51_200, 1_000, 0],
        ];
        let per_host: [[usize; 3]; 11] = [
            [5, 0, 0],
            [5, 0, 0],
            [5, 0, 0],
            [5, 0, 0],
            [1, 6, 0],
            [0, 8, 0],
            [0, 4, 4],
            [0, 0, 8],
            [0, 0, 8],
            [0, 0, 8],
            [0, 0, 2],
        ];
        let (mut items, mut start) = (Vec::new(), Vec::new());
        for (h, counts) in per_host.iter().enumerate() {
            for (shape, &n) in shapes.iter().zip(counts) {
                items.extend(std::iter::repeat_n(*shape, n));
                start.extend(std::iter::repeat_n(h, n));
            }
        }
        let capacity: Load = [64_000, 262_144, 1_638_400, 25_000, 0];
        let hosts = vec![host(capacity, [0; 5], true); 11];
        assert!(within_capacity(&hosts, &items, &start));
        let got = repack(&hosts, &items, &start).expect("ten hosts suffice");
        assert!(within_capacity(&hosts, &items, &got));
        assert_eq!(n_used(&got), 10);
    }

    /// Against brute force on many small random cases: a proposal is never
    /// over capacity, always uses fewer hosts than it started with, and
    /// never fewer than the true minimum; and when the start is one host
    /// above the minimum, the repack usually finds the minimum.
    #[test]
    fn proposals_are_feasible_and_never_beat_brute_force() {
        let mut rng = 7u64;
        let mut next = |bound: u64| {
            rng = rng.wrapping_add(1);
            splitmix64(rng) % bound
        };
        let (mut n_improvable, mut n_improved) = (0, 0);
        for _ in 0..300 {
            let n_hosts = 2 + next(3) as usize;
            let n_items = 3 + next(4) as usize;
            let items: Vec<Load> = (0..n_items)
                .map(|_| [5 + next(60), 5 + next(60), next(30), next(30), 0])
                .collect();
            let mut hosts: Vec<RepackHost> =
                (0..n_hosts).map(|_| host(CAP, [0; 5], true)).collect();
            if next(2) == 0 {
                hosts[0] = host(CAP, [next(50), next(50), 0, 0, 0], false);
            }
            // First fit in the given order: the kind of start a greedy leaves.
            let mut loads: Vec<Load> = hosts.iter().map(|h| h.fixed).collect();
            let mut start = Vec::new();
            let mut placed_all = true;
            for it in &items {
                match (0..n_hosts).find(|&j| (0..N_DIMS).all(|d| loads[j][d] + it[d] <= CAP[d])) {
                    Some(j) => {
                        loads[j] = add(&loads[j], it);
                        start.push(j);
                    }
                    None => placed_all = false,
                }
            }
            if !placed_all {
                continue;
            }
            let used = |a: &[usize]| {
                let mut u: Vec<usize> = a.to_vec();
                u.extend((0..n_hosts).filter(|&j| !hosts[j].may_empty));
                n_used(&u)
            };
            let min = brute_force_min(&hosts, &items);
            let before = used(&start);
            if before > min {
                n_improvable += 1;
            }
            if let Some(got) = repack(&hosts, &items, &start) {
                assert!(
                    within_capacity(&hosts, &items, &got),
                    "over capacity: {got:?}"
                );
                let after = used(&got);
                assert!(after < before, "no host closed: {start:?} → {got:?}");
                assert!(after >= min, "beat brute force: {after} < {min}");
                n_improved += usize::from(after == min && before > min);
            }
        }
        assert!(
            n_improvable >= 10,
            "too few improvable cases: {n_improvable}"
        );
        assert!(
            n_improved * 10 >= n_improvable * 9,
            "found the minimum in {n_improved} of {n_improvable} improvable cases"
        );
    }
}
