//! The results of a plan: per run (seed) and per entry (mean and spread over the seeds
//! finished), as `results.json`, a Markdown table (`results.md`) and the FID-vs-GMACs plot,
//! with the runs still missing named.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::meter::Score;
use super::plan::{EntryModel, Plan, Protocol};
use super::{clock, plot};
use crate::train::{LogLine, RunDir};

#[derive(Debug, Serialize)]
pub struct Results {
    /// What scored the samples, in words.
    pub meter: String,
    pub protocol: Protocol,
    pub seeds: Vec<u64>,
    pub entries: Vec<EntryResult>,
    /// Runs not trained and scored yet ("DiT-64/2, seed 2").
    pub missing: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct EntryResult {
    pub name: String,
    /// The plot's line it lies on.
    pub system: String,
    /// `diffusion` or `interpolant`.
    pub process: String,
    /// The meter's sampler for it ("ddim 50 steps, 50 calls").
    pub sampler: String,
    /// Its folder in the output folder.
    pub folder: String,
    /// Weights of the inference model (FFN merged), as the paper counts them.
    pub params: u64,
    /// Trainable weights (the re-parametrized FFN's branches apart).
    pub params_training: u64,
    /// Forward GMACs at batch 1 (`udit info`).
    pub gmacs: f64,
    pub runs: Vec<RunResult>,
    /// Per guidance scale, over the seeds finished (empty while none is).
    pub summary: Vec<Summary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub seed: u64,
    pub steps: u64,
    /// Wall-clock seconds of training, over resumes.
    pub train_seconds: f64,
    pub scores: Vec<Score>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub cfg_scale: f64,
    pub fid: Spread,
    pub class_accuracy: Option<Spread>,
}

/// Mean and sample standard deviation over seeds (no deviation from one seed).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: Option<f64>,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd =
            (values.len() > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        Self { mean, sd }
    }

    fn show(&self, decimals: usize) -> String {
        match self.sd {
            Some(sd) => format!("{:.decimals$} ± {sd:.decimals$}", self.mean),
            None => format!("{:.decimals$}", self.mean),
        }
    }
}

impl RunResult {
    /// Steps and training time from the run's log (its last line), with its scores.
    pub fn read(dir: &RunDir, seed: u64, scores: Vec<Score>) -> Result<Self> {
        let log = std::fs::read_to_string(dir.log()).with_context(|| format!("cannot read {}", dir.log().display()))?;
        let last = log.lines().rev().find(|l| !l.trim().is_empty());
        let line: LogLine = last
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("{} does not end with a log line", dir.log().display()))?;
        Ok(Self { seed, steps: line.step, train_seconds: line.elapsed_s, scores })
    }

    /// "1600 steps in 0:09:12; FID 23.1 (accuracy 0.612) at guidance 1, ...".
    pub fn summary(&self) -> String {
        let scores: Vec<String> = self
            .scores
            .iter()
            .map(|s| {
                let acc = s.class_accuracy.map_or(String::new(), |a| format!(" (class accuracy {a:.3})"));
                format!("FID {:.2}{acc} at guidance {}", s.fid, s.cfg_scale)
            })
            .collect();
        format!("{} steps in {}; {}", self.steps, clock(self.train_seconds), scores.join(", "))
    }
}

