//! Executor benchmark against the real Docker engine: launch overhead
//! (launch command → `running` reported) against `docker run -d` of the same
//! image and limits, the throughput of 50 concurrent launches, and stop
//! latency (stop command → `stopped` reported) against `docker stop`.
//!
//! A bench binary rather than criterion: each sample creates a container
//! (hundreds of milliseconds) and the comparison must interleave the two
//! sides in one run, which criterion's fixed sampling does not do.
//!
//! Needs the `ebb-workload:dev` image (`bash scripts/build-workload-image.sh`).
//! Run: `cargo bench -p ebb-executor --bench executor` (`EBB_BENCH_SAMPLES`
//! sets the samples per sequential measurement, default 20).

use std::process::Command as Cli;
use std::time::{Duration, Instant};

use ebb_executor::model::{Command, Report, RunEventKind, RunSpec, StopCause};
use ebb_executor::runtime::{LABEL_EXECUTOR, RunId};
use ebb_executor::{DockerRuntime, ExecutorConfig, RunManager};
use tokio::sync::mpsc;

const IMAGE: &str = "ebb-workload:dev";
/// Concurrent launches in the throughput measurement (the figure).
const N_CONCURRENT: u32 = 50;
/// Grace for the measured stops: far above what the workload needs to exit
/// on SIGTERM, so both sides measure a graceful stop, never the SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// CPU and memory of every benchmark container: small enough that 50 fit
/// on the 2-core, 24 GiB machine.
const CPU_MILLIS: u64 = 100;
const MEMORY_MIB: u64 = 32;

/// The workload idles so the machine's two cores measure the engine, not
/// 50 spinning tasks.
const ARGS: [&str; 5] = ["/workload", "--work-ms", "600000", "--mode", "sleep"];

/// Removes the benchmark's containers when dropped, even on panic.
struct Cleanup {
    label: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = Cli::new("docker")
            .args([
                "ps",
                "--all",
                "--quiet",
                "--filter",
                &format!("label={}", self.label),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Cli::new("docker").args(["rm", "--force", id]).output();
            }
        }
    }
}

struct Stats {
    samples_ms: Vec<f64>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self {
            samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
        }
    }
    fn quantile(&self, q: f64) -> f64 {
        let idx = ((self.samples_ms.len() - 1) as f64 * q).round() as usize;
        self.samples_ms[idx]
    }
    fn mean(&self) -> f64 {
        self.samples_ms.iter().sum::<f64>() / self.samples_ms.len() as f64
    }
    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            self.samples_ms.len(),
            self.quantile(0.5),
            self.quantile(0.9),
            self.mean()
        )
    }
}

struct Bench {
    commands: mpsc::Sender<Command>,
    reports: mpsc::Receiver<Report>,
    executor_id: String,
    next_task: u32,
}

impl Bench {
    async fn event(&mut self) -> (RunId, RunEventKind) {
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.reports.recv()).await {
                Ok(Some(Report::Run(event))) => return (event.run, event.kind),
                Ok(Some(_)) => {}
                other => panic!("no report from the run manager: {other:?}"),
            }
        }
    }

    fn next_run(&mut self) -> RunId {
        self.next_task += 1;
        RunId::new(1, self.next_task, 1).unwrap()
    }

    fn spec() -> RunSpec {
        RunSpec {
            image: IMAGE.into(),
            command: ARGS.iter().map(|arg| (*arg).to_owned()).collect(),
            cpu_millis: CPU_MILLIS,
            memory_mib: MEMORY_MIB,
            ..RunSpec::default()
        }
    }

    /// Waits until `run` reports `want`, skipping other events.
    async fn until(&mut self, run: RunId, want: fn(&RunEventKind) -> bool) {
        loop {
            let (got, kind) = self.event().await;
            if got == run && want(&kind) {
                return;
            }
            assert!(
                got != run || !kind.is_terminal(),
                "{run} ended unexpectedly: {kind:?}"
            );
        }
    }

    async fn launch(&mut self) -> (RunId, Duration) {
        let run = self.next_run();
        let start = Instant::now();
        self.commands
            .send(Command::Launch {
                run,
                spec: Self::spec(),
            })
            .await
            .unwrap();
        self.until(run, |kind| matches!(kind, RunEventKind::Running { .. }))
            .await;
        (run, start.elapsed())
    }

    async fn stop(&mut self, run: RunId) -> Duration {
        let start = Instant::now();
        let grace_ms = STOP_GRACE.as_millis() as u64;
        self.commands
            .send(Command::Stop {
                run,
                grace_ms,
                cause: StopCause::Preempt,
            })
            .await
            .unwrap();
        self.until(run, |kind| {
            matches!(
                kind,
                RunEventKind::Stopped {
                    sigkilled: false,
                    ..
                }
            )
        })
        .await;
        start.elapsed()
    }

    async fn discard(&mut self, run: RunId) {
        self.commands
            .send(Command::Discard { run, grace_ms: 0 })
            .await
            .unwrap();
        self.until(run, |kind| *kind == RunEventKind::Removed).await;
    }

    /// `docker run -d` with the limits the executor applies, timed until the
    /// CLI returns (the container is started by then).
    fn docker_run(&self, scratch: &std::path::Path, name: &str) -> Duration {
        std::fs::create_dir_all(scratch).unwrap();
        let cpus = format!("{:.3}", CPU_MILLIS as f64 / 1000.0);
        let memory = format!("{MEMORY_MIB}m");
        let mount = format!("type=bind,source={},target=/scratch", scratch.display());
        let label = format!("{LABEL_EXECUTOR}={}", self.executor_id);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &label,
            "--cpus",
            &cpus,
            "--memory",
            &memory,
            "--memory-swap",
            &memory,
            "--pids-limit",
            "2048",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--mount",
            &mount,
            "--log-opt",
            "max-size=67108864",
            "--log-opt",
            "max-file=1",
            IMAGE,
        ];
        args.extend(ARGS);
        let start = Instant::now();
        let out = Cli::new("docker").args(&args).output().unwrap();
        let elapsed = start.elapsed();
        assert!(
            out.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    }

    fn docker_stop(name: &str) -> Duration {
        let grace_s = STOP_GRACE.as_secs().to_string();
        let start = Instant::now();
        let out = Cli::new("docker")
            .args(["stop", "-t", &grace_s, name])
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        assert!(
            out.status.success(),
            "docker stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        elapsed
    }
}

