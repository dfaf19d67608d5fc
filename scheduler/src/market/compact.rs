//! Compaction suggestions: flex tasks worth moving so that whole leased
//! hosts empty out and return to supply (Borg's cell compaction, applied to
//! leases). The core only suggests; the shell may migrate (stop the task and
//! let it requeue, or start the copy first) or ignore them.
//!
//! For each pool, leased hosts are tried least-loaded first (fewest flex
//! millicores); a host is suggested for emptying only if *every* one of its
//! flex tasks fits, under all placement constraints, on another leased host
//! of the same pool that is not itself being emptied. Targets are tried
//! fullest first, so moves pack rather than spread.

use serde::{Deserialize, Serialize};

use crate::ids::{HostId, TaskId};
use crate::job::Tier;
use crate::market::{Ie, PoolIdx};
use crate::place::Pipeline;
use crate::place::index::HostIdx;
use crate::state::{Phase, State};
use crate::time::Timestamp;

/// Move one task to another host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// The task.
    pub task: TaskId,
    /// Where it runs now.
    pub from: HostId,
    /// Where it fits.
    pub to: HostId,
}

/// A host that would be released by a group of migrations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compaction {
    /// The host to empty of flex work.
    pub host: HostId,
    /// The lease it would give back.
    pub frees: Ie,
    /// The moves that empty it.
    pub migrations: Vec<Migration>,
}

/// Plans up to `max_hosts` compactions. Leaves `state` as it found it.
pub(crate) fn suggest(
    state: &mut State,
    pipeline: &Pipeline,
    now: Timestamp,
    max_hosts: usize,
) -> Vec<Compaction> {
    let mut out = Vec::new();
    // Tentative moves, undone at the end: (job, from, to).
    let mut undo: Vec<(TaskId, HostIdx, HostIdx)> = Vec::new();
    for pool in 0..state.market.pools.len() as PoolIdx {
        if out.len() >= max_hosts {
            break;
        }
        let leased: Vec<HostIdx> = state.market.pools[pool as usize]
            .hosts
            .iter()
            .copied()
            .filter(|&h| {
                let host = &state.hosts[h as usize];
                host.n_flex_tasks > 0 && !host.reclaiming
            })
            .collect();
        let flex_cpu = |state: &State, h: HostIdx| -> u64 {
            live_flex(state, h)
                .map(|t| state.jobs[&t.job].spec.request.cpu_millis)
                .sum()
        };
        let mut sources = leased.clone();
        sources.sort_by_key(|&h| (flex_cpu(state, h), h));
        let mut emptied: Vec<HostIdx> = Vec::new();
        for &src in &sources {
            if out.len() >= max_hosts {
                break;
            }
            let tasks: Vec<TaskId> = live_flex(state, src).collect();
            if tasks.is_empty() || tasks.len() != state.hosts[src as usize].n_flex_tasks as usize {
                continue; // some flex work is already stopping: nothing to gain by moving the rest
            }
            let mut targets: Vec<HostIdx> = leased
                .iter()
                .copied()
                .filter(|&h| h != src && !emptied.contains(&h))
                .collect();
            targets.sort_by_key(|&h| {
                (
                    std::cmp::Reverse(state.hosts[h as usize].allocated.cpu_millis),
                    h,
                )
            });
            let checkpoint = undo.len();
            let mut moves = Vec::new();
            for task in tasks {
                let job = &state.jobs[&task.job];
                let Some(&dst) = targets
                    .iter()
                    .find(|&&h| pipeline.check(state, job, h).is_ok())
                else {
                    break;
                };
                state.uncharge(task.job, src, now);
                state.charge(task.job, dst, now);
                undo.push((task, src, dst));
                moves.push(Migration {
                    task,
                    from: state.hosts[src as usize].spec.id.clone(),
                    to: state.hosts[dst as usize].spec.id.clone(),
                });
            }
            if state.hosts[src as usize].n_flex_tasks == 0 {
                emptied.push(src);
                out.push(Compaction {
                    host: state.hosts[src as usize].spec.id.clone(),
                    frees: state.hosts[src as usize].ie,
                    migrations: moves,
                });
            } else {
                for (task, from, to) in undo.drain(checkpoint..).rev() {
                    state.uncharge(task.job, to, now);
                    state.charge(task.job, from, now);
                }
            }
        }
    }
    for (task, from, to) in undo.into_iter().rev() {
        state.uncharge(task.job, to, now);
        state.charge(task.job, from, now);
    }
    out
}

/// Flex tasks on a host that are assigned or running (not stopping).
fn live_flex(state: &State, h: HostIdx) -> impl Iterator<Item = TaskId> + '_ {
    state.hosts[h as usize].tasks.iter().copied().filter(|t| {
        let job = &state.jobs[&t.job];
        job.spec.tier == Tier::Flex
            && matches!(
                job.tasks[t.index as usize].phase,
                Phase::Assigned(_) | Phase::Running(_)
            )
    })
}
