//! Samplers: the reference ancestral sampler, DDIM, and DPM-Solver++(2M). They see the
//! denoiser only as a function (x_t, model timesteps) -> output, so guidance, conditioning
//! and the network live with the caller.

use anyhow::{Result, bail};
use burn::prelude::*;

use super::{GaussianDiffusion, space_timesteps};
use crate::rng::NoiseStreams;

/// A denoiser call: x_t `[N, C, H, W]` and model timesteps `[N]` -> output whose first C
/// channels are eps (any further channels are the learned variance).
pub type ModelFn<'a> = dyn FnMut(Tensor<4>, Tensor<1>) -> Tensor<4> + 'a;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// DDPM ancestral sampling on the respaced process (the reference `p_sample_loop`).
    Ancestral,
    /// DDIM on the "ddimN" respacing; eta = 0 is deterministic.
    Ddim { eta: f64 },
    /// DPM-Solver++(2M) (Lu et al. 2022), multistep second order in data prediction,
    /// time-uniform steps; reaches ancestral-250 quality in ~25 steps.
    DpmSolverPp2M,
}

impl std::str::FromStr for Sampler {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ancestral" | "ddpm" => Self::Ancestral,
            "ddim" => Self::Ddim { eta: 0.0 },
            "dpm++" | "dpm++2m" | "dpmsolver++" => Self::DpmSolverPp2M,
            other => bail!("unknown sampler {other:?}: use ancestral, ddim or dpm++"),
        })
    }
}

impl Sampler {
    /// A sampler by name (`ancestral`, `ddim`, `dpm++`); `eta` is DDIM's (0 = deterministic).
    pub fn named(name: &str, eta: f64) -> Result<Self> {
        Ok(match name.parse()? {
            Self::Ddim { .. } => Self::Ddim { eta },
            other => other,
        })
    }

    /// The usual number of steps: 250 for ancestral (the paper's protocol), 25 otherwise.
    pub fn default_steps(&self) -> usize {
        match self {
            Self::Ancestral => 250,
            _ => 25,
        }
    }

    /// Whether `steps` denoiser calls can be taken from a `total`-step process: the
    /// respacing of the ancestral and DDIM samplers exists (DDIM needs equal strides).
    pub fn check_steps(&self, total: usize, steps: usize) -> Result<()> {
        match self {
            Self::Ancestral => space_timesteps(total, &steps.to_string()).map(drop),
            Self::Ddim { .. } => space_timesteps(total, &format!("ddim{steps}")).map(drop),
            Self::DpmSolverPp2M => Ok(()),
        }
    }

    /// Whether the sampler draws fresh noise at every step (ancestral, DDIM with eta > 0).
    fn is_stochastic(&self) -> bool {
        match self {
            Self::Ancestral => true,
            Self::Ddim { eta } => *eta > 0.0,
            Self::DpmSolverPp2M => false,
        }
    }

    /// Runs `steps` denoiser calls from x_T (usually `noise.next()`), returning x_0; `noise`
    /// supplies the fresh noise of stochastic samplers. `on_step` is told after each call, with
    /// the current prediction of x_0 (what a live preview shows); an error from it stops the
    /// loop (a cancelled job) and is returned.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        base: &GaussianDiffusion,
        steps: usize,
        model: &mut ModelFn,
        x: Tensor<4>,
        noise: &mut NoiseStreams,
        device: &Device,
        on_step: &mut dyn FnMut(&Tensor<4>) -> Result<()>,
    ) -> Result<Tensor<4>> {
        if steps == 0 {
            bail!("the number of sampling steps must be at least 1");
        }
        match *self {
            Self::Ancestral => {
                let d = base.respaced(&steps.to_string())?;
                respaced_loop(&d, x, model, noise, device, on_step, |d, x, out, t, noise| {
                    let p = d.p_mean_variance(out, x, t);
                    let next = match t[0] {
                        0 => p.mean,
                        _ => p.mean + (p.log_variance * 0.5).exp() * noise.next(device),
                    };
                    (next, p.pred_xstart)
                })
            }
            Self::Ddim { eta } => {
                let d = base.respaced(&format!("ddim{steps}"))?;
                let stochastic = self.is_stochastic();
                respaced_loop(&d, x, model, noise, device, on_step, |d, x, out, t, noise| {
                    let p = d.p_mean_variance(out, x.clone(), t);
                    let eps = d.eps_from_xstart(x, t, p.pred_xstart.clone());
                    // f32 arithmetic on f32 coefficients, as the reference does it.
                    let (ab, abp) = (d.alphas_cumprod[t[0]] as f32, d.alphas_cumprod_prev[t[0]] as f32);
                    let sigma = eta as f32 * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
                    let mean = p.pred_xstart.clone() * abp.sqrt() + eps * (1.0 - abp - sigma * sigma).sqrt();
                    let next = match t[0] {
                        i if i > 0 && stochastic => mean + noise.next(device) * sigma,
                        _ => mean,
                    };
                    (next, p.pred_xstart)
                })
            }
            Self::DpmSolverPp2M => dpm_solver_pp_2m(base, steps, x, model, device, on_step),
        }
    }
}