fn docker_rm(name: &str) {
    let out = Cli::new("docker")
        .args(["rm", "--force", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker rm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let n_samples: usize = std::env::var("EBB_BENCH_SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let runtime = DockerRuntime::connect(Duration::from_secs(10))
        .await
        .unwrap_or_else(|err| panic!("the executor benchmark needs a Docker engine: {err}"));
    let api_version = runtime.api_version();
    let image_ok = Cli::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        image_ok,
        "{IMAGE} is missing: run `bash scripts/build-workload-image.sh`"
    );

    let executor_id = format!("bench-{}", std::process::id());
    let _cleanup = Cleanup {
        label: format!("{LABEL_EXECUTOR}={executor_id}"),
    };
    let data_dir = tempfile::tempdir().unwrap();
    let config = ExecutorConfig {
        data_dir: data_dir.path().to_owned(),
        retention_ms: 3_600_000,
        ..ExecutorConfig::new(executor_id.clone())
    };
    let manager = RunManager::new(runtime, config).unwrap();
    let (commands, commands_rx) = mpsc::channel(256);
    let (reports_tx, reports) = mpsc::channel(256);
    tokio::spawn(manager.run(commands_rx, reports_tx));
    let mut bench = Bench {
        commands,
        reports,
        executor_id,
        next_task: 0,
    };
    match bench.reports.recv().await {
        Some(Report::Inventory(_)) => {}
        other => panic!("expected the inventory, got {other:?}"),
    }

    // Warm-up: first container creation pays for cold caches on both sides.
    let (run, _) = bench.launch().await;
    bench.discard(run).await;
    let warm = format!("ebb-bench-warm-{}", std::process::id());
    bench.docker_run(&data_dir.path().join("warm"), &warm);
    docker_rm(&warm);

    eprintln!("launch overhead: {n_samples} samples per side, interleaved");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut stops_ours = Vec::new();
    let mut stops_theirs = Vec::new();
    for idx in 0..n_samples {
        let (run, elapsed) = bench.launch().await;
        ours.push(elapsed);
        let name = format!("ebb-bench-cli-{}-{idx}", std::process::id());
        theirs.push(bench.docker_run(&data_dir.path().join(&name), &name));
        // Let both workloads install their SIGTERM handler before stopping.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stops_ours.push(bench.stop(run).await);
        stops_theirs.push(Bench::docker_stop(&name));
        bench.discard(run).await;
        docker_rm(&name);
        eprint!(".");
    }
    eprintln!();

    eprintln!("throughput: {N_CONCURRENT} concurrent launches");
    let start = Instant::now();
    let mut runs = Vec::new();
    for _ in 0..N_CONCURRENT {
        let run = bench.next_run();
        bench
            .commands
            .send(Command::Launch {
                run,
                spec: Bench::spec(),
            })
            .await
            .unwrap();
        runs.push(run);
    }
    let mut n_running = 0;
    while n_running < N_CONCURRENT {
        let (run, kind) = bench.event().await;
        match kind {
            RunEventKind::Running { .. } => n_running += 1,
            RunEventKind::Starting => {}
            other => panic!("{run}: {other:?}"),
        }
    }
    let all_running = start.elapsed();
    let start = Instant::now();
    for run in &runs {
        let grace_ms = STOP_GRACE.as_millis() as u64;
        bench
            .commands
            .send(Command::Stop {
                run: *run,
                grace_ms,
                cause: StopCause::Preempt,
            })
            .await
            .unwrap();
    }
    let mut n_stopped = 0;
    while n_stopped < N_CONCURRENT {
        if let (_, RunEventKind::Stopped { .. }) = bench.event().await {
            n_stopped += 1;
        }
    }
    let all_stopped = start.elapsed();
    for run in runs {
        bench.discard(run).await;
    }

    let ours = Stats::new(ours);
    let theirs = Stats::new(theirs);
    let stops_ours = Stats::new(stops_ours);
    let stops_theirs = Stats::new(stops_theirs);
    println!("Docker API {api_version}; samples in ms");
    println!();
    println!("| measurement | n | median | p90 | mean |");
    println!("|---|---|---|---|---|");
    println!("{}", ours.row("launch → running (executor)"));
    println!("{}", theirs.row("`docker run -d` (CLI)"));
    println!(
        "{}",
        stops_ours.row("stop → stopped (executor, SIGTERM honoured)")
    );
    println!("{}", stops_theirs.row("`docker stop -t 10` (CLI)"));
    println!();
    println!(
        "launch overhead ratio (median executor / median docker run): {:.2}",
        ours.quantile(0.5) / theirs.quantile(0.5)
    );
    println!(
        "stop ratio (median executor / median docker stop): {:.2}",
        stops_ours.quantile(0.5) / stops_theirs.quantile(0.5)
    );
    println!(
        "{N_CONCURRENT} concurrent launches: all running after {:.0} ms ({:.1} launches/s); all stopped after {:.0} ms",
        all_running.as_secs_f64() * 1000.0,
        f64::from(N_CONCURRENT) / all_running.as_secs_f64(),
        all_stopped.as_secs_f64() * 1000.0
    );
}
