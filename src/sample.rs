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
use crate::diffusion::samplers::{OnStep, Plan, Sampler};
use crate::diffusion::schedule::Schedule;
use crate::guidance::{Evaluations, Guidance, GuidedDenoiser};
use crate::io::images::{Images, ensure_writable_dir, older_pngs, write_grid, write_pngs};
use crate::io::npz::NpzRun;
use crate::model::{Denoiser, ModelConfig};
use crate::process::{Process, ProcessSpec};
use crate::progress::Progress;
use crate::rng::{NoiseStreams, Stream};
use crate::transport::sampling::{TRANSPORT_SAMPLERS, TransportOptions, TransportSampler};

/// The paper's guidance scale (its FID-50K protocol), the default for guidable models.
pub const PAPER_CFG_SCALE: f64 = 1.5;

/// Guidance when none is asked for: the paper's for models with a null class, else none.
pub fn default_cfg_scale(config: &ModelConfig) -> f64 {
    if config.has_null_class() { PAPER_CFG_SCALE } else { 1.0 }
}

/// What made a set of samples, written beside them (`settings.json` in a PNG folder,
/// `NAME.npz.json` beside an `.npz`): enough to make them again and to tell two runs apart.
#[derive(Debug, serde::Serialize)]
pub struct Record {
    pub udit_version: &'static str,
    /// The command line.
    pub command: Vec<String>,
    pub weights: String,
    pub weights_sha256: String,
    pub model: ModelConfig,
    pub process: ProcessSpec,
    pub codec: String,
    pub sampler: String,
    pub steps: usize,
    /// Every knob of the sampler (schedule, eta, the interpolant's options), as Rust prints it.
    pub sampler_settings: String,
    pub cfg_scale: f64,
    pub guidance_interval: String,
    pub cfg_channels: usize,
    pub seed: u64,
    pub classes: String,
    pub num_samples: usize,
    pub batch: usize,
    pub precision: String,
}

impl Record {
    /// The record of `g` (a model of `process`) run over `num_samples` samples in batches of
    /// `batch`, from the weights file `weights` (hashed now) through the codec `codec`.
    pub fn new(
        g: &Generator,
        process: &ProcessSpec,
        weights: &Path,
        codec: &str,
        (num_samples, batch): (usize, usize),
    ) -> Result<Self> {
        let s = &g.settings;
        Ok(Self {
            udit_version: env!("CARGO_PKG_VERSION"),
            command: std::env::args().collect(),
            weights: weights.display().to_string(),
            weights_sha256: crate::io::sha256_file(weights)?,
            model: g.config.clone(),
            process: process.clone(),
            codec: codec.to_string(),
            sampler: s.method.name().to_string(),
            steps: s.method.steps(),
            sampler_settings: format!("{:?}", s.method),
            cfg_scale: s.guidance.scale,
            guidance_interval: format!("{:?}", s.guidance.interval),
            cfg_channels: s.guidance.channels.unwrap_or(g.config.guided_channels()),
            seed: s.seed,
            classes: format!("{:?}", s.classes),
            num_samples,
            batch,
            precision: format!("{:?}", crate::precision::current()),
        })
    }

    /// Writes the record to `path` as pretty JSON (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::io::write_atomic(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
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

/// How samples are drawn: a sampler of the model's process.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// A Gaussian-diffusion sampler over `steps` steps on `schedule` (None: the sampler's own).
    Diffusion { sampler: Sampler, schedule: Option<Schedule>, steps: usize },
    /// An ODE or SDE sampler of the interpolant.
    Interpolant(TransportSampler),
}

/// The sampler knobs that only some samplers take; None takes the sampler's default, and a
/// knob given to a sampler it does not apply to is refused.
#[derive(Clone, Debug, Default)]
pub struct SamplerOptions {
    /// Time steps of the diffusion ODE samplers (ddim, dpm++, unipc, heun).
    pub schedule: Option<Schedule>,
    /// DDIM's eta.
    pub eta: Option<f64>,
    /// The interpolant samplers' knobs.
    pub transport: TransportOptions,
}