impl Results {
    /// Groups the finished `runs` (entry index, result) by entry, in seed order; `missing`
    /// names the others.
    pub fn new(plan: &Plan, entries: &[EntryModel], runs: Vec<(usize, RunResult)>, missing: Vec<String>) -> Self {
        let seeds = plan.recipe.seeds.clone();
        let entries = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut runs: Vec<RunResult> = runs.iter().filter(|(j, _)| *j == i).map(|(_, r)| r.clone()).collect();
                runs.sort_by_key(|r| seeds.iter().position(|&s| s == r.seed));
                let summary = match runs.is_empty() {
                    true => Vec::new(),
                    false => (plan.meter.cfg_scales.iter().enumerate())
                        .map(|(k, &cfg_scale)| {
                            let fids: Vec<f64> = runs.iter().map(|r| r.scores[k].fid).collect();
                            let accs: Option<Vec<f64>> = runs.iter().map(|r| r.scores[k].class_accuracy).collect();
                            Summary { cfg_scale, fid: Spread::of(&fids), class_accuracy: accs.map(|a| Spread::of(&a)) }
                        })
                        .collect(),
                };
                EntryResult {
                    name: e.name.clone(),
                    system: e.system.clone(),
                    process: e.process.kind().into(),
                    sampler: e.sampler(),
                    folder: e.folder.clone(),
                    params: e.cost.params_merged,
                    params_training: e.cost.params,
                    gmacs: e.cost.macs as f64 / 1e9,
                    runs,
                    summary,
                }
            })
            .collect();
        let meter = match &plan.meter.reference {
            None => "the offline Fashion-MNIST meter (classifier FID against the test split, class accuracy)".into(),
            Some(r) => format!("the ADM evaluator (Inception FID against {})", r.display()),
        };
        Self { meter, protocol: plan.meter.clone(), seeds, entries, missing }
    }

    /// `results.json`, `results.md` and `fid-vs-gmacs.png` into `out`.
    pub fn write(&self, out: &Path, font: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        crate::io::write_atomic(&out.join("results.json"), json.as_bytes())?;
        crate::io::write_atomic(&out.join("results.md"), self.markdown().as_bytes())?;
        plot::fid_vs_gmacs(self, &out.join("fid-vs-gmacs.png"), font)
    }

    /// The table: one row per entry, FID (and class accuracy) per guidance scale, then the
    /// runs still missing.
    pub fn markdown(&self) -> String {
        let p = &self.protocol;
        let accuracy = self.entries.iter().all(|e| e.summary.iter().all(|s| s.class_accuracy.is_some()));
        let spread = match self.seeds.len() {
            1 => format!("one seed ({})", self.seeds[0]),
            n => format!("mean ± sample standard deviation over the finished of {n} seeds ({:?})", self.seeds),
        };
        let mut md = format!(
            "Scored by {}: {} samples per guidance scale with each entry's sampler (calls: network calls per \
             image, a guided call counting once), classes {}, sampling seed {}; {spread}. Training time is \
             wall-clock time of training, meter sampling excluded.\n\n",
            self.meter,
            p.num_samples,
            format!("{:?}", p.classes).to_lowercase(),
            p.seed
        );
        let mut head =
            ["entry", "process", "sampler", "params", "GMACs", "training time", "steps"].map(String::from).to_vec();
        for s in &p.cfg_scales {
            head.push(format!("FID, guidance {s}"));
            if accuracy {
                head.push(format!("class accuracy, guidance {s}"));
            }
        }
        md += &format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
        for e in &self.entries {
            let mean = |f: fn(&RunResult) -> f64| e.runs.iter().map(f).sum::<f64>() / e.runs.len() as f64;
            let mut row = vec![
                e.name.clone(),
                e.process.clone(),
                e.sampler.clone(),
                format!("{:.2}M", e.params as f64 / 1e6),
                format!("{:.3}", e.gmacs),
                clock(mean(|r| r.train_seconds)),
                format!("{:.0}", mean(|r| r.steps as f64)),
            ];
            for s in &e.summary {
                row.push(s.fid.show(2));
                if let Some(a) = s.class_accuracy.filter(|_| accuracy) {
                    row.push(a.show(3));
                }
            }
            if e.runs.is_empty() {
                row.truncate(5);
                row.resize(head.len(), "not yet".into());
            }
            md += &format!("| {} |\n", row.join(" | "));
        }
        if !self.missing.is_empty() {
            md += &format!("\nNot finished yet ({}): {}.\n", self.missing.len(), self.missing.join("; "));
        }
        md
    }
}
