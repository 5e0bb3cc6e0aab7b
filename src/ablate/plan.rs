//! An ablation plan (`udit ablate --plan FILE.json`): named model configurations, each with
//! the process it trains with, one shared training recipe with a list of seeds, and the meter
//! protocol that scores every trained model with a sampler of its process. Parsing, and the
//! checks that need neither data nor weights.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cost::Cost;
use crate::model::ModelConfig;
use crate::precision::Precision;
use crate::process::{Process, ProcessSpec};
use crate::progress::plural;
use crate::sample::Method;
use crate::train::{LrSchedule, RecipeOverrides, RunOverrides, TrainConfig};

/// The plan file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Free text (a string or a list of lines): what the plan compares and how its time was
    /// worked out. Not part of what makes two plans the same.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub note: serde_json::Value,
    pub entries: Vec<Entry>,
    pub recipe: PlanRecipe,
    #[serde(default)]
    pub meter: Protocol,
}

/// One model of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The label of the table row and the plotted point; its letters and digits name the
    /// entry's folder.
    pub name: String,
    /// The system this entry is one size of (`DiT`, `SiT`): the plot draws a line per system
    /// through its sizes, as the paper's Figure 1. Default: the entry alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// A configuration object (as in `--config` files), a preset name (`U-DiT-S`,
    /// `DiT-B/2`) or the path of a configuration file.
    pub model: serde_json::Value,
    /// The process it trains and samples with, as recipes write it (`{"process":
    /// "interpolant", "path_type": "Linear"}`); default: the model's own (the interpolant for
    /// SiT and SiT-LLaMA, Gaussian diffusion for DiT and U-DiT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,
}

/// The recipe every entry trains with: `udit train`'s flags as fields (unset ones keep the
/// reference recipe's value), with a list of seeds instead of one.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRecipe {
    /// fashion-mnist, image-folder or latents.
    pub dataset: String,
    pub data_dir: Option<PathBuf>,
    pub image_size: Option<usize>,
    pub codec: Option<String>,
    /// Optimizer steps of every run (with a budget: at most).
    pub steps: Option<u64>,
    /// Wall-clock budget of every run, instead of (or as well as) steps.
    pub budget_minutes: Option<f64>,
    pub global_batch: Option<usize>,
    pub grad_accum: Option<usize>,
    pub lr: Option<f64>,
    pub warmup_steps: Option<u64>,
    pub cooldown_steps: Option<u64>,
    /// constant (default) or cosine.
    pub lr_schedule: Option<LrSchedule>,
    pub grad_clip: Option<f64>,
    pub weight_decay: Option<f64>,
    pub ema_decay: Option<f64>,
    /// f32 (default), bf16 or f16: the compute precision of every run.
    pub precision: Option<Precision>,
    #[serde(default)]
    pub no_hflip: bool,
    /// Every entry trains once per seed.
    #[serde(default = "d_seeds")]
    pub seeds: Vec<u64>,
    pub log_every: Option<u64>,
    pub ckpt_every: Option<u64>,
    pub keep_last: Option<usize>,
    pub sample_every: Option<u64>,
}

fn d_seeds() -> Vec<u64> {
    vec![0]
}

/// How every trained model is scored: `samples` samples of its EMA weights at each guidance
/// scale, drawn like `udit sample --npz` with a sampler of its process, then the offline
/// Fashion-MNIST meter (`features`, the default) or, with `reference`, the ADM evaluator
/// (`udit eval`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Samples per guidance scale (`samples` is its old name).
    #[serde(default = "d_samples", alias = "samples")]
    pub num_samples: usize,
    /// The sampler of every entry (`udit sample --sampler`), or, with `interpolant`, of the
    /// Gaussian-diffusion entries.
    #[serde(default = "d_sampler")]
    pub sampler: String,
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// The sampler and steps of the entries trained as an interpolant, so that both processes
    /// are sampled at the same number of network calls (ddim 50 and heun2 over 26 points both
    /// call the network 50 times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolant: Option<MeterSampler>,
    #[serde(default = "d_cfg_scales")]
    pub cfg_scales: Vec<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub classes: ClassOrder,
    /// Samples per sampling batch (speed and memory only).
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// The meter's classifier (`udit train-classifier`); default: the bundled one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<PathBuf>,
    /// ADM evaluator instead of the meter: the reference batch (`udit eval REFERENCE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<PathBuf>,
    /// FID Inception weights for `reference` (default as `udit eval --inception`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inception: Option<PathBuf>,
}

