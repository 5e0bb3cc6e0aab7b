//! The training recipe: AdamW against a hand-computed update, the EMA, label dropout,
//! gradient accumulation, and resume equivalence (bit for bit on CPU), on tiny models.

mod common;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use burn::prelude::*;
use burn::tensor::TensorData;
use udit::model::{Denoiser, FfnForm, ModelConfig};
use udit::train::optim::{AdamW, OptimState};
use udit::train::{DataSpec, RunDir, TrainConfig, TrainState, Trainer, draws, train};

#[derive(Module, Debug)]
struct Weights {
    w: Param<Tensor<1>>,
}

/// Loss sum(w * x) has gradient x; two AdamW steps and the EMA, computed by hand in f64.
#[test]
fn adamw_and_ema_match_a_hand_computed_update() {
    let _autodiff = common::autodiff_alone();
    let dev = Device::flex().autodiff();
    let w0 = [0.5f64, -1.0, 2.0];
    let xs = [[1.0f64, -2.0, 0.25], [-0.5, 3.0, 0.0]];
    let mut model = Weights { w: Param::from_tensor(Tensor::from_data(TensorData::from(w0.map(|v| v as f32)), &dev)) };
    let mut state = OptimState::new(&model, udit::precision::Precision::F32);
    let hyper = AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let (lr, decay) = (0.1, 0.9);
    for x in xs {
        let input = Tensor::<1>::from_data(TensorData::from(x.map(|v| v as f32)), &dev);
        let loss = (model.w.val() * input).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = state.step(model, grads, &hyper, lr, None, decay).0;
    }
    // By hand: decoupled decay, moments, bias corrections, eps outside the sqrt (PyTorch).
    let (mut w, mut m, mut v, mut ema) = (w0, [0.0; 3], [0.0; 3], w0);
    for (t, x) in xs.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..3 {
            w[i] *= 1.0 - lr * hyper.weight_decay;
            m[i] = 0.9 * m[i] + 0.1 * x[i];
            v[i] = 0.999 * v[i] + 0.001 * x[i] * x[i];
            let denom = (v[i] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8;
            w[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            ema[i] = decay * ema[i] + (1.0 - decay) * w[i];
        }
    }
    let got = model.w.val().into_data().try_to_vec::<f32>().unwrap();
    let got_ema = state.params["w"].ema.to_data().try_to_vec::<f32>().unwrap();
    for i in 0..3 {
        assert!((got[i] as f64 - w[i]).abs() < 1e-6, "w[{i}] {} vs {}", got[i], w[i]);
        assert!((got_ema[i] as f64 - ema[i]).abs() < 1e-6, "ema[{i}] {} vs {}", got_ema[i], ema[i]);
    }
    assert_eq!(state.step, 2);
    assert!(got.iter().zip(w0).all(|(g, w)| (*g as f64 - w).abs() > 0.01), "every weight moved");
}

#[test]
fn clipping_scales_the_gradient_to_the_max_norm() {
    let _autodiff = common::autodiff_alone();
    let dev = Device::flex().autodiff();
    let model = Weights { w: Param::from_tensor(Tensor::from_data(TensorData::from([0.0f32, 0.0]), &dev)) };
    let mut state = OptimState::new(&model, udit::precision::Precision::F32);
    let input = Tensor::<1>::from_data(TensorData::from([3.0f32, 4.0]), &dev);
    let grads = GradientsParams::from_grads((model.w.val() * input).sum().backward(), &model);
    let (_, norm) = state.step(model, grads, &AdamW::default(), 1e-3, Some(1.0), 0.5);
    assert!((norm.unwrap() - 5.0).abs() < 1e-6);
    // The first moment holds (1 - beta1) * clipped gradient = 0.1 * (0.6, 0.8).
    let m = state.params["w"].exp_avg.to_data().try_to_vec::<f32>().unwrap();
    assert!((m[0] - 0.06).abs() < 1e-6 && (m[1] - 0.08).abs() < 1e-6, "{m:?}");
}

/// A seed gives the same initial weights while another thread draws from burn's generator
/// (models built to be loaded draw from it): the seeded stream is the building thread's own.
#[test]
fn seeded_initialisation_ignores_other_threads() {
    let cfg = tiny_model(0.1);
    let dev = Device::flex();
    let build =
        |seed| udit::checkpoint::state_dict(&udit::rng::seeded(seed, || Denoiser::new(&cfg, FfnForm::Train, &dev)));
    let alone = build(7);
    let (draws, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let same = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Relaxed) {
                let _ = Tensor::<1>::random([64], burn::tensor::Distribution::Default, &Device::flex()).into_data();
                draws.fetch_add(1, Relaxed);
            }
        });
        let same: Vec<bool> = (0..10)
            .map(|_| {
                // Once the other thread is drawing.
                let before = draws.load(Relaxed);
                while draws.load(Relaxed) < before + 2 {
                    std::thread::yield_now();
                }
                build(7) == alone
            })
            .collect();
        stop.store(true, Relaxed);
        same
    });
    assert!(same.iter().all(|&s| s), "another thread's draws changed the seeded weights: {same:?}");
    // Another seed, other weights.
    assert_ne!(build(8), alone);
}

