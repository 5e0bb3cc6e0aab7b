//! Gaussian diffusion as in DiT's `diffusion/` (from OpenAI's improved/guided diffusion):
//! the noise schedule, timestep respacing, the forward process, the model's posterior with
//! learned-range variance, and the training loss. Schedule arithmetic is f64; per-sample
//! coefficients are cast to f32 before they touch tensors, as the reference's
//! `_extract_into_tensor` does. Nothing here knows which network produced an output.

pub mod samplers;
pub mod schedule;
mod solvers;

use anyhow::{Result, bail};
use burn::prelude::*;

/// A discrete diffusion process, possibly a respaced subset of a longer one.
#[derive(Clone, Debug)]
pub struct GaussianDiffusion {
    pub betas: Vec<f64>,
    /// The original timestep of each step, which is what the model is called with.
    pub timestep_map: Vec<usize>,
    pub alphas_cumprod: Vec<f64>,
    sqrt_alphas_cumprod: Vec<f64>,
    sqrt_one_minus_alphas_cumprod: Vec<f64>,
    sqrt_recip_alphas_cumprod: Vec<f64>,
    sqrt_recipm1_alphas_cumprod: Vec<f64>,
    posterior_log_variance_clipped: Vec<f64>,
    posterior_mean_coef1: Vec<f64>,
    posterior_mean_coef2: Vec<f64>,
    log_betas: Vec<f64>,
    /// log of the "fixed large" variance, used when the model does not learn sigma.
    log_fixed_large: Vec<f64>,
}

/// Mean, variance and x_0 prediction of p(x_{t-1} | x_t).
pub struct PMeanVariance {
    pub mean: Tensor<4>,
    pub log_variance: Tensor<4>,
    pub pred_xstart: Tensor<4>,
    /// The eps channels of the model output.
    pub eps: Tensor<4>,
}

/// Per-sample training losses (`loss = mse + vb`), as `training_losses` returns them.
pub struct Losses {
    pub loss: Tensor<1>,
    pub mse: Tensor<1>,
    pub vb: Tensor<1>,
}

/// Diffusion steps of DiT and U-DiT (`create_diffusion(timestep_respacing="")`): training
/// draws t in 0..1000 and samplers respace this process.
pub const NUM_TIMESTEPS: usize = 1000;

impl GaussianDiffusion {
    /// The process of the published models: [`NUM_TIMESTEPS`] linear betas.
    pub fn reference() -> Self {
        Self::linear(NUM_TIMESTEPS)
    }

    /// DiT's schedule: `steps` linear betas from 1e-4 to 0.02 (scaled to 1000 steps).
    pub fn linear(steps: usize) -> Self {
        let scale = 1000.0 / steps as f64;
        let (start, end) = (scale * 1e-4, scale * 0.02);
        let betas = (0..steps).map(|i| start + (end - start) * i as f64 / (steps - 1).max(1) as f64).collect();
        Self::from_betas(betas, (0..steps).collect())
    }

