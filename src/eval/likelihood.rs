//! `udit likelihood`: the negative log-likelihood of data under an interpolant model, in bits
//! per dimension of the model space, by [`crate::transport::likelihood`] (the reference's
//! `--likelihood` path computes it and never returns it). Class-conditional: each sample is
//! scored given its own label, without guidance.

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::codec::Codec;
use crate::data::{Dataset, Space};
use crate::model::Denoiser;
use crate::progress::Progress;
use crate::rng::NoiseStreams;
use crate::transport::Transport;
use crate::transport::likelihood::{Likelihood, network_vjp};

/// Bits per dimension of every scored sample, and the network evaluations spent.
pub struct Nll {
    pub bits_per_dim: Vec<f64>,
    /// Forward (and backward) passes over all batches, one per ODE evaluation per batch.
    pub evaluations: usize,
}

impl Nll {
    pub fn mean(&self) -> f64 {
        self.bits_per_dim.iter().sum::<f64>() / self.bits_per_dim.len() as f64
    }

    /// The standard error of the mean over the samples.
    pub fn standard_error(&self) -> f64 {
        let n = self.bits_per_dim.len() as f64;
        let m = self.mean();
        let var = self.bits_per_dim.iter().map(|b| (b - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (var / n).sqrt()
    }
}

/// What [`nll`] scores and how.
pub struct LikelihoodRun<'a> {
    /// The network, on an autodiff device.
    pub model: &'a Denoiser,
    pub transport: Transport,
    pub likelihood: Likelihood,
    /// Pixels to model space (pixel datasets: the posterior mean of a VAE).
    pub codec: &'a Codec,
    pub seed: u64,
    pub batch: usize,
}

/// The NLL of the first `count` samples of `data` (in order), in batches; `device` is the
/// autodiff device the model is on.
pub fn nll(run: &LikelihoodRun, data: &dyn Dataset, count: usize, device: &Device, progress: &Progress) -> Result<Nll> {
    if count == 0 || run.batch == 0 {
        bail!("--num-samples and --batch must be at least 1");
    }
    if count > data.len() {
        bail!("the data holds {} samples, fewer than the {count} asked for", data.len());
    }
    let inner = device.clone().inner();
    let shape = data.shape();
    let per: usize = shape.iter().product();
    let mut out = Nll { bits_per_dim: Vec::with_capacity(count), evaluations: 0 };
    for first in (0..count).step_by(run.batch) {
        let n = run.batch.min(count - first);
        let mut x = vec![0f32; n * per];
        let mut labels = Vec::with_capacity(n);
        for (i, chunk) in x.chunks_mut(per).enumerate() {
            labels.push(data.read(first + i, false, chunk)? as i64);
        }
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, shape[0], shape[1], shape[2]]), &inner);
        let x = match data.space() {
            Space::Model => x,
            Space::Pixels => run.codec.encode(x, |mean| mean.zeros_like()),
        };
        let [_, c, h, w] = x.dims();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), device);
        let mut network = |x, t| run.model.forward(x, t, y.clone());
        let mut evaluations = 0;
        let mut vjp = |x, t, eps| {
            evaluations += 1;
            Ok(network_vjp(&run.transport, &mut network, device, x, t, eps))
        };
        let mut probes = NoiseStreams::probes(run.seed, first, n, [c, h, w]);
        let result = run.likelihood.run(&run.transport, &mut vjp, x, &mut || probes.next_signs(&inner))?;
        out.bits_per_dim.extend(result.bits_per_dim());
        out.evaluations += evaluations;
        progress.inc(n as u64);
        progress.set_message(format!("{:.4} bits/dim so far", out.mean()));
    }
    progress.finish();
    Ok(out)
}
