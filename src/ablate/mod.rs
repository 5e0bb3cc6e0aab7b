//! `udit ablate`: the paper's comparisons (its Figure 4 ladder, Figure 1 across DiT, SiT,
//! SiT-LLaMA and U-DiT) as one resumable command. Every entry of a plan (a model and its
//! process) trains once per seed as an ordinary `udit train` run folder
//! (`OUT/ENTRY/seed-N/`), so an interrupted ablation continues where it stopped and finished
//! runs are not retrained; each finished model is sampled with its process's sampler and
//! scored with the plan's meter protocol (scores cached in its folder); then what is finished
//! is tabulated and plotted (FID against GMACs, a line per system).

pub mod jobs;
pub mod meter;
pub mod plan;
mod plot;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;

pub use self::meter::{Score, Scorer};
pub use self::plan::{ClassOrder, Entry, EntryModel, MeterSampler, Plan, PlanRecipe, Protocol, RunSpec};
pub use self::report::{EntryResult, Results, RunResult, Spread};
use crate::codec::Codec;
use crate::data::Dataset;
use crate::train::{DataSpec, RunDir, TrainState};

/// Which runs of the plan one process does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The runs i with i mod n = k (`Shard(0, 1)`: every run, then the results).
    Shard(usize, usize),
    /// Any run not claimed by another process, one at a time (`udit ablate --jobs`).
    Claim,
}

/// A plan checked against its data, codecs, meter and output folder: ready to run.
pub struct Ablation {
    /// The plan with every model written out (what `OUT/plan.json` holds).
    pub plan: Plan,
    pub entries: Vec<EntryModel>,
    pub runs: Vec<RunSpec>,
    out: PathBuf,
    data: Arc<dyn Dataset>,
    scorer: Scorer,
    font: PathBuf,
}

