//! The pending queue: tiers strictly ordered (critical first); inside a tier,
//! teams by weighted dominant resource share (DRF); inside a team, jobs by
//! higher bid, then higher priority, then older first.
//!
//! Entries are *jobs*, not tasks: all tasks of a job share one shape, so a
//! job is one equivalence class (Borg) and a round costs O(jobs with ready
//! tasks), not O(queued tasks). Per team the jobs sit in a `BTreeSet`
//! because a round walks them in order without removing them (planning must
//! not mutate the queue). Teams are ordered per round with a
//! `priority_queue::PriorityQueue`, whose `change_priority` fits DRF's
//! "re-rank the team after every placement". Retry back-offs wait in a second
//! `PriorityQueue` keyed by ready time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use priority_queue::PriorityQueue;
use rustc_hash::FxHasher;

/// Deterministic (not OS-seeded) hashing that also implements `Debug`.
type FxBuildHasher = std::hash::BuildHasherDefault<FxHasher>;

use crate::spec::job::{JobSpec, Tier};
use crate::units::ids::{JobId, TaskId, TeamId, TeamIdx};
use crate::units::price::Price;
use crate::units::time::Timestamp;

/// A job's position within its team: smaller sorts first.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct JobRank {
    bid: Reverse<Price>,
    priority: Reverse<i32>,
    submit_time: Timestamp,
    pub(crate) job: JobId,
}

impl JobRank {
    /// The job's bid (zero if it did not bid).
    pub(crate) fn bid(&self) -> Price {
        self.bid.0
    }

    pub(crate) fn of(spec: &JobSpec, submit_time: Timestamp) -> Self {
        JobRank {
            bid: Reverse(spec.bid.unwrap_or(Price::ZERO)),
            priority: Reverse(spec.priority),
            submit_time,
            job: spec.id,
        }
    }
}

/// A team's position within a tier for one pick: in the flex tier the
/// highest bid of its next job first; then teams below their guarantee,
/// then lowest weighted dominant share, then team name. Smaller is served
/// first. The name (not the arrival order) breaks ties so that a core
/// restored from an unordered store serves teams in the same order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TeamRank {
    /// The bid of the team's next job (zero in the critical tier).
    pub(crate) bid: Reverse<Price>,
    pub(crate) at_or_above_guarantee: bool,
    /// Dominant share in parts per million, divided by the team's weight.
    pub(crate) weighted_share: u64,
    pub(crate) name: TeamId,
}

/// Per-round team order: pop the team to serve next, push it back re-ranked.
pub(crate) type TeamOrder = PriorityQueue<TeamIdx, Reverse<TeamRank>, FxBuildHasher>;

/// Jobs with ready tasks, and tasks waiting out a retry back-off.
#[derive(Clone, Debug, Default)]
pub(crate) struct JobQueue {
    /// Per tier, per team: jobs that have at least one ready task.
    tiers: [BTreeMap<TeamIdx, BTreeSet<JobRank>>; 2],
    /// Pending tasks not ready before a time, earliest first.
    delayed: PriorityQueue<TaskId, Reverse<(Timestamp, TaskId)>, FxBuildHasher>,
}

impl JobQueue {
    /// Makes a job visible to rounds (it gained its first ready task).
    pub(crate) fn insert_job(&mut self, tier: Tier, team: TeamIdx, rank: JobRank) {
        self.tiers[tier.index()]
            .entry(team)
            .or_default()
            .insert(rank);
    }

    /// Hides a job from rounds (its last ready task left).
    pub(crate) fn remove_job(&mut self, tier: Tier, team: TeamIdx, rank: &JobRank) {
        let teams = &mut self.tiers[tier.index()];
        if let Some(jobs) = teams.get_mut(&team) {
            jobs.remove(rank);
            if jobs.is_empty() {
                teams.remove(&team);
            }
        }
    }

