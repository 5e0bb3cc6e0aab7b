//! Samplers: the reference ancestral sampler and DDIM, and the ODE solvers of `solvers.rs`
//! (DPM-Solver++(2M), UniPC, Heun). They see the denoiser only as a function (x_t, model
//! timesteps) -> output, so guidance, conditioning and the network live with the caller; after
//! every call they tell `on_step` the current prediction of x_0 (what a live preview shows).

use anyhow::{Result, bail};
use burn::prelude::*;

use super::GaussianDiffusion;
use super::schedule::{Grid, Schedule};
use super::solvers::{self, Calls};
use crate::rng::NoiseStreams;

/// A denoiser call: x_t `[N, C, H, W]` and model timesteps `[N]` -> output whose first C
/// channels are eps (any further channels are the learned variance).
pub type ModelFn<'a> = dyn FnMut(Tensor<4>, Tensor<1>) -> Tensor<4> + 'a;

/// Told after each denoiser call with the x_0 prediction; an error stops the sampling.
pub type OnStep<'a> = dyn FnMut(&Tensor<4>) -> Result<()> + Send + 'a;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// DDPM ancestral sampling on the respaced process (the reference `p_sample_loop`).
    Ancestral,
    /// DDIM (first order); eta = 0 is deterministic. Its time-uniform schedule is the
    /// reference's "ddimN" respacing.
    Ddim { eta: f64 },
    /// DPM-Solver++(2M) (Lu et al. 2022), multistep second order in data prediction.
    DpmSolverPp2M,
    /// UniPC (Zhao et al. 2023), B(h) = e^h - 1 ("bh2"), data prediction: a third-order
    /// multistep predictor and the UniC corrector, which reuses the next call (no extra one).
    UniPc,
    /// Heun's second-order method on the probability-flow ODE in EDM's variables (Karras et al.
    /// 2022, Algorithm 1 without churn): two calls per step, one for the last: 2N - 1.
    Heun,
}

impl std::str::FromStr for Sampler {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ancestral" | "ddpm" => Self::Ancestral,
            "ddim" => Self::Ddim { eta: 0.0 },
            "dpm++" | "dpm++2m" | "dpmsolver++" => Self::DpmSolverPp2M,
            "unipc" => Self::UniPc,
            "heun" => Self::Heun,
            other => bail!("unknown sampler {other:?}: use ancestral, ddim, dpm++, unipc or heun"),
        })
    }
}

impl Sampler {
    /// A sampler by name (`ancestral`, `ddim`, `dpm++`, `unipc`, `heun`); `eta` is DDIM's
    /// (0 = deterministic).
    pub fn named(name: &str, eta: f64) -> Result<Self> {
        Ok(match name.parse()? {
            Self::Ddim { .. } => Self::Ddim { eta },
            other => other,
        })
    }

    /// The name [`Sampler::named`] takes.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ancestral => "ancestral",
            Self::Ddim { .. } => "ddim",
            Self::DpmSolverPp2M => "dpm++",
            Self::UniPc => "unipc",
            Self::Heun => "heun",
        }
    }

    /// The usual number of steps: 250 for ancestral (the paper's protocol), 13 for Heun (25
    /// calls), 25 otherwise.
    pub fn default_steps(&self) -> usize {
        match self {
            Self::Ancestral => 250,
            Self::Heun => 13,
            _ => 25,
        }
    }

    /// The schedule when none is asked for: EDM's for Heun, time-uniform for the others;
    /// none for ancestral sampling, which steps through the reference's respaced process.
    pub fn default_schedule(&self) -> Option<Schedule> {
        match self {
            Self::Ancestral => None,
            Self::Heun => Some(Schedule::Karras),
            _ => Some(Schedule::TimeUniform),
        }
    }

    /// Where `steps` steps on `schedule` (None: the sampler's own) call the model, checked
    /// before any work.
    pub fn plan(&self, base: &GaussianDiffusion, steps: usize, schedule: Option<Schedule>) -> Result<Plan> {
        if steps == 0 {
            bail!("the number of sampling steps must be at least 1");
        }
        let schedule = match (self, schedule) {
            (Self::Ancestral, Some(s)) => bail!(
                "ancestral sampling steps through the reference's respaced process; a schedule ({s}) \
                 applies to ddim, dpm++, unipc and heun"
            ),
            (_, s) => s.or(self.default_schedule()),
        };
        let (grid, respaced) = match (self, schedule) {
            (Self::Ancestral, _) => {
                let d = base.respaced(&steps.to_string())?;
                (Grid::of_respaced(&d), Some(d))
            }
            (Self::Ddim { .. }, Some(Schedule::TimeUniform)) => {
                (Grid::of_respaced(&base.respaced(&format!("ddim{steps}"))?), None)
            }
            (_, s) => (s.expect("ODE samplers have a schedule").grid(base, steps)?, None),
        };
        Ok(Plan { sampler: *self, schedule, grid, respaced })
    }
}

