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

#[test]
fn a_request_key_makes_a_resubmission_return_the_same_job() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    let mut first = job(1, "enc", Tier::Flex, 2, 1000, 1024);
    first.request_key = Some("ep1-chunks".into());
    assert_eq!(
        s.handle_job_submitted(t(0), first.clone()).unwrap(),
        JobId(1)
    );
    // A retried create with a fresh id and the same spec: the same job.
    let mut retry = first.clone();
    retry.id = JobId(2);
    assert_eq!(s.handle_job_submitted(t(1), retry).unwrap(), JobId(1));
    assert_eq!(s.job_ids(), vec![JobId(1)]);
    // The same key with another spec is refused, naming the key.
    let mut other = first.clone();
    other.id = JobId(3);
    other.n_tasks = 5;
    let err = s.handle_job_submitted(t(2), other).unwrap_err();
    assert_eq!(
        err.to_string(),
        "request key `ep1-chunks` of team enc was used for job job-1 with a different spec"
    );
    // Another team may use the same key.
    let mut theirs = first.clone();
    theirs.id = JobId(4);
    theirs.team = TeamId::from("ml");
    assert_eq!(s.handle_job_submitted(t(3), theirs).unwrap(), JobId(4));
    // Once the job is forgotten, the key is free again.
    s.handle_job_killed(t(4), JobId(1)).unwrap();
    assert_eq!(
        s.handle_forget_finished(t(5), t(5)).unwrap(),
        vec![JobId(1)]
    );
    assert_eq!(
        s.job_by_request_key(&TeamId::from("enc"), "ep1-chunks"),
        None
    );
    let mut again = first;
    again.id = JobId(6);
    assert_eq!(s.handle_job_submitted(t(6), again).unwrap(), JobId(6));
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    type Edit = Box<dyn Fn(&mut SchedulerConfig)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "NaN scorer weight",
            Box::new(|c| c.flex.scorers = vec![(ScorerKind::CpuBinPack, f64::NAN)]),
            "flex.scorers",
        ),
        (
            "negative scorer weight",
            Box::new(|c| c.critical.scorers = vec![(ScorerKind::Spread, -1.0)]),
            "critical.scorers",
        ),
        (
            "all weights zero",
            Box::new(|c| c.flex.scorers = vec![(ScorerKind::Spread, 0.0)]),
            "flex.scorers",
        ),
        (
            "no scorer",
            Box::new(|c| c.flex.scorers.clear()),
            "flex.scorers",
        ),
        (
            "good_enough above 1",
            Box::new(|c| c.flex.good_enough = 1.5),
            "flex.good_enough",
        ),
        (
            "good_enough NaN",
            Box::new(|c| c.critical.good_enough = f64::NAN),
            "critical.good_enough",
        ),
        (
            "max_hosts_scored zero",
            Box::new(|c| c.flex.max_hosts_scored = Some(0)),
            "flex.max_hosts_scored",
        ),
        (
            "team weight zero",
            Box::new(|c| {
                c.teams.insert(
                    TeamId::from("ml"),
                    TeamConfig {
                        weight: 0,
                        ..TeamConfig::default()
                    },
                );
            }),
            "teams.weight",
        ),
        (
            "an hour and a bit of grace",
            Box::new(|c| c.market.preempt_grace = DurationMs::from_mins(61)),
            "market.preempt_grace",
        ),
        (
            "unknown reference type",
            Box::new(|c| c.market.reference_instance_type = "z9.huge".into()),
            "reference_instance_type",
        ),
    ];
    for (name, edit, field) in cases {
        let mut c = SchedulerConfig::default();
        edit(&mut c);
        match Scheduler::try_new(c) {
            Err(InputError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A floor price cannot even be written as NaN or negative.
    assert_eq!(Price::new(f64::NAN), None);
    assert_eq!(Price::new(-1.0), None);
    let bad: Result<SchedulerConfig, _> = toml::from_str("[market]\nfloor_price = -1.0");
    assert!(bad.unwrap_err().to_string().contains("non-negative"));
}

/// A round big enough that the overlay promotes the hosts' partition (more
/// than 64 hosts touched, see `model::overlay`), with a gang that touches
/// them all and then rolls back: the job placed after it must land exactly
/// where it lands in a round without the gang, and what it cannot place must
/// be reported with the same reasons (counted through `len_part`).
#[test]
fn a_gang_rolled_back_after_promotion_leaves_no_trace_on_later_placements() {
    let fleet = |s: &mut Scheduler| {
        for i in 0..200 {
            let mut h = host(&format!("h{i:03}"), "a", 8, 32);
            // A quarter of the fleet in a second pool: two pools' partitions.
            if i % 4 == 3 {
                h.pool = PoolId::from("pool-b");
            }
            s.handle_host_added(t(0), h).unwrap();
        }
    };
    // Two 4-vCPU tasks fit per host: 400 places for a gang of 401.
    let mut gang = job(1, "enc", Tier::Flex, 401, 4000, 4096);
    gang.gang = true;
    gang.priority = 10;
    // Two of these fit per host too: 400 of 450 are placed.
    let later = job(2, "enc", Tier::Flex, 450, 3000, 2048);

    let mut with_gang = Scheduler::new(SchedulerConfig::default());
    fleet(&mut with_gang);
    with_gang.handle_job_submitted(t(0), gang).unwrap();
    with_gang.handle_job_submitted(t(0), later.clone()).unwrap();
    let mut without = Scheduler::new(SchedulerConfig::default());
    fleet(&mut without);
    without.handle_job_submitted(t(0), later).unwrap();

    let plan = with_gang.plan_round(t(1)).unwrap();
    let reference = without.plan_round(t(1)).unwrap();
    let gang_unplaced = plan.unplaced.iter().find(|u| u.job == JobId(1)).unwrap();
    assert!(
        gang_unplaced.reasons.counts.iter().any(|c| c.reason
            == Reason::GangIncomplete {
                n_placed: 400,
                n_needed: 401
            }),
        "the gang touched every host before it rolled back: {:?}",
        gang_unplaced.reasons
    );
    assert_eq!(plan.assignments, reference.assignments);
    assert_eq!(plan.assignments.len(), 400);
    let later_unplaced = |p: &Plan| p.unplaced.iter().find(|u| u.job == JobId(2)).cloned();
    let unplaced = later_unplaced(&plan).expect("50 tasks do not fit");
    assert_eq!(unplaced.n_tasks, 50);
    assert_eq!(Some(unplaced), later_unplaced(&reference));
}
