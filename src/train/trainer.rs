//! One optimizer step: the batch's random draws, the loss of the run's process, backward (in
//! accumulation rounds), AdamW with clipping, and the EMA; plus the EMA's sample grid and
//! export.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::{TrainConfig, TrainState};
use crate::checkpoint;
use crate::codec::Codec;
use crate::data::{self, Dataset, HostBatch, Space};
use crate::diffusion::NUM_TIMESTEPS;
use crate::guidance::Guidance;
use crate::model::{Denoiser, ModelConfig};
use crate::precision::autocast;
use crate::process::{Process, ProcessSpec};
use crate::rng::{Stream, below, push_normals, unit_uniform};
use crate::sample::{Classes, Generator, Method, Settings};

/// How many shards [`sharded_gradients`] splits `count` samples of a `model` into: one a core
/// on the CPU for models under [`SHARDED_MACS`] a sample, else one (as under CUDA).
pub fn training_shards(model: &ModelConfig, count: usize) -> usize {
    if crate::cost::Cost::of(model).macs < SHARDED_MACS { crate::core_shards(count) } else { 1 }
}

/// The forward MACs a sample below which a training step splits its batch across the cores.
/// Measured on 2 cores (2026-12-06): toy and laptop models gain a sixth (DiT-64/2, 0.03
/// GMACs: 44 -> 39 ms a step; the bundled U-DiT, 0.09: 281 -> 238 ms), S-size ones nothing
/// (U-DiT-S, SiT-LLaMA-S/2, 6 GMACs), and DiT-B/2 (23 GMACs) loses 4% to the shards'
/// gradient sum (a parameter-sized add per shard, 0.5 GB each) and their separate weight
/// gradients.
pub const SHARDED_MACS: u64 = 1_000_000_000;

/// The gradients of a loss over `count` samples, the samples split into `shards` (at most
/// one a core, [`training_shards`]) that run side by side ([`crate::on_cores`]): each shard
/// runs forward and backward on its own fork of `model` (the same parameter values and ids,
/// its own autodiff leaves, so that the shards' graphs stay apart), and the shards'
/// gradients are added in shard order (the same bits every run on as many cores).
/// `loss(model, first, n)` is the loss of samples `first..first + n`, already weighted by
/// their share, and what else the shard reports.
///
/// Every shard finishes its forward before any starts its backward: in burn 0.22 the sweep
/// that follows a `backward` can free the steps of an op that another thread is still
/// registering, and that gradient is then silently lost (tracel-ai/burn#5573). Backward
/// passes side by side are safe (each holds its own graph's lock; the sweep skips them).
pub fn sharded_gradients<S: Send>(
    model: &Denoiser,
    count: usize,
    shards: usize,
    device: &Device,
    loss: impl Fn(&Denoiser, usize, usize) -> Result<(Tensor<1>, S)> + Sync,
) -> Result<(GradientsParams, Vec<S>)> {
    if shards <= 1 {
        let (loss, report) = loss(model, 0, count)?;
        return Ok((GradientsParams::from_grads(loss.backward(), model), vec![report]));
    }
    let forwards_done = std::sync::Barrier::new(shards);
    let results = crate::on_cores(count, shards, |r| {
        let model = model.clone().fork(device);
        let forward = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loss(&model, r.start, r.len())));
        // A shard that failed or panicked still waits, so that none is left waiting for it.
        forwards_done.wait();
        let (loss, report) = forward.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok::<_, anyhow::Error>((GradientsParams::from_grads(loss.backward(), &model), report))
    });
    let mut acc = GradientsAccumulator::<Denoiser>::new();
    let mut reports = Vec::with_capacity(shards);
    for result in results {
        let (grads, report) = result?;
        acc.accumulate(model, grads);
        reports.push(report);
    }
    Ok((acc.grads(), reports))
}

