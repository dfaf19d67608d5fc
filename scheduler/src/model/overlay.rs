//! Tentative changes on top of the committed state, and the [`View`] that
//! reads through them.
//!
//! A round plans against `State + Overlay`: each tentative placement writes
//! the touched host's, team's, pool's and job's new figures into the overlay
//! (copy on write, absolute values) and re-indexes the touched host in a
//! small index of its own, so [`crate::model::index::HostIndex::candidates`]
//! sees it at its tentative free capacity. The committed state is never
//! written, which is what makes `plan_round(&self)` pure. A gang that does
//! not fit rolls its members back through an undo log that is kept only
//! while a [`Overlay::checkpoint`] is open.
//!
//! Commit applies an overlay's placements through [`State::charge`], the one
//! charge path, host by host (one index update per host, not per task).
//!
//! A search merges the committed index with the overlay's and skips the
//! committed entries of touched hosts one by one, so once a round has
//! touched k hosts of a partition, a search may walk past k stale entries
//! before it meets a live one: a round of n placements would cost O(n·k).
//! So when the stale entries of a committed partition outgrow
//! [`promotion_threshold`], the overlay *promotes* the partition: it copies
//! the committed partition into its own index, without the touched hosts'
//! entries, and from then on searches read that partition only from the
//! overlay, with nothing to skip. A later first touch of one of its hosts
//! moves the host's copied entry to its tentative place, like any later
//! touch. Promotion happens at most once per partition and overlay and is
//! never rolled back: it changes where a search reads a partition, not what
//! it reads, and a search yields the same hosts in the same order either way.
//! Commit never reads the overlay's index (it re-derives every figure
//! through [`State::charge`]), so promotion is invisible to it.

use std::sync::Arc;

use crate::model::index::{Candidates, Fit, HostIndex, IndexDim, Shadow};
use crate::model::job::Job;
use crate::model::{Host, State};
use crate::spec::host::HostState;
use crate::spec::job::Tier;
use crate::units::ids::{HostIdx, JobId, PoolIdx, TaskId, TeamIdx, ZoneIdx};
use crate::units::ie::Ie;
use crate::units::resources::Resources;
use crate::units::time::Timestamp;
use crate::util::FxMap;

/// A touched host's tentative figures.
#[derive(Clone, Debug, PartialEq)]
struct HostDelta {
    allocated: Resources,
    n_flex_tasks: u32,
    reclaiming: bool,
}

/// The previous value of one overlay entry (`None`: it was absent).
#[derive(Clone, Debug)]
enum Undo {
    Host(HostIdx, Option<HostDelta>),
    Team(TeamIdx, Option<[Resources; 2]>),
    Pool(PoolIdx, Option<Ie>),
    JobHost((JobId, HostIdx), Option<u32>),
    JobZone((JobId, ZoneIdx), Option<u32>),
    Group((Arc<str>, HostIdx), Option<u32>),
    /// The last this many entries of `placements`.
    Placements(u32),
}

/// The fewest stale entries a committed partition must have before it is
/// promoted. Up to 64, skipping them costs a search at most 64 cheap steps
/// per partition (a key comparison and a hash lookup each: under a
/// microsecond, small next to the checkers and scorers a search runs
/// anyway), while a copy would cost the whole partition. It also keeps every
/// round of Fenzo's shape (200 tasks, about 25 hosts touched) and every
/// partition of 64 hosts or fewer from ever copying.
const MIN_PROMOTION_THRESHOLD: usize = 64;

/// Stale entries past which a committed partition of `len` hosts is
/// promoted: √len, but at least `min` ([`MIN_PROMOTION_THRESHOLD`] outside
/// tests).
///
/// Why √len: before promotion a search may step past one stale entry per
/// touched host, so by the t-th first touch the searches so far may have
/// paid up to 1 + 2 + … + t ≈ t²/2 steps; promotion costs about `len`
/// (copying the partition's two or three sets). Promoting at t = √len pays
/// for the copy once the skipping could have cost about as much (the rent or
/// buy rule, never far from the better of the two in hindsight), and keeps
/// both costs at O(√len) per placement: at most √len stale steps per search,
/// and a copy only in rounds that touched more than √len of the partition's
/// hosts. A fixed fraction (len/16, say) would copy less often but let a
/// search skip up to len/16 entries first: 625 on 10,000 hosts, 62,500 on a
/// million. (On 10,000 hosts the two measure the same within noise, see
/// docs/BENCHMARKS.md; √len is the one that stays flat as fleets grow.)
fn promotion_threshold(len: usize, min: usize) -> usize {
    len.isqrt().max(min)
}

