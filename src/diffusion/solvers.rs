//! Solvers of the probability-flow ODE on a [`Grid`] of noise levels, from x_T at the first to
//! the data: every one ends with the x_0 prediction of its last call (a first-order step to
//! sigma = 0, as k-diffusion's and DPM-Solver's samplers end).
//!
//! In VP terms x_t = alpha_t x_0 + sigma_t eps with lambda = log(alpha_t / sigma_t); the
//! network's eps gives the data prediction x_0 = (x_t - sigma_t eps) / alpha_t.

use anyhow::Result;
use burn::prelude::*;

use super::samplers::{ModelFn, OnStep, times};
use super::schedule::Grid;

/// The denoiser as the solvers call it: at the grid's noise levels, on a batch of x_T's shape.
pub struct Calls<'a, 'm> {
    pub model: &'a mut ModelFn<'m>,
    pub grid: &'a Grid,
    pub device: &'a Device,
}

impl Calls<'_, '_> {
    /// eps of x at noise level i (the leading channels of the output).
    pub fn eps(&mut self, x: Tensor<4>, i: usize) -> Tensor<4> {
        let [n, c, _, _] = x.dims();
        (self.model)(x, times(self.grid.t[i], n, self.device)).narrow(1, 0, c)
    }

    /// The data prediction x_0 = (x_t - sigma_t eps) / alpha_t at noise level i.
    pub fn x0(&mut self, x: Tensor<4>, i: usize) -> Tensor<4> {
        let eps = self.eps(x.clone(), i);
        (x - eps * self.grid.noise(i)) / self.grid.alpha(i)
    }
}

/// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the exact linear part and a second-order
/// multistep data term; the first step is first order.
pub fn dpm_solver_pp_2m(calls: &mut Calls, mut x: Tensor<4>, on_step: &mut OnStep) -> Result<Tensor<4>> {
    let grid = calls.grid;
    let mut previous: Option<(Tensor<4>, f64)> = None; // (x_0 prediction, step size h)
    for i in 0..grid.len() {
        let x0 = calls.x0(x.clone(), i);
        on_step(&x0)?;
        if i + 1 == grid.len() {
            return Ok(x0);
        }
        let h = grid.lambda(i + 1) - grid.lambda(i);
        let d = match &previous {
            Some((prev_x0, prev_h)) => {
                let r = prev_h / h;
                x0.clone() * (1.0 + 0.5 / r) - prev_x0.clone() * (0.5 / r)
            }
            None => x0.clone(),
        };
        x = x * (grid.noise(i + 1) / grid.noise(i)) - d * (grid.alpha(i + 1) * ((-h).exp() - 1.0));
        previous = Some((x0, h));
    }
    unreachable!("a grid has at least one step")
}

/// UniPC's order: a third-order predictor (after first- and second-order starting steps),
/// raised by one by the corrector.
const UNIPC_ORDER: usize = 3;

/// UniPC (Zhao et al. 2023, the official `multistep_uni_pc_bh_update` with B(h) = e^h - 1, data
/// prediction). Each step: the UniP predictor from the last x_0 predictions, a call at the
/// predicted point, then the UniC corrector with that call's x_0 (which the next step reuses).
/// The last call's x_0 is the sample.
pub fn unipc(calls: &mut Calls, mut x: Tensor<4>, on_step: &mut OnStep) -> Result<Tensor<4>> {
    let grid = calls.grid;
    let first = calls.x0(x.clone(), 0);
    on_step(&first)?;
    // The newest x_0 predictions with their lambda, newest last.
    let mut history = vec![(first, grid.lambda(0))];
    for i in 1..grid.len() {
        let order = history.len().min(UNIPC_ORDER);
        let (m0, l0) = history.last().cloned().expect("a first call");
        let h = grid.lambda(i) - l0;
        // r_k = (lambda of the k-th previous prediction - l0) / h, and D1_k = (m_k - m0) / r_k.
        let earlier = &history[history.len() - order..history.len() - 1];
        let rks: Vec<f64> = earlier.iter().rev().map(|(_, l)| (l - l0) / h).chain([1.0]).collect();
        let d1s: Vec<Tensor<4>> =
            earlier.iter().rev().zip(&rks).map(|((m, _), r)| (m.clone() - m0.clone()) / *r).collect();
        let (rhos_p, rhos_c, phi_1, b_h) = unipc_coefficients(&rks, -h);
        let combine = |rhos: &[f64]| -> Option<Tensor<4>> {
            d1s.iter().zip(rhos).map(|(d, &rho)| d.clone() * rho).reduce(|a, b| a + b)
        };
        let alpha = grid.alpha(i);
        let linear = x * (grid.noise(i) / grid.noise(i - 1)) - m0.clone() * (alpha * phi_1);
        let predicted = match combine(&rhos_p) {
            Some(res) => linear.clone() - res * (alpha * b_h),
            None => linear.clone(),
        };
        let mt = calls.x0(predicted, i);
        on_step(&mt)?;
        if i + 1 == grid.len() {
            return Ok(mt);
        }
        let last_rho = rhos_c[order - 1];
        let correction = match combine(&rhos_c[..order - 1]) {
            Some(res) => res + (mt.clone() - m0) * last_rho,
            None => (mt.clone() - m0) * last_rho,
        };
        x = linear - correction * (alpha * b_h);
        history.push((mt, grid.lambda(i)));
        if history.len() > UNIPC_ORDER {
            history.remove(0);
        }
    }
    Ok(history.pop().expect("a first call").0)
}

