//! `udit sweep`: sample quality against network evaluations over a grid of samplers, step
//! counts and guidance settings. Each combination samples its images into a folder of its own
//! (batch by batch, as `udit sample --npz`), is scored once and keeps its result there, so an
//! interrupted sweep redoes only what is missing; the table, JSON and plot (`report.rs`) are
//! written from the results.

pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;

use crate::diffusion::samplers::Sampler;
use crate::diffusion::schedule::Schedule;
use crate::eval::classifier;
use crate::eval::inception::InceptionV3;
use crate::eval::{Reference, activations_shown, score};
use crate::guidance::{Guidance, GuidanceInterval};
use crate::io::Images;
use crate::io::images::ensure_writable_dir;
use crate::io::npz::{NpzRun, read_npz};
use crate::process::Process;
use crate::sample::{Generator, Method, SamplerOptions, Settings, run_npz};

/// A sampler and its schedule, as `--samplers` names them: `NAME` or `NAME:SCHEDULE`; a
/// sampler of the model's process ([`Method::named`] checks it against the model).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerSpec {
    pub name: String,
    /// None: the sampler's own.
    pub schedule: Option<Schedule>,
}

/// The samplers a sweep compares when none are named: the ODE solvers of diffusion models,
/// or the interpolant's ODE solvers and SiT's SDE.
pub fn default_samplers(process: &Process) -> &'static str {
    match process {
        Process::Diffusion(_) => "ddim,dpm++,unipc,heun",
        Process::Interpolant(_) => "euler,heun2,sde",
    }
}

impl SamplerSpec {
    pub fn parse(text: &str) -> Result<Self> {
        let (name, schedule) = match text.trim().split_once(':') {
            Some((name, schedule)) => (name, Some(schedule.parse()?)),
            None => (text.trim(), None),
        };
        Ok(Self { name: name.to_string(), schedule })
    }

    /// The schedule it runs on: the diffusion samplers' (ancestral sampling: the reference's
    /// respaced process), or the interpolant samplers' evenly spaced time points.
    pub fn schedule_name(&self) -> String {
        match self.name.parse::<Sampler>() {
            Ok(sampler) => {
                self.schedule.or(sampler.default_schedule()).map_or("respaced".to_string(), |s| s.to_string())
            }
            Err(_) => "linspace".to_string(),
        }
    }

    /// The sampler with `steps` on `process`.
    pub fn method(&self, process: &Process, steps: usize) -> Result<Method> {
        let options = SamplerOptions { schedule: self.schedule, ..Default::default() };
        Method::named(process, Some(&self.name), Some(steps), &options)
    }
}

/// A comma-separated list of `what`, none of them empty.
pub fn parse_list<T>(text: &str, what: &str, parse: impl Fn(&str) -> Result<T>) -> Result<Vec<T>> {
    if text.trim().is_empty() {
        bail!("the list of {what} is empty");
    }
    text.split(',').map(|item| parse(item.trim()).with_context(|| format!("in the list of {what}"))).collect()
}

/// One point of the sweep.
#[derive(Clone, Debug)]
pub struct Combination {
    pub spec: SamplerSpec,
    pub steps: usize,
    pub guidance: Guidance,
}

impl Combination {
    /// The guidance interval, or None where nothing is guided.
    pub fn interval(&self) -> Option<GuidanceInterval> {
        (self.guidance.scale > 1.0).then_some(self.guidance.interval)
    }

    /// Its folder: sampler, schedule, steps and guidance, e.g. `unipc-logsnr-25-cfg1.5-0.34-1.02`.
    pub fn dir_name(&self) -> String {
        let guidance = match self.interval() {
            None => "cfg1".to_string(),
            Some(GuidanceInterval::Everywhere) => format!("cfg{}-everywhere", self.guidance.scale),
            Some(GuidanceInterval::Between(lo, hi)) => format!("cfg{}-{lo}-{hi}", self.guidance.scale),
        };
        format!("{}-{}-{}-{guidance}", self.spec.name, self.spec.schedule_name(), self.steps)
    }

    /// The line of the plot it is a point of: everything but the steps.
    pub fn series(&self) -> String {
        let guidance = match self.interval() {
            None => "no guidance".to_string(),
            Some(GuidanceInterval::Everywhere) => format!("guidance {}", self.guidance.scale),
            Some(interval) => format!("guidance {} in {}", self.guidance.scale, interval.describe()),
        };
        format!("{} {}, {guidance}", self.spec.name, self.spec.schedule_name())
    }
}

