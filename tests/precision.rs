//! Mixed precision against f32 on the CPU (burn's flex backend has bf16 and f16): the
//! denoisers' outputs and gradients with the reference fixtures' weights, a few training steps
//! of a tiny run, f16's loss scaler, and its checkpointing. The tolerances are the ones the
//! README documents (relative to the largest f32 value, or to the f32 norm).

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use common::*;
use udit::checkpoint::{load_denoiser, read_weights};
use udit::model::{Denoiser, ModelConfig};
use udit::precision::{LossScaler, Precision, autocast};
use udit::train::{DataSpec, RunDir, TrainConfig, TrainState, train};

/// Largest |output - f32 output| over the largest |f32 output|, of the forward passes.
const FORWARD_TOL: [(Precision, f32); 2] = [(Precision::Bf16, 1.5e-2), (Precision::F16, 2e-3)];
/// ||gradients - f32 gradients|| over ||f32 gradients||, all parameters together.
const GRAD_TOL: [(Precision, f64); 2] = [(Precision::Bf16, 2e-2), (Precision::F16, 1e-2)];

fn fixture_model(name: &str, device: &Device) -> (Denoiser, ModelConfig) {
    let cfg = ModelConfig::from_file(&fixture(&format!("{name}.json"))).unwrap();
    let weights = read_weights(&fixture(&format!("{name}.weights.safetensors")), None).unwrap();
    (load_denoiser(&cfg, &weights, device).unwrap(), cfg)
}

/// The fixture's output in `precision` (training form, then merged), as f32 data.
fn outputs(name: &str, precision: Precision) -> [TensorData; 2] {
    let dev = Device::flex();
    let io = io(&format!("{name}.io.safetensors"));
    let (m, _) = fixture_model(name, &dev);
    let _autocast = autocast(precision);
    let run = |m: &Denoiser| {
        let (x, t, y) = (float::<4>(&io["x"], &dev), float::<1>(&io["t"], &dev), ints(&io["y"], &dev));
        let out = m.forward(x, t, y);
        assert_eq!(out.dtype(), burn::tensor::DType::F32, "outputs come back in f32");
        out.into_data()
    };
    [run(&m), run(&m.merged())]
}

#[test]
fn forward_passes_in_bf16_and_f16_stay_near_f32() {
    for name in ["udit_tiny", "dit_tiny"] {
        let [train32, eval32] = outputs(name, Precision::F32);
        // f32 is the reference path itself.
        let io = io(&format!("{name}.io.safetensors"));
        assert_close(&format!("{name} f32"), &eval32, &io["out_eval"], 1e-4);
        for (precision, tol) in FORWARD_TOL {
            let [train, eval] = outputs(name, precision);
            for (what, ours, reference) in [("train form", &train, &train32), ("merged", &eval, &eval32)] {
                let e = rel_err(ours, reference);
                eprintln!("{name} {what} {precision}: {e:.2e}");
                assert!(e <= tol, "{name} {what} in {precision}: {e:.2e} > {tol:.0e}");
                // Not f32 under another name: the products really ran in low precision.
                assert!(e > 1e-6, "{name} {what} in {precision} equals f32 ({e:.1e})");
            }
        }
    }
}

/// Every parameter gradient of sum(out * target), flattened in visiting order.
fn gradients(name: &str, precision: Precision) -> Vec<f32> {
    let dev = Device::flex().autodiff();
    let io = io(&format!("{name}.io.safetensors"));
    let (m, _) = fixture_model(name, &dev);
    let (x, t, y) = (float::<4>(&io["x"], &dev), float::<1>(&io["t"], &dev), ints(&io["y"], &dev));
    let out = {
        let _autocast = autocast(precision);
        m.forward(x, t, y)
    };
    let n = out.shape().num_elements();
    let target: Vec<f32> = (0..n).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
    let target = Tensor::<4>::from_data(TensorData::new(target, out.dims()), &dev);
    let loss = (out * target).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &m);
    struct Collect<'a>(&'a GradientsParams, Vec<f32>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                assert_eq!(g.dtype(), burn::tensor::DType::F32, "gradients of f32 weights are f32");
                self.1.extend(g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap());
            }
        }
    }
    let mut c = Collect(&grads, Vec::new());
    m.visit(&mut c);
    c.1
}

fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let diff: f64 = ours.iter().zip(reference).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let norm: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

#[test]
fn gradients_in_bf16_and_f16_stay_near_f32() {
    let _autodiff = common::autodiff_alone();
    for name in ["udit_tiny", "dit_tiny"] {
        let g32 = gradients(name, Precision::F32);
        assert!(g32.len() > 1000 && g32.iter().all(|g| g.is_finite()));
        for (precision, tol) in GRAD_TOL {
            let e = rel_l2(&gradients(name, precision), &g32);
            eprintln!("{name} gradients {precision}: {e:.2e}");
            assert!(e <= tol && e > 1e-7, "{name} gradients in {precision}: {e:.2e} (tolerance {tol:.0e})");
        }
    }
}

fn recipe(data: &std::path::Path, precision: Precision) -> TrainConfig {
    let model = ModelConfig::from_json(
        r#"{"arch":"u-dit","input_size":8,"in_channels":4,"hidden_size":16,"num_heads":2,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","num_classes":3}"#,
    )
    .unwrap();
    let mut cfg = TrainConfig::recipe(model, DataSpec::Latents { dir: data.to_path_buf() }, "unshuffle2".into());
    cfg.steps = 6;
    cfg.global_batch = 4;
    cfg.lr = 1e-3;
    cfg.ema_decay = 0.9;
    cfg.log_every = 1;
    cfg.ckpt_every = 6;
    cfg.precision = precision;
    // AdamW's eps at its default (1e-8) makes every early update +-lr by the gradient's sign
    // alone, so that elements with tiny gradients flip with rounding and the comparison of
    // updates measures the draw (0.02-0.25 in bf16 over seeds 0-5); at 1e-3 the updates follow
    // the gradients (bf16 0.007-0.012, f16 0.0014-0.0023 over the same seeds).
    cfg.adamw.eps = 1e-3;
    cfg
}

/// Losses of the log and every trained weight of a 6-step run in `precision`.
fn run(tmp: &std::path::Path, precision: Precision) -> (Vec<f64>, Vec<f32>, TrainState) {
    let dev = Device::flex().autodiff();
    let dir = RunDir(tmp.join(format!("run-{precision}")));
    let state = TrainState::new(recipe(&tmp.join("data"), precision), &dev).unwrap();
    let done = train(state, &dir, &[dev.clone()], &udit::progress::Progress::hidden()).unwrap();
    let losses = std::fs::read_to_string(dir.log())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<udit::train::LogLine>(l).unwrap().loss)
        .collect();
    (losses, weights(&done.state), done.state)
}

fn weights(state: &TrainState) -> Vec<f32> {
    udit::checkpoint::state_dict(&state.model).into_values().flat_map(|v| v.try_to_vec::<f32>().unwrap()).collect()
}

