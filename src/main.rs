//! The `udit` command line: each subcommand parses its arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::{Args, Parser, Subcommand};
use udit::checkpoint::{self, read_weights};
use udit::cost::Cost;
use udit::model::{Denoiser, ModelConfig};
use udit::progress::Progress;

#[derive(Parser)]
#[command(name = "udit", version, about = "U-DiT: U-shaped diffusion transformers with downsampled tokens")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture summary, parameter count and MACs of one forward pass.
    Info(InfoArgs),
    /// One denoiser forward pass on tensors `x`, `t`, `y` from a safetensors file.
    Forward(ForwardArgs),
    /// Convert a PyTorch checkpoint (or safetensors) to safetensors with the reference names.
    Convert(ConvertArgs),
    /// Time the forward pass (or a training step) of a model with fresh weights.
    Bench(BenchArgs),
    /// Generate images from a checkpoint: PNGs and a labelled grid, or an ADM `.npz`.
    Sample(SampleArgs),
    /// Merge the finished batches of a sharded `sample --npz` run into the `.npz`.
    MergeNpz(MergeArgs),
    /// FID, sFID, Inception Score, precision and recall of an ADM `.npz` against a reference;
    /// with `--features`, the offline Fashion-MNIST meter.
    Eval(EvalArgs),
    /// Train the offline meter's classifier (Fashion-MNIST).
    TrainClassifier(TrainClassifierArgs),
    /// Train a U-DiT (or DiT) with the reference recipe; resumable.
    Train(TrainArgs),
    /// Encode an ImageNet-layout folder to latents once (ADM center crop, SD VAE).
    ExtractFeatures(ExtractArgs),
    /// Draw the loss curve of a training log (`log.jsonl`) as a PNG.
    PlotLoss(PlotArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Run directory: checkpoints/, samples/, log.jsonl, recipe.json, model.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its newest checkpoint (its recipe; --steps may extend it).
    #[arg(long)]
    resume: bool,
    /// A recipe JSON (as written to OUT/recipe.json); flags below override its fields.
    #[arg(long)]
    recipe: Option<PathBuf>,
    #[command(flatten)]
    model: ModelChoice,
    /// fashion-mnist, image-folder (ImageNet layout) or latents.
    #[arg(long)]
    dataset: Option<String>,
    /// Directory of the dataset (default for fashion-mnist: Debian's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Crop size of image-folder data.
    #[arg(long, default_value_t = 256)]
    image_size: usize,
    /// Pixels <-> model space: a VAE (directory or hf://), `unshuffle2` or `none`. Default:
    /// hf://stabilityai/sd-vae-ft-ema for 4-channel models, else none.
    #[arg(long)]
    codec: Option<String>,
    /// Optimizer steps to train to (at least 1) [recipe default: 400000].
    #[arg(long)]
    steps: Option<u64>,
    /// Samples per optimizer step over all devices and accumulation rounds [recipe default: 256].
    #[arg(long)]
    global_batch: Option<usize>,
    /// Split each step into this many forward/backward rounds (same result, less memory)
    /// [recipe default: 1].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// AdamW learning rate after the warm-up [recipe default: 1e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// Steps of linear learning-rate warm-up from 0 [recipe default: 0].
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Clip the gradients' global L2 norm to this [recipe default: no clipping].
    #[arg(long)]
    grad_clip: Option<f64>,
    /// AdamW decoupled weight decay [recipe default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Decay of the EMA of the weights, updated every step [recipe default: 0.9999].
    #[arg(long)]
    ema_decay: Option<f64>,
    /// No random horizontal flips (Fashion-MNIST has none by default).
    #[arg(long)]
    no_hflip: bool,
    /// Seed of every random draw of the run (sample order, flips, t, noise, label dropout)
    /// [recipe default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Steps between lines of log.jsonl (averages over the window) [recipe default: 100].
    #[arg(long)]
    log_every: Option<u64>,
    /// Steps between checkpoints (and one at the end) [recipe default: 50000].
    #[arg(long)]
    ckpt_every: Option<u64>,
    /// Keep only the newest N checkpoints (0 = all) [recipe default: 0].
    #[arg(long)]
    keep_last: Option<usize>,
    /// Write an EMA sample grid every N steps (0 = only at the end) [recipe default: 0].
    #[arg(long)]
    sample_every: Option<u64>,
    /// GPUs to train on, data-parallel (needs --features cuda); the global batch is split
    /// evenly over them.
    #[arg(long, default_value_t = 1)]
    devices: usize,
}

