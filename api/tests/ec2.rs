//! The EC2 reservation source with the real aws-sdk-ec2 against a local EC2
//! emulator: moto 5.2.5, extended in-process by `api/tests/moto/ebb_moto.py`.
//!
//! moto implements DescribeInstances, DescribeInstanceTypes and tags, but
//! answers DescribeReservedInstances with HTTP 500 "not yet implemented". The
//! launcher adds a reserved-instances backend, a DescribeReservedInstances
//! response in EC2's real XML shape, a test-only seeding endpoint
//! (`/ebb-test/seed`) and a fault endpoint (`/ebb-test/fail`, EC2-shaped
//! throttling errors), then serves moto's threaded server on loopback.
//! Everything else is stock moto, and the SDK parses real EC2 XML throughout.
//!
//! Start the emulator with `eval "$(scripts/moto.sh start)"` (the test
//! script does): it exports `EBB_MOTO_ENDPOINT` (the shared emulator),
//! `EBB_MOTO_PYTHON` and `EBB_MOTO_LAUNCHER` (for the test that runs, stops
//! and restarts a private one). Without them these tests fail; they never
//! skip. Tests share the emulator and keep apart by using different regions.

#![cfg(feature = "ec2")]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb_api::capacity::{
    CapacityStatus, Ec2, Ec2Config, Ec2ErrorKind, PoolDef, Refresher, ReservationSource, Scope,
    Snapshot, SourceError, TagMatch, unix_now,
};
use ebb_scheduler::{
    Catalog, HeadroomPolicy, Ie, MarketConfig, PoolSpec, Scheduler, SchedulerConfig, Timestamp,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------- emulator

fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the EC2 emulator. Start it with \
             `eval \"$(scripts/moto.sh start)\"` (bash scripts/test.sh does this), \
             and stop it with `scripts/moto.sh stop`"
        )
    })
}

/// The shared emulator's endpoint, checked to answer.
fn endpoint() -> String {
    let url = env_or_fail("EBB_MOTO_ENDPOINT");
    if let Err(e) = ureq::get(format!("{url}/ebb-test/health")).call() {
        panic!(
            "EBB_MOTO_ENDPOINT={url} does not answer ({e}): is the emulator running? \
             `scripts/moto.sh start` starts it"
        );
    }
    url
}

