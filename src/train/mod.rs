//! `udit train`: the reference recipe (DiT / U-DiT `train.py`) on one device or many.
//!
//! Each step draws, for every sample of the global batch, a timestep uniform in 0..T, the
//! noise, and whether its label is dropped to the null class (classifier-free guidance), all
//! from counter-based streams of the seed; with the deterministic loader this makes step `s`
//! a pure function of the seed, the weights and `s`, so `--resume` continues the very run
//! (bit for bit on CPU) and gradient accumulation sees the same samples as one big batch.

pub mod optim;
pub mod plot;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, StateDict};
use crate::data::{self, Dataset, HostBatch, Space};
use crate::diffusion::GaussianDiffusion;
use crate::diffusion::samplers::{Sampler, push_normals, unit_uniform};
use crate::model::{Denoiser, FfnForm, ModelConfig};
use crate::progress::Progress;
use crate::sample::{Classes, Codec, Generator, Settings};
use optim::{AdamW, OptimState, ParamState};

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

impl DataSpec {
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
    /// Optimizer steps in all.
    pub steps: u64,
    /// Samples per optimizer step, over all devices and accumulation rounds (reference 256).
    pub global_batch: usize,
    /// Forward/backward rounds per step (the global batch is split evenly).
    pub grad_accum: usize,
    pub lr: f64,
    /// Steps of linear lr warm-up from 0 (0 = constant lr, the reference).
    pub warmup_steps: u64,
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
            global_batch: 256,
            grad_accum: 1,
            lr: 1e-4,
            warmup_steps: 0,
            grad_clip: None,
            adamw: AdamW::default(),
            ema_decay: 0.9999,
            hflip,
            seed: 0,
            log_every: 100,
            ckpt_every: 50_000,
            keep_last: 0,
            sample_every: 0,
            sample_cfg_scale: 1.5,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if self.steps == 0 {
            bail!("a run needs at least 1 training step");
        }
        if self.global_batch == 0 || self.grad_accum == 0 || self.global_batch % self.grad_accum != 0 {
            bail!(
                "the global batch ({}) must be a positive multiple of --grad-accum ({})",
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
            bail!("--grad-clip must be positive");
        }
        if self.log_every == 0 || self.ckpt_every == 0 {
            bail!("--log-every and --ckpt-every must be positive");
        }
        Ok(())
    }

    /// Learning rate of step `step` (1-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps { self.lr * step as f64 / self.warmup_steps as f64 } else { self.lr }
    }
}

/// Model, optimizer and EMA at some step, with the configuration that produced them.
pub struct TrainState {
    pub config: TrainConfig,
    pub model: Denoiser,
    pub optim: OptimState,
}

const MODEL: &str = "model.";
const EMA: &str = "ema.";
const EXP_AVG: &str = "opt.exp_avg.";
const EXP_AVG_SQ: &str = "opt.exp_avg_sq.";
const TRAIN_METADATA_KEY: &str = "udit_train";
const STEP_METADATA_KEY: &str = "udit_step";