impl Method {
    /// The sampler `name` of `process` (None: the process's reference sampler: 250 ancestral
    /// steps for diffusion, SiT's SDE protocol for an interpolant) with `steps` (None: the
    /// sampler's default).
    pub fn named(process: &Process, name: Option<&str>, steps: Option<usize>, o: &SamplerOptions) -> Result<Self> {
        match process {
            Process::Diffusion(_) => {
                if o.transport != TransportOptions::default() {
                    bail!(
                        "--diffusion-form, --diffusion-norm, --last-step, --last-step-size, --atol and --rtol apply \
                         to models of an interpolant (SiT), not to this Gaussian-diffusion model"
                    );
                }
                let sampler = Sampler::named(name.unwrap_or("ancestral"), o.eta.unwrap_or(0.0))?;
                if o.eta.is_some() && !matches!(sampler, Sampler::Ddim { .. }) {
                    bail!("--eta applies to ddim, not to {}", sampler.name());
                }
                Ok(Self::Diffusion { sampler, schedule: o.schedule, steps: steps.unwrap_or(sampler.default_steps()) })
            }
            Process::Interpolant(_) => {
                if o.schedule.is_some() || o.eta.is_some() {
                    bail!(
                        "--schedule and --eta apply to Gaussian-diffusion samplers; this model is an interpolant \
                         (samplers: {TRANSPORT_SAMPLERS})"
                    );
                }
                Ok(Self::Interpolant(TransportSampler::named(name.unwrap_or("sde"), steps, &o.transport)?))
            }
        }
    }

    /// A fast sampler of `process` for previews and training grids: DPM-Solver++(2M) with 25
    /// steps, or Heun's ODE solver over 25 time points (48 calls).
    pub fn preview(process: &Process) -> Self {
        match process {
            Process::Diffusion(_) => Self::diffusion(Sampler::DpmSolverPp2M, 25),
            Process::Interpolant(_) => Self::Interpolant(TransportSampler::Ode {
                method: crate::transport::integrators::OdeMethod::Heun2,
                num_steps: 25,
                reverse: false,
            }),
        }
    }

    /// The diffusion sampler `sampler` over `steps` steps on its own schedule.
    pub fn diffusion(sampler: Sampler, steps: usize) -> Self {
        Self::Diffusion { sampler, schedule: None, steps }
    }

    /// The sampler's name, as [`Method::named`] takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Diffusion { sampler, .. } => sampler.name(),
            Self::Interpolant(s) => s.name(),
        }
    }

    /// Steps (diffusion) or time points (interpolant).
    pub fn steps(&self) -> usize {
        match self {
            Self::Diffusion { steps, .. } => *steps,
            Self::Interpolant(s) => s.steps(),
        }
    }

    /// Where a diffusion sampler calls the model on `process` (an error for an interpolant).
    pub fn plan(&self, process: &Process) -> Result<Plan> {
        match (self, process) {
            (Self::Diffusion { sampler, schedule, steps }, Process::Diffusion(d)) => sampler.plan(d, *steps, *schedule),
            _ => bail!("{} is not a sampler of this model's process", self.name()),
        }
    }

    /// The model time of every denoiser call, when known before the run (dopri5 chooses its
    /// steps as it goes).
    pub fn call_times(&self, process: &Process) -> Result<Option<Vec<f64>>> {
        Ok(match (self, process) {
            (Self::Interpolant(s), Process::Interpolant(transport)) => s.call_times(transport),
            _ => Some(self.plan(process)?.call_times()),
        })
    }
}

/// Everything that decides what sample i looks like.
#[derive(Clone, Debug)]
pub struct Settings {
    pub method: Method,
    pub guidance: Guidance,
    pub seed: u64,
    pub classes: Classes,
}