/// Empties `region` (so a test can run again on the same emulator), then
/// seeds reserved instances and instances there; returns the instance ids.
fn seed(endpoint: &str, region: &str, reserved: Value, instances: Value) -> Vec<String> {
    let body = json!({
        "region": region,
        "reset": true,
        "reserved_instances": reserved,
        "instances": instances,
    });
    let mut response = ureq::post(format!("{endpoint}/ebb-test/seed"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("seeding {region} failed: {e}"));
    let out: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    out["instance_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Makes the next `count` EC2 requests of `region` (of `action` only, if
/// given) fail with `code`.
fn arm_faults(endpoint: &str, region: &str, action: Option<&str>, code: &str, count: u32) {
    let body = json!({
        "region": region, "action": action, "code": code, "status": 503, "count": count,
    });
    ureq::post(format!("{endpoint}/ebb-test/fail"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("arming faults");
}

/// A shared-credentials file with moto's conventional test keys.
fn credentials_file(dir: &Path) -> PathBuf {
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    path
}

fn pool(id: &str, region: &str, zone: Option<&str>) -> PoolDef {
    PoolDef {
        id: id.into(),
        region: region.into(),
        zone: zone.map(Into::into),
        family: None,
    }
}

fn config(endpoint: &str, creds: &Path, pools: Vec<PoolDef>) -> Ec2Config {
    Ec2Config {
        pools,
        endpoint_url: Some(endpoint.to_owned()),
        credentials_file: Some(creds.to_owned()),
        ..Ec2Config::default()
    }
}

async fn source(config: Ec2Config) -> Ec2 {
    Ec2::new(config, Catalog::builtin()).await.unwrap()
}

fn ie(x: f64) -> Ie {
    Ie::from_f64(x)
}

fn rfc3339(t: Timestamp) -> String {
    let ms = i64::try_from(t.as_millis()).unwrap();
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

fn errors(s: &Snapshot) -> Vec<String> {
    s.errors.iter().map(ToString::to_string).collect()
}

const STREAMING: &str = r#"{"ebb:role": "streaming"}"#;
const BATCH: &str = r#"{"ebb:role": "batch"}"#;

fn tags(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

// ------------------------------------------------------------------- tests

/// Two regions, zonal and regional reservations in several states, a tagged
/// fleet with a type the catalog lacks, then the core's supply from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_reservations_and_fleet_give_hand_computed_figures() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    seed(
        &url,
        "us-east-1",
        json!([
            { "id": "ri-a-m5", "instance_type": "m5.16xlarge", "instance_count": 6,
              "availability_zone": "us-east-1a" },
            { "id": "ri-a-r5", "instance_type": "r5.16xlarge", "instance_count": 2,
              "availability_zone": "us-east-1a", "offering_class": "convertible" },
            { "id": "ri-b-m5", "instance_type": "m5.8xlarge", "instance_count": 4,
              "availability_zone": "us-east-1b" },
            { "id": "ri-regional", "instance_type": "c5.9xlarge", "instance_count": 10 },
            { "id": "ri-retired", "instance_type": "m5.16xlarge", "instance_count": 5,
              "availability_zone": "us-east-1a", "state": "retired" },
            { "id": "ri-pending", "instance_type": "m5.16xlarge", "instance_count": 3,
              "availability_zone": "us-east-1b", "state": "payment-pending" },
            { "id": "ri-queued", "instance_type": "m5.16xlarge", "instance_count": 7,
              "availability_zone": "us-east-1a", "state": "queued" },
        ]),
        json!([
            { "instance_type": "m5.16xlarge", "availability_zone": "us-east-1a",
              "tags": tags(STREAMING), "count": 3 },
            { "instance_type": "c5.9xlarge", "availability_zone": "us-east-1a",
              "tags": tags(STREAMING), "count": 2 },
            { "instance_type": "m5.16xlarge", "availability_zone": "us-east-1a",
              "tags": tags(STREAMING), "stopped": true },
            { "instance_type": "m5.8xlarge", "availability_zone": "us-east-1b",
              "tags": tags(STREAMING) },
            { "instance_type": "m7i.16xlarge", "availability_zone": "us-east-1b",
              "tags": tags(STREAMING) },
            { "instance_type": "m5.16xlarge", "availability_zone": "us-east-1a",
              "tags": tags(BATCH), "count": 2 },
            { "instance_type": "m5.large", "availability_zone": "us-east-1b" },
            { "instance_type": "m5.large", "availability_zone": "us-east-1b",
              "tags": { "ebb:role": "something-else" } },
        ]),
    );
    seed(
        &url,
        "eu-west-1",
        json!([
            { "id": "ri-euw1b", "instance_type": "m5.16xlarge", "instance_count": 3,
              "availability_zone": "eu-west-1b" },
            { "id": "ri-euw1-regional", "instance_type": "m5.4xlarge", "instance_count": 4 },
        ]),
        json!([
            { "instance_type": "m5.16xlarge", "availability_zone": "eu-west-1c",
              "tags": tags(STREAMING) },
        ]),
    );
    let pools = vec![
        pool("use1-a", "us-east-1", Some("us-east-1a")),
        pool("use1-b", "us-east-1", Some("us-east-1b")),
        pool("euw1", "eu-west-1", None),
    ];
    let ec2 = source(config(&url, &creds, pools.clone())).await;
    assert_eq!(
        ec2.describe(),
        format!("ec2 eu-west-1,us-east-1 at {url}"),
        "regions come from the pools"
    );
    let now = unix_now();
    let s = ec2.fetch(now).await.unwrap();
    assert!(s.errors.is_empty(), "{:#?}", errors(&s));
    assert_eq!(s.fetched_at, now);
    let p = |id: &str| s.pool(&id.into()).unwrap();

    // Reserved, only `active` counts (retired 5, payment-pending 3 and
    // queued 7 are left out):
    //   use1-a zonal: 6 × m5.16xlarge (1 IE) + 2 × r5.16xlarge (64/64) = 8 IE
    //   use1-b zonal: 4 × m5.8xlarge (0.5 IE)                          = 2 IE
    //   regional 10 × c5.9xlarge (36/64 = 0.5625 IE) by 8 : 2 → 8 and 2:
    //   use1-a = 8 + 8 × 0.5625 = 12.5 IE; use1-b = 2 + 2 × 0.5625 = 3.125 IE
    //   euw1 (region-wide pool): 3 × 1 + 4 × m5.4xlarge (0.25) = 4 IE
    assert_eq!(p("use1-a").reserved_ie, ie(12.5));
    assert_eq!(p("use1-b").reserved_ie, ie(3.125));
    assert_eq!(p("euw1").reserved_ie, ie(4.0));
    let regional = p("use1-a")
        .reservations
        .iter()
        .find(|r| r.reservation_id == "ri-regional")
        .unwrap();
    assert_eq!((regional.count, regional.total_count), (8, 10));
    assert_eq!(regional.scope, Scope::Region);
    let ids: Vec<&str> = p("use1-a")
        .reservations
        .iter()
        .map(|r| r.reservation_id.as_str())
        .collect();
    assert_eq!(ids, ["ri-a-m5", "ri-a-r5", "ri-regional"]);
    let r5 = &p("use1-a").reservations[1];
    assert_eq!(
        r5.offering_class,
        ebb_api::capacity::OfferingClass::Convertible
    );
    // The seeder's default term: from a day ago for a year; start/end came
    // through the SDK's timestamp parsing.
    assert!(r5.start.unwrap() < now && r5.end.unwrap() > now);

    // Streaming (pending and running only; the stopped one is left out):
    //   use1-a: 3 × 1 + 2 × 0.5625 = 4.125 IE from 5 instances
    //   use1-b: m5.8xlarge 0.5 + m7i.16xlarge (described by EC2: 64 vCPU) 1
    //           = 1.5 IE from 2 instances
    //   euw1: 1 × m5.16xlarge = 1 IE
    assert_eq!(p("use1-a").streaming_ie, Some(ie(4.125)));
    assert_eq!(p("use1-a").n_streaming_instances, 5);
    assert_eq!(p("use1-b").streaming_ie, Some(ie(1.5)));
    assert_eq!(p("use1-b").n_streaming_instances, 2);
    assert_eq!(p("euw1").streaming_ie, Some(ie(1.0)));
    // Batch hosts, and the two instances without a role tag.
    assert_eq!(p("use1-a").batch_fleet.len(), 2);
    assert!(p("use1-a").batch_fleet.iter().all(|b| b.ie == ie(1.0)
        && b.instance_type == "m5.16xlarge"
        && b.zone == "us-east-1a"
        && b.id.starts_with("i-")));
    assert!(p("use1-b").batch_fleet.is_empty());
    assert_eq!(s.n_untagged_instances, 2);

    // The type the catalog lacks, as EC2 described it.
    assert_eq!(s.instance_types.len(), 1);
    let m7i = &s.instance_types[0];
    assert_eq!(
        (
            m7i.name.as_str(),
            m7i.vcpus,
            m7i.memory_gib,
            m7i.network_mbps,
            m7i.normalization_factor
        ),
        ("m7i.16xlarge", 64, 256, 25_000, 128.0)
    );

    // The control plane's path into the core: supply by hand. Headroom is
    // 10 % of streaming and no failover buffer (multiplier 0) here:
    //   use1-a: 12.5 − 4.125 − 0.4125 = 7.9625 IE
    //   use1-b: 3.125 − 1.5 − 0.15    = 1.475 IE
    //   euw1:   4 − 1 − 0.1           = 2.9 IE
    let mut core = Scheduler::new(SchedulerConfig {
        market: MarketConfig {
            catalog_overrides: s.instance_types.clone(),
            ..MarketConfig::default()
        },
        ..SchedulerConfig::default()
    });
    let t = Timestamp::from_millis(1);
    for pc in &s.pools {
        let id = pc.pool.id.clone();
        let spec = PoolSpec {
            id: id.clone(),
            region: pc.pool.region.clone(),
            headroom: HeadroomPolicy {
                daily_scaling_fraction: 0.10,
                failover_multiplier: 0.0,
                failover_fixed: None,
            },
        };
        core.handle_pool_configured(t, spec).unwrap();
        core.handle_reservations(t, &id, pc.core_reservations_at(now))
            .unwrap();
        core.handle_streaming_demand(t, &id, pc.streaming_ie.unwrap())
            .unwrap();
    }
    let supply = |id: &str| core.pool(&id.into()).unwrap().supply;
    assert_eq!(core.pool(&"use1-a".into()).unwrap().reserved, ie(12.5));
    assert_eq!(supply("use1-a"), ie(7.9625));
    assert_eq!(supply("use1-b"), ie(1.475));
    assert_eq!(supply("euw1"), ie(2.9));
}

/// A type neither the catalog nor EC2 knows is named in an error and left
/// out; a type only EC2 knows, asked in the same call, is still learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_instance_type_is_named_and_left_out_of_supply() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    let ids = seed(
        &url,
        "us-west-1",
        json!([
            { "id": "r-123", "instance_type": "x1.weird", "instance_count": 3,
              "availability_zone": "us-west-1a" },
            { "id": "r-m5", "instance_type": "m5.16xlarge", "instance_count": 2,
              "availability_zone": "us-west-1a" },
            { "id": "r-m6a", "instance_type": "m6a.16xlarge", "instance_count": 1,
              "availability_zone": "us-west-1a" },
            { "id": "r-nowhere", "instance_type": "m5.16xlarge", "instance_count": 1,
              "availability_zone": "us-west-1b" },
        ]),
        json!([
            { "instance_type": "x1.weird", "availability_zone": "us-west-1a",
              "tags": tags(STREAMING) },
            { "instance_type": "m5.16xlarge", "availability_zone": "us-west-1a",
              "tags": { "ebb:role": "streaming", "team": "live" } },
        ]),
    );
    let weird_instance = &ids[0];
    let ec2 = source(config(
        &url,
        &creds,
        vec![pool("usw1-a", "us-west-1", Some("us-west-1a"))],
    ))
    .await;
    let s = ec2.fetch(unix_now()).await.unwrap();
    assert_eq!(
        errors(&s),
        [
            "unknown instance type x1.weird in reservation r-123: left out of supply".to_owned(),
            "reservation r-nowhere (m5.16xlarge in us-west-1b) matches no pool: left out of supply"
                .to_owned(),
            format!(
                "unknown instance type x1.weird in streaming instance {weird_instance}: \
                 left out of streaming demand"
            ),
        ]
    );
    let p = s.pool(&"usw1-a".into()).unwrap();
    // 2 × m5.16xlarge + 1 × m6a.16xlarge (EC2: 64 vCPU) = 3 IE; x1.weird adds
    // nothing, and is not in the pool's reservations at all.
    assert_eq!(p.reserved_ie, ie(3.0));
    assert!(p.reservations.iter().all(|r| r.instance_type != "x1.weird"));
    // Streaming: only the m5.16xlarge, 1 IE.
    assert_eq!(p.streaming_ie, Some(ie(1.0)));
    assert_eq!(p.n_streaming_instances, 1);
    let learned: Vec<&str> = s.instance_types.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(learned, ["m6a.16xlarge"]);
}

/// Instance type facts are asked for once: a second fetch needs no
/// DescribeInstanceTypes (here it would fail), a new source does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn described_instance_types_are_asked_for_once() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    seed(
        &url,
        "eu-west-2",
        json!([]),
        json!([{ "instance_type": "m6a.16xlarge", "availability_zone": "eu-west-2a",
                 "tags": tags(STREAMING) }]),
    );
    let mut cfg = config(&url, &creds, vec![pool("lhr", "eu-west-2", None)]);
    cfg.max_attempts = 1;
    let ec2 = source(cfg.clone()).await;
    let first = ec2.fetch(unix_now()).await.unwrap();
    // m6a.16xlarge: 64 vCPUs as EC2 describes it = 1 IE.
    assert_eq!(
        first.pool(&"lhr".into()).unwrap().streaming_ie,
        Some(ie(1.0))
    );

    arm_faults(
        &url,
        "eu-west-2",
        Some("DescribeInstanceTypes"),
        "RequestLimitExceeded",
        5,
    );
    let second = ec2.fetch(unix_now()).await.unwrap();
    assert_eq!(
        second.pool(&"lhr".into()).unwrap().streaming_ie,
        Some(ie(1.0))
    );
    assert_eq!(second.instance_types, first.instance_types);

    // A fresh source has to ask, and meets the armed fault.
    let err = source(cfg).await.fetch(unix_now()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            SourceError::Ec2 {
                operation: "DescribeInstanceTypes",
                kind: Ec2ErrorKind::Throttled,
                ..
            }
        ),
        "{err}"
    );
}

