//! The sampling pipeline: noise -> sampler with classifier-free guidance -> codec -> uint8
//! images, in batches, deterministic per sample index (so runs resume and shard), into PNGs
//! and a labelled grid or an ADM `.npz`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand_core::RngCore;

use crate::classes::ClassNames;
use crate::codec::Codec;
use crate::cost::Cost;
use crate::diffusion::GaussianDiffusion;
use crate::diffusion::samplers::{OnStep, Plan, Sampler};
use crate::diffusion::schedule::Schedule;
use crate::guidance::{Evaluations, Guidance, GuidedDenoiser};
use crate::io::images::{Images, ensure_writable_dir, write_grid, write_pngs};
use crate::io::npz::NpzRun;
use crate::model::{Denoiser, ModelConfig};
use crate::progress::Progress;
use crate::rng::{NoiseStreams, Stream};

/// The paper's guidance scale (its FID-50K protocol), the default for guidable models.
pub const PAPER_CFG_SCALE: f64 = 1.5;

/// Guidance when none is asked for: the paper's for models with a null class, else none.
pub fn default_cfg_scale(config: &ModelConfig) -> f64 {
    if config.has_null_class() { PAPER_CFG_SCALE } else { 1.0 }
}

/// Which classes to draw.
#[derive(Clone, Debug)]
pub enum Classes {
    /// Sample i gets `list[i % len]`.
    Listed(Vec<usize>),
    /// Sample i gets a class drawn from its own stream of the run's seed.
    Random,
}

impl Classes {
    /// `random`, `all` (every class in turn), or a comma-separated list of class indices or
    /// names (see [`ClassNames::parse`]).
    pub fn parse(spec: &str, names: &ClassNames, num_classes: usize) -> Result<Self> {
        match spec.trim() {
            "random" => return Ok(Self::Random),
            "all" => return Ok(Self::Listed((0..num_classes).collect())),
            _ => {}
        }
        let list = spec.split(',').map(|c| names.parse(c, num_classes)).collect::<Result<Vec<_>>>()?;
        Ok(Self::Listed(list))
    }

    pub fn label(&self, seed: u64, index: usize, num_classes: usize) -> usize {
        match self {
            Self::Listed(list) => list[index % list.len()],
            Self::Random => {
                let mut rng = Stream::RandomClass { index: index as u64 }.rng(seed);
                (rng.next_u64() % num_classes as u64) as usize
            }
        }
    }
}

/// Everything that decides what sample i looks like.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sampler: Sampler,
    /// The ODE samplers' time-step schedule (None: the sampler's own).
    pub schedule: Option<Schedule>,
    pub steps: usize,
    pub guidance: Guidance,
    pub seed: u64,
    pub classes: Classes,
}

impl Settings {
    /// Checks the settings against a model and its diffusion process.
    pub fn validate(&self, config: &ModelConfig, diffusion: &GaussianDiffusion) -> Result<()> {
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        self.plan(diffusion)?;
        if let Sampler::Ddim { eta } = self.sampler
            && !(0.0..=1.0).contains(&eta)
        {
            bail!("--eta must be between 0 and 1, got {eta}");
        }
        let scale = self.guidance.scale;
        if !(scale >= 1.0) {
            bail!("--cfg-scale must be at least 1 (1 = no guidance), got {scale}");
        }
        if scale > 1.0 && !config.has_null_class() {
            bail!(
                "this model was trained without label dropout (no null class), so it cannot be guided: use --cfg-scale 1"
            );
        }
        let c = config.in_channels();
        let guided = self.guided_channels(config);
        if !(1..=c).contains(&guided) {
            bail!("guidance can mix 1 to {c} channels of this model, not {guided}");
        }
        let classes = config.num_classes();
        if let Classes::Listed(list) = &self.classes {
            if list.is_empty() {
                bail!("no classes given");
            }
            if let Some(bad) = list.iter().find(|&&c| c >= classes) {
                bail!("class {bad} does not exist: the model has classes 0..{}", classes - 1);
            }
        }
        Ok(())
    }

    /// Where the sampler calls the model on `diffusion`.
    pub fn plan(&self, diffusion: &GaussianDiffusion) -> Result<Plan> {
        self.sampler.plan(diffusion, self.steps, self.schedule)
    }

    /// The channels guidance mixes: the asked-for ones, else the model's.
    fn guided_channels(&self, config: &ModelConfig) -> usize {
        self.guidance.channels.unwrap_or(config.guided_channels())
    }