fn tiny_model(dropout: f64) -> ModelConfig {
    ModelConfig::from_json(&format!(
        r#"{{"arch":"u-dit","input_size":8,"in_channels":4,"hidden_size":8,"num_heads":1,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","num_classes":3,"class_dropout_prob":{dropout}}}"#
    ))
    .unwrap()
}

fn tiny_recipe(data: &std::path::Path, steps: u64) -> TrainConfig {
    let mut cfg =
        TrainConfig::recipe(tiny_model(0.1), DataSpec::Latents { dir: data.to_path_buf() }, "unshuffle2".into());
    cfg.steps = steps;
    cfg.global_batch = 4;
    cfg.lr = 1e-3;
    cfg.ema_decay = 0.9;
    cfg.log_every = 1;
    cfg.ckpt_every = 2;
    cfg.keep_last = 2;
    cfg
}

#[test]
fn label_dropout_hits_the_requested_fraction_deterministically() {
    let cfg = TrainConfig::recipe(tiny_model(0.1), DataSpec::Latents { dir: ".".into() }, "none".into());
    let d = draws(&cfg, 5, 0, 20000, 1, 0);
    let frac = d.drop_label.iter().filter(|&&b| b).count() as f64 / 20000.0;
    // Binomial(20000, 0.1): sd 0.0021.
    assert!((frac - 0.1).abs() < 0.009, "dropped fraction {frac}");
    assert!(d.t.iter().all(|&t| t < 1000.0 && t.fract() == 0.0) && d.t.iter().any(|&t| t < 100.0));
    assert!(d.t.iter().any(|&t| t > 900.0));
    // The same sample draws the same, whatever batch slice it is read in.
    let part = draws(&cfg, 5, 100, 10, 1, 0);
    assert_eq!(part.drop_label, d.drop_label[100..110]);
    assert_eq!(part.t, d.t[100..110]);
    let none = TrainConfig::recipe(tiny_model(0.0), DataSpec::Latents { dir: ".".into() }, "none".into());
    assert!(draws(&none, 5, 0, 1000, 1, 0).drop_label.iter().all(|&b| !b));
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    common::latents(tmp.path(), 8);
    let dev = Device::flex().autodiff();
    let grads_of = |accum: usize| {
        let mut cfg = tiny_recipe(tmp.path(), 1);
        cfg.global_batch = 8;
        cfg.grad_accum = accum;
        let trainer = Trainer::new(TrainState::new(cfg, &dev).unwrap(), &dev).unwrap();
        let batch = trainer.loader().unwrap().next_batch().unwrap();
        let (mut grads, stats) = trainer.gradients(&batch, 0, 8).unwrap();
        let id = match &trainer.state.model {
            // The zero-initialised output layer is the one with a gradient at step 0.
            udit::model::Denoiser::UDiT(m) => m.final_layer.out_proj.weight.id,
            _ => unreachable!(),
        };
        (grads.remove::<4>(id).unwrap().into_data().try_to_vec::<f32>().unwrap(), stats.loss)
    };
    let (one, loss1) = grads_of(1);
    let (four, loss4) = grads_of(4);
    assert!((loss1 - loss4).abs() < 1e-5 * loss1.abs(), "{loss1} vs {loss4}");
    let scale = one.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    let diff = one.iter().zip(&four).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-5 * scale, "accumulated gradient differs by {diff} (scale {scale})");
}

