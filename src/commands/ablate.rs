//! `udit ablate`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::ablate::{Ablation, Plan};
use crate::io::npz::parse_shard;

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
    /// Runs trained side by side, each in its own process on an equal share of the CPU
    /// threads (`--shard k/N` each, then the results). Small models train sooner so than one
    /// at a time on every thread: the Fashion-MNIST plans take `--jobs 2` on 2 cores.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// k/n: only the runs i with i mod n = k, for machines or processes that share the output
    /// folder; writes no results (the command without --shard, once all are done, tabulates).
    #[arg(long, default_value = "0/1")]
    pub shard: String,
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
    let (k, n) = parse_shard(&a.shard)?;
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if a.jobs > 1 && n > 1 {
        bail!("--jobs {} runs shards of its own: give --jobs or --shard, not both", a.jobs);
    }
    let devices = crate::devices(a.devices)?;
    let ablation = Ablation::prepare(&plan, &out, &a.font, &devices[0])?;
    if a.jobs > 1 {
        ablation.write_plan()?;
        let extra = ["--devices".to_string(), a.devices.to_string(), "--font".into(), a.font.display().to_string()];
        crate::ablate::jobs::run_shards(&a.plan, &out, a.jobs, &extra)?;
    }
    match ablation.run(&devices, (k, n))? {
        Some(results) => {
            println!("{}", results.markdown());
            eprintln!("wrote results.json, results.md and fid-vs-gmacs.png to {}", out.display());
        }
        None => eprintln!("shard {k}/{n} done; the same command without --shard tabulates once every shard is"),
    }
    Ok(())
}