#[derive(Args)]
struct ExtractArgs {
    /// ImageNet-layout folder (`CLASS/IMAGE` files).
    #[arg(long)]
    data_dir: PathBuf,
    /// Side of the ADM center crop, in pixels.
    #[arg(long, default_value_t = 256)]
    image_size: usize,
    /// The VAE (directory or hf://OWNER/REPO).
    #[arg(long, default_value = "hf://stabilityai/sd-vae-ft-ema")]
    vae: String,
    /// Output directory for latents.npy and labels.npy.
    #[arg(long)]
    out: PathBuf,
    /// Images per VAE encoding batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed of the VAE posterior samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct PlotArgs {
    /// A `udit train` log.jsonl.
    log: PathBuf,
    /// Where to write the PNG.
    #[arg(long, default_value = "loss.png")]
    out: PathBuf,
    /// A TrueType font for the labels.
    #[arg(long, default_value = udit::train::plot::DEFAULT_FONT)]
    font: PathBuf,
}

#[derive(Args)]
struct TrainClassifierArgs {
    /// The dataset (only fashion-mnist).
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Directory of the IDX files.
    #[arg(long, default_value = udit::data::fashion_mnist::DEFAULT_DIR)]
    data: PathBuf,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the classifier's weights.
    #[arg(long, default_value = "classifier.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    /// Samples: ADM `.npz` with `arr_0` uint8 [N, H, W, C].
    samples: PathBuf,
    /// Reference batch: `arr_0` images and/or precomputed `mu`, `sigma`, `mu_s`, `sigma_s`
    /// (e.g. ADM's VIRTUAL_imagenet256_labeled.npz). Not used with --features.
    reference: Option<PathBuf>,
    /// Offline meter: FID in this `udit train-classifier` model's feature space against the
    /// Fashion-MNIST test split, and the class accuracy of the samples' `arr_1` labels.
    #[arg(long)]
    features: Option<PathBuf>,
    /// Fashion-MNIST directory, for --features.
    #[arg(long, default_value = udit::data::fashion_mnist::DEFAULT_DIR)]
    data: PathBuf,
    /// pytorch-fid's FID Inception weights (default: $UDIT_INCEPTION, else
    /// pt_inception-2015-12-05-6726825d.pth in the current directory).
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Also save the samples' statistics (and pool features) to this `.npz`, for reuse as a
    /// reference.
    #[arg(long)]
    save_stats: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Weights: .safetensors, .pt, or hf://OWNER/REPO/FILE. Default: the bundled
    /// Fashion-MNIST U-DiT (assets/).
    #[arg(long)]
    ckpt: Option<String>,
    /// Which state dict of a training checkpoint (default: ema, else model).
    #[arg(long)]
    entry: Option<String>,
    /// Pixel codec: a diffusers AutoencoderKL directory or hf://OWNER/REPO, `none`
    /// (pixel space) or `unshuffle2` (2x space-to-depth). Default for 4-channel models:
    /// hf://stabilityai/sd-vae-ft-ema.
    #[arg(long)]
    vae: Option<String>,
    /// Classes, comma-separated indices or names (cycled over the samples), or `random`.
    /// The bundled model's: t-shirt/top, trouser, pullover, dress, coat, sandal, shirt,
    /// sneaker, bag, ankle boot (0-9); ImageNet models take lemmas such as "golden retriever".
    #[arg(long = "class", default_value = "random")]
    classes: String,
    /// Classifier-free guidance scale (1 = none). Default 1.5, the paper's, for models with
    /// a null class.
    #[arg(long)]
    cfg_scale: Option<f64>,
    /// ancestral (the reference, 250 steps), ddim, or dpm++ (DPM-Solver++(2M), 25 steps).
    #[arg(long, default_value = "ancestral")]
    sampler: String,
    /// Denoiser calls (default: 250 for ancestral, 25 otherwise).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Seed of every sample's noise (and random class): sample i is the same in any batch or shard.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per batch (does not change the samples, only speed and memory).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// How many samples.
    #[arg(long, default_value_t = 16)]
    num_samples: usize,
    /// Output directory for PNGs and grid.png.
    #[arg(long, default_value = "samples")]
    out: PathBuf,
    /// Samples per row of grid.png (default: a square grid). With `--class 0,1,...,9` and
    /// 10 columns, each column is one class.
    #[arg(long)]
    grid_cols: Option<usize>,
    /// Write an ADM-format .npz instead of PNGs (resumable; see --shard).
    #[arg(long)]
    npz: Option<PathBuf>,
    /// i/n: run only batches b with b mod n = i (then `udit merge-npz`, or the last shard merges).
    #[arg(long, default_value = "0/1")]
    shard: String,
}