/// A region with pools but no reservations: its pools are there, empty,
/// with their streaming demand, and nothing is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_no_reservations_reports_empty_pools() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    seed(
        &url,
        "ap-southeast-2",
        json!([{ "id": "ri-syd", "instance_type": "c5.18xlarge", "instance_count": 2,
                 "availability_zone": "ap-southeast-2a" }]),
        json!([]),
    );
    seed(
        &url,
        "ap-northeast-1",
        json!([]),
        json!([{ "instance_type": "m5.8xlarge", "availability_zone": "ap-northeast-1a",
                 "tags": tags(STREAMING), "count": 3 }]),
    );
    let ec2 = source(config(
        &url,
        &creds,
        vec![
            pool("syd", "ap-southeast-2", Some("ap-southeast-2a")),
            pool("tyo-a", "ap-northeast-1", Some("ap-northeast-1a")),
            pool("tyo-c", "ap-northeast-1", Some("ap-northeast-1c")),
        ],
    ))
    .await;
    let s = ec2.fetch(unix_now()).await.unwrap();
    assert!(s.errors.is_empty(), "{:#?}", errors(&s));
    let ids: Vec<&str> = s.pools.iter().map(|p| p.pool.id.as_str()).collect();
    assert_eq!(ids, ["syd", "tyo-a", "tyo-c"]);
    // syd: 2 × c5.18xlarge, 72/64 vCPU each = 2.25 IE.
    assert_eq!(s.pool(&"syd".into()).unwrap().reserved_ie, ie(2.25));
    for id in ["tyo-a", "tyo-c"] {
        let p = s.pool(&id.into()).unwrap();
        assert_eq!(p.reserved_ie, Ie::ZERO, "{id}");
        assert!(p.reservations.is_empty(), "{id}");
    }
    // tyo-a: 3 × m5.8xlarge = 1.5 IE of streaming with nothing reserved;
    // tyo-c: a figure of zero, not "unknown".
    assert_eq!(s.pool(&"tyo-a".into()).unwrap().streaming_ie, Some(ie(1.5)));
    assert_eq!(
        s.pool(&"tyo-c".into()).unwrap().streaming_ie,
        Some(Ie::ZERO)
    );
}

