//! `udit sweep`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::sample::{ModelArgs, cfg_channels};
use crate::data::fashion_mnist::{FashionMnist, Split};
use crate::eval::Reference;
use crate::eval::inception::InceptionV3;
use crate::guidance::{Guidance, GuidanceInterval};
use crate::sample::{Classes, Method, Settings, default_cfg_scale};
use crate::sweep::{Meter, MeterKind, SamplerSpec, Sweep, SweepSettings, combinations, default_samplers, parse_list};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Samplers, comma-separated: NAME or NAME:SCHEDULE (ancestral, ddim, dpm++, unipc, heun;
    /// schedules time-uniform, logsnr, karras; without one, the sampler's own). Interpolant
    /// (SiT) models: sde, sde-heun, euler, heun2, rk4. Default: ddim,dpm++,unipc,heun for
    /// diffusion models, euler,heun2,sde for interpolants.
    #[arg(long, value_name = "LIST")]
    pub samplers: Option<String>,
    /// Step counts, comma-separated (heun: noise levels, 2N - 1 calls).
    #[arg(long, value_name = "LIST", default_value = "10,25,50")]
    pub steps: String,
    /// Guidance scales, comma-separated (1 = none). Default: 1.5, the paper's, for models with
    /// a null class.
    #[arg(long, value_name = "LIST")]
    pub cfg_scale: Option<String>,
    /// A guidance interval to try with every scale above 1: LO,HI (noise levels sigma) or none
    /// (every step, the reference's protocol); repeat the flag for several
    /// (Kynkäänniemi et al. 2024's DiT-XL/2 interval is 0.34,1.02).
    #[arg(long, value_name = "LO,HI", default_value = "none")]
    pub guidance_interval: Vec<String>,
    /// Output channels guidance mixes: a count or `all`. Default: the model configuration's.
    #[arg(long, value_name = "N")]
    pub cfg_channels: Option<String>,
    /// Samples per combination.
    #[arg(long, default_value_t = 1000)]
    pub num_samples: usize,
    /// Samples per batch. Default: from the model's cost, as `udit sample` (the bundled model 128).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Classes of the samples: `all` (every class in turn, as balanced as the test set), a
    /// list, or `random`.
    #[arg(long = "class", default_value = "all")]
    pub classes: String,
    /// Seed of every sample's noise: combinations start from the same noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The offline meter's classifier (FID in its features against the Fashion-MNIST test
    /// split, and class accuracy). Default: the bundled one (assets/).
    #[arg(long, value_name = "FILE")]
    pub features: Option<PathBuf>,
    /// Fashion-MNIST directory, for the offline meter.
    #[arg(long, alias = "data", default_value = crate::data::fashion_mnist::DEFAULT_DIR)]
    pub data_dir: PathBuf,
    /// Score with the FID Inception against this reference batch instead (ImageNet models),
    /// as `udit eval`.
    #[arg(long, value_name = "NPZ")]
    pub reference: Option<PathBuf>,
    /// pytorch-fid's FID Inception weights, for --reference (default: $UDIT_INCEPTION, else
    /// pt_inception-2015-12-05-6726825d.pth in the current directory).
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Folder of the sweep: one subfolder per combination (samples and result), sweep.json,
    /// sweep.md and fid-vs-nfe.png. Rerunning the command resumes it.
    #[arg(long, default_value = "sweep")]
    pub out: PathBuf,
    /// A TrueType font for the plot.
    #[arg(long, default_value = crate::io::plot::DEFAULT_FONT)]
    pub font: PathBuf,
}

/// `udit sweep`: checks every combination, loads the meter, then runs what is missing.
pub fn sweep(a: SweepArgs) -> Result<()> {
    let device = crate::default_device();
    let read = a.model.read()?;
    let process = read.process.process()?;
    let samplers = a.samplers.as_deref().unwrap_or(default_samplers(&process));
    let specs = parse_list(samplers, "--samplers", SamplerSpec::parse)?;
    let steps =
        parse_list(&a.steps, "--steps", |s| s.parse::<usize>().with_context(|| format!("{s:?} is not a step count")))?;
    let intervals: Vec<GuidanceInterval> =
        a.guidance_interval.iter().map(|i| GuidanceInterval::parse(i)).collect::<Result<_>>()?;
    let loaded = read.load(&device)?;
    let config = &loaded.config;
    let scales = match &a.cfg_scale {
        Some(list) => {
            parse_list(list, "--cfg-scale", |s| s.parse::<f64>().with_context(|| format!("{s:?} is not a scale")))?
        }
        None => vec![default_cfg_scale(config)],
    };
    let channels = cfg_channels(a.cfg_channels.as_deref(), config)?;
    let base = loaded.generator(
        Settings {
            method: Method::preview(&process),
            guidance: Guidance::everywhere(1.0),
            seed: a.seed,
            classes: Classes::parse(&a.classes, &loaded.names, loaded.config.num_classes())?,
        },
        device.clone(),
    )?;
    let meter_name = match &a.reference {
        Some(r) => format!("the FID Inception against {}", r.display()),
        None => match &a.features {
            Some(f) => format!("the classifier {} against the Fashion-MNIST test split", f.display()),
            None => "the bundled classifier (assets/) against the Fashion-MNIST test split".to_string(),
        },
    };
    let settings = SweepSettings {
        model: a.model.ckpt.clone().unwrap_or_else(|| "the bundled model".to_string()),
        num_samples: a.num_samples,
        batch: a.batch.unwrap_or(loaded.default_batch()),
        seed: a.seed,
        classes: a.classes.clone(),
        meter: meter_name,
    };
    let combinations = combinations(&specs, &steps, &scales, &intervals, channels);
    let sweep = Sweep { base, combinations, settings, out: a.out.clone() };
    sweep.validate(if a.reference.is_some() { MeterKind::Inception } else { MeterKind::Classifier })?;
    let rows = sweep.run(&load_meter(&a, &device)?, &a.font)?;
    eprintln!("wrote {} rows to {}/sweep.md, sweep.json and fid-vs-nfe.png", rows.len(), a.out.display());
    Ok(())
}

/// The meter `--reference` or `--features` asks for.
fn load_meter(a: &SweepArgs, device: &burn::prelude::Device) -> Result<Meter> {
    use crate::eval::classifier::{Classifier, Meter as ClassifierMeter};
    match &a.reference {
        Some(reference) => {
            let net = InceptionV3::load(&crate::eval::inception::weights_path(a.inception.as_deref()), device)?;
            let reference = Reference::load(reference, &net, INCEPTION_BATCH, device)?;
            Ok(Meter::Inception { net: Box::new(net), reference, batch: INCEPTION_BATCH })
        }
        None => {
            let path = a.features.clone().unwrap_or_else(|| PathBuf::from(crate::BUNDLED_METER));
            let model = Classifier::load(&path, device)?;
            let test = FashionMnist::load(&a.data_dir, Split::Test)?;
            Ok(Meter::Classifier(Box::new(ClassifierMeter::new(model, &test, device)?)))
        }
    }
}

/// Images per FID Inception batch (`udit eval`'s default).
const INCEPTION_BATCH: usize = 50;