/// Every parameter's gradient in `grads`, in the model's order (None where it has none).
fn all_gradients(model: &Denoiser, grads: &GradientsParams) -> Vec<Option<Vec<f32>>> {
    struct Collect<'a>(&'a GradientsParams, Vec<Option<Vec<f32>>>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self.0.get::<D>(param.id).map(|g| g.into_data().try_to_vec::<f32>().unwrap());
            self.1.push(g);
        }
    }
    let mut collect = Collect(grads, Vec::new());
    model.visit(&mut collect);
    collect.1
}

/// A training step's batch is split into one shard a core, each with its own forward and
/// backward: the gradients are those of the whole batch on one thread (to rounding), every
/// parameter gets one, and repeated steps give the same bits (the shards are added in order).
#[test]
fn sharded_gradients_are_the_whole_batchs() {
    let _autodiff = common::autodiff_alone();
    rayon::ThreadPoolBuilder::new().num_threads(2).build_global().ok();
    assert!(rayon::current_num_threads() >= 2, "the shards need two threads");
    let tmp = tempfile::tempdir().unwrap();
    common::latents(tmp.path(), 8);
    let dev = Device::flex().autodiff();
    let mut cfg = tiny_recipe(tmp.path(), 1);
    cfg.global_batch = 7;
    let trainer = Trainer::new(TrainState::new(cfg, &dev).unwrap(), &dev).unwrap();
    let batch = trainer.loader().unwrap().next_batch().unwrap();
    let model = &trainer.state.model;
    let gradients = || {
        let (grads, stats) = trainer.gradients(&batch, 0, 7).unwrap();
        (all_gradients(model, &grads), stats.loss)
    };
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (whole, loss_whole) = one_thread.install(gradients);
    let (sharded, loss_sharded) = gradients();
    assert!(whole.iter().all(Option::is_some), "every parameter has a gradient");
    assert!((loss_whole - loss_sharded).abs() <= 1e-6 * loss_whole.abs(), "{loss_whole} vs {loss_sharded}");
    for (w, s) in whole.iter().zip(&sharded) {
        let (w, s) = (w.as_ref().unwrap(), s.as_ref().expect("a sharded gradient for every parameter"));
        let scale = w.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let diff = w.iter().zip(s).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5 * scale, "a sharded gradient differs by {diff} (scale {scale})");
    }
    for _ in 0..3 {
        assert!(gradients().0 == sharded, "another step on the same batch gave other bits");
    }
}

fn params(state: &TrainState) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = udit::checkpoint::state_dict(&state.model)
        .into_iter()
        .map(|(k, v)| (k, v.try_to_vec::<f32>().unwrap()))
        .collect();
    for (k, p) in &state.optim.params {
        for (what, t) in [("ema", &p.ema), ("m", &p.exp_avg), ("v", &p.exp_avg_sq)] {
            out.push((format!("{what}.{k}"), t.to_data().try_to_vec::<f32>().unwrap()));
        }
    }
    out
}

