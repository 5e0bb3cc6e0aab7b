//! Integrators of the sampling ODE and SDE (`transport/integrators.py`): torchdiffeq's
//! fixed-grid `euler`, `heun2` and `rk4` and its adaptive `dopri5` (same step-size controller
//! and dense output, so the same calls), and Euler-Maruyama and stochastic Heun. They see only
//! a vector field `(x, t) -> dx/dt`; what it is made of lives in [`super::sampling`].

use anyhow::{Result, bail};
use burn::prelude::*;

/// A vector field: (x, t) -> dx/dt. An error (a cancelled run) stops the integration.
pub type Field<'a, S = Tensor<4>> = dyn FnMut(S, f64) -> Result<S> + 'a;

/// What an ODE integrates: one tensor, or several integrated together (the likelihood's point
/// and log-density) whose error norm is the largest of their RMS norms (torchdiffeq's mixed
/// norm of a tupled state).
#[derive(Clone, Debug)]
pub struct State(pub Vec<Tensor<4>>);

impl State {
    pub fn one(x: Tensor<4>) -> Self {
        Self(vec![x])
    }

    /// The first (or only) part.
    pub fn first(self) -> Tensor<4> {
        self.0.into_iter().next().expect("a state has a part")
    }

    fn map(self, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        Self(self.0.into_iter().map(f).collect())
    }

    fn zip(self, other: Self, f: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>) -> Self {
        Self(self.0.into_iter().zip(other.0).map(|(a, b)| f(a, b)).collect())
    }

    fn abs(self) -> Self {
        self.map(Tensor::abs)
    }

    fn max_pair(self, other: Self) -> Self {
        self.zip(other, Tensor::max_pair)
    }

    /// The largest over the parts of sqrt(mean(x^2)), each over the whole batch (so the
    /// whole batch takes the same steps, as in torchdiffeq).
    fn norm(&self) -> f64 {
        let rms = |x: &Tensor<4>| ((x.clone() * x.clone()).mean().into_scalar::<f32>() as f64).sqrt();
        self.0.iter().map(rms).fold(0.0, f64::max)
    }
}

impl std::ops::Add for State {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        self.zip(other, |a, b| a + b)
    }
}

impl std::ops::Sub for State {
    type Output = Self;
    fn sub(self, other: Self) -> Self {
        self.zip(other, |a, b| a - b)
    }
}

impl std::ops::Div for State {
    type Output = Self;
    fn div(self, other: Self) -> Self {
        self.zip(other, |a, b| a / b)
    }
}

impl std::ops::Mul<f64> for State {
    type Output = Self;
    fn mul(self, factor: f64) -> Self {
        self.map(|a| a * factor)
    }
}

impl std::ops::Add<f64> for State {
    type Output = Self;
    fn add(self, value: f64) -> Self {
        self.map(|a| a + value)
    }
}

/// An ODE solver by torchdiffeq's name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OdeMethod {
    /// One call per step.
    Euler,
    /// Heun's method (explicit trapezoid): two calls per step.
    Heun2,
    /// The classic fourth-order Runge-Kutta in its 3/8-rule form (torchdiffeq's `rk4`):
    /// four calls per step.
    Rk4,
    /// Dormand-Prince 5(4) with adaptive steps: six calls per attempted step, plus two to
    /// choose the first step.
    Dopri5 { atol: f64, rtol: f64 },
}

/// torchdiffeq's defaults as SiT's `sample_ode` passes them.
pub const DOPRI5_ATOL: f64 = 1e-6;
pub const DOPRI5_RTOL: f64 = 1e-3;