/// A sampler with its steps laid out: where each model call is made.
#[derive(Clone, Debug)]
pub struct Plan {
    pub sampler: Sampler,
    /// The ODE samplers' schedule (None for ancestral sampling).
    pub schedule: Option<Schedule>,
    /// The noise levels of the steps, from the noisiest.
    pub grid: Grid,
    /// The process ancestral sampling steps through.
    respaced: Option<GaussianDiffusion>,
}

impl Plan {
    /// The model time of every denoiser call, in order: one per step, but Heun calls again at
    /// each noise level after the first (its corrector, then the next step's start).
    pub fn call_times(&self) -> Vec<f64> {
        match self.sampler {
            Sampler::Heun => self
                .grid
                .t
                .iter()
                .enumerate()
                .flat_map(|(i, &t)| std::iter::repeat_n(t, 1 + usize::from(i > 0)))
                .collect(),
            _ => self.grid.t.clone(),
        }
    }

    /// Denoiser calls per image.
    pub fn calls(&self) -> usize {
        self.call_times().len()
    }

    /// Runs the plan from x_T (usually `noise.next()`), returning x_0; `noise` supplies the
    /// fresh noise of stochastic samplers. `on_step` is told after each call, with the current
    /// prediction of x_0; an error from it stops the loop (a cancelled job) and is returned.
    pub fn run(
        &self,
        model: &mut ModelFn,
        x: Tensor<4>,
        noise: &mut NoiseStreams,
        device: &Device,
        on_step: &mut OnStep,
    ) -> Result<Tensor<4>> {
        let mut calls = Calls { model, grid: &self.grid, device };
        match self.sampler {
            Sampler::Ancestral => {
                ancestral(self.respaced.as_ref().expect("planned"), x, calls.model, noise, device, on_step)
            }
            Sampler::Ddim { eta } => ddim(&mut calls, eta, x, noise, on_step),
            Sampler::DpmSolverPp2M => solvers::dpm_solver_pp_2m(&mut calls, x, on_step),
            Sampler::UniPc => solvers::unipc(&mut calls, x, on_step),
            Sampler::Heun => solvers::heun(&mut calls, x, on_step),
        }
    }
}

/// `n` copies of model time `t` (the network takes one per sample).
pub(crate) fn times(t: f64, n: usize, device: &Device) -> Tensor<1> {
    Tensor::<1>::from_floats(vec![t as f32; n].as_slice(), device)
}

/// The reference `p_sample_loop`: from the respaced process's last step down to 0, the
/// posterior mean of the model's x_0 plus noise of the model's variance (none at t = 0).
fn ancestral(
    d: &GaussianDiffusion,
    mut x: Tensor<4>,
    model: &mut ModelFn,
    noise: &mut NoiseStreams,
    device: &Device,
    on_step: &mut OnStep,
) -> Result<Tensor<4>> {
    let n = x.dims()[0];
    for i in (0..d.num_steps()).rev() {
        let t = vec![i; n];
        let out = model(x.clone(), d.model_timesteps(&t, device));
        let p = d.p_mean_variance(out, x, &t);
        on_step(&p.pred_xstart)?;
        x = match i {
            0 => p.mean,
            _ => p.mean + (p.log_variance * 0.5).exp() * noise.next(device),
        };
    }
    Ok(x)
}

/// DDIM (the reference `ddim_sample_loop`) through the steps of `grid`: x_0 and eps as the
/// reference's `p_mean_variance` and `_predict_eps_from_xstart` compute them, then the step to
/// the next abar (1 after the last) with noise of eta's size. f32 coefficients, as there.
fn ddim(
    calls: &mut Calls,
    eta: f64,
    mut x: Tensor<4>,
    noise: &mut NoiseStreams,
    on_step: &mut OnStep,
) -> Result<Tensor<4>> {
    let grid = calls.grid;
    for i in 0..grid.len() {
        let eps = calls.eps(x.clone(), i);
        let (ab, abp) = (grid.abar[i], grid.abar.get(i + 1).copied().unwrap_or(1.0));
        let (recip, recipm1) = ((1.0 / ab).sqrt() as f32, (1.0 / ab - 1.0).sqrt() as f32);
        let x0 = x.clone() * recip - eps * recipm1;
        let eps = (x * recip - x0.clone()) / recipm1;
        let (ab, abp) = (ab as f32, abp as f32);
        let sigma = eta as f32 * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
        let mean = x0.clone() * abp.sqrt() + eps * (1.0 - abp - sigma * sigma).sqrt();
        on_step(&x0)?;
        x = match i + 1 < grid.len() && eta > 0.0 {
            true => mean + noise.next(calls.device) * sigma,
            false => mean,
        };
    }
    Ok(x)
}
