//! End-to-end behaviour of the core through its public API: inputs, rounds,
//! commits, actions and queries.

mod common;

use common::*;
use ebb_scheduler::*;

#[test]
fn a_round_places_bin_packed_and_reports_the_rest() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.handle_host_added(t(0), host("h1", "a", 4, 16)).unwrap();
    s.handle_host_added(t(0), host("h2", "a", 4, 16)).unwrap();
    s.handle_job_submitted(t(0), job(1, "enc", Tier::Flex, 10, 1000, 1024))
        .unwrap();

    let plan = s.plan_round(t(1)).unwrap();
    assert_eq!(plan.assignments.len(), 8);
    // Planning changed nothing.
    assert_eq!(s.totals().allocated, Resources::default());
    // Bin-packing fills h1 before touching h2.
    let on_h1 = plan
        .assignments
        .iter()
        .take(4)
        .all(|a| a.host == HostId::from("h1"));
    assert!(on_h1, "{:?}", plan.assignments);

    let report = s.commit(t(1), plan).unwrap();
    assert_eq!(report.n_applied, 8);
    assert_eq!(drain(&mut s).len(), 8);
    assert_eq!(s.totals().allocated.cpu_millis, 8000);

    let view = s.task(task(1, 9)).unwrap();
    assert_eq!(view.state, TaskState::Pending);
    let reasons = view
        .pending_reasons
        .expect("an unplaced ready task has a reason");
    assert_eq!(reasons.to_string(), "insufficient cpu on 2 hosts");
    assert!(reasons.resolvable_by_preemption());
}

#[test]
fn failures_back_off_and_lost_hosts_requeue_without_using_retries() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.handle_host_added(t(0), host("h1", "a", 4, 16)).unwrap();
    s.handle_job_submitted(t(0), job(1, "enc", Tier::Flex, 1, 1000, 1024))
        .unwrap();
    round(&mut s, t(0));
    s.handle_task_started(t(5), run(&s, task(1, 0))).unwrap();
    s.handle_task_failed(t(10), run(&s, task(1, 0))).unwrap();
    let v = s.task(task(1, 0)).unwrap();
    assert_eq!((v.state.clone(), v.n_failures), (TaskState::Pending, 1));
    assert_eq!(s.poll_timeout(), Some(t(10_010)));
    // Not ready before the back-off ends.
    assert!(round(&mut s, t(5_000)).assignments.is_empty());
    assert_eq!(round(&mut s, t(10_010)).assignments.len(), 1);

    let requeued = s.handle_host_lost(t(20_000), &HostId::from("h1")).unwrap();
    assert_eq!(requeued, vec![task(1, 0)]);
    let v = s.task(task(1, 0)).unwrap();
    assert_eq!((v.state, v.n_failures), (TaskState::Pending, 1));
    assert_eq!(s.totals().allocated, Resources::default());
    let plan = round(&mut s, t(20_001));
    assert_eq!(plan.unplaced[0].reasons.to_string(), "no hosts");
}

#[test]
fn critical_work_is_placed_before_flex_and_teams_share_by_drf() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.handle_host_added(t(0), host("h1", "a", 4, 16)).unwrap();
    s.handle_job_submitted(t(0), job(1, "batch-a", Tier::Flex, 4, 1000, 1024))
        .unwrap();
    s.handle_job_submitted(t(0), job(2, "batch-b", Tier::Flex, 4, 1000, 1024))
        .unwrap();
    s.handle_job_submitted(t(1), job(3, "streaming", Tier::Critical, 2, 1000, 1024))
        .unwrap();
    let plan = round(&mut s, t(2));
    let jobs: Vec<u64> = plan.assignments.iter().map(|a| a.run.task.job.0).collect();
    assert_eq!(
        jobs,
        vec![3, 3, 1, 2],
        "critical first, then the two teams alternate"
    );
}

#[test]
fn killing_a_job_stops_placed_tasks_with_grace_and_drops_pending_ones() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.handle_host_added(t(0), host("h1", "a", 1, 16)).unwrap();
    s.handle_job_submitted(t(0), job(1, "enc", Tier::Flex, 2, 1000, 1024))
        .unwrap();
    round(&mut s, t(0));
    drain(&mut s);
    s.handle_job_killed(t(1), JobId(1)).unwrap();
    let actions = drain(&mut s);
    assert!(
        matches!(
            &actions[..],
            [Action::Stop {
                cause: StopCause::Kill,
                ..
            }]
        ),
        "{actions:?}"
    );
    assert_eq!(s.task(task(1, 1)).unwrap().state, TaskState::Killed);
    s.handle_task_stopped(t(2), run(&s, task(1, 0))).unwrap();
    assert_eq!(s.job_counts(JobId(1)).unwrap().killed, 2);
    assert_eq!(s.totals().allocated, Resources::default());
}

#[test]
fn bad_input_names_the_field_and_changes_nothing() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let mut h = host("h1", "a", 4, 16);
    h.capacity.cpu_millis = 0;
    let e = s.handle_host_added(t(0), h).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid field `capacity.cpu_millis`: must be greater than zero"
    );
    assert_eq!(s.hosts().count(), 0);

    let mut j = job(1, "enc", Tier::Flex, 0, 1000, 1024);
    assert!(matches!(
        s.handle_job_submitted(t(0), j.clone()),
        Err(InputError::InvalidField {
            field: "n_tasks",
            ..
        })
    ));
    j.n_tasks = 1;
    j.hard_constraints.push(Constraint::AttributeIn {
        key: "zone".into(),
        values: vec![],
    });
    assert!(matches!(
        s.handle_job_submitted(t(0), j),
        Err(InputError::InvalidField {
            field: "hard_constraints",
            ..
        })
    ));
    assert!(s.job_ids().is_empty());
}

#[test]
fn a_lost_run_requeues_without_using_a_retry_and_stale_reports_change_nothing() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.handle_host_added(t(0), host("h1", "a", 4, 16)).unwrap();
    s.handle_job_submitted(t(0), job(1, "enc", Tier::Flex, 1, 1000, 1024))
        .unwrap();
    round(&mut s, t(0));
    let first = run(&s, task(1, 0));
    assert_eq!(first.attempt, 1);
    s.handle_task_lost(t(5), first).unwrap();
    let v = s.task(task(1, 0)).unwrap();
    assert_eq!((v.state, v.n_failures), (TaskState::Pending, 0));
    round(&mut s, t(6));
    let second = run(&s, task(1, 0));
    assert_eq!(second.attempt, 2);
    // A late report from the first run is refused and changes nothing.
    let before = serde_json::to_string(&s.snapshot()).unwrap();
    for report in [
        s.handle_task_finished(t(7), first),
        s.handle_task_started(t(7), first),
        s.handle_task_failed(t(7), first),
        s.handle_task_lost(t(7), first),
    ] {
        assert!(
            matches!(report, Err(InputError::StaleRun { .. })),
            "{report:?}"
        );
    }
    assert_eq!(serde_json::to_string(&s.snapshot()).unwrap(), before);
    s.handle_task_finished(t(8), second).unwrap();
    assert_eq!(s.task(task(1, 0)).unwrap().state, TaskState::Completed);
}