/// More instances than one page holds: 12 streaming and 1 batch instance
/// (each its own EC2 reservation) read 5 to a page is 3 pages. Custom tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_is_read_across_pages() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    seed(
        &url,
        "ca-central-1",
        json!([]),
        json!([
            { "instance_type": "m5.4xlarge", "availability_zone": "ca-central-1a",
              "tags": { "svc:tier": "live" }, "count": 12 },
            { "instance_type": "m5.16xlarge", "availability_zone": "ca-central-1a",
              "tags": { "svc:tier": "flex" } },
            // The default tag means nothing under this configuration.
            { "instance_type": "m5.16xlarge", "availability_zone": "ca-central-1a",
              "tags": tags(STREAMING) },
        ]),
    );
    let mut cfg = config(&url, &creds, vec![pool("yul", "ca-central-1", None)]);
    cfg.page_size = 5;
    cfg.streaming_tag = TagMatch {
        key: "svc:tier".into(),
        value: "live".into(),
    };
    cfg.batch_tag = TagMatch {
        key: "svc:tier".into(),
        value: "flex".into(),
    };
    let s = source(cfg).await.fetch(unix_now()).await.unwrap();
    let p = s.pool(&"yul".into()).unwrap();
    // 12 × m5.4xlarge at 32/128 = 0.25 IE = 3 IE; with only the first page
    // (5 instances) it would be at most 1.25 IE.
    assert_eq!(p.n_streaming_instances, 12);
    assert_eq!(p.streaming_ie, Some(ie(3.0)));
    assert_eq!(p.batch_fleet.len(), 1);
    assert_eq!(s.n_untagged_instances, 1);
}

