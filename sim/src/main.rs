//! `ebb-sim`: run a scenario through the real scheduler core, or sweep policies × seeds.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ebb_sim::{RunOptions, Scenario, report};

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
        /// Output directory (default: out/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Policy name (default: the scenario's `sim.policy`).
        #[arg(long)]
        policy: Option<String>,
    },
    /// Run several policies × seeds and write a comparison report.
    Sweep {
        /// Scenario TOML file.
        scenario: PathBuf,
        /// Comma-separated policy names.
        #[arg(long, value_delimiter = ',', required = true)]
        policies: Vec<String>,
        /// Number of seeds (1..=N, offset by the scenario's seed).
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// Output directory (default: out/<scenario name>/sweep).
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
        } => {
            let sc = Scenario::load(&scenario)?;
            let opts = RunOptions {
                seed: seed.unwrap_or(sc.sim.seed),
                policy: policy.unwrap_or_else(|| sc.sim.policy.clone()),
                progress: true,
            };
            let outcome = ebb_sim::run(&sc, &opts)
                .with_context(|| format!("running scenario {}", scenario.display()))?;
            let dir = out.unwrap_or_else(|| PathBuf::from("out").join(&sc.name));
            report::write_all(&outcome, &dir)?;
            print!("{}", report::table(&outcome.summary));
            println!("  {:<44} {}", "outputs", dir.display());
            if !outcome.conservation_errors.is_empty() {
                bail!(
                    "conservation check failed: {}",
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
        } => {
            let sc = Scenario::load(&scenario)?;
            let dir = out.unwrap_or_else(|| PathBuf::from("out").join(&sc.name).join("sweep"));
            ebb_sim::sweep::run(&sc, &policies, seeds, &dir)
        }
    }
}
