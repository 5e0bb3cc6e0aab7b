//! The ADM evaluator's metrics (`guided-diffusion/evaluations/evaluator.py`) on feature
//! vectors: Fréchet distance of Gaussian statistics (FID, sFID), Inception Score, and the
//! improved precision and recall of Kynkäänniemi et al. (k = 3 nearest neighbours).

use anyhow::{Result, bail};
use faer::{Mat, Side};

/// Mean and covariance (unbiased, as `np.cov`) of a set of feature vectors, in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub mu: Vec<f64>,
    /// Row-major `dim x dim`.
    pub sigma: Vec<f64>,
}

impl Stats {
    /// Statistics of `n` row vectors of length `dim`.
    pub fn from_features(features: &[f32], dim: usize) -> Result<Self> {
        let n = features.len() / dim;
        if n < 2 {
            bail!("need at least 2 feature vectors for a covariance, got {n}");
        }
        let mut mu = vec![0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &v) in mu.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mu.iter_mut().for_each(|m| *m /= n as f64);
        let centered = Mat::<f64>::from_fn(n, dim, |i, j| features[i * dim + j] as f64 - mu[j]);
        let cov = centered.transpose() * &centered;
        let sigma = (0..dim * dim).map(|k| cov[(k / dim, k % dim)] / (n - 1) as f64).collect();
        Ok(Self { mu, sigma })
    }

    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    fn sigma_mat(&self) -> Mat<f64> {
        let d = self.dim();
        Mat::from_fn(d, d, |i, j| self.sigma[i * d + j])
    }
}

/// ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).
///
/// ADM takes `scipy.linalg.sqrtm` of the non-symmetric product S1 S2 and keeps the real
/// part of its trace. Here tr((S1 S2)^{1/2}) = sum sqrt(lambda_i) with lambda the eigenvalues
/// of the symmetric S1^{1/2} S2 S1^{1/2} (similar to S1 S2), which is exact in the same
/// cases and stable for near-singular covariances: rounding can push an eigenvalue of a
/// rank-deficient product slightly below zero, where scipy's square root turns imaginary
/// and ADM drops the imaginary part; its real part is 0, which is what clamping gives.
/// Like ADM, a clearly imaginary result (|imag| > 1e-3) is an error.
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<f64> {
    if a.dim() != b.dim() {
        bail!("feature statistics of different sizes: {} and {}", a.dim(), b.dim());
    }
    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let (s1, s2) = (a.sigma_mat(), b.sigma_mat());
    let eig = s1.self_adjoint_eigen(Side::Lower).map_err(|e| anyhow::anyhow!("eigendecomposition failed: {e:?}"))?;
    let (u, s) = (eig.U(), eig.S());
    let d = a.dim();
    let root = Mat::<f64>::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
    let sqrt_s1 = &root * u.transpose();
    let inner = &sqrt_s1 * &s2 * &sqrt_s1;
    let sym = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (inner[(i, j)] + inner[(j, i)]));
    let lambdas =
        sym.self_adjoint_eigenvalues(Side::Lower).map_err(|e| anyhow::anyhow!("eigenvalues failed: {e:?}"))?;
    if let Some(&neg) = lambdas.iter().find(|&&l| l < 0.0 && (-l).sqrt() > 1e-3) {
        bail!("Imaginary component {} in the covariance square root", (-neg).sqrt());
    }
    let tr_covmean: f64 = lambdas.iter().map(|l| l.max(0.0).sqrt()).sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    Ok(mean_term + trace(&a.sigma) + trace(&b.sigma) - 2.0 * tr_covmean)
}

