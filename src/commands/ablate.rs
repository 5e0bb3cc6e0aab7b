//! `udit ablate`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::ablate::{Ablation, Pick, Plan};
use crate::io::npz::parse_shard;
use crate::train::Interrupted;

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
    /// Only check the plan and that its data folder and meter files exist (without reading
    /// them), and print its entries' parameters, GMACs, processes and meter samplers.
    #[arg(long)]
    pub check: bool,
    /// Only tabulate and plot the runs finished in --out (while a plan runs, or after it
    /// stopped), naming the ones still missing; trains nothing.
    #[arg(long, conflicts_with = "check")]
    pub table: bool,
    /// GPUs to train each run on, data-parallel (needs --features cuda); the global batch is
    /// split evenly over them, which does not change the run.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Runs trained side by side, each in its own process on an equal share of the CPU
    /// threads, each taking the next run no other has claimed, then the results. Small
    /// models train sooner so than one at a time on every thread: the Fashion-MNIST plans
    /// take `--jobs 2` on 2 cores.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// k/n: only the runs i with i mod n = k, for machines or processes that share the output
    /// folder; writes no results (the command without --shard, once all are done, tabulates).
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Take any run no other process has claimed, one at a time (what --jobs starts).
    #[arg(long, hide = true, conflicts_with = "shard")]
    pub claim: bool,
    /// A TrueType font for the plot's labels.
    #[arg(long, default_value = crate::io::plot::DEFAULT_FONT)]
    pub font: PathBuf,
}

/// `udit ablate`: checks the whole plan first, then trains, samples and scores every run
/// not done yet, and prints the results table.
pub fn ablate(a: AblateArgs) -> Result<()> {
    let plan = Plan::load(&a.plan)?;
    if a.check {
        let (entries, runs) = plan.resolve()?;
        plan.check_files(&runs)?;
        println!("{}", plan.summary(&entries));
        return Ok(());
    }
    let out = a.out.context("--out is required")?;
    if a.table {
        let results = crate::ablate::table(&plan, &out, &a.font)?;
        println!("{}", results.markdown());
        eprintln!("wrote results.json, results.md and fid-vs-gmacs.png to {}", out.display());
        return Ok(());
    }
    let (k, n) = parse_shard(&a.shard)?;
    if a.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if a.jobs > 1 && n > 1 {
        bail!("--jobs {} runs shards of its own: give --jobs or --shard, not both", a.jobs);
    }
    let devices = crate::devices(a.devices)?;
    let ablation = Ablation::prepare(&plan, &out, &a.font, &devices[0])?;
    // Ctrl-C: every run in flight (here or in a job) ends at a checkpoint.
    crate::train::stop_on_ctrl_c();
    if a.jobs > 1 {
        ablation.write_plan()?;
        let extra = ["--devices".to_string(), a.devices.to_string(), "--font".into(), a.font.display().to_string()];
        crate::ablate::jobs::run_shards(&a.plan, &out, a.jobs, &extra)?;
    }
    let pick = if a.claim { Pick::Claim } else { Pick::Shard(k, n) };
    let resume = "the same command continues the plan".to_string();
    match ablation.run(&devices, pick).map_err(|e| Interrupted::resumed_by(e, resume))? {
        Some(results) => {
            println!("{}", results.markdown());
            eprintln!("wrote results.json, results.md and fid-vs-gmacs.png to {}", out.display());
        }
        None if a.claim => eprintln!("no run left to claim"),
        None => eprintln!("shard {k}/{n} done; the same command without --shard tabulates once every shard is"),
    }
    Ok(())
}
