//! The training recipe: what a run trains, on what data, with which optimizer settings; and
//! the rules by which command-line options override a recipe.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::optim::AdamW;
use crate::data::{self, Dataset};
use crate::model::{ModelChoice, ModelConfig};
use crate::precision::Precision;
use crate::process::ProcessSpec;

/// Where the training samples come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DataSpec {
    /// Fashion-MNIST IDX files (pixels, 1x32x32, 10 classes).
    FashionMnist { dir: PathBuf },
    /// An ImageNet-layout folder of images (pixels, 3 x image_size^2, ADM center crop).
    ImageFolder { dir: PathBuf, image_size: usize },
    /// Precomputed latents (`udit extract-features` or the reference layout).
    Latents { dir: PathBuf },
}

/// The learning rate after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Constant (the reference), with `cooldown_steps` of linear decay at the end.
    #[default]
    Constant,
    /// A half cosine from the lr down to 0 after the last step (Loshchilov and Hutter's
    /// SGDR without restarts).
    Cosine,
}

impl DataSpec {
    /// The folder the data is read from.
    pub fn dir(&self) -> &std::path::Path {
        match self {
            Self::FashionMnist { dir } | Self::ImageFolder { dir, .. } | Self::Latents { dir } => dir,
        }
    }

    pub fn open(&self) -> Result<Arc<dyn Dataset>> {
        Ok(match self {
            Self::FashionMnist { dir } => {
                Arc::new(data::fashion_mnist::FashionMnist::load(dir, data::fashion_mnist::Split::Train)?)
            }
            Self::ImageFolder { dir, image_size } => Arc::new(data::image_folder::ImageFolder::open(dir, *image_size)?),
            Self::Latents { dir } => Arc::new(data::latents::Latents::open(dir)?),
        })
    }
}

/// Everything that decides a training run. Stored in every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataSpec,
    /// Pixels <-> model space: `unshuffle2`, `none` or a VAE directory (`hf://` allowed).
    pub codec: String,
    /// Optimizer steps in all (with a budget: at most).
    pub steps: u64,
    /// Wall-clock budget in seconds: the run ends at the first step that reaches it, which
    /// then becomes its last (None = train all `steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_s: Option<f64>,
    /// Samples per optimizer step, over all devices and accumulation rounds (reference 256).
    pub global_batch: usize,
    /// Forward/backward rounds per step (the global batch is split evenly).
    pub grad_accum: usize,
    pub lr: f64,
    /// Steps of linear lr warm-up from 0 (0 = constant lr, the reference).
    pub warmup_steps: u64,
    /// Steps of linear lr decay to 0 that end the run (0 = constant lr to the end, the
    /// reference): a short run's last weights then settle instead of jittering at full lr.
    #[serde(default)]
    pub cooldown_steps: u64,
    /// The shape of the lr after the warm-up.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Max global L2 norm of the gradients (None = no clipping, the reference).
    pub grad_clip: Option<f64>,
    pub adamw: AdamW,
    pub ema_decay: f64,
    /// Random horizontal flips (pixel datasets and latents alike): the reference's ImageNet
    /// augmentation, off by default for Fashion-MNIST, whose garments have one orientation.
    pub hflip: bool,
    pub seed: u64,
    pub log_every: u64,
    pub ckpt_every: u64,
    /// Checkpoints kept (the newest); 0 keeps all.
    pub keep_last: usize,
    /// Steps between sample grids (0 = only at the end).
    pub sample_every: u64,
    /// Guidance scale of the sample grids.
    pub sample_cfg_scale: f64,
    /// Compute precision of the matmul-like ops (weights, moments and EMA stay f32).
    #[serde(default)]
    pub precision: Precision,
    /// The process trained (None: the model's own, [`ProcessSpec::default_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,
}