/// A sampler and its steps, as `udit sample --sampler --steps` take them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSampler {
    pub sampler: String,
    pub steps: usize,
}

fn d_samples() -> usize {
    1000
}
fn d_sampler() -> String {
    "ddim".into()
}
fn d_steps() -> usize {
    50
}
fn d_cfg_scales() -> Vec<f64> {
    vec![1.0, 1.5]
}
fn d_batch() -> usize {
    50
}

impl Default for Protocol {
    /// The protocol of the README's bundled-model table, in DDIM's 50 steps.
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

/// Which class sample i asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassOrder {
    /// The dataset's classes in turn (balanced, as the meter's class accuracy wants).
    #[default]
    Cycled,
    /// A class drawn per sample from the model's classes (ADM's protocol).
    Random,
}

/// An entry with its configuration resolved.
pub struct EntryModel {
    pub name: String,
    /// Its system (its name if the plan gives none).
    pub system: String,
    /// Its folder under the output folder.
    pub folder: String,
    pub config: ModelConfig,
    pub process: ProcessSpec,
    /// The meter's sampler for it, and its network calls per image unguided (None: chosen as
    /// it goes, dopri5).
    pub method: Method,
    pub calls: Option<usize>,
    pub cost: Cost,
}

/// One training run of the plan: an entry with one seed. The plan's runs go seed by seed (the
/// first seed of every entry, then the second), so that a plan stopped early has compared
/// every entry.
pub struct RunSpec {
    pub entry: usize,
    pub seed: u64,
    pub config: TrainConfig,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the plan {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid plan", path.display()))
    }

    /// Checks what needs no data or weights, and resolves every entry's model, process,
    /// meter sampler and recipe: the entries and the runs (seed by seed, entry by entry).
    pub fn resolve(&self) -> Result<(Vec<EntryModel>, Vec<RunSpec>)> {
        let r = &self.recipe;
        if self.entries.is_empty() {
            bail!("the plan has no entries");
        }
        if r.seeds.is_empty() {
            bail!("the recipe has no seeds");
        }
        if let Some(s) = r.seeds.iter().enumerate().find(|(i, s)| r.seeds[..*i].contains(s)) {
            bail!("seed {} is listed twice", s.1);
        }
        match (r.steps, r.budget_minutes) {
            (None, None) => bail!("the recipe needs `steps` or `budget_minutes`"),
            (Some(0), _) => bail!("the recipe's `steps` must be at least 1"),
            (_, Some(b)) if b.is_nan() || b <= 0.0 => bail!("the recipe's `budget_minutes` must be positive, got {b}"),
            _ => {}
        }
        self.meter.check()?;
        let mut entries: Vec<EntryModel> = Vec::new();
        for e in &self.entries {
            let folder = folder_name(&e.name)?;
            if let Some(other) = entries.iter().find(|o| o.folder == folder) {
                bail!("entries {:?} and {:?} have the same name (folder {folder:?})", other.name, e.name);
            }
            let context = || format!("entry {:?}", e.name);
            let config = model_of(&e.model).with_context(context)?;
            let process = e.process.clone().unwrap_or_else(|| ProcessSpec::default_for(&config));
            // The meter samples every model with its own process: the sampler must be one of it.
            let p = process.process().with_context(context)?;
            let method = self.meter.method(&p).with_context(|| format!("entry {:?}: the meter's sampler", e.name))?;
            let calls = method.call_times(&p)?.map(|t| t.len());
            if self.meter.cfg_scales.iter().any(|&s| s > 1.0) && !config.has_null_class() {
                bail!("entry {:?}: guidance above 1 needs a null class (class_dropout_prob > 0)", e.name);
            }
            let cost = Cost::of(&config);
            let system = e.system.clone().unwrap_or_else(|| e.name.clone());
            entries.push(EntryModel { name: e.name.clone(), system, folder, config, process, method, calls, cost });
        }
        let mut runs = Vec::new();
        for &seed in &r.seeds {
            for (i, e) in entries.iter().enumerate() {
                let mut config = r.config(e.config.clone(), seed).with_context(|| format!("entry {:?}", e.name))?;
                config.process = Some(e.process.clone());
                runs.push(RunSpec { entry: i, seed, config });
            }
        }
        Ok((entries, runs))
    }

