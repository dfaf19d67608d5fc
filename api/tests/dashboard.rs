//! The finance dashboard in a real browser: Debian's `chromium`, headless,
//! driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`,
//! fds 3 and 4: JSON messages ending in a NUL byte), so no WebSocket client
//! is needed. `scripts/test.sh` installs chromium; without it this test
//! fails, it never skips.
//!
//! The server starts on a store seeded with 30 days of ledger samples
//! (hourly, then every 15 minutes for the last two days, as down-sampling
//! leaves them) so that every window's utilization is known by hand:
//! reserved 4 IE, streaming a daily curve around 1.5 IE with batch filling
//! the rest of 2.5 IE, headroom 0.5, idle 1.0 → (streaming + batch) ÷ 4 =
//! 62.5 %. One team's name is HTML.
//!
//! The screenshot is saved as `$CARGO_TARGET_DIR/tmp/ebb-dashboard.png`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use ebb_api::auth::token_sha256;
use ebb_api::config::{Role, TokenConfig};
use ebb_api::records::{LedgerSample, encode};
use ebb_api::store::{Batch, Store, redb::RedbStore};
use ebb_proto::v1 as pb;
use ebb_scheduler as core;
use serde_json::{Value, json};

const FINANCE: &str = "finance-secret";
const TEAM: &str = "team-secret";
const HTML_TEAM: &str = "<img src=x onerror=alert(1)>";
const H: u64 = 3_600_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Average micro-IE per pool layer over an interval starting at `t`: a
/// daily streaming curve (1.5 IE ± 0.75) with batch filling what streaming
/// leaves of 2.5 IE, so (streaming + batch) ÷ reserved stays 62.5 %.
fn levels(t: u64) -> [u128; 5] {
    let hour = (t % (24 * H)) as f64 / H as f64;
    let streaming =
        (1_500_000.0 + 750_000.0 * (hour / 24.0 * std::f64::consts::TAU).sin()).round() as u128;
    let leased = 2_500_000 - streaming;
    // reserved, streaming, leased, headroom, idle
    [4_000_000, streaming, leased, 500_000, 1_000_000]
}

/// Cumulative samples over `times`, the first at zero.
fn samples(times: &[u64]) -> Vec<(u64, LedgerSample)> {
    let mut cum = [0u128; 5];
    let mut out = Vec::new();
    for (i, t) in times.iter().enumerate() {
        if i > 0 {
            let dt = u128::from(t - times[i - 1]);
            for (c, l) in cum.iter_mut().zip(levels(times[i - 1])) {
                *c += l * dt;
            }
        }
        // Batch is held by the two teams 4:1; 0.5 USD per IE-hour:
        // micro-IE·ms × micro-USD ÷ (micro-IE·ms per IE-hour).
        let entry = |team: &str, held: u128| core::LedgerEntry {
            team: team.into(),
            pool: "demo".into(),
            held: core::IeMs(held),
            charges: core::Money::from_micros((held * 500_000 / 3_600_000_000_000) as u64),
            lost: core::IeMs(0),
            n_preemptions: 0,
            n_over_budget: 0,
        };
        let sample = LedgerSample {
            entries: vec![
                entry("encoding", cum[2] * 4 / 5),
                entry(HTML_TEAM, cum[2] / 5),
            ],
            pools: vec![core::PoolTotals {
                pool: "demo".into(),
                reserved: core::IeMs(cum[0]),
                streaming: core::IeMs(cum[1]),
                leased: core::IeMs(cum[2]),
                headroom: core::IeMs(cum[3]),
                idle: core::IeMs(cum[4]),
                supply: core::IeMs(cum[2] + cum[4]),
                violation: core::IeMs(0),
            }],
            prices: vec![("demo".into(), 500_000)],
        };
        out.push((*t, sample));
    }
    out
}

/// Checks `demo`'s row of a utilization CSV against the seeded history:
/// 62.5 %, less only what the live tail can take off. The server's own demo
/// pool holds 4 IE reserved with nothing running since it started, so each
/// second of the test adds reserved time and no work; `elapsed` (since the
/// history was seeded) bounds that tail. So the work reported must be 62.5 %
/// of the seeded reserved time, the reserved time at most `4 IE × elapsed`
/// more, and the percentage between the two. A fast run shows exactly
/// 62.50; a slow one (a loaded machine: chromium starting) a little less.
fn assert_seeded_utilization(csv: &str, elapsed: Duration) {
    let row = csv
        .lines()
        .find(|l| l.starts_with("demo,"))
        .unwrap_or_else(|| panic!("no demo row: {csv}"));
    let f: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|x| x.parse().unwrap_or_else(|_| panic!("{row}")))
        .collect();
    let (reserved, work, pct) = (f[0], f[1] + f[2], f[5]);
    let seeded = work / 0.625;
    let tail_max = 4.0 * elapsed.as_secs_f64() / 3600.0;
    assert!(
        reserved >= seeded - 1e-6 && reserved <= seeded + tail_max + 1e-6,
        "reserved {reserved} IE-h for {work} of work (62.5 % seeded) and at most {tail_max} of live tail: {csv}"
    );
    let low = (62.5 * seeded / (seeded + tail_max) * 100.0).floor() / 100.0;
    assert!(
        (low..=62.5).contains(&pct),
        "{pct} % outside {low}..=62.5: {csv}"
    );
}

