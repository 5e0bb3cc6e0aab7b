//! Sampling an interpolant (`transport.py`'s `Sampler`): the probability-flow ODE of the
//! network's velocity, forward (noise to data) or reversed (data to noise: encoding), or the
//! SDE with drift v + w_t score and a last step. The network is a
//! [`ModelFn`](crate::diffusion::samplers::ModelFn) called with t in [0, 1]; drift and score
//! come from **one** network evaluation per step (the reference evaluates it twice, once for
//! each).

use anyhow::{Result, bail};
use burn::prelude::*;

use super::integrators::{self, OdeMethod, SdeMethod, linspace};
use super::{DiffusionForm, Integration, Transport};
use crate::diffusion::samplers::{ModelFn, OnStep, times};

/// The step that ends an SDE run at t1 = 1 - `last_step_size` (`last_step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastStep {
    /// x + (drift + w score) h: the SDE's mean, without noise (the SiT paper's).
    Mean,
    /// Tweedie's denoised estimate (x + sigma^2 score) / alpha.
    Tweedie,
    /// x + velocity h: an ODE step.
    Euler,
    /// No last step (and no margin: t1 = 1 - sample_eps).
    None,
}

impl std::str::FromStr for LastStep {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "Mean" | "mean" => Self::Mean,
            "Tweedie" | "tweedie" => Self::Tweedie,
            "Euler" | "euler" => Self::Euler,
            "none" | "None" => Self::None,
            other => bail!("unknown last step {other:?}: use Mean, Tweedie, Euler or none"),
        })
    }
}

/// How an interpolant is sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TransportSampler {
    /// `sample_ode`: `num_steps` time points (fixed grids step between them; dopri5 steps as
    /// it must and reads the end off its dense output).
    Ode { method: OdeMethod, num_steps: usize, reverse: bool },
    /// `sample_sde`: `num_steps` time points in all, the last step included.
    Sde { method: SdeMethod, form: DiffusionForm, norm: f64, last_step: LastStep, last_step_size: f64, num_steps: usize },
}

impl TransportSampler {
    /// The SiT paper's protocol: Euler-Maruyama, 250 steps, w_t = sigma_t, last step Mean 0.04.
    pub fn sit_paper() -> Self {
        Self::Sde {
            method: SdeMethod::Euler,
            form: DiffusionForm::Sigma,
            norm: 1.0,
            last_step: LastStep::Mean,
            last_step_size: 0.04,
            num_steps: 250,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Ode { num_steps, .. } | Self::Sde { num_steps, .. } if num_steps < 2 => {
                bail!("an interpolant sampler needs at least 2 time points (--steps 2), got {num_steps}")
            }
            Self::Sde { last_step_size, last_step, .. }
                if last_step != LastStep::None && !(last_step_size > 0.0 && last_step_size < 1.0) =>
            {
                bail!("the last step size must be in (0, 1), got {last_step_size}")
            }
            Self::Sde { norm, .. } if !(norm >= 0.0 && norm.is_finite()) => {
                bail!("the diffusion norm must be a finite number >= 0, got {norm}")
            }
            Self::Ode { method: OdeMethod::Dopri5 { atol, rtol }, .. } if !(atol > 0.0 && rtol > 0.0) => {
                bail!("dopri5 needs positive tolerances, got atol {atol}, rtol {rtol}")
            }
            _ => Ok(()),
        }
    }

    /// The time points the solver runs through (`check_interval`, then a linspace).
    pub fn times(&self, transport: &Transport) -> Vec<f64> {
        let (t0, t1) = match *self {
            Self::Ode { reverse, .. } => transport.interval(Some(Integration::Ode), reverse),
            Self::Sde { form, last_step, last_step_size, .. } => {
                let last_step_size = if last_step == LastStep::None { 0.0 } else { last_step_size };
                transport.interval(Some(Integration::Sde { form, last_step_size }), false)
            }
        };
        // The SDE steps from every point but the last, where its last step starts.
        let (Self::Ode { num_steps, .. } | Self::Sde { num_steps, .. }) = *self;
        linspace(t0, t1, num_steps)
    }

    /// Network calls per image (unguided), when known before the run (not for dopri5).
    pub fn calls(&self) -> Option<usize> {
        match *self {
            Self::Ode { method, num_steps, .. } => method.calls(num_steps),
            Self::Sde { method, num_steps, last_step, .. } => {
                let per_step = if method == SdeMethod::Heun { 2 } else { 1 };
                Some(per_step * (num_steps - 1) + usize::from(last_step != LastStep::None))
            }
        }
    }

    /// Runs from `x` (noise, or data when reversed) and returns the end point. `noise` gives the
    /// SDE's standard normal draws, one per step; `on_step` is told the data prediction after
    /// every network call, and an error from it stops the run.
    pub fn run(
        &self,
        transport: &Transport,
        model: &mut ModelFn,
        x: Tensor<4>,
        noise: &mut dyn FnMut() -> Tensor<4>,
        on_step: &mut OnStep,
    ) -> Result<Tensor<4>> {
        self.validate()?;
        let [n, c, _, _] = x.dims();
        let device = x.device();
        // One network call: (velocity, score) at (x, t).
        let mut evaluate = |x: Tensor<4>, t: f64| -> Result<(Tensor<4>, Tensor<4>)> {
            let ts = vec![t; n];
            let out = model(x.clone(), times(t, n, &device)).narrow(1, 0, c);
            let score = transport.score(out.clone(), x.clone(), &ts);
            on_step(&transport.data_prediction(score.clone(), x.clone(), &ts))?;
            Ok((transport.velocity(out, x, &ts), score))
        };
        let t = self.times(transport);
        match *self {
            Self::Ode { method, .. } => {
                integrators::odeint(&mut |x, t| Ok(evaluate(x, t)?.0), x, &t, method)
            }
            Self::Sde { method, form, norm, last_step, last_step_size, .. } => {
                let w = |t: f64| transport.path.diffusion(form, norm, t);
                let mut drift = |x: Tensor<4>, t: f64| -> Result<Tensor<4>> {
                    let (velocity, score) = evaluate(x, t)?;
                    Ok(velocity + score * w(t))
                };
                let x = integrators::sde_integrate(&mut drift, &w, x, &t, method, noise)?;
                let t1 = t[t.len() - 1];
                match last_step {
                    LastStep::None => Ok(x),
                    LastStep::Mean => Ok(x.clone() + drift(x, t1)? * last_step_size),
                    LastStep::Euler => Ok(x.clone() + evaluate(x, t1)?.0 * last_step_size),
                    LastStep::Tweedie => {
                        let (alpha, sigma) = (transport.path.alpha(t1).0, transport.path.sigma(t1).0);
                        let score = evaluate(x.clone(), t1)?.1;
                        Ok(x / alpha + score * (sigma * sigma / alpha))
                    }
                }
            }
        }
    }
}