/// Every sampler x guidance setting x step count, in that order; guidance 1 comes once,
/// without an interval, since nothing is guided.
pub fn combinations(
    specs: &[SamplerSpec],
    steps: &[usize],
    scales: &[f64],
    intervals: &[GuidanceInterval],
    channels: Option<usize>,
) -> Vec<Combination> {
    let mut guidances: Vec<Guidance> = Vec::new();
    for &scale in scales {
        let tried: &[GuidanceInterval] = if scale > 1.0 { intervals } else { &[GuidanceInterval::Everywhere] };
        for &interval in tried {
            let g = Guidance { scale, interval, channels };
            if !guidances.contains(&g) {
                guidances.push(g);
            }
        }
    }
    let mut out = Vec::new();
    for spec in specs {
        for guidance in &guidances {
            for &steps in steps {
                out.push(Combination { spec: spec.clone(), steps, guidance: guidance.clone() });
            }
        }
    }
    out
}

/// How samples are scored.
pub enum Meter {
    /// The offline Fashion-MNIST meter: FID in its classifier's features and class accuracy.
    Classifier(Box<classifier::Meter>),
    /// The FID Inception against a reference batch, as `udit eval`.
    Inception { net: Box<InceptionV3>, reference: Reference, batch: usize },
}

/// Which meter a sweep uses, known before it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeterKind {
    Classifier,
    Inception,
}

impl Meter {
    pub fn kind(&self) -> MeterKind {
        match self {
            Self::Classifier(_) => MeterKind::Classifier,
            Self::Inception { .. } => MeterKind::Inception,
        }
    }

    /// FID, and the class accuracy where the meter tells classes.
    pub fn score(&self, images: &Images, device: &Device) -> Result<(f64, Option<f64>)> {
        match self {
            Self::Classifier(m) => m.score(images, device).map(|s| (s.fid, Some(s.class_accuracy))),
            Self::Inception { net, reference, batch } => {
                let acts = activations_shown(net, images, *batch, device, "the samples")?;
                Ok((score(&acts, reference)?.fid, None))
            }
        }
    }
}

/// What every combination of a sweep folder shares; a rerun in the folder must match it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SweepSettings {
    /// The weights (a path or hf:// name, or "bundled").
    pub model: String,
    pub num_samples: usize,
    pub batch: usize,
    pub seed: u64,
    /// `--class` as given.
    pub classes: String,
    /// "classifier FILE against Fashion-MNIST test" or "inception against REFERENCE".
    pub meter: String,
}

/// The result of one combination.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub sampler: String,
    pub schedule: String,
    pub steps: usize,
    /// Denoiser calls per image.
    pub calls: usize,
    /// Of them, guided (doubled batch).
    pub guided_calls: usize,
    /// Network evaluations per image: a guided call counts 2.
    pub nfe: usize,
    pub cfg_scale: f64,
    /// `none` (guidance at every step) or `LO,HI`; absent without guidance.
    pub interval: Option<String>,
    pub fid: f64,
    /// Absent for meters that do not tell classes.
    pub class_accuracy: Option<f64>,
    /// Wall-clock sampling time per image (absent when the samples were made by an earlier run).
    pub seconds_per_image: Option<f64>,
    /// Its folder in the sweep.
    pub dir: String,
    /// The plot line it belongs to.
    pub series: String,
}

pub struct Sweep<'a> {
    /// The model, codec, classes and seed; sampler, steps and guidance come from each
    /// combination.
    pub base: Generator<'a>,
    pub combinations: Vec<Combination>,
    pub settings: SweepSettings,
    pub out: PathBuf,
}

/// Every combination finished in `dir`, ordered by sampler (as `--samplers` lists them in
/// its help), schedule, guidance and steps.
pub fn finished(dir: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let result = entry?.path().join(RESULT_FILE);
        if result.exists() {
            rows.push(read_row(&result)?);
        }
    }
    let order = ["ancestral", "ddim", "dpm++", "unipc", "heun", "sde", "sde-heun", "euler", "heun2", "rk4"];
    let rank = |r: &Row| order.iter().position(|s| *s == r.sampler);
    rows.sort_by(|a, b| {
        (rank(a), &a.schedule)
            .cmp(&(rank(b), &b.schedule))
            .then(a.cfg_scale.total_cmp(&b.cfg_scale))
            .then(a.interval.cmp(&b.interval))
            .then(a.steps.cmp(&b.steps))
    });
    Ok(rows)
}

fn read_row(path: &Path) -> Result<Row> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a sweep result: remove it to redo", path.display()))
}

/// The file that records a folder's [`SweepSettings`].
const SETTINGS_FILE: &str = "sweep-settings.json";
/// A finished combination's [`Row`], in its folder.
const RESULT_FILE: &str = "result.json";