    /// Teams of `tier` that have jobs with ready tasks, in team index order.
    pub(crate) fn teams(&self, tier: Tier) -> impl Iterator<Item = TeamIdx> + '_ {
        self.tiers[tier.index()].keys().copied()
    }

    /// The first job of `team` in `tier` ranked after `after` (or the first at all).
    pub(crate) fn next_job(
        &self,
        tier: Tier,
        team: TeamIdx,
        after: Option<&JobRank>,
    ) -> Option<JobRank> {
        let jobs = self.tiers[tier.index()].get(&team)?;
        match after {
            None => jobs.first().copied(),
            Some(a) => jobs
                .range((std::ops::Bound::Excluded(*a), std::ops::Bound::Unbounded))
                .next()
                .copied(),
        }
    }

    /// The jobs of `tier` with ready tasks, team by team, each team's in rank order.
    pub(crate) fn jobs(&self, tier: Tier) -> impl Iterator<Item = JobId> + '_ {
        self.tiers[tier.index()]
            .values()
            .flat_map(|jobs| jobs.iter().map(|r| r.job))
    }

    /// Number of jobs with ready tasks in `tier`.
    pub(crate) fn n_jobs(&self, tier: Tier) -> usize {
        self.tiers[tier.index()].values().map(BTreeSet::len).sum()
    }

    /// Parks a task until `ready_at`.
    pub(crate) fn delay(&mut self, task: TaskId, ready_at: Timestamp) {
        self.delayed.push(task, Reverse((ready_at, task)));
    }

    /// Forgets a parked task (it was killed).
    pub(crate) fn cancel_delay(&mut self, task: &TaskId) {
        self.delayed.remove(task);
    }

    /// Removes and returns a parked task whose time has come.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<TaskId> {
        let (_, Reverse((ready_at, _))) = self.delayed.peek()?;
        if *ready_at <= now {
            self.delayed.pop().map(|(t, _)| t)
        } else {
            None
        }
    }

    /// The earliest time a parked task becomes ready.
    pub(crate) fn next_ready_at(&self) -> Option<Timestamp> {
        self.delayed.peek().map(|(_, Reverse((t, _)))| *t)
    }

    /// Number of parked tasks.
    pub(crate) fn n_delayed(&self) -> usize {
        self.delayed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::resources::Resources;

    fn spec(id: u64, bid: Option<f64>, priority: i32) -> JobSpec {
        JobSpec {
            id: JobId(id),
            request_key: None,
            expected_runtime: None,
            name: String::new(),
            team: TeamId::from("t"),
            tier: Tier::Flex,
            priority,
            bid: bid.and_then(Price::new),
            request: Resources::cpu_mem(1000, 1024),
            n_tasks: 1,
            hard_constraints: vec![],
            soft_constraints: vec![],
            gang: false,
            retry: Default::default(),
            disruption_budget: None,
            checkpoint_interval: None,
        }
    }

    #[test]
    fn jobs_order_by_bid_then_priority_then_age() {
        let t = |ms| Timestamp::from_millis(ms);
        let cases = [
            (
                "higher bid first",
                (spec(1, Some(2.0), 0), t(5)),
                (spec(2, Some(1.0), 9), t(1)),
            ),
            (
                "bid beats no bid",
                (spec(1, Some(0.5), 0), t(5)),
                (spec(2, None, 9), t(1)),
            ),
            (
                "then higher priority",
                (spec(1, None, 5), t(5)),
                (spec(2, None, 1), t(1)),
            ),
            (
                "then older",
                (spec(1, None, 1), t(1)),
                (spec(2, None, 1), t(5)),
            ),
            (
                "then job id",
                (spec(1, None, 1), t(1)),
                (spec(2, None, 1), t(1)),
            ),
        ];
        for (name, (a, ta), (b, tb)) in cases {
            assert!(JobRank::of(&a, ta) < JobRank::of(&b, tb), "{name}");
        }
    }

    #[test]
    fn delayed_tasks_come_due_in_time_order() {
        let mut q = JobQueue::default();
        let task = |i| TaskId::new(JobId(1), i);
        q.delay(task(0), Timestamp::from_millis(30));
        q.delay(task(1), Timestamp::from_millis(10));
        assert_eq!(q.next_ready_at(), Some(Timestamp::from_millis(10)));
        assert_eq!(q.pop_due(Timestamp::from_millis(5)), None);
        assert_eq!(q.pop_due(Timestamp::from_millis(30)), Some(task(1)));
        assert_eq!(q.pop_due(Timestamp::from_millis(30)), Some(task(0)));
        assert_eq!(q.n_delayed(), 0);
    }
}