#[derive(Args)]
struct MergeArgs {
    /// The `.npz` that `udit sample --npz` was writing.
    #[arg(long)]
    npz: PathBuf,
    /// The run's --num-samples.
    #[arg(long)]
    num_samples: usize,
    /// The run's --batch (it names the parts).
    #[arg(long, default_value_t = 8)]
    batch: usize,
}

/// Which model: a preset name or a JSON configuration file.
#[derive(Args)]
struct ModelChoice {
    /// Preset: U-DiT-S, U-DiT-B, U-DiT-L, DiT-{S,B,L,XL}/{2,4,8}.
    #[arg(long, conflicts_with = "config")]
    model: Option<String>,
    /// JSON object of reference constructor arguments plus "arch": "u-dit" or "dit".
    #[arg(long)]
    config: Option<PathBuf>,
    /// Latent side (overrides the configuration's input_size).
    #[arg(long)]
    latent_size: Option<usize>,
}

impl ModelChoice {
    /// The configuration asked for, or the one stored in `weights`, or an error.
    fn resolve(&self, stored: Option<&ModelConfig>) -> Result<ModelConfig> {
        let cfg = match (&self.model, &self.config, stored) {
            (Some(name), _, _) => ModelConfig::preset(name)?,
            (None, Some(path), _) => ModelConfig::from_file(path)?,
            (None, None, Some(cfg)) => cfg.clone(),
            (None, None, None) => bail!("say which model: --model NAME or --config FILE.json (the weights carry none)"),
        };
        match self.latent_size {
            Some(side) => cfg.with_input_size(side),
            None => Ok(cfg),
        }
    }
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Weights whose stored configuration and class names to describe. Default, when no
    /// model is named: the bundled Fashion-MNIST U-DiT.
    #[arg(long)]
    ckpt: Option<String>,
    /// Print one JSON object with `params`, `params_merged`, `macs`.
    #[arg(long)]
    json: bool,
    /// List every class name (short lists are always shown).
    #[arg(long)]
    classes: bool,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Weights: .safetensors or PyTorch .pt (state dict or training checkpoint).
    #[arg(long)]
    weights: PathBuf,
    /// Which state dict of a training checkpoint (default: ema, else model).
    #[arg(long)]
    entry: Option<String>,
    /// Safetensors with `x` [N,C,H,W], `t` [N] and `y` [N].
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write `out`.
    #[arg(long)]
    output: PathBuf,
    /// Run the re-parametrized FFN in its training form instead of merging it.
    #[arg(long)]
    train_form: bool,
    /// Classifier-free guidance scale: the batch is [conditional; null-class] halves.
    #[arg(long)]
    cfg_scale: Option<f64>,
}

#[derive(Args)]
struct ConvertArgs {
    /// Input weights (.pt or .safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Which state dict of a training checkpoint (default: ema, else model).
    #[arg(long)]
    entry: Option<String>,
    /// Output .safetensors.
    #[arg(long)]
    output: PathBuf,
    /// Merge the re-parametrized FFN branches (needs --model or --config).
    #[arg(long)]
    merge: bool,
    #[command(flatten)]
    model: ModelChoice,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelChoice,
    /// Samples per forward pass (or training step).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Time forward + backward + AdamW step instead of the forward pass.
    #[arg(long)]
    train: bool,
    /// Timed runs (best and median are reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed runs first (allocation and cache warm-up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print one JSON object with `best_ms`, `median_ms`, `gflops`.
    #[arg(long)]
    json: bool,
    /// Instead: time per image of guided sampling (one guided step plus SD-VAE decode)
    /// for these step counts, e.g. `--sample-steps 250,25`.
    #[arg(long, value_delimiter = ',')]
    sample_steps: Vec<usize>,
}