impl TrainState {
    /// A fresh model (seeded initialisation) and optimizer on the autodiff device `device`.
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        device.seed(config.seed);
        let model = Denoiser::new(&config.model, FfnForm::Train, device);
        let optim = OptimState::new(&model);
        Ok(Self { config, model, optim })
    }

    /// A copy on another (autodiff) device, for data-parallel training.
    pub fn replica(&self, device: &Device) -> Self {
        let inner = device.clone().inner();
        let mut optim = self.optim.clone();
        for p in optim.params.values_mut() {
            for t in [&mut p.exp_avg, &mut p.exp_avg_sq, &mut p.ema] {
                *t = t.clone().to_device(&inner);
            }
        }
        Self { config: self.config.clone(), model: self.model.clone().fork(device), optim }
    }

    /// The EMA weights as a model of the training form.
    pub fn ema_model(&self, device: &Device) -> Result<Denoiser> {
        checkpoint::load_into(Denoiser::new(&self.config.model, FfnForm::Train, device), &self.ema_dict(), device)
    }

    /// The EMA weights under their state-dict keys and shapes.
    fn ema_dict(&self) -> StateDict {
        self.per_param(Self::ema_of)
    }

    fn ema_of(p: &ParamState) -> &Tensor<1> {
        &p.ema
    }

    /// One flat per-parameter state tensor for every key, in the parameter's shape.
    fn per_param(&self, which: impl Fn(&ParamState) -> &Tensor<1>) -> StateDict {
        let shapes = checkpoint::param_shapes(&self.model);
        let data = |t: &Tensor<1>| t.to_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
        self.optim.params.iter().map(|(k, p)| (k.clone(), TensorData::new(data(which(p)), shapes[k].clone()))).collect()
    }

    /// Writes model, EMA, optimizer moments, step and configuration in one safetensors file,
    /// atomically. `udit sample --ckpt` reads its EMA directly.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = StateDict::new();
        for (k, v) in checkpoint::state_dict(&self.model) {
            tensors.insert(format!("{MODEL}{k}"), v);
        }
        for (prefix, which) in [
            (EMA, Self::ema_of as fn(&ParamState) -> &Tensor<1>),
            (EXP_AVG, |p| &p.exp_avg),
            (EXP_AVG_SQ, |p| &p.exp_avg_sq),
        ] {
            for (k, v) in self.per_param(which) {
                tensors.insert(format!("{prefix}{k}"), v);
            }
        }
        let mut meta = checkpoint::model_metadata(&self.config.model, Some(&self.config.codec), &Default::default())?;
        meta.push((TRAIN_METADATA_KEY.into(), serde_json::to_string(&self.config)?));
        meta.push((STEP_METADATA_KEY.into(), self.optim.step.to_string()));
        checkpoint::write_safetensors(path, &tensors, meta)
    }

    /// Reads a checkpoint written by [`TrainState::save`] onto the autodiff device `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = checkpoint::read_weights(path, Some("model"))?;
        let bad = || format!("{} is not a `udit train` checkpoint", path.display());
        let config: TrainConfig = serde_json::from_str(w.metadata.get(TRAIN_METADATA_KEY).with_context(bad)?)
            .with_context(|| format!("{}: invalid training configuration", path.display()))?;
        let step: u64 = w.metadata.get(STEP_METADATA_KEY).and_then(|s| s.parse().ok()).with_context(bad)?;
        let model = checkpoint::load_into(Denoiser::new(&config.model, FfnForm::Train, device), &w.tensors, device)?;
        let all = checkpoint::read_weights(path, Some("opt"))?;
        let ema = checkpoint::read_weights(path, Some("ema"))?.tensors;
        let inner = device.clone().inner();
        let tensor = |d: &TensorData| {
            Tensor::<1>::from_data(
                TensorData::new(d.as_slice::<f32>().expect("f32").to_vec(), [d.num_elements()]),
                &inner,
            )
        };
        let mut params = std::collections::BTreeMap::new();
        for key in checkpoint::state_dict(&model).keys() {
            let get = |name: String| all.tensors.get(&name).with_context(|| format!("{}: no {name}", path.display()));
            let ema = ema.get(key).with_context(|| format!("{}: no ema.{key}", path.display()))?;
            params.insert(
                key.clone(),
                ParamState {
                    exp_avg: tensor(get(format!("exp_avg.{key}"))?),
                    exp_avg_sq: tensor(get(format!("exp_avg_sq.{key}"))?),
                    ema: tensor(ema),
                },
            );
        }
        Ok(Self { config, model, optim: OptimState { step, params } })
    }
}

/// Per-sample random draws of one step.
pub struct Draws {
    /// Diffusion timestep, uniform in 0..T.
    pub t: Vec<usize>,
    /// Whether the label becomes the null class (probability `class_dropout_prob`).
    pub drop_label: Vec<bool>,
    /// The diffusion noise, `per` values a sample.
    pub noise: Vec<f32>,
    /// VAE posterior noise, `posterior` values a sample.
    pub posterior: Vec<f32>,
}

/// Stream id blocks for the per-sample draws of the trainer (the loader uses lower ones).
const SAMPLE_STREAM: u64 = 3 << 40;

/// The draws of samples `first..first + count` of step `step` (0-based): each sample has its
/// own stream, so they do not depend on how the batch is split.
pub fn draws(cfg: &TrainConfig, step: u64, first: usize, count: usize, per: usize, posterior: usize) -> Draws {
    let classes_drop = cfg.model.class_dropout_prob();
    let mut d = Draws { t: vec![], drop_label: vec![], noise: vec![], posterior: vec![] };
    for i in first..first + count {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(SAMPLE_STREAM + step * cfg.global_batch as u64 + i as u64);
        d.t.push(data::below(&mut rng, NUM_TIMESTEPS as u64) as usize);
        d.drop_label.push(unit_uniform(&mut rng) < classes_drop);
        push_normals(&mut rng, per, &mut d.noise);
        push_normals(&mut rng, posterior, &mut d.posterior);
    }
    d
}