/// How the overlay shadows one committed-index partition.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PartShadow {
    /// This many touched active hosts have their committed entry here;
    /// searches skip those entries.
    Counted(usize),
    /// The overlay's index holds the whole partition (see the module doc);
    /// searches leave the committed one out.
    Promoted,
}

/// Tentative changes of one round (or one commit's re-validation, or one
/// compaction what-if).
#[derive(Clone, Debug, Default)]
pub(crate) struct Overlay {
    hosts: FxMap<HostIdx, HostDelta>,
    /// Touched active hosts at their tentative free capacity, in their
    /// tentative partitions, and the untouched hosts of promoted partitions
    /// at their committed free capacity.
    index: HostIndex,
    /// Per committed-index partition (absent: `Counted(0)`).
    shadows: Vec<PartShadow>,
    /// The `min` of [`promotion_threshold`]: [`MIN_PROMOTION_THRESHOLD`],
    /// except in tests that lower it to promote partitions of small fleets.
    min_promotion: MinPromotion,
    teams: FxMap<TeamIdx, [Resources; 2]>,
    pools: FxMap<PoolIdx, Ie>,
    job_hosts: FxMap<(JobId, HostIdx), u32>,
    job_zones: FxMap<(JobId, ZoneIdx), u32>,
    groups: FxMap<(Arc<str>, HostIdx), u32>,
    /// Tentative placements in the order they were made.
    placements: Vec<(TaskId, HostIdx)>,
    undo: Vec<Undo>,
    /// Open checkpoints; the undo log is kept only while this is non-zero.
    depth: u32,
    /// The class run being charged, if one is open: see [`Overlay::open_run`].
    run: Option<ClassRun>,
}

/// Equal tasks of one job being charged to one host as one run of class
/// steps (see [`Overlay::open_run`]).
#[derive(Clone, Debug)]
struct ClassRun {
    host: HostIdx,
    /// The host's figures when the run opened: its index entry stays at
    /// them, and its undo record will hold them, until the run closes.
    before: HostDelta,
    job: JobId,
    /// Tasks charged to the run so far.
    n_tasks: u32,
}

/// A position in the undo log.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Mark(usize);

/// See [`Overlay::min_promotion`].
#[derive(Copy, Clone, Debug)]
struct MinPromotion(usize);

impl Default for MinPromotion {
    fn default() -> Self {
        MinPromotion(MIN_PROMOTION_THRESHOLD)
    }
}

impl Overlay {
    /// An empty overlay that promotes partitions past `min` stale entries
    /// (or √len if larger), so tests can cross the threshold on small fleets.
    #[cfg(test)]
    pub(crate) fn with_min_promotion(min: usize) -> Self {
        Overlay {
            min_promotion: MinPromotion(min),
            ..Overlay::default()
        }
    }

    /// Tentative placements, in order.
    pub(crate) fn placements(&self) -> &[(TaskId, HostIdx)] {
        &self.placements
    }

    fn host_delta(&self, state: &State, h: HostIdx) -> HostDelta {
        match self.hosts.get(&h) {
            Some(d) => d.clone(),
            None => {
                let host = &state.hosts[h];
                HostDelta {
                    allocated: host.allocated.clone(),
                    n_flex_tasks: host.n_flex_tasks,
                    reclaiming: host.reclaiming,
                }
            }
        }
    }

    fn shadow(&self, part: usize) -> PartShadow {
        self.shadows
            .get(part)
            .copied()
            .unwrap_or(PartShadow::Counted(0))
    }

    fn shadow_mut(&mut self, part: usize) -> &mut PartShadow {
        if self.shadows.len() <= part {
            self.shadows.resize(part + 1, PartShadow::Counted(0));
        }
        &mut self.shadows[part]
    }