/// Inception Score: exp(E_x KL(p(y|x) || p(y))) averaged over splits of `split_size`
/// samples (ADM uses 5000, which is 10 splits of 50K), from classifier logits.
pub fn inception_score(logits: &[f32], classes: usize, split_size: usize) -> f64 {
    let probs: Vec<Vec<f64>> = logits
        .chunks_exact(classes)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect();
    let scores: Vec<f64> = probs
        .chunks(split_size.max(1))
        .map(|part| {
            let mut marginal = vec![0f64; classes];
            for p in part {
                marginal.iter_mut().zip(p).for_each(|(m, v)| *m += v / part.len() as f64);
            }
            let kl: f64 = part
                .iter()
                .map(|p| {
                    p.iter().zip(&marginal).filter(|(v, _)| **v > 0.0).map(|(v, m)| v * (v.ln() - m.ln())).sum::<f64>()
                })
                .sum::<f64>()
                / part.len() as f64;
            kl.exp()
        })
        .collect();
    scores.iter().sum::<f64>() / scores.len() as f64
}

/// Improved precision (samples inside the reference manifold) and recall (references inside
/// the sample manifold); a manifold is the union of balls reaching each point's k-th nearest
/// neighbour, distances squared Euclidean, as ADM's `ManifoldEstimator` with k = 3.
pub fn precision_recall(reference: &[f32], samples: &[f32], dim: usize, k: usize) -> Result<(f64, f64)> {
    let (nr, ns) = (reference.len() / dim, samples.len() / dim);
    if nr <= k || ns <= k {
        bail!("precision/recall with k = {k} needs more than {k} images in each set, got {nr} and {ns}");
    }
    let ref_radii = kth_neighbour_radii(reference, dim, k);
    let sample_radii = kth_neighbour_radii(samples, dim, k);
    let precision = fraction_inside(samples, reference, &ref_radii, dim);
    let recall = fraction_inside(reference, samples, &sample_radii, dim);
    Ok((precision, recall))
}

/// Squared distances from every row of `a` to every row of `b`, in blocks of rows of `a`.
fn for_each_distance_block(a: &[f32], b: &[f32], dim: usize, mut f: impl FnMut(usize, &[f32])) {
    let nb = b.len() / dim;
    let norms = |x: &[f32]| x.chunks_exact(dim).map(|r| r.iter().map(|v| v * v).sum::<f32>()).collect::<Vec<f32>>();
    let (na2, nb2) = (norms(a), norms(b));
    let bm = Mat::<f32>::from_fn(nb, dim, |i, j| b[i * dim + j]);
    for (block, rows) in a.chunks(1024 * dim).enumerate() {
        let n = rows.len() / dim;
        let am = Mat::<f32>::from_fn(n, dim, |i, j| rows[i * dim + j]);
        let dots = &am * bm.transpose();
        let mut d = vec![0f32; n * nb];
        for i in 0..n {
            for j in 0..nb {
                d[i * nb + j] = (na2[block * 1024 + i] + nb2[j] - 2.0 * dots[(i, j)]).max(0.0);
            }
        }
        f(block * 1024, &d);
    }
}

/// Squared distance from each point to its k-th nearest other point.
fn kth_neighbour_radii(x: &[f32], dim: usize, k: usize) -> Vec<f32> {
    let n = x.len() / dim;
    let mut radii = vec![0f32; n];
    for_each_distance_block(x, x, dim, |first, d| {
        for (i, row) in d.chunks_exact(n).enumerate() {
            let mut row = row.to_vec();
            // Index k of the sorted row: index 0 is the point itself (distance 0).
            let (_, kth, _) = row.select_nth_unstable_by(k, f32::total_cmp);
            radii[first + i] = *kth;
        }
    });
    radii
}

/// Fraction of `points` within the radius of at least one of `centers`.
fn fraction_inside(points: &[f32], centers: &[f32], radii: &[f32], dim: usize) -> f64 {
    let nc = centers.len() / dim;
    let mut inside = 0usize;
    for_each_distance_block(points, centers, dim, |_, d| {
        inside += d.chunks_exact(nc).filter(|row| row.iter().zip(radii).any(|(dist, r)| dist <= r)).count();
    });
    inside as f64 / (points.len() / dim) as f64
}
