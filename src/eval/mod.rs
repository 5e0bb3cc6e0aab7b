//! Evaluation: the paper's metrics (FID, sFID, IS, precision, recall) as the ADM evaluator
//! computes them, on ADM-format `.npz` batches.

pub mod classifier;
pub mod inception;
pub mod likelihood;
pub mod metrics;

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;

use self::inception::{InceptionV3, preprocess};
use self::metrics::{Stats, frechet_distance, inception_score, precision_recall};
use crate::io::Images;
use crate::progress::Progress;

/// Inception outputs of a set of images, row-major.
pub struct Activations {
    pub pool3: Vec<f32>,
    pub spatial: Vec<f32>,
    pub logits: Vec<f32>,
}

pub const POOL_DIM: usize = 2048;
pub const SPATIAL_DIM: usize = 2023;
pub const LOGITS_DIM: usize = 1008;

/// Runs the FID Inception over `images` in batches (grayscale is repeated to RGB).
pub fn activations(
    net: &InceptionV3,
    images: &Images,
    batch: usize,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Activations> {
    let (s, c) = (images.side, images.channels);
    if c != 1 && c != 3 {
        bail!("images must have 1 or 3 channels, got {c}");
    }
    let per = s * s * c;
    let n = images.pixels.len() / per;
    let mut out = Activations { pool3: Vec::with_capacity(n * POOL_DIM), spatial: Vec::new(), logits: Vec::new() };
    for chunk in images.pixels.chunks(batch.max(1) * per) {
        let m = chunk.len() / per;
        let rgb: Vec<u8> = if c == 3 { chunk.to_vec() } else { chunk.iter().flat_map(|&v| [v; 3]).collect() };
        let f = net.forward(preprocess(&rgb, m, s, s, device)?);
        let vec = |t: Tensor<2>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
        out.pool3.extend(vec(f.pool3));
        out.spatial.extend(vec(f.spatial));
        out.logits.extend(vec(f.logits));
        on_batch(m);
    }
    Ok(out)
}

/// [`activations`] of `images` with a progress bar naming `what` they are.
pub fn activations_shown(
    net: &InceptionV3,
    images: &Images,
    batch: usize,
    device: &Device,
    what: &str,
) -> Result<Activations> {
    let progress = Progress::new(&format!("Inception features of {what}"), images.labels.len() as u64, "images");
    let out = activations(net, images, batch, device, &mut |m| progress.inc(m as u64));
    progress.finish();
    out
}

/// What a reference batch provides: FID and sFID statistics, and pool features for
/// precision/recall when it has images (or saved features).
pub struct Reference {
    pub stats: Stats,
    pub stats_spatial: Stats,
    pub pool3: Option<Vec<f32>>,
}

impl Reference {
    pub fn from_activations(a: &Activations) -> Result<Self> {
        Ok(Self {
            stats: Stats::from_features(&a.pool3, POOL_DIM)?,
            stats_spatial: Stats::from_features(&a.spatial, SPATIAL_DIM)?,
            pool3: Some(a.pool3.clone()),
        })
    }

    /// Reads precomputed `mu`, `sigma`, `mu_s`, `sigma_s` (and `pool3` if saved) from an
    /// `.npz`; `None` when the file has none of them.
    pub fn read_stats(path: &Path) -> Result<Option<Self>> {
        let mut npz =
            npyz::npz::NpzArchive::open(path).with_context(|| format!("cannot open {} as .npz", path.display()))?;
        let mut get = |name: &str| -> Result<Option<(Vec<f64>, Vec<u64>)>> {
            match npz.by_name(name)? {
                Some(a) => {
                    let shape = a.shape().to_vec();
                    let v =
                        a.into_vec::<f64>().with_context(|| format!("{}: {name} must be float64", path.display()))?;
                    Ok(Some((v, shape)))
                }
                None => Ok(None),
            }
        };
        let (Some((mu, _)), Some((sigma, _))) = (get("mu")?, get("sigma")?) else { return Ok(None) };
        let (mu_s, _) = get("mu_s")?.with_context(|| format!("{} has mu but no mu_s", path.display()))?;
        let (sigma_s, _) = get("sigma_s")?.with_context(|| format!("{} has sigma but no sigma_s", path.display()))?;
        if mu.len() != POOL_DIM
            || sigma.len() != POOL_DIM * POOL_DIM
            || mu_s.len() != SPATIAL_DIM
            || sigma_s.len() != SPATIAL_DIM * SPATIAL_DIM
        {
            bail!("{}: statistics of the wrong size (expected 2048 and 2023 dimensions)", path.display());
        }
        let pool3 = match npz.by_name("pool3")? {
            Some(a) => Some(a.into_vec::<f32>().with_context(|| format!("{}: pool3 must be float32", path.display()))?),
            None => None,
        };
        Ok(Some(Self { stats: Stats { mu, sigma }, stats_spatial: Stats { mu: mu_s, sigma: sigma_s }, pool3 }))
    }

    /// A reference `.npz`: precomputed statistics (with the images' pool features when it has
    /// images too, for precision and recall), or images whose features are computed here.
    pub fn load(path: &Path, net: &InceptionV3, batch: usize, device: &Device) -> Result<Self> {
        let features = |images: &Images| activations_shown(net, images, batch, device, "the reference");
        match Self::read_stats(path)? {
            Some(mut r) => {
                // FID uses the stored statistics; precision/recall need the images' features.
                if r.pool3.is_none()
                    && let Ok(images) = crate::io::npz::read_npz(path)
                {
                    r.pool3 = Some(features(&images)?.pool3);
                }
                Ok(r)
            }
            None => Self::from_activations(&features(&crate::io::npz::read_npz(path)?)?),
        }
    }

    /// Saves the statistics (and pool features) for reuse as a reference.
    pub fn write_stats(&self, path: &Path) -> Result<()> {
        use npyz::WriterBuilder;
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut npz = npyz::npz::NpzWriter::new(&mut buf);
            let arrays: [(&str, &[f64], Vec<u64>); 4] = [
                ("mu", &self.stats.mu, vec![POOL_DIM as u64]),
                ("sigma", &self.stats.sigma, vec![POOL_DIM as u64; 2]),
                ("mu_s", &self.stats_spatial.mu, vec![SPATIAL_DIM as u64]),
                ("sigma_s", &self.stats_spatial.sigma, vec![SPATIAL_DIM as u64; 2]),
            ];
            for (name, data, shape) in arrays {
                let mut w = npz.array::<f64>(name, Default::default())?.default_dtype().shape(&shape).begin_nd()?;
                w.extend(data.iter().copied())?;
                w.finish()?;
            }
            if let Some(pool3) = &self.pool3 {
                let shape = [(pool3.len() / POOL_DIM) as u64, POOL_DIM as u64];
                let mut w = npz.array::<f32>("pool3", Default::default())?.default_dtype().shape(&shape).begin_nd()?;
                w.extend(pool3.iter().copied())?;
                w.finish()?;
            }
        }
        crate::io::write_atomic(path, buf.get_ref())
    }
}

/// The ADM evaluator's numbers.
#[derive(Debug, serde::Serialize)]
pub struct Scores {
    pub fid: f64,
    pub sfid: f64,
    pub inception_score: f64,
    /// None when the reference has statistics but no features.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// Scores of sample activations against a reference (IS over splits of 5000, P/R with k = 3).
pub fn score(samples: &Activations, reference: &Reference) -> Result<Scores> {
    let fid = frechet_distance(&Stats::from_features(&samples.pool3, POOL_DIM)?, &reference.stats)?;
    let sfid = frechet_distance(&Stats::from_features(&samples.spatial, SPATIAL_DIM)?, &reference.stats_spatial)?;
    let is = inception_score(&samples.logits, LOGITS_DIM, 5000);
    let (precision, recall) = match &reference.pool3 {
        Some(r) => {
            let (p, r) = precision_recall(r, &samples.pool3, POOL_DIM, 3)?;
            (Some(p), Some(r))
        }
        None => (None, None),
    };
    Ok(Scores { fid, sfid, inception_score: is, precision, recall })
}