#[test]
fn resume_continues_bit_for_bit() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    common::latents(&tmp.path().join("data"), 6);
    let dev = Device::flex().autodiff();
    let recipe = tiny_recipe(&tmp.path().join("data"), 4);
    // Straight through: 4 steps.
    let straight = RunDir(tmp.path().join("straight"));
    let a = train(
        TrainState::new(recipe.clone(), &dev).unwrap(),
        &straight,
        &[dev.clone()],
        &udit::progress::Progress::hidden(),
    )
    .unwrap();
    // 2 steps, then a fresh process state from the step-2 checkpoint, then 2 more.
    let split = RunDir(tmp.path().join("split"));
    let mut half = recipe.clone();
    half.steps = 2;
    train(TrainState::new(half, &dev).unwrap(), &split, &[dev.clone()], &udit::progress::Progress::hidden()).unwrap();
    let mut resumed = TrainState::load(&split.checkpoint(2), &dev).unwrap();
    assert_eq!(resumed.optim.step, 2);
    resumed.config.steps = 4;
    let b = train(resumed, &split, &[dev.clone()], &udit::progress::Progress::hidden()).unwrap();
    assert_eq!(a.state.optim.step, 4);
    let (pa, pb) = (params(&a.state), params(&b.state));
    assert_eq!(pa.len(), pb.len());
    for ((ka, va), (kb, vb)) in pa.iter().zip(&pb) {
        assert_eq!(ka, kb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{ka} differs after resume");
    }
    // The logs agree line by line on the losses; keep-last 2 left steps 2 and 4.
    let losses = |run: &RunDir| -> Vec<(u64, f64)> {
        std::fs::read_to_string(run.log())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<udit::train::LogLine>(l).unwrap())
            .map(|l| (l.step, l.loss))
            .collect()
    };
    assert_eq!(losses(&straight), losses(&split));
    assert_eq!(losses(&straight).len(), 4);
    let kept: Vec<String> =
        straight.list().unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(kept, ["step_0000002.safetensors", "step_0000004.safetensors"]);
    // The export and the grid exist; the export loads as a merged-FFN model with its codec.
    assert!(straight.samples(4).exists());
    let w = udit::checkpoint::read_weights(&straight.export(), None).unwrap();
    assert_eq!(w.codec.as_deref(), Some("unshuffle2"));
    assert_eq!(udit::checkpoint::ffn_form_of(&w.tensors), udit::model::FfnForm::Merged);
    // A checkpoint's default entry is the EMA, in the training form.
    let ck = udit::checkpoint::read_weights(&straight.checkpoint(4), None).unwrap();
    let ema_key = "x_embedder.proj.weight";
    assert_eq!(
        ck.tensors[ema_key].try_to_vec::<f32>().unwrap(),
        a.state.optim.params[ema_key].ema.to_data().try_to_vec::<f32>().unwrap()
    );
}

/// Warm-up, constant and cool-down phases of the learning rate, at hand-computed steps.
#[test]
fn lr_schedule_warms_up_holds_and_cools_down_to_zero() {
    let mut cfg = tiny_recipe(std::path::Path::new("unused"), 10);
    cfg.lr = 1.0;
    cfg.warmup_steps = 2;
    cfg.cooldown_steps = 4;
    let lrs: Vec<f64> = (1..=10).map(|s| cfg.lr_at(s)).collect();
    assert_eq!(lrs, [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]);
    cfg.cooldown_steps = 9;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("cool-down (9)") && err.contains("10 steps"), "{err}");

    // The cosine schedule: after the warm-up, lr (1 + cos(pi (s - 2) / 9)) / 2 at step s,
    // from 1 at step 2 down to 0.030 at step 10 (0 would be step 11); no cool-down with it.
    cfg.lr_schedule = udit::train::LrSchedule::Cosine;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("takes no cool-down steps"), "{err}");
    cfg.cooldown_steps = 0;
    cfg.validate().unwrap();
    let cosine = |s: f64| 0.5 * (1.0 + (std::f64::consts::PI * (s - 2.0) / 9.0).cos());
    assert_eq!(cfg.lr_at(1), 0.5);
    for s in 2..=10 {
        assert!((cfg.lr_at(s) - cosine(s as f64)).abs() < 1e-12, "step {s}");
    }
    assert!((cfg.lr_at(10) - 0.030153689607045786).abs() < 1e-12);
    assert!((1..10).all(|s| cfg.lr_at(s + 1) < cfg.lr_at(s) || s < 2));
}

