//! The diffusion process and samplers against `diffusion.io.safetensors` of the reference.

mod common;

use burn::prelude::*;
use common::*;
use udit::diffusion::samplers::Sampler;
use udit::diffusion::{GaussianDiffusion, space_timesteps};
use udit::rng::NoiseStreams;

const TOL: f32 = 1e-5;

/// Raw f64 / i64 tensors of the fixture, which the f32 reader would round.
fn raw(name: &str) -> Vec<f64> {
    let bytes = std::fs::read(fixture("diffusion.io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    match v.dtype() {
        safetensors::Dtype::F64 => {
            v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
        }
        safetensors::Dtype::I64 => {
            v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect()
        }
        other => panic!("{name}: {other:?}"),
    }
}

fn indices(name: &str) -> Vec<usize> {
    raw(name).into_iter().map(|v| v as usize).collect()
}

fn assert_rel_f64(name: &str, ours: &[f64], reference: &[f64], tol: f64) {
    assert_eq!(ours.len(), reference.len(), "{name}: length");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!((a - b).abs() <= tol * b.abs().max(1e-12), "{name}[{i}]: {a} vs {b}");
    }
}

#[test]
fn linear_betas_match() {
    assert_rel_f64("betas", &GaussianDiffusion::linear(1000).betas, &raw("betas"), 1e-12);
}

#[test]
fn q_sample_and_training_losses_match() {
    let dev = Device::flex();
    let io = io("diffusion.io.safetensors");
    let d = GaussianDiffusion::linear(1000);
    let t = indices("t");
    let (x0, noise, out) =
        (float::<4>(&io["x0"], &dev), float::<4>(&io["noise"], &dev), float::<4>(&io["model_out"], &dev));
    let x_t = d.q_sample(x0.clone(), &t, noise.clone());
    assert_close("x_t", &x_t.to_data(), &io["x_t"], TOL);
    let losses = d.training_losses(out, x0, x_t, noise, &t);
    assert_close("mse", &losses.mse.into_data(), &io["mse"], TOL);
    assert_close("vb", &losses.vb.into_data(), &io["vb"], TOL);
    assert_close("loss", &losses.loss.into_data(), &io["loss"], TOL);
}

#[test]
fn respacing_and_posterior_match() {
    let dev = Device::flex();
    let io = io("diffusion.io.safetensors");
    let base = GaussianDiffusion::linear(1000);
    for spec in ["250", "50", "ddim25"] {
        let d = base.respaced(spec).unwrap();
        let key = |k: &str| format!("respace_{spec}.{k}");
        assert_eq!(d.timestep_map, indices(&key("timestep_map")), "{spec} timestep_map");
        assert_rel_f64(&key("betas"), &d.betas, &raw(&key("betas")), 1e-9);
        let t = indices(&key("t"));
        let model_t = d.model_timesteps(&t, &dev).into_data();
        let expected: Vec<f32> = indices(&key("model_t")).iter().map(|&v| v as f32).collect();
        assert_eq!(
            model_t.as_slice::<f32>().unwrap(),
            expected.as_slice(),
            "{spec}: the model sees original timesteps"
        );
        let p = d.p_mean_variance(float(&io["model_out"], &dev), float(&io["noise"], &dev), &t);
        assert_close(&key("mean"), &p.mean.into_data(), &io[&key("mean")], TOL);
        assert_close(&key("log_variance"), &p.log_variance.into_data(), &io[&key("log_variance")], TOL);
        assert_close(&key("pred_xstart"), &p.pred_xstart.into_data(), &io[&key("pred_xstart")], TOL);
    }
    assert_eq!(space_timesteps(1000, "ddim10").unwrap(), indices("ddim10.timestep_map"));
}

#[test]
fn ddim_loop_matches() {
    let dev = Device::flex();
    let io = io("diffusion.io.safetensors");
    let start = float::<4>(&io["ddim10_eta0.start"], &dev);
    let mut model = |x: Tensor<4>, _t: Tensor<1>| {
        let eps = x.tanh() * 0.8;
        Tensor::cat(vec![eps.clone(), eps.zeros_like()], 1)
    };
    let mut noise = NoiseStreams::new(0, 0, 4, [4, 8, 8]);
    let out = Sampler::Ddim { eta: 0.0 }
        .plan(&GaussianDiffusion::linear(1000), 10, None)
        .unwrap()
        .run(&mut model, start, &mut noise, &dev, &mut |_| Ok(()))
        .unwrap();
    assert_close("ddim10_eta0.out", &out.into_data(), &io["ddim10_eta0.out"], 1e-4);
}

#[test]
fn respacing_rejects_impossible_requests() {
    assert!(space_timesteps(1000, "ddim999").is_err());
    assert!(space_timesteps(1000, "2000").is_err());
    assert!(space_timesteps(1000, "abc").is_err());
    assert_eq!(space_timesteps(1000, "1000").unwrap(), (0..1000).collect::<Vec<_>>());
    assert_eq!(space_timesteps(10, "3").unwrap(), vec![0, 4, 9]); // round(4.5) = 4, as Python
}
