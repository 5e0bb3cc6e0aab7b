//! Stochastic interpolants as SiT trains and samples them (`willisma/SiT` `transport/`, Ma et
//! al. 2024): continuous time t in [0, 1] with **0 = noise and 1 = data**, a path between them
//! ([`path`]), a network that predicts the velocity (or the score, or the noise), and ODE and
//! SDE samplers ([`integrators`], [`sampling`]). This is the other process beside
//! [`crate::diffusion`]: the same networks, called with t as it is (no x1000).

pub mod integrators;
pub mod likelihood;
pub mod path;
pub mod sampling;

use anyhow::{Result, bail};
use burn::prelude::*;

pub use path::{DiffusionForm, PathType};
use path::{combine, per_sample};

/// What the network predicts (`ModelType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The velocity u_t = alpha'_t x1 + sigma'_t x0 (the default).
    Velocity,
    /// The score of p_t.
    Score,
    /// The noise x0.
    Noise,
}

impl std::str::FromStr for Prediction {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "velocity" => Self::Velocity,
            "score" => Self::Score,
            "noise" => Self::Noise,
            other => bail!("unknown prediction {other:?}: use velocity, score or noise"),
        })
    }
}

impl std::fmt::Display for Prediction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Velocity => "velocity",
            Self::Score => "score",
            Self::Noise => "noise",
        })
    }
}

/// The weighting of the score and noise losses (`WeightType`); a velocity loss is never weighted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossWeight {
    None,
    /// (drift_var / sigma_t)^2.
    Velocity,
    /// drift_var / sigma_t^2.
    Likelihood,
}

impl std::str::FromStr for LossWeight {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Self::None,
            "velocity" => Self::Velocity,
            "likelihood" => Self::Likelihood,
            other => bail!("unknown loss weight {other:?}: use none, velocity or likelihood"),
        })
    }
}

/// The interpolant process: a path, what the network predicts, the loss weight and the
/// margins kept off the ends of [0, 1] in training and sampling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transport {
    pub path: PathType,
    pub prediction: Prediction,
    pub loss_weight: LossWeight,
    pub train_eps: f64,
    pub sample_eps: f64,
}

/// Where a sampler integrates: the interval of `check_interval` for a solver.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Integration {
    /// The probability-flow ODE.
    Ode,
    /// The SDE with this diffusion form, ending `last_step_size` before t = 1 (0: no last step).
    Sde { form: DiffusionForm, last_step_size: f64 },
}

impl Transport {
    /// `create_transport`: the margins default by path and prediction. VP: 1e-5 in training,
    /// 1e-3 in sampling; Linear and GVP with score or noise: 1e-3 and 1e-3; Linear and GVP with
    /// velocity are stable everywhere, 0 and 0 (explicit values are ignored there, as in the
    /// reference). A reference quirk kept: a given `sample_eps` counts only when `train_eps` is
    /// given too (the reference tests `train_eps is None` for both; given alone, `train_eps`
    /// leaves its `sample_eps` None, which fails later there and is 1e-3 here).
    pub fn new(
        path: PathType,
        prediction: Prediction,
        loss_weight: LossWeight,
        train_eps: Option<f64>,
        sample_eps: Option<f64>,
    ) -> Self {
        let (train_eps, sample_eps) = match (path, prediction) {
            (PathType::Linear | PathType::Gvp, Prediction::Velocity) => (0.0, 0.0),
            _ => {
                let default_train = if path == PathType::Vp { 1e-5 } else { 1e-3 };
                match train_eps {
                    None => (default_train, 1e-3),
                    Some(train) => (train, sample_eps.unwrap_or(1e-3)),
                }
            }
        };
        Self { path, prediction, loss_weight, train_eps, sample_eps }
    }

    /// SiT's default: the Linear path, velocity prediction, no weighting.
    pub fn sit() -> Self {
        Self::new(PathType::Linear, Prediction::Velocity, LossWeight::None, None, None)
    }

    /// `check_interval`: [t0, t1] for training (`sampling` None) or for a sampler, forward
    /// (noise to data) or `reverse`d (both ends mirrored: data to noise).
    pub fn interval(&self, sampling: Option<Integration>, reverse: bool) -> (f64, f64) {
        let eps = if sampling.is_some() { self.sample_eps } else { self.train_eps };
        let (sde, sbdm, last_step_size) = match sampling {
            Some(Integration::Sde { form, last_step_size }) => (true, form == DiffusionForm::Sbdm, last_step_size),
            _ => (false, false, 0.0),
        };
        let t1 = if !sde || last_step_size == 0.0 { 1.0 - eps } else { 1.0 - last_step_size };
        let (t0, t1) = match self.path {
            PathType::Vp => (0.0, t1),
            _ if self.prediction != Prediction::Velocity || sde => {
                let t0 = if (sbdm && sde) || self.prediction != Prediction::Velocity { eps } else { 0.0 };
                (t0, t1)
            }
            _ => (0.0, 1.0),
        };
        if reverse { (1.0 - t0, 1.0 - t1) } else { (t0, t1) }
    }

