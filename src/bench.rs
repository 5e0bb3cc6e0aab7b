//! `udit bench`: wall-clock timing of the denoiser forward pass and of one training step.

use std::time::Instant;

use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::cost::Cost;
use crate::model::{Denoiser, FfnForm, ModelConfig};
use crate::progress::Progress;
use crate::train::optim::{AdamW, OptimState};
use crate::train::{sharded_gradients, training_shards};

#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub best_ms: f64,
    pub median_ms: f64,
    /// Achieved GFLOP/s at the best time (2 FLOPs per MAC; a training step is counted as
    /// three forward passes: forward, and backward for activations and weights).
    pub gflops: f64,
    pub iters: usize,
}

/// This machine's f32 GEMM throughput in GFLOP/s: the GEMM the CPU kernels call, on a
/// 2048-cube product on every thread, best of `iters` after one warm-up: the ceiling a
/// step's GFLOP/s is measured against.
pub fn gemm_peak(iters: usize) -> f64 {
    const N: usize = 2048;
    let a: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    let b: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
    let mut c = vec![0f32; N * N];
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    let best = (0..=iters)
        .map(|_| {
            let start = Instant::now();
            crate::kernels::cpu::gemm_strided(N, N, N, &a, (N, 1), &b, (N, 1), &mut c, (N, 1), false, threads);
            start.elapsed().as_secs_f64()
        })
        .skip(1)
        .fold(f64::INFINITY, f64::min);
    2.0 * (N * N * N) as f64 / best / 1e9
}

/// Times `iters` calls after `warmup` untimed ones. Forward uses the merged inference form;
/// `train` times forward + MSE loss + backward + the trainer's AdamW and EMA update on the
/// training form, the batch split into `grad_accum` forward/backward rounds (`batch` must be
/// a multiple).
pub fn run(
    cfg: &ModelConfig,
    batch: usize,
    train: bool,
    grad_accum: usize,
    (warmup, iters): (usize, usize),
    device: &Device,
) -> BenchResult {
    let what = if train { "timing training steps" } else { "timing forward passes" };
    let progress = Progress::new(what, (warmup + iters) as u64, "runs");
    let s = cfg.input_size();
    let inputs = |batch: usize, device: &Device| {
        let x = Tensor::<4>::random([batch, cfg.in_channels(), s, s], Distribution::Normal(0.0, 1.0), device);
        let t = Tensor::<1>::random([batch], Distribution::Uniform(0.0, 999.0), device);
        let y = Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, cfg.num_classes() as f64), device);
        (x, t, y)
    };
    let mut times = if train {
        let device = device.clone().autodiff();
        let model = Denoiser::new(cfg, FfnForm::Train, &device);
        let mut optim = OptimState::new(&model, crate::precision::current());
        // The step takes the model and hands back the updated one.
        let mut model = Some(model);
        let micro = batch / grad_accum;
        let shards = training_shards(cfg, micro);
        timings(warmup, iters, &progress, &mut || {
            let rounds: Vec<_> = (0..grad_accum).map(|_| inputs(micro, &device)).collect();
            let start = Instant::now();
            let current = model.take().expect("the model of the last step");
            // On the workers, as `Trainer::step` runs.
            model = Some(crate::on_workers(|| {
                let mut acc = GradientsAccumulator::<Denoiser>::new();
                let mut losses = Vec::new();
                for (x, t, y) in rounds {
                    let (grads, shard_losses) =
                        sharded_gradients(&current, micro, shards, &device, |model, first, n| {
                            let x = x.clone().narrow(0, first, n);
                            let out =
                                model.forward(x.clone(), t.clone().narrow(0, first, n), y.clone().narrow(0, first, n));
                            let weight = n as f64 / batch as f64;
                            let loss = (out.narrow(1, 0, cfg.in_channels()) - x).square().mean() * weight;
                            Ok((loss.clone(), loss.detach()))
                        })
                        .expect("the benchmark's loss");
                    acc.accumulate(&current, grads);
                    losses.extend(shard_losses);
                }
                let updated = optim.step(current, acc.grads(), &AdamW::default(), 1e-4, None, 0.9999).0;
                let _ = Tensor::cat(losses, 0).into_data(); // wait for the step to finish
                updated
            }));
            start.elapsed().as_secs_f64()
        })
    } else {
        let model = Denoiser::new(cfg, FfnForm::Train, device).merged();
        timings(warmup, iters, &progress, &mut || {
            let (x, t, y) = inputs(batch, device);
            let start = Instant::now();
            let _ = crate::on_workers(|| crate::sample::forward_by_core(&model, x, t, y).into_data());
            start.elapsed().as_secs_f64()
        })
    };
    progress.finish();
    times.sort_by(f64::total_cmp);
    let best = times[0];
    let median = times[times.len() / 2];
    let flops = 2.0 * Cost::of(cfg).macs as f64 * batch as f64 * if train { 3.0 } else { 1.0 };
    BenchResult { best_ms: best * 1e3, median_ms: median * 1e3, gflops: flops / best / 1e9, iters }
}