/// A reservation whose end passes during the test: the snapshot says when,
/// counts it until then and not after, and the next fetch no longer lists it
/// (EC2 reports it `retired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_expiring_during_the_test_stops_counting() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    // Eight seconds leave time for seeding and the first fetch even on a
    // loaded 2-core machine (they take well under one second when idle).
    let end = Timestamp::from_millis(unix_now().as_millis() + 8_000);
    seed(
        &url,
        "eu-central-1",
        json!([
            { "id": "ri-expiring", "instance_type": "m5.16xlarge", "instance_count": 2,
              "availability_zone": "eu-central-1a", "end": rfc3339(end),
              "start": rfc3339(Timestamp::from_millis(end.as_millis() - 86_400_000)) },
            { "id": "ri-lasting", "instance_type": "m5.16xlarge", "instance_count": 1,
              "availability_zone": "eu-central-1a" },
        ]),
        json!([]),
    );
    let ec2 = source(config(
        &url,
        &creds,
        vec![pool("fra-a", "eu-central-1", Some("eu-central-1a"))],
    ))
    .await;
    let refresher = Refresher::new(Arc::new(ec2));
    let before = unix_now();
    assert!(
        before < end,
        "seeding took over 8 s: the machine is overloaded"
    );
    assert!(refresher.refresh(before).await.fresh);
    let st = refresher.status();
    let s = st.snapshot.unwrap();
    let p = s.pool(&"fra-a".into()).unwrap();
    // 2 + 1 m5.16xlarge = 3 IE until `end`, 1 IE from `end` on.
    assert_eq!(p.reserved_ie, ie(3.0));
    let expiring = p
        .reservations
        .iter()
        .find(|r| r.reservation_id == "ri-expiring")
        .unwrap();
    assert_eq!(
        expiring.end,
        Some(end),
        "the end survives the XML round trip"
    );
    assert_eq!(s.next_change_after(before), Some(end));
    let just_before = Timestamp::from_millis(end.as_millis() - 1);
    assert_eq!(p.reserved_ie_at(just_before), ie(3.0));
    assert_eq!(p.reserved_ie_at(end), ie(1.0));
    assert_eq!(p.core_reservations_at(end)[0].count, 1);

    // Wait for the end to pass on the wall clock, then fetch again.
    while unix_now() <= end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refresher.refresh(unix_now()).await.fresh);
    let s = refresher.status().snapshot.unwrap();
    let p = s.pool(&"fra-a".into()).unwrap();
    assert_eq!(p.reserved_ie, ie(1.0));
    let ids: Vec<&str> = p
        .reservations
        .iter()
        .map(|r| r.reservation_id.as_str())
        .collect();
    assert_eq!(ids, ["ri-lasting"]);
}

