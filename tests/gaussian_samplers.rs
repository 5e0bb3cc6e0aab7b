//! Every sampler on data whose answer is known in closed form: x_0 ~ N(mu, s^2) independently
//! per coordinate (mu and s differ between coordinates). With y = x_t / sqrt(abar) = x_0 +
//! sigma eps, the exact denoiser is E[x_0 | y] = mu + s^2 / (s^2 + sigma^2) (y - mu), and the
//! probability-flow ODE keeps (y - mu) / sqrt(s^2 + sigma^2) constant along each path.
//!
//! The exact eps of that denoiser is the model. Each ODE sampler ends with the x_0 prediction
//! of its last call (a first-order step to sigma = 0 that no order applies to), so its answer
//! is: the exact ODE solution from its first noise level to its last, then the exact x_0
//! prediction there. The error against that answer must shrink at the solver's order.

use burn::prelude::*;
use burn::tensor::TensorData;
use udit::diffusion::GaussianDiffusion;
use udit::diffusion::samplers::{Plan, Sampler};
use udit::diffusion::schedule::Schedule;
use udit::rng::NoiseStreams;

/// Coordinates of a sample: 1 x 8 x 8.
const SHAPE: [usize; 3] = [1, 8, 8];

struct Gaussian {
    mu: Vec<f64>,
    s: Vec<f64>,
}

impl Gaussian {
    /// mu in [-0.8, 0.8], s in [0.1, 1] (images in [-1, 1] have s about 0.5).
    fn new() -> Self {
        let d = SHAPE.iter().product::<usize>();
        let mu = (0..d).map(|i| -0.8 + 1.6 * ((i * 37) % d) as f64 / d as f64).collect();
        let s = (0..d).map(|i| 0.1 + 0.9 * ((i * 11) % d) as f64 / d as f64).collect();
        Self { mu, s }
    }

    /// E[x_0 | y] at noise level sigma, coordinate j.
    fn denoise(&self, j: usize, y: f64, sigma: f64) -> f64 {
        let (mu, s2) = (self.mu[j], self.s[j] * self.s[j]);
        mu + s2 / (s2 + sigma * sigma) * (y - mu)
    }

