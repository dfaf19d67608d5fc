//! The internal market through the public API: supply limits leases,
//! reclaim frees whole hosts cheapest first within budgets, failovers are
//! emergencies, critical work preempts flex work, prices clear second-price,
//! and the ledger adds up.

mod common;

use common::*;
use ebb_scheduler::*;

const HOUR: u64 = 3_600_000;

/// Pool `use1a` (us-east-1) with 10 reserved m5.16xlarge (10 IE) and six
/// m5.16xlarge executor hosts (1 IE, 64 vCPU each); pool `usw2a`
/// (us-west-2) with 10 IE reserved and no hosts or demand. Streaming in
/// use1a: 5 IE, so supply = 10 − 5 − 0.5 (10% daily headroom) = 4.5 IE.
fn market(config: SchedulerConfig) -> Scheduler {
    let mut s = Scheduler::new(config);
    for (pool, region) in [("use1a", "us-east-1"), ("usw2a", "us-west-2")] {
        let spec = PoolSpec {
            id: PoolId::from(pool),
            region: region.into(),
            headroom: HeadroomPolicy::default(),
        };
        s.handle_pool_configured(t(0), spec).unwrap();
        let reservations = vec![Reservation::new("m5.16xlarge", 10)];
        s.handle_reservations(t(0), &PoolId::from(pool), reservations)
            .unwrap();
    }
    for i in 0..6 {
        let mut h = host(&format!("h{i}"), "us-east-1a", 64, 256);
        h.pool = PoolId::from("use1a");
        h.instance_type = "m5.16xlarge".into();
        s.handle_host_added(t(0), h).unwrap();
    }
    s.handle_streaming_demand(t(0), &PoolId::from("use1a"), Ie::from_whole(5))
        .unwrap();
    s
}

/// A flex job whose tasks each take a whole m5.16xlarge.
fn whole_host_job(id: u64, team: &str, n: u32, bid: f64) -> JobSpec {
    let mut j = job(id, team, Tier::Flex, n, 64_000, 1024);
    j.bid = Price::new(bid);
    j
}

fn pool(s: &Scheduler, id: &str) -> PoolStatus {
    s.pool(&PoolId::from(id)).unwrap()
}

#[test]
fn supply_is_reserved_minus_streaming_minus_headroom_and_limits_leases() {
    let mut s = market(SchedulerConfig::default());
    let p = pool(&s, "use1a");
    assert_eq!(
        (p.reserved, p.streaming),
        (Ie::from_whole(10), Ie::from_whole(5))
    );
    assert_eq!(
        p.headroom,
        Ie::from_f64(0.5),
        "10% daily scaling; us-west-2 has no demand to fail over"
    );
    assert_eq!(p.supply, Ie::from_f64(4.5));

    s.handle_job_submitted(t(0), whole_host_job(1, "enc", 6, 1.0))
        .unwrap();
    let plan = round(&mut s, t(1));
    assert_eq!(plan.assignments.len(), 4, "4 hosts fit in 4.5 IE of supply");
    let p = pool(&s, "use1a");
    assert_eq!(
        (p.leased, p.idle, p.n_leased_hosts),
        (Ie::from_whole(4), Ie::from_f64(0.5), 4)
    );
    let reasons = s.task(task(1, 5)).unwrap().pending_reasons.unwrap();
    assert_eq!(
        reasons.to_string(),
        "insufficient cpu on 4 hosts, pool use1a supply exhausted on 2 hosts"
    );
    assert!(reasons.resolvable_by_preemption());
}

#[test]
fn critical_work_ignores_supply() {
    let mut s = market(SchedulerConfig::default());
    s.handle_streaming_demand(t(0), &PoolId::from("use1a"), Ie::from_whole(10))
        .unwrap();
    assert_eq!(pool(&s, "use1a").supply, Ie::ZERO);
    s.handle_job_submitted(t(0), whole_host_job(1, "enc", 1, 1.0))
        .unwrap();
    s.handle_job_submitted(t(0), job(2, "streaming", Tier::Critical, 1, 64_000, 1024))
        .unwrap();
    let plan = round(&mut s, t(1));
    let placed: Vec<u64> = plan.assignments.iter().map(|a| a.run.task.job.0).collect();
    assert_eq!(placed, vec![2]);
}

#[test]
fn reclaim_frees_whole_hosts_cheapest_bids_first_and_requeues_victims() {
    let mut s = market(SchedulerConfig::default());
    s.handle_job_submitted(t(0), whole_host_job(1, "enc", 2, 1.0))
        .unwrap();
    s.handle_job_submitted(t(0), whole_host_job(2, "enc", 2, 2.0))
        .unwrap();
    round(&mut s, t(1));
    drain(&mut s);
    for i in 0..2 {
        for j in [1, 2] {
            s.handle_task_started(t(1), run(&s, task(j, i))).unwrap();
        }
    }
    assert_eq!(pool(&s, "use1a").leased, Ie::from_whole(4));

    // Evening ramp: supply falls to 10 − 7 − 0.7 = 2.3 IE; two hosts must go.
    s.handle_streaming_demand(t(HOUR), &PoolId::from("use1a"), Ie::from_whole(7))
        .unwrap();
    let (plan, report) = s.run_round(t(HOUR)).unwrap();
    let victims: Vec<TaskId> = plan.preemptions.iter().map(|p| p.run.task).collect();
    assert_eq!(
        victims,
        vec![task(1, 0), task(1, 1)],
        "the lower bid goes first"
    );
    assert!(
        plan.preemptions
            .iter()
            .all(|p| !p.emergency && !p.over_budget)
    );
    assert_eq!(report.n_preempted, 2);
    let stops = drain(&mut s);
    assert!(stops.iter().all(|a| matches!(a, Action::Stop { cause: StopCause::Preempt, grace, .. } if *grace == DurationMs::from_secs(30))));

    // Still leased while stopping, but not reclaimed twice.
    assert_eq!(pool(&s, "use1a").leased, Ie::from_whole(4));
    assert!(round(&mut s, t(HOUR + 1)).preemptions.is_empty());

    for v in &victims {
        s.handle_task_stopped(t(HOUR + 20_000), run(&s, *v))
            .unwrap();
    }
    assert_eq!(pool(&s, "use1a").leased, Ie::from_whole(2));
    let v = s.task(task(1, 0)).unwrap();
    assert_eq!(
        (v.state, v.n_preemptions, v.n_failures),
        (TaskState::Pending, 1, 0)
    );
    // The ledger records the work lost when the victims stopped: 1 IE each
    // for the time since they started (at 1 ms) until they stopped, grace included.
    let ledger = s.ledger(t(HOUR + 20_000));
    let enc = ledger.iter().find(|e| e.team.as_str() == "enc").unwrap();
    assert_eq!(enc.n_preemptions, 2);
    assert_eq!(
        enc.lost,
        IeMs(2 * 1_000_000 * u128::from(HOUR + 20_000 - 1)),
        "{enc:?}"
    );
}