impl OdeMethod {
    /// `euler`, `heun2`, `rk4`, `dopri5` (with the given tolerances).
    pub fn named(name: &str, atol: f64, rtol: f64) -> Result<Self> {
        Ok(match name {
            "euler" => Self::Euler,
            "heun2" => Self::Heun2,
            "rk4" => Self::Rk4,
            "dopri5" => Self::Dopri5 { atol, rtol },
            other => bail!("unknown ODE method {other:?}: use euler, heun2, rk4 or dopri5"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Euler => "euler",
            Self::Heun2 => "heun2",
            Self::Rk4 => "rk4",
            Self::Dopri5 { .. } => "dopri5",
        }
    }
}

/// `torch.linspace(t0, t1, points)` in float32, as the reference's time grids are.
pub fn linspace(t0: f64, t1: f64, points: usize) -> Vec<f64> {
    let step = if points > 1 { (t1 - t0) / (points - 1) as f64 } else { 0.0 };
    (0..points)
        .map(|i| if i + 1 == points && points > 1 { t1 } else { t0 + step * i as f64 })
        .map(|t| t as f32 as f64)
        .collect()
}

/// Integrates dx/dt = f(x, t) from x at `t[0]` through the time points `t` (increasing, or
/// decreasing to integrate backwards) with `method`; returns x at the last point.
pub fn odeint(f: &mut Field<State>, x: State, t: &[f64], method: OdeMethod) -> Result<State> {
    if t.len() < 2 {
        bail!("an ODE solve needs at least 2 time points, got {}", t.len());
    }
    match method {
        OdeMethod::Dopri5 { atol, rtol } => dopri5(f, x, t[0], t[t.len() - 1], atol, rtol),
        fixed => t.windows(2).try_fold(x, |y, w| fixed_step(f, fixed, y, w[0], w[1])),
    }
}

/// One step of a fixed-grid solver from (y, t0) to t1 (`_step_func` of torchdiffeq).
fn fixed_step(f: &mut Field<State>, method: OdeMethod, y: State, t0: f64, t1: f64) -> Result<State> {
    let dt = t1 - t0;
    let k1 = f(y.clone(), t0)?;
    let dy = match method {
        OdeMethod::Euler => k1 * dt,
        OdeMethod::Heun2 => {
            let k2 = f(y.clone() + k1.clone() * dt, t0 + dt)?;
            (k1 * 0.5 + k2 * 0.5) * dt
        }
        OdeMethod::Rk4 => {
            let third = 1.0 / 3.0;
            let k2 = f(y.clone() + k1.clone() * (dt * third), t0 + dt * third)?;
            let k3 = f(y.clone() + (k2.clone() - k1.clone() * third) * dt, t0 + dt * (2.0 * third))?;
            let k4 = f(y.clone() + (k1.clone() - k2.clone() + k3.clone()) * dt, t1)?;
            (k1 + (k2 + k3) * 3.0 + k4) * (dt * 0.125)
        }
        OdeMethod::Dopri5 { .. } => unreachable!("dopri5 is adaptive"),
    };
    Ok(y + dy)
}

/// The Dormand-Prince tableau (torchdiffeq's `_DORMAND_PRINCE_SHAMPINE_TABLEAU`): stage times,
/// stage weights (the last row is also the 5th-order solution), the error weights and the
/// weights of the midpoint used by the dense output.
const DP_ALPHA: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const DP_BETA: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
    &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
const DP_ERROR: [f64; 7] = [
    35.0 / 384.0 - 1951.0 / 21600.0,
    0.0,
    500.0 / 1113.0 - 22642.0 / 50085.0,
    125.0 / 192.0 - 451.0 / 720.0,
    -2187.0 / 6784.0 - -12231.0 / 42400.0,
    11.0 / 84.0 - 649.0 / 6300.0,
    -1.0 / 60.0,
];
const DP_MID: [f64; 7] = [
    6025192743.0 / 30085553152.0 / 2.0,
    0.0,
    51252292925.0 / 65400821598.0 / 2.0,
    -2691868925.0 / 45128329728.0 / 2.0,
    187940372067.0 / 1594534317056.0 / 2.0,
    -1776094331.0 / 19743644256.0 / 2.0,
    11237099.0 / 235043384.0 / 2.0,
];
/// The step-size controller of torchdiffeq (`safety`, `ifactor`, `dfactor`, the order).
const SAFETY: f64 = 0.9;
const IFACTOR: f64 = 10.0;
const DFACTOR: f64 = 0.2;
const DP_ORDER: f64 = 5.0;
/// torchdiffeq's `max_num_steps`, beyond which a solve is given up.
const MAX_ATTEMPTS: usize = 1 << 20;

/// `sum_j k_j w_j` of stage derivatives.
fn weighted(k: &[State], w: &[f64]) -> State {
    let mut terms = k.iter().zip(w).filter(|(_, w)| **w != 0.0).map(|(k, &w)| k.clone() * w);
    let first = terms.next().expect("a nonzero weight");
    terms.fold(first, |acc, term| acc + term)
}

/// Adaptive Dormand-Prince from x at `t_start` to `t_end` (either direction), as torchdiffeq's
/// `Dopri5Solver` with its `_select_initial_step`: steps are accepted when the RMS of the
/// error over `atol + rtol max(|y0|, |y1|)` is at most 1, and x at `t_end` is read off the
/// 4th-order dense output of the step that passes it. Backwards solves run in s = -t, as
/// torchdiffeq does.
fn dopri5(f: &mut Field<State>, y0: State, t_start: f64, t_end: f64, atol: f64, rtol: f64) -> Result<State> {
    let dir = if t_end >= t_start { 1.0 } else { -1.0 };
    let mut g = |y: State, s: f64| -> Result<State> { Ok(f(y, dir * s)? * dir) };
    let (s_end, mut s) = (dir * t_end, dir * t_start);
    let mut y = y0;
    let mut f0 = g(y.clone(), s)?;
    let mut dt = initial_step(&mut g, y.clone(), f0.clone(), s, atol, rtol)?;
    // The last accepted step: its interval and dense-output coefficients.
    let mut last: Option<(f64, f64, [State; 5])> = None;
    let mut attempts = 0;
    while last.as_ref().is_none_or(|(_, s1, _)| s_end > *s1) {
        attempts += 1;
        if attempts > MAX_ATTEMPTS {
            bail!("dopri5 gave up after {MAX_ATTEMPTS} steps (tolerances too tight?)");
        }
        if !dt.is_finite() || dt <= 0.0 || s + dt <= s {
            bail!("dopri5: the step size underflowed at t = {}", dir * s);
        }
        let s1 = s + dt;
        let mut k = vec![f0.clone()];
        let mut yi = y.clone();
        for (alpha, beta) in DP_ALPHA.iter().zip(DP_BETA) {
            let ti = if *alpha == 1.0 { s1 } else { s + alpha * dt };
            yi = y.clone() + weighted(&k, beta) * dt;
            k.push(g(yi.clone(), ti)?);
        }
        let y1 = yi;
        let error = weighted(&k, &DP_ERROR) * dt;
        let tolerance = y.clone().abs().max_pair(y1.clone().abs()) * rtol + atol;
        let ratio = (error / tolerance).norm();
        if ratio <= 1.0 {
            let y_mid = y.clone() + weighted(&k, &DP_MID) * dt;
            let f1 = k[6].clone();
            last = Some((s, s1, interp_fit(y.clone(), y1.clone(), y_mid, f0, f1.clone(), dt)));
            (y, f0, s) = (y1, f1, s1);
        }
        dt *= optimal_step_factor(ratio);
    }
    let (s0, s1, coefficients) = last.expect("a step was accepted");
    Ok(interp_evaluate(coefficients, (s_end - s0) / (s1 - s0)))
}

/// The first step of Hairer, Norsett and Wanner (torchdiffeq's `_select_initial_step`, with
/// order 4 = dopri5's order - 1): one extra call.
fn initial_step(
    g: &mut impl FnMut(State, f64) -> Result<State>,
    y0: State,
    f0: State,
    s0: f64,
    atol: f64,
    rtol: f64,
) -> Result<f64> {
    let scale = y0.clone().abs() * rtol + atol;
    let d0 = (y0.clone() / scale.clone()).norm();
    let d1 = (f0.clone() / scale.clone()).norm();
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
    let f1 = g(y0 + f0.clone() * h0, s0 + h0)?;
    let d2 = ((f1 - f0) / scale).norm() / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(1.0 / DP_ORDER) // 1 / (order + 1), order 4
    };
    Ok((100.0 * h0).min(h1))
}

/// torchdiffeq's `_optimal_step_size`: the factor of the next step size after an error ratio.
fn optimal_step_factor(ratio: f64) -> f64 {
    if ratio == 0.0 {
        return IFACTOR;
    }
    let dfactor = if ratio < 1.0 { 1.0 } else { DFACTOR };
    IFACTOR.min((SAFETY / ratio.powf(1.0 / DP_ORDER)).max(dfactor))
}

/// Coefficients [e, d, c, b, a] of the quartic through a step (torchdiffeq's `_interp_fit`).
fn interp_fit(y0: State, y1: State, y_mid: State, f0: State, f1: State, dt: f64) -> [State; 5] {
    let a = (f1.clone() - f0.clone()) * (2.0 * dt) - (y1.clone() + y0.clone()) * 8.0 + y_mid.clone() * 16.0;
    let b = (f0.clone() * 5.0 - f1.clone() * 3.0) * dt + y0.clone() * 18.0 + y1.clone() * 14.0 - y_mid.clone() * 32.0;
    let c = (f1 - f0.clone() * 4.0) * dt - y0.clone() * 11.0 - y1 * 5.0 + y_mid * 16.0;
    [y0, f0 * dt, c, b, a]
}

/// The quartic at x in [0, 1] of the step (torchdiffeq's `_interp_evaluate`).
fn interp_evaluate(coefficients: [State; 5], x: f64) -> State {
    let [e, d, c, b, a] = coefficients;
    e + d * x + c * x.powi(2) + b * x.powi(3) + a * x.powi(4)
}

/// An SDE solver (the reference's `sampling_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdeMethod {
    /// Euler-Maruyama: one drift per step.
    Euler,
    /// Stochastic Heun: noise first, then Heun's step on the drift: two per step.
    Heun,
}