    /// Opens a run of class steps: tasks of `job` charged to host `h`
    /// (already touched: a run follows the search that placed the job's
    /// previous task there) by [`Overlay::add_to_run`], one at a time, and
    /// accounted at [`Overlay::close_run`] as one change. Why: a run places
    /// up to a host's worth of equal tasks with no search in between, and
    /// charging them one by one moved the host in the index, copied its,
    /// the team's and the job's figures and logged each for undo once per
    /// task; a run does each once.
    ///
    /// While a run is open, only `h`'s allocation and flex count are
    /// current: the team's allocation, the job's per-host, per-zone and
    /// group counts and `h`'s index entry catch up at close. So until then
    /// nothing may read those — class steps check and score only `h` for a
    /// job without constraints, under no team cap — and no search,
    /// checkpoint, rollback or other charge may happen.
    pub(crate) fn open_run(&mut self, h: HostIdx, job: JobId) {
        assert!(self.run.is_none(), "one class run at a time");
        let before = self.hosts.get(&h).expect("a run follows a placement");
        self.run = Some(ClassRun {
            host: h,
            before: before.clone(),
            job,
            n_tasks: 0,
        });
    }

    /// Charges one more task of the open run's job to its host: the host's
    /// allocation and flex count now, the rest at [`Overlay::close_run`].
    pub(crate) fn add_to_run(&mut self, state: &State, task: TaskId) {
        let run = self.run.as_mut().expect("a run is open");
        assert_eq!(task.job, run.job, "a run charges one job");
        let job = &state.jobs[&task.job];
        let d = self
            .hosts
            .get_mut(&run.host)
            .expect("the run's host is touched");
        d.allocated
            .checked_add_assign(&job.spec.request)
            .expect("tentative over-commit: feasibility not checked");
        if job.spec.tier == Tier::Flex {
            // Leased already by the job's previous task: the pool's leased
            // total does not change.
            assert!(d.n_flex_tasks > 0, "a flex run's host is leased");
            d.n_flex_tasks += 1;
        }
        run.n_tasks += 1;
        self.placements.push((task, run.host));
    }

    /// Closes the open run (if any): moves its host's index entry once,
    /// adds its tasks to the team's and the job's figures, and logs one
    /// undo record per figure, as `n` calls of [`Overlay::charge`] would
    /// have left them.
    pub(crate) fn close_run(&mut self, state: &State) {
        let Some(run) = self.run.take() else {
            return;
        };
        let n = run.n_tasks;
        if n == 0 {
            return;
        }
        let (h, job) = (run.host, &state.jobs[&run.job]);
        self.move_entry(state, h, &run.before);
        if self.depth > 0 {
            self.undo.push(Undo::Host(h, Some(run.before)));
        }
        let request = job
            .spec
            .request
            .checked_mul(u64::from(n))
            .expect("a run's request fits: its tasks fit on one host");
        self.charge_team(state, job, &request, true);
        self.count_job(state, run.job, h, n, true);
        if self.depth > 0 {
            self.undo.push(Undo::Placements(n));
        }
    }

    /// Moves touched host `h`'s index entry from figures `was` to its
    /// current ones (active hosts only: others are not indexed).
    fn move_entry(&mut self, state: &State, h: HostIdx, was: &HostDelta) {
        let host = &state.hosts[h];
        if host.state != HostState::Active {
            return;
        }
        let now = &self.hosts[&h];
        let part = |d: &HostDelta| crate::model::index::part_of(host.pool, d.n_flex_tasks > 0);
        let free = |d: &HostDelta| host.spec.capacity.saturating_sub(&d.allocated);
        self.index.update(
            h,
            host.rank,
            part(was),
            &free(was),
            part(now),
            &free(now),
            host.has_gpus(),
        );
    }

    /// Replaces a host's tentative figures and re-indexes it.
    fn set_host(&mut self, state: &State, h: HostIdx, new: HostDelta) {
        debug_assert!(self.run.is_none(), "a charge inside a class run");
        let host = &state.hosts[h];
        let old = self.hosts.insert(h, new.clone());
        if host.state == HostState::Active {
            let part = |d: &HostDelta| crate::model::index::part_of(host.pool, d.n_flex_tasks > 0);
            let free = |d: &HostDelta| host.spec.capacity.saturating_sub(&d.allocated);
            let (rank, gpus) = (host.rank, host.has_gpus());
            if let Some(o) = &old {
                self.move_entry(state, h, o);
            } else {
                // A first touch: the host's committed entry is in `base_part`.
                let base_part = host.index_part();
                match self.shadow(base_part) {
                    // The overlay holds the host's committed entry: move it.
                    PartShadow::Promoted => self.index.update(
                        h,
                        rank,
                        base_part,
                        &host.free(),
                        part(&new),
                        &free(&new),
                        gpus,
                    ),
                    // The committed entry stays where it is, now stale.
                    PartShadow::Counted(n) => {
                        self.index.insert(h, rank, &free(&new), gpus, part(&new));
                        *self.shadow_mut(base_part) = PartShadow::Counted(n + 1);
                        let len = state.index.len_part(base_part);
                        if n + 1 > promotion_threshold(len, self.min_promotion.0) {
                            self.promote(state, base_part);
                        }
                    }
                }
            }
        }
        if self.depth > 0 {
            self.undo.push(Undo::Host(h, old));
        }
    }

