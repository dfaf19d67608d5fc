//! Sweep mode: several policies × several seeds, one comparison report.

use std::path::Path;

use anyhow::Result;

use crate::scenario::Scenario;

/// Runs `policies × seeds` and writes the comparison into `dir`.
pub fn run(_sc: &Scenario, _policies: &[String], _seeds: u64, _dir: &Path) -> Result<()> {
    anyhow::bail!("sweep is not written yet")
}
