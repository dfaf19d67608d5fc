//! API tests through real tonic clients against a server on a loopback
//! port: every RPC, every validation rule with its field, idempotent create,
//! pagination, watch resume, and authorization across teams and roles.

mod common;

use std::time::Duration;

use common::*;
use ebb_api::auth::token_sha256;
use ebb_api::config::{Role, TokenConfig};
use ebb_proto::v1 as pb;
use tonic::Code;

fn d(ms: u64) -> Option<prost_types::Duration> {
    Some(ebb_api::convert::duration_to_wire(ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_rpc_works_end_to_end() {
    every_job_rpc_works_end_to_end_on(TestStore::from_env()).await;
}

/// The same, on etcd whatever `EBB_TEST_STORE` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_rpc_works_end_to_end_on_etcd() {
    every_job_rpc_works_end_to_end_on(TestStore::Etcd).await;
}

async fn every_job_rpc_works_end_to_end_on(store: TestStore) {
    let s = TestServer::start_on(store, |_| {}).await;
    let mut jobs = s.jobs(None).await;
    let exec = s.executor(None, host("h1", 8000, 16384)).await;

    let created = jobs
        .create_job(job("encoding", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.spec.as_ref().unwrap().n_tasks, 3);
    let id = created.job_id;
    let runs = exec.wait_launches(3).await;
    // The launch carries everything the core does not know.
    {
        let b = exec.book.lock().await;
        let l = &b.launches[0];
        let c = l.container.as_ref().unwrap();
        assert_eq!(c.image, "busybox:1.36");
        assert_eq!(c.command, vec!["sleep", "1"]);
        assert_eq!(c.env.get("CHUNK").map(String::as_str), Some("7"));
        assert_eq!(l.labels.get("show").map(String::as_str), Some("tidewater"));
        assert_eq!(l.labels.get("ebb.job_id"), Some(&id.to_string()));
        assert_eq!(l.limits.as_ref().unwrap().cpu_millis, 1000);
        assert_eq!(l.team, "encoding");
    }
    for r in &runs {
        exec.started(r).await;
    }
    let running = eventually("tasks running", || {
        let mut jobs = jobs.clone();
        async move {
            let j = jobs
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .unwrap()
                .into_inner();
            (j.counts.unwrap().running == 3 && j.phase == pb::JobPhase::Running as i32).then_some(j)
        }
    })
    .await;
    assert_eq!(running.counts.unwrap().pending, 0);

    let tasks = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            state: pb::TaskState::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tasks.tasks.len(), 3);
    assert!(
        tasks
            .tasks
            .iter()
            .all(|t| t.host_id == "h1" && t.run.unwrap().attempt == 1)
    );
    assert!(tasks.tasks.iter().all(|t| t.start_time.is_some()));

    // Logs are asked of the executor.
    let logs_jobs = jobs.clone();
    let logs = tokio::spawn(async move {
        let mut j = logs_jobs;
        j.get_task_logs(pb::GetTaskLogsRequest {
            job_id: id,
            task_index: 1,
            attempt: 0,
            tail_lines: 5,
        })
        .await
    });
    exec.wait_for(|b| !b.logs.is_empty(), "a logs request")
        .await;
    let req = exec.book.lock().await.logs[0];
    assert_eq!(req.tail_lines, 5);
    assert_eq!(req.run.unwrap().task_index, 1);
    for (data, eof) in [(&b"line 1\n"[..], false), (&b"line 2\n"[..], true)] {
        exec.send(pb::executor_message::Message::Logs(pb::LogsChunk {
            request_id: req.request_id,
            data: data.to_vec(),
            truncated: false,
            eof,
            error: String::new(),
        }))
        .await;
    }
    let logs = logs.await.unwrap().unwrap().into_inner();
    assert_eq!(logs.data, b"line 1\nline 2\n");
    assert_eq!(logs.host_id, "h1");

    let why = jobs
        .explain_pending(pb::ExplainPendingRequest {
            job_id: id,
            task_index: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(why.summary.contains("not pending"), "{}", why.summary);

    // Cancel with a grace: the stop carries it and the reason.
    let j = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: id,
            grace: d(7_000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.counts.unwrap().stopping, 3);
    exec.wait_for(|b| b.stops.len() == 3, "3 stops").await;
    {
        let b = exec.book.lock().await;
        assert!(
            b.stops
                .iter()
                .all(|s| s.grace == d(7_000) && s.reason == pb::StopReason::Cancel as i32)
        );
    }
    for r in &runs {
        exec.stopped(r).await;
    }
    let done = eventually("cancelled", || {
        let mut jobs = jobs.clone();
        async move {
            let j = jobs
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .unwrap()
                .into_inner();
            (j.phase == pb::JobPhase::Cancelled as i32).then_some(j)
        }
    })
    .await;
    assert_eq!(done.counts.unwrap().cancelled, 3);
    let e = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: id,
            grace: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = jobs
        .get_job(pb::GetJobRequest { job_id: 999 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_pending_counts_reasons_over_hosts() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    let _e1 = s.executor(None, host("small-1", 2000, 4096)).await;
    let _e2 = s.executor(None, host("small-2", 2000, 4096)).await;
    let mut big = job("encoding", 2);
    big.spec
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .cpu_millis = 4000;
    let id = jobs.create_job(big).await.unwrap().into_inner().job_id;
    let why = eventually("reasons", || {
        let mut jobs = jobs.clone();
        async move {
            let r = jobs
                .explain_pending(pb::ExplainPendingRequest {
                    job_id: id,
                    task_index: None,
                })
                .await
                .unwrap()
                .into_inner();
            (!r.reasons.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(why.n_pending, 2);
    let r = &why.reasons[0];
    assert_eq!(r.code, pb::PendingReasonCode::InsufficientResources as i32);
    assert_eq!(r.code_name, "insufficient_resources");
    assert_eq!((r.n_hosts, r.dimension.as_str()), (2, "cpu"));
    assert!(r.resolvable_by_preemption);
    assert_eq!(why.summary, "insufficient cpu on 2 hosts");
    let j = jobs
        .get_job(pb::GetJobRequest { job_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.pending_reasons.len(), 1);
    let t = jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.tasks.iter().all(|t| t.pending_reasons.len() == 1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_market_rpc_works_end_to_end() {
    every_market_rpc_works_end_to_end_on(TestStore::from_env()).await;
}

/// The same, on etcd whatever `EBB_TEST_STORE` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_market_rpc_works_end_to_end_on_etcd() {
    every_market_rpc_works_end_to_end_on(TestStore::Etcd).await;
}

async fn every_market_rpc_works_end_to_end_on(store: TestStore) {
    let s = TestServer::start_on(store, |_| {}).await;
    let mut m = s.market(None).await;
    let pools = m
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(pools.len(), 1);
    let demo = &pools[0];
    // The demo pool: four reserved m5.16xlarge, exactly 4 IE.
    assert_eq!(
        (demo.pool.as_str(), demo.reserved_micro_ie),
        ("demo", 4_000_000)
    );
    assert_eq!(demo.supply_micro_ie, 4_000_000);

    let p = m
        .report_streaming_demand(pb::ReportStreamingDemandRequest {
            pool: "demo".into(),
            demand_micro_ie: 1_000_000,
        })
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    // Headroom: 10% daily scaling of 1 IE, no failover buffer with one region.
    assert_eq!(p.streaming_micro_ie, 1_000_000);
    assert_eq!(p.headroom_micro_ie, 100_000);
    assert_eq!(p.supply_micro_ie, 2_900_000);
    let e = m
        .report_streaming_demand(pb::ReportStreamingDemandRequest {
            pool: "nope".into(),
            demand_micro_ie: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let t0 = 1_800_000_000_000u64;
    m.report_demand_forecast(pb::ReportDemandForecastRequest {
        pool: "demo".into(),
        points: vec![
            pb::ForecastPoint {
                time: Some(ebb_api::convert::ms_to_wire(t0)),
                demand_micro_ie: 2_000_000,
            },
            pb::ForecastPoint {
                time: Some(ebb_api::convert::ms_to_wire(t0 + 3_600_000)),
                demand_micro_ie: 3_000_000,
            },
        ],
    })
    .await
    .unwrap();
    let f = m
        .get_demand_forecast(pb::GetDemandForecastRequest {
            pool: "demo".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.points.len(), 2);
    assert_eq!(f.points[1].demand_micro_ie, 3_000_000);
    let e = m
        .report_demand_forecast(pb::ReportDemandForecastRequest {
            pool: "demo".into(),
            points: vec![
                pb::ForecastPoint {
                    time: Some(ebb_api::convert::ms_to_wire(t0)),
                    demand_micro_ie: 1,
                },
                pb::ForecastPoint {
                    time: Some(ebb_api::convert::ms_to_wire(t0)),
                    demand_micro_ie: 1,
                },
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["points[1].time"]);

    m.report_failover(pb::ReportFailoverRequest {
        region: "local".into(),
        active: true,
    })
    .await
    .unwrap();
    let e = m
        .report_failover(pb::ReportFailoverRequest {
            region: "mars".into(),
            active: true,
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["region"]);
    m.report_failover(pb::ReportFailoverRequest {
        region: "local".into(),
        active: false,
    })
    .await
    .unwrap();

    let r = m
        .list_reservations(pb::ListReservationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.source, "api");
    assert_eq!(r.pools[0].reservations[0].count, 4);
    let p = m
        .set_reservations(pb::SetReservationsRequest {
            pool: "demo".into(),
            reservations: vec![pb::Reservation {
                instance_type: "m5.8xlarge".into(),
                count: 3,
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    // An m5.8xlarge is half an m5.16xlarge.
    assert_eq!(p.reserved_micro_ie, 1_500_000);
    let e = m
        .set_reservations(pb::SetReservationsRequest {
            pool: "demo".into(),
            reservations: vec![pb::Reservation {
                instance_type: "m99.huge".into(),
                count: 1,
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["reservations.instance_type"]);

    let l = m
        .get_ledger(pb::GetLedgerRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(l.start_time.is_some() && l.end_time.is_some());
    let t = m
        .get_pool_totals(pb::GetPoolTotalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.pools.len(), 1);
    let n = |s: &str| s.parse::<u128>().unwrap();
    let p = &t.pools[0];
    // The five parts add up to reserved, exactly.
    assert_eq!(
        n(&p.streaming_micro_ie_ms)
            + n(&p.headroom_micro_ie_ms)
            + n(&p.leased_micro_ie_ms)
            + n(&p.idle_micro_ie_ms),
        n(&p.reserved_micro_ie_ms)
    );
    let e = m
        .get_ledger(pb::GetLedgerRequest {
            start_time: Some(ebb_api::convert::ms_to_wire(t0 + 1)),
            end_time: Some(ebb_api::convert::ms_to_wire(t0)),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["start_time"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_ranges_are_differences_of_samples() {
    ledger_ranges_are_differences_of_samples_on(TestStore::from_env()).await;
}

/// The same, on etcd whatever `EBB_TEST_STORE` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_ranges_are_differences_of_samples_on_etcd() {
    ledger_ranges_are_differences_of_samples_on(TestStore::Etcd).await;
}

async fn ledger_ranges_are_differences_of_samples_on(store: TestStore) {
    let s = TestServer::start_on(store, |c| {
        c.store.ledger_sample_interval = Duration::from_millis(200);
    })
    .await;
    let mut jobs = s.jobs(None).await;
    let mut m = s.market(None).await;
    let exec = s.executor(None, host("h1", 64000, 262144)).await;
    let id = jobs
        .create_job(job("encoding", 4))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    for r in exec.wait_launches(4).await {
        exec.started(&r).await;
    }
    let get = |r: &pb::GetLedgerResponse| -> u128 {
        r.entries
            .iter()
            .filter(|e| e.team == "encoding")
            .map(|e| e.held_micro_ie_ms.parse::<u128>().unwrap())
            .sum()
    };
    let ms = |t: &Option<prost_types::Timestamp>| {
        ebb_api::convert::ms_from_wire(t.as_ref().unwrap(), "t").unwrap()
    };
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Wait until the team holds capacity, then let several samples pass.
    let held_from = eventually("a holding", || {
        let mut m = m.clone();
        async move {
            let r = m
                .get_ledger(pb::GetLedgerRequest::default())
                .await
                .unwrap()
                .into_inner();
            r.entries
                .iter()
                .any(|e| e.held_micro_ie_ms != "0")
                .then(|| ms(&r.end_time))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let range = |start: u64, end: u64| pb::GetLedgerRequest {
        start_time: Some(ebb_api::convert::ms_to_wire(start)),
        end_time: Some(ebb_api::convert::ms_to_wire(end)),
    };
    // A past range snaps to samples at or before its ends.
    let whole = m
        .get_ledger(range(held_from, wall() - 300))
        .await
        .unwrap()
        .into_inner();
    let (s0, s2) = (ms(&whole.start_time), ms(&whole.end_time));
    let first = m.get_ledger(range(s0, s2 - 1)).await.unwrap().into_inner();
    let s1 = ms(&first.end_time);
    let second = m.get_ledger(range(s1, s2)).await.unwrap().into_inner();
    assert!(s0 < s1 && s1 < s2, "{s0} {s1} {s2}");
    assert_eq!(
        (
            ms(&first.start_time),
            ms(&second.start_time),
            ms(&second.end_time)
        ),
        (s0, s1, s2)
    );
    assert!(get(&first) > 0 && get(&second) > 0, "{first:?} {second:?}");
    // Adjacent ranges add up exactly to the range that spans them.
    assert_eq!(get(&first) + get(&second), get(&whole));
    // Holding 4/64 of one IE for (s2 - s1) ms at most.
    assert!(
        get(&second) <= u128::from(s2 - s1) * 62_500,
        "{}",
        get(&second)
    );
    let _ = id;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_serve_generic_tools() {
    let s = TestServer::start(|_| {}).await;
    let ch = s.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "ebb.v1.JobService",
        "ebb.v1.MarketService",
        "ebb.v1.ExecutorService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "ebb.v1.JobService",
        "ebb.v1.MarketService",
        "ebb.v1.ExecutorService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // The HTTP port serves metrics and health.
    let metrics = http_get(&s.http(), "/metrics").await;
    for name in [
        "ebb_queue_jobs",
        "ebb_round_duration_seconds",
        "ebb_placements_total",
        "ebb_preemptions_total",
        "ebb_pool_supply_ie",
        "ebb_executors_connected",
        "ebb_store_write_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(http_get(&s.http(), "/healthz").await.contains("ok"));
    s.stop().await;
}

/// A minimal HTTP/1.1 GET over a loopback socket.
async fn http_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_names_its_field_and_stores_nothing() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    type Case = (&'static str, fn(&mut pb::CreateJobRequest), &'static str);
    let cases: Vec<Case> = vec![
        ("no spec", |r| r.spec = None, "spec"),
        (
            "empty name",
            |r| r.spec.as_mut().unwrap().name = String::new(),
            "spec.name",
        ),
        (
            "bad name",
            |r| r.spec.as_mut().unwrap().name = "-x y".into(),
            "spec.name",
        ),
        (
            "long name",
            |r| r.spec.as_mut().unwrap().name = "a".repeat(129),
            "spec.name",
        ),
        (
            "team case",
            |r| r.spec.as_mut().unwrap().team = "Encoding".into(),
            "spec.team",
        ),
        (
            "team long",
            |r| r.spec.as_mut().unwrap().team = "a".repeat(64),
            "spec.team",
        ),
        ("tier", |r| r.spec.as_mut().unwrap().tier = 0, "spec.tier"),
        (
            "priority low",
            |r| r.spec.as_mut().unwrap().priority = -1,
            "spec.priority",
        ),
        (
            "priority high",
            |r| r.spec.as_mut().unwrap().priority = 1001,
            "spec.priority",
        ),
        (
            "bid",
            |r| r.spec.as_mut().unwrap().bid_micros_per_ie_hour = Some(u64::MAX),
            "spec.bid_micros_per_ie_hour",
        ),
        (
            "no request",
            |r| r.spec.as_mut().unwrap().request = None,
            "spec.request",
        ),
        (
            "zero cpu",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .request
                    .as_mut()
                    .unwrap()
                    .cpu_millis = 0
            },
            "spec.request.cpu_millis",
        ),
        (
            "zero memory",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .request
                    .as_mut()
                    .unwrap()
                    .memory_mib = 0
            },
            "spec.request.memory_mib",
        ),
        (
            "cpu beyond catalog",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .request
                    .as_mut()
                    .unwrap()
                    .cpu_millis = 10_000_000
            },
            "spec.request.cpu_millis",
        ),
        (
            "memory beyond catalog",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .request
                    .as_mut()
                    .unwrap()
                    .memory_mib = 1 << 40
            },
            "spec.request.memory_mib",
        ),
        (
            "gpus beyond catalog",
            |r| r.spec.as_mut().unwrap().request.as_mut().unwrap().gpus = 1000,
            "spec.request.gpus",
        ),
        (
            "network beyond catalog",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .request
                    .as_mut()
                    .unwrap()
                    .network_mbps = u64::MAX
            },
            "spec.request.network_mbps",
        ),
        (
            "zero tasks",
            |r| r.spec.as_mut().unwrap().n_tasks = 0,
            "spec.n_tasks",
        ),
        (
            "too many tasks",
            |r| r.spec.as_mut().unwrap().n_tasks = 100_001,
            "spec.n_tasks",
        ),
        (
            "empty constraint",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .hard_constraints
                    .push(pb::Constraint { kind: None })
            },
            "spec.hard_constraints[0]",
        ),
        (
            "attr key",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .soft_constraints
                    .push(pb::Constraint {
                        kind: Some(pb::constraint::Kind::AttributeEquals(pb::AttributeEquals {
                            key: String::new(),
                            value: "x".into(),
                        })),
                    })
            },
            "spec.soft_constraints[0].key",
        ),
        (
            "attr_in values",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .hard_constraints
                    .push(pb::Constraint {
                        kind: Some(pb::constraint::Kind::AttributeIn(pb::AttributeIn {
                            key: "zone".into(),
                            values: vec![],
                        })),
                    })
            },
            "spec.hard_constraints[0].values",
        ),
        (
            "retries",
            |r| {
                r.spec.as_mut().unwrap().retry = Some(pb::RetryPolicy {
                    max_retries: 1000,
                    ..Default::default()
                })
            },
            "spec.retry.max_retries",
        ),
        (
            "negative backoff",
            |r| {
                r.spec.as_mut().unwrap().retry = Some(pb::RetryPolicy {
                    max_retries: 1,
                    initial_backoff: Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    }),
                    max_backoff: None,
                })
            },
            "spec.retry.initial_backoff",
        ),
        (
            "backoff order",
            |r| {
                r.spec.as_mut().unwrap().retry = Some(pb::RetryPolicy {
                    max_retries: 1,
                    initial_backoff: d(60_000),
                    max_backoff: d(1_000),
                })
            },
            "spec.retry.initial_backoff",
        ),
        (
            "budget limit",
            |r| {
                r.spec.as_mut().unwrap().disruption_budget = Some(pb::DisruptionBudget {
                    limit: None,
                    window: d(1000),
                })
            },
            "spec.disruption_budget.limit",
        ),
        (
            "budget percent",
            |r| {
                r.spec.as_mut().unwrap().disruption_budget = Some(pb::DisruptionBudget {
                    limit: Some(pb::disruption_budget::Limit::MaxPercent(101)),
                    window: d(1000),
                })
            },
            "spec.disruption_budget.max_percent",
        ),
        (
            "budget window",
            |r| {
                r.spec.as_mut().unwrap().disruption_budget = Some(pb::DisruptionBudget {
                    limit: Some(pb::disruption_budget::Limit::MaxTasks(1)),
                    window: d(0),
                })
            },
            "spec.disruption_budget.window",
        ),
        (
            "checkpoint zero",
            |r| r.spec.as_mut().unwrap().checkpoint_interval = d(0),
            "spec.checkpoint_interval",
        ),
        (
            "runtime limit huge",
            |r| r.spec.as_mut().unwrap().runtime_limit = d(31 * 24 * 3_600_000),
            "spec.runtime_limit",
        ),
        (
            "expected runtime nanos",
            |r| {
                r.spec.as_mut().unwrap().expected_runtime = Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 2_000_000_000,
                })
            },
            "spec.expected_runtime",
        ),
        (
            "no container",
            |r| r.spec.as_mut().unwrap().container = None,
            "spec.container",
        ),
        (
            "empty image",
            |r| r.spec.as_mut().unwrap().container.as_mut().unwrap().image = String::new(),
            "spec.container.image",
        ),
        (
            "bad image",
            |r| r.spec.as_mut().unwrap().container.as_mut().unwrap().image = "Busy Box".into(),
            "spec.container.image",
        ),
        (
            "env name",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .container
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("1BAD".into(), "x".into());
            },
            "spec.container.env[1BAD]",
        ),
        (
            "capability outside the allow-list",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .container
                    .as_mut()
                    .unwrap()
                    .capabilities = vec!["KILL".into(), "SYS_ADMIN".into()]
            },
            "spec.container.capabilities[1]",
        ),
        (
            "capability listed twice",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .container
                    .as_mut()
                    .unwrap()
                    .capabilities = vec!["cap_kill".into(), "KILL".into()]
            },
            "spec.container.capabilities[1]",
        ),
        (
            "pids limit above pid_max",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .container
                    .as_mut()
                    .unwrap()
                    .pids_limit = 5_000_000
            },
            "spec.container.pids_limit",
        ),
        (
            "huge command",
            |r| {
                r.spec.as_mut().unwrap().container.as_mut().unwrap().command =
                    vec!["x".repeat(600_000)]
            },
            "spec.container.command",
        ),
        (
            "label key",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("bad key".into(), "v".into());
            },
            "spec.labels[bad key]",
        ),
        (
            "label value",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("k".into(), "v".repeat(64));
            },
            "spec.labels[k]",
        ),
        (
            "reserved label",
            |r| {
                r.spec
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("ebb.job_id".into(), "1".into());
            },
            "spec.labels[ebb.job_id]",
        ),
        (
            "too many labels",
            |r| {
                for i in 0..65 {
                    r.spec
                        .as_mut()
                        .unwrap()
                        .labels
                        .insert(format!("k{i}"), "v".into());
                }
            },
            "spec.labels",
        ),
        (
            "request id",
            |r| r.request_id = "has space".into(),
            "request_id",
        ),
        (
            "request id long",
            |r| r.request_id = "x".repeat(257),
            "request_id",
        ),
    ];
    for (name, break_it, field) in cases {
        let mut req = job("encoding", 2);
        break_it(&mut req);
        // The CLI's client-side check refuses it the same way.
        let local = ebb_api::validate::create_job(&req, &ebb_api::validate::Limits::builtin())
            .expect_err(name);
        assert!(
            local.iter().any(|v| v.field == field),
            "{name}: client-side {local:?}"
        );
        let e = jobs.create_job(req).await.expect_err(name);
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(
            fields(&e).iter().any(|f| f == field),
            "{name}: want {field}, got {:?}",
            fields(&e)
        );
        assert!(
            e.message().contains(field),
            "{name}: the message names the field: {}",
            e.message()
        );
    }
    // Several violations are reported at once.
    let mut req = job("encoding", 0);
    req.spec.as_mut().unwrap().priority = 5000;
    let e = jobs.create_job(req).await.unwrap_err();
    assert_eq!(fields(&e), vec!["spec.priority", "spec.n_tasks"]);
    // Nothing from a rejected request was stored.
    let list = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.jobs.is_empty(), "{:?}", list.jobs);
    // Other requests' fields.
    let e = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: 1,
            grace: d(2 * 3_600_000),
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["grace"]);
    let e = jobs
        .list_jobs(pb::ListJobsRequest {
            team: "NOT_A_TEAM".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["team"]);
    let e = jobs
        .list_jobs(pb::ListJobsRequest {
            phases: vec![0],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["phases[0]"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_by_request_id() {
    create_is_idempotent_by_request_id_on(TestStore::from_env()).await;
}

/// The same, on etcd whatever `EBB_TEST_STORE` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_by_request_id_on_etcd() {
    create_is_idempotent_by_request_id_on(TestStore::Etcd).await;
}

async fn create_is_idempotent_by_request_id_on(store: TestStore) {
    let s = TestServer::start_on(store, |_| {}).await;
    let mut jobs = s.jobs(None).await;
    let mut req = job("encoding", 5);
    req.request_id = "season-42-attempt-1".into();
    let a = jobs.create_job(req.clone()).await.unwrap().into_inner();
    let b = jobs.create_job(req.clone()).await.unwrap().into_inner();
    assert_eq!(a.job_id, b.job_id);
    assert_eq!(b.request_id, "season-42-attempt-1");
    // Same key, different spec: refused, nothing stored.
    let mut other = req.clone();
    other.spec.as_mut().unwrap().n_tasks = 6;
    let e = jobs.create_job(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let mut other = req.clone();
    other
        .spec
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "busybox:1.37".into();
    assert_eq!(
        jobs.create_job(other).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // The same key in another team is another job.
    let mut mine = req.clone();
    mine.spec.as_mut().unwrap().team = "ml".into();
    let c = jobs.create_job(mine).await.unwrap().into_inner();
    assert_ne!(c.job_id, a.job_id);
    let list = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.jobs.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_paginate_with_stable_tokens() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let mut req = job(if i % 2 == 0 { "a" } else { "b" }, 1);
        if i % 5 == 0 {
            req.spec
                .as_mut()
                .unwrap()
                .labels
                .insert("tier".into(), "gold".into());
        }
        ids.push(jobs.create_job(req).await.unwrap().into_inner().job_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = jobs
            .list_jobs(pb::ListJobsRequest {
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(r.jobs.len() <= 10);
        seen.extend(r.jobs.iter().map(|j| j.job_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
        // A job created between pages does not disturb the cursor.
        if pages == 1 {
            ids.push(
                jobs.create_job(job("a", 1))
                    .await
                    .unwrap()
                    .into_inner()
                    .job_id,
            );
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every job once, in id order");
    // Filters: team and label.
    let r = jobs
        .list_jobs(pb::ListJobsRequest {
            team: "b".into(),
            labels: [("tier".to_owned(), "gold".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let want: Vec<u64> = ids[..25]
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 1 && i % 5 == 0)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(r.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(), want);
    // A token is tied to its filter.
    let first = jobs
        .list_jobs(pb::ListJobsRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = jobs
        .list_jobs(pb::ListJobsRequest {
            team: "a".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["page_token"]);
    // Tasks paginate too.
    let big = jobs
        .create_job(job("a", 250))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut token = String::new();
    let mut indexes = Vec::new();
    loop {
        let r = jobs
            .list_tasks(pb::ListTasksRequest {
                job_id: big,
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        indexes.extend(r.tasks.iter().map(|t| t.task_index));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(indexes, (0..250).collect::<Vec<u32>>());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_a_dropped_stream_without_gaps() {
    a_watch_resumes_after_a_dropped_stream_without_gaps_on(TestStore::from_env()).await;
}

/// The same, on etcd whatever `EBB_TEST_STORE` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_a_dropped_stream_without_gaps_on_etcd() {
    a_watch_resumes_after_a_dropped_stream_without_gaps_on(TestStore::Etcd).await;
}

async fn a_watch_resumes_after_a_dropped_stream_without_gaps_on(store: TestStore) {
    let s = TestServer::start_on(store, |_| {}).await;
    let mut jobs = s.jobs(None).await;
    let exec = s.executor(None, host("h1", 8000, 16384)).await;
    let id = jobs
        .create_job(job("encoding", 4))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let runs = exec.wait_launches(4).await;

    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: id,
            after_cursor: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.kind,
        Some(pb::watch_event::Kind::Snapshot(_))
    ));
    exec.started(&runs[0]).await;
    exec.started(&runs[1]).await;
    let mut cursor = first.cursor;
    let mut running = 0;
    while running < 2 {
        let ev = stream.message().await.unwrap().unwrap();
        assert!(ev.cursor > cursor, "cursors increase");
        cursor = ev.cursor;
        if let Some(pb::watch_event::Kind::TaskChanged(t)) = ev.kind
            && t.state == pb::TaskState::Running as i32
        {
            running += 1;
        }
    }
    drop(stream);
    // While nobody watches, the job moves on.
    exec.started(&runs[2]).await;
    exec.started(&runs[3]).await;
    for r in &runs {
        exec.exited(r, 0).await;
    }
    eventually("succeeded", || {
        let mut jobs = jobs.clone();
        async move {
            let j = jobs
                .get_job(pb::GetJobRequest { job_id: id })
                .await
                .unwrap()
                .into_inner();
            (j.phase == pb::JobPhase::Succeeded as i32).then_some(())
        }
    })
    .await;
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: id,
            after_cursor: Some(cursor),
        })
        .await
        .unwrap()
        .into_inner();
    let mut started = 0;
    let mut completed = 0;
    let mut finished = false;
    while let Some(ev) = stream.message().await.unwrap() {
        assert!(
            ev.cursor > cursor,
            "no event at or before the cursor is repeated"
        );
        cursor = ev.cursor;
        match ev.kind {
            Some(pb::watch_event::Kind::Snapshot(_)) => {
                panic!("a resumable cursor gets no snapshot")
            }
            Some(pb::watch_event::Kind::TaskChanged(t))
                if t.state == pb::TaskState::Running as i32 =>
            {
                started += 1
            }
            Some(pb::watch_event::Kind::TaskChanged(t))
                if t.state == pb::TaskState::Completed as i32 =>
            {
                completed += 1
            }
            Some(pb::watch_event::Kind::Finished(f)) => {
                assert_eq!(f.phase, pb::JobPhase::Succeeded as i32);
                finished = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        (started, completed, finished),
        (2, 4, true),
        "exactly the missed changes, then the end"
    );
    // A cursor the server no longer holds gets a fresh snapshot flagged resync.
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_forgotten_cursor_resyncs_with_a_snapshot() {
    let s = TestServer::start(|c| c.watch.retained_events = 3).await;
    let mut jobs = s.jobs(None).await;
    let id = jobs
        .create_job(job("encoding", 10))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    jobs.cancel_job(pb::CancelJobRequest {
        job_id: id,
        grace: None,
    })
    .await
    .unwrap();
    let mut stream = jobs
        .watch_job(pb::WatchJobRequest {
            job_id: id,
            after_cursor: Some(1),
        })
        .await
        .unwrap()
        .into_inner();
    let ev = stream.message().await.unwrap().unwrap();
    let Some(pb::watch_event::Kind::Snapshot(snap)) = ev.kind else {
        panic!("expected a snapshot, got {ev:?}");
    };
    assert!(snap.resync);
    assert_eq!(snap.job.unwrap().phase, pb::JobPhase::Cancelled as i32);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_jobs_streams_every_visible_job() {
    let s = TestServer::start(|_| {}).await;
    let mut jobs = s.jobs(None).await;
    let a = jobs
        .create_job(job("a", 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut stream = jobs
        .watch_jobs(pb::WatchJobsRequest {
            team: "b".into(),
            after_cursor: None,
        })
        .await
        .unwrap()
        .into_inner();
    let b = jobs
        .create_job(job("b", 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let _ = jobs.create_job(job("a", 1)).await.unwrap();
    let ev = stream.message().await.unwrap().unwrap();
    assert_eq!(ev.job_id, b, "team a's jobs are filtered out");
    assert!(matches!(ev.kind, Some(pb::watch_event::Kind::Accepted(_))));
    let _ = a;
    s.stop().await;
}

fn tokens() -> Vec<TokenConfig> {
    let t = |name: &str, role, team: Option<&str>| TokenConfig {
        name: name.into(),
        token: Some(format!("tok-{name}")),
        sha256: None,
        role,
        team: team.map(str::to_owned),
    };
    let mut v = vec![
        t("a", Role::Team, Some("a")),
        t("b", Role::Team, Some("b")),
        t("admin", Role::Admin, None),
        t("exec", Role::Executor, None),
        t("scaler", Role::Autoscaler, None),
    ];
    // Finance's token is configured by hash only.
    v.push(TokenConfig {
        name: "fin".into(),
        token: None,
        sha256: Some(token_sha256("tok-fin")),
        role: Role::Finance,
        team: None,
    });
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_across_teams_and_roles() {
    let s = TestServer::start(|c| c.auth.tokens = tokens()).await;
    let mut a = s.jobs(Some("tok-a")).await;
    let mut b = s.jobs(Some("tok-b")).await;
    let mut admin = s.jobs(Some("tok-admin")).await;
    fn code<T>(r: Result<T, tonic::Status>) -> Code {
        r.map(|_| ()).unwrap_err().code()
    }

    // Unauthenticated.
    let mut anon = s.jobs(None).await;
    assert_eq!(
        code(anon.list_jobs(pb::ListJobsRequest::default()).await),
        Code::Unauthenticated
    );
    let mut wrong = s.jobs(Some("tok-nobody")).await;
    assert_eq!(
        code(wrong.list_jobs(pb::ListJobsRequest::default()).await),
        Code::Unauthenticated
    );

    // A team creates only for itself.
    let ja = a.create_job(job("a", 1)).await.unwrap().into_inner().job_id;
    assert_eq!(
        code(a.create_job(job("b", 1)).await),
        Code::PermissionDenied
    );
    let jb = b.create_job(job("b", 1)).await.unwrap().into_inner().job_id;
    // ... sees and cancels only its own jobs.
    assert_eq!(
        code(b.get_job(pb::GetJobRequest { job_id: ja }).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            b.cancel_job(pb::CancelJobRequest {
                job_id: ja,
                grace: None
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            b.list_tasks(pb::ListTasksRequest {
                job_id: ja,
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            b.explain_pending(pb::ExplainPendingRequest {
                job_id: ja,
                task_index: None
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            b.watch_job(pb::WatchJobRequest {
                job_id: ja,
                after_cursor: None
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            b.get_task_logs(pb::GetTaskLogsRequest {
                job_id: ja,
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            b.list_jobs(pb::ListJobsRequest {
                team: "a".into(),
                ..Default::default()
            })
            .await
        ),
        Code::PermissionDenied
    );
    let listed = b
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        vec![jb]
    );
    // Admins see everything.
    let all = admin
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 2);
    admin
        .cancel_job(pb::CancelJobRequest {
            job_id: ja,
            grace: None,
        })
        .await
        .unwrap();

    // Finance: market and ledger, no jobs.
    let mut fin_jobs = s.jobs(Some("tok-fin")).await;
    assert_eq!(
        code(fin_jobs.list_jobs(pb::ListJobsRequest::default()).await),
        Code::PermissionDenied
    );
    let mut fin = s.market(Some("tok-fin")).await;
    fin.list_pools(pb::ListPoolsRequest {}).await.unwrap();
    fin.get_ledger(pb::GetLedgerRequest::default())
        .await
        .unwrap();
    fin.get_pool_totals(pb::GetPoolTotalsRequest::default())
        .await
        .unwrap();
    let demand = || pb::ReportStreamingDemandRequest {
        pool: "demo".into(),
        demand_micro_ie: 1,
    };
    assert_eq!(
        code(fin.report_streaming_demand(demand()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            fin.set_reservations(pb::SetReservationsRequest {
                pool: "demo".into(),
                reservations: vec![]
            })
            .await
        ),
        Code::PermissionDenied
    );

    // Autoscaler: reports demand, forecasts and failovers; no jobs.
    let mut scaler = s.market(Some("tok-scaler")).await;
    scaler.report_streaming_demand(demand()).await.unwrap();
    scaler
        .report_failover(pb::ReportFailoverRequest {
            region: "local".into(),
            active: false,
        })
        .await
        .unwrap();
    scaler
        .report_demand_forecast(pb::ReportDemandForecastRequest {
            pool: "demo".into(),
            points: vec![],
        })
        .await
        .unwrap();
    let mut scaler_jobs = s.jobs(Some("tok-scaler")).await;
    assert_eq!(
        code(scaler_jobs.create_job(job("a", 1)).await),
        Code::PermissionDenied
    );

    // Teams read the market and their own ledger rows, but report nothing.
    let mut team_market = s.market(Some("tok-a")).await;
    team_market
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap();
    assert_eq!(
        code(team_market.report_streaming_demand(demand()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            team_market
                .get_pool_totals(pb::GetPoolTotalsRequest::default())
                .await
        ),
        Code::PermissionDenied
    );
    let rows = team_market
        .get_ledger(pb::GetLedgerRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(rows.entries.iter().all(|e| e.team == "a"));

    // Executors attach; nobody else does.
    let mut exec_jobs = s.jobs(Some("tok-exec")).await;
    assert_eq!(
        code(exec_jobs.list_jobs(pb::ListJobsRequest::default()).await),
        Code::PermissionDenied
    );
    let mut exec_market = s.market(Some("tok-exec")).await;
    assert_eq!(
        code(exec_market.list_pools(pb::ListPoolsRequest {}).await),
        Code::PermissionDenied
    );
    for token in ["tok-a", "tok-admin", "tok-fin", "tok-scaler"] {
        let e = FakeExecutor::attach(&s.addr, Some(token), host("h-x", 1000, 1024), vec![])
            .await
            .err()
            .unwrap_or_else(|| panic!("{token} attached"));
        assert_eq!(e.code(), Code::PermissionDenied, "{token}");
    }
    let _exec = FakeExecutor::attach(&s.addr, Some("tok-exec"), host("h-ok", 1000, 1024), vec![])
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_resource_exhausted_and_store_nothing() {
    let s = TestServer::start(|c| {
        c.limits.max_tasks_known = 10;
        c.limits.max_live_tasks_per_team = Some(6);
    })
    .await;
    let mut jobs = s.jobs(None).await;
    jobs.create_job(job("a", 5)).await.unwrap();
    let e = jobs.create_job(job("a", 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    jobs.create_job(job("b", 5)).await.unwrap();
    let e = jobs.create_job(job("c", 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let list = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.jobs.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_the_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let s = TestServer::start(|c| {
        c.tls = Some(ebb_api::config::TlsConfig {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })
    })
    .await;
    let port = s.running.as_ref().unwrap().grpc_addr.port();
    let conn = ebb_api::cli::Conn {
        addr: format!("https://localhost:{port}"),
        token: None,
        ca_cert: Some(cert_path.clone()),
    };
    let mut client = ebb_api::cli::market_client(&conn).await.unwrap();
    let pools = client
        .list_pools(pb::ListPoolsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pools.pools.len(), 1);
    // A plaintext client cannot talk to it.
    let plain = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut m = ebb_proto::v1::market_service_client::MarketServiceClient::new(ch);
        assert!(m.list_pools(pb::ListPoolsRequest {}).await.is_err());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_forgotten_after_retention_and_compacted_out() {
    finished_jobs_are_forgotten_after_retention_and_compacted_out_on(TestStore::from_env()).await;
}

/// The same, on etcd whatever `EBB_TEST_STORE` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_forgotten_after_retention_and_compacted_out_on_etcd() {
    finished_jobs_are_forgotten_after_retention_and_compacted_out_on(TestStore::Etcd).await;
}

async fn finished_jobs_are_forgotten_after_retention_and_compacted_out_on(store: TestStore) {
    let s = TestServer::start_on(store, |c| {
        c.store.finished_job_retention = Duration::from_millis(300)
    })
    .await;
    let mut jobs = s.jobs(None).await;
    let done = jobs
        .create_job(job("a", 2))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let kept = jobs
        .create_job(job("a", 2))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    jobs.cancel_job(pb::CancelJobRequest {
        job_id: done,
        grace: None,
    })
    .await
    .unwrap();
    eventually("the finished job forgotten", || {
        let mut jobs = jobs.clone();
        async move {
            let r = jobs.get_job(pb::GetJobRequest { job_id: done }).await;
            matches!(r, Err(e) if e.code() == Code::NotFound).then_some(())
        }
    })
    .await;
    jobs.get_job(pb::GetJobRequest { job_id: kept })
        .await
        .unwrap();
    let mut s = s;
    s.running.take().unwrap().shutdown().await.unwrap();
    // In the store: the side data is gone and the snapshot knows only the live job.
    let store = s.open_store();
    let loaded = store.load().unwrap();
    assert_eq!(
        loaded.jobs.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![kept]
    );
    let (_, bytes) = loaded.snapshot.expect("a snapshot at shutdown");
    let file: ebb_api::records::SnapshotFile = ebb_api::records::decode(&bytes).unwrap();
    let core = ebb_scheduler::Scheduler::restore(file.core).unwrap();
    assert_eq!(core.job_ids(), vec![ebb_scheduler::JobId(kept)]);
    assert!(loaded.records.is_empty(), "the snapshot compacted the log");
}

/// `[capacity] static_file`: the file's pools replace the demo pool, its
/// reservations reach the market (an expired one does not count), an edit
/// to the file takes effect at the next refresh, and `SetReservations` is
/// refused while the file owns the reservations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_reservations_file_feeds_the_market() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reservations.toml");
    let write = |count: u32| {
        std::fs::write(
            &file,
            format!(
                r#"[[pool]]
id = "east"
region = "us-east-1"

[[reservation]]
id = "ri-live"
instance_type = "m5.16xlarge"
count = {count}
region = "us-east-1"
start = 2024-01-01T00:00:00Z
end = 2099-01-01T00:00:00Z

[[reservation]]
id = "ri-expired"
instance_type = "m5.16xlarge"
count = 50
region = "us-east-1"
start = 2020-01-01T00:00:00Z
end = 2021-01-01T00:00:00Z
"#
            ),
        )
        .unwrap();
    };
    write(6);
    let path = file.clone();
    let server = TestServer::start(move |c| {
        c.market.pools.clear();
        c.capacity = Some(ebb_api::config::CapacitySetup {
            static_file: Some(path),
            #[cfg(feature = "ec2")]
            ec2: None,
            refresh_interval: Duration::from_millis(100),
            streaming_demand: true,
        });
    })
    .await;
    let mut m = server.market(None).await;
    let reserved = |r: &pb::ListPoolsResponse| {
        r.pools
            .iter()
            .map(|p| (p.pool.clone(), p.reserved_micro_ie))
            .collect::<Vec<_>>()
    };
    let mut seen = eventually("the file's reservations in the market", || {
        let mut m = m.clone();
        async move {
            let r = m
                .list_pools(pb::ListPoolsRequest {})
                .await
                .ok()?
                .into_inner();
            (reserved(&r) == [("east".to_owned(), 6_000_000)]).then_some(r)
        }
    })
    .await;
    let source = seen.source.take().expect("the source is reported");
    assert!(source.name.starts_with("static file "), "{source:?}");
    assert!(!source.stale && source.fetched_time.is_some(), "{source:?}");
    let e = m
        .set_reservations(pb::SetReservationsRequest {
            pool: "east".into(),
            reservations: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let r = m
        .list_reservations(pb::ListReservationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(r.source.starts_with("static file "), "{r:?}");

    // Edit the file: the next refresh carries the new count.
    write(9);
    eventually("the edited count in the market", || {
        let mut m = m.clone();
        async move {
            let r = m
                .list_pools(pb::ListPoolsRequest {})
                .await
                .ok()?
                .into_inner();
            (reserved(&r) == [("east".to_owned(), 9_000_000)]).then_some(())
        }
    })
    .await;
    // A broken edit keeps the last good figures and says why.
    std::fs::write(&file, "[[pool]]\nid = \"east\"\nregion = 3\n").unwrap();
    let r = eventually("the broken file reported stale", || {
        let mut m = m.clone();
        async move {
            let r = m
                .list_pools(pb::ListPoolsRequest {})
                .await
                .ok()?
                .into_inner();
            r.source.as_ref()?.stale.then_some(r)
        }
    })
    .await;
    assert_eq!(reserved(&r), [("east".to_owned(), 9_000_000)]);
    assert!(r.source.unwrap().last_error.contains("region"));
    server.stop().await;
}