    /// Copies committed partition `part` into the overlay's index, without
    /// the stale entries of touched hosts, and marks it promoted.
    fn promote(&mut self, state: &State, part: usize) {
        let mut copy = state.index.part_copy(part);
        for &h in self.hosts.keys() {
            let host = &state.hosts[h];
            if host.state == HostState::Active && host.index_part() == part {
                copy.remove(h, host.rank, &host.free(), host.has_gpus(), part);
            }
        }
        self.index.absorb(copy);
        *self.shadow_mut(part) = PartShadow::Promoted;
    }

    fn restore_host(&mut self, state: &State, h: HostIdx, previous: Option<HostDelta>) {
        let host = &state.hosts[h];
        let current = self.hosts.remove(&h).expect("undone host is touched");
        if host.state == HostState::Active {
            let part = |d: &HostDelta| crate::model::index::part_of(host.pool, d.n_flex_tasks > 0);
            let free = |d: &HostDelta| host.spec.capacity.saturating_sub(&d.allocated);
            let (rank, gpus) = (host.rank, host.has_gpus());
            let base_part = host.index_part();
            self.index
                .remove(h, rank, &free(&current), gpus, part(&current));
            match (&previous, self.shadow(base_part)) {
                (Some(p), _) => self.index.insert(h, rank, &free(p), gpus, part(p)),
                // Untouched again: a promoted partition gets the host's
                // committed entry back (promotion is not undone, see the
                // module doc); otherwise that entry is live again.
                (None, PartShadow::Promoted) => {
                    self.index.insert(h, rank, &host.free(), gpus, base_part)
                }
                (None, PartShadow::Counted(n)) => {
                    let n = n.checked_sub(1).expect("touched host counted");
                    *self.shadow_mut(base_part) = PartShadow::Counted(n);
                }
            }
        }
        if let Some(p) = previous {
            self.hosts.insert(h, p);
        }
    }

    /// Adds (`add`) or takes `n` off a count, `base` if the overlay has none yet.
    fn set_count<K: std::hash::Hash + Eq + Clone>(
        map: &mut FxMap<K, u32>,
        key: K,
        base: u32,
        n: u32,
        add: bool,
    ) -> Option<u32> {
        let current = map.get(&key).copied().unwrap_or(base);
        let new = if add {
            current.checked_add(n).expect("count overflow")
        } else {
            current.checked_sub(n).expect("count below zero")
        };
        map.insert(key, new)
    }

    /// Adds (`add`) or takes `n` tasks of `job_id` off its per-host and
    /// per-zone counts (if it keeps them) and its unique-host group's count
    /// (if it has one) on host `h`.
    fn count_job(&mut self, state: &State, job_id: JobId, h: HostIdx, n: u32, add: bool) {
        let job = &state.jobs[&job_id];
        if job.tracks_placement {
            let key = (job_id, h);
            let prev = Self::set_count(&mut self.job_hosts, key, job.on_host(h), n, add);
            if self.depth > 0 {
                self.undo.push(Undo::JobHost(key, prev));
            }
            let zone = state.hosts[h].zone;
            let base = job.per_zone.get(zone.get()).copied().unwrap_or(0);
            let key = (job_id, zone);
            let prev = Self::set_count(&mut self.job_zones, key, base, n, add);
            if self.depth > 0 {
                self.undo.push(Undo::JobZone(key, prev));
            }
        }
        if let Some(g) = &job.unique_group {
            let base = state
                .unique_groups
                .get(g)
                .and_then(|m| m.get(&h))
                .copied()
                .unwrap_or(0);
            let key = (g.clone(), h);
            let prev = Self::set_count(&mut self.groups, key.clone(), base, n, add);
            if self.depth > 0 {
                self.undo.push(Undo::Group(key, prev));
            }
        }
    }

