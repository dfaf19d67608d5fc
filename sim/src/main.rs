//! `ebb-sim`: run a scenario through the real scheduler core, or sweep policies × seeds.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use ebb_sim::{Progress, RunOptions, Scenario, report};

#[derive(Parser)]
#[command(
    name = "ebb-sim",
    version,
    about = "Discrete-event simulator driving the Ebb scheduler core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario and write the summary, CSVs and plots.
    Run {
        /// Scenario TOML file.
        scenario: PathBuf,
        /// Seed (default: the scenario's `sim.seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Output directory (default: out/<scenario name>/<policy>-seed<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Policy name (default: the scenario's `sim.policy`).
        #[arg(long)]
        policy: Option<String>,
        /// Also print the developer counters: round timings, hosts examined,
        /// rounds that planned nothing, events per second.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        forecast: ForecastArgs,
    },
    /// Run several policies × seeds, in parallel, and write a comparison report.
    Sweep {
        /// Scenario TOML file.
        scenario: PathBuf,
        /// Comma-separated policy names (spaces around names are ignored).
        #[arg(long, value_delimiter = ',', required = true, value_parser = policy_name)]
        policies: Vec<String>,
        /// Number of seeds (the scenario's seed, seed+1, …).
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Output directory (default: out/<scenario name>/sweep).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs at once (default: one per core).
        #[arg(long)]
        jobs: Option<usize>,
        #[command(flatten)]
        forecast: ForecastArgs,
    },
}

/// Overrides of the scenario's `[forecast]`, to compare runs with and
/// without a (noisy) demand forecast.
#[derive(clap::Args)]
struct ForecastArgs {
    /// Feed the market a demand forecast (`on`) or not (`off`); default:
    /// the scenario's `forecast.enabled`.
    #[arg(long, value_parser = ["on", "off"])]
    forecast: Option<String>,
    /// Relative error of each forecast point (standard deviation, e.g. 0.1).
    #[arg(long)]
    forecast_error: Option<f64>,
}

impl ForecastArgs {
    fn apply(&self, sc: &mut Scenario) -> Result<()> {
        if let Some(f) = &self.forecast {
            sc.forecast.enabled = f == "on";
        }
        if let Some(e) = self.forecast_error {
            sc.forecast.error = e;
        }
        sc.forecast.validate().context("--forecast-error")
    }
}

/// A `--policies` entry: trimmed, not empty.
fn policy_name(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name.is_empty() {
        return Err("empty policy name (two commas in a row, or a trailing comma?)".into());
    }
    Ok(name.to_string())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            scenario,
            seed,
            out,
            policy,
            verbose,
            forecast,
        } => {
            let mut sc = Scenario::load(&scenario)?;
            forecast.apply(&mut sc)?;
            let opts = RunOptions {
                seed: seed.unwrap_or(sc.sim.seed),
                policy: policy.unwrap_or_else(|| sc.sim.policy.clone()),
                progress: Progress::Terminal,
                ..RunOptions::default()
            };
            let outcome = ebb_sim::run(&sc, &opts)
                .with_context(|| format!("running scenario {}", scenario.display()))?;
            let dir = out.unwrap_or_else(|| report::default_dir(&sc, &opts));
            report::write_all(&outcome, &dir)?;
            let mut text = report::table(&outcome.summary, verbose);
            text.push_str(&format!("  {:<44} {}\n", "outputs", dir.display()));
            print_out(&text)?;
            if !outcome.conservation_errors.is_empty() {
                bail!(
                    "conservation check failed: the core and the simulated executors disagree: {}",
                    outcome.conservation_errors.join("; ")
                );
            }
            Ok(())
        }
        Command::Sweep {
            scenario,
            policies,
            seeds,
            out,
            jobs,
            forecast,
        } => {
            ensure!(jobs != Some(0), "--jobs must be at least 1");
            let mut sc = Scenario::load(&scenario)?;
            forecast.apply(&mut sc)?;
            let dir = out.unwrap_or_else(|| PathBuf::from("out").join(&sc.name).join("sweep"));
            let text = ebb_sim::sweep::run(&sc, &policies, seeds, &dir, jobs)?;
            print_out(&text)
        }
    }
}

/// Writes to stdout; a reader that went away (`ebb-sim run x | head -1`) is
/// not an error: the outputs are on disk and the exit status stays meaningful.
fn print_out(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