impl TrainConfig {
    /// The reference recipe for `model` on `data`.
    pub fn recipe(model: ModelConfig, data: DataSpec, codec: String) -> Self {
        let hflip = !matches!(data, DataSpec::FashionMnist { .. });
        Self {
            model,
            data,
            codec,
            steps: 400_000,
            budget_s: None,
            global_batch: 256,
            grad_accum: 1,
            lr: 1e-4,
            warmup_steps: 0,
            cooldown_steps: 0,
            lr_schedule: LrSchedule::Constant,
            grad_clip: None,
            adamw: AdamW::default(),
            ema_decay: 0.9999,
            hflip,
            seed: 0,
            log_every: 100,
            ckpt_every: 50_000,
            keep_last: 0,
            sample_every: 0,
            sample_cfg_scale: crate::sample::PAPER_CFG_SCALE,
            precision: Precision::F32,
            process: None,
        }
    }

    /// The process this run trains.
    pub fn process(&self) -> ProcessSpec {
        self.process.clone().unwrap_or_else(|| ProcessSpec::default_for(&self.model))
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.process().process()?;
        if self.steps == 0 {
            bail!("a run needs at least 1 training step");
        }
        if self.budget_s.is_some_and(|b| b.is_nan() || b <= 0.0) {
            bail!("a wall-clock budget must be positive");
        }
        if self.global_batch == 0 || self.grad_accum == 0 || self.global_batch % self.grad_accum != 0 {
            bail!(
                "the global batch ({}) must be a positive multiple of the accumulation rounds ({})",
                self.global_batch,
                self.grad_accum
            );
        }
        if !(self.lr > 0.0) || !(0.0..1.0).contains(&self.ema_decay) {
            bail!("need lr > 0 and 0 <= ema_decay < 1");
        }
        let a = &self.adamw;
        if !(0.0..1.0).contains(&a.beta1) || !(0.0..1.0).contains(&a.beta2) || !(a.eps > 0.0) {
            bail!("AdamW needs betas in [0, 1) and eps > 0");
        }
        if self.grad_clip.is_some_and(|c| !(c > 0.0)) {
            bail!("the gradient clipping norm must be positive");
        }
        if self.lr_schedule == LrSchedule::Cosine && self.cooldown_steps > 0 {
            bail!("the cosine schedule decays to 0 by itself: it takes no cool-down steps");
        }
        if self.warmup_steps + self.cooldown_steps > self.steps {
            bail!(
                "the warm-up ({}) and cool-down ({}) steps must fit in the run's {} steps",
                self.warmup_steps,
                self.cooldown_steps,
                self.steps
            );
        }
        if self.log_every == 0 || self.ckpt_every == 0 {
            bail!("the log and checkpoint intervals must be positive");
        }
        Ok(())
    }

    /// Learning rate of step `step` (1-based): linear warm-up from 0, then constant with a
    /// linear cool-down that reaches 0 after the last step, or a half cosine that does.
    pub fn lr_at(&self, step: u64) -> f64 {
        let cooldown_start = self.steps.saturating_sub(self.cooldown_steps);
        if step < self.warmup_steps {
            self.lr * step as f64 / self.warmup_steps as f64
        } else if self.lr_schedule == LrSchedule::Cosine {
            let done = (step - self.warmup_steps) as f64 / (self.steps - self.warmup_steps + 1) as f64;
            self.lr * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
        } else if step > cooldown_start {
            self.lr * (self.steps + 1 - step) as f64 / (self.cooldown_steps + 1) as f64
        } else {
            self.lr
        }
    }
}

impl DataSpec {
    /// A dataset by name: `fashion-mnist` (Debian's files unless `dir` says otherwise),
    /// `image-folder` or `latents` (both need `dir`).
    pub fn named(name: &str, dir: Option<PathBuf>, image_size: usize) -> Result<Self> {
        let need = |d: Option<PathBuf>| d.with_context(|| format!("the {name} dataset needs a directory (--data-dir)"));
        Ok(match name {
            "fashion-mnist" => {
                Self::FashionMnist { dir: dir.unwrap_or_else(|| data::fashion_mnist::DEFAULT_DIR.into()) }
            }
            "image-folder" => Self::ImageFolder { dir: need(dir)?, image_size },
            "latents" => Self::Latents { dir: need(dir)? },
            other => bail!("unknown dataset {other:?}: fashion-mnist, image-folder or latents"),
        })
    }
}