#[test]
fn budgets_hold_in_ordinary_reclaim_and_failover_exceeds_them_on_record() {
    let mut s = market(SchedulerConfig::default());
    let mut j = whole_host_job(1, "enc", 4, 1.0);
    j.disruption_budget = Some(DisruptionBudget {
        limit: BudgetLimit::MaxTasks(1),
        window: DurationMs::from_mins(60),
    });
    s.handle_job_submitted(t(0), j).unwrap();
    round(&mut s, t(1));
    s.handle_streaming_demand(t(HOUR), &PoolId::from("use1a"), Ie::from_whole(7))
        .unwrap();
    let plan = round(&mut s, t(HOUR));
    assert_eq!(
        plan.preemptions.len(),
        1,
        "the budget allows one preemption per hour"
    );
    assert!(!plan.preemptions[0].over_budget);
    let p = pool(&s, "use1a");
    assert!(
        p.leased > p.supply,
        "the rest of the deficit eats headroom, not streaming capacity"
    );

    s.handle_failover(t(HOUR + 1), "us-west-2", true).unwrap();
    let plan = round(&mut s, t(HOUR + 1));
    assert_eq!(plan.preemptions.len(), 1);
    assert!(plan.preemptions[0].emergency && plan.preemptions[0].over_budget);
    // The ledger books preemptions when the victims actually stop.
    let enc = |s: &Scheduler| {
        s.ledger(t(HOUR + 2))
            .into_iter()
            .find(|e| e.team.as_str() == "enc")
            .unwrap()
    };
    assert_eq!((enc(&s).n_preemptions, enc(&s).n_over_budget), (0, 0));
    let victims: Vec<RunId> = s
        .job_ids()
        .iter()
        .flat_map(|&j| {
            let n = s.job_spec(j).unwrap().n_tasks;
            (0..n).map(move |i| TaskId::new(j, i))
        })
        .filter(|&id| matches!(s.task(id).unwrap().state, TaskState::Stopping { .. }))
        .map(|id| run(&s, id))
        .collect();
    assert_eq!(victims.len(), 2);
    for v in victims {
        s.handle_task_stopped(t(HOUR + 2), v).unwrap();
    }
    assert_eq!((enc(&s).n_preemptions, enc(&s).n_over_budget), (2, 1));
}

#[test]
fn failover_moves_demand_and_uses_the_buffer() {
    let mut s = market(SchedulerConfig::default());
    s.handle_streaming_demand(t(0), &PoolId::from("usw2a"), Ie::from_whole(4))
        .unwrap();
    // us-east-1 keeps us-west-2's demand / (2 − 1) = 4 IE as failover buffer.
    let p = pool(&s, "use1a");
    assert_eq!(p.headroom, Ie::from_f64(0.5 + 4.0));
    assert_eq!(p.supply, Ie::from_f64(0.5));
    s.handle_failover(t(1), "us-west-2", true).unwrap();
    let p = pool(&s, "use1a");
    assert_eq!(
        p.streaming,
        Ie::from_whole(9),
        "us-west-2's 4 IE now served here"
    );
    assert_eq!(
        p.headroom,
        Ie::from_f64(0.9),
        "the failover buffer is in use"
    );
    assert_eq!(p.supply, Ie::from_f64(0.1));
    s.handle_failover(t(2), "us-west-2", false).unwrap();
    assert_eq!(pool(&s, "use1a").supply, Ie::from_f64(0.5));
    assert!(s.handle_failover(t(3), "eu-west-1", true).is_err());
}

#[test]
fn critical_tasks_preempt_the_cheapest_flex_work_and_never_each_other() {
    let mut s = Scheduler::new(SchedulerConfig::default());
    s.handle_host_added(t(0), host("h1", "a", 4, 16)).unwrap();
    s.handle_host_added(t(0), host("h2", "a", 4, 16)).unwrap();
    let mut cheap = job(1, "enc", Tier::Flex, 4, 1000, 1024);
    cheap.priority = 1;
    let mut dear = job(2, "ml", Tier::Flex, 3, 1000, 1024);
    dear.priority = 9;
    s.handle_job_submitted(t(0), cheap).unwrap();
    s.handle_job_submitted(t(0), dear).unwrap();
    s.handle_job_submitted(t(0), job(3, "streaming", Tier::Critical, 1, 1000, 1024))
        .unwrap();
    round(&mut s, t(0));
    drain(&mut s);
    // Full: 4 + 3 flex + 1 critical on 8 CPUs. A second critical job needs 2 CPUs.
    s.handle_job_submitted(t(1), job(4, "streaming", Tier::Critical, 1, 2000, 1024))
        .unwrap();
    let plan = round(&mut s, t(1));
    assert!(plan.assignments.is_empty());
    let victims: Vec<TaskId> = plan.preemptions.iter().map(|p| p.run.task).collect();
    assert_eq!(victims.len(), 2, "{victims:?}");
    assert!(
        victims.iter().all(|v| v.job == JobId(1)),
        "lowest bid and priority first: {victims:?}"
    );
    assert!(matches!(
        plan.preemptions[0].cause,
        PreemptCause::Critical { job: JobId(4) }
    ));
    drain(&mut s);
    // No new victims while those stop.
    assert!(round(&mut s, t(2)).preemptions.is_empty());
    for v in victims {
        s.handle_task_stopped(t(3), run(&s, v)).unwrap();
    }
    let plan = round(&mut s, t(4));
    assert_eq!(
        plan.assignments
            .iter()
            .filter(|a| a.run.task.job == JobId(4))
            .count(),
        1
    );
}