    /// Places one task of `job` on host `h` tentatively (`add`), or takes
    /// one off it (`!add`, compaction what-ifs). The caller checked feasibility.
    pub(crate) fn charge(&mut self, state: &State, task: TaskId, h: HostIdx, add: bool) {
        let job = &state.jobs[&task.job];
        let host = &state.hosts[h];
        let request = &job.spec.request;
        let flex = job.spec.tier == Tier::Flex;

        let old = self.host_delta(state, h);
        let mut new = old.clone();
        if add {
            new.allocated
                .checked_add_assign(request)
                .expect("tentative over-commit: feasibility not checked");
        } else {
            new.allocated
                .checked_sub_assign(request)
                .expect("took off more than the host holds");
        }
        if flex {
            new.n_flex_tasks = if add {
                new.n_flex_tasks + 1
            } else {
                new.n_flex_tasks.checked_sub(1).expect("flex count")
            };
            if new.n_flex_tasks == 0 {
                new.reclaiming = false;
            }
            let (was, is) = (old.n_flex_tasks > 0, new.n_flex_tasks > 0);
            if was != is {
                let leased = self.leased(state, host.pool);
                let leased = if is {
                    leased + host.ie
                } else {
                    leased - host.ie
                };
                let prev = self.pools.insert(host.pool, leased);
                if self.depth > 0 {
                    self.undo.push(Undo::Pool(host.pool, prev));
                }
            }
        }
        self.set_host(state, h, new);

        self.charge_team(state, job, request, add);
        self.count_job(state, task.job, h, 1, add);
        if add {
            self.placements.push((task, h));
            if self.depth > 0 {
                self.undo.push(Undo::Placements(1));
            }
        }
    }

    /// Adds `request` to (or takes it off) the tier allocation of `job`'s team.
    fn charge_team(&mut self, state: &State, job: &Job, request: &Resources, add: bool) {
        let team = job.team;
        let mut alloc = self
            .teams
            .get(&team)
            .cloned()
            .unwrap_or_else(|| state.teams[team.get()].allocated.clone());
        let slot = &mut alloc[job.spec.tier.index()];
        if add {
            slot.checked_add_assign(request)
                .expect("team allocation overflow");
        } else {
            slot.checked_sub_assign(request)
                .expect("team holds less than taken off");
        }
        let prev = self.teams.insert(team, alloc);
        if self.depth > 0 {
            self.undo.push(Undo::Team(team, prev));
        }
    }

    /// Marks a host as being emptied by reclaim: no new flex work goes there.
    pub(crate) fn mark_reclaiming(&mut self, state: &State, h: HostIdx) {
        let mut d = self.host_delta(state, h);
        if !d.reclaiming {
            d.reclaiming = true;
            self.set_host(state, h, d);
        }
    }

    /// Opens a checkpoint that [`Overlay::rollback`] can return to.
    pub(crate) fn checkpoint(&mut self) -> Mark {
        self.depth += 1;
        Mark(self.undo.len())
    }

    /// Keeps everything since `mark` and closes its checkpoint. Inside an
    /// outer checkpoint the changes stay undoable by the outer rollback.
    pub(crate) fn keep(&mut self, mark: Mark) {
        self.depth -= 1;
        if self.depth == 0 {
            debug_assert!(mark.0 <= self.undo.len());
            self.undo.clear();
        }
    }

    /// Undoes everything since `mark` and closes its checkpoint.
    pub(crate) fn rollback(&mut self, state: &State, mark: Mark) {
        debug_assert!(self.run.is_none(), "rollback inside a class run");
        while self.undo.len() > mark.0 {
            match self.undo.pop().expect("checked length") {
                Undo::Host(h, prev) => self.restore_host(state, h, prev),
                Undo::Team(t, prev) => restore(&mut self.teams, t, prev),
                Undo::Pool(p, prev) => restore(&mut self.pools, p, prev),
                Undo::JobHost(k, prev) => restore(&mut self.job_hosts, k, prev),
                Undo::JobZone(k, prev) => restore(&mut self.job_zones, k, prev),
                Undo::Group(k, prev) => restore(&mut self.groups, k, prev),
                Undo::Placements(n) => {
                    let n = self.placements.len() - n as usize;
                    self.placements.truncate(n);
                }
            }
        }
        self.depth -= 1;
        if self.depth == 0 {
            self.undo.clear();
        }
    }