    /// Checks that the files the plan reads exist, without reading them (what `--check` can
    /// say without the data's cost): the data folder of `runs`, and the meter's classifier or
    /// its reference batch and Inception weights.
    pub fn check_files(&self, runs: &[RunSpec]) -> Result<()> {
        let data = runs.first().context("the plan has no runs")?.config.data.dir();
        if !data.is_dir() {
            bail!("the data folder {} does not exist (the recipe's data_dir)", data.display());
        }
        let m = &self.meter;
        let files = match &m.reference {
            None => vec![("classifier", m.features.clone().unwrap_or_else(|| crate::BUNDLED_METER.into()))],
            Some(r) => vec![
                ("reference batch", r.clone()),
                ("FID Inception", crate::eval::inception::weights_path(m.inception.as_deref())),
            ],
        };
        for (what, path) in files {
            if !path.is_file() {
                bail!("the meter's {what} {} does not exist", path.display());
            }
        }
        Ok(())
    }

    /// A table of the entries (parameters, GMACs, process, meter sampler) and a line on the
    /// runs and the meter.
    pub fn summary(&self, entries: &[EntryModel]) -> String {
        let width = entries.iter().map(|e| e.name.chars().count()).max().unwrap_or(0).max(5);
        let mut out = format!("{:width$}  {:>8}  {:>8}  {:11}  meter sampler\n", "entry", "params", "GMACs", "process");
        for e in entries {
            out += &format!(
                "{:width$}  {:>7.2}M  {:>8.3}  {:11}  {}\n",
                e.name,
                e.cost.params_merged as f64 / 1e6,
                e.cost.macs as f64 / 1e9,
                e.process.kind(),
                e.sampler()
            );
        }
        let (r, m) = (&self.recipe, &self.meter);
        let length = match (r.steps, r.budget_minutes) {
            (Some(steps), None) => format!("{steps} steps"),
            (None, Some(b)) => format!("{b} minutes"),
            (Some(steps), Some(b)) => format!("{b} minutes (at most {steps} steps)"),
            (None, None) => "?".into(),
        };
        let scales: Vec<String> = m.cfg_scales.iter().map(|s| s.to_string()).collect();
        out += &format!(
            "{} x {} = {} of {length} on {}; meter: {} samples at guidance {}",
            plural(entries.len(), "model"),
            plural(r.seeds.len(), "seed"),
            plural(entries.len() * r.seeds.len(), "run"),
            r.dataset,
            m.num_samples,
            scales.join(", "),
        );
        out
    }

    /// The plan as `plan.json` keeps it: every model written out, so that a changed
    /// configuration file makes another plan.
    pub fn resolved(&self, entries: &[EntryModel]) -> Result<Self> {
        let mut plan = self.clone();
        for (e, m) in plan.entries.iter_mut().zip(entries) {
            e.model = serde_json::to_value(&m.config)?;
        }
        Ok(plan)
    }

    /// Whether `self` and `other` describe the same comparison (notes aside).
    pub fn same_as(&self, other: &Plan) -> Result<bool> {
        let strip = |p: &Plan| -> Result<serde_json::Value> {
            let mut v = serde_json::to_value(p)?;
            v.as_object_mut().expect("a plan is an object").remove("note");
            Ok(v)
        };
        Ok(strip(self)? == strip(other)?)
    }
}

