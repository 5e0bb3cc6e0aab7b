//! Where the ODE samplers call the model: time-step schedules over the VP process, and its
//! noise level sigma = sqrt((1 - abar) / abar), the variable of EDM (Karras et al. 2022) and of
//! the guidance interval (Kynkäänniemi et al. 2024). In it, x_t / sqrt(abar) = x_0 + sigma eps.

use anyhow::{Result, bail};

use super::GaussianDiffusion;

/// EDM's rho: how strongly the Karras schedule crowds its steps at low noise.
const KARRAS_RHO: f64 = 7.0;

/// How an ODE sampler spaces its model calls between sigma_max = sigma(T-1) and the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Evenly spaced timesteps. DDIM keeps the reference's `ddimN` respacing (t = 0, k, 2k, ...;
    /// its last call is at t = 0); the others call at round(linspace(0, T-1, N+1)) without the
    /// 0 (DPM-Solver's time-uniform; the last call is at t = (T-1)/N).
    TimeUniform,
    /// Evenly spaced in log-SNR (log sigma) from sigma(T-1) to sigma(0) (DPM-Solver's logSNR).
    LogSnr,
    /// EDM's sigma_i = (sigma_max^(1/7) + i/(N-1) (sigma_min^(1/7) - sigma_max^(1/7)))^7, from
    /// sigma(T-1) to sigma(0): short steps at low noise.
    Karras,
}

impl std::str::FromStr for Schedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "time-uniform" | "uniform" => Self::TimeUniform,
            "logsnr" | "log-snr" => Self::LogSnr,
            "karras" => Self::Karras,
            other => bail!("unknown schedule {other:?}: use time-uniform, logsnr or karras"),
        })
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TimeUniform => "time-uniform",
            Self::LogSnr => "logsnr",
            Self::Karras => "karras",
        })
    }
}

/// The model calls of a sampler, from the noisiest: the model time of each (what the network is
/// called with; fractional between the process's steps on log-SNR and Karras grids) and abar
/// there.
#[derive(Clone, Debug)]
pub struct Grid {
    pub t: Vec<f64>,
    pub abar: Vec<f64>,
}

impl Grid {
    /// The steps of a respaced process, from its last down (ancestral sampling's and DDIM's).
    pub fn of_respaced(d: &GaussianDiffusion) -> Self {
        Self {
            t: d.timestep_map.iter().rev().map(|&t| t as f64).collect(),
            abar: d.alphas_cumprod.iter().rev().copied().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.t.len()
    }

    pub fn is_empty(&self) -> bool {
        self.t.is_empty()
    }

    /// sqrt(abar): the signal scale alpha_t of x_t = alpha_t x_0 + sigma_t eps.
    pub fn alpha(&self, i: usize) -> f64 {
        self.abar[i].sqrt()
    }

    /// sqrt(1 - abar): the noise scale sigma_t of the VP process.
    pub fn noise(&self, i: usize) -> f64 {
        (1.0 - self.abar[i]).sqrt()
    }

    /// sigma = sigma_t / alpha_t, the noise level of x_t / alpha_t.
    pub fn sigma(&self, i: usize) -> f64 {
        ((1.0 - self.abar[i]) / self.abar[i]).sqrt()
    }

    /// Half the log-SNR, lambda = log(alpha_t / sigma_t), the time of the DPM-Solvers.
    pub fn lambda(&self, i: usize) -> f64 {
        self.alpha(i).ln() - self.noise(i).ln()
    }
}

impl GaussianDiffusion {
    fn log_sigma(&self, i: usize) -> f64 {
        0.5 * ((1.0 - self.alphas_cumprod[i]) / self.alphas_cumprod[i]).ln()
    }

    /// The noise level sigma at model time `t` of the full process (whose timestep map is the
    /// identity), clamped to [0, T-1]: log sigma is linear between the integer steps, as
    /// k-diffusion's discrete schedules interpolate it.
    pub fn sigma_at(&self, t: f64) -> f64 {
        let last = self.num_steps() - 1;
        let t = t.clamp(0.0, last as f64);
        let i = (t.floor() as usize).min(last.saturating_sub(1));
        let f = t - i as f64;
        let upper = if last == 0 { self.log_sigma(0) } else { self.log_sigma(i + 1) };
        (self.log_sigma(i) * (1.0 - f) + upper * f).exp()
    }

    /// The model time of noise level `sigma` (the inverse of [`Self::sigma_at`]), clamped to
    /// the process's range.
    pub fn time_at(&self, sigma: f64) -> f64 {
        let target = sigma.ln();
        let last = self.num_steps() - 1;
        // log sigma grows with t: find the step whose interval holds the target.
        let above = (0..=last).find(|&i| self.log_sigma(i) >= target);
        match above {
            None => last as f64,
            Some(0) => 0.0,
            Some(i) => {
                let (lo, hi) = (self.log_sigma(i - 1), self.log_sigma(i));
                (i - 1) as f64 + (target - lo) / (hi - lo)
            }
        }
    }
}

impl Schedule {
    /// The `steps` model calls of an ODE sampler on `base` (the full process). Times off the
    /// integer steps are rounded to f32, what the network sees, and their abar is that of the
    /// rounded time, so that sampler and network agree on the noise level.
    pub fn grid(self, base: &GaussianDiffusion, steps: usize) -> Result<Grid> {
        let last = base.num_steps() - 1;
        if steps == 0 {
            bail!("the number of sampling steps must be at least 1");
        }
        if steps > last {
            bail!("{steps} steps are more than the {last} noise levels above t = 0 that a {self} schedule can use");
        }
        if self == Self::TimeUniform {
            let t: Vec<usize> =
                (1..=steps).rev().map(|i| (last as f64 * i as f64 / steps as f64).round_ties_even() as usize).collect();
            let abar = t.iter().map(|&t| base.alphas_cumprod[t]).collect();
            return Ok(Grid { t: t.into_iter().map(|t| t as f64).collect(), abar });
        }
        let (hi, lo) = (base.sigma_at(last as f64), base.sigma_at(0.0));
        let sigma = |f: f64| match self {
            Self::Karras => {
                let (a, b) = (hi.powf(1.0 / KARRAS_RHO), lo.powf(1.0 / KARRAS_RHO));
                (a + f * (b - a)).powf(KARRAS_RHO)
            }
            _ => (hi.ln() + f * (lo.ln() - hi.ln())).exp(),
        };
        let f = |i: usize| if steps == 1 { 0.0 } else { i as f64 / (steps - 1) as f64 };
        let t: Vec<f64> = (0..steps).map(|i| base.time_at(sigma(f(i))) as f32 as f64).collect();
        if t.windows(2).any(|w| w[1] >= w[0]) {
            bail!("{steps} steps of a {self} schedule fall on the same model time: use fewer");
        }
        let abar = t.iter().map(|&t| 1.0 / (1.0 + base.sigma_at(t).powi(2))).collect();
        Ok(Grid { t, abar })
    }
}