#[test]
fn clearing_price_is_the_highest_losing_bid_or_the_floor() {
    let mut config = SchedulerConfig::default();
    config.market.floor_price = Price::new(0.1).unwrap();
    let mut s = market(config);
    s.handle_job_submitted(t(0), whole_host_job(1, "enc", 4, 3.0))
        .unwrap();
    s.handle_job_submitted(t(0), whole_host_job(2, "enc", 1, 2.0))
        .unwrap();
    let plan = round(&mut s, t(0));
    assert_eq!(plan.assignments.len(), 4);
    let price = |plan: &Plan, pool: &str| {
        plan.prices
            .iter()
            .find(|(p, _)| p.as_str() == pool)
            .unwrap()
            .1
    };
    assert_eq!(
        price(&plan, "use1a"),
        Price::new(2.0).unwrap(),
        "winners pay the highest losing bid"
    );
    assert_eq!(
        price(&plan, "usw2a"),
        Price::new(0.1).unwrap(),
        "no job lost in usw2a: its price comes from its own losers, so the floor"
    );
    assert_eq!(pool(&s, "use1a").clearing_price, Price::new(2.0).unwrap());

    // An hour at 2.0 per IE-hour for 4 IE held.
    let enc = s
        .ledger(t(HOUR))
        .into_iter()
        .find(|e| e.pool.as_str() == "use1a")
        .unwrap();
    assert!(
        (enc.leased_ie_hours() - 4.0).abs() < 1e-9 && enc.charges == Money::from_micros(8_000_000),
        "{enc:?}"
    );

    s.handle_job_killed(t(HOUR), JobId(2)).unwrap();
    let plan = round(&mut s, t(HOUR));
    assert_eq!(
        price(&plan, "use1a"),
        Price::new(0.1).unwrap(),
        "ample supply: the floor"
    );
}

#[test]
fn pool_totals_add_up_to_reserved() {
    let mut s = market(SchedulerConfig::default());
    s.handle_job_submitted(t(0), whole_host_job(1, "enc", 3, 1.0))
        .unwrap();
    round(&mut s, t(0));
    s.handle_streaming_demand(t(2 * HOUR), &PoolId::from("use1a"), Ie::from_whole(8))
        .unwrap();
    round(&mut s, t(2 * HOUR));
    for p in s.pool_totals(t(3 * HOUR)) {
        let parts = p.streaming.ie_hours()
            + p.headroom.ie_hours()
            + p.leased.ie_hours()
            + p.idle.ie_hours();
        assert!((parts - p.reserved.ie_hours()).abs() < 1e-9, "{p:?}");
        assert!(
            (p.reserved.ie_hours() - 30.0).abs() < 1e-9,
            "10 IE for 3 hours: {p:?}"
        );
    }
    let p = s
        .pool_totals(t(3 * HOUR))
        .into_iter()
        .find(|p| p.pool.as_str() == "use1a")
        .unwrap();
    // 2 h at 5 IE streaming, then 1 h at 8. Leased 3 IE throughout (the
    // victims are still stopping), but in the last hour only the 2 IE that
    // streaming leaves count as leased; the 1.8 IE over supply is a violation.
    assert!((p.streaming.ie_hours() - 18.0).abs() < 1e-9, "{p:?}");
    assert!((p.leased.ie_hours() - 8.0).abs() < 1e-9, "{p:?}");
    assert!((p.headroom.ie_hours() - 1.0).abs() < 1e-9, "{p:?}");
    assert!((p.violation.ie_hours() - 1.8).abs() < 1e-9, "{p:?}");
}