#[test]
fn a_few_training_steps_in_bf16_and_f16_follow_f32() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    latents(&tmp.path().join("data"), 8);
    let (loss32, w32, _) = run(tmp.path(), Precision::F32);
    let fresh = TrainState::new(recipe(&tmp.path().join("data"), Precision::F32), &Device::flex().autodiff()).unwrap();
    let w0 = weights(&fresh);
    let moved32: Vec<f32> = w32.iter().zip(&w0).map(|(a, b)| a - b).collect();
    for (precision, tol) in [(Precision::Bf16, 3e-2), (Precision::F16, 1e-2)] {
        let (loss, w, state) = run(tmp.path(), precision);
        assert_eq!(loss.len(), 6);
        for (step, (a, b)) in loss.iter().zip(&loss32).enumerate() {
            assert!((a - b).abs() <= 1e-2 * b.abs(), "step {step} loss in {precision}: {a} vs f32 {b}");
        }
        // What the 6 steps changed agrees with f32's change.
        let moved: Vec<f32> = w.iter().zip(&w0).map(|(a, b)| a - b).collect();
        let e = rel_l2(&moved, &moved32);
        eprintln!("weight updates {precision}: {e:.2e}");
        assert!(e <= tol, "the weight updates in {precision} differ from f32's by {e:.2e} (tolerance {tol:.0e})");
        // f16 scales the loss; the checkpoint keeps the scaler for an exact resume.
        let scaler = state.optim.loss_scaler;
        assert_eq!(scaler.is_some(), precision == Precision::F16);
        if let Some(s) = scaler {
            assert_eq!((s.scale, s.good_steps), (LossScaler::INITIAL, 6), "no overflow at this size");
            let dev = Device::flex().autodiff();
            let dir = RunDir(tmp.path().join(format!("run-{precision}")));
            let loaded = TrainState::load(&dir.checkpoint(6), &dev).unwrap();
            assert_eq!(loaded.optim.loss_scaler, scaler);
            assert_eq!(loaded.config.precision, Precision::F16);
        }
    }
}

#[test]
fn the_loss_scaler_halves_on_overflow_and_doubles_after_2000_finite_steps() {
    assert_eq!(LossScaler::of(Precision::F32), None);
    assert_eq!(LossScaler::of(Precision::Bf16), None);
    let mut s = LossScaler::of(Precision::F16).unwrap();
    assert_eq!(s.scale, 65536.0);
    assert!(!s.update(false), "a step with inf/NaN gradients is skipped");
    assert_eq!((s.scale, s.good_steps), (32768.0, 0));
    for _ in 0..1999 {
        assert!(s.update(true));
    }
    assert_eq!((s.scale, s.good_steps), (32768.0, 1999));
    assert!(s.update(true));
    assert_eq!((s.scale, s.good_steps), (65536.0, 0));
}

/// A skipped f16 step (non-finite gradients) leaves weights, moments and EMA as they were
/// and halves the scale; the unscaled gradients of a finite step give f32's update.
#[test]
fn an_overflowing_f16_step_changes_nothing_and_a_finite_one_is_unscaled() {
    let _autodiff = common::autodiff_alone();
    #[derive(Module, Debug)]
    struct W {
        w: Param<Tensor<1>>,
    }
    let dev = Device::flex().autodiff();
    let hyper = udit::train::optim::AdamW::default();
    let step_with = |x: [f32; 2], precision: Precision| {
        let model = W { w: Param::from_tensor(Tensor::from_floats([1.0, -2.0], &dev)) };
        let mut state = udit::train::optim::OptimState::new(&model, precision);
        let scale = state.loss_scaler.map_or(1.0, |s| s.scale) as f32;
        let loss = (model.w.val() * Tensor::<1>::from_floats(x, &dev)).sum() * scale;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (model, _) = state.step(model, grads, &hyper, 0.1, Some(10.0), 0.5);
        (model.w.val().into_data().try_to_vec::<f32>().unwrap(), state)
    };
    let (w32, _) = step_with([3.0, -4.0], Precision::F32);
    let (w16, s16) = step_with([3.0, -4.0], Precision::F16);
    assert!(w16.iter().zip(&w32).all(|(a, b)| (a - b).abs() < 1e-6), "{w16:?} vs {w32:?}");
    assert_eq!(s16.loss_scaler.unwrap().good_steps, 1);
    let (w_inf, s_inf) = step_with([f32::INFINITY, 1.0], Precision::F16);
    assert_eq!(w_inf, [1.0, -2.0]);
    assert_eq!(s_inf.loss_scaler.unwrap().scale, 32768.0);
    assert_eq!(s_inf.step, 1, "the run's position still advances");
    assert!(s_inf.params["w"].exp_avg.to_data().try_to_vec::<f32>().unwrap().iter().all(|&m| m == 0.0));
}