impl PlanRecipe {
    /// The training recipe of `model` with `seed`: the reference recipe with the plan's
    /// fields over it, as `udit train` builds it from the same flags.
    pub fn config(&self, model: ModelConfig, seed: u64) -> Result<TrainConfig> {
        let recipe = RecipeOverrides {
            model: Default::default(),
            dataset: Some(self.dataset.clone()),
            data_dir: self.data_dir.clone(),
            image_size: self.image_size.unwrap_or(crate::data::image_folder::ADM_IMAGE_SIZE),
            codec: self.codec.clone(),
            global_batch: self.global_batch,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            cooldown_steps: self.cooldown_steps,
            lr_schedule: self.lr_schedule,
            grad_clip: self.grad_clip,
            weight_decay: self.weight_decay,
            ema_decay: self.ema_decay,
            no_hflip: self.no_hflip,
            seed: Some(seed),
            precision: self.precision,
            process: None,
            path_type: None,
            prediction: None,
            loss_weight: None,
        };
        let mut cfg = recipe.recipe_of(model)?;
        let run = RunOverrides {
            steps: self.steps,
            budget_minutes: self.budget_minutes,
            grad_accum: self.grad_accum,
            log_every: self.log_every,
            ckpt_every: self.ckpt_every,
            keep_last: self.keep_last,
            sample_every: self.sample_every,
        };
        run.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }
}

impl EntryModel {
    /// "ddim 50 steps, 50 calls": the meter's sampler for this entry.
    pub fn sampler(&self) -> String {
        let calls = self.calls.map_or("calls chosen as it goes".into(), |c| plural(c, "call"));
        format!("{} {} steps, {calls}", self.method.name(), self.method.steps())
    }
}

impl Protocol {
    /// The sampler of a model of `process`: `interpolant`'s for an interpolant if given, else
    /// `sampler` and `steps` (refused if it is not one of the process's samplers).
    pub fn method(&self, process: &Process) -> Result<Method> {
        let (name, steps) = match (process, &self.interpolant) {
            (Process::Interpolant(_), Some(s)) => (&s.sampler, s.steps),
            _ => (&self.sampler, self.steps),
        };
        Method::named(process, Some(name), Some(steps), &Default::default())
    }

    fn check(&self) -> Result<()> {
        if self.num_samples == 0
            || self.steps == 0
            || self.batch == 0
            || self.interpolant.as_ref().is_some_and(|s| s.steps == 0)
        {
            bail!("the meter's samples, steps and batch must be at least 1");
        }
        if self.cfg_scales.is_empty() {
            bail!("the meter has no guidance scales (cfg_scales)");
        }
        if let Some(s) = self.cfg_scales.iter().find(|&&s| s.is_nan() || s < 1.0) {
            bail!("the meter's guidance scales must be at least 1 (1 = no guidance), got {s}");
        }
        if let Some(s) = self.cfg_scales.iter().enumerate().find(|(i, s)| self.cfg_scales[..*i].contains(s)) {
            bail!("guidance scale {} is listed twice", s.1);
        }
        if self.reference.is_none() && self.inception.is_some() {
            bail!("the meter has `inception` weights but no `reference` batch to score against");
        }
        Ok(())
    }
}

/// An entry's model: a configuration object, a preset name or a configuration file.
fn model_of(value: &serde_json::Value) -> Result<ModelConfig> {
    match value {
        serde_json::Value::Object(_) => ModelConfig::from_json(&value.to_string()),
        serde_json::Value::String(s) => match ModelConfig::preset(s) {
            Ok(cfg) => Ok(cfg),
            Err(_) => ModelConfig::from_file(Path::new(s))
                .with_context(|| format!("{s:?} is neither a preset nor a configuration file")),
        },
        _ => bail!("`model` must be a configuration object, a preset name or a file path"),
    }
}

/// The folder of an entry: its letters and digits in lower case, other runs of characters as
/// one `-` ("DiT-UNet (slim)" -> "dit-unet-slim").
fn folder_name(name: &str) -> Result<String> {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        bail!("entry name {name:?} has no letters or digits to name its folder");
    }
    Ok(out)
}