/// A private emulator, so that stopping it does not disturb the other tests.
struct PrivateMoto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivateMoto {
    /// Starts the launcher on `port` (0: any) and waits until it answers.
    fn start(port: u16) -> PrivateMoto {
        let python = env_or_fail("EBB_MOTO_PYTHON");
        let launcher = env_or_fail("EBB_MOTO_LAUNCHER");
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let child = Command::new(&python)
            .arg(&launcher)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--port-file",
            ])
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} {launcher}: {e}"));
        let mut moto = PrivateMoto {
            child,
            port: 0,
            _dir: dir,
        };
        // moto imports in ~2 s; a loaded CI machine gets a minute.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                moto.port = p;
                if ureq::get(format!("{}/ebb-test/health", moto.url()))
                    .call()
                    .is_ok()
                {
                    return moto;
                }
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("the private emulator exited during startup: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the private emulator did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // The port no longer accepts connections.
        assert!(TcpStream::connect(("127.0.0.1", self.port)).is_err());
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed_private(url: &str) {
    seed(
        url,
        "us-east-2",
        json!([{ "id": "ri-cmh", "instance_type": "m5.16xlarge", "instance_count": 4,
                 "availability_zone": "us-east-2a" }]),
        json!([{ "instance_type": "m5.16xlarge", "availability_zone": "us-east-2a",
                 "tags": tags(STREAMING) }]),
    );
}

fn assert_kept(st: &CapacityStatus, fetched_at: Timestamp) {
    assert!(st.stale);
    let s = st
        .snapshot
        .as_ref()
        .expect("the last good snapshot is kept");
    assert_eq!(s.fetched_at, fetched_at);
    assert_eq!(s.pool(&"cmh-a".into()).unwrap().reserved_ie, ie(4.0));
}

/// The emulator stops mid-run: the last snapshot stays, flagged stale, its
/// age grows with every failed refresh; when it is back, the next refresh
/// is fresh again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_stopped_mid_run_leaves_a_stale_snapshot() {
    let mut moto = PrivateMoto::start(0);
    let port = moto.port;
    seed_private(&moto.url());
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    let mut cfg = config(
        &moto.url(),
        &creds,
        vec![pool("cmh-a", "us-east-2", Some("us-east-2a"))],
    );
    // One retry and short limits keep the failing refreshes quick.
    cfg.max_attempts = 2;
    cfg.connect_timeout_ms = 1_000;
    cfg.operation_timeout_ms = 5_000;
    let refresher = Refresher::new(Arc::new(source(cfg).await));

    let t0 = unix_now();
    let first = refresher.refresh(t0).await;
    assert!(first.fresh && first.health_changed);
    assert_eq!(
        refresher.status().age(t0),
        Some(ebb_scheduler::DurationMs::ZERO)
    );

    moto.stop();
    let t1 = Timestamp::from_millis(t0.as_millis() + 1_000);
    let failed = refresher.refresh(t1).await;
    assert!(!failed.fresh && failed.health_changed);
    let st = refresher.status();
    assert_kept(&st, t0);
    assert_eq!(st.age(t1).unwrap().as_millis(), 1_000);
    let message = st.last_error.clone().unwrap();
    assert!(
        message.starts_with("ec2 DescribeReservedInstances in us-east-2 failed (unreachable)"),
        "{message}"
    );

    let t2 = Timestamp::from_millis(t0.as_millis() + 2_000);
    let again = refresher.refresh(t2).await;
    assert!(
        !again.fresh && !again.health_changed,
        "one change, one log line"
    );
    let st = refresher.status();
    assert_kept(&st, t0);
    assert_eq!(st.age(t2).unwrap().as_millis(), 2_000, "the age grows");
    assert_eq!(st.consecutive_failures, 2);

    // Back on the same port, with its state lost (as a restarted service's
    // would be): the refresh succeeds and reports what is there now.
    let moto = PrivateMoto::start(port);
    seed_private(&moto.url());
    let t3 = Timestamp::from_millis(t0.as_millis() + 3_000);
    let back = refresher.refresh(t3).await;
    assert!(back.fresh && back.health_changed);
    let st = refresher.status();
    assert!(!st.stale && st.last_error.is_none());
    assert_eq!(st.snapshot.unwrap().fetched_at, t3);
}