impl TrainConfig {
    /// A recipe file (as a run writes to `recipe.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a valid recipe", path.display()))
    }
}

/// Recipe fields given on the command line; unset fields keep the recipe's value. They make
/// a new run and cannot change a resumed one.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RecipeOverrides {
    #[command(flatten)]
    pub model: ModelChoice,
    /// fashion-mnist, image-folder (ImageNet layout) or latents.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Directory of the dataset (default for fashion-mnist: Debian's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Crop size of image-folder data.
    #[arg(long, default_value_t = crate::data::image_folder::ADM_IMAGE_SIZE)]
    pub image_size: usize,
    /// Pixels <-> model space: a VAE (directory or hf://), `unshuffle2` or `none`. Default:
    /// hf://stabilityai/sd-vae-ft-ema for 4-channel models, else none.
    #[arg(long)]
    pub codec: Option<String>,
    /// Samples per optimizer step over all devices and accumulation rounds [recipe default: 256].
    #[arg(long)]
    pub global_batch: Option<usize>,
    /// AdamW learning rate after the warm-up [recipe default: 1e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Steps of linear learning-rate warm-up from 0 [recipe default: 0].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Steps of linear learning-rate decay to 0 at the end of the run [recipe default: 0].
    #[arg(long, value_name = "STEPS")]
    pub cooldown_steps: Option<u64>,
    /// The learning rate after the warm-up: constant (with --cooldown-steps) or cosine (a
    /// half cosine down to 0 at the end) [recipe default: constant].
    #[arg(long, hide_possible_values = true)]
    pub lr_schedule: Option<LrSchedule>,
    /// Clip the gradients' global L2 norm to this [recipe default: no clipping].
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// AdamW decoupled weight decay [recipe default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Decay of the EMA of the weights, updated every step [recipe default: 0.9999].
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// No random horizontal flips (Fashion-MNIST has none by default).
    #[arg(long)]
    pub no_hflip: bool,
    /// Seed of every random draw of the run (sample order, flips, t, noise, label dropout)
    /// [recipe default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute precision of the matmul-like ops: f32, bf16 (linears, convolutions and
    /// attention on bfloat16 inputs, as PyTorch's autocast) or f16 (the same, with dynamic
    /// loss scaling); weights, AdamW moments and EMA stay f32 [recipe default: f32].
    #[arg(long)]
    pub precision: Option<Precision>,
    /// The process: diffusion (DiT's Gaussian diffusion) or interpolant (SiT's) [recipe
    /// default: interpolant for SiT models, diffusion for U-DiT and DiT].
    #[arg(long, value_name = "PROCESS")]
    pub process: Option<String>,
    /// The interpolant's path: Linear, GVP or VP (SiT's --path-type) [recipe default: Linear].
    #[arg(long, value_name = "PATH")]
    pub path_type: Option<String>,
    /// What the interpolant network predicts: velocity, score or noise [recipe default: velocity].
    #[arg(long, value_name = "WHAT")]
    pub prediction: Option<String>,
    /// Weighting of score and noise losses: none, velocity or likelihood [recipe default: none].
    #[arg(long, value_name = "WEIGHT")]
    pub loss_weight: Option<String>,
}

impl RecipeOverrides {
    /// Whether any recipe field is given.
    pub fn any(&self) -> bool {
        self.model.is_given()
            || self.dataset.is_some()
            || self.codec.is_some()
            || self.global_batch.is_some()
            || self.lr.is_some()
            || self.warmup_steps.is_some()
            || self.cooldown_steps.is_some()
            || self.lr_schedule.is_some()
            || self.grad_clip.is_some()
            || self.weight_decay.is_some()
            || self.ema_decay.is_some()
            || self.no_hflip
            || self.seed.is_some()
            || self.precision.is_some()
            || self.process.is_some()
            || self.path_type.is_some()
            || self.prediction.is_some()
            || self.loss_weight.is_some()
    }

