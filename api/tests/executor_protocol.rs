//! The executor protocol through a fake executor that speaks the real
//! stream: registration, launches, run events, fencing of stale and foreign
//! runs, reconnection with adoption, and heartbeat timeouts that requeue.

mod common;

use std::time::Duration;

use common::*;
use ebb_proto::v1 as pb;
use tonic::Code;

async fn job_state(
    jobs: &mut ebb_proto::v1::job_service_client::JobServiceClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
    id: u64,
) -> pb::Job {
    jobs.get_job(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_and_reports_drive_a_job_to_success() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    let a = s.executor(None, host("a", 2000, 4096)).await;
    let b = s.executor(None, host("b", 2000, 4096)).await;
    let id = jobs
        .create_job(job("enc", 4))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let (ra, rb) = (a.wait_launches(2).await, b.wait_launches(2).await);
    for r in &ra {
        a.started(r).await;
        a.exited(r, 0).await;
    }
    // One failure on b: the task is retried (after its back-off) as attempt 2.
    b.started(&rb[0]).await;
    b.exited(&rb[0], 0).await;
    b.started(&rb[1]).await;
    b.exited(&rb[1], 3).await;
    let j = eventually("three completed, one back to pending", || {
        let mut jobs = jobs.clone();
        async move {
            let j = job_state(&mut jobs, id).await;
            let c = j.counts.unwrap();
            (c.completed == 3 && c.pending == 1).then_some(j)
        }
    })
    .await;
    assert_eq!(j.phase, pb::JobPhase::Queued as i32);
    let t = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            state: pb::TaskState::Pending as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.tasks[0].n_failures, 1);
    // The pending task (failed on b, backing off) names no host; each
    // completed one names the host its run ran on, from the executors' own
    // books of what they were told to launch.
    assert_eq!(t.tasks[0].host_id, "", "a pending task holds no host");
    let done = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            state: pb::TaskState::Completed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(done.len(), 3);
    for t in &done {
        let on_a = ra.iter().any(|r| r.task_index == t.task_index);
        assert_eq!(t.host_id, if on_a { "a" } else { "b" }, "{t:?}");
    }
    assert!(a.n_refused().await + b.n_refused().await == 0);
    assert!(a.book.lock().await.double_launch.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_foreign_and_unknown_runs_are_refused_and_change_nothing() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    let a = s.executor(None, host("a", 1000, 4096)).await;
    let b = s.executor(None, host("b", 1000, 4096)).await;
    let mut req = job("enc", 2);
    // Fail fast: no back-off, so the retry is placed at once.
    req.spec.as_mut().unwrap().retry = Some(pb::RetryPolicy {
        max_retries: 3,
        initial_backoff: Some(prost_types::Duration::default()),
        max_backoff: Some(prost_types::Duration::default()),
    });
    let id = jobs.create_job(req).await.unwrap().into_inner().job_id;
    let ra = a.wait_launches(1).await[0];
    let rb = b.wait_launches(1).await[0];
    a.started(&ra).await;
    b.started(&rb).await;

    // Foreign: a reports b's run.
    a.started(&rb).await;
    a.exited(&rb, 0).await;
    a.wait_for(|bk| bk.refused.len() == 2, "two refusals").await;
    {
        let bk = a.book.lock().await;
        assert!(
            bk.refused.iter().all(|r| r.code == "foreign_run"),
            "{:?}",
            bk.refused
        );
    }
    // Unknown task.
    let ghost = pb::RunId {
        job_id: 999,
        task_index: 0,
        attempt: 1,
    };
    a.exited(&ghost, 0).await;
    a.wait_for(|bk| bk.refused.len() == 3, "third refusal")
        .await;
    assert_eq!(a.book.lock().await.refused[2].code, "unknown_task");

    // Stale: a's run fails, is relaunched as attempt 2; a late report for
    // attempt 1 is refused.
    a.exited(&ra, 1).await;
    a.wait_launches(2).await;
    let ra2 = a.launched().await[1];
    assert_eq!((ra2.task_index, ra2.attempt), (ra.task_index, 2));
    a.exited(&ra, 0).await;
    a.wait_for(|bk| bk.refused.len() == 4, "stale refusal")
        .await;
    assert_eq!(a.book.lock().await.refused[3].code, "stale_run");

    // Nothing of the refused reports was applied.
    let j = job_state(&mut jobs, id).await;
    let c = j.counts.unwrap();
    assert_eq!((c.completed, c.running), (0, 2), "{c:?}");
    let tasks = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let tb = tasks
        .iter()
        .find(|t| t.task_index == rb.task_index)
        .unwrap();
    assert_eq!(
        (tb.host_id.as_str(), tb.state),
        ("b", pb::TaskState::Running as i32)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_message_must_register_with_a_valid_host() {
    let s = TestServer::start(|_| {}).await;
    let mut client =
        ebb_proto::v1::executor_service_client::ExecutorServiceClient::new(s.channel().await);
    let hb = pb::ExecutorMessage {
        message: Some(pb::executor_message::Message::Heartbeat(pb::Heartbeat {
            sent_time: None,
        })),
    };
    let e = client
        .attach(tokio_stream::iter(vec![hb]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let mut bad = host("x", 0, 1024);
    bad.zone.clear();
    let e = FakeExecutor::attach(&s.addr, None, bad, vec![])
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    let f = fields(&e);
    assert!(
        f.contains(&"register.host.zone".to_owned())
            && f.contains(&"register.host.capacity.cpu_millis".to_owned()),
        "{f:?}"
    );
    let mut unknown = host("y", 1000, 1024);
    unknown.instance_type = "m99.huge".into();
    let e = FakeExecutor::attach(&s.addr, None, unknown, vec![])
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A pool the server does not configure is a typo, not a silent idle host.
    let mut typo = host("z", 1000, 1024);
    typo.pool = "dmeo".into();
    let e = FakeExecutor::attach(&s.addr, None, typo, vec![])
        .await
        .err()
        .unwrap();
    assert_eq!(fields(&e), ["register.host.pool"], "{e:?}");
    assert!(
        e.message().contains("dmeo") || format!("{e:?}").contains("configured: demo"),
        "{e:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_executor_has_its_runs_adopted_not_relaunched() {
    let s = TestServer::start(|c| {
        c.executors.heartbeat_interval = Duration::from_millis(500);
        c.executors.missed_heartbeats = 10;
    })
    .await;
    let mut jobs = s.jobs(None).await;
    let a = s.executor(None, host("a", 4000, 8192)).await;
    let id = jobs
        .create_job(job("enc", 4))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let runs = a.wait_launches(4).await;
    // Two started, two only received.
    a.started(&runs[0]).await;
    a.started(&runs[1]).await;
    eventually("two running", || {
        let mut jobs = jobs.clone();
        async move { (job_state(&mut jobs, id).await.counts.unwrap().running == 4).then_some(()) }
    })
    .await;
    let book = a.book.clone();
    drop(a);
    // The executor restarts; it still has runs 0, 1 and 2 (3 never started).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = vec![runs[0], runs[1], runs[2]];
    {
        let mut b = book.lock().await;
        b.live.remove(&(runs[3].job_id, runs[3].task_index));
    }
    let a =
        FakeExecutor::attach_with_book(&s.addr, None, host("a", 4000, 8192), kept.clone(), book)
            .await
            .unwrap();
    let reg = a.book.lock().await.registered.last().unwrap().clone();
    let mut adopted: Vec<_> = reg.adopted.iter().map(run_key).collect();
    adopted.sort();
    let mut want: Vec<_> = kept.iter().map(run_key).collect();
    want.sort();
    assert_eq!(adopted, want);
    // The lost run is requeued and launched again as attempt 2 — the only new launch.
    a.wait_launches(5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = a.book.lock().await;
    assert_eq!(b.launches.len(), 5, "adopted runs are not launched again");
    let again = b.launches[4].run.unwrap();
    assert_eq!((again.task_index, again.attempt), (runs[3].task_index, 2));
    assert!(b.double_launch.is_empty(), "{:?}", b.double_launch);
    drop(b);
    let tasks = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let states: Vec<i32> = tasks.iter().map(|t| t.state).collect();
    let running = pb::TaskState::Running as i32;
    assert_eq!(
        &states[..3],
        &[running, running, running],
        "run 2 was adopted as started"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_scheduler_does_not_own_are_stopped_at_registration() {
    let s = TestServer::start(|_| {}).await;
    let stray = pb::RunId {
        job_id: 77,
        task_index: 3,
        attempt: 1,
    };
    let a = FakeExecutor::attach(&s.addr, None, host("a", 1000, 1024), vec![stray])
        .await
        .unwrap();
    a.wait_for(|b| !b.stops.is_empty(), "a stop for the stray run")
        .await;
    let b = a.book.lock().await;
    assert_eq!(b.stops[0].run.map(|r| run_key(&r)), Some(run_key(&stray)));
    assert!(b.registered[0].adopted.is_empty());
    drop(b);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_executor_is_declared_lost_and_its_runs_requeued() {
    let s = TestServer::start(|c| {
        c.executors.heartbeat_interval = Duration::from_millis(200);
        c.executors.missed_heartbeats = 3;
    })
    .await;
    let mut jobs = s.jobs(None).await;
    let a = s.executor(None, host("a", 2000, 4096)).await;
    let id = jobs
        .create_job(job("enc", 2))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let runs = a.wait_launches(2).await;
    for r in &runs {
        a.started(r).await;
    }
    // Heartbeats keep it alive well past the timeout.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        a.closed.lock().await.is_none(),
        "a heartbeating executor is not lost"
    );
    // Silence: the host is lost after 3 × 200 ms, the stream closed.
    a.heartbeats
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let status = a.wait_closed().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("heartbeat"), "{status:?}");
    let j = eventually("requeued", || {
        let mut jobs = jobs.clone();
        async move {
            let j = job_state(&mut jobs, id).await;
            (j.counts.unwrap().pending == 2).then_some(j)
        }
    })
    .await;
    assert_eq!(j.phase, pb::JobPhase::Queued as i32);
    // Another executor picks the work up as second attempts.
    let b = s.executor(None, host("b", 2000, 4096)).await;
    let again = b.wait_launches(2).await;
    assert!(again.iter().all(|r| r.attempt == 2), "{again:?}");
    // The lost host's late reports are refused (it is no longer registered).
    let tasks = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(
        tasks.iter().all(|t| t.n_failures == 0),
        "a lost host costs no retry"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_sends_stops_with_the_preempt_reason() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    let mut market = s.market(None).await;
    // One m5.16xlarge host (1 IE) in the 4-IE demo pool.
    let a = s.executor(None, host("a", 4000, 8192)).await;
    let id = jobs
        .create_job(job("enc", 2))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let runs = a.wait_launches(2).await;
    for r in &runs {
        a.started(r).await;
    }
    // Streaming takes the whole pool: supply 0, the lease is reclaimed.
    market
        .report_streaming_demand(pb::ReportStreamingDemandRequest {
            pool: "demo".into(),
            demand_micro_ie: 4_000_000,
        })
        .await
        .unwrap();
    a.wait_for(|b| b.stops.len() == 2, "two preemptions").await;
    {
        let b = a.book.lock().await;
        assert!(
            b.stops
                .iter()
                .all(|s| s.reason == pb::StopReason::Preempt as i32)
        );
        // The market's preempt grace (30 s by default).
        assert!(b.stops.iter().all(|s| s.grace.unwrap().seconds == 30));
    }
    for r in &runs {
        a.stopped(r).await;
    }
    let t = eventually("requeued after preemption", || {
        let mut jobs = jobs.clone();
        async move {
            let t = jobs
                .list_tasks(pb::ListTasksRequest {
                    job_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .tasks;
            t.iter()
                .all(|t| t.state == pb::TaskState::Pending as i32)
                .then_some(t)
        }
    })
    .await;
    assert!(t.iter().all(|t| t.n_preemptions == 1 && t.n_failures == 0));
    // The next round says why they wait: the pool has no supply.
    eventually("pool supply as the reason", || {
        let mut jobs = jobs.clone();
        async move {
            let why = jobs
                .explain_pending(pb::ExplainPendingRequest {
                    job_id: id,
                    task_index: None,
                })
                .await
                .unwrap()
                .into_inner();
            why.reasons
                .iter()
                .any(|r| r.code == pb::PendingReasonCode::PoolSupply as i32)
                .then_some(())
        }
    })
    .await;
    s.stop().await;
}
