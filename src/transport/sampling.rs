//! Sampling an interpolant (`transport.py`'s `Sampler`): the probability-flow ODE of the
//! network's velocity, forward (noise to data) or reversed (data to noise: encoding), or the
//! SDE with drift v + w_t score and a last step. The network is a
//! [`ModelFn`](crate::diffusion::samplers::ModelFn) called with t in [0, 1]; drift and score
//! come from **one** network evaluation per step (the reference evaluates it twice, once for
//! each).

use anyhow::{Result, bail};
use burn::prelude::*;

use super::integrators::{self, OdeMethod, SdeMethod, State, linspace};
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
    Sde {
        method: SdeMethod,
        form: DiffusionForm,
        norm: f64,
        last_step: LastStep,
        last_step_size: f64,
        num_steps: usize,
    },
}

/// The knobs of the interpolant samplers (SiT's `sample.py` flags); None takes the
/// reference's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TransportOptions {
    pub diffusion_form: Option<DiffusionForm>,
    pub diffusion_norm: Option<f64>,
    pub last_step: Option<LastStep>,
    pub last_step_size: Option<f64>,
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
}

/// The names [`TransportSampler::named`] takes.
pub const TRANSPORT_SAMPLERS: &str = "sde (Euler-Maruyama), sde-heun, euler, heun2, rk4 or dopri5";

impl TransportSampler {
    /// A sampler by name: `sde` (or `euler-maruyama`), `sde-heun`, and the ODE solvers `euler`,
    /// `heun2`, `rk4`, `dopri5` (or `ode`). `steps` counts time points (default: 250 for the
    /// SDEs, as SiT's `sample.py`; 50 for the ODEs, as `sample_ode`); `sde` with no options
    /// is the SiT paper's protocol (w_t = sigma_t, last step Mean of 0.04). Options that do
    /// not apply to the chosen solver are refused.
    pub fn named(name: &str, steps: Option<usize>, o: &TransportOptions) -> Result<Self> {
        let sde_method = match name {
            "sde" | "euler-maruyama" => Some(SdeMethod::Euler),
            "sde-heun" => Some(SdeMethod::Heun),
            _ => None,
        };
        let sampler = match sde_method {
            Some(method) => {
                if o.atol.is_some() || o.rtol.is_some() {
                    bail!("--atol and --rtol apply to dopri5, not to the SDE sampler {name}");
                }
                let last_step = o.last_step.unwrap_or(LastStep::Mean);
                if last_step == LastStep::None && o.last_step_size.is_some() {
                    bail!("--last-step-size applies only with a last step (Mean, Tweedie or Euler)");
                }
                Self::Sde {
                    method,
                    form: o.diffusion_form.unwrap_or(DiffusionForm::Sigma),
                    norm: o.diffusion_norm.unwrap_or(1.0),
                    last_step,
                    last_step_size: o.last_step_size.unwrap_or(0.04),
                    num_steps: steps.unwrap_or(250),
                }
            }
            None => {
                let name = if name == "ode" { "dopri5" } else { name };
                let method = OdeMethod::named(
                    name,
                    o.atol.unwrap_or(integrators::DOPRI5_ATOL),
                    o.rtol.unwrap_or(integrators::DOPRI5_RTOL),
                )
                .map_err(|_| {
                    anyhow::anyhow!("unknown sampler {name:?} for an interpolant: use {TRANSPORT_SAMPLERS}")
                })?;
                let sde_only = [o.diffusion_form.is_some(), o.diffusion_norm.is_some(), o.last_step.is_some()];
                if sde_only.into_iter().any(|given| given) || o.last_step_size.is_some() {
                    bail!(
                        "--diffusion-form, --diffusion-norm, --last-step and --last-step-size apply to the SDE \
                         samplers (sde, sde-heun), not to the ODE solver {name}"
                    );
                }
                if !matches!(method, OdeMethod::Dopri5 { .. }) && (o.atol.is_some() || o.rtol.is_some()) {
                    bail!("--atol and --rtol apply to dopri5, not to {name}");
                }
                Self::Ode { method, num_steps: steps.unwrap_or(50), reverse: false }
            }
        };
        sampler.validate()?;
        Ok(sampler)
    }

    /// The name [`Self::named`] takes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sde { method: SdeMethod::Euler, .. } => "sde",
            Self::Sde { method: SdeMethod::Heun, .. } => "sde-heun",
            Self::Ode { method, .. } => method.name(),
        }
    }

    /// Time points of the run.
    pub fn steps(&self) -> usize {
        let (Self::Ode { num_steps, .. } | Self::Sde { num_steps, .. }) = *self;
        num_steps
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

    /// The time of every network call, in order, when known before the run (not for dopri5,
    /// which chooses its steps as it goes).
    pub fn call_times(&self, transport: &Transport) -> Option<Vec<f64>> {
        let t = self.times(transport);
        let steps = t.windows(2).map(|w| (w[0], w[1] - w[0]));
        let per_step: &[f64] = match *self {
            Self::Ode { method: OdeMethod::Dopri5 { .. }, .. } => return None,
            Self::Ode { method: OdeMethod::Euler, .. } | Self::Sde { method: SdeMethod::Euler, .. } => &[0.0],
            Self::Ode { method: OdeMethod::Heun2, .. } | Self::Sde { method: SdeMethod::Heun, .. } => &[0.0, 1.0],
            Self::Ode { method: OdeMethod::Rk4, .. } => &[0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0],
        };
        // The SDE's steps have the first step's size, as the reference's `dt`.
        let dt0 = t[1] - t[0];
        let mut times: Vec<f64> = match self {
            Self::Ode { .. } => steps.flat_map(|(t0, dt)| per_step.iter().map(move |f| t0 + f * dt)).collect(),
            Self::Sde { .. } => steps.flat_map(|(t0, _)| per_step.iter().map(move |f| t0 + f * dt0)).collect(),
        };
        if let Self::Sde { last_step, .. } = self
            && *last_step != LastStep::None
        {
            times.push(t[t.len() - 1]);
        }
        Some(times)
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
            let velocity = transport.velocity(out.clone(), x.clone(), &ts);
            on_step(&transport.data_prediction(velocity.clone(), x.clone(), &ts))?;
            Ok((velocity, transport.score(out, x, &ts)))
        };
        let t = self.times(transport);
        match *self {
            Self::Ode { method, .. } => {
                let mut velocity = |y: State, t| Ok(State::one(evaluate(y.first(), t)?.0));
                Ok(integrators::odeint(&mut velocity, State::one(x), &t, method)?.first())
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