#[test]
fn market_inputs_refuse_bad_values_by_field() {
    let mut s = market(SchedulerConfig::default());
    let e = s
        .handle_reservations(t(0), &PoolId::from("nope"), vec![])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid field `pool`: unknown pool `nope`; configure it first"
    );
    let bad = vec![Reservation::new("z9.huge", 3)];
    let e = s
        .handle_reservations(t(0), &PoolId::from("use1a"), bad)
        .unwrap_err();
    assert!(
        matches!(
            e,
            InputError::InvalidField {
                field: "reservations.instance_type",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(pool(&s, "use1a").reserved, Ie::from_whole(10), "unchanged");
    let mut spec = PoolSpec {
        id: PoolId::from("p"),
        region: "r".into(),
        headroom: HeadroomPolicy::default(),
    };
    spec.headroom.daily_scaling_fraction = f64::NAN;
    let e = s.handle_pool_configured(t(0), spec).unwrap_err();
    assert!(matches!(
        e,
        InputError::InvalidField {
            field: "pool.headroom.daily_scaling_fraction",
            ..
        }
    ));
    let mut h = host("odd", "us-east-1a", 8, 32);
    h.pool = PoolId::from("use1a");
    h.instance_type = "z9.huge".into();
    let e = s.handle_host_added(t(0), h).unwrap_err();
    assert!(
        matches!(
            e,
            InputError::InvalidField {
                field: "instance_type",
                ..
            }
        ),
        "{e}"
    );
    let mut j = whole_host_job(9, "enc", 1, 1.0);
    j.bid = None;
    assert!(Price::new(f64::INFINITY).is_none() && Price::new(-1.0).is_none());
    let mut bad_config = SchedulerConfig::default();
    bad_config.market.reference_instance_type = "m5.huge".into();
    assert!(matches!(
        Scheduler::try_new(bad_config),
        Err(InputError::InvalidField {
            field: "reference_instance_type",
            ..
        })
    ));
}

#[test]
fn compaction_suggests_moves_that_empty_whole_leased_hosts_and_changes_nothing() {
    let mut s = market(SchedulerConfig::default());
    // Spread policy puts one 8-vCPU task on each of three hosts.
    let spread = SchedulerConfig {
        flex: TierPolicy::single(ScorerKind::Spread),
        ..SchedulerConfig::default()
    };
    let mut s2 = market(spread);
    for s in [&mut s, &mut s2] {
        s.handle_job_submitted(t(0), job(1, "enc", Tier::Flex, 3, 8_000, 1024))
            .unwrap();
        round(s, t(0));
    }
    assert_eq!(
        pool(&s, "use1a").n_leased_hosts,
        1,
        "bin-packing leases one host"
    );
    assert!(
        s.compaction_suggestions(10).is_empty(),
        "nothing to compact"
    );

    assert_eq!(
        pool(&s2, "use1a").n_leased_hosts,
        3,
        "spreading leases three"
    );
    let before = s2.pools();
    let suggestions = s2.compaction_suggestions(10);
    assert_eq!(suggestions.len(), 2, "{suggestions:?}");
    assert!(
        suggestions
            .iter()
            .all(|c| c.migrations.len() == 1 && c.frees == Ie::from_whole(1))
    );
    let target = &suggestions[0].migrations[0].to;
    assert!(
        suggestions.iter().all(|c| &c.migrations[0].to == target),
        "everything packs onto one host"
    );
    assert_eq!(s2.pools(), before, "suggesting changes nothing");
}

#[test]
fn clearing_price_table() {
    // (name, floor, [(bid, n whole-host tasks)] in one team, expected use1a price)
    // use1a has 4.5 IE of supply and six 1-IE hosts.
    type Case = (&'static str, f64, &'static [(f64, u32)], f64);
    let cases: [Case; 5] = [
        ("ample supply pays the floor", 0.5, &[(3.0, 2)], 0.5),
        (
            "contended pays the highest losing bid",
            0.5,
            &[(3.0, 4), (2.0, 1), (1.0, 1)],
            2.0,
        ),
        (
            "a losing bid below the floor pays the floor",
            0.5,
            &[(3.0, 4), (0.2, 1)],
            0.5,
        ),
        ("no bid loses as zero", 0.0, &[(3.0, 4), (0.0, 2)], 0.0),
        (
            "exactly full, nobody losing: floor",
            0.25,
            &[(3.0, 4)],
            0.25,
        ),
    ];
    for (name, floor, jobs, want) in cases {
        let mut config = SchedulerConfig::default();
        config.market.floor_price = Price::new(floor).unwrap();
        let mut s = market(config);
        for (i, (bid, n)) in jobs.iter().enumerate() {
            s.handle_job_submitted(t(0), whole_host_job(i as u64 + 1, "enc", *n, *bid))
                .unwrap();
        }
        let plan = round(&mut s, t(0));
        let got = plan
            .prices
            .iter()
            .find(|(p, _)| p.as_str() == "use1a")
            .unwrap()
            .1;
        assert_eq!(got, Price::new(want).unwrap(), "{name}");
    }
}

#[test]
fn a_zero_budget_allows_no_ordinary_preemption_and_poll_timeout_names_the_window() {
    let mut s = market(SchedulerConfig::default());
    let mut a = whole_host_job(1, "enc", 2, 1.0);
    a.disruption_budget = Some(DisruptionBudget {
        limit: BudgetLimit::MaxPercent(0),
        window: DurationMs::from_mins(60),
    });
    let mut b = whole_host_job(2, "enc", 2, 1.0);
    b.disruption_budget = Some(DisruptionBudget {
        limit: BudgetLimit::MaxTasks(1),
        window: DurationMs::from_mins(30),
    });
    s.handle_job_submitted(t(0), a).unwrap();
    s.handle_job_submitted(t(0), b).unwrap();
    round(&mut s, t(1));
    // Supply falls to 10 − 7 − 0.7 = 2.3 IE: two of the four hosts must go.
    s.handle_streaming_demand(t(HOUR), &PoolId::from("use1a"), Ie::from_whole(7))
        .unwrap();
    let plan = round(&mut s, t(HOUR));
    let victims: Vec<u64> = plan.preemptions.iter().map(|p| p.run.task.job.0).collect();
    assert_eq!(
        victims,
        vec![2],
        "0% allows none; job 2's budget allows one"
    );
    // Job 2's budget gains room when its preemption leaves the 30-minute window.
    let wakeup = t(HOUR + 30 * 60_000);
    assert_eq!(plan.budget_wakeup, Some(wakeup));
    assert_eq!(s.poll_timeout(), Some(wakeup));
    for a in drain(&mut s) {
        if let Action::Stop { run, .. } = a {
            s.handle_task_stopped(t(HOUR + 10), run).unwrap();
        }
    }
    assert!(
        round(&mut s, t(HOUR + 30 * 60_000 - 1))
            .preemptions
            .is_empty()
    );
    let plan = round(&mut s, wakeup);
    assert_eq!(
        plan.preemptions
            .iter()
            .map(|p| p.run.task.job.0)
            .collect::<Vec<_>>(),
        vec![2],
        "the window passed: one more"
    );
}

#[test]
fn a_critical_gang_that_cannot_fit_whole_preempts_nothing() {
    let mut s = market(SchedulerConfig::default());
    s.handle_job_submitted(t(0), whole_host_job(1, "enc", 4, 1.0))
        .unwrap();
    round(&mut s, t(1));
    // A critical gang of 7 whole hosts: the fleet has 6. Preempting all the
    // flex work would still leave it unplaced, so nothing may be preempted,
    // round after round.
    let mut gang = job(2, "streaming", Tier::Critical, 7, 64_000, 1024);
    gang.gang = true;
    s.handle_job_submitted(t(2), gang).unwrap();
    for i in 0..3 {
        let plan = round(&mut s, t(3 + i));
        assert!(
            plan.preemptions.is_empty(),
            "round {i}: {:?}",
            plan.preemptions
        );
        let reasons = &plan
            .unplaced
            .iter()
            .find(|u| u.job == JobId(2))
            .unwrap()
            .reasons;
        assert!(
            reasons.to_string().contains("gang needs 7 tasks"),
            "{reasons}"
        );
    }
    // A gang of 3 fits once flex work makes room: its victims are chosen at once.
    let mut small = job(3, "streaming", Tier::Critical, 3, 64_000, 1024);
    small.gang = true;
    s.handle_job_submitted(t(10), small).unwrap();
    let plan = round(&mut s, t(11));
    assert_eq!(plan.preemptions.len(), 1, "2 idle hosts + 1 preempted");
}

#[test]
fn instance_types_learned_later_count_and_survive_a_restore() {
    let mut s = market(SchedulerConfig::default());
    let mut weird = s.catalog().get("m5.4xlarge").unwrap().clone();
    weird.name = "m9.4xlarge".into();
    weird.vcpus = 32;
    // Unknown: the reservation is refused, naming the type.
    let err = s
        .handle_reservations(
            t(1),
            &PoolId::from("use1a"),
            vec![Reservation::new("m9.4xlarge", 2)],
        )
        .unwrap_err();
    assert!(err.to_string().contains("m9.4xlarge"), "{err}");
    assert_eq!(
        s.handle_instance_types(t(2), vec![weird.clone()]).unwrap(),
        1
    );
    assert_eq!(
        s.handle_instance_types(t(2), vec![weird.clone()]).unwrap(),
        0,
        "idempotent"
    );
    let mut changed = weird.clone();
    changed.vcpus = 48;
    assert!(
        s.handle_instance_types(t(2), vec![changed]).is_err(),
        "a known type keeps its facts"
    );
    s.handle_reservations(
        t(3),
        &PoolId::from("use1a"),
        vec![Reservation::new("m9.4xlarge", 2)],
    )
    .unwrap();
    // Another family: counted by vCPU ratio, 32 / 64 = 0.5 IE each.
    assert_eq!(pool(&s, "use1a").reserved, Ie::from_whole(1));
    let copy = Scheduler::restore(s.snapshot()).unwrap();
    assert_eq!(copy.catalog().get("m9.4xlarge"), Some(&weird));
    assert_eq!(pool(&copy, "use1a").reserved, Ie::from_whole(1));
}

#[test]
fn a_reservation_counts_only_during_its_term_and_poll_timeout_names_the_boundaries() {
    let mut s = market(SchedulerConfig::default());
    let mut r = Reservation::new("m5.16xlarge", 4);
    r.start = Some(t(HOUR));
    r.end = Some(t(2 * HOUR));
    s.handle_reservations(t(1), &PoolId::from("usw2a"), vec![r])
        .unwrap();
    assert_eq!(pool(&s, "usw2a").reserved, Ie::ZERO);
    assert_eq!(s.poll_timeout(), Some(t(HOUR)));
    s.handle_tick(t(HOUR + 500)).unwrap();
    assert_eq!(pool(&s, "usw2a").reserved, Ie::from_whole(4));
    assert_eq!(s.poll_timeout(), Some(t(2 * HOUR)));
    s.handle_tick(t(3 * HOUR)).unwrap();
    assert_eq!(pool(&s, "usw2a").reserved, Ie::ZERO);
    // Reserved IE-hours count exactly the term, though the ticks came late
    // (plus the fixture's 10 IE for the first millisecond).
    let totals = s.pool_totals(t(3 * HOUR));
    let usw2a = totals.iter().find(|p| p.pool.as_str() == "usw2a").unwrap();
    assert_eq!(
        usw2a.reserved,
        IeMs(4 * 1_000_000 * u128::from(HOUR) + 10 * 1_000_000)
    );
}

/// Three regions, one pool each, 10 × m5.16xlarge (10 IE) reserved and one
/// 1-IE host per pool; streaming 4, 6 and 2 IE; `daily` scaling headroom.
fn three_regions(daily: f64) -> Scheduler {
    let mut s = Scheduler::new(SchedulerConfig::default());
    for (pool, region, demand) in [("a", "ra", 4), ("b", "rb", 6), ("c", "rc", 2)] {
        let spec = PoolSpec {
            id: PoolId::from(pool),
            region: region.into(),
            headroom: HeadroomPolicy {
                daily_scaling_fraction: daily,
                ..HeadroomPolicy::default()
            },
        };
        s.handle_pool_configured(t(0), spec).unwrap();
        s.handle_reservations(
            t(0),
            &PoolId::from(pool),
            vec![Reservation::new("m5.16xlarge", 10)],
        )
        .unwrap();
        s.handle_streaming_demand(t(0), &PoolId::from(pool), Ie::from_whole(demand))
            .unwrap();
        let mut h = host(&format!("h-{pool}"), region, 64, 256);
        h.pool = PoolId::from(pool);
        h.region = region.into();
        h.instance_type = "m5.16xlarge".into();
        s.handle_host_added(t(0), h).unwrap();
    }
    s
}

#[test]
fn the_failover_buffer_is_the_largest_inflow_one_region_could_send() {
    let s = three_regions(0.0);
    // Each region's pool holds a third of the reserved IE, so when one region
    // fails each of the two survivors takes half its traffic.
    // a: max(b's 6, c's 2) / 2 = 3; b: max(4, 2) / 2 = 2; c: max(4, 6) / 2 = 3.
    let cases = [
        ("a", 3, 10 - 4 - 3),
        ("b", 2, 10 - 6 - 2),
        ("c", 3, 10 - 2 - 3),
    ];
    for (p, buffer, supply) in cases {
        let st = pool(&s, p);
        assert_eq!(st.headroom, Ie::from_whole(buffer), "{p}: buffer");
        assert_eq!(st.supply, Ie::from_whole(supply), "{p}: supply");
    }
}

#[test]
fn a_failover_moves_traffic_and_never_raises_a_survivors_supply() {
    let mut s = three_regions(0.1);
    // Before: a's supply = 10 − 4 − 0.4 − 3 = 2.6; c's = 10 − 2 − 0.2 − 3 = 4.8.
    assert_eq!(pool(&s, "a").supply, Ie::from_f64(2.6));
    assert_eq!(pool(&s, "c").supply, Ie::from_f64(4.8));
    s.handle_failover(t(1), "rb", true).unwrap();
    // b's 6 IE move: 3 to a, 3 to c, consuming their buffers (3 each).
    let a = pool(&s, "a");
    assert_eq!(
        (a.streaming, a.headroom),
        (Ie::from_whole(7), Ie::from_f64(0.7))
    );
    assert_eq!(
        a.supply,
        Ie::from_f64(2.3),
        "down by the daily share of the inflow"
    );
    let c = pool(&s, "c");
    assert_eq!(
        (c.streaming, c.headroom),
        (Ie::from_whole(5), Ie::from_f64(0.5))
    );
    assert_eq!(c.supply, Ie::from_f64(4.5));
    // b carries no traffic now, and takes no new flex lease.
    let b = pool(&s, "b");
    assert_eq!((b.streaming, b.headroom), (Ie::ZERO, Ie::ZERO));
    let mut j = job(1, "enc", Tier::Flex, 1, 1000, 1024);
    j.hard_constraints.push(Constraint::AttributeEquals {
        key: "pool".into(),
        value: "b".into(),
    });
    s.handle_job_submitted(t(2), j).unwrap();
    let plan = round(&mut s, t(3));
    assert!(plan.assignments.is_empty());
    assert_eq!(
        plan.unplaced[0].reasons.to_string(),
        "attribute `pool` constraint on 2 hosts, pool b is in a failed-over region on 1 host"
    );
    // Failback: every figure returns.
    s.handle_failover(t(4), "rb", false).unwrap();
    assert_eq!(pool(&s, "a").supply, Ie::from_f64(2.6));
    assert_eq!(pool(&s, "b").streaming, Ie::from_whole(6));
    // A smaller region failing sends less than the buffer holds: the rest
    // of the buffer stays. c's 2 IE: 1 to a, whose buffer keeps 3 − 1 = 2,
    // so a's supply = 10 − 5 − 0.5 − 2 = 2.5.
    s.handle_failover(t(5), "rc", true).unwrap();
    let a = pool(&s, "a");
    assert_eq!(
        (a.streaming, a.headroom),
        (Ie::from_whole(5), Ie::from_f64(2.5))
    );
    assert_eq!(a.supply, Ie::from_f64(2.5));
}

#[test]
fn a_higher_bid_is_served_first_whatever_the_team_and_pays_the_losing_bid() {
    let mut config = SchedulerConfig::default();
    config.market.bid_preemption_margin = None;
    let mut s = market(config);
    // use1a has 4.5 IE of supply: four whole hosts. Team "low" bids 1.0 and
    // holds the smaller share; team "high" bids 5.0. DRF alone would serve
    // "low" first; the market serves the higher bid first.
    s.handle_job_submitted(t(0), whole_host_job(1, "low", 3, 1.0))
        .unwrap();
    s.handle_job_submitted(t(0), whole_host_job(2, "high", 3, 5.0))
        .unwrap();
    let plan = round(&mut s, t(0));
    let placed = |job: u64| {
        plan.assignments
            .iter()
            .filter(|a| a.run.task.job.0 == job)
            .count()
    };
    assert_eq!((placed(1), placed(2)), (1, 3));
    let price = plan
        .prices
        .iter()
        .find(|(p, _)| p.as_str() == "use1a")
        .unwrap()
        .1;
    assert_eq!(
        price,
        Price::new(1.0).unwrap(),
        "the highest losing bid in use1a"
    );
    // An hour later: "high" holds 3 IE-hours at 1.0, "low" 1 IE-hour at 1.0.
    let ledger = s.ledger(t(HOUR));
    let charges = |team: &str| {
        ledger
            .iter()
            .find(|e| e.team.as_str() == team)
            .unwrap()
            .charges
    };
    assert_eq!(charges("high"), Money::from_micros(3_000_000));
    assert_eq!(charges("low"), Money::from_micros(1_000_000));
}

#[test]
fn a_lease_is_never_charged_more_than_its_own_bid() {
    let mut config = SchedulerConfig::default();
    config.market.bid_preemption_margin = None;
    let mut s = market(config);
    s.handle_job_submitted(t(0), whole_host_job(1, "early", 4, 1.0))
        .unwrap();
    round(&mut s, t(0));
    // A higher bid arrives when the pool is full: it loses, and the price
    // rises to 3.0, but the early job's leases keep paying its bid of 1.0.
    s.handle_job_submitted(t(1), whole_host_job(2, "late", 1, 3.0))
        .unwrap();
    let plan = round(&mut s, t(1));
    let price = plan
        .prices
        .iter()
        .find(|(p, _)| p.as_str() == "use1a")
        .unwrap()
        .1;
    assert_eq!(price, Price::new(3.0).unwrap());
    let early = s
        .ledger(t(1 + HOUR))
        .into_iter()
        .find(|e| e.team.as_str() == "early")
        .unwrap();
    // 4 IE for an hour at 1.0 (and 1 ms at the floor, 0).
    assert_eq!(early.charges, Money::from_micros(4_000_000));
}

#[test]
fn a_much_higher_bid_displaces_cheaper_work_and_a_close_one_does_not() {
    let mut s = market(SchedulerConfig::default());
    s.handle_job_submitted(t(0), whole_host_job(1, "batch", 4, 1.0))
        .unwrap();
    round(&mut s, t(0));
    drain(&mut s);
    // 1.4 is within the 50% margin of 1.0: nothing is displaced.
    s.handle_job_submitted(t(1), whole_host_job(2, "close", 1, 1.4))
        .unwrap();
    assert!(round(&mut s, t(1)).preemptions.is_empty());
    // 2.0 is more than 1.5 × 1.0: one victim host's worth is displaced.
    s.handle_job_submitted(t(2), whole_host_job(3, "urgent", 1, 2.0))
        .unwrap();
    let plan = round(&mut s, t(2));
    assert_eq!(plan.preemptions.len(), 1);
    assert_eq!(
        plan.preemptions[0].cause,
        PreemptCause::Outbid { job: JobId(3) }
    );
    assert_eq!(plan.preemptions[0].run.task.job, JobId(1));
    // Once it stops, the higher bid takes its place.
    for a in drain(&mut s) {
        if let Action::Stop { run, .. } = a {
            s.handle_task_stopped(t(3), run).unwrap();
        }
    }
    let plan = round(&mut s, t(4));
    assert_eq!(
        plan.assignments
            .iter()
            .map(|a| a.run.task.job.0)
            .collect::<Vec<_>>(),
        vec![3]
    );
}

#[test]
fn a_gang_is_preempted_and_restarted_whole() {
    let mut s = market(SchedulerConfig::default());
    let mut gang = whole_host_job(1, "ml", 3, 0.5);
    gang.gang = true;
    s.handle_job_submitted(t(0), gang).unwrap();
    s.handle_job_submitted(t(0), whole_host_job(2, "enc", 1, 1.0))
        .unwrap();
    round(&mut s, t(0));
    drain(&mut s);
    // Supply falls to 2.3 IE: two of the four leases must go. The cheapest
    // host holds a gang member, so the gang goes whole (three hosts).
    s.handle_streaming_demand(t(HOUR), &PoolId::from("use1a"), Ie::from_whole(7))
        .unwrap();
    let plan = round(&mut s, t(HOUR));
    let mut victims: Vec<u64> = plan.preemptions.iter().map(|p| p.run.task.job.0).collect();
    victims.sort();
    assert_eq!(
        victims,
        vec![1, 1, 1],
        "the whole gang, and not the 1.0 bid"
    );
    let stopping = (0..3)
        .filter(|&i| {
            matches!(
                s.task(task(1, i)).unwrap().state,
                TaskState::Stopping { .. }
            )
        })
        .count();
    assert_eq!(stopping, 3);
    // A member lost on its own restarts the rest of its gang.
    for a in drain(&mut s) {
        if let Action::Stop { run, .. } = a {
            s.handle_task_stopped(t(HOUR + 1), run).unwrap();
        }
    }
    s.handle_streaming_demand(t(HOUR + 2), &PoolId::from("use1a"), Ie::from_whole(1))
        .unwrap();
    round(&mut s, t(HOUR + 3));
    drain(&mut s);
    let first = run(&s, task(1, 0));
    s.handle_task_lost(t(HOUR + 4), first).unwrap();
    let actions = drain(&mut s);
    let restarts = actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Stop {
                    cause: StopCause::Restart,
                    ..
                }
            )
        })
        .count();
    assert_eq!(restarts, 2, "{actions:?}");
    // Until the two are stopped, the gang waits whole.
    let plan = round(&mut s, t(HOUR + 5));
    let reasons = &plan
        .unplaced
        .iter()
        .find(|u| u.job == JobId(1))
        .unwrap()
        .reasons;
    assert_eq!(reasons.to_string(), "gang waits for 2 members still busy");
}

