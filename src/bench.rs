//! `udit bench`: wall-clock timing of the denoiser forward pass and of one training step.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::cost::Cost;
use crate::model::{Denoiser, FfnForm, ModelConfig};

#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub best_ms: f64,
    pub median_ms: f64,
    /// Achieved GFLOP/s at the best time (2 FLOPs per MAC; a training step is counted as
    /// three forward passes: forward, and backward for activations and weights).
    pub gflops: f64,
    pub iters: usize,
}

/// Times `iters` calls after `warmup` untimed ones. Forward uses the merged inference form;
/// `train` times forward + MSE loss + backward + AdamW step on the training form.
pub fn run(cfg: &ModelConfig, batch: usize, train: bool, warmup: usize, iters: usize, device: &Device) -> BenchResult {
    let s = cfg.input_size();
    let inputs = |device: &Device| {
        let x = Tensor::<4>::random([batch, cfg.in_channels(), s, s], Distribution::Normal(0.0, 1.0), device);
        let t = Tensor::<1>::random([batch], Distribution::Uniform(0.0, 999.0), device);
        let y = Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, cfg.num_classes() as f64), device);
        (x, t, y)
    };
    let mut times = Vec::with_capacity(iters);
    if train {
        let device = device.clone().autodiff();
        let mut model = Denoiser::new(cfg, FfnForm::Train, &device);
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        for i in 0..warmup + iters {
            let (x, t, y) = inputs(&device);
            let start = Instant::now();
            let out = model.forward(x.clone(), t, y);
            let loss = (out.narrow(1, 0, cfg.in_channels()) - x).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-4, model, grads);
            let _ = loss.into_data(); // wait for the step to finish
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    } else {
        let model = Denoiser::new(cfg, FfnForm::Train, device).merged();
        for i in 0..warmup + iters {
            let (x, t, y) = inputs(device);
            let start = Instant::now();
            let _ = model.forward(x, t, y).into_data();
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64());
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    let flops = 2.0 * Cost::of(cfg).macs as f64 * batch as f64 * if train { 3.0 } else { 1.0 };
    BenchResult { best_ms: best * 1e3, median_ms: median * 1e3, gflops: flops / best / 1e9, iters }
}