    /// The recipe of a new run: `base` (a recipe file) or else the reference recipe of the
    /// named model and dataset, with the given fields over it.
    pub fn recipe(&self, base: Option<TrainConfig>) -> Result<TrainConfig> {
        let cfg = match base {
            Some(mut cfg) => {
                if self.model.is_given() {
                    cfg.model = self.model.resolve(None)?;
                }
                if let Some(d) = &self.dataset {
                    cfg.data = self.data(d)?;
                }
                if let Some(c) = &self.codec {
                    cfg.codec = c.clone();
                }
                cfg
            }
            None => return self.recipe_of(self.model.resolve(None)?),
        };
        self.over(cfg)
    }

    /// The reference recipe of `model` on the named dataset, with the given fields over it.
    pub fn recipe_of(&self, model: ModelConfig) -> Result<TrainConfig> {
        let name = self.dataset.as_deref().context("say what to train on: fashion-mnist, image-folder or latents")?;
        let codec = crate::codec::codec_spec(self.codec.as_deref(), None, model.in_channels());
        self.over(TrainConfig::recipe(model, self.data(name)?, codec))
    }

    fn data(&self, name: &str) -> Result<DataSpec> {
        DataSpec::named(name, self.data_dir.clone(), self.image_size)
    }

    /// `cfg` with the given process, optimizer and seed fields over it.
    fn over(&self, mut cfg: TrainConfig) -> Result<TrainConfig> {
        let (p, v, w) = (self.path_type.as_deref(), self.prediction.as_deref(), self.loss_weight.as_deref());
        if self.process.is_some() || p.is_some() || v.is_some() || w.is_some() {
            cfg.process = Some(cfg.process().overridden(self.process.as_deref(), p, v, w)?);
        }
        set(&mut cfg.global_batch, self.global_batch);
        set(&mut cfg.lr, self.lr);
        set(&mut cfg.warmup_steps, self.warmup_steps);
        set(&mut cfg.cooldown_steps, self.cooldown_steps);
        set(&mut cfg.lr_schedule, self.lr_schedule);
        set(&mut cfg.adamw.weight_decay, self.weight_decay);
        set(&mut cfg.ema_decay, self.ema_decay);
        set(&mut cfg.seed, self.seed);
        set(&mut cfg.precision, self.precision);
        cfg.grad_clip = self.grad_clip.or(cfg.grad_clip);
        cfg.hflip &= !self.no_hflip;
        Ok(cfg)
    }
}

/// Fields of how a run proceeds, which a resumed run may change too.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RunOverrides {
    /// Optimizer steps to train to (at least 1; with --budget-minutes, at most)
    /// [recipe default: 400000].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Wall-clock budget: stop (checkpoint, sample grid, export) at the first step that has
    /// trained this long, counted over resumes [recipe default: none, train all steps].
    #[arg(long, value_name = "MINUTES")]
    pub budget_minutes: Option<f64>,
    /// Split each step into this many forward/backward rounds (same result, less memory)
    /// [recipe default: 1].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Steps between lines of log.jsonl (averages over the window) [recipe default: 100].
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Steps between checkpoints (and one at the end) [recipe default: 50000].
    #[arg(long)]
    pub ckpt_every: Option<u64>,
    /// Keep only the newest N checkpoints (0 = all) [recipe default: 0].
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Write an EMA sample grid every N steps (0 = only at the end) [recipe default: 0].
    #[arg(long)]
    pub sample_every: Option<u64>,
}

impl RunOverrides {
    pub fn apply(&self, cfg: &mut TrainConfig) {
        set(&mut cfg.steps, self.steps);
        cfg.budget_s = self.budget_minutes.map(|m| m * 60.0).or(cfg.budget_s);
        set(&mut cfg.grad_accum, self.grad_accum);
        set(&mut cfg.log_every, self.log_every);
        set(&mut cfg.ckpt_every, self.ckpt_every);
        set(&mut cfg.keep_last, self.keep_last);
        set(&mut cfg.sample_every, self.sample_every);
    }
}

/// Overrides `dst` with `given` when it is set.
fn set<T: Clone>(dst: &mut T, given: Option<T>) {
    if let Some(v) = given {
        *dst = v;
    }
}
