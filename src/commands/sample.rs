//! `udit sample` and `udit merge-npz`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::Args;

use crate::checkpoint::{self, Weights, read_weights};
use crate::classes::ClassNames;
use crate::codec::{Codec, codec_spec};
use crate::guidance::{Guidance, GuidanceInterval, parse_cfg_channels};
use crate::io::npz::{NpzRun, parse_shard};
use crate::model::{ModelChoice, ModelConfig};
use crate::precision::{Precision, autocast};
use crate::process::ProcessSpec;
use crate::progress::plural;
use crate::sample::{
    Classes, Method, Record, SamplerOptions, SamplingModel, Settings, default_cfg_scale, run_npz, run_pngs,
};
use crate::transport::sampling::TransportOptions;

/// The model flags of `udit sample`, `udit serve` and `udit sweep`: weights, configuration
/// and codec.
#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Weights: .safetensors, .pt, or hf://OWNER/REPO/FILE. Default: the bundled
    /// Fashion-MNIST U-DiT (assets/).
    #[arg(long)]
    pub ckpt: Option<String>,
    /// Which state dict of a training checkpoint (default: ema, else model).
    #[arg(long)]
    pub entry: Option<String>,
    /// Pixel codec: a diffusers AutoencoderKL directory or hf://OWNER/REPO, `none`
    /// (pixel space) or `unshuffle2` (2x space-to-depth). Default for 4-channel models:
    /// hf://stabilityai/sd-vae-ft-ema.
    #[arg(long, alias = "vae")]
    pub codec: Option<String>,
    /// The interpolant's path the weights were trained on: Linear, GVP or VP (SiT's
    /// `--path-type`). Default: the one stored with the weights, else Linear for SiT models.
    #[arg(long, value_name = "PATH")]
    pub path_type: Option<String>,
    /// What the interpolant network predicts: velocity, score or noise (SiT's `--prediction`).
    /// Default: stored with the weights, else velocity for SiT models.
    #[arg(long, value_name = "WHAT")]
    pub prediction: Option<String>,
}

/// Weights read, with their configuration and class names, before the network and codec are
/// built: settings can be refused first, before the slow part (and any VAE download).
pub struct ReadModel {
    /// The weights file (downloaded, for `hf://`).
    pub path: PathBuf,
    weights: Weights,
    pub config: ModelConfig,
    pub process: ProcessSpec,
    pub names: ClassNames,
    codec: String,
}

impl ModelArgs {
    /// Reads the weights (the bundled model by default) with their stored configuration
    /// (unless one is named), class names and codec.
    pub fn read(&self) -> Result<ReadModel> {
        let ckpt = match &self.ckpt {
            Some(c) => crate::hub::resolve(c, &[])?,
            None if self.model.is_given() => bail!(
                "--model and --config describe the weights of --ckpt, which is missing (without it the bundled \
                 Fashion-MNIST model runs, with its own configuration)"
            ),
            None => PathBuf::from(crate::BUNDLED_MODEL),
        };
        let weights = read_weights(&ckpt, self.entry.as_deref())?;
        let config = self.model.resolve(weights.config.as_ref())?;
        let stored = ProcessSpec::of_weights(&weights.metadata, &config)?;
        let (path_type, prediction) = (self.path_type.as_deref(), self.prediction.as_deref());
        let process = stored.clone().overridden(None, path_type, prediction, None)?;
        // Weights that record their process sample with it: another one would only draw noise.
        if weights.metadata.contains_key(crate::process::PROCESS_METADATA_KEY) && process != stored {
            bail!(
                "the weights were trained as {}; --path-type and --prediction describe another process",
                stored.describe()
            );
        }
        let names = ClassNames::for_model(&weights.metadata, config.num_classes())?;
        let codec = codec_spec(self.codec.as_deref(), weights.codec.as_deref(), config.in_channels());
        Ok(ReadModel { path: ckpt, weights, config, process, names, codec })
    }
}

impl ReadModel {
    /// Builds the denoiser (FFN merged) and opens the codec.
    pub fn load(self, device: &Device) -> Result<SamplingModel> {
        let model = checkpoint::load_denoiser(&self.config, &self.weights, device)?.merged();
        let codec = Codec::open(&self.codec, device)?;
        Ok(SamplingModel { model, config: self.config, process: self.process, codec, names: self.names })
    }

    /// The denoiser (FFN merged) on the autodiff device `autodiff`, for gradients with respect
    /// to its input.
    pub fn load_for_gradients(&self, autodiff: &Device) -> Result<crate::model::Denoiser> {
        Ok(checkpoint::load_denoiser(&self.config, &self.weights, autodiff)?.merged())
    }