fn tiny_sit_recipe(data: &std::path::Path, steps: u64, dropout: f64) -> TrainConfig {
    let model = ModelConfig::from_json(&format!(
        r#"{{"arch":"sit","input_size":8,"patch_size":2,"hidden_size":16,"depth":1,"num_heads":2,"num_classes":3,"class_dropout_prob":{dropout}}}"#
    ))
    .unwrap();
    TrainConfig { model, ..tiny_recipe(data, steps) }
}

/// One step's loss is SiT's: the mean over the batch of mean((v(x_t, t, y) - (x1 - x0))^2) on
/// the Linear path at the drawn t and noise, computed here by hand from the draws.
#[test]
fn the_interpolant_loss_is_sits_at_the_drawn_points() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    common::latents(tmp.path(), 4);
    let dev = Device::flex().autodiff();
    let cfg = tiny_sit_recipe(tmp.path(), 1, 0.0);
    assert_eq!(cfg.process(), udit::process::ProcessSpec::sit(), "SiT models train the interpolant");
    let mut trainer = Trainer::new(TrainState::new(cfg.clone(), &dev).unwrap(), &dev).unwrap();
    // Give the zero-initialised output layer weights, so that the network is not 0.
    let state = udit::checkpoint::state_dict(&trainer.state.model);
    let filled: udit::checkpoint::StateDict = state
        .into_iter()
        .map(|(k, v)| {
            let n = v.num_elements();
            let values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.2).collect();
            (k, TensorData::new(values, v.shape().to_vec()))
        })
        .collect();
    trainer.state.model = udit::checkpoint::load_into(trainer.state.model.clone(), &filled, &dev).unwrap();
    let batch = trainer.loader().unwrap().next_batch().unwrap();
    let (_, stats) = trainer.gradients(&batch, 0, 4).unwrap();

    let d = draws(&cfg, 0, 0, 4, 4 * 8 * 8, 0);
    let x1 = &batch.x;
    let x0 = &d.noise;
    let per = 4 * 8 * 8;
    let xt: Vec<f32> =
        (0..4 * per).map(|i| d.t[i / per] as f32 * x1[i] + (1.0 - d.t[i / per] as f32) * x0[i]).collect();
    let inner = Device::flex();
    let model = udit::checkpoint::load_into(
        udit::model::Denoiser::new(&cfg.model, udit::model::FfnForm::Train, &inner),
        &filled,
        &inner,
    )
    .unwrap();
    let t = Tensor::<1>::from_data(TensorData::new(d.t.iter().map(|&t| t as f32).collect::<Vec<_>>(), [4]), &inner);
    let y = Tensor::<1, Int>::from_data(TensorData::new(batch.labels[..4].to_vec(), [4]), &inner);
    let v = model.forward(Tensor::from_data(TensorData::new(xt, [4, 4, 8, 8]), &inner), t, y);
    assert_eq!(v.dims(), [4, 4, 8, 8]);
    let v = v.into_data().try_to_vec::<f32>().unwrap();
    let loss: f64 = (0..4 * per).map(|i| ((v[i] - (x1[i] - x0[i])) as f64).powi(2)).sum::<f64>() / (4 * per) as f64;
    assert!(loss > 0.01, "a network that is not zero");
    assert!((stats.loss - loss).abs() < 1e-5 * loss, "trainer {} vs by hand {loss}", stats.loss);
    assert!(d.t.iter().all(|&t| (0.0..1.0).contains(&t)) && d.t.iter().any(|&t| t.fract() != 0.0));
}