    /// The cosine schedule of improved DDPM: alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi/2),
    /// betas capped at 0.999.
    pub fn cosine(steps: usize) -> Self {
        let abar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        let betas = (0..steps)
            .map(|i| {
                let (t1, t2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                (1.0 - abar(t2) / abar(t1)).min(0.999)
            })
            .collect();
        Self::from_betas(betas, (0..steps).collect())
    }

    fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>) -> Self {
        let n = betas.len();
        let mut alphas_cumprod = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            alphas_cumprod.push(acc);
        }
        let prev: Vec<f64> = std::iter::once(1.0).chain(alphas_cumprod[..n - 1].iter().copied()).collect();
        let posterior_variance: Vec<f64> =
            (0..n).map(|i| betas[i] * (1.0 - prev[i]) / (1.0 - alphas_cumprod[i])).collect();
        // log of the posterior variance with the t = 0 entry (which is 0) replaced by t = 1's.
        let clipped_first = if n > 1 { posterior_variance[1] } else { betas[0] };
        let posterior_log_variance_clipped =
            std::iter::once(clipped_first).chain(posterior_variance[1..].iter().copied()).map(f64::ln).collect();
        let fixed_large = std::iter::once(clipped_first).chain(betas[1..].iter().copied()).map(f64::ln).collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        Self {
            sqrt_alphas_cumprod: map(&|i| alphas_cumprod[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - alphas_cumprod[i]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / alphas_cumprod[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / alphas_cumprod[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * prev[i].sqrt() / (1.0 - alphas_cumprod[i])),
            posterior_mean_coef2: map(&|i| (1.0 - prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - alphas_cumprod[i])),
            log_betas: betas.iter().map(|b| b.ln()).collect(),
            posterior_log_variance_clipped,
            log_fixed_large: fixed_large,
            alphas_cumprod,
            betas,
            timestep_map,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// The respaced process of `space_timesteps` + `SpacedDiffusion`: `"N"` (or
    /// `"N1,N2,..."` sections) keeps evenly strided steps, `"ddimN"` keeps
    /// `range(0, T, stride)` with N entries. New betas are 1 - abar[t_i] / abar[t_{i-1}].
    pub fn respaced(&self, spec: &str) -> Result<Self> {
        let keep = space_timesteps(self.num_steps(), spec)?;
        let mut betas = Vec::with_capacity(keep.len());
        let mut map = Vec::with_capacity(keep.len());
        let mut last = 1.0;
        for (i, &abar) in self.alphas_cumprod.iter().enumerate() {
            if keep.contains(&i) {
                betas.push(1.0 - abar / last);
                last = abar;
                map.push(self.timestep_map[i]);
            }
        }
        Ok(Self::from_betas(betas, map))
    }

    /// `table[t_i]` per sample as an f32 `[N, 1, 1, 1]` tensor.
    fn coef(table: &[f64], t: &[usize], device: &Device) -> Tensor<4> {
        let v: Vec<f32> = t.iter().map(|&i| table[i] as f32).collect();
        Tensor::<1>::from_floats(v.as_slice(), device).reshape([t.len(), 1, 1, 1])
    }

    /// The model timesteps (original values) of step indices `t`.
    pub fn model_timesteps(&self, t: &[usize], device: &Device) -> Tensor<1> {
        let v: Vec<f32> = t.iter().map(|&i| self.timestep_map[i] as f32).collect();
        Tensor::from_floats(v.as_slice(), device)
    }

    /// x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.
    pub fn q_sample(&self, x_start: Tensor<4>, t: &[usize], noise: Tensor<4>) -> Tensor<4> {
        let d = x_start.device();
        Self::coef(&self.sqrt_alphas_cumprod, t, &d) * x_start
            + Self::coef(&self.sqrt_one_minus_alphas_cumprod, t, &d) * noise
    }

    /// Mean and clipped log-variance of q(x_{t-1} | x_t, x_0).
    pub fn q_posterior(&self, x_start: Tensor<4>, x_t: Tensor<4>, t: &[usize]) -> (Tensor<4>, Tensor<4>) {
        let d = x_t.device();
        let mean = Self::coef(&self.posterior_mean_coef1, t, &d) * x_start
            + Self::coef(&self.posterior_mean_coef2, t, &d) * x_t.clone();
        let log_var = Self::coef(&self.posterior_log_variance_clipped, t, &d) * x_t.ones_like();
        (mean, log_var)
    }

    /// p(x_{t-1} | x_t) from a model output: eps in the first C channels and, when the
    /// output has 2C channels, the learned-range variance interpolation v in the rest
    /// (log var = (v+1)/2 log beta_t + (1-(v+1)/2) log posterior var); otherwise the fixed
    /// large variance. No clipping of x_0, as DiT samples.
    pub fn p_mean_variance(&self, model_out: Tensor<4>, x: Tensor<4>, t: &[usize]) -> PMeanVariance {
        let d = x.device();
        let c = x.dims()[1];
        let eps = model_out.clone().narrow(1, 0, c);
        let log_variance = if model_out.dims()[1] == 2 * c {
            let v = model_out.narrow(1, c, c);
            let min_log = Self::coef(&self.posterior_log_variance_clipped, t, &d);
            let max_log = Self::coef(&self.log_betas, t, &d);
            let frac = (v + 1.0) / 2.0;
            frac.clone() * max_log + (frac.neg() + 1.0) * min_log
        } else {
            Self::coef(&self.log_fixed_large, t, &d) * x.ones_like()
        };
        let pred_xstart = Self::coef(&self.sqrt_recip_alphas_cumprod, t, &d) * x.clone()
            - Self::coef(&self.sqrt_recipm1_alphas_cumprod, t, &d) * eps.clone();
        let (mean, _) = self.q_posterior(pred_xstart.clone(), x, t);
        PMeanVariance { mean, log_variance, pred_xstart, eps }
    }

    /// eps implied by x_t and an x_0 prediction.
    pub fn eps_from_xstart(&self, x_t: Tensor<4>, t: &[usize], pred_xstart: Tensor<4>) -> Tensor<4> {
        let d = x_t.device();
        (Self::coef(&self.sqrt_recip_alphas_cumprod, t, &d) * x_t - pred_xstart)
            / Self::coef(&self.sqrt_recipm1_alphas_cumprod, t, &d)
    }

    /// `training_losses` for the model output on x_t = q_sample(x_start, t, noise): MSE of eps
    /// (mean over C, H, W) plus, with a learned variance, the variational bound term in
    /// bits/dim with the mean detached (KL to the true posterior, or the discretised
    /// Gaussian decoder NLL at t = 0).
    pub fn training_losses(
        &self,
        model_out: Tensor<4>,
        x_start: Tensor<4>,
        x_t: Tensor<4>,
        noise: Tensor<4>,
        t: &[usize],
    ) -> Losses {
        let c = x_start.dims()[1];
        let eps = model_out.clone().narrow(1, 0, c);
        let mse = mean_flat((noise - eps.clone()).square());
        if model_out.dims()[1] != 2 * c {
            return Losses { loss: mse.clone(), vb: mse.zeros_like(), mse };
        }
        let frozen = Tensor::cat(vec![eps.detach(), model_out.narrow(1, c, c)], 1);
        let (true_mean, true_log_var) = self.q_posterior(x_start.clone(), x_t.clone(), t);
        let p = self.p_mean_variance(frozen, x_t, t);
        let ln2 = std::f64::consts::LN_2;
        let kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean.clone(), p.log_variance.clone())) / ln2;
        let nll = mean_flat(discretized_gaussian_log_likelihood(x_start, p.mean, p.log_variance * 0.5).neg()) / ln2;
        let at_zero: Vec<bool> = t.iter().map(|&i| i == 0).collect();
        let mask = Tensor::<1, Bool>::from_data(burn::tensor::TensorData::new(at_zero, [t.len()]), &kl.device());
        let vb = kl.mask_where(mask, nll);
        Losses { loss: mse.clone() + vb.clone(), mse, vb }
    }
}

/// Mean over every dimension but the batch.
fn mean_flat(x: Tensor<4>) -> Tensor<1> {
    let n = x.dims()[0];
    x.reshape([n as i32, -1]).mean_dim(1).reshape([n])
}

/// KL(N(m1, e^lv1) || N(m2, e^lv2)) elementwise, in nats.
fn normal_kl(m1: Tensor<4>, lv1: Tensor<4>, m2: Tensor<4>, lv2: Tensor<4>) -> Tensor<4> {
    ((lv2.clone() - lv1.clone() + (lv1 - lv2.clone()).exp() + (m1 - m2).square() * lv2.neg().exp()) - 1.0) * 0.5
}

/// log-likelihood of data in [-1, 1] discretised to 256 bins under N(means, e^{2 log_scales}),
/// with the tanh approximation of the normal CDF (guided diffusion's `losses.py`).
fn discretized_gaussian_log_likelihood(x: Tensor<4>, means: Tensor<4>, log_scales: Tensor<4>) -> Tensor<4> {
    let cdf = |v: Tensor<4>| {
        ((v.clone() + v.powi_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt()).tanh().add_scalar(1.0) * 0.5
    };
    let centered = x.clone() - means;
    let inv_stdv = log_scales.neg().exp();
    let cdf_plus = cdf(inv_stdv.clone() * (centered.clone() + 1.0 / 255.0));
    let cdf_min = cdf(inv_stdv * (centered - 1.0 / 255.0));
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (cdf_min.clone().neg() + 1.0).clamp_min(1e-12).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    let upper = log_delta.mask_where(x.clone().greater_elem(0.999), log_one_minus_cdf_min);
    upper.mask_where(x.lower_elem(-0.999), log_cdf_plus)
}

/// Which steps of a `total`-step process `spec` keeps (reference `space_timesteps`).
pub fn space_timesteps(total: usize, spec: &str) -> Result<Vec<usize>> {
    if let Some(count) = spec.strip_prefix("ddim") {
        let count: usize = count.parse().map_err(|_| anyhow::anyhow!("bad respacing {spec:?}"))?;
        for stride in 1..total {
            if (0..total).step_by(stride).count() == count {
                return Ok((0..total).step_by(stride).collect());
            }
        }
        bail!("cannot make {count} equally strided steps out of {total}");
    }
    let sections: Vec<usize> = spec
        .split(',')
        .map(|s| {
            s.trim().parse().map_err(|_| anyhow::anyhow!("bad respacing {spec:?}: expected N, N1,N2,... or ddimN"))
        })
        .collect::<Result<_>>()?;
    let per = total / sections.len();
    let extra = total % sections.len();
    let mut start = 0;
    let mut steps = Vec::new();
    for (i, &count) in sections.iter().enumerate() {
        let size = per + usize::from(i < extra);
        if count == 0 || size < count {
            bail!("cannot take {count} steps out of a section of {size}");
        }
        let stride = if count <= 1 { 1.0 } else { (size - 1) as f64 / (count - 1) as f64 };
        let mut cur = 0.0f64;
        for _ in 0..count {
            // Python's round(): halves go to the even neighbour.
            steps.push(start + cur.round_ties_even() as usize);
            cur += stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}