/// Per-sample random draws of one step.
pub struct Draws {
    /// Gaussian diffusion: the timestep, an integer uniform in 0..T. An interpolant: a uniform
    /// draw in [0, 1), which [`crate::transport::Transport::interval`] maps onto its training interval.
    pub t: Vec<f64>,
    /// Whether the label becomes the null class (probability `class_dropout_prob`).
    pub drop_label: Vec<bool>,
    /// The diffusion noise, `per` values a sample.
    pub noise: Vec<f32>,
    /// VAE posterior noise, `posterior` values a sample.
    pub posterior: Vec<f32>,
}

/// The draws of samples `first..first + count` of step `step` (0-based): each sample has its
/// own stream, so they do not depend on how the batch is split.
pub fn draws(cfg: &TrainConfig, step: u64, first: usize, count: usize, per: usize, posterior: usize) -> Draws {
    let classes_drop = cfg.model.class_dropout_prob();
    let continuous = matches!(cfg.process(), ProcessSpec::Interpolant { .. });
    let mut d = Draws { t: vec![], drop_label: vec![], noise: vec![], posterior: vec![] };
    for i in first..first + count {
        let mut rng = Stream::TrainSample { index: step * cfg.global_batch as u64 + i as u64 }.rng(cfg.seed);
        d.t.push(if continuous { unit_uniform(&mut rng) } else { below(&mut rng, NUM_TIMESTEPS as u64) as f64 });
        d.drop_label.push(unit_uniform(&mut rng) < classes_drop);
        push_normals(&mut rng, per, &mut d.noise);
        push_normals(&mut rng, posterior, &mut d.posterior);
    }
    d
}

/// What happened in one optimizer step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub mse: f64,
    pub vb: f64,
    pub grad_norm: Option<f64>,
}

/// Checks that `data` can feed the model of `cfg` through `codec`: the samples' shape and
/// the number of classes.
pub fn check_fit(cfg: &TrainConfig, data: &dyn Dataset, codec: &Codec) -> Result<()> {
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
    Ok(())
}