impl Ablation {
    /// Every check that can fail before training: the plan itself, each model against the
    /// data through its codec, the meter's files and image size, the plot's font, and that
    /// `out` is empty or holds this plan.
    pub fn prepare(plan: &Plan, out: &Path, font: &Path, device: &Device) -> Result<Self> {
        let (entries, runs) = plan.resolve()?;
        let plan = plan.resolved(&entries)?;
        if !holds(&plan, out)? && std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
            bail!("{} is not empty and holds no plan.json: choose another --out", out.display());
        }
        crate::io::plot::register_font(font)?;
        let first = &runs[0].config;
        let data = first.data.open()?;
        let fashion_mnist = match &first.data {
            DataSpec::FashionMnist { dir } => dir.clone(),
            _ => crate::data::fashion_mnist::DEFAULT_DIR.into(),
        };
        let scorer = Scorer::open(&plan.meter, &fashion_mnist, device)?;
        let mut codecs: Vec<(String, Codec)> = Vec::new();
        for r in runs.iter().filter(|r| r.seed == first.seed) {
            let cfg = &r.config;
            let name = &entries[r.entry].name;
            if !codecs.iter().any(|(spec, _)| *spec == cfg.codec) {
                codecs.push((cfg.codec.clone(), Codec::open(&cfg.codec, device)?));
            }
            let codec = &codecs.iter().find(|(spec, _)| *spec == cfg.codec).expect("opened above").1;
            crate::train::check_fit(cfg, data.as_ref(), codec).with_context(|| format!("entry {name:?}"))?;
            let (channels, side) = codec.image_shape(cfg.model.in_channels(), cfg.model.input_size())?;
            scorer.check_images(channels, side).with_context(|| format!("entry {name:?}"))?;
        }
        Ok(Self { plan, entries, runs, out: out.to_path_buf(), data, scorer, font: font.to_path_buf() })
    }

    /// The run folder of `run`.
    pub fn run_dir(&self, run: &RunSpec) -> RunDir {
        run_dir(&self.out, &self.entries[run.entry], run.seed)
    }

    /// Trains (on `devices`, data-parallel when several), samples and scores (on the first)
    /// every run not done yet, with a line per run (which, how far, and the plan's ETA), then
    /// writes `results.json`, `results.md` and `fid-vs-gmacs.png` into the output folder
    /// ([`tabulate`]).
    /// With another [`Pick`] than every run it writes no results (`None`): the processes
    /// share the output folder, and a last pass over every run finds them done and tabulates.
    pub fn run(&self, devices: &[Device], pick: Pick) -> Result<Option<Results>> {
        let device = devices.first().context("no device to run on")?;
        self.write_plan()?;
        let (start, mut eta) = (Instant::now(), Eta::default());
        let mine: Vec<(usize, &RunSpec)> = match pick {
            Pick::Shard(k, n) => self.runs.iter().enumerate().filter(|(i, _)| i % n == k).collect(),
            Pick::Claim => self.runs.iter().enumerate().collect(),
        };
        for (j, &(i, run)) in mine.iter().enumerate() {
            let dir = self.run_dir(run);
            let _claim = match pick {
                Pick::Shard(..) => None,
                Pick::Claim => match self.claim(run)? {
                    // Finished runs are for the last pass to report.
                    Some(lock) if !(dir.export().exists() && meter::is_scored(&dir, &self.plan.meter)) => Some(lock),
                    _ => continue,
                },
            };
            let label = format!("[{}/{}] {}, seed {}", i + 1, self.runs.len(), self.entries[run.entry].name, run.seed);
            let left = eta
                .left(mine[j..].iter().map(|(_, r)| self.work_left(r)))
                .map_or("ETA of the plan after the first run".to_string(), |s| {
                    format!("about {} left in the plan", clock(s))
                });
            eprintln!("{label}: {}; {} so far, {left}", self.what_is_left(run), clock(start.elapsed().as_secs_f64()));
            let t0 = Instant::now();
            let steps = self.train(run, &dir, &label, devices)?;
            let t1 = Instant::now();
            let fresh = !meter::is_scored(&dir, &self.plan.meter);
            let protocol = &self.plan.meter;
            let say = |what: &str| eprintln!("{label}: {what}");
            let scores = meter::score_run(&dir, protocol, self.data.num_classes(), &self.scorer, device, &say)?;
            let entry = &self.entries[run.entry];
            eta.add((t1 - t0).as_secs_f64(), steps as f64 * train_macs(&entry.cost, &run.config));
            if fresh {
                eta.add(t1.elapsed().as_secs_f64(), meter_macs(entry, protocol));
            }
            eprintln!("{label}: {}", RunResult::read(&dir, run.seed, scores)?.summary());
        }
        if pick != Pick::Shard(0, 1) {
            return Ok(None);
        }
        Ok(Some(tabulate(&self.plan, &self.entries, &self.runs, &self.out, &self.font)?))
    }

    /// Claims `run` for this process: an exclusive lock on `OUT/.claims/FOLDER-seed-N.lock`,
    /// held until the returned file is dropped or the process ends, however it ends. None if
    /// another process holds it.
    fn claim(&self, run: &RunSpec) -> Result<Option<std::fs::File>> {
        let dir = self.out.join(".claims");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}-seed-{}.lock", self.entries[run.entry].folder, run.seed));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
    }

    /// Creates the output folder with `plan.json` (the plan, every model written out), which
    /// marks the folder as this plan's.
    pub fn write_plan(&self) -> Result<()> {
        std::fs::create_dir_all(&self.out).with_context(|| format!("cannot create {}", self.out.display()))?;
        let plan_json = serde_json::to_string_pretty(&self.plan)?;
        crate::io::write_atomic(&self.out.join("plan.json"), plan_json.as_bytes())
    }

    /// Trains `run` to its end (from its newest checkpoint, if any) unless its model is
    /// exported; returns the steps trained now.
    fn train(&self, run: &RunSpec, dir: &RunDir, label: &str, devices: &[Device]) -> Result<u64> {
        if dir.export().exists() {
            return Ok(0);
        }
        meter::forget(dir)?;
        let ad: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
        let state = match dir.list()?.pop() {
            Some(last) => TrainState::load(&last, &ad[0])?,
            None => TrainState::new(run.config.clone(), &ad[0])?,
        };
        let first = state.optim.step;
        let progress = crate::train::progress(&state).with_label(label);
        let trainer = crate::train::train(state, dir, &ad, &progress)?;
        Ok(trainer.state.optim.step - first)
    }

    /// What `run` still needs, in words.
    fn what_is_left(&self, run: &RunSpec) -> String {
        let dir = self.run_dir(run);
        match (dir.export().exists(), meter::is_scored(&dir, &self.plan.meter)) {
            (true, true) => "trained and scored before".into(),
            (true, false) => "trained before; scoring".into(),
            (false, _) => match run.config.budget_s {
                Some(b) => format!("training for {} (at most {} steps), then scoring", clock(b), run.config.steps),
                None if dir.list().is_ok_and(|c| !c.is_empty()) => {
                    format!("resuming training to {} steps, then scoring", run.config.steps)
                }
                None => format!("training {} steps, then scoring", run.config.steps),
            },
        }
    }

    /// What `run` still needs: (seconds known in advance, MACs of work at the measured rate).
    fn work_left(&self, run: &RunSpec) -> (f64, f64) {
        let dir = self.run_dir(run);
        let entry = &self.entries[run.entry];
        let meter = if meter::is_scored(&dir, &self.plan.meter) { 0.0 } else { meter_macs(entry, &self.plan.meter) };
        match (dir.export().exists(), run.config.budget_s) {
            (true, _) => (0.0, meter),
            (false, Some(budget)) => (budget, meter),
            (false, None) => (0.0, run.config.steps as f64 * train_macs(&entry.cost, &run.config) + meter),
        }
    }
}