    fn leased(&self, state: &State, p: PoolIdx) -> Ie {
        self.pools
            .get(&p)
            .copied()
            .unwrap_or(state.market.pools[p.get()].leased)
    }

    /// Checks that `state` (after commit applied this overlay) shows the
    /// figures the overlay predicted. Debug builds only.
    pub(crate) fn check_applied(&self, state: &State) -> Result<(), String> {
        for (h, d) in &self.hosts {
            let host = &state.hosts[*h];
            if host.allocated != d.allocated || host.n_flex_tasks != d.n_flex_tasks {
                return Err(format!(
                    "host {}: committed {} / {} flex, planned {} / {} flex",
                    host.spec.id, host.allocated, host.n_flex_tasks, d.allocated, d.n_flex_tasks
                ));
            }
        }
        for (p, leased) in &self.pools {
            if state.market.pools[p.get()].leased != *leased {
                return Err(format!("pool {p:?}: committed lease differs from the plan"));
            }
        }
        for (t, alloc) in &self.teams {
            if state.teams[t.get()].allocated != *alloc {
                return Err(format!(
                    "team {t:?}: committed allocation differs from the plan"
                ));
            }
        }
        Ok(())
    }
}

fn restore<K: std::hash::Hash + Eq, V>(map: &mut FxMap<K, V>, key: K, prev: Option<V>) {
    match prev {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// The committed state seen through an overlay: every read a checker,
/// scorer, search or victim selection makes goes through here.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) state: &'a State,
    pub(crate) overlay: &'a Overlay,
    /// The instant the view is read at (a round's or a commit's `now`), for
    /// the checks that look at the forecast.
    pub(crate) now: Timestamp,
    /// When each leased host's lease is expected to end, from the demand
    /// forecast (the round works it out when first asked; see
    /// `Planner::lease_ends`).
    pub(crate) lease_ends: Option<LeaseEnds<'a>>,
}

/// A round's expected lease ends, worked out per pool on first use.
#[derive(Clone, Copy)]
pub(crate) struct LeaseEnds<'a> {
    /// The round's map per pool (indexed by pool), once computed.
    pub(crate) cells: &'a [std::cell::OnceCell<FxMap<HostIdx, Timestamp>>],
    /// The round's `now` (the prediction's input with the state).
    pub(crate) now: Timestamp,
    /// The prediction for one pool (`round::predict_pool_lease_ends`).
    pub(crate) predict: fn(&State, Timestamp, PoolIdx) -> FxMap<HostIdx, Timestamp>,
}

impl<'a> View<'a> {
    /// The state at the latest input's time.
    pub(crate) fn new(state: &'a State, overlay: &'a Overlay) -> Self {
        View::at(state, overlay, state.last_now)
    }

    /// The state read at `now` (not earlier than the latest input).
    pub(crate) fn at(state: &'a State, overlay: &'a Overlay, now: Timestamp) -> Self {
        View {
            state,
            overlay,
            now: now.max(state.last_now),
            lease_ends: None,
        }
    }

    /// This view with the round's expected lease ends.
    pub(crate) fn with_lease_ends(mut self, ends: LeaseEnds<'a>) -> Self {
        self.lease_ends = Some(ends);
        self
    }

    /// When the host's lease is expected to end, if the forecast says.
    pub(crate) fn lease_end(&self, h: HostIdx) -> Option<Timestamp> {
        let marked = self.state.hosts[h].returning;
        let predicted = self.lease_ends.and_then(|e| {
            let p = self.state.hosts[h].pool;
            e.cells[p.get()]
                .get_or_init(|| (e.predict)(self.state, e.now, p))
                .get(&h)
                .copied()
        });
        match (marked, predicted) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    #[inline]
    pub(crate) fn host(&self, h: HostIdx) -> &'a Host {
        &self.state.hosts[h]
    }