/// Diffusion steps of training (reference `create_diffusion(timestep_respacing="")`).
pub const NUM_TIMESTEPS: usize = 1000;

/// What happened in one optimizer step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub mse: f64,
    pub vb: f64,
    pub grad_norm: Option<f64>,
}

/// Runs the optimizer steps of a training run on one device.
pub struct Trainer {
    pub state: TrainState,
    data: Arc<dyn Dataset>,
    codec: Codec,
    diffusion: GaussianDiffusion,
    /// The autodiff device.
    device: Device,
}

impl Trainer {
    /// Opens the data and codec of `state.config` and checks they fit the model.
    pub fn new(state: TrainState, device: &Device) -> Result<Self> {
        let data = state.config.data.open()?;
        Self::with_data(state, data, device)
    }

    /// As [`Trainer::new`], with the dataset already open.
    pub fn with_data(state: TrainState, data: Arc<dyn Dataset>, device: &Device) -> Result<Self> {
        let cfg = &state.config;
        let codec = Codec::open(&cfg.codec, &device.clone().inner())?;
        let (c, s) = (cfg.model.in_channels(), cfg.model.input_size());
        let want = match data.space() {
            Space::Model => [c, s, s],
            Space::Pixels => {
                let (channels, side) = codec.image_shape(c, s)?;
                [channels, side, side]
            }
        };
        if data.shape() != want {
            bail!("the data's samples are {:?} but the model (through the codec) needs {want:?}", data.shape());
        }
        if data.num_classes() > cfg.model.num_classes() {
            bail!("the data has {} classes but the model only {}", data.num_classes(), cfg.model.num_classes());
        }
        Ok(Self { state, data, codec, diffusion: GaussianDiffusion::linear(NUM_TIMESTEPS), device: device.clone() })
    }

    pub fn loader(&self) -> Result<data::Loader> {
        let c = &self.state.config;
        data::Loader::new(self.data.clone(), c.seed, self.state.optim.step, c.global_batch, c.hflip)
    }

    /// One optimizer step on samples `first..first + count` of `batch`, the batch of step
    /// `self.state.optim.step` (a data-parallel replica takes its share of the global batch;
    /// burn averages the gradients across replicas during backward).
    pub fn step(&mut self, batch: &HostBatch, first: usize, count: usize) -> Result<StepStats> {
        let grads_and_stats = self.gradients(batch, first, count)?;
        let cfg = &self.state.config;
        let lr = cfg.lr_at(self.state.optim.step + 1);
        let (grads, mut stats) = grads_and_stats;
        let model = self.state.model.clone();
        let (model, norm) = self.state.optim.step(model, grads, &cfg.adamw, lr, cfg.grad_clip, cfg.ema_decay);
        self.state.model = model;
        stats.grad_norm = norm;
        Ok(stats)
    }

    /// Gradients of the mean loss over samples `first..first + count` of `batch`, in
    /// `grad_accum` rounds (each round's loss is scaled so that the sum is the mean).
    pub fn gradients(&self, batch: &HostBatch, first: usize, count: usize) -> Result<(GradientsParams, StepStats)> {
        let cfg = &self.state.config;
        let rounds = cfg.grad_accum;
        if count % rounds != 0 {
            bail!("{count} samples do not split into {rounds} accumulation rounds");
        }
        let micro = count / rounds;
        let mut acc = GradientsAccumulator::<Denoiser>::new();
        let mut stats = StepStats::default();
        for r in 0..rounds {
            let (loss, mse, vb) = self.losses(batch, first + r * micro, micro)?;
            let scale = micro as f64 / count as f64;
            let loss = loss.mean() * scale;
            stats.mse += mse.mean().into_scalar::<f32>() as f64 * scale;
            stats.vb += vb.mean().into_scalar::<f32>() as f64 * scale;
            let grads = GradientsParams::from_grads(loss.backward(), &self.state.model);
            acc.accumulate(&self.state.model, grads);
        }
        stats.loss = stats.mse + stats.vb;
        Ok((acc.grads(), stats))
    }