/// use1a with four flex whole-host tasks leased, no daily headroom, and a
/// forecast that streaming rises from 5 to 8 IE over the next hour (supply
/// 4.5 → 1.5 IE... with the fixture's 10% daily share).
fn forecast_market(runtime: Option<DurationMs>) -> Scheduler {
    let mut s = market(SchedulerConfig::default());
    let mut j = whole_host_job(1, "enc", 2, 1.0);
    j.expected_runtime = runtime;
    s.handle_job_submitted(t(0), j).unwrap();
    s
}

#[test]
fn a_forecast_keeps_long_work_off_leases_it_will_need_back() {
    // Supply now: 10 − 5 − 0.5 = 4.5 IE. Forecast: 8 IE of demand in an
    // hour, so supply 10 − 8 − 0.8 = 1.2 IE then.
    let forecast = vec![(t(HOUR), Ie::from_whole(8))];
    // Two-hour chunks: only one lease survives the whole run.
    let mut s = forecast_market(Some(DurationMs::from_mins(120)));
    s.handle_demand_forecast(t(0), &PoolId::from("use1a"), forecast.clone())
        .unwrap();
    let plan = round(&mut s, t(1));
    assert_eq!(plan.assignments.len(), 1, "{:?}", plan.unplaced);
    assert!(
        plan.unplaced[0]
            .reasons
            .to_string()
            .contains("capacity is due back")
    );
    // Ten-minute chunks finish before the demand rises: both go.
    let mut s = forecast_market(Some(DurationMs::from_mins(10)));
    s.handle_demand_forecast(t(0), &PoolId::from("use1a"), forecast.clone())
        .unwrap();
    assert_eq!(round(&mut s, t(1)).assignments.len(), 2);
    // Work that checkpoints loses little and may go anyway.
    let mut s = market(SchedulerConfig::default());
    let mut j = whole_host_job(1, "enc", 2, 1.0);
    j.expected_runtime = Some(DurationMs::from_mins(120));
    j.checkpoint_interval = Some(DurationMs::from_mins(5));
    s.handle_job_submitted(t(0), j).unwrap();
    s.handle_demand_forecast(t(0), &PoolId::from("use1a"), forecast)
        .unwrap();
    assert_eq!(round(&mut s, t(1)).assignments.len(), 2);
}