impl std::str::FromStr for SdeMethod {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "Euler" | "euler" => Self::Euler,
            "Heun" | "heun" => Self::Heun,
            other => bail!("unknown SDE method {other:?}: use Euler or Heun"),
        })
    }
}

/// Integrates dx = drift(x, t) dt + sqrt(2 w(t)) dW over the steps between the time points
/// `t` (the reference's `sde.sample`: the last point is not stepped from), with standard
/// normal draws from `noise`, one per step; returns x at the last point.
pub fn sde_integrate(
    drift: &mut Field,
    diffusion: &dyn Fn(f64) -> f64,
    mut x: Tensor<4>,
    t: &[f64],
    method: SdeMethod,
    noise: &mut dyn FnMut() -> Tensor<4>,
) -> Result<Tensor<4>> {
    if t.len() < 2 {
        bail!("an SDE solve needs at least 2 time points, got {}", t.len());
    }
    let dt = t[1] - t[0];
    for &ti in &t[..t.len() - 1] {
        let dw = noise() * dt.sqrt();
        let kick = dw * (2.0 * diffusion(ti)).sqrt();
        x = match method {
            SdeMethod::Euler => x.clone() + drift(x, ti)? * dt + kick,
            SdeMethod::Heun => {
                let xhat = x + kick;
                let k1 = drift(xhat.clone(), ti)?;
                let k2 = drift(xhat.clone() + k1.clone() * dt, ti + dt)?;
                xhat + (k1 + k2) * (0.5 * dt)
            }
        };
    }
    Ok(x)
}