    /// The class of each of samples `first..first + count`.
    pub fn labels(&self, first: usize, count: usize, num_classes: usize) -> Vec<i64> {
        (first..first + count).map(|i| self.classes.label(self.seed, i, num_classes) as i64).collect()
    }
}

/// A model ready to sample: the denoiser (FFN merged), its configuration, codec and class names.
pub struct SamplingModel {
    pub model: Denoiser,
    pub config: ModelConfig,
    pub codec: Codec,
    pub names: ClassNames,
}

impl SamplingModel {
    /// A generator of `settings` on the diffusion process of the published models.
    pub fn generator(&self, settings: Settings, device: Device) -> Generator<'_> {
        Generator {
            model: &self.model,
            config: &self.config,
            codec: &self.codec,
            diffusion: GaussianDiffusion::reference(),
            settings,
            device,
        }
    }

    /// Side and channels of the images, or why the codec does not fit the model.
    pub fn image_shape(&self) -> Result<(usize, usize)> {
        self.codec.image_shape(self.config.in_channels(), self.config.input_size())
    }

    /// Samples per batch of `udit sample` and `udit sweep` by default, and of `udit serve`
    /// (batch shapes change float rounding: the same batches make them give the same bytes).
    /// [`default_batch`] of the model's GMACs, at most 8 through a VAE (its decoder's
    /// activations at 256x256 take about a GiB per 8 images).
    pub fn default_batch(&self) -> usize {
        let batch = default_batch(Cost::of(&self.config).macs as f64 * 1e-9);
        match self.codec {
            Codec::Vae(_) => batch.min(8),
            Codec::None | Codec::Unshuffle2 => batch,
        }
    }
}

/// GMACs of forward passes per batch that keep a CPU's cores busy with large enough GEMMs.
const BATCH_GMACS: f64 = 256.0;
/// The largest default batch: beyond it small models gain nothing.
const MAX_BATCH: usize = 128;

/// The largest power of two of `gmacs`-per-sample forward passes within [`BATCH_GMACS`], at
/// most [`MAX_BATCH`]: U-DiT-B (22 GMACs) 8, U-DiT-S 32, the bundled model (0.085) 128.
pub fn default_batch(gmacs: f64) -> usize {
    let fits = (BATCH_GMACS / gmacs.max(1e-9)).clamp(1.0, MAX_BATCH as f64) as usize;
    1 << fits.ilog2()
}

/// Draws samples `first..first + count` with one batched run.
#[derive(Clone)]
pub struct Generator<'a> {
    pub model: &'a Denoiser,
    pub config: &'a ModelConfig,
    pub codec: &'a Codec,
    pub diffusion: GaussianDiffusion,
    pub settings: Settings,
    pub device: Device,
}

impl Generator<'_> {
    /// Checks the settings against the model before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.settings.validate(self.config, &self.diffusion)?;
        self.codec.image_shape(self.config.in_channels(), self.config.input_size())?;
        Ok(())
    }

    pub fn image_shape(&self) -> (usize, usize) {
        self.codec.image_shape(self.config.in_channels(), self.config.input_size()).expect("validated")
    }

    /// Where the sampler calls the model.
    pub fn plan(&self) -> Result<Plan> {
        self.settings.plan(&self.diffusion)
    }

    /// Network evaluations per image.
    pub fn evaluations(&self) -> Result<Evaluations> {
        Ok(self.settings.guidance.evaluations(&self.plan()?, &self.diffusion))
    }

    /// Latents of samples `first..first + count` and their labels. `on_step` is told after
    /// each denoiser call, with the current x_0 prediction; an error from it (a cancelled job)
    /// stops the sampling.
    pub fn generate_latents(&self, first: usize, count: usize, on_step: &mut OnStep) -> Result<(Tensor<4>, Vec<i64>)> {
        let s = &self.settings;
        let dev = &self.device;
        let (c, side) = (self.config.in_channels(), self.config.input_size());
        let labels = s.labels(first, count, self.config.num_classes());
        let mut network = |x, t, y| self.model.forward(x, t, y);
        let mut denoiser = GuidedDenoiser {
            network: &mut network,
            labels: Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [count]), dev),
            null_class: self.config.num_classes(),
            guidance: &s.guidance,
            channels: s.guided_channels(self.config),
            process: &self.diffusion,
        };
        let mut noise = NoiseStreams::new(s.seed, first, count, [c, side, side]);
        let x_t = noise.next(dev);
        let z = self.plan()?.run(&mut |x, t| denoiser.call(x, t), x_t, &mut noise, dev, on_step)?;
        Ok((z, labels))
    }

    /// Samples `first..first + count` as uint8 images (see [`Self::generate_latents`]).
    pub fn generate(&self, first: usize, count: usize, on_step: &mut OnStep) -> Result<Images> {
        let (z, labels) = self.generate_latents(first, count, on_step)?;
        Ok(self.decode(z, labels))
    }

    /// Model space (a finished sample, or a step's x_0 prediction) -> uint8 images.
    pub fn decode(&self, z: Tensor<4>, labels: Vec<i64>) -> Images {
        let pixels = self.codec.decode(z);
        let [_, channels, h, _] = pixels.dims();
        // (x + 1) * 127.5, rounded and clamped, as the reference `sample_ddp.py`.
        let bytes = (pixels * 127.5 + 128.0).clamp(0.0, 255.0).permute([0, 2, 3, 1]).into_data();
        let pixels = bytes.convert::<f32>().as_slice::<f32>().expect("f32").iter().map(|&v| v as u8).collect();
        Images { pixels, labels, side: h, channels }
    }
}