    /// Per-sample losses (total, MSE, VB) of samples `first..first + count` of `batch`.
    fn losses(&self, batch: &HostBatch, first: usize, count: usize) -> Result<(Tensor<1>, Tensor<1>, Tensor<1>)> {
        let cfg = &self.state.config;
        let [_, c, h, w] = batch.shape;
        let per = c * h * w;
        let inner = self.device.clone().inner();
        let pixels = Tensor::<4>::from_data(
            TensorData::new(batch.x[first * per..(first + count) * per].to_vec(), [count, c, h, w]),
            &inner,
        );
        let (mc, ms) = (cfg.model.in_channels(), cfg.model.input_size());
        let posterior =
            if matches!(self.codec, Codec::Vae(_)) && self.data.space() == Space::Pixels { mc * ms * ms } else { 0 };
        let d = draws(cfg, self.state.optim.step, first, count, mc * ms * ms, posterior);
        let x0 = match self.data.space() {
            Space::Model => pixels,
            Space::Pixels => self
                .codec
                .encode(pixels, |mean| Tensor::from_data(TensorData::new(d.posterior.clone(), mean.dims()), &inner)),
        };
        let x0 = Tensor::<4>::from_inner(x0);
        let dev = &self.device;
        let noise = Tensor::<4>::from_data(TensorData::new(d.noise, [count, mc, ms, ms]), dev);
        let x_t = self.diffusion.q_sample(x0.clone(), &d.t, noise.clone());
        let null = cfg.model.num_classes() as i64;
        let labels: Vec<i64> = batch.labels[first..first + count]
            .iter()
            .zip(&d.drop_label)
            .map(|(&l, &drop)| if drop { null } else { l })
            .collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [count]), dev);
        let t =
            Tensor::<1>::from_data(TensorData::new(d.t.iter().map(|&v| v as f32).collect::<Vec<_>>(), [count]), dev);
        let out = self.state.model.forward(x_t.clone(), t, y);
        let l = self.diffusion.training_losses(out, x0, x_t, noise, &d.t);
        Ok((l.loss, l.mse, l.vb))
    }

    /// A grid of EMA samples: `per_class` of each of the first (up to 10) classes, DPM-Solver++
    /// with 25 steps, fixed seed.
    pub fn sample_grid(&self, path: &Path, per_class: usize) -> Result<()> {
        let cfg = &self.state.config;
        let inner = self.device.clone().inner();
        let ema = self.state.ema_model(&inner)?.merged();
        let classes = self.data.num_classes().min(10);
        let list: Vec<usize> = (0..classes).flat_map(|c| std::iter::repeat_n(c, per_class)).collect();
        let guided = cfg.model.has_null_class() && cfg.sample_cfg_scale > 1.0;
        let g = Generator {
            model: &ema,
            config: &cfg.model,
            codec: &self.codec,
            diffusion: GaussianDiffusion::linear(NUM_TIMESTEPS),
            settings: Settings {
                sampler: Sampler::DpmSolverPp2M,
                steps: 25,
                cfg_scale: if guided { cfg.sample_cfg_scale } else { 1.0 },
                seed: 0,
                classes: Classes::Listed(list.clone()),
            },
            device: inner,
        };
        g.validate()?;
        let images = g.generate(0, list.len(), &mut || {})?;
        crate::sample::write_grid(path, &images, per_class, &self.data.class_names())
    }

    /// The EMA weights, FFN merged, with the configuration and codec: what `udit sample` and
    /// the reference code load.
    pub fn export(&self, path: &Path) -> Result<()> {
        let inner = self.device.clone().inner();
        let ema = self.state.ema_model(&inner)?.merged();
        let cfg = &self.state.config;
        checkpoint::write_safetensors(
            path,
            &checkpoint::state_dict(&ema),
            checkpoint::model_metadata(&cfg.model, Some(&cfg.codec), &self.data.class_names())?,
        )
    }
}

/// Files of a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step_{step:07}.safetensors"))
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("log.jsonl")
    }
    pub fn samples(&self, step: u64) -> PathBuf {
        self.0.join("samples").join(format!("step_{step:07}.png"))
    }
    pub fn export(&self) -> PathBuf {
        self.0.join("model.safetensors")
    }

    /// Saved checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        let dir = self.checkpoints();
        if !dir.exists() {
            return Ok(vec![]);
        }
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("step_") && name.ends_with(".safetensors")
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Deletes all but the newest `keep` checkpoints (0 keeps all).
    pub fn prune(&self, keep: usize) -> Result<()> {
        let all = self.list()?;
        if keep > 0 && all.len() > keep {
            for p in &all[..all.len() - keep] {
                std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// Drops log lines of steps after `step` (a resumed run rewrites them).
    pub fn truncate_log(&self, step: u64) -> Result<()> {
        let path = self.log();
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path)?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        checkpoint::write_atomic(&path, kept.as_bytes())
    }
}

/// One line of `log.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub loss: f64,
    pub mse: f64,
    pub vb: f64,
    /// Mean global gradient norm before clipping (only when clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    pub lr: f64,
    pub steps_per_s: f64,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
}