/// Runs `measure` `warmup + iters` times and keeps the last `iters` results (seconds or ms,
/// whatever `measure` returns), counting each run on `progress`.
fn timings(warmup: usize, iters: usize, progress: &Progress, measure: &mut dyn FnMut() -> f64) -> Vec<f64> {
    let mut run = || {
        let t = measure();
        progress.inc(1);
        t
    };
    (0..warmup + iters).map(|_| run()).skip(warmup).collect()
}

/// Time per generated image of a guided sampling run, measured bench-style: one guided
/// denoiser call on `batch` samples (a `2 * batch` forward), and one SD-VAE decode of `batch`
/// latents (the sd-vae-ft-ema architecture with fresh random weights: the decode costs the
/// same whatever the weights, so nothing is downloaded), each best of `iters`.
#[derive(Debug, serde::Serialize)]
pub struct SampleCost {
    pub guided_step_ms: f64,
    pub decode_ms: f64,
    pub batch: usize,
}

impl SampleCost {
    /// Seconds per image for `steps` denoiser calls.
    pub fn seconds_per_image(&self, steps: usize) -> f64 {
        (steps as f64 * self.guided_step_ms + self.decode_ms) / self.batch as f64 / 1e3
    }
}

pub fn sample_cost(cfg: &ModelConfig, batch: usize, warmup: usize, iters: usize, device: &Device) -> SampleCost {
    let s = cfg.input_size();
    let model = Denoiser::new(cfg, FfnForm::Train, device).merged();
    let progress =
        Progress::new(&format!("timing guided steps (batch {})", 2 * batch), (warmup + iters) as u64, "runs");
    let best = |f: &mut dyn FnMut()| {
        let mut call = || {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        };
        timings(warmup, iters, &progress, &mut call).into_iter().fold(f64::INFINITY, f64::min)
    };
    let x = Tensor::<4>::random([2 * batch, cfg.in_channels(), s, s], Distribution::Normal(0.0, 1.0), device);
    let t = Tensor::<1>::full([2 * batch], 500.0, device);
    let y = Tensor::<1, Int>::zeros([2 * batch], device);
    let guided_step_ms = best(&mut || {
        let _ = model.forward_with_cfg(x.clone(), t.clone(), y.clone(), 1.5, cfg.guided_channels()).into_data();
    });
    let vae_cfg: crate::vae::VaeConfig = serde_json::from_str(
        r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4}"#,
    )
    .expect("SD VAE config");
    let vae = crate::vae::AutoencoderKl::new(&vae_cfg, device);
    let z = Tensor::<4>::random([batch, vae_cfg.latent_channels, s, s], Distribution::Normal(0.0, 1.0), device);
    progress.set_position(0);
    progress.phase(&format!("timing SD-VAE decodes (batch {batch}, random weights)"));
    let decode_ms = best(&mut || {
        let _ = vae.decode(z.clone()).into_data();
    });
    progress.finish();
    SampleCost { guided_step_ms, decode_ms, batch }
}