fn main() -> ExitCode {
    udit::tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => info(a),
        Command::Forward(a) => forward(a),
        Command::Convert(a) => convert(a),
        Command::Bench(a) => bench(a),
        Command::Sample(a) => sample(a),
        Command::MergeNpz(a) => merge_npz(a),
        Command::Eval(a) => eval(a),
        Command::TrainClassifier(a) => train_classifier(a),
        Command::Train(a) => train(a),
        Command::ExtractFeatures(a) => extract_features(a),
        Command::PlotLoss(a) => udit::train::plot::plot_loss(&a.log, &a.out, &a.font)
            .map(|()| eprintln!("wrote the loss curve of {} to {}", a.log.display(), a.out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn info(a: InfoArgs) -> Result<()> {
    let named = a.model.model.is_some() || a.model.config.is_some();
    let weights = match (&a.ckpt, named) {
        (Some(c), _) => Some(read_weights(&udit::hub::resolve(c, &[])?, None)?),
        (None, false) => Some(read_weights(std::path::Path::new(udit::BUNDLED_MODEL), None)?),
        (None, true) => None,
    };
    let cfg = a.model.resolve(weights.as_ref().and_then(|w| w.config.as_ref()))?;
    let cost = Cost::of(&cfg);
    if a.json {
        println!("{}", serde_json::to_string(&cost)?);
        return Ok(());
    }
    println!("{}", udit::model::describe(&cfg));
    let training_form = if cost.params != cost.params_merged {
        format!(" (training form {:.2}M)", cost.params as f64 / 1e6)
    } else {
        String::new()
    };
    println!("parameters      {:>10.2}M{training_form}", cost.params_merged as f64 / 1e6);
    let s = cfg.input_size();
    println!("forward GMACs   {:>10.2} (batch 1, {s}x{s} latent)", cost.macs as f64 / 1e9);
    let metadata = weights.map(|w| w.metadata).unwrap_or_default();
    let names = udit::classes::ClassNames::for_model(&metadata, cfg.num_classes())?;
    if a.classes || (!names.is_empty() && names.names().len() <= 20) {
        println!("classes (`udit sample --class` takes the index or a name):");
        for (i, name) in names.names().iter().enumerate() {
            println!("{i:>5}  {name}");
        }
    } else if !names.is_empty() {
        println!("classes: {} named (`udit info --classes` lists them)", names.names().len());
    }
    Ok(())
}

fn forward(a: ForwardArgs) -> Result<()> {
    let device = udit::default_device();
    let weights = read_weights(&a.weights, a.entry.as_deref())?;
    let cfg = a.model.resolve(weights.config.as_ref())?;
    let mut model = checkpoint::load_denoiser(&cfg, &weights, &device)?;
    if !a.train_form {
        model = model.merged();
    }
    let inputs = read_weights(&a.inputs, None).context("reading --inputs")?.tensors;
    let (x, t, y) = udit::model::inputs_from(&inputs, &cfg, &device)?;
    let out = match a.cfg_scale {
        Some(s) => {
            let n = x.dims()[0];
            if n % 2 != 0 {
                bail!("--cfg-scale needs an even batch ([conditional; null-class] halves), got {n}");
            }
            if !cfg.has_null_class() {
                bail!("this model has no null class (class_dropout_prob 0), so it cannot be guided");
            }
            model.forward_with_cfg(x, t, y, s, cfg.guided_channels())
        }
        None => model.forward(x, t, y),
    };
    let out = checkpoint::StateDict::from([("out".to_string(), out.into_data())]);
    checkpoint::write_safetensors(&a.output, &out, vec![])?;
    eprintln!("wrote out {:?} to {}", out["out"].shape().to_vec(), a.output.display());
    Ok(())
}

fn convert(a: ConvertArgs) -> Result<()> {
    let weights = read_weights(&a.weights, a.entry.as_deref())?;
    let stored = weights.config.clone();
    let names = udit::classes::ClassNames::stored(&weights.metadata)?;
    let wants_model = a.merge || a.model.model.is_some() || a.model.config.is_some();
    if !wants_model {
        let meta = match &stored {
            Some(cfg) => checkpoint::model_metadata(cfg, weights.codec.as_deref(), &names)?,
            None => vec![],
        };
        checkpoint::write_safetensors(&a.output, &weights.tensors, meta)?;
        eprintln!("wrote {} tensors to {}", weights.tensors.len(), a.output.display());
        return Ok(());
    }
    if stored.is_none() && a.model.model.is_none() && a.model.config.is_none() {
        bail!("--merge needs the model: --model NAME or --config FILE.json (the weights carry none)");
    }
    let cfg = a.model.resolve(stored.as_ref())?;
    let device = Device::flex();
    let mut model: Denoiser = checkpoint::load_denoiser(&cfg, &weights, &device)?;
    if a.merge {
        model = model.merged();
    }
    let tensors = checkpoint::state_dict(&model);
    let meta = checkpoint::model_metadata(&cfg, weights.codec.as_deref(), &names)?;
    checkpoint::write_safetensors(&a.output, &tensors, meta)?;
    eprintln!(
        "wrote {} tensors{} to {}",
        tensors.len(),
        if a.merge { " (FFN merged)" } else { "" },
        a.output.display()
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let cfg = a.model.resolve(None)?;
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if !a.sample_steps.is_empty() {
        let c = udit::bench::sample_cost(&cfg, a.batch, a.warmup, a.iters, &udit::default_device());
        println!(
            "guided step (batch {} x2): {:.1} ms, SD-VAE decode of {} (random weights, same cost): {:.1} ms",
            a.batch, c.guided_step_ms, a.batch, c.decode_ms
        );
        for steps in a.sample_steps {
            println!("{steps} steps: {:.2} s per image", c.seconds_per_image(steps));
        }
        return Ok(());
    }
    let r = udit::bench::run(&cfg, a.batch, a.train, a.warmup, a.iters, &udit::default_device());
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let what = if a.train { "train step" } else { "forward" };
        println!(
            "{what} batch {}: best {:.1} ms, median {:.1} ms over {} runs, {:.1} GFLOP/s",
            a.batch, r.best_ms, r.median_ms, r.iters, r.gflops
        );
    }
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    use udit::classes::ClassNames;
    use udit::sample::{Classes, Codec, Generator, NpzRun, Settings};
    let device = udit::default_device();
    let ckpt = match &a.ckpt {
        Some(c) => udit::hub::resolve(c, &[])?,
        None => PathBuf::from(udit::BUNDLED_MODEL),
    };
    let weights = read_weights(&ckpt, a.entry.as_deref())?;
    let cfg = a.model.resolve(weights.config.as_ref())?;
    let vae_spec = match (a.vae.as_ref().or(weights.codec.as_ref()), cfg.in_channels()) {
        (Some(v), _) => v.clone(),
        (None, 4) => "hf://stabilityai/sd-vae-ft-ema".to_string(),
        (None, c) => bail!("say how to turn {c}-channel model outputs into images: --vae DIR|none|unshuffle2"),
    };
    let mut sampler: udit::diffusion::samplers::Sampler = a.sampler.parse()?;
    if let udit::diffusion::samplers::Sampler::Ddim { eta } = &mut sampler {
        *eta = a.eta;
    }
    let names = ClassNames::for_model(&weights.metadata, cfg.num_classes())?;
    let classes = Classes::parse(&a.classes, &names, cfg.num_classes())?;
    let (shard, shards) = a
        .shard
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .filter(|(i, n)| i < n)
        .with_context(|| format!("--shard must be i/n with i < n, got {:?}", a.shard))?;
    if a.batch == 0 || a.num_samples == 0 {
        bail!("--batch and --num-samples must be at least 1");
    }
    let settings = Settings {
        steps: a.steps.unwrap_or(sampler.default_steps()),
        sampler,
        cfg_scale: a.cfg_scale.unwrap_or(if cfg.has_null_class() { 1.5 } else { 1.0 }),
        seed: a.seed,
        classes,
    };
    let model = checkpoint::load_denoiser(&cfg, &weights, &device)?.merged();
    let codec = Codec::open(&vae_spec, &device)?;
    let g = Generator {
        model: &model,
        config: &cfg,
        codec: &codec,
        diffusion: udit::diffusion::GaussianDiffusion::linear(1000),
        settings,
        device,
    };
    g.validate()?;
    match a.npz {
        Some(npz) => {
            let run = NpzRun { npz, num_samples: a.num_samples, batch: a.batch };
            if udit::sample::run_npz(&g, &run, shard, shards)? {
                eprintln!("wrote {} samples to {}", a.num_samples, run.npz.display());
            } else {
                eprintln!("shard {shard}/{shards} done; other batches are missing in {}", run.parts_dir().display());
            }
        }
        None => {
            udit::sample::run_pngs(&g, &a.out, a.num_samples, a.batch, a.grid_cols, &names)?;
            let pngs = udit::progress::plural(a.num_samples, "PNG");
            eprintln!("wrote {pngs} and grid.png to {}", a.out.display());
        }
    }
    Ok(())
}

fn merge_npz(a: MergeArgs) -> Result<()> {
    let run = udit::sample::NpzRun { npz: a.npz, num_samples: a.num_samples, batch: a.batch };
    eprintln!("{}", udit::sample::merge_npz(&run)?);
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    use udit::eval::{Reference, activations, inception::InceptionV3, score};
    let device = udit::default_device();
    if let Some(path) = &a.features {
        use udit::data::fashion_mnist::{FashionMnist, Split};
        let samples = udit::sample::read_npz(&a.samples)?;
        let model = udit::eval::classifier::Classifier::load(path, &device)?;
        let test = FashionMnist::load(&a.data, Split::Test)?;
        let s = udit::eval::classifier::meter(&model, &samples, &test, &device)?;
        if a.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            println!("classifier FID {:.3}  class accuracy {:.4}", s.fid, s.class_accuracy);
        }
        return Ok(());
    }
    let reference_path = a.reference.clone().context("give a REFERENCE .npz (or --features for the offline meter)")?;
    let weights = a
        .inception
        .or_else(|| std::env::var_os("UDIT_INCEPTION").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("pt_inception-2015-12-05-6726825d.pth"));
    let net = InceptionV3::load(&weights, &device)?;
    let samples = udit::sample::read_npz(&a.samples)?;
    let features = |images: &udit::sample::Images, what: &str| {
        let n = images.labels.len();
        let progress = Progress::new(&format!("Inception features of {what}"), n as u64, "images");
        let out = activations(&net, images, a.batch, &device, &mut |m| progress.inc(m as u64));
        progress.finish();
        out
    };
    let reference = match Reference::read_stats(&reference_path)? {
        Some(mut r) => {
            // FID uses the stored statistics; precision/recall need the images' features.
            if r.pool3.is_none()
                && let Ok(images) = udit::sample::read_npz(&reference_path)
            {
                r.pool3 = Some(features(&images, "the reference")?.pool3);
            }
            r
        }
        None => Reference::from_activations(&features(&udit::sample::read_npz(&reference_path)?, "the reference")?)?,
    };
    let acts = features(&samples, "the samples")?;
    if let Some(path) = &a.save_stats {
        Reference::from_activations(&acts)?.write_stats(path)?;
    }
    let s = score(&acts, &reference)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        let opt = |v: Option<f64>| v.map_or("n/a (reference has no features)".to_string(), |v| format!("{v:.4}"));
        println!(
            "FID {:.3}  sFID {:.3}  IS {:.3}  precision {}  recall {}",
            s.fid,
            s.sfid,
            s.inception_score,
            opt(s.precision),
            opt(s.recall)
        );
    }
    Ok(())
}

fn train_classifier(a: TrainClassifierArgs) -> Result<()> {
    use udit::data::fashion_mnist::{FashionMnist, Split};
    if a.dataset != "fashion-mnist" {
        bail!("unknown dataset {:?}: only fashion-mnist", a.dataset);
    }
    let device = udit::default_device();
    let (train, test) = (FashionMnist::load(&a.data, Split::Train)?, FashionMnist::load(&a.data, Split::Test)?);
    let progress = Progress::new("training the classifier", (train.len().div_ceil(128) * a.epochs) as u64, "batches");
    let (model, acc) = udit::eval::classifier::train(
        &train,
        &test,
        a.epochs,
        None,
        a.seed,
        &device,
        &mut |epoch, acc| progress.println(&format!("epoch {epoch}: test accuracy {acc:.4}")),
        &mut || progress.inc(1),
    )?;
    progress.finish();
    model.save(&a.out)?;
    eprintln!("test accuracy {acc:.4}; wrote {}", a.out.display());
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    use udit::train::{RunDir, TrainConfig, TrainState};
    let devices: Vec<Device> = udit::devices(a.devices)?.into_iter().map(|d| d.autodiff()).collect();
    let device = devices[0].clone();
    let run = RunDir(a.out.clone());
    let mut state = if a.resume {
        let recipe_flags = a.recipe.is_some()
            || a.model.model.is_some()
            || a.model.config.is_some()
            || a.dataset.is_some()
            || a.codec.is_some()
            || a.global_batch.is_some()
            || a.lr.is_some()
            || a.seed.is_some();
        if recipe_flags {
            bail!("--resume continues the stored recipe; only --steps and the logging flags may change");
        }
        let last = run
            .list()?
            .pop()
            .with_context(|| format!("no checkpoints in {} to resume", run.checkpoints().display()))?;
        eprintln!("resuming from {}", last.display());
        TrainState::load(&last, &device)?
    } else {
        if !run.list()?.is_empty() {
            bail!("{} already holds checkpoints: pass --resume, or choose another --out", a.out.display());
        }
        let mut cfg = match &a.recipe {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                serde_json::from_str::<TrainConfig>(&text)
                    .with_context(|| format!("{} is not a valid recipe", path.display()))?
            }
            None => {
                let model = a.model.resolve(None)?;
                let dataset = a
                    .dataset
                    .as_deref()
                    .context("say what to train on: --dataset fashion-mnist|image-folder|latents")?;
                let data = data_spec(dataset, a.data_dir.clone(), a.image_size)?;
                let codec = match (&a.codec, model.in_channels()) {
                    (Some(c), _) => c.clone(),
                    (None, 4) => "hf://stabilityai/sd-vae-ft-ema".to_string(),
                    (None, _) => "none".to_string(),
                };
                TrainConfig::recipe(model, data, codec)
            }
        };
        if a.recipe.is_some() {
            if a.model.model.is_some() || a.model.config.is_some() {
                cfg.model = a.model.resolve(None)?;
            }
            if let Some(d) = &a.dataset {
                cfg.data = data_spec(d, a.data_dir.clone(), a.image_size)?;
            }
            if let Some(c) = &a.codec {
                cfg.codec = c.clone();
            }
        }
        set(&mut cfg.global_batch, a.global_batch);
        set(&mut cfg.lr, a.lr);
        set(&mut cfg.warmup_steps, a.warmup_steps);
        set(&mut cfg.adamw.weight_decay, a.weight_decay);
        set(&mut cfg.ema_decay, a.ema_decay);
        set(&mut cfg.seed, a.seed);
        cfg.grad_clip = a.grad_clip.or(cfg.grad_clip);
        cfg.hflip &= !a.no_hflip;
        TrainState::new(cfg, &device)?
    };
    let cfg = &mut state.config;
    set(&mut cfg.steps, a.steps);
    set(&mut cfg.grad_accum, a.grad_accum);
    set(&mut cfg.log_every, a.log_every);
    set(&mut cfg.ckpt_every, a.ckpt_every);
    set(&mut cfg.keep_last, a.keep_last);
    set(&mut cfg.sample_every, a.sample_every);
    cfg.validate()?;
    let (first, total) = (state.optim.step, state.config.steps);
    eprintln!("{}", udit::model::describe(&state.config.model));
    let progress = udit::progress::Progress::new("training", total, "steps");
    progress.set_position(first);
    let trainer = udit::train::train(state, &run, &devices, &progress)?;
    eprintln!(
        "trained to step {}; EMA model in {}, log in {}",
        trainer.state.optim.step,
        run.export().display(),
        run.log().display()
    );
    Ok(())
}