/// The step loop over a respaced process, from its last step down to 0.
fn respaced_loop(
    d: &GaussianDiffusion,
    mut x: Tensor<4>,
    model: &mut ModelFn,
    noise: &mut NoiseStreams,
    device: &Device,
    on_step: &mut dyn FnMut(&Tensor<4>) -> Result<()>,
    step: impl Fn(&GaussianDiffusion, Tensor<4>, Tensor<4>, &[usize], &mut NoiseStreams) -> (Tensor<4>, Tensor<4>),
) -> Result<Tensor<4>> {
    let n = x.dims()[0];
    for i in (0..d.num_steps()).rev() {
        let t = vec![i; n];
        let out = model(x.clone(), d.model_timesteps(&t, device));
        let (next, x0) = step(d, x, out, &t, noise);
        on_step(&x0)?;
        x = next;
    }
    Ok(x)
}

/// DPM-Solver++(2M) on the VP process of `base`: model calls at the time-uniform timesteps
/// `round(linspace(0, T-1, steps+1))` from T-1 down (the 0 dropped), then a last
/// first-order step to sigma = 0, which returns the data prediction.
fn dpm_solver_pp_2m(
    base: &GaussianDiffusion,
    steps: usize,
    mut x: Tensor<4>,
    model: &mut ModelFn,
    device: &Device,
    on_step: &mut dyn FnMut(&Tensor<4>) -> Result<()>,
) -> Result<Tensor<4>> {
    let total = base.num_steps();
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let ts: Vec<usize> =
        (1..=steps).rev().map(|i| ((total - 1) as f64 * i as f64 / steps as f64).round_ties_even() as usize).collect();
    let alpha = |t: usize| base.alphas_cumprod[t].sqrt();
    let sigma = |t: usize| (1.0 - base.alphas_cumprod[t]).sqrt();
    let lambda = |t: usize| alpha(t).ln() - sigma(t).ln();
    let mut previous: Option<(Tensor<4>, f64)> = None; // (x_0 prediction, step size h)
    for (i, &t) in ts.iter().enumerate() {
        let model_t = Tensor::<1>::from_floats(vec![base.timestep_map[t] as f32; n].as_slice(), device);
        let eps = model(x.clone(), model_t).narrow(1, 0, c);
        let x0 = (x.clone() - eps * sigma(t)) / alpha(t);
        on_step(&x0)?;
        let Some(&next) = ts.get(i + 1) else {
            return Ok(x0);
        };
        let h = lambda(next) - lambda(t);
        let d = match &previous {
            Some((prev_x0, prev_h)) => {
                let r = prev_h / h;
                x0.clone() * (1.0 + 0.5 / r) - prev_x0.clone() * (0.5 / r)
            }
            None => x0.clone(),
        };
        x = x * (sigma(next) / sigma(t)) - d * (alpha(next) * ((-h).exp() - 1.0));
        previous = Some((x0, h));
    }
    Ok(x)
}
