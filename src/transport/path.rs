//! The paths of the interpolant (`willisma/SiT` `transport/path.py`): x_t = alpha_t x1 +
//! sigma_t x0 between noise x0 (t = 0) and data x1 (t = 1), their derivatives, the drift and
//! diffusion of the SDE written in score form, and the conversions between velocity, score and
//! noise. Coefficients are f64 functions of one time; [`per_sample`] puts them on tensors.

use anyhow::{Result, bail};
use burn::prelude::*;

/// Which path (`PathType`; the reference's plans `ICPlan`, `GVPCPlan`, `VPCPlan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    /// alpha = t, sigma = 1 - t.
    Linear,
    /// alpha = sin(pi t / 2), sigma = cos(pi t / 2): variance preserving, trigonometric.
    Gvp,
    /// The VP SDE of score-based diffusion with beta from [`VP_SIGMA_MIN`] to [`VP_SIGMA_MAX`].
    Vp,
}

/// The VP path's beta range (`VPCPlan(sigma_min=0.1, sigma_max=20.0)`).
pub const VP_SIGMA_MIN: f64 = 0.1;
pub const VP_SIGMA_MAX: f64 = 20.0;

impl std::str::FromStr for PathType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "Linear" | "linear" => Self::Linear,
            "GVP" | "gvp" => Self::Gvp,
            "VP" | "vp" => Self::Vp,
            other => bail!("unknown path {other:?}: use Linear, GVP or VP"),
        })
    }
}

impl std::fmt::Display for PathType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Linear => "Linear",
            Self::Gvp => "GVP",
            Self::Vp => "VP",
        })
    }
}

/// The diffusion coefficient w_t of the sampling SDE (`compute_diffusion`'s `form`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffusionForm {
    /// norm.
    Constant,
    /// norm times the drift variance: the SDE of score-based diffusion models.
    Sbdm,
    /// norm sigma_t (the SiT paper's choice).
    Sigma,
    /// norm (1 - t).
    Linear,
    /// (norm cos(pi t) + 1)^2 / 4.
    Decreasing,
}

impl std::str::FromStr for DiffusionForm {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => Self::Constant,
            "SBDM" | "sbdm" => Self::Sbdm,
            "sigma" => Self::Sigma,
            "linear" => Self::Linear,
            "decreasing" => Self::Decreasing,
            other => bail!("unknown diffusion form {other:?}: use constant, SBDM, sigma, linear or decreasing"),
        })
    }
}

impl std::fmt::Display for DiffusionForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Sbdm => "SBDM",
            Self::Sigma => "sigma",
            Self::Linear => "linear",
            Self::Decreasing => "decreasing",
        })
    }
}

impl PathType {
    /// (alpha_t, d alpha_t / dt) (`compute_alpha_t`).
    pub fn alpha(&self, t: f64) -> (f64, f64) {
        match self {
            Self::Linear => (t, 1.0),
            Self::Gvp => {
                let a = t * std::f64::consts::FRAC_PI_2;
                (a.sin(), std::f64::consts::FRAC_PI_2 * a.cos())
            }
            Self::Vp => {
                let alpha = vp_log_mean_coeff(t).exp();
                (alpha, alpha * vp_d_log_mean_coeff(t))
            }
        }
    }

    /// (sigma_t, d sigma_t / dt) (`compute_sigma_t`).
    pub fn sigma(&self, t: f64) -> (f64, f64) {
        match self {
            Self::Linear => (1.0 - t, -1.0),
            Self::Gvp => {
                let a = t * std::f64::consts::FRAC_PI_2;
                (a.cos(), -std::f64::consts::FRAC_PI_2 * a.sin())
            }
            Self::Vp => {
                let p = (2.0 * vp_log_mean_coeff(t)).exp();
                let sigma = (1.0 - p).sqrt();
                (sigma, p * (2.0 * vp_d_log_mean_coeff(t)) / (-2.0 * sigma))
            }
        }
    }

    /// d alpha_t / alpha_t, in the reference's numerically stable forms
    /// (`compute_d_alpha_alpha_ratio_t`).
    fn d_alpha_alpha_ratio(&self, t: f64) -> f64 {
        match self {
            Self::Linear => 1.0 / t,
            Self::Gvp => std::f64::consts::PI / (2.0 * (t * std::f64::consts::FRAC_PI_2).tan()),
            Self::Vp => vp_d_log_mean_coeff(t),
        }
    }

