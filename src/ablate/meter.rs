//! Scoring a finished run with the plan's protocol: samples of its exported EMA model at
//! every guidance scale (resumable `.npz` runs under `RUN/meter/`), scored by the offline
//! Fashion-MNIST meter or the ADM evaluator, the scores cached in `RUN/meter.json`.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::plan::{ClassOrder, Protocol};
use crate::checkpoint::{load_denoiser, read_weights};
use crate::codec::{Codec, codec_spec};
use crate::data::fashion_mnist::{FashionMnist, SIDE, Split};
use crate::eval::classifier::{self, Classifier};
use crate::eval::inception::InceptionV3;
use crate::eval::{Reference, activations_shown};
use crate::guidance::Guidance;
use crate::io::Images;
use crate::io::npz::{NpzRun, read_npz};
use crate::process::ProcessSpec;
use crate::sample::{Classes, Generator, Settings, run_npz};
use crate::train::RunDir;

/// The scores of one run at one guidance scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub cfg_scale: f64,
    pub fid: f64,
    /// The meter's class accuracy (the ADM evaluator has none).
    pub class_accuracy: Option<f64>,
    /// Seconds of sampling (the last session's, if sampling was resumed).
    pub sample_seconds: f64,
}

/// `meter.json`: the scores so far and the protocol they were made with.
#[derive(Serialize, Deserialize)]
struct Cache {
    protocol: Protocol,
    scores: Vec<Score>,
}

/// What turns samples into scores.
pub enum Scorer {
    /// FID in a classifier's feature space against the Fashion-MNIST test split, and the
    /// class accuracy of the samples.
    Meter { model: Box<Classifier>, test: FashionMnist, meter: OnceCell<Box<classifier::Meter>> },
    /// FID of the FID Inception's pool features against an ADM reference batch.
    Adm { net: Box<InceptionV3>, reference_path: PathBuf, reference: OnceCell<Reference> },
}

impl Scorer {
    /// Loads the protocol's classifier (or Inception) now, so that a missing file stops the
    /// plan before any training. `fashion_mnist` is the folder of the meter's test split.
    pub fn open(protocol: &Protocol, fashion_mnist: &Path, device: &Device) -> Result<Self> {
        Ok(match &protocol.reference {
            None => {
                let path = protocol.features.clone().unwrap_or_else(|| PathBuf::from(crate::BUNDLED_METER));
                let model = Box::new(Classifier::load(&path, device).context("the meter's classifier")?);
                let test = FashionMnist::load(fashion_mnist, Split::Test).context("the meter's test split")?;
                Self::Meter { model, test, meter: OnceCell::new() }
            }
            Some(reference) => {
                if !reference.is_file() {
                    bail!("the meter's reference batch {} does not exist", reference.display());
                }
                let weights = crate::eval::inception::weights_path(protocol.inception.as_deref());
                let net = Box::new(InceptionV3::load(&weights, device).context("the meter's FID Inception")?);
                Self::Adm { net, reference_path: reference.clone(), reference: OnceCell::new() }
            }
        })
    }

    /// Checks that images of `channels` x `side`^2 can be scored.
    pub fn check_images(&self, channels: usize, side: usize) -> Result<()> {
        match self {
            Self::Meter { .. } if (channels, side) != (1, SIDE) => bail!(
                "the Fashion-MNIST meter takes 1x{SIDE}x{SIDE} images but the models make {channels}x{side}x{side} \
                 (give the meter a `reference` batch for the ADM evaluator)"
            ),
            Self::Adm { .. } if channels != 1 && channels != 3 => {
                bail!("the FID Inception takes 1 or 3 channels, the models make {channels}")
            }
            _ => Ok(()),
        }
    }

    /// (FID, class accuracy) of `images`.
    fn score(&self, images: &Images, batch: usize, device: &Device) -> Result<(f64, Option<f64>)> {
        match self {
            Self::Meter { model, test, meter } => {
                let meter = match meter.get() {
                    Some(m) => m,
                    None => {
                        let m = Box::new(classifier::Meter::new((**model).clone(), test, device)?);
                        meter.get_or_init(|| m)
                    }
                };
                let s = meter.score(images, device)?;
                Ok((s.fid, Some(s.class_accuracy)))
            }
            Self::Adm { net, reference_path, reference } => {
                let r = match reference.get() {
                    Some(r) => r,
                    None => {
                        let r = Reference::load(reference_path, net, batch, device)?;
                        reference.get_or_init(|| r)
                    }
                };
                let acts = activations_shown(net, images, batch, device, "the samples")?;
                Ok((crate::eval::score(&acts, r)?.fid, None))
            }
        }
    }
}

