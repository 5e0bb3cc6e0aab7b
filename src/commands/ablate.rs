//! `udit ablate`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ablate::{Ablation, Plan};

#[derive(Args)]
pub struct AblateArgs {
    /// The plan: named model configurations, one shared recipe with its seeds, and the meter
    /// protocol (configs/ablation/*.json; configs/ablation/README.md describes the fields).
    #[arg(long)]
    pub plan: PathBuf,
    /// Output folder: a `udit train` run folder per entry and seed, plan.json, results.json,
    /// results.md, fid-vs-gmacs.png. The same command again resumes an interrupted plan.
    #[arg(long, required_unless_present = "check")]
    pub out: Option<PathBuf>,
    /// Only check the plan (without data) and print its entries' parameters and GMACs.
    #[arg(long)]
    pub check: bool,
    /// GPUs to train each run on, data-parallel (needs --features cuda); the global batch is
    /// split evenly over them, which does not change the run.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// A TrueType font for the plot's labels.
    #[arg(long, default_value = crate::io::plot::DEFAULT_FONT)]
    pub font: PathBuf,
}

/// `udit ablate`: checks the whole plan first, then trains, samples and scores every run
/// not done yet, and prints the results table.
pub fn ablate(a: AblateArgs) -> Result<()> {
    let plan = Plan::load(&a.plan)?;
    if a.check {
        let (entries, _) = plan.resolve()?;
        println!("{}", plan.summary(&entries));
        return Ok(());
    }
    let out = a.out.context("--out is required")?;
    let devices = crate::devices(a.devices)?;
    let ablation = Ablation::prepare(&plan, &out, &a.font, &devices[0])?;
    let results = ablation.run(&devices)?;
    println!("{}", results.markdown());
    eprintln!("wrote results.json, results.md and fid-vs-gmacs.png to {}", out.display());
    Ok(())
}