impl Settings {
    /// Checks the settings against a model and its process.
    pub fn validate(&self, config: &ModelConfig, process: &Process) -> Result<()> {
        match (&self.method, process) {
            (Method::Diffusion { steps, sampler, .. }, Process::Diffusion(_)) => {
                if *steps == 0 {
                    bail!("--steps must be at least 1");
                }
                if let Sampler::Ddim { eta } = sampler
                    && !(0.0..=1.0).contains(eta)
                {
                    bail!("--eta must be between 0 and 1, got {eta}");
                }
            }
            (Method::Interpolant(s), Process::Interpolant(_)) => s.validate()?,
            (Method::Diffusion { sampler, .. }, Process::Interpolant(_)) => bail!(
                "this model is an interpolant (SiT's process): sample it with {TRANSPORT_SAMPLERS}, not {}",
                sampler.name()
            ),
            (Method::Interpolant(s), Process::Diffusion(_)) => bail!(
                "this model is a Gaussian-diffusion model: sample it with ancestral, ddim, dpm++, unipc or heun, not {}",
                s.name()
            ),
        }
        self.method.call_times(process)?;
        let scale = self.guidance.scale;
        if !(scale >= 1.0) {
            bail!("--cfg-scale must be at least 1 (1 = no guidance), got {scale}");
        }
        if !scale.is_finite() {
            bail!("--cfg-scale must be a finite number, got {scale}");
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

    /// The channels guidance mixes: the asked-for ones, else the model's.
    fn guided_channels(&self, config: &ModelConfig) -> usize {
        self.guidance.channels.unwrap_or(config.guided_channels())
    }

    /// The class of each of samples `first..first + count`.
    pub fn labels(&self, first: usize, count: usize, num_classes: usize) -> Vec<i64> {
        (first..first + count).map(|i| self.classes.label(self.seed, i, num_classes) as i64).collect()
    }
}

/// A model ready to sample: the denoiser (FFN merged), its configuration, process, codec and
/// class names.
pub struct SamplingModel {
    pub model: Denoiser,
    pub config: ModelConfig,
    pub process: ProcessSpec,
    pub codec: Codec,
    pub names: ClassNames,
}

impl SamplingModel {
    /// A generator of `settings` on the model's process.
    pub fn generator(&self, settings: Settings, device: Device) -> Result<Generator<'_>> {
        Ok(Generator {
            model: &self.model,
            config: &self.config,
            codec: &self.codec,
            process: self.process.process()?,
            settings,
            device,
        })
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
    pub process: Process,
    pub settings: Settings,
    pub device: Device,
}

impl Generator<'_> {
    /// Checks the settings against the model before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.settings.validate(self.config, &self.process)?;
        self.codec.image_shape(self.config.in_channels(), self.config.input_size())?;
        Ok(())
    }

    pub fn image_shape(&self) -> (usize, usize) {
        self.codec.image_shape(self.config.in_channels(), self.config.input_size()).expect("validated")
    }

    /// Denoiser calls per image, when known before the run.
    pub fn calls(&self) -> Result<Option<usize>> {
        Ok(self.settings.method.call_times(&self.process)?.map(|t| t.len()))
    }

    /// Network evaluations per image, when known before the run.
    pub fn evaluations(&self) -> Result<Option<Evaluations>> {
        let times = self.settings.method.call_times(&self.process)?;
        Ok(times.map(|t| self.settings.guidance.evaluations(&t, &self.process)))
    }