/// UniPC's weights for step-size ratios `rks` (the last is 1) and hh = -h: the predictor's
/// (one fewer than `rks`), the corrector's, h phi_1(hh) = e^hh - 1 and B(h) (the same for bh2).
fn unipc_coefficients(rks: &[f64], hh: f64) -> (Vec<f64>, Vec<f64>, f64, f64) {
    let order = rks.len();
    let phi_1 = hh.exp_m1();
    let b_h = hh.exp_m1();
    // b_k = k! h phi_{k+1}(hh) / B(h) and R_kj = r_j^k, k = 0..order.
    let mut b = Vec::with_capacity(order);
    let mut phi_k = phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    for k in 1..=order {
        b.push(phi_k * factorial / b_h);
        factorial *= (k + 1) as f64;
        phi_k = phi_k / hh - 1.0 / factorial;
    }
    let r = |size: usize| -> Vec<Vec<f64>> {
        (0..size).map(|k| rks[..size].iter().map(|rk| rk.powi(k as i32)).collect()).collect()
    };
    // The official code fixes 1/2 for the 1-point systems, as in its paper's UniPC-2 / UniC-1.
    let rhos_p = match order {
        1 => vec![],
        2 => vec![0.5],
        _ => solve(r(order - 1), b[..order - 1].to_vec()),
    };
    let rhos_c = if order == 1 { vec![0.5] } else { solve(r(order), b) };
    (rhos_p, rhos_c, phi_1, b_h)
}

/// Solves a x = b (a small, non-singular system) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).expect("rows");
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            a[row].iter_mut().zip(&pivot_row).skip(col).for_each(|(v, p)| *v -= f * p);
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// Heun's method in EDM's variables (Karras et al. 2022, Algorithm 1, no churn): y = x_t /
/// alpha_t follows dy/dsigma = (y - x_0(y)) / sigma = eps. An Euler step to the next noise
/// level, a second call there, the trapezoidal average of the two slopes; after the last noise
/// level, the x_0 prediction.
pub fn heun(calls: &mut Calls, x: Tensor<4>, on_step: &mut OnStep) -> Result<Tensor<4>> {
    let grid = calls.grid;
    // eps at y on noise level i, after telling on_step its x_0 = y - sigma eps.
    let mut slope = |y: &Tensor<4>, i: usize, on_step: &mut OnStep| -> Result<Tensor<4>> {
        let eps = calls.eps(y.clone() * grid.alpha(i), i);
        on_step(&(y.clone() - eps.clone() * grid.sigma(i)))?;
        Ok(eps)
    };
    let mut y = x / grid.alpha(0);
    for i in 0..grid.len() {
        let d = slope(&y, i, on_step)?;
        if i + 1 == grid.len() {
            return Ok(y - d * grid.sigma(i));
        }
        let dt = grid.sigma(i + 1) - grid.sigma(i);
        let euler = y.clone() + d.clone() * dt;
        let d2 = slope(&euler, i + 1, on_step)?;
        y = y + (d + d2) * (dt / 2.0);
    }
    unreachable!("a grid has at least one step")
}