/// MACs of one training step: forward and backward (about two more forwards) per sample.
fn train_macs(cost: &crate::cost::Cost, cfg: &crate::train::TrainConfig) -> f64 {
    3.0 * cfg.global_batch as f64 * cost.macs as f64
}

/// MACs of the meter's sampling: a forward per sample and call, two when guided.
fn meter_macs(entry: &EntryModel, p: &Protocol) -> f64 {
    let passes: f64 = p.cfg_scales.iter().map(|&s| if s > 1.0 { 2.0 } else { 1.0 }).sum();
    let calls = entry.calls.unwrap_or(entry.method.steps());
    passes * (p.num_samples * calls) as f64 * entry.cost.macs as f64
}

/// Whether `out` holds `plan`'s runs (its `plan.json`); an error if it holds another plan's.
fn holds(plan: &Plan, out: &Path) -> Result<bool> {
    let stored = out.join("plan.json");
    if !stored.exists() {
        return Ok(false);
    }
    if !Plan::load(&stored)?.same_as(plan)? {
        bail!("{} holds the results of another plan (its plan.json differs): choose another --out", out.display());
    }
    Ok(true)
}

/// Tabulates what is finished of `plan` in `out` without training anything ([`tabulate`]).
pub fn table(plan: &Plan, out: &Path, font: &Path) -> Result<Results> {
    let (entries, runs) = plan.resolve()?;
    if !holds(&plan.resolved(&entries)?, out)? {
        bail!("{} holds no plan.json: no run of this plan has started there", out.display());
    }
    crate::io::plot::register_font(font)?;
    tabulate(plan, &entries, &runs, out, font)
}

/// The folder of `entry`'s run with `seed`.
fn run_dir(out: &Path, entry: &EntryModel, seed: u64) -> RunDir {
    RunDir(out.join(&entry.folder).join(format!("seed-{seed}")))
}

/// The results of every run of `runs` trained and scored in `out` (the others named as
/// missing), written there as `results.json`, `results.md` and `fid-vs-gmacs.png`.
pub fn tabulate(plan: &Plan, entries: &[EntryModel], runs: &[RunSpec], out: &Path, font: &Path) -> Result<Results> {
    let (mut finished, mut missing) = (Vec::new(), Vec::new());
    for run in runs {
        let dir = run_dir(out, &entries[run.entry], run.seed);
        match meter::scores(&dir, &plan.meter).filter(|_| dir.export().exists()) {
            Some(scores) => finished.push((run.entry, RunResult::read(&dir, run.seed, scores)?)),
            None => missing.push(format!("{}, seed {}", entries[run.entry].name, run.seed)),
        }
    }
    let results = Results::new(plan, entries, finished, missing);
    results.write(out, font)?;
    Ok(results)
}

/// The plan's ETA: seconds per MAC, measured on what this invocation trained and sampled
/// (time taken as proportional to MACs, which small models' fixed costs make optimistic).
#[derive(Default)]
struct Eta {
    seconds: f64,
    macs: f64,
}

impl Eta {
    fn add(&mut self, seconds: f64, macs: f64) {
        if macs > 0.0 {
            (self.seconds, self.macs) = (self.seconds + seconds, self.macs + macs);
        }
    }

    /// Seconds left for work items of (known seconds, MACs); None before any measurement.
    fn left(&self, work: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
        let rate = (self.macs > 0.0).then(|| self.seconds / self.macs)?;
        Some(work.map(|(s, m)| s + m * rate).sum())
    }
}

/// "1:02:03".
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