    /// Latents of samples `first..first + count` and their labels. `on_step` is told after
    /// each denoiser call, with the current x_0 prediction; an error from it (a cancelled job)
    /// stops the sampling.
    pub fn generate_latents(&self, first: usize, count: usize, on_step: &mut OnStep) -> Result<(Tensor<4>, Vec<i64>)> {
        let s = &self.settings;
        let dev = &self.device;
        let (c, side) = (self.config.in_channels(), self.config.input_size());
        let labels = s.labels(first, count, self.config.num_classes());
        let mut network = |x, t, y| forward_by_core(&self.model, x, t, y);
        let mut denoiser = GuidedDenoiser {
            network: &mut network,
            labels: Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [count]), dev),
            null_class: self.config.num_classes(),
            guidance: &s.guidance,
            channels: s.guided_channels(self.config),
            process: &self.process,
        };
        let mut noise = NoiseStreams::new(s.seed, first, count, [c, side, side]);
        let x_t = noise.next(dev);
        let model = &mut |x, t| denoiser.call(x, t);
        let z = match (&s.method, &self.process) {
            (Method::Interpolant(sampler), Process::Interpolant(transport)) => {
                sampler.run(transport, model, x_t, &mut || noise.next(dev), on_step)?
            }
            _ => self.settings.method.plan(&self.process)?.run(model, x_t, &mut noise, dev, on_step)?,
        };
        Ok((z, labels))
    }

    /// Samples `first..first + count` as uint8 images (see [`Self::generate_latents`]).
    pub fn generate(&self, first: usize, count: usize, on_step: &mut OnStep) -> Result<Images> {
        crate::on_workers(|| {
            let (z, labels) = self.generate_latents(first, count, on_step)?;
            Ok(self.decode(z, labels))
        })
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

/// `model.forward` with the batch split into one shard a core on the CPU
/// ([`crate::on_cores`]; whole under CUDA): every sample's output is computed as it would
/// be alone (the kernels are batch-independent), so the bytes do not change, while a small
/// model's call no longer waits on sequential stretches and thread hand-offs (the bundled
/// model's forward at batch 32: a fifth faster).
pub fn forward_by_core(model: &Denoiser, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
    let batch = x.dims()[0];
    let shards = crate::core_shards(batch);
    if shards <= 1 {
        return model.forward(x, t, y);
    }
    let outputs = crate::on_cores(batch, shards, |r| {
        let (first, n) = (r.start, r.len());
        model.forward(x.clone().narrow(0, first, n), t.clone().narrow(0, first, n), y.clone().narrow(0, first, n))
    });
    Tensor::cat(outputs, 0)
}

/// Progress in images, counted per image and denoiser call, with a "decoding" phase while a
/// finished batch goes through the codec. A run whose calls are not known before (dopri5)
/// counts against its time points, an estimate.
fn sampling_progress(g: &Generator, images: usize) -> Result<Progress> {
    let calls = g.calls()?.unwrap_or(g.settings.method.steps());
    Ok(Progress::fine("sampling", (images * calls) as u64, "images", calls as u64))
}

/// Generates one batch (number `b` of `batches`) while `progress` counts its calls, says
/// which call of which batch runs, and names the decoding phase.
fn generate_batch(
    g: &Generator,
    first: usize,
    n: usize,
    (b, batches): (usize, usize),
    progress: &Progress,
) -> Result<Images> {
    let calls = g.calls()?;
    let (mut call, start) = (0, std::time::Instant::now());
    let of_calls = calls.map_or(String::new(), |c| format!("/{c}"));
    progress.phase("sampling");
    let images = g.generate(first, n, &mut |_| {
        call += 1;
        let per_call = start.elapsed().as_secs_f64() / call as f64;
        progress.set_message(format!("batch {b}/{batches}, call {call}{of_calls} ({per_call:.2} s a call)"));
        progress.inc(n as u64);
        if Some(call) == calls {
            progress.phase("decoding");
        }
        Ok(())
    })?;
    Ok(images)
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
    let older = older_pngs(out, count);
    if older > 0 {
        progress.println(&format!(
            "warning: {} holds {older} PNGs of an earlier run (numbered from {count} on), which this run leaves as \
             they are",
            out.display()
        ));
    }
    let mut grid: Option<Images> = None;
    let batches = count.div_ceil(batch);
    for (b, first) in (0..count).step_by(batch).enumerate() {
        let n = batch.min(count - first);
        let images = generate_batch(g, first, n, (b + 1, batches), &progress)?;
        write_pngs(out, first, &images)?;
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
    let batches = pending.len();
    for (i, &b) in pending.iter().enumerate() {
        let range = run.range(b);
        let images = generate_batch(g, range.start, range.len(), (i + 1, batches), &progress)?;
        run.save_part(b, &images)?;
    }
    progress.finish();
    run.merge()
}