/// EC2 throttles: past the SDK's retries the fetch fails as `throttled`;
/// a single throttled answer is ridden out by a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_past_the_retries_fails_the_fetch_and_a_retry_rides_it_out() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    seed(
        &url,
        "sa-east-1",
        json!([{ "id": "ri-gru", "instance_type": "m5.16xlarge", "instance_count": 1,
                 "availability_zone": "sa-east-1a" }]),
        json!([]),
    );
    let mut cfg = config(&url, &creds, vec![pool("gru", "sa-east-1", None)]);
    cfg.max_attempts = 2;
    let ec2 = source(cfg).await;

    arm_faults(&url, "sa-east-1", None, "RequestLimitExceeded", 2);
    let err = ec2.fetch(unix_now()).await.unwrap_err();
    match &err {
        SourceError::Ec2 {
            region,
            operation,
            kind,
            message,
        } => {
            assert_eq!(
                (region.as_str(), *operation, kind),
                (
                    "sa-east-1",
                    "DescribeReservedInstances",
                    &Ec2ErrorKind::Throttled
                )
            );
            assert!(message.contains("RequestLimitExceeded"), "{message}");
        }
        other => panic!("expected an EC2 error, got {other}"),
    }

    // One throttled answer, then moto: the second attempt succeeds.
    arm_faults(&url, "sa-east-1", None, "RequestLimitExceeded", 1);
    let s = ec2.fetch(unix_now()).await.unwrap();
    assert_eq!(s.pool(&"gru".into()).unwrap().reserved_ie, ie(1.0));
}

/// Credentials that cannot be loaded fail the fetch as a credentials error
/// naming the cause; nothing is reported as if it were data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_the_fetch() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    let mut cfg = config(&url, &creds, vec![pool("bom", "ap-south-1", None)]);
    cfg.profile = Some("no-such-profile".into());
    let refresher = Refresher::new(Arc::new(source(cfg).await));
    let report = refresher.refresh(unix_now()).await;
    assert!(!report.fresh);
    let st = refresher.status();
    assert!(st.stale && st.snapshot.is_none());
    let message = st.last_error.unwrap();
    assert!(message.contains("(credentials)"), "{message}");
    assert!(message.contains("no-such-profile"), "{message}");

    // A credentials file that is not there at all.
    let mut cfg = config(
        &url,
        &dir.path().join("missing"),
        vec![pool("bom", "ap-south-1", None)],
    );
    cfg.max_attempts = 1;
    let err = source(cfg).await.fetch(unix_now()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            SourceError::Ec2 {
                kind: Ec2ErrorKind::Credentials,
                ..
            }
        ),
        "{err}"
    );
}

// ------------------------------------------------ through `ebb server`

/// Runs the `ebb` CLI and returns its stdout and stderr; fails on a non-zero exit.
fn ebb_cli(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(args)
        .output()
        .expect("running ebb");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "ebb {args:?} failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the server process however the test ends.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ebb capacity --format csv` as (pool → column → value) plus stderr.
fn capacity_csv(
    addr: &str,
) -> (
    std::collections::BTreeMap<String, Vec<(String, String)>>,
    String,
) {
    let (stdout, stderr) = ebb_cli(&["capacity", "--addr", addr, "--format", "csv"]);
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let rows = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let pairs = header
                .iter()
                .zip(&cells)
                .map(|(h, c)| ((*h).to_owned(), (*c).to_owned()))
                .collect::<Vec<_>>();
            (cells[0].to_owned(), pairs)
        })
        .collect();
    (rows, stderr)
}

fn cell<'a>(row: &'a [(String, String)], column: &str) -> &'a str {
    &row.iter().find(|(h, _)| h == column).expect(column).1
}

