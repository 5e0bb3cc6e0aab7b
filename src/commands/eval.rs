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
    /// Fashion-MNIST test split, and the class accuracy of the samples' `arr_1` labels.
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Fashion-MNIST directory, for --features.
    #[arg(long, default_value = crate::data::fashion_mnist::DEFAULT_DIR)]
    pub data: PathBuf,
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
    if let Some(path) = &a.features {
        use crate::data::fashion_mnist::{FashionMnist, Split};
        let samples = crate::io::npz::read_npz(&a.samples)?;
        let model = crate::eval::classifier::Classifier::load(path, &device)?;
        let test = FashionMnist::load(&a.data, Split::Test)?;
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
    #[arg(long, default_value = crate::data::fashion_mnist::DEFAULT_DIR)]
    pub data: PathBuf,
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
    let (train, test) = (FashionMnist::load(&a.data, Split::Train)?, FashionMnist::load(&a.data, Split::Test)?);
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
