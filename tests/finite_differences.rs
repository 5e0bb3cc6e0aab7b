//! The gradients of a whole U-DiT (every fused kernel's backward chained through blocks,
//! downsampling and upsampling), DiT and SiT-LLaMA (their token maps: 1x1 convolutions,
//! adaLN, attention with and without RoPE, GELU and SwiGLU, unpatchify of every output
//! channel, learned sigma included) against central finite differences of a loss.

mod common;

use burn::prelude::*;
use common::*;
use udit::checkpoint::{load_into, read_weights, state_dict};
use udit::model::{Denoiser, FfnForm, ModelConfig};

/// Replaces every parameter by its gradient, so that `state_dict` names the gradients.
struct GradOf<'a>(&'a burn::optim::GradientsParams);

impl burn::module::ModuleMapper for GradOf<'_> {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        let grad = self.0.get::<D>(param.id);
        param.map(|t| grad.unwrap_or_else(|| t.zeros_like()))
    }
}

#[test]
fn whole_model_gradients_match_finite_differences() {
    let _autodiff = common::autodiff_alone();
    // One element of each kind of parameter: attention (qkv, out, logit scale, downsampler),
    // FFN branches, adaLN, embedders, up/downsampling and the output layer.
    let probes = [
        "encoder_level_1.0.attn1.to_qkv.weight",
        "latent.0.attn2.to_out.weight",
        "encoder_level_2.0.attn1.logit_scale",
        "decoder_level_1.0.attn1.downsampler.layer.weight",
        "encoder_level_1.0.mlp1.dwconv.0.weight",
        "latent.0.mlp2.project_in.0.weight",
        "decoder_level_2.1.adaLN_modulation1.1.weight",
        "t_embedder_2.mlp.0.weight",
        "down1_2.body.0.weight",
        "final_layer.out_proj.weight",
    ];
    check("udit_tiny", &probes);
}

#[test]
fn dit_gradients_match_finite_differences() {
    let _autodiff = common::autodiff_alone();
    // Patch embedding, attention, MLP, adaLN, both embedders and the final layer (whose
    // output is unpatchified from the map, learned-sigma channels included: w weighs all 8).
    let probes = [
        "x_embedder.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.1.attn.proj.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.1.mlp.fc2.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "t_embedder.mlp.0.weight",
        "y_embedder.embedding_table.weight",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
    ];
    check("dit_tiny", &probes);
}

#[test]
fn sit_llama_gradients_match_finite_differences() {
    let _autodiff = common::autodiff_alone();
    let probes = [
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.c_fc1.weight",
        "blocks.0.mlp.c_fc2.weight",
        "blocks.0.mlp.c_proj.weight",
        "final_layer.linear.weight",
    ];
    check("sitllama_tiny", &probes);
}

/// Autodiff gradients of `sum(model(x, t, y) * w)` for the fixture model `name` against
/// central differences, at the largest-gradient element of each probed parameter.
fn check(name: &str, probes: &[&str]) {
    let dev = Device::flex().autodiff();
    let cfg = ModelConfig::from_file(&fixture(&format!("{name}.json"))).unwrap();
    let weights = read_weights(&fixture(&format!("{name}.weights.safetensors")), None).unwrap().tensors;
    let fresh = || Denoiser::new(&cfg, FfnForm::Train, &dev);
    let model = load_into(fresh(), &weights, &dev).unwrap();
    let t = Tensor::<1>::from_floats([37.0, 810.0], &dev);
    let y = Tensor::<1, Int>::from_ints([3, 7], &dev);
    let (c, side) = (cfg.in_channels(), cfg.input_size());
    let out_channels = fresh()
        .forward(Tensor::zeros([1, c, side, side], &dev), t.clone().slice(0..1), y.clone().slice(0..1))
        .dims()[1];
    let mut normals = Normals::new(5);
    let x = normals.normal([2, c, side, side], &dev);
    let w = normals.normal([2, out_channels, side, side], &dev);
    let loss = |m: &Denoiser| (m.forward(x.clone(), t.clone(), y.clone()) * w.clone()).sum();
    let w_host = w.to_data().try_to_vec::<f32>().unwrap();

    let grads = burn::optim::GradientsParams::from_grads(loss(&model).backward(), &model);
    let analytic = state_dict(&model.clone().map(&mut GradOf(&grads)));
    let h = 2e-2f32;
    for &key in probes {
        let g = analytic.get(key).unwrap_or_else(|| panic!("no gradient for {key}"));
        let g = g.as_slice::<f32>().unwrap();
        // The element with the largest gradient, so that the difference is well above rounding.
        let (i, &gi) = g.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap();
        let at = |delta: f32| {
            let mut w2 = weights.clone();
            let mut v = w2[key].as_slice::<f32>().unwrap().to_vec();
            v[i] += delta;
            w2.insert(key.to_string(), TensorData::new(v, w2[key].shape().to_vec()));
            // The loss summed in f64, so that its rounding stays far below the difference.
            let out = load_into(fresh(), &w2, &dev).unwrap().forward(x.clone(), t.clone(), y.clone()).into_data();
            let out = out.as_slice::<f32>().unwrap();
            out.iter().zip(&w_host).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
        };
        let numeric = ((at(h) - at(-h)) / (2.0 * h as f64)) as f32;
        // 2% of the gradient, plus the noise floor of a difference of f32 forward passes at
        // this step (measured: about 1e-3 here, for gradients from 0.03 to 4).
        assert!(
            (numeric - gi).abs() <= 2e-2 * gi.abs() + 2e-3,
            "{name} {key}[{i}]: autodiff {gi}, finite difference {numeric}"
        );
    }
}
