//! `udit eval` (ADM metrics, or the offline meter) and `udit train-classifier`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::progress::Progress;

#[derive(Args)]
pub struct EvalArgs {
    /// Samples: ADM `.npz` with `arr_0` uint8 [N, H, W, C].
    pub samples: PathBuf,
    /// Reference batch: `arr_0` images and/or precomputed `mu`, `sigma`, `mu_s`, `sigma_s`
    /// (e.g. ADM's VIRTUAL_imagenet256_labeled.npz). Not used with --features.
    pub reference: Option<PathBuf>,
    /// Offline meter: FID in this `udit train-classifier` model's feature space against the
    /// Fashion-MNIST test split, and the class accuracy of the samples' `arr_1` labels; the
    /// flag alone takes the bundled classifier (assets/), as `udit sweep` does.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = crate::BUNDLED_METER)]
    pub features: Option<PathBuf>,
    /// Fashion-MNIST directory, for --features.
    #[arg(long, alias = "data", default_value = crate::data::fashion_mnist::DEFAULT_DIR)]
    pub data_dir: PathBuf,
    /// pytorch-fid's FID Inception weights (default: $UDIT_INCEPTION, else
    /// pt_inception-2015-12-05-6726825d.pth in the current directory).
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    /// Also save the samples' statistics (and pool features) to this `.npz`, for reuse as a
    /// reference.
    #[arg(long)]
    pub save_stats: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    use crate::eval::{Reference, activations_shown, inception::InceptionV3, score};
    let device = crate::default_device();
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.features.is_some() && (a.save_stats.is_some() || a.reference.is_some() || a.inception.is_some()) {
        bail!(
            "--features scores with the offline meter: REFERENCE, --inception and --save-stats apply to the ADM metrics"
        );
    }
    if let Some(path) = &a.features {
        use crate::data::fashion_mnist::{FashionMnist, Split};
        let samples = crate::io::npz::read_npz(&a.samples)?;
        let model = crate::eval::classifier::Classifier::load(path, &device)?;
        let test = FashionMnist::load(&a.data_dir, Split::Test)?;
        let s = crate::eval::classifier::meter(&model, &samples, &test, &device)?;
        if a.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            println!("classifier FID {:.3}  class accuracy {:.4}", s.fid, s.class_accuracy);
        }
        return Ok(());
    }
    let reference_path = a.reference.clone().context("give a REFERENCE .npz (or --features for the offline meter)")?;
    let net = InceptionV3::load(&crate::eval::inception::weights_path(a.inception.as_deref()), &device)?;
    let samples = crate::io::npz::read_npz(&a.samples)?;
    let reference = Reference::load(&reference_path, &net, a.batch, &device)?;
    let acts = activations_shown(&net, &samples, a.batch, &device, "the samples")?;
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

#[derive(Args)]
pub struct TrainClassifierArgs {
    /// The dataset (only fashion-mnist).
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Directory of the IDX files.
    #[arg(long, alias = "data", default_value = crate::data::fashion_mnist::DEFAULT_DIR)]
    pub data_dir: PathBuf,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Seed of the initial weights and of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the classifier's weights.
    #[arg(long, default_value = "classifier.safetensors")]
    pub out: PathBuf,
}

