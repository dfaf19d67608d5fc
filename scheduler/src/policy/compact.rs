//! Compaction suggestions: flex tasks worth moving so that whole leased
//! hosts empty out and return to supply (Borg's cell compaction, applied to
//! leases). The core only suggests; the shell may migrate (stop the task and
//! let it requeue, or start the copy first) or ignore them.
//!
//! For each pool, leased hosts are tried least-loaded first (fewest flex
//! millicores); a host is suggested for emptying only if *every* one of its
//! flex tasks fits, under all placement constraints, on another leased host
//! of the same pool that is not itself being emptied. Targets are tried
//! fullest first, so moves pack rather than spread. The what-if moves are
//! made in an overlay, so the state is never touched.

use std::cmp::Reverse;

use serde::{Deserialize, Serialize};

use crate::model::State;
use crate::model::overlay::{Overlay, View};
use crate::policy::preempt::is_preemptible;
use crate::policy::search::Pipeline;
use crate::units::ids::{HostId, HostIdx, TaskId};
use crate::units::ie::Ie;

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

/// Plans up to `max_hosts` compactions.
pub(crate) fn suggest(state: &State, pipeline: &Pipeline, max_hosts: usize) -> Vec<Compaction> {
    let mut out = Vec::new();
    let mut overlay = Overlay::default();
    let outer = overlay.checkpoint();
    for pool in &state.market.pools {
        if out.len() >= max_hosts {
            break;
        }
        let leased: Vec<HostIdx> = pool
            .hosts
            .iter()
            .copied()
            .filter(|&h| {
                let host = &state.hosts[h];
                host.n_flex_tasks > 0 && !host.reclaiming
            })
            .collect();
        let flex_cpu = |h: HostIdx| -> u64 {
            live_flex(state, h)
                .map(|t| state.jobs[&t.job].spec.request.cpu_millis)
                .sum()
        };
        let mut sources = leased.clone();
        sources.sort_by_key(|&h| (flex_cpu(h), state.hosts[h].rank));
        let mut emptied: Vec<HostIdx> = Vec::new();
        for &src in &sources {
            if out.len() >= max_hosts {
                break;
            }
            let tasks: Vec<TaskId> = live_flex(state, src).collect();
            if tasks.is_empty() || tasks.len() != state.hosts[src].n_flex_tasks as usize {
                continue; // some flex work is already stopping: nothing to gain by moving the rest
            }
            let mark = overlay.checkpoint();
            let mut moves = Vec::new();
            for task in tasks {
                let view = View::new(state, &overlay);
                let mut targets: Vec<HostIdx> = leased
                    .iter()
                    .copied()
                    .filter(|&h| h != src && !emptied.contains(&h))
                    .collect();
                targets
                    .sort_by_key(|&h| (Reverse(view.allocated(h).cpu_millis), state.hosts[h].rank));
                let job = &state.jobs[&task.job];
                let Some(&dst) = targets
                    .iter()
                    .find(|&&h| pipeline.check(&view, job, h).is_ok())
                else {
                    break;
                };
                overlay.charge(state, task, src, false);
                overlay.charge(state, task, dst, true);
                moves.push(Migration {
                    task,
                    from: state.hosts[src].spec.id.clone(),
                    to: state.hosts[dst].spec.id.clone(),
                });
            }
            if View::new(state, &overlay).n_flex(src) == 0 {
                overlay.keep(mark);
                emptied.push(src);
                out.push(Compaction {
                    host: state.hosts[src].spec.id.clone(),
                    frees: state.hosts[src].ie,
                    migrations: moves,
                });
            } else {
                overlay.rollback(state, mark);
            }
        }
    }
    overlay.rollback(state, outer);
    out
}

/// Flex tasks on a host that are assigned or running (not stopping).
fn live_flex(state: &State, h: HostIdx) -> impl Iterator<Item = TaskId> + '_ {
    state.hosts[h]
        .tasks
        .iter()
        .copied()
        .filter(|t| is_preemptible(&state.jobs[&t.job], *t))
}
