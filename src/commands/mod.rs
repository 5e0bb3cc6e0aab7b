//! What each `udit` subcommand does: its flags (clap `Args`, each with help and default) and
//! one function that runs it. `main.rs` only parses the command line and calls these; the
//! rules they apply live in the library modules they call.

pub mod ablate;
pub mod eval;
pub mod sample;
pub mod serve;
pub mod sweep;
pub mod train;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use clap::Args;

use crate::checkpoint::{self, read_weights};
use crate::cost::Cost;
use crate::model::{Denoiser, ModelChoice, StateDict};
use crate::precision::{Precision, autocast};
use crate::process::ProcessSpec;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Weights whose stored configuration and class names to describe. Default, when no
    /// model is named: the bundled Fashion-MNIST U-DiT.
    #[arg(long)]
    pub ckpt: Option<String>,
    /// Print one JSON object with `params`, `params_merged`, `macs`.
    #[arg(long)]
    pub json: bool,
    /// List every class name (short lists are always shown).
    #[arg(long)]
    pub classes: bool,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let named = a.model.model.is_some() || a.model.config.is_some();
    let weights = match (&a.ckpt, named) {
        (Some(c), _) => Some(read_weights(&crate::hub::resolve(c, &[])?, None)?),
        (None, false) => Some(read_weights(std::path::Path::new(crate::BUNDLED_MODEL), None)?),
        (None, true) => None,
    };
    let cfg = a.model.resolve(weights.as_ref().and_then(|w| w.config.as_ref()))?;
    let cost = Cost::of(&cfg);
    if a.json {
        println!("{}", serde_json::to_string(&cost)?);
        return Ok(());
    }
    println!("{}", crate::model::describe(&cfg));
    let training_form = if cost.params != cost.params_merged {
        format!(" (training form {:.2}M)", cost.params as f64 / 1e6)
    } else {
        String::new()
    };
    println!("parameters      {:>10.2}M{training_form}", cost.params_merged as f64 / 1e6);
    let s = cfg.input_size();
    println!("forward GMACs   {:>10.2} (batch 1, {s}x{s} latent)", cost.macs as f64 / 1e9);
    let metadata = weights.map(|w| w.metadata).unwrap_or_default();
    println!("process         {}", ProcessSpec::of_weights(&metadata, &cfg)?.describe());
    let names = crate::classes::ClassNames::for_model(&metadata, cfg.num_classes())?;
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

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Weights: .safetensors or PyTorch .pt (state dict or training checkpoint).
    #[arg(long, alias = "weights")]
    pub ckpt: PathBuf,
    /// Which state dict of a training checkpoint (default: ema, else model).
    #[arg(long)]
    pub entry: Option<String>,
    /// Safetensors with `x` [N,C,H,W], `t` [N] and `y` [N].
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `out`.
    #[arg(long, alias = "output", required_unless_present = "expect")]
    pub out: Option<PathBuf>,
    /// Compare `out` with this tensor of --inputs (e.g. `out_eval` of a fixture): prints the
    /// largest difference relative to its largest value, and fails above --tolerance.
    #[arg(long)]
    pub expect: Option<String>,
    /// The largest relative difference --expect accepts.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    /// Run the re-parametrized FFN in its training form instead of merging it.
    #[arg(long)]
    pub train_form: bool,
    /// Classifier-free guidance scale: the batch is [conditional; null-class] halves.
    #[arg(long)]
    pub cfg_scale: Option<f64>,
    /// Compute precision of the matmul-like ops: f32, bf16 or f16 (autocast; weights stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
}

pub fn forward(a: ForwardArgs) -> Result<()> {
    let device = crate::default_device();
    let _autocast = autocast(a.precision);
    let weights = read_weights(&a.ckpt, a.entry.as_deref())?;
    let cfg = a.model.resolve(weights.config.as_ref())?;
    let mut model = checkpoint::load_denoiser(&cfg, &weights, &device)?;
    if !a.train_form {
        model = model.merged();
    }
    let inputs = read_weights(&a.inputs, None).context("reading --inputs")?.tensors;
    let (x, t, y) = crate::model::inputs_from(&inputs, &cfg, &device)?;
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
    let out = out.into_data();
    if let Some(key) = &a.expect {
        let expected = inputs.get(key).with_context(|| format!("--inputs has no tensor {key:?}"))?;
        let e = relative_max_error(&out, expected)?;
        println!("out vs {key} ({}): largest difference {e:.2e} of the largest value", a.precision);
        if !(e <= a.tolerance) {
            bail!("out differs from {key} by {e:.2e}, over the tolerance {:.0e}", a.tolerance);
        }
    }
    if let Some(path) = &a.out {
        let shape = out.shape().to_vec();
        checkpoint::write_safetensors(path, &checkpoint::StateDict::from([("out".to_string(), out)]), vec![])?;
        eprintln!("wrote out {shape:?} to {}", path.display());
    }
    Ok(())
}