/// Marks every parameter for gradient all-reduce across the devices of a
/// [`DistributedContext`] (burn's data-parallel training; NCCL under CUDA).
fn mark_distributed(model: Denoiser) -> Denoiser {
    struct Mark;
    impl burn::module::ModuleMapper for Mark {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let id = param.id;
            param.map(|t| t.set_distributed(id))
        }
    }
    model.map(&mut Mark)
}

/// A data-parallel replica running in its own thread: it takes its share of every global
/// batch and returns its step's statistics.
struct Peer {
    batches: std::sync::mpsc::Sender<Arc<HostBatch>>,
    stats: std::sync::mpsc::Receiver<Result<StepStats>>,
}

/// Trains until `state.config.steps` on `devices` (autodiff devices; several = data-parallel
/// replicas, each taking an equal share of every global batch, with gradients averaged by
/// burn's collective all-reduce), writing checkpoints, the log, sample grids and at the end
/// the exported EMA model into `run`, reporting steps and phases to `progress`.
pub fn train(state: TrainState, run: &RunDir, devices: &[Device], progress: &Progress) -> Result<Trainer> {
    let ranks = devices.len();
    let cfg = state.config.clone();
    if ranks == 0 || cfg.global_batch % (ranks * cfg.grad_accum) != 0 {
        bail!(
            "the global batch ({}) must split evenly over {ranks} devices x {} accumulation rounds",
            cfg.global_batch,
            cfg.grad_accum
        );
    }
    let share = cfg.global_batch / ranks;
    let data = cfg.data.open()?;
    let _context = (ranks > 1).then(|| {
        let config = burn::tensor::distributed::DistributedConfig {
            all_reduce_op: burn::tensor::distributed::ReduceOperation::Mean,
        };
        burn::tensor::distributed::DistributedContext::init(devices.to_vec(), config)
    });
    let replicas: Vec<TrainState> = devices[1..].iter().map(|d| state.replica(d)).collect();
    let mut trainer = Trainer::with_data(state, data.clone(), &devices[0])?;
    if ranks > 1 {
        trainer.state.model = mark_distributed(trainer.state.model);
    }
    let mut loader = trainer.loader()?;
    // Only a run that could start leaves files behind.
    std::fs::create_dir_all(run.checkpoints()).with_context(|| format!("cannot create {}", run.0.display()))?;
    std::fs::create_dir_all(run.0.join("samples"))?;
    checkpoint::write_atomic(&run.0.join("recipe.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    run.truncate_log(trainer.state.optim.step)?;
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(run.log())?;
    std::thread::scope(|scope| -> Result<Trainer> {
        let mut peers = Vec::new();
        for (r, replica) in replicas.into_iter().enumerate() {
            let (batch_tx, batch_rx) = std::sync::mpsc::channel::<Arc<HostBatch>>();
            let (stats_tx, stats_rx) = std::sync::mpsc::channel();
            let (device, data) = (devices[r + 1].clone(), data.clone());
            scope.spawn(move || {
                let mut t = match Trainer::with_data(replica, data, &device) {
                    Ok(t) => t,
                    Err(e) => return stats_tx.send(Err(e)).unwrap_or(()),
                };
                t.state.model = mark_distributed(t.state.model);
                while let Ok(batch) = batch_rx.recv() {
                    if stats_tx.send(t.step(&batch, (r + 1) * share, share)).is_err() {
                        return;
                    }
                }
            });
            peers.push(Peer { batches: batch_tx, stats: stats_rx });
        }
        let start = Instant::now();
        let (mut window, mut window_start, mut sums) = (0u64, Instant::now(), StepStats::default());
        while trainer.state.optim.step < cfg.steps {
            let batch = Arc::new(loader.next_batch()?);
            for p in &peers {
                p.batches.send(batch.clone()).map_err(|_| anyhow::anyhow!("a training replica stopped"))?;
            }
            let mut stats = trainer.step(&batch, 0, share)?;
            for p in &peers {
                let s = p.stats.recv().map_err(|_| anyhow::anyhow!("a training replica stopped"))??;
                (stats.mse, stats.vb) = (stats.mse + s.mse, stats.vb + s.vb);
            }
            (stats.mse, stats.vb) = (stats.mse / ranks as f64, stats.vb / ranks as f64);
            stats.loss = stats.mse + stats.vb;
            if !stats.loss.is_finite() {
                bail!("the loss is {} at step {}: training diverged", stats.loss, trainer.state.optim.step);
            }
            let step = trainer.state.optim.step;
            progress.inc(1);
            progress.set_message(format!("loss {:.4}", stats.loss));
            (sums.loss, sums.mse, sums.vb) = (sums.loss + stats.loss, sums.mse + stats.mse, sums.vb + stats.vb);
            sums.grad_norm = stats.grad_norm.map(|g| g + sums.grad_norm.unwrap_or(0.0));
            window += 1;
            if step % cfg.log_every == 0 || step == cfg.steps {
                let secs = window_start.elapsed().as_secs_f64();
                let n = window as f64;
                let line = LogLine {
                    step,
                    loss: sums.loss / n,
                    mse: sums.mse / n,
                    vb: sums.vb / n,
                    grad_norm: sums.grad_norm.map(|g| g / n),
                    lr: cfg.lr_at(step),
                    steps_per_s: n / secs,
                    samples_per_s: n * cfg.global_batch as f64 / secs,
                    elapsed_s: start.elapsed().as_secs_f64(),
                };
                writeln!(log, "{}", serde_json::to_string(&line)?)?;
                log.flush()?;
                (window, window_start, sums) = (0, Instant::now(), StepStats::default());
            }
            if step % cfg.ckpt_every == 0 || step == cfg.steps {
                progress.phase("checkpoint");
                trainer.state.save(&run.checkpoint(step))?;
                run.prune(cfg.keep_last)?;
            }
            if (cfg.sample_every > 0 && step % cfg.sample_every == 0) || step == cfg.steps {
                progress.phase("EMA sample grid (25 DPM-Solver++ steps)");
                trainer.sample_grid(&run.samples(step), 8)?;
            }
            progress.phase("training");
        }
        drop(peers);
        progress.phase("exporting the EMA model");
        trainer.export(&run.export())?;
        progress.finish();
        Ok(trainer)
    })
}

/// `udit extract-features`: encodes every image of an ImageNet-layout folder (ADM center
/// crop, no flip) with the VAE (a posterior sample times the scaling factor, as fast-DiT) into
/// `out/latents.npy` and `out/labels.npy`. Returns the number of latents.
#[allow(clippy::too_many_arguments)]
pub fn extract_features(
    root: &Path,
    image_size: usize,
    vae: &str,
    out: &Path,
    batch: usize,
    seed: u64,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    if batch == 0 {
        bail!("--batch must be positive");
    }
    let images = data::image_folder::ImageFolder::open(root, image_size)?;
    let codec = Codec::open(vae, device)?;
    let Codec::Vae(v) = &codec else { bail!("--vae must be a VAE, not {vae:?}") };
    let side = image_size / v.config.downscale();
    let shape = [v.config.latent_channels, side, side];
    let n = images.len();
    let mut writer = data::latents::LatentWriter::create(out, n, shape)?;
    let per = shape.iter().product::<usize>();
    for first in (0..n).step_by(batch) {
        let count = batch.min(n - first);
        let mut x = vec![0f32; count * 3 * image_size * image_size];
        let labels = {
            use rayon::prelude::*;
            x.par_chunks_mut(3 * image_size * image_size)
                .enumerate()
                .map(|(k, out)| images.read(first + k, false, out).map(|l| l as i64))
                .collect::<Result<Vec<_>>>()?
        };
        let pixels = Tensor::<4>::from_data(TensorData::new(x, [count, 3, image_size, image_size]), device);
        let mut noise = Vec::with_capacity(count * per);
        for i in first..first + count {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(SAMPLE_STREAM + i as u64);
            push_normals(&mut rng, per, &mut noise);
        }
        let z = codec.encode(pixels, |mean| Tensor::from_data(TensorData::new(noise, mean.dims()), device));
        writer.push(
            &z.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?,
            &labels,
        )?;
        on_progress(first + count, n);
    }
    writer.finish()?;
    Ok(n)
}