#[test]
fn an_interpolant_run_learns_resumes_bit_for_bit_and_exports_its_process() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    common::latents(&tmp.path().join("data"), 8);
    interpolant_run(tiny_sit_recipe(&tmp.path().join("data"), 60, 0.1), tmp.path());
}

#[test]
fn a_udit_trains_as_an_interpolant_too_and_samples_with_the_ode_and_the_sde() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    common::latents(&tmp.path().join("data"), 8);
    let mut recipe = tiny_recipe(&tmp.path().join("data"), 60);
    recipe.process = Some(udit::process::ProcessSpec::sit());
    let run = interpolant_run(recipe, tmp.path());
    for sampler in ["sde", "dopri5"] {
        let out = tmp.path().join(sampler);
        let (ok, _, err) = common::udit(&[
            "sample",
            "--ckpt",
            run.export().to_str().unwrap(),
            "--sampler",
            sampler,
            "--steps",
            "10",
            "--num-samples",
            "3",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok && out.join("grid.png").exists(), "{sampler}: {err}");
    }
}

#[test]
fn a_sit_llama_trains_as_an_interpolant_and_resumes_bit_for_bit() {
    let _autodiff = common::autodiff_alone();
    let tmp = tempfile::tempdir().unwrap();
    common::latents(&tmp.path().join("data"), 8);
    let model = ModelConfig::from_json(
        r#"{"arch":"sit-llama","input_size":8,"patch_size":2,"hidden_size":16,"depth":1,"num_heads":2,"num_classes":3}"#,
    )
    .unwrap();
    interpolant_run(TrainConfig { model, ..tiny_recipe(&tmp.path().join("data"), 60) }, tmp.path());
}

/// Trains `recipe` (an interpolant) for its steps straight and in two halves with a resume:
/// the same weights, moments and EMA bit for bit; the loss falls; the export carries the
/// process. Returns the straight run.
fn interpolant_run(mut recipe: TrainConfig, tmp: &std::path::Path) -> RunDir {
    let dev = Device::flex().autodiff();
    let hidden = udit::progress::Progress::hidden;
    let process = recipe.process();
    recipe.ckpt_every = 30;
    let straight = RunDir(tmp.join("straight"));
    let a = train(TrainState::new(recipe.clone(), &dev).unwrap(), &straight, &[dev.clone()], &hidden()).unwrap();
    let split = RunDir(tmp.join("split"));
    train(
        TrainState::new(TrainConfig { steps: 30, ..recipe.clone() }, &dev).unwrap(),
        &split,
        &[dev.clone()],
        &hidden(),
    )
    .unwrap();
    let mut resumed = TrainState::load(&split.checkpoint(30), &dev).unwrap();
    resumed.config.steps = 60;
    let b = train(resumed, &split, &[dev.clone()], &hidden()).unwrap();
    for ((ka, va), (_, vb)) in params(&a.state).iter().zip(&params(&b.state)) {
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{ka} differs after resume");
    }
    let losses: Vec<f64> = std::fs::read_to_string(straight.log())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<udit::train::LogLine>(l).unwrap().loss)
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 10..]));
    assert!(last < 0.92 * first, "the velocity loss falls: {first:.4} -> {last:.4}"); // 1.36 -> 1.19
    // The export says which process it was trained with, so `udit sample` needs no flag.
    let w = udit::checkpoint::read_weights(&straight.export(), None).unwrap();
    let spec = udit::process::ProcessSpec::of_weights(&w.metadata, w.config.as_ref().unwrap()).unwrap();
    assert_eq!(spec, process);
    assert!(straight.samples(60).exists(), "the EMA grid, drawn with the interpolant's sampler");
    straight
}