    /// (x_t, u_t): the point of the path at t between noise `x0` and data `x1`, and the
    /// velocity there (`path_sampler.plan`).
    pub fn plan(&self, t: &[f64], x0: Tensor<4>, x1: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let device = x0.device();
        let xt = x1.clone() * per_sample(t, |t| self.path.alpha(t).0, &device)
            + x0.clone() * per_sample(t, |t| self.path.sigma(t).0, &device);
        let ut = x1 * per_sample(t, |t| self.path.alpha(t).1, &device)
            + x0 * per_sample(t, |t| self.path.sigma(t).1, &device);
        (xt, ut)
    }

    /// The training loss per sample of network output `out` at x_t of (t, x0, x1)
    /// (`training_losses`): mean over C, H, W of (out - u_t)^2 for velocity; of
    /// w (out - x0)^2 for noise; of w (out sigma_t + x0)^2 for score, w the loss weight.
    pub fn training_loss(&self, out: Tensor<4>, t: &[f64], x0: Tensor<4>, x1: Tensor<4>) -> Tensor<1> {
        let device = out.device();
        let error = match self.prediction {
            Prediction::Velocity => out - self.plan(t, x0, x1).1,
            Prediction::Noise => out - x0,
            Prediction::Score => out * per_sample(t, |t| self.path.sigma(t).0, &device) + x0,
        };
        let squared = error.clone() * error;
        let weighted = match (self.prediction, self.loss_weight) {
            (Prediction::Velocity, _) | (_, LossWeight::None) => squared,
            (_, weight) => squared * per_sample(t, |t| self.weight(weight, t), &device),
        };
        let n = weighted.dims()[0];
        weighted.reshape([n as i32, -1]).mean_dim(1).reshape([n])
    }

    fn weight(&self, weight: LossWeight, t: f64) -> f64 {
        let (var, sigma) = (self.path.drift(t).1, self.path.sigma(t).0);
        match weight {
            LossWeight::None => 1.0,
            LossWeight::Velocity => (var / sigma).powi(2),
            LossWeight::Likelihood => var / (sigma * sigma),
        }
    }

    /// The probability-flow velocity at (x, t) from the network's output there (`get_drift`).
    pub fn velocity(&self, out: Tensor<4>, x: Tensor<4>, t: &[f64]) -> Tensor<4> {
        match self.prediction {
            Prediction::Velocity => out,
            Prediction::Score => self.velocity_from_score(out, x, t),
            Prediction::Noise => self.velocity_from_score(self.score(out, x.clone(), t), x, t),
        }
    }

    /// The score at (x, t) from the network's output there (`get_score`).
    pub fn score(&self, out: Tensor<4>, x: Tensor<4>, t: &[f64]) -> Tensor<4> {
        match self.prediction {
            Prediction::Score => out,
            Prediction::Noise => out * per_sample(t, |t| -1.0 / self.path.sigma(t).0, &x.device()),
            Prediction::Velocity => combine(out, x, t, |t| self.path.score_from_velocity(t)),
        }
    }

    fn velocity_from_score(&self, score: Tensor<4>, x: Tensor<4>, t: &[f64]) -> Tensor<4> {
        combine(score, x, t, |t| self.path.velocity_from_score(t))
    }

    /// The data the velocity points at: solving x = alpha x1 + sigma x0 and v = alpha' x1 +
    /// sigma' x0 for x1 gives (sigma' x - sigma v) / (sigma' alpha - sigma alpha'), finite on
    /// every path at every t (a live preview shows it).
    pub fn data_prediction(&self, velocity: Tensor<4>, x: Tensor<4>, t: &[f64]) -> Tensor<4> {
        combine(velocity, x, t, |t| {
            let ((alpha, d_alpha), (sigma, d_sigma)) = (self.path.alpha(t), self.path.sigma(t));
            let det = d_sigma * alpha - sigma * d_alpha;
            (-sigma / det, d_sigma / det)
        })
    }
}