impl Sweep<'_> {
    fn generator(&self, c: &Combination) -> Result<Generator<'_>> {
        let settings = Settings {
            method: c.spec.method(&self.base.process, c.steps)?,
            guidance: c.guidance.clone(),
            ..self.base.settings.clone()
        };
        Ok(Generator { settings, ..self.base.clone() })
    }

    /// Checks every combination, the meter against the images and the folder against earlier
    /// runs, before any work.
    pub fn validate(&self, meter: MeterKind) -> Result<()> {
        if self.combinations.is_empty() {
            bail!("the sweep has no combinations");
        }
        if self.settings.num_samples < 2 || self.settings.batch == 0 {
            bail!("a sweep scores FID, which needs --num-samples of at least 2, and --batch of at least 1");
        }
        for c in &self.combinations {
            let g = self.generator(c).with_context(|| c.series())?;
            g.validate().with_context(|| c.series())?;
            g.evaluations()?.with_context(|| {
                format!("{}: a sweep compares samplers whose calls are known before the run", c.series())
            })?;
        }
        let (channels, side) = self.base.image_shape();
        if meter == MeterKind::Classifier && (side, channels, self.base.config.num_classes()) != (32, 1, 10) {
            bail!(
                "the offline meter scores 10-class 32x32 grayscale images (Fashion-MNIST); this model makes \
                 {side}x{side}x{channels} of {} classes: give --reference REF.npz to score with the FID Inception",
                self.base.config.num_classes()
            );
        }
        ensure_writable_dir(&self.out)?;
        let path = self.out.join(SETTINGS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let earlier: SweepSettings =
                serde_json::from_str(&text).with_context(|| format!("{} is not a sweep's settings", path.display()))?;
            if earlier != self.settings {
                bail!(
                    "{} holds a sweep with other settings ({}): use another --out",
                    self.out.display(),
                    serde_json::to_string(&earlier)?
                );
            }
        }
        Ok(())
    }

    /// Runs what is missing of every combination, scored by `meter`, then writes `sweep.json`,
    /// `sweep.md` and `fid-vs-nfe.png` of every finished combination in the folder (earlier
    /// runs' too, so sweeps with other lists add to one table); returns this run's rows.
    pub fn run(&self, meter: &Meter, font: &Path) -> Result<Vec<Row>> {
        self.validate(meter.kind())?;
        crate::io::write_atomic(
            &self.out.join(SETTINGS_FILE),
            serde_json::to_string_pretty(&self.settings)?.as_bytes(),
        )?;
        let mut rows = Vec::new();
        let total = self.combinations.len();
        for (i, c) in self.combinations.iter().enumerate() {
            let dir = self.out.join(c.dir_name());
            let g = self.generator(c)?;
            let e = g.evaluations()?.expect("validated: the calls are known");
            let what = format!("[{}/{total}] {}, {} steps", i + 1, c.series(), c.steps);
            let result = dir.join(RESULT_FILE);
            if result.exists() {
                let row = read_row(&result)?;
                eprintln!("{what}: done before, {}", report::summary(&row));
                rows.push(row);
                continue;
            }
            eprintln!("{what}: {} calls, NFE {} per image", e.calls, e.nfe());
            let run = NpzRun {
                npz: dir.join("samples.npz"),
                num_samples: self.settings.num_samples,
                batch: self.settings.batch,
            };
            let mut seconds_per_image = None;
            if !run.npz.exists() {
                let todo: usize = run.pending(0, 1).iter().map(|&b| run.range(b).len()).sum();
                let start = Instant::now();
                if !run_npz(&g, &run, 0, 1)? {
                    bail!("{}: batches are missing after sampling", run.npz.display());
                }
                seconds_per_image = (todo > 0).then(|| start.elapsed().as_secs_f64() / todo as f64);
            }
            eprintln!("{what}: scoring");
            let (fid, class_accuracy) = meter.score(&read_npz(&run.npz)?, &self.base.device)?;
            let row = Row {
                sampler: c.spec.name.clone(),
                schedule: c.spec.schedule_name(),
                steps: c.steps,
                calls: e.calls,
                guided_calls: e.guided,
                nfe: e.nfe(),
                cfg_scale: c.guidance.scale,
                interval: c.interval().map(|i| i.to_string()),
                fid,
                class_accuracy,
                seconds_per_image,
                dir: c.dir_name(),
                series: c.series(),
            };
            crate::io::write_atomic(&result, serde_json::to_string_pretty(&row)?.as_bytes())?;
            eprintln!("{what}: {}", report::summary(&row));
            rows.push(row);
        }
        report::write(&self.out, &self.settings, &finished(&self.out)?, font)?;
        Ok(rows)
    }
}