pub fn train_classifier(a: TrainClassifierArgs) -> Result<()> {
    use crate::data::fashion_mnist::{FashionMnist, Split};
    if a.dataset != "fashion-mnist" {
        bail!("unknown dataset {:?}: only fashion-mnist", a.dataset);
    }
    let device = crate::default_device();
    let (train, test) = (FashionMnist::load(&a.data_dir, Split::Train)?, FashionMnist::load(&a.data_dir, Split::Test)?);
    let progress = Progress::new("training the classifier", (train.len().div_ceil(128) * a.epochs) as u64, "batches");
    let (model, acc) = crate::eval::classifier::train(
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

#[derive(Args)]
pub struct LikelihoodArgs {
    #[command(flatten)]
    pub model: super::sample::ModelArgs,
    /// The data to score: fashion-mnist (its test split), image-folder or latents.
    #[arg(long)]
    pub dataset: String,
    /// Directory of the data (default for fashion-mnist: Debian's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Crop size of image-folder data.
    #[arg(long, default_value_t = crate::data::image_folder::ADM_IMAGE_SIZE)]
    pub image_size: usize,
    /// How many samples, the first ones of the data.
    #[arg(long, default_value_t = 100)]
    pub num_samples: usize,
    /// The ODE solver: dopri5 (adaptive), euler, heun2 or rk4.
    #[arg(long, default_value = "dopri5")]
    pub sampler: String,
    /// Time points of the ODE (the fixed grids step between them) [default: 50, as SiT's
    /// `sample_ode_likelihood`].
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// dopri5: absolute tolerance.
    #[arg(long, default_value_t = crate::transport::integrators::DOPRI5_ATOL)]
    pub atol: f64,
    /// dopri5: relative tolerance.
    #[arg(long, default_value_t = crate::transport::integrators::DOPRI5_RTOL)]
    pub rtol: f64,
    /// Seed of the Hutchinson probes (sample i has its own stream).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// One JSON object instead of the line of text.
    #[arg(long)]
    pub json: bool,
}

/// `udit likelihood`: the NLL of data under an interpolant model, bits per dimension.
pub fn likelihood(a: LikelihoodArgs) -> Result<()> {
    use crate::data::fashion_mnist::{FashionMnist, Split};
    use crate::eval::likelihood::{LikelihoodRun, nll};
    use crate::process::Process;
    use crate::transport::integrators::OdeMethod;
    use crate::transport::likelihood::Likelihood;

    let read = a.model.read()?;
    let Process::Interpolant(transport) = read.process.process()? else {
        bail!("the likelihood ODE needs an interpolant (SiT's process); this model is a Gaussian-diffusion model");
    };
    let method = OdeMethod::named(&a.sampler, a.atol, a.rtol)?;
    let likelihood = Likelihood { method, num_steps: a.steps };
    if a.steps < 2 || !(a.atol > 0.0 && a.rtol > 0.0) {
        bail!("--steps must be at least 2 and --atol, --rtol positive");
    }
    let data: std::sync::Arc<dyn crate::data::Dataset> = match a.dataset.as_str() {
        "fashion-mnist" => {
            let dir = a.data_dir.clone().unwrap_or_else(|| crate::data::fashion_mnist::DEFAULT_DIR.into());
            std::sync::Arc::new(FashionMnist::load(&dir, Split::Test)?)
        }
        other => crate::train::DataSpec::named(other, a.data_dir.clone(), a.image_size)?.open()?,
    };
    let device = crate::default_device().autodiff();
    let codec = match data.space() {
        crate::data::Space::Pixels => read.open_codec(&device.clone().inner())?,
        crate::data::Space::Model => crate::codec::Codec::None,
    };
    let model = read.load_for_gradients(&device)?;
    let run = LikelihoodRun { model: &model, transport, likelihood, codec: &codec, seed: a.seed, batch: a.batch };
    let progress = Progress::new("likelihood", a.num_samples as u64, "samples");
    let out = nll(&run, data.as_ref(), a.num_samples, &device, &progress)?;
    let per_sample = out.evaluations as f64 / a.num_samples.div_ceil(a.batch) as f64;
    if a.json {
        let json = serde_json::json!({
            "bits_per_dim": out.mean(),
            "standard_error": out.standard_error(),
            "samples": out.bits_per_dim.len(),
            "evaluations_per_batch": per_sample,
        });
        println!("{json}");
    } else {
        println!(
            "NLL {:.4} bits/dim (model space) ± {:.4} (standard error, {} samples), {per_sample:.1} evaluations per batch",
            out.mean(),
            out.standard_error(),
            out.bits_per_dim.len()
        );
    }
    Ok(())
}