/// max |ours - reference| over max |reference| (the fixtures' tolerance measure).
pub fn relative_max_error(ours: &TensorData, reference: &TensorData) -> Result<f32> {
    if ours.shape() != reference.shape() {
        bail!("shapes differ: {:?} vs {:?}", ours.shape(), reference.shape());
    }
    let values = |d: &TensorData| d.try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("not f32 values: {e:?}"));
    let (a, b) = (values(ours)?, values(reference)?);
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-30);
    Ok(diff / scale)
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Input weights (.pt or .safetensors).
    #[arg(long, alias = "weights")]
    pub ckpt: PathBuf,
    /// Which state dict of a training checkpoint (default: ema, else model).
    #[arg(long)]
    pub entry: Option<String>,
    /// Output: .safetensors (with the configuration, process and codec when known), or
    /// .pt / .pth, a PyTorch state dict (the tensors only) that the reference code loads with
    /// `load_state_dict(strict=True)`.
    #[arg(long, alias = "output")]
    pub out: PathBuf,
    /// Merge the re-parametrized FFN branches (needs --model or --config).
    #[arg(long)]
    pub merge: bool,
    #[command(flatten)]
    pub model: ModelChoice,
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let weights = read_weights(&a.ckpt, a.entry.as_deref())?;
    let stored = weights.config.clone();
    let names = crate::classes::ClassNames::stored(&weights.metadata)?;
    let wants_model = a.merge || a.model.model.is_some() || a.model.config.is_some();
    if !wants_model {
        let meta = match &stored {
            Some(cfg) => {
                let process = ProcessSpec::of_weights(&weights.metadata, cfg)?;
                checkpoint::model_metadata(cfg, &process, weights.codec.as_deref(), &names)?
            }
            None => vec![],
        };
        write_converted(&a.out, &weights.tensors, meta)?;
        eprintln!("wrote {} tensors to {}", weights.tensors.len(), a.out.display());
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
    let process = ProcessSpec::of_weights(&weights.metadata, &cfg)?;
    let meta = checkpoint::model_metadata(&cfg, &process, weights.codec.as_deref(), &names)?;
    write_converted(&a.out, &tensors, meta)?;
    eprintln!("wrote {} tensors{} to {}", tensors.len(), if a.merge { " (FFN merged)" } else { "" }, a.out.display());
    Ok(())
}

/// `udit convert`'s output: a PyTorch state dict for `.pt` / `.pth`, else safetensors with
/// `meta`.
fn write_converted(out: &std::path::Path, tensors: &StateDict, meta: Vec<(String, String)>) -> Result<()> {
    match out.extension().and_then(|e| e.to_str()) {
        Some("pt" | "pth") => crate::io::pt::write_pt(out, tensors),
        _ => checkpoint::write_safetensors(out, tensors, meta),
    }
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelChoice,
    /// Samples per forward pass (or training step).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Time forward + backward + AdamW step instead of the forward pass.
    #[arg(long)]
    pub train: bool,
    /// With --train: split the batch into this many forward/backward rounds (less memory).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Timed runs (best and median are reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed runs first (allocation and cache warm-up).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Print one JSON object with `best_ms`, `median_ms`, `gflops`.
    #[arg(long)]
    pub json: bool,
    /// Instead: time per image of guided sampling (one guided step plus SD-VAE decode)
    /// for these step counts, e.g. `--sample-steps 250,25`.
    #[arg(long, value_delimiter = ',')]
    pub sample_steps: Vec<usize>,
    /// Compute precision of the matmul-like ops: f32, bf16 or f16 (autocast; weights stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Also measure this machine's f32 GEMM peak (a 2048-cube GEMM on every thread, best of
    /// 5) and say what share of it the model's step reaches.
    #[arg(long)]
    pub peak: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let cfg = a.model.resolve(None)?;
    let _autocast = autocast(a.precision);
    if a.batch == 0 || a.iters == 0 {
        bail!("--batch and --iters must be at least 1");
    }
    if a.grad_accum == 0 || a.batch % a.grad_accum != 0 {
        bail!("--grad-accum must divide --batch ({}), got {}", a.batch, a.grad_accum);
    }
    if !a.sample_steps.is_empty() {
        let c = crate::bench::sample_cost(&cfg, a.batch, a.warmup, a.iters, &crate::default_device());
        println!(
            "guided step (batch {} x2): {:.1} ms, SD-VAE decode of {} (random weights, same cost): {:.1} ms",
            a.batch, c.guided_step_ms, a.batch, c.decode_ms
        );
        for steps in a.sample_steps {
            println!("{steps} steps: {:.2} s per image", c.seconds_per_image(steps));
        }
        return Ok(());
    }
    let peak = a.peak.then(|| crate::bench::gemm_peak(5));
    let r = crate::bench::run(&cfg, a.batch, a.train, a.grad_accum, (a.warmup, a.iters), &crate::default_device());
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        if let Some(peak) = peak {
            v["peak_gflops"] = peak.into();
        }
        println!("{v}");
    } else {
        let what = if a.train { "train step" } else { "forward" };
        let precision = if a.precision == Precision::F32 { String::new() } else { format!(" {}", a.precision) };
        let share = peak
            .map_or(String::new(), |p| format!(" ({:.0}% of the {p:.0} GFLOP/s f32 GEMM peak)", 100.0 * r.gflops / p));
        println!(
            "{what} batch {}{precision}: best {:.1} ms, median {:.1} ms over {} runs, {:.1} GFLOP/s{share}",
            a.batch, r.best_ms, r.median_ms, r.iters, r.gflops
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct PlotArgs {
    /// A `udit train` log.jsonl.
    pub log: PathBuf,
    /// Where to write the PNG.
    #[arg(long, default_value = "loss.png")]
    pub out: PathBuf,
    /// A TrueType font for the labels.
    #[arg(long, default_value = crate::io::plot::DEFAULT_FONT)]
    pub font: PathBuf,
}

/// `udit plot-loss`.
pub fn plot_loss(a: PlotArgs) -> Result<()> {
    crate::train::plot::plot_loss(&a.log, &a.out, &a.font)?;
    eprintln!("wrote the loss curve of {} to {}", a.log.display(), a.out.display());
    Ok(())
}
