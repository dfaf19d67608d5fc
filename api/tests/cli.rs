//! The `ebb` binary as users run it: client commands against a server on a
//! loopback port (exit codes, output, errors naming fields, tokens from the
//! environment), and `ebb server` shutting down cleanly on SIGTERM.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use ebb_api::config::{Role, TokenConfig};

fn ebb(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ebb"));
    c.args(args).env("EBB_ADDR", addr).env_remove("EBB_TOKEN");
    if let Some(t) = token {
        c.env("EBB_TOKEN", t);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn example(name: &str) -> String {
    format!("{}/../examples/jobs/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_lists_explains_cancels_and_reports() {
    let s = TestServer::start(|_| {}).await;
    let addr = s.addr.clone();
    let run = move |args: Vec<&'static str>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || ebb(&addr, None, &args))
    };
    let o = run(vec![
        "job",
        "submit",
        "-f",
        Box::leak(example("season-drop.yaml").into_boxed_str()),
    ])
    .await
    .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("job 1 created: season-42-encode (957 tasks, team encoding)"),
        "{out}"
    );
    let o = run(vec![
        "job",
        "submit",
        "-f",
        Box::leak(example("ml-training-gang.yaml").into_boxed_str()),
    ])
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o).1);

    let o = run(vec!["job", "list", "--format", "csv"]).await.unwrap();
    let (out, _) = text(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "id,name,team,tier,phase,pending,running,completed,failed,created"
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[2].starts_with("2,recsys-train-v7,ml-platform,flex,queued,8,"),
        "{out}"
    );

    let o = run(vec!["job", "why", "1"]).await.unwrap();
    let (out, _) = text(&o);
    assert!(
        out.contains("957 ready task(s) pending") && out.contains("no hosts [no_hosts]"),
        "{out}"
    );

    let o = run(vec!["job", "cancel", "1", "--grace", "5s"])
        .await
        .unwrap();
    assert!(o.status.success());
    // Watching an ended job prints its phase and exits non-zero (it did not succeed).
    let o = run(vec!["job", "watch", "1"]).await.unwrap();
    let (out, _) = text(&o);
    assert!(out.contains("job 1 cancelled"), "{out}");
    assert_eq!(o.status.code(), Some(1));

    let o = run(vec!["capacity"]).await.unwrap();
    let (out, _) = text(&o);
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("demo  local   4.000"),
        "{out}"
    );
    let o = run(vec!["price", "--format", "json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["pool"], "demo");
    let o = run(vec!["ledger", "--by", "pool", "--format", "csv"])
        .await
        .unwrap();
    assert!(
        text(&o)
            .0
            .starts_with("pool,ie_hours,charges,lost_ie_hours,preemptions,over_budget")
    );

    // Errors: the server's message, the field, a non-zero exit.
    let o = run(vec!["job", "get", "42"]).await.unwrap();
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("job 42 not found") && err.contains("NotFound"),
        "{err}"
    );
    let o = run(vec!["job", "cancel", "1", "--grace", "2h"])
        .await
        .unwrap();
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("field `grace`"),
        "{err}"
    );
    let bad = s.dir.path().join("bad.yaml");
    let body = std::fs::read_to_string(example("season-drop.yaml"))
        .unwrap()
        .replace("tasks: 957", "tasks: 200000");
    std::fs::write(&bad, body).unwrap();
    let bad: &'static str = Box::leak(bad.display().to_string().into_boxed_str());
    let o = run(vec!["job", "submit", "-f", bad]).await.unwrap();
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("field `spec.n_tasks`"),
        "{err}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_its_token_from_the_environment() {
    let s = TestServer::start(|c| {
        c.auth.tokens = vec![TokenConfig {
            name: "enc".into(),
            token: Some("s3cret".into()),
            sha256: None,
            role: Role::Team,
            team: Some("encoding".into()),
        }]
    })
    .await;
    let addr = s.addr.clone();
    let file = example("season-drop.yaml");
    let (with, without, other) = tokio::task::spawn_blocking(move || {
        (
            ebb(&addr, Some("s3cret"), &["job", "submit", "-f", &file]),
            ebb(&addr, None, &["job", "list"]),
            ebb(
                &addr,
                Some("s3cret"),
                &["job", "submit", "-f", &example("ml-training-gang.yaml")],
            ),
        )
    })
    .await
    .unwrap();
    assert!(with.status.success(), "{}", text(&with).1);
    assert!(
        text(&without).1.contains("Unauthenticated"),
        "{}",
        text(&without).1
    );
    // The encoding team's token cannot create ml-platform's job.
    assert!(
        text(&other).1.contains("PermissionDenied"),
        "{}",
        text(&other).1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_the_server_down_cleanly_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ebb"))
        .args(["server", "--log-format", "json"])
        .env("EBB_LISTEN", format!("127.0.0.1:{port}"))
        .env("EBB_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        .env("EBB_DATA_DIR", dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("http://127.0.0.1:{port}");
    let file = example("season-drop.yaml");
    eventually("the server to take a job", || {
        let (addr, file) = (addr.clone(), file.clone());
        async move {
            let o = tokio::task::spawn_blocking(move || {
                ebb(&addr, None, &["job", "submit", "-f", &file])
            })
            .await
            .unwrap();
            o.status.success().then_some(())
        }
    })
    .await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    // JSON logs, one object per line, and the shutdown wrote a snapshot.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "snapshot written"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "driver stopped cleanly"),
        "{log}"
    );
    assert!(log.contains("DEV MODE"), "dev mode is announced");
}