/// Runs the optimizer steps of a training run on one device.
pub struct Trainer {
    pub state: TrainState,
    data: Arc<dyn Dataset>,
    codec: Codec,
    process: Process,
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
        let codec = Codec::open(&state.config.codec, &device.clone().inner())?;
        check_fit(&state.config, data.as_ref(), &codec)?;
        let process = state.config.process().process()?;
        Ok(Self { state, data, codec, process, device: device.clone() })
    }

    pub fn loader(&self) -> Result<data::Loader> {
        let c = &self.state.config;
        data::Loader::new(self.data.clone(), c.seed, self.state.optim.step, c.global_batch, c.hflip)
    }

    /// One optimizer step on samples `first..first + count` of `batch`, the batch of step
    /// `self.state.optim.step` (a data-parallel replica takes its share of the global batch;
    /// burn averages the gradients across replicas during backward).
    pub fn step(&mut self, batch: &HostBatch, first: usize, count: usize) -> Result<StepStats> {
        crate::on_workers(|| self.step_here(batch, first, count))
    }

    fn step_here(&mut self, batch: &HostBatch, first: usize, count: usize) -> Result<StepStats> {
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
    /// `grad_accum` rounds (each round's loss is scaled so that the sum is the mean), times
    /// the loss scale in f16; a small model's round split into one shard a core
    /// ([`training_shards`], [`sharded_gradients`]).
    pub fn gradients(&self, batch: &HostBatch, first: usize, count: usize) -> Result<(GradientsParams, StepStats)> {
        let cfg = &self.state.config;
        let rounds = cfg.grad_accum;
        if count % rounds != 0 {
            bail!("{count} samples do not split into {rounds} accumulation rounds");
        }
        let micro = count / rounds;
        let shards = training_shards(&cfg.model, micro);
        let loss_scale = self.state.optim.loss_scaler.map_or(1.0, |s| s.scale);
        let mut acc = GradientsAccumulator::<Denoiser>::new();
        let mut stats = StepStats::default();
        for r in 0..rounds {
            let (grads, reports) =
                sharded_gradients(&self.state.model, micro, shards, &self.device, |model, at, n| {
                    let (loss, mse, vb) = self.losses(model, batch, first + r * micro + at, n)?;
                    let scale = n as f64 / count as f64;
                    let mse = mse.mean().into_scalar::<f32>() as f64 * scale;
                    let vb = vb.mean().into_scalar::<f32>() as f64 * scale;
                    Ok((loss.mean() * (scale * loss_scale), (mse, vb)))
                })?;
            for (mse, vb) in reports {
                stats.mse += mse;
                stats.vb += vb;
            }
            acc.accumulate(&self.state.model, grads);
        }
        stats.loss = stats.mse + stats.vb;
        Ok((acc.grads(), stats))
    }

    /// Per-sample losses (total, MSE, VB) of `model` on samples `first..first + count` of
    /// `batch`.
    fn losses(
        &self,
        model: &Denoiser,
        batch: &HostBatch,
        first: usize,
        count: usize,
    ) -> Result<(Tensor<1>, Tensor<1>, Tensor<1>)> {
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
        let null = cfg.model.num_classes() as i64;
        let labels: Vec<i64> = batch.labels[first..first + count]
            .iter()
            .zip(&d.drop_label)
            .map(|(&l, &drop)| if drop { null } else { l })
            .collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [count]), dev);
        let forward = |x: Tensor<4>, t: &[f64]| {
            let t =
                Tensor::<1>::from_data(TensorData::new(t.iter().map(|&v| v as f32).collect::<Vec<_>>(), [count]), dev);
            let _autocast = autocast(cfg.precision);
            model.forward(x, t, y.clone())
        };
        match &self.process {
            Process::Diffusion(diffusion) => {
                let t: Vec<usize> = d.t.iter().map(|&t| t as usize).collect();
                let x_t = diffusion.q_sample(x0.clone(), &t, noise.clone());
                let out = forward(x_t.clone(), &d.t);
                let l = diffusion.training_losses(out, x0, x_t, noise, &t);
                Ok((l.loss, l.mse, l.vb))
            }
            Process::Interpolant(transport) => {
                // SiT's names: x0 is the noise, x1 the data.
                let (t0, t1) = transport.interval(None, false);
                let t: Vec<f64> = d.t.iter().map(|u| t0 + u * (t1 - t0)).collect();
                let (x_t, _) = transport.plan(&t, noise.clone(), x0.clone());
                let out = forward(x_t, &t).narrow(1, 0, mc);
                let loss = transport.training_loss(out, &t, noise, x0);
                Ok((loss.clone(), loss, Tensor::zeros([count], dev)))
            }
        }
    }

    /// A grid of EMA samples: `per_class` of each of the first (up to 10) classes, the fast
    /// sampler of [`Method::preview`], fixed seed.
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
            process: self.process.clone(),
            settings: Settings {
                method: Method::preview(&self.process),
                guidance: Guidance::everywhere(if guided { cfg.sample_cfg_scale } else { 1.0 }),
                seed: 0,
                classes: Classes::Listed(list.clone()),
            },
            device: inner,
        };
        g.validate()?;
        let images = g.generate(0, list.len(), &mut |_| Ok(()))?;
        crate::io::images::write_grid(path, &images, per_class, &self.data.class_names())
    }

    /// The EMA weights, FFN merged, with the configuration and codec: what `udit sample` and
    /// the reference code load.
    pub fn export(&self, path: &Path) -> Result<()> {
        let inner = self.device.clone().inner();
        let ema = self.state.ema_model(&inner)?.merged();
        let cfg = &self.state.config;
        // The data's class names, where they name every class of the model.
        let names = Some(self.data.class_names()).filter(|n| n.names().len() == cfg.model.num_classes());
        checkpoint::model_metadata(&cfg.model, &cfg.process(), Some(&cfg.codec), &names.unwrap_or_default())
            .and_then(|meta| checkpoint::write_safetensors(path, &checkpoint::state_dict(&ema), meta))
    }
}