fn seed(dir: &std::path::Path) {
    let now = now_ms();
    let start = now - 30 * 24 * H;
    let mut times: Vec<u64> = (0..)
        .map(|i| start + i * H)
        .take_while(|t| *t < now - 2 * H * 24)
        .collect();
    times.extend(
        (0..)
            .map(|i| now - 2 * 24 * H + i * H / 4)
            .take_while(|t| *t < now - 60_000),
    );
    let mut store = RedbStore::open(dir).unwrap();
    store
        .append(&Batch {
            put_samples: samples(&times)
                .iter()
                .map(|(t, s)| (*t, encode(s)))
                .collect(),
            ..Batch::default()
        })
        .unwrap();
}

/// A headless chromium on the DevTools pipe.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // The shell hands our pipes to chromium as fds 3 (commands in) and
        // 4 (replies and events out), which is what the pipe transport reads.
        let script = format!(
            "exec chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
             --user-data-dir={} --window-size=1200,1400 --remote-debugging-pipe 3<&0 4>&1 0</dev/null 1>&2",
            profile.path().display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning chromium (scripts/test.sh installs Debian's `chromium`)");
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            to,
            from,
            next_id: 0,
            _profile: profile,
        }
    }

    fn read(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.from.read_until(0, &mut buf).unwrap();
        assert!(
            n > 0,
            "chromium closed the DevTools pipe: is `chromium` installed?"
        );
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    /// Sends a command (to a page session if given) and returns its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        self.to.flush().unwrap();
        loop {
            let m = self.read();
            if m["id"] == json!(id) {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
        }
    }

    /// Waits for the page's next load event.
    fn wait_load(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no page load within 30 s");
            if self.read()["method"] == "Page.loadEventFired" {
                return;
            }
        }
    }

    fn eval(&mut self, session: &str, expr: &str) -> Value {
        self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        )["result"]["value"]
            .clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[at..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest[open..].find('<').unwrap();
    rest[open..open + close].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_the_seeded_history_in_chromium() {
    let data = tempfile::tempdir().unwrap();
    seed(data.path());
    let seeded_at = Instant::now();
    let data_dir = data.path().to_path_buf();
    let s = TestServer::start(move |c| {
        c.data_dir = data_dir;
        c.auth.tokens = vec![
            TokenConfig {
                name: "finance".into(),
                token: None,
                sha256: Some(token_sha256(FINANCE)),
                role: Role::Finance,
                team: None,
            },
            TokenConfig {
                name: "encoding".into(),
                token: Some(TEAM.into()),
                sha256: None,
                role: Role::Team,
                team: Some("encoding".into()),
            },
        ];
    })
    .await;
    let base = s.http();

    // Refused without the finance principal: a team token is forbidden, no
    // credentials go to the login form, and so does gRPC.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let r = agent
        .get(format!("{base}/dashboard"))
        .header("authorization", format!("Bearer {TEAM}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = agent
        .get(format!("{base}/dashboard/chargeback.csv"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers().get("location").unwrap(), "/login");
    let mut m = s.market(Some(TEAM)).await;
    let e = m
        .get_utilization(pb::GetUtilizationRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // A login post without the CSRF cookie is refused.
    let r = agent
        .post(format!("{base}/login"))
        .content_type("application/x-www-form-urlencoded")
        .send(format!("token={FINANCE}&csrf=abc"))
        .unwrap();
    assert_eq!(r.status(), 403);

    // CSV with units in the headers, for finance.
    let mut r = agent
        .get(format!("{base}/dashboard/utilization.csv"))
        .header("authorization", format!("Bearer {FINANCE}"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let csv = r.body_mut().read_to_string().unwrap();
    assert!(
        csv.starts_with("group,reserved_ie_hours,streaming_ie_hours,batch_ie_hours"),
        "{csv}"
    );
    // The live tail (the server's own core, idle since it started) moves
    // the seeded 62.5 % by well under 0.01 % on a quick run.
    assert_seeded_utilization(&csv, seeded_at.elapsed());

    // The longer windows read the hourly (down-sampled) history: the same 62.5 %.
    for range in ["7d", "30d"] {
        let mut r = agent
            .get(format!("{base}/dashboard?range={range}"))
            .header("authorization", format!("Bearer {FINANCE}"))
            .call()
            .unwrap();
        let html = r.body_mut().read_to_string().unwrap();
        assert!(
            html.contains("<svg id=\"chart\"") && html.contains(">62.5%<"),
            "{range}: {html}"
        );
    }

    // The browser: log in through the form, land on the dashboard.
    let b = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let mut b = Browser::start();
            let target =
                b.call(None, "Target.createTarget", json!({"url": "about:blank"}))["targetId"]
                    .clone();
            let session = b.call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )["sessionId"]
                .as_str()
                .unwrap()
                .to_string();
            b.call(Some(&session), "Page.enable", json!({}));
            b.call(
                Some(&session),
                "Page.navigate",
                json!({"url": format!("{base}/dashboard?range=24h")}),
            );
            b.wait_load();
            let url = b.eval(&session, "location.pathname");
            assert_eq!(url, "/login", "no credentials: the login form");
            let login = format!(
                "document.querySelector('input[name=token]').value = '{FINANCE}'; \
                 document.forms[0].submit(); 1"
            );
            b.eval(&session, &login);
            b.wait_load();
            assert_eq!(b.eval(&session, "location.pathname"), "/dashboard");
            let dom = b.eval(&session, "document.documentElement.outerHTML");
            let dom = dom.as_str().unwrap().to_string();
            let shot = b.call(
                Some(&session),
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            );
            let png = base64::engine::general_purpose::STANDARD
                .decode(shot["data"].as_str().unwrap())
                .unwrap();
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ebb-dashboard.png");
            std::fs::write(&path, png).unwrap();
            eprintln!("screenshot: {}", path.display());
            // Logging out ends the session: the dashboard asks to log in again.
            b.eval(
                &session,
                "document.querySelector('form.logout').submit(); 1",
            );
            b.wait_load();
            assert_eq!(b.eval(&session, "location.pathname"), "/login");
            let url = format!("{base}/dashboard");
            b.call(Some(&session), "Page.navigate", json!({ "url": url }));
            b.wait_load();
            assert_eq!(b.eval(&session, "location.pathname"), "/login");
            (b, dom)
        }
    })
    .await
    .unwrap();
    let dom = &b.1;

    // The figures: 62.5 % by hand; idle cost and savings as the gRPC API
    // (and so `ebb report`) gives them for the same window.
    assert_eq!(text_of(dom, "utilization"), "62.5%");
    let mut m = s.market(Some(FINANCE)).await;
    let r = m
        .get_utilization(pb::GetUtilizationRequest {
            start_time: Some(ebb_api::convert::ms_to_wire(now_ms() - 24 * H)),
            end_time: None,
            step_seconds: 15 * 60,
            group_by: pb::UtilizationGrouping::Pool.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let t = &r.totals[0];
    assert_eq!(t.group, "demo");
    // Too many steps for one request: refused, naming the field.
    let e = m
        .get_utilization(pb::GetUtilizationRequest {
            start_time: Some(ebb_api::convert::ms_to_wire(now_ms() - 30 * 24 * H)),
            step_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(fields(&e), vec!["step_seconds"]);
    assert!(
        (624_900..=625_000).contains(&t.utilization_ppm.unwrap()),
        "{t:?}"
    );
    // The live demo pool idles on (4 IE at the on-demand price, about a
    // third of a cent a second) between the page load and this call.
    let dollars = |s: String| s.trim_start_matches('$').parse::<f64>().unwrap();
    let idle = dollars(text_of(dom, "idle-cost"));
    let expected = t.idle_cost_micros as f64 / 1e6;
    assert!((idle - expected).abs() < 0.05, "{idle} vs {t:?}");
    assert!(text_of(dom, "savings").starts_with('$'), "{dom}");
    assert!(
        dom.contains("id=\"rate-note\""),
        "the on-demand stand-in is said"
    );
    assert!(dom.contains("<svg id=\"chart\"") && dom.contains("id=\"reserved-line\""));
    for layer in ["streaming", "batch", "headroom", "idle"] {
        assert!(dom.contains(&format!("class=\"layer-{layer}\"")), "{layer}");
    }
    assert!(dom.contains("<td>encoding</td>"));
    // The HTML team name is text, not markup.
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(!dom.contains("<img"), "a team name became an element");
    for link in ["csv-utilization", "csv-series", "csv-chargeback"] {
        assert!(dom.contains(&format!("id=\"{link}\"")), "{link}");
    }
    drop(b);

    // `ebb report` prints the same figures, with units in the CSV headers;
    // a team token is refused.
    let ebb = |token: &'static str, args: &'static [&'static str]| {
        let addr = s.addr.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_ebb"))
                .args(args)
                .env("EBB_ADDR", addr)
                .env("EBB_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let o = ebb(FINANCE, &["report", "utilization", "--format", "csv"])
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(out.starts_with("group,reserved_ie_hours,"), "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("demo,"), "{out}");
    assert_seeded_utilization(&out, seeded_at.elapsed());
    let o = ebb(FINANCE, &["report", "chargeback", "--format", "json"])
        .await
        .unwrap();
    let rows: Value = serde_json::from_slice(&o.stdout).unwrap();
    let teams: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    assert_eq!(teams, [HTML_TEAM, "encoding"]);
    let o = ebb(TEAM, &["report", "chargeback"]).await.unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("may not read finance reports"),
        "{o:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_shows_a_readable_empty_state() {
    let s = TestServer::start(|c| {
        c.market.pools.clear();
    })
    .await;
    let mut r = ureq::get(format!("{}/dashboard", s.http())).call().unwrap();
    let html = r.body_mut().read_to_string().unwrap();
    assert!(
        html.contains("id=\"empty\"") && html.contains("No utilization recorded"),
        "{html}"
    );
    s.stop().await;
}
