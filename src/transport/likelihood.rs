//! The likelihood of data under an interpolant (SiT's `sample_ode_likelihood`): the
//! probability-flow ODE from data (t = 1) to noise (t = 0) with the log-density's change, the
//! divergence of the velocity, estimated by Hutchinson's trace estimator with a fresh
//! Rademacher probe eps at every evaluation: div v ~ eps^T (dv/dx) eps. Then
//! log p(x) = log N(z; 0, I) - integral of div v, z the noise end.
//!
//! The reference evaluates the network twice per evaluation (once under autograd for the
//! trace, once more for the drift); here one forward pass gives the velocity and one backward
//! pass the vector-Jacobian product.

use anyhow::{Result, bail};
use burn::prelude::*;

use super::integrators::{self, OdeMethod, State, linspace};
use super::{Integration, Transport};
use crate::diffusion::samplers::{ModelFn, times};

/// The velocity v(x, t) and the vector-Jacobian product eps^T (dv/dx) for a probe eps.
pub type VelocityVjp<'a> = dyn FnMut(Tensor<4>, f64, Tensor<4>) -> Result<(Tensor<4>, Tensor<4>)> + 'a;

/// The log-likelihood of a batch, per sample.
pub struct LogLikelihood {
    /// log p(x) in nats.
    pub logp: Vec<f64>,
    /// The noise end of the ODE (the data encoded).
    pub z: Tensor<4>,
}

impl LogLikelihood {
    /// Negative log-likelihood in bits per dimension of the model space (C H W dimensions).
    pub fn bits_per_dim(&self) -> Vec<f64> {
        let [_, c, h, w] = self.z.dims();
        let dims = (c * h * w) as f64;
        self.logp.iter().map(|lp| -lp / (dims * std::f64::consts::LN_2)).collect()
    }
}

/// How the likelihood ODE is solved: `method` over `num_steps` time points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Likelihood {
    pub method: OdeMethod,
    pub num_steps: usize,
}

impl Likelihood {
    /// Integrates from the data `x` to noise. `f` gives the velocity and its vector-Jacobian
    /// product ([`network_vjp`] makes one of a network); `probes` gives the standard Rademacher
    /// probes (+-1), one per evaluation.
    pub fn run(
        &self,
        transport: &Transport,
        f: &mut VelocityVjp,
        x: Tensor<4>,
        probes: &mut dyn FnMut() -> Tensor<4>,
    ) -> Result<LogLikelihood> {
        if self.num_steps < 2 {
            bail!("the likelihood ODE needs at least 2 time points, got {}", self.num_steps);
        }
        let [n, c, h, w] = x.dims();
        let (t0, t1) = transport.interval(Some(Integration::Ode), false);
        // s runs forward over the sampling interval; the network sees t = 1 - s (data to noise).
        let mut field = |y: State, s: f64| -> Result<State> {
            let x = y.first();
            let eps = probes();
            let (velocity, vjp) = f(x, 1.0 - s, eps.clone())?;
            let divergence = (vjp * eps).reshape([n, c * h * w]).sum_dim(1).reshape([n, 1, 1, 1]);
            Ok(State(vec![-velocity, divergence]))
        };
        let start = State(vec![x.clone(), Tensor::zeros([n, 1, 1, 1], &x.device())]);
        let end = integrators::odeint(&mut field, start, &linspace(t0, t1, self.num_steps), self.method)?;
        let mut parts = end.0.into_iter();
        let (z, delta) = (parts.next().expect("the point"), parts.next().expect("the log-density"));
        let dims = (c * h * w) as f64;
        let squares = (z.clone() * z.clone()).reshape([n, c * h * w]).sum_dim(1).reshape([n]);
        let per_sample = |t: Tensor<1>| t.into_data().convert::<f64>().try_into_vec::<f64>().expect("f64");
        let (squares, delta) = (per_sample(squares), per_sample(delta.reshape([n])));
        let log_normal = |sq: f64| -dims / 2.0 * (2.0 * std::f64::consts::PI).ln() - sq / 2.0;
        let logp = squares.iter().zip(&delta).map(|(&sq, &d)| log_normal(sq) - d).collect();
        Ok(LogLikelihood { logp, z })
    }
}

/// The velocity of `transport` from a network on an autodiff device, with the vector-Jacobian
/// product by one backward pass: what [`Likelihood::run`] calls. Tensors come and go on the
/// autodiff device's inner device.
pub fn network_vjp(
    transport: &Transport,
    network: &mut ModelFn,
    autodiff: &Device,
    x: Tensor<4>,
    t: f64,
    eps: Tensor<4>,
) -> (Tensor<4>, Tensor<4>) {
    let [n, c, _, _] = x.dims();
    let x = Tensor::<4>::from_inner(x).require_grad();
    let out = network(x.clone(), times(t, n, autodiff)).narrow(1, 0, c);
    let velocity = transport.velocity(out, x.clone(), &vec![t; n]);
    let grads = (velocity.clone() * Tensor::from_inner(eps)).sum().backward();
    let vjp = x.grad(&grads).expect("the velocity depends on x");
    (velocity.inner(), vjp)
}