fn cache_path(run: &RunDir) -> PathBuf {
    run.0.join("meter.json")
}

fn samples_dir(run: &RunDir) -> PathBuf {
    run.0.join("meter")
}

/// The cached scores of `run` if they were made with `protocol`.
fn cached(run: &RunDir, protocol: &Protocol) -> Option<Vec<Score>> {
    let text = std::fs::read_to_string(cache_path(run)).ok()?;
    let cache: Cache = serde_json::from_str(&text).ok()?;
    (cache.protocol == *protocol).then_some(cache.scores)
}

/// `run`'s scores at every scale of `protocol`, in its order, if its cache holds them all.
pub fn scores(run: &RunDir, protocol: &Protocol) -> Option<Vec<Score>> {
    let cached = cached(run, protocol)?;
    protocol.cfg_scales.iter().map(|c| cached.iter().find(|s| s.cfg_scale == *c).cloned()).collect()
}

/// Whether every scale of `protocol` is scored in `run`'s cache.
pub fn is_scored(run: &RunDir, protocol: &Protocol) -> bool {
    scores(run, protocol).is_some()
}

/// Forgets `run`'s samples and scores: its model is about to change.
pub fn forget(run: &RunDir) -> Result<()> {
    let (cache, samples) = (cache_path(run), samples_dir(run));
    if cache.exists() {
        std::fs::remove_file(&cache).with_context(|| format!("cannot remove {}", cache.display()))?;
    }
    if samples.exists() {
        std::fs::remove_dir_all(&samples).with_context(|| format!("cannot remove {}", samples.display()))?;
    }
    Ok(())
}

/// The scores of `run`'s exported model at every guidance scale of `protocol` (in its
/// order), sampling and scoring only the scales its cache lacks. `num_classes` is the
/// dataset's, for cycled classes; `say` is told what starts.
pub fn score_run(
    run: &RunDir,
    protocol: &Protocol,
    num_classes: usize,
    scorer: &Scorer,
    device: &Device,
    say: &dyn Fn(&str),
) -> Result<Vec<Score>> {
    let mut scores = cached(run, protocol).unwrap_or_default();
    let missing: Vec<f64> =
        protocol.cfg_scales.iter().copied().filter(|c| !scores.iter().any(|s| s.cfg_scale == *c)).collect();
    if !missing.is_empty() {
        let weights = read_weights(&run.export(), None)?;
        let config =
            weights.config.clone().with_context(|| format!("{} has no configuration", run.export().display()))?;
        let model = load_denoiser(&config, &weights, device)?.merged();
        let codec = Codec::open(&codec_spec(None, weights.codec.as_deref(), config.in_channels()), device)?;
        let classes = match protocol.classes {
            ClassOrder::Cycled => Classes::Listed((0..num_classes).collect()),
            ClassOrder::Random => Classes::Random,
        };
        // The protocol's sampler of the model's own process.
        let process = ProcessSpec::of_weights(&weights.metadata, &config)?.process()?;
        let method = protocol.method(&process)?;
        for cfg_scale in missing {
            say(&format!("meter: {} samples at guidance {cfg_scale}", protocol.num_samples));
            let start = Instant::now();
            let g = Generator {
                model: &model,
                config: &config,
                codec: &codec,
                process: process.clone(),
                settings: Settings {
                    method: method.clone(),
                    // The paper's protocol: guidance at every step.
                    guidance: Guidance::everywhere(cfg_scale),
                    seed: protocol.seed,
                    classes: classes.clone(),
                },
                device: device.clone(),
            };
            g.validate()?;
            let npz = samples_dir(run).join(format!("cfg-{cfg_scale}.npz"));
            let samples = NpzRun { npz, num_samples: protocol.num_samples, batch: protocol.batch };
            if !samples.npz.exists() {
                run_npz(&g, &samples, 0, 1)?;
            }
            let sample_seconds = start.elapsed().as_secs_f64();
            let (fid, class_accuracy) = scorer.score(&read_npz(&samples.npz)?, protocol.batch, device)?;
            scores.push(Score { cfg_scale, fid, class_accuracy, sample_seconds });
            let cache = Cache { protocol: protocol.clone(), scores: scores.clone() };
            crate::io::write_atomic(&cache_path(run), serde_json::to_string_pretty(&cache)?.as_bytes())?;
        }
    }
    protocol
        .cfg_scales
        .iter()
        .map(|c| scores.iter().find(|s| s.cfg_scale == *c).cloned().context("a guidance scale was not scored"))
        .collect()
}