    /// The model's codec (a VAE may download on first use).
    pub fn open_codec(&self, device: &Device) -> Result<Codec> {
        Codec::open(&self.codec, device)
    }
}

/// `--cfg-channels` resolved against the model (None: its configuration's).
pub fn cfg_channels(text: Option<&str>, config: &ModelConfig) -> Result<Option<usize>> {
    text.map(|t| parse_cfg_channels(t, config.in_channels())).transpose()
}

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Classes, comma-separated indices or names (cycled over the samples), `all` (every class
    /// in turn), or `random`. The bundled model's: t-shirt/top, trouser, pullover, dress, coat,
    /// sandal, shirt, sneaker, bag, ankle boot (0-9); ImageNet models take lemmas such as
    /// "golden retriever".
    #[arg(long = "class", default_value = "random")]
    pub classes: String,
    /// Classifier-free guidance scale (1 = none). Default 1.5, the paper's, for models with
    /// a null class.
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// Guide only at noise levels sigma = sqrt((1 - abar) / abar) in (LO, HI]; elsewhere the
    /// conditional batch runs alone, at half the cost. `none`: at every step (the reference's
    /// protocol, which the paper's numbers use). The flag alone: Kynkäänniemi et al. 2024's
    /// interval for DiT-XL/2, 0.34,1.02 (tuned there for guidance 2.5).
    #[arg(long, value_name = "LO,HI", default_value = "none", num_args = 0..=1,
          default_missing_value = crate::guidance::PAPER_INTERVAL)]
    pub guidance_interval: String,
    /// Output channels guidance mixes: a count (3 is the reference's choice for its 4-channel
    /// latent models) or `all`. Default: the model configuration's `cfg_channels`.
    #[arg(long, value_name = "N")]
    pub cfg_channels: Option<String>,
    /// Gaussian-diffusion models: ancestral (the reference, 250 steps), ddim, dpm++
    /// (DPM-Solver++(2M)), unipc (UniPC, 3rd-order predictor + corrector) or heun (EDM's
    /// 2nd-order method, 2 calls per step). Interpolants (SiT): sde (Euler-Maruyama, the SiT
    /// paper's), sde-heun, or the ODE solvers euler, heun2, rk4, dopri5 (adaptive). Default:
    /// ancestral, or sde for interpolants.
    #[arg(long)]
    pub sampler: Option<String>,
    /// Sampler steps (default: 250 for ancestral, 13 for heun (25 calls), 25 for the other
    /// diffusion samplers; for interpolants the time points: 250 for the SDEs, 50 for the ODEs).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Time steps of ddim, dpm++, unipc and heun: time-uniform, logsnr or karras. Default:
    /// karras for heun, time-uniform for the others (ddim's is the reference's respacing).
    #[arg(long)]
    pub schedule: Option<String>,
    /// DDIM eta (default 0: deterministic).
    #[arg(long)]
    pub eta: Option<f64>,
    #[command(flatten)]
    pub transport: TransportArgs,
    /// Seed of every sample's noise (and random class): sample i is the same in any batch or shard.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples per batch (does not change the samples, only speed and memory). Default: from
    /// the model's cost (U-DiT-B 8, U-DiT-S through a VAE 8, the bundled model 128).
    #[arg(long)]
    pub batch: Option<usize>,
    /// How many samples.
    #[arg(long, default_value_t = 16)]
    pub num_samples: usize,
    /// Output directory for PNGs and grid.png.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// Samples per row of grid.png (default: a square grid). With `--class 0,1,...,9` and
    /// 10 columns, each column is one class.
    #[arg(long)]
    pub grid_cols: Option<usize>,
    /// Write an ADM-format .npz instead of PNGs (resumable; see --shard).
    #[arg(long)]
    pub npz: Option<PathBuf>,
    /// i/n: run only batches b with b mod n = i (then `udit merge-npz`, or the last shard merges).
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Compute precision of the matmul-like ops: f32, bf16 or f16 (autocast; weights stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

/// The knobs of the interpolant samplers (SiT's `sample.py` flags).
#[derive(Args, Clone, Debug, Default)]
pub struct TransportArgs {
    /// SDE samplers: the diffusion coefficient w_t: constant, SBDM, sigma, linear or
    /// decreasing (default sigma, the SiT paper's).
    #[arg(long, value_name = "FORM")]
    pub diffusion_form: Option<String>,
    /// SDE samplers: the magnitude of w_t (default 1).
    #[arg(long, value_name = "NORM")]
    pub diffusion_norm: Option<f64>,
    /// SDE samplers: the step to t = 1: Mean, Tweedie, Euler or none (default Mean).
    #[arg(long, value_name = "STEP")]
    pub last_step: Option<String>,
    /// SDE samplers: the size of the last step (default 0.04).
    #[arg(long, value_name = "H")]
    pub last_step_size: Option<f64>,
    /// dopri5: absolute tolerance (default 1e-6).
    #[arg(long)]
    pub atol: Option<f64>,
    /// dopri5: relative tolerance (default 1e-3).
    #[arg(long)]
    pub rtol: Option<f64>,
}

impl TransportArgs {
    pub fn options(&self) -> Result<TransportOptions> {
        Ok(TransportOptions {
            diffusion_form: self.diffusion_form.as_deref().map(str::parse).transpose()?,
            diffusion_norm: self.diffusion_norm,
            last_step: self.last_step.as_deref().map(str::parse).transpose()?,
            last_step_size: self.last_step_size,
            atol: self.atol,
            rtol: self.rtol,
        })
    }
}

/// `udit sample`: loads the weights (the bundled model by default) with their stored
/// configuration, codec and class names, then writes PNGs and a grid, or an `.npz` shard.
pub fn sample(a: SampleArgs) -> Result<()> {
    let device = crate::default_device();
    let _autocast = autocast(a.precision);
    let read = a.model.read()?;
    let options = SamplerOptions {
        schedule: a.schedule.as_deref().map(str::parse).transpose()?,
        eta: a.eta,
        transport: a.transport.options()?,
    };
    let method = Method::named(&read.process.process()?, a.sampler.as_deref(), a.steps, &options)?;
    let interval = GuidanceInterval::parse(&a.guidance_interval)?;
    let (shard, shards) = parse_shard(&a.shard)?;
    if a.batch == Some(0) || a.num_samples == 0 {
        bail!("--batch and --num-samples must be at least 1");
    }
    if a.grid_cols == Some(0) {
        bail!("--grid-cols must be at least 1");
    }
    if a.npz.is_none() && (shard, shards) != (0, 1) {
        bail!("--shard splits an --npz run; PNG runs write every sample");
    }
    if let Some(npz) = a.npz.as_ref().filter(|p| p.is_dir()) {
        bail!("--npz names a file to write; {} is a directory", npz.display());
    }
    if a.npz.is_some() && a.grid_cols.is_some() {
        bail!("--grid-cols shapes grid.png, which an --npz run does not write");
    }
    let settings = Settings {
        method,
        guidance: Guidance {
            scale: a.cfg_scale.unwrap_or(default_cfg_scale(&read.config)),
            interval,
            channels: cfg_channels(a.cfg_channels.as_deref(), &read.config)?,
        },
        seed: a.seed,
        classes: Classes::parse(&a.classes, &read.names, read.config.num_classes())?,
    };
    let (path, codec) = (read.path.clone(), read.codec.clone());
    let loaded = read.load(&device)?;
    let batch = a.batch.unwrap_or(loaded.default_batch());
    let g = loaded.generator(settings, device)?;
    g.validate()?;
    let record = Record::new(&g, &loaded.process, &path, &codec, (a.num_samples, batch))?;
    match a.npz {
        Some(npz) => {
            let run = NpzRun { npz, num_samples: a.num_samples, batch };
            if run_npz(&g, &run, shard, shards)? {
                let settings = run.settings_path();
                record.write(&settings)?;
                eprintln!(
                    "wrote {} samples to {} (settings: {})",
                    a.num_samples,
                    run.npz.display(),
                    settings.display()
                );
            } else {
                eprintln!("shard {shard}/{shards} done; other batches are missing in {}", run.parts_dir().display());
            }
        }
        None => {
            run_pngs(&g, &a.out, a.num_samples, batch, a.grid_cols, &loaded.names)?;
            record.write(&a.out.join("settings.json"))?;
            eprintln!("wrote {}, grid.png and settings.json to {}", plural(a.num_samples, "PNG"), a.out.display());
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct MergeArgs {
    /// The `.npz` that `udit sample --npz` was writing.
    #[arg(long)]
    pub npz: PathBuf,
    /// The run's --num-samples.
    #[arg(long)]
    pub num_samples: usize,
    /// The run's --batch (it names the parts). Default: the size the parts' names carry.
    #[arg(long)]
    pub batch: Option<usize>,
}

pub fn merge_npz(a: MergeArgs) -> Result<()> {
    let parts = NpzRun { npz: a.npz.clone(), num_samples: a.num_samples, batch: 1 }.parts_dir();
    let batch = match a.batch {
        Some(batch) => batch,
        None if parts.is_dir() => NpzRun::batch_of_parts(&a.npz)?,
        // No parts: merge_npz says whether the .npz is complete or there is nothing to merge.
        None => 1,
    };
    let run = NpzRun { npz: a.npz, num_samples: a.num_samples, batch };
    eprintln!("{}", crate::io::npz::merge_npz(&run)?);
    Ok(())
}