    /// The model: the exact eps of x_t at model time t (in f64 on the host).
    fn model(&self, base: &GaussianDiffusion, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let dims = x.dims();
        let sigma = base.sigma_at(t.into_data().as_slice::<f32>().unwrap()[0] as f64);
        let alpha = (1.0 + sigma * sigma).sqrt().recip();
        let d = self.mu.len();
        let x = x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let eps: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let y = v as f64 / alpha;
                ((y - self.denoise(i % d, y, sigma)) / sigma) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(eps, dims), &Device::flex())
    }

    /// The sampler's answer with exact steps: the ODE from the plan's first noise level to its
    /// last, then the x_0 prediction there.
    fn exact(&self, plan: &Plan, x_t: &[f32]) -> Vec<f64> {
        let g = &plan.grid;
        let (s0, s1) = (g.sigma(0), g.sigma(g.len() - 1));
        let d = self.mu.len();
        x_t.iter()
            .enumerate()
            .map(|(i, &v)| {
                let j = i % d;
                let (mu, s2) = (self.mu[j], self.s[j] * self.s[j]);
                let y0 = v as f64 / g.alpha(0);
                let y1 = mu + (y0 - mu) * ((s2 + s1 * s1) / (s2 + s0 * s0)).sqrt();
                self.denoise(j, y1, s1)
            })
            .collect()
    }
}

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// Runs `sampler` for `steps` steps of `schedule` from seed-0 noise on `n` samples.
fn run(
    g: &Gaussian,
    sampler: Sampler,
    schedule: Option<Schedule>,
    steps: usize,
    n: usize,
) -> (Plan, Vec<f32>, Vec<f32>) {
    let dev = Device::flex();
    let base = GaussianDiffusion::reference();
    let plan = sampler.plan(&base, steps, schedule).unwrap();
    let mut noise = NoiseStreams::new(0, 0, n, SHAPE);
    let x_t = noise.next(&dev);
    let mut calls = 0;
    let out = plan
        .run(
            &mut |x, t| {
                calls += 1;
                g.model(&base, x, t)
            },
            x_t.clone(),
            &mut noise,
            &dev,
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(calls, plan.calls(), "{sampler:?}: the plan counts the calls");
    (plan, values(x_t), values(out))
}

/// Root-mean-square error of the sampler against its exact answer.
fn error(g: &Gaussian, sampler: Sampler, schedule: Schedule, steps: usize) -> f64 {
    let (plan, x_t, out) = run(g, sampler, Some(schedule), steps, 4);
    let exact = g.exact(&plan, &x_t);
    (out.iter().zip(&exact).map(|(&o, e)| (o as f64 - e).powi(2)).sum::<f64>() / out.len() as f64).sqrt()
}

/// Least-squares slope of -log(error) against log(steps).
fn order(errors: &[(usize, f64)]) -> f64 {
    let pts: Vec<(f64, f64)> = errors.iter().map(|&(n, e)| ((n as f64).ln(), -e.ln())).collect();
    let (mx, my) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (mx / pts.len() as f64, my / pts.len() as f64);
    let cov: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = pts.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    cov / var
}

#[test]
fn ode_samplers_converge_at_their_order() {
    let g = Gaussian::new();
    // (sampler, schedule, step counts, order): the smooth schedules, where every step shrinks
    // with N (time-uniform grids keep a last step of constant log-SNR size, below).
    let cases = [
        (Sampler::Ddim { eta: 0.0 }, Schedule::LogSnr, [10, 20, 40, 80], 1.0),
        (Sampler::DpmSolverPp2M, Schedule::LogSnr, [20, 28, 40, 56], 2.0),
        (Sampler::Heun, Schedule::Karras, [20, 28, 40, 56], 2.0),
        (Sampler::UniPc, Schedule::Karras, [28, 40, 56, 80], 4.0),
    ];
    for (sampler, schedule, steps, expected) in cases {
        let errors: Vec<(usize, f64)> = steps.iter().map(|&n| (n, error(&g, sampler, schedule, n))).collect();
        let p = order(&errors);
        eprintln!("{sampler:?} {schedule}: order {p:.2}, errors {errors:?}");
        assert!((p - expected).abs() < 0.15 * expected, "{sampler:?} on {schedule}: order {p:.2}, expected {expected}");
    }
}

#[test]
fn every_ode_sampler_converges_on_every_schedule() {
    let g = Gaussian::new();
    for sampler in [Sampler::Ddim { eta: 0.0 }, Sampler::DpmSolverPp2M, Sampler::UniPc, Sampler::Heun] {
        for schedule in [Schedule::TimeUniform, Schedule::LogSnr, Schedule::Karras] {
            let (coarse, fine) = (error(&g, sampler, schedule, 10), error(&g, sampler, schedule, 100));
            // Time-uniform grids converge slowly: their last step keeps its log-SNR size.
            assert!(fine < 0.02 && fine < coarse / 2.5, "{sampler:?} on {schedule}: {coarse:.2e} -> {fine:.2e}");
        }
    }
}

/// Mean and variance of (x - mu) / s over every coordinate of every sample.
fn standardized_moments(g: &Gaussian, out: &[f32]) -> (f64, f64) {
    let d = g.mu.len();
    let z: Vec<f64> = out.iter().enumerate().map(|(i, &v)| (v as f64 - g.mu[i % d]) / g.s[i % d]).collect();
    let mean = z.iter().sum::<f64>() / z.len() as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
    (mean, var)
}

#[test]
fn stochastic_samplers_draw_the_data_distribution() {
    let g = Gaussian::new();
    // 256 samples of 64 coordinates: standard errors 0.008 (mean) and 0.011 (variance).
    let moments = |sampler: Sampler, steps: usize| {
        let (_, _, out) = run(&g, sampler, None, steps, 256);
        standardized_moments(&g, &out)
    };
    for (sampler, steps) in [
        (Sampler::Ancestral, 250),
        (Sampler::Ancestral, 1000),
        (Sampler::Ddim { eta: 1.0 }, 1000),
        (Sampler::Ddim { eta: 0.5 }, 1000),
    ] {
        let (mean, var) = moments(sampler, steps);
        assert!(
            mean.abs() < 0.04 && (var - 1.0).abs() < 0.05,
            "{sampler:?}, {steps} steps: mean {mean}, variance {var}"
        );
    }
    // The check tells a coarse chain apart: 10 steps miss the variance by far.
    for sampler in [Sampler::Ancestral, Sampler::Ddim { eta: 1.0 }] {
        let (_, var) = moments(sampler, 10);
        assert!((var - 1.0).abs() > 0.3, "{sampler:?}, 10 steps: variance {var}");
    }
}

#[test]
fn schedules_span_the_process_as_documented() {
    let base = GaussianDiffusion::reference();
    let (hi, lo) = (base.sigma_at(999.0), base.sigma_at(0.0));
    // sigma = sqrt((1 - abar) / abar) at the steps, log-linear between them, inverted by time_at.
    let abar = &base.alphas_cumprod;
    assert!((hi - ((1.0 - abar[999]) / abar[999]).sqrt()).abs() < 1e-9 * hi);
    let mid = (base.sigma_at(500.0).ln() + base.sigma_at(501.0).ln()) / 2.0;
    assert!((base.sigma_at(500.5).ln() - mid).abs() < 1e-12);
    for t in [0.0, 0.25, 17.5, 500.0, 998.75, 999.0] {
        assert!((base.time_at(base.sigma_at(t)) - t).abs() < 1e-9, "time_at(sigma_at({t}))");
    }
    let n = 12;
    for schedule in [Schedule::LogSnr, Schedule::Karras] {
        let g = schedule.grid(&base, n).unwrap();
        let sigmas: Vec<f64> = (0..n).map(|i| g.sigma(i)).collect();
        assert!(
            (sigmas[0] / hi - 1.0).abs() < 1e-5 && (sigmas[n - 1] / lo - 1.0).abs() < 1e-5,
            "{schedule}: {sigmas:?}"
        );
        let expected = |i: usize| {
            let f = i as f64 / (n - 1) as f64;
            match schedule {
                Schedule::LogSnr => (hi.ln() + f * (lo.ln() - hi.ln())).exp(),
                _ => (hi.powf(1.0 / 7.0) + f * (lo.powf(1.0 / 7.0) - hi.powf(1.0 / 7.0))).powf(7.0),
            }
        };
        for (i, s) in sigmas.iter().enumerate() {
            // Within the rounding of the model time to f32.
            assert!((s / expected(i) - 1.0).abs() < 1e-5, "{schedule} step {i}: {s} vs {}", expected(i));
        }
    }
    // Time-uniform: DPM-Solver's round(linspace(0, 999, N + 1)) without the 0; DDIM's the
    // reference "ddimN" respacing.
    let g = Schedule::TimeUniform.grid(&base, 4).unwrap();
    assert_eq!(g.t, vec![999.0, 749.0, 500.0, 250.0]);
    let ddim = Sampler::Ddim { eta: 0.0 }.plan(&base, 4, Some(Schedule::TimeUniform)).unwrap();
    assert_eq!(ddim.grid.t, vec![750.0, 500.0, 250.0, 0.0]);
    // Heun calls twice at every noise level but the first.
    let heun = Sampler::Heun.plan(&base, 3, None).unwrap();
    assert_eq!(heun.schedule, Some(Schedule::Karras));
    assert_eq!(heun.calls(), 5);
    let e = |r: anyhow::Result<Plan>| format!("{:#}", r.unwrap_err());
    assert!(e(Sampler::Ancestral.plan(&base, 10, Some(Schedule::Karras))).contains("applies to ddim"));
    assert!(e(Sampler::UniPc.plan(&base, 0, None)).contains("at least 1"));
    assert!(e(Sampler::UniPc.plan(&base, 1000, Some(Schedule::LogSnr))).contains("more than the 999"));
}