/// Progress over denoiser calls (one unit per image and call), with a "decoding" phase
/// while a finished batch goes through the codec.
fn sampling_progress(g: &Generator, images: usize) -> Result<Progress> {
    Ok(Progress::new("sampling", (images * g.plan()?.calls()) as u64, "image-steps"))
}

/// Generates one batch while `progress` counts its calls and names the decoding phase.
fn generate_batch(g: &Generator, first: usize, n: usize, progress: &Progress) -> Result<Images> {
    let calls = g.plan()?.calls();
    let mut call = 0;
    progress.phase("sampling");
    g.generate(first, n, &mut |_| {
        call += 1;
        progress.inc(n as u64);
        if call == calls {
            progress.phase("decoding");
        }
        Ok(())
    })
}

/// Most samples `grid.png` shows.
pub const GRID_MAX: usize = 100;

/// Writes `count` samples as PNGs plus `grid.png` (the first [`GRID_MAX`], `cols` to a row,
/// by default a square) into `out`, in batches of `batch`.
pub fn run_pngs(
    g: &Generator,
    out: &Path,
    count: usize,
    batch: usize,
    cols: Option<usize>,
    names: &ClassNames,
) -> Result<()> {
    ensure_writable_dir(out)?;
    let progress = sampling_progress(g, count)?;
    let start = std::time::Instant::now();
    let mut grid: Option<Images> = None;
    for first in (0..count).step_by(batch) {
        let n = batch.min(count - first);
        let images = generate_batch(g, first, n, &progress)?;
        write_pngs(out, first, &images)?;
        let done = first + n;
        progress
            .set_message(format!("{done}/{count} images, {:.2} img/s", done as f64 / start.elapsed().as_secs_f64()));
        // The grid shows the first GRID_MAX samples; the rest only go to their PNGs.
        match &mut grid {
            None => grid = Some(images),
            Some(g) if g.labels.len() < GRID_MAX => g.append(images),
            Some(_) => {}
        }
    }
    progress.finish();
    let mut grid = grid.context("no samples requested")?;
    grid.truncate(GRID_MAX);
    let shown = grid.labels.len();
    progress.println("writing grid.png");
    write_grid(&out.join("grid.png"), &grid, cols.unwrap_or((shown as f64).sqrt().ceil() as usize), names)
}

/// Runs this shard's missing batches of `run`, then merges if the run is complete.
/// Returns whether the `.npz` was written.
pub fn run_npz(g: &Generator, run: &NpzRun, shard: usize, shards: usize) -> Result<bool> {
    if let Some(parent) = run.npz.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_writable_dir(parent)?;
    }
    let pending = run.pending(shard, shards);
    let todo: usize = pending.iter().map(|&b| run.range(b).len()).sum();
    let progress = sampling_progress(g, todo)?;
    let start = std::time::Instant::now();
    let mut done = 0;
    for b in pending {
        let range = run.range(b);
        let images = generate_batch(g, range.start, range.len(), &progress)?;
        run.save_part(b, &images)?;
        done += range.len();
        progress.set_message(format!("{done}/{todo} images, {:.2} img/s", done as f64 / start.elapsed().as_secs_f64()));
    }
    progress.finish();
    run.merge()
}