    /// The drift of the SDE in score form (`compute_drift`): drift_mean = `.0` x and the
    /// variance `.1`, so that the probability-flow velocity is -drift_mean + var * score.
    pub fn drift(&self, t: f64) -> (f64, f64) {
        match self {
            Self::Vp => {
                let beta = VP_SIGMA_MIN + (1.0 - t) * (VP_SIGMA_MAX - VP_SIGMA_MIN);
                (-0.5 * beta, beta / 2.0)
            }
            _ => {
                let ratio = self.d_alpha_alpha_ratio(t);
                let (sigma, d_sigma) = self.sigma(t);
                (-ratio, ratio * sigma * sigma - sigma * d_sigma)
            }
        }
    }

    /// The diffusion coefficient w_t of `form` with magnitude `norm` (`compute_diffusion`).
    pub fn diffusion(&self, form: DiffusionForm, norm: f64, t: f64) -> f64 {
        match form {
            DiffusionForm::Constant => norm,
            DiffusionForm::Sbdm => norm * self.drift(t).1,
            DiffusionForm::Sigma => norm * self.sigma(t).0,
            DiffusionForm::Linear => norm * (1.0 - t),
            DiffusionForm::Decreasing => 0.25 * (norm * (std::f64::consts::PI * t).cos() + 1.0).powi(2),
        }
    }

    /// (a, b) with score = a velocity + b x (`get_score_from_velocity`).
    pub fn score_from_velocity(&self, t: f64) -> (f64, f64) {
        let ((alpha, d_alpha), (sigma, d_sigma)) = (self.alpha(t), self.sigma(t));
        let reverse_alpha_ratio = alpha / d_alpha;
        let var = sigma * sigma - reverse_alpha_ratio * d_sigma * sigma;
        (reverse_alpha_ratio / var, -1.0 / var)
    }

    /// (a, b) with noise = a velocity + b x (`get_noise_from_velocity`).
    pub fn noise_from_velocity(&self, t: f64) -> (f64, f64) {
        let ((alpha, d_alpha), (sigma, d_sigma)) = (self.alpha(t), self.sigma(t));
        let reverse_alpha_ratio = alpha / d_alpha;
        let var = reverse_alpha_ratio * d_sigma - sigma;
        (reverse_alpha_ratio / var, -1.0 / var)
    }

    /// (a, b) with velocity = a score + b x (`get_velocity_from_score`).
    pub fn velocity_from_score(&self, t: f64) -> (f64, f64) {
        let (mean, var) = self.drift(t);
        (var, -mean)
    }
}

fn vp_log_mean_coeff(t: f64) -> f64 {
    -0.25 * (1.0 - t).powi(2) * (VP_SIGMA_MAX - VP_SIGMA_MIN) - 0.5 * (1.0 - t) * VP_SIGMA_MIN
}

fn vp_d_log_mean_coeff(t: f64) -> f64 {
    0.5 * (1.0 - t) * (VP_SIGMA_MAX - VP_SIGMA_MIN) + 0.5 * VP_SIGMA_MIN
}

/// `f(t_i)` for every sample, as a `[N, 1, 1, 1]` f32 tensor that broadcasts over a batch
/// (the reference's `expand_t_like_x`).
pub fn per_sample(t: &[f64], f: impl Fn(f64) -> f64, device: &Device) -> Tensor<4> {
    let v: Vec<f32> = t.iter().map(|&t| f(t) as f32).collect();
    Tensor::<1>::from_floats(v.as_slice(), device).reshape([t.len(), 1, 1, 1])
}

/// `a(t) u + b(t) x` per sample, for the (a, b) pairs of the conversions above.
pub fn combine(u: Tensor<4>, x: Tensor<4>, t: &[f64], ab: impl Fn(f64) -> (f64, f64)) -> Tensor<4> {
    let device = u.device();
    u * per_sample(t, |t| ab(t).0, &device) + x * per_sample(t, |t| ab(t).1, &device)
}