fn data_spec(dataset: &str, dir: Option<PathBuf>, image_size: usize) -> Result<udit::train::DataSpec> {
    use udit::train::DataSpec;
    let need = |d: Option<PathBuf>| d.with_context(|| format!("--dataset {dataset} needs --data-dir"));
    Ok(match dataset {
        "fashion-mnist" => {
            DataSpec::FashionMnist { dir: dir.unwrap_or_else(|| udit::data::fashion_mnist::DEFAULT_DIR.into()) }
        }
        "image-folder" => DataSpec::ImageFolder { dir: need(dir)?, image_size },
        "latents" => DataSpec::Latents { dir: need(dir)? },
        other => bail!("unknown dataset {other:?}: fashion-mnist, image-folder or latents"),
    })
}

fn extract_features(a: ExtractArgs) -> Result<()> {
    let device = udit::default_device();
    let progress = Progress::new("encoding", 0, "images");
    let n = udit::train::extract_features(
        &a.data_dir,
        a.image_size,
        &a.vae,
        &a.out,
        a.batch,
        a.seed,
        &device,
        &mut |done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        },
    )?;
    progress.finish();
    eprintln!("wrote {n} latents to {}", a.out.display());
    Ok(())
}

/// Overrides `dst` with a flag's value when the flag was given.
fn set<T>(dst: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *dst = v;
    }
}