#[test]
fn hosts_return_ahead_of_forecast_demand_and_go_first_when_it_comes() {
    let mut config = SchedulerConfig::default();
    config.market.bid_preemption_margin = None;
    let mut s = market(config);
    // Four leases of short work (10-minute chunks), started at 0.
    let mut j = whole_host_job(1, "enc", 4, 1.0);
    j.expected_runtime = Some(DurationMs::from_mins(10));
    s.handle_job_submitted(t(0), j).unwrap();
    round(&mut s, t(0));
    for a in drain(&mut s) {
        if let Action::Launch { run, .. } = a {
            s.handle_task_started(t(0), run).unwrap();
        }
    }
    // At 1 h the forecast says 7 IE of demand at 1.5 h: supply 10 − 7 − 0.7
    // = 2.3 IE, so two of the four leases are due back within the 30-min lead.
    s.handle_demand_forecast(
        t(HOUR),
        &PoolId::from("use1a"),
        vec![(t(HOUR + HOUR / 2), Ie::from_whole(7))],
    )
    .unwrap();
    let plan = round(&mut s, t(HOUR));
    assert!(
        plan.preemptions.is_empty(),
        "nothing is preempted ahead of time"
    );
    assert_eq!(plan.drains.len(), 2, "{:?}", plan.drains);
    let due = plan.drains[0].due.unwrap();
    // The supply crosses 4 IE of leases a third of the way to 1.5 h.
    assert!(due > t(HOUR) && due <= t(HOUR + HOUR / 2), "{due:?}");
    let returning: Vec<HostId> = plan.drains.iter().map(|d| d.host.clone()).collect();
    assert!(
        returning
            .iter()
            .all(|h| s.host(h).unwrap().returning_at() == Some(due))
    );
    // The demand comes: reclaim takes the returning hosts first.
    s.handle_streaming_demand(
        t(HOUR + HOUR / 2),
        &PoolId::from("use1a"),
        Ie::from_whole(7),
    )
    .unwrap();
    let plan = round(&mut s, t(HOUR + HOUR / 2));
    let hosts: std::collections::BTreeSet<HostId> =
        plan.preemptions.iter().map(|p| p.host.clone()).collect();
    assert!(
        hosts.iter().all(|h| returning.contains(h)),
        "{hosts:?} not among {returning:?}"
    );
}