/// Issue 11's "done when": `ebb server --config` with an `[capacity.ec2]`
/// section pointed at the emulator reports the seeded reservations and fleet
/// through `ebb capacity`, learns a type only EC2 describes, names the one
/// nobody knows, and keeps the last good figures (flagged stale) when EC2
/// starts failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebb_server_with_an_ec2_section_reports_the_seeded_fleet_through_ebb_capacity() {
    let url = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let creds = credentials_file(dir.path());
    let region = "ca-central-1";
    seed(
        &url,
        region,
        json!([
            { "id": "r-m5", "instance_type": "m5.16xlarge", "instance_count": 2,
              "availability_zone": "ca-central-1a" },
            { "id": "r-m6a", "instance_type": "m6a.16xlarge", "instance_count": 1,
              "availability_zone": "ca-central-1a" },
            { "id": "r-weird", "instance_type": "x1.weird", "instance_count": 3,
              "availability_zone": "ca-central-1a" },
        ]),
        json!([
            { "instance_type": "m5.16xlarge", "availability_zone": "ca-central-1a",
              "tags": tags(STREAMING) },
            { "instance_type": "m5.8xlarge", "availability_zone": "ca-central-1a",
              "tags": tags(STREAMING) },
            { "instance_type": "m5.16xlarge", "availability_zone": "ca-central-1a",
              "tags": tags(BATCH) },
        ]),
    );
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("ebb.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{grpc}"
http_listen = "127.0.0.1:{http}"
data_dir = "{data}"

[capacity]
refresh_interval = "1s"

[capacity.ec2]
endpoint_url = "{url}"
credentials_file = "{creds}"
max_attempts = 1

[[capacity.ec2.pool]]
id = "cac1-a"
region = "{region}"
zone = "ca-central-1a"

# Headroom for a source pool comes from [[market.pools]] by id.
[[market.pools]]
id = "cac1-a"
region = "{region}"
headroom = {{ daily_scaling_fraction = 0.2, failover_multiplier = 0.0 }}
"#,
            data = dir.path().join("data").display(),
            creds = creds.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let _server = ServerProcess(
        Command::new(env!("CARGO_BIN_EXE_ebb"))
            .args(["server", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr = format!("http://127.0.0.1:{grpc}");
    let log_text = || std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();

    // Hand-computed: reserved 2 × m5.16xlarge (1 IE) + 1 × m6a.16xlarge
    // (64 vCPU, described by EC2) = 3 IE; x1.weird is left out. Streaming:
    // m5.16xlarge 1 + m5.8xlarge 0.5 = 1.5 IE. Headroom 20 % of streaming =
    // 0.3 IE, no failover buffer. Supply 3 − 1.5 − 0.3 = 1.2 IE.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (rows, stderr) = loop {
        if TcpStream::connect(("127.0.0.1", grpc)).is_ok() {
            let (rows, stderr) = capacity_csv(&addr);
            if rows
                .get("cac1-a")
                .is_some_and(|r| cell(r, "supply_ie") == "1.2")
            {
                break (rows, stderr);
            }
        }
        assert!(
            Instant::now() < deadline,
            "ebb capacity never showed the seeded figures; server log:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        rows.len(),
        1,
        "only the source's pool (no demo pool): {rows:?}"
    );
    let pool = &rows["cac1-a"];
    assert_eq!(cell(pool, "region"), region);
    assert_eq!(cell(pool, "reserved_ie"), "3.0");
    assert_eq!(cell(pool, "streaming_ie"), "1.5");
    assert_eq!(cell(pool, "headroom_ie"), "0.3");
    assert!(
        stderr.contains(&format!("source: ec2 {region} at {url}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("left out: unknown instance type x1.weird in reservation r-weird"),
        "{stderr}"
    );
    assert!(!stderr.contains("STALE"), "{stderr}");
    // The table format prints the source line under the table.
    let out = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["capacity", "--addr", &addr])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("source: ec2 ca-central-1"), "{table}");

    // EC2 starts failing: the last good figures stay, flagged stale.
    arm_faults(&url, region, None, "RequestLimitExceeded", 1_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (rows, stderr) = loop {
        let (rows, stderr) = capacity_csv(&addr);
        if stderr.contains("STALE") {
            break (rows, stderr);
        }
        assert!(Instant::now() < deadline, "never reported stale: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        stderr.contains("RequestLimitExceeded") || stderr.contains("throttl"),
        "{stderr}"
    );
    assert_eq!(cell(&rows["cac1-a"], "reserved_ie"), "3.0");
    assert_eq!(cell(&rows["cac1-a"], "supply_ie"), "1.2");
    arm_faults(&url, region, None, "RequestLimitExceeded", 0);
}