    #[inline]
    pub(crate) fn allocated(&self, h: HostIdx) -> &'a Resources {
        match self.overlay.hosts.get(&h) {
            Some(d) => &d.allocated,
            None => &self.state.hosts[h].allocated,
        }
    }

    pub(crate) fn free(&self, h: HostIdx) -> Resources {
        self.host(h).spec.capacity.saturating_sub(self.allocated(h))
    }

    #[inline]
    pub(crate) fn n_flex(&self, h: HostIdx) -> u32 {
        match self.overlay.hosts.get(&h) {
            Some(d) => d.n_flex_tasks,
            None => self.state.hosts[h].n_flex_tasks,
        }
    }

    #[inline]
    pub(crate) fn reclaiming(&self, h: HostIdx) -> bool {
        match self.overlay.hosts.get(&h) {
            Some(d) => d.reclaiming,
            None => self.state.hosts[h].reclaiming,
        }
    }

    #[inline]
    pub(crate) fn leased(&self, p: PoolIdx) -> Ie {
        self.overlay.leased(self.state, p)
    }

    /// True if flex work may lease some host of this pool that carries no
    /// flex work now (see [`crate::model::market::Market::can_lease_with`]).
    pub(crate) fn can_lease_in(&self, p: PoolIdx) -> bool {
        self.state.market.can_lease_with(p, self.leased(p))
    }

    pub(crate) fn team_allocated(&self, t: TeamIdx, tier: Tier) -> &'a Resources {
        match self.overlay.teams.get(&t) {
            Some(a) => &a[tier.index()],
            None => &self.state.teams[t.get()].allocated[tier.index()],
        }
    }

    /// Tasks of `job` on host `h` (kept only for jobs that track placement).
    pub(crate) fn job_on_host(&self, job_id: JobId, job: &Job, h: HostIdx) -> u32 {
        match self.overlay.job_hosts.get(&(job_id, h)) {
            Some(n) => *n,
            None => job.on_host(h),
        }
    }

    /// Tasks of `job` in zone `z` (kept only for jobs that track placement).
    pub(crate) fn job_in_zone(&self, job_id: JobId, job: &Job, z: ZoneIdx) -> u32 {
        match self.overlay.job_zones.get(&(job_id, z)) {
            Some(n) => *n,
            None => job.per_zone.get(z.get()).copied().unwrap_or(0),
        }
    }

    /// Tasks of the unique-host group `g` on host `h`.
    pub(crate) fn group_on_host(&self, g: &Arc<str>, h: HostIdx) -> u32 {
        if !self.overlay.groups.is_empty()
            && let Some(n) = self.overlay.groups.get(&(g.clone(), h))
        {
            return *n;
        }
        self.state
            .unique_groups
            .get(g)
            .and_then(|m| m.get(&h))
            .copied()
            .unwrap_or(0)
    }

    /// Active hosts with at least `min_free` free in `dim`, in tentative key
    /// order, less those `fit` passes over (see [`HostIndex::candidates`]).
    pub(crate) fn candidates(
        &self,
        dim: IndexDim,
        min_free: u64,
        loosest_first: bool,
        include: impl Fn(usize) -> bool,
        fit: Option<Fit>,
    ) -> Candidates<'a, impl Fn(HostIdx) -> bool + 'a> {
        let overlay = self.overlay;
        debug_assert!(overlay.run.is_none(), "search inside a class run");
        // Every touched active host has an entry in the overlay's index, and
        // so does every host of a promoted partition (promotion needs one
        // touched host at least): an empty index means nothing is touched or
        // promoted, and the committed index is exact.
        let shadow = (overlay.index.len() > 0).then_some(Shadow {
            index: &overlay.index,
            promoted: |p| overlay.shadow(p) == PartShadow::Promoted,
            touched: move |h| overlay.hosts.contains_key(&h),
        });
        self.state
            .index
            .candidates(shadow, dim, min_free, loosest_first, include, fit)
    }

    /// Number of index partitions, committed or tentative.
    pub(crate) fn n_parts(&self) -> usize {
        self.state.index.n_parts().max(self.overlay.index.n_parts())
    }

    /// Active hosts in partition `part`, counting tentative moves between
    /// partitions (a host gaining its first flex task changes partition).
    pub(crate) fn len_part(&self, part: usize) -> usize {
        let tentative = self.overlay.index.len_part(part);
        match self.overlay.shadow(part) {
            PartShadow::Promoted => tentative,
            PartShadow::Counted(n) => self.state.index.len_part(part) - n + tentative,
        }
    }
}

#[cfg(test)]
mod tests;