#[test]
fn a_returning_host_takes_only_work_that_ends_before_it_is_due() {
    let mut config = SchedulerConfig::default();
    config.market.bid_preemption_margin = None;
    let mut s = market(config);
    // One lease, half full: a 32-vCPU task of unknown length.
    s.handle_job_submitted(t(0), job(1, "enc", Tier::Flex, 1, 32_000, 1024))
        .unwrap();
    round(&mut s, t(0));
    // Forecast: demand 9 IE in 20 minutes, supply 10 − 9 − 0.9 = 0.1 IE: the
    // one lease is due back.
    s.handle_demand_forecast(
        t(1),
        &PoolId::from("use1a"),
        vec![(t(20 * 60_000), Ie::from_whole(9))],
    )
    .unwrap();
    let plan = round(&mut s, t(1));
    assert_eq!(plan.drains.len(), 1);
    let due = plan.drains[0].due.unwrap();
    let half = |id: u64, mins: Option<u64>| {
        let mut j = job(id, "enc", Tier::Flex, 1, 32_000, 1024);
        j.expected_runtime = mins.map(DurationMs::from_mins);
        j
    };
    s.handle_job_submitted(t(2), half(2, Some(120))).unwrap();
    s.handle_job_submitted(t(2), half(3, None)).unwrap();
    s.handle_job_submitted(t(2), half(4, Some(5))).unwrap();
    let plan = round(&mut s, t(2));
    let placed: Vec<u64> = plan.assignments.iter().map(|a| a.run.task.job.0).collect();
    assert_eq!(
        placed,
        vec![4],
        "only the 5-minute task ends before {due:?}: {:?}",
        plan.unplaced
    );
    for u in &plan.unplaced {
        assert!(
            u.reasons.to_string().contains("capacity is due back"),
            "{}",
            u.reasons
        );
    }
    // Withdrawing the forecast clears the mark, and the work waiting on it goes.
    s.handle_demand_forecast(t(3), &PoolId::from("use1a"), vec![])
        .unwrap();
    let plan = round(&mut s, t(3));
    assert_eq!(
        plan.drains,
        vec![Drain {
            host: plan.drains[0].host.clone(),
            due: None
        }]
    );
    assert_eq!(plan.assignments.len(), 2, "{:?}", plan.unplaced);
}

#[test]
fn a_host_that_keeps_work_after_its_gang_member_goes_stays_visible_to_reclaim() {
    let mut config = SchedulerConfig::default();
    config.market.bid_preemption_margin = None;
    let mut s = market(config);
    // A cheap gang of two 48-vCPU members (one per host) and a 16-vCPU
    // task that shares a host with one of them.
    let mut gang = job(1, "ml", Tier::Flex, 2, 48_000, 1024);
    gang.gang = true;
    gang.bid = Price::new(0.1);
    s.handle_job_submitted(t(0), gang).unwrap();
    round(&mut s, t(0));
    let mut enc = job(2, "enc", Tier::Flex, 1, 16_000, 1024);
    enc.bid = Price::new(1.0);
    s.handle_job_submitted(t(1), enc).unwrap();
    round(&mut s, t(1));
    drain(&mut s);
    assert_eq!(pool(&s, "use1a").leased, Ie::from_whole(2));
    let shared = s.task(task(2, 0)).unwrap().state.host().unwrap().clone();
    // Supply 10 − 7.8 − 0.78 = 1.42 IE: one lease goes. The lone gang
    // member's host is the cheaper, and its gang goes whole, so the shared
    // host loses its member but keeps the 1.0 bid's task — and its lease.
    s.handle_streaming_demand(t(HOUR), &PoolId::from("use1a"), Ie::from_f64(7.8))
        .unwrap();
    let plan = round(&mut s, t(HOUR));
    let mut victims: Vec<u64> = plan.preemptions.iter().map(|p| p.run.task.job.0).collect();
    victims.sort();
    assert_eq!(victims, vec![1, 1]);
    assert!(
        !s.host(&shared).unwrap().is_reclaiming(),
        "the shared host is not being emptied"
    );
    for a in drain(&mut s) {
        if let Action::Stop { run, .. } = a {
            s.handle_task_stopped(t(HOUR + 1), run).unwrap();
        }
    }
    assert_eq!(pool(&s, "use1a").leased, Ie::from_whole(1));
    // Supply 10 − 8.7 − 0.87 = 0.43 IE: the shared host's lease must go too.
    s.handle_streaming_demand(t(2 * HOUR), &PoolId::from("use1a"), Ie::from_f64(8.7))
        .unwrap();
    let plan = round(&mut s, t(2 * HOUR));
    let victims: Vec<u64> = plan.preemptions.iter().map(|p| p.run.task.job.0).collect();
    assert_eq!(
        victims,
        vec![2],
        "the lease left on the shared host is reclaimed"
    );
}
