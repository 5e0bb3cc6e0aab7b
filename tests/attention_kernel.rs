//! The fused attention op (forward and its own backward) against the same attention in
//! burn's generic ops: output, the gradient of the q/k/v map and of the logit scales.
#![cfg(not(feature = "cuda"))]

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::*;
use udit::kernels::AttnSpec;
use udit::kernels::attention::grouped_attention;
use udit::kernels::generic::attention as attention_generic;

/// Output and gradients (qkv, logit_scale) of `sum(attention(qkv) * weights)`.
fn run(fused: bool, qkv: &Tensor<4>, logit_scale: &Tensor<3>, weights: &Tensor<4>, spec: AttnSpec) -> [TensorData; 3] {
    let dev = Device::flex().autodiff();
    let qkv = Tensor::<4>::from_data(qkv.to_data(), &dev).require_grad();
    let ls = Tensor::<3>::from_data(logit_scale.to_data(), &dev).require_grad();
    let out = if fused {
        grouped_attention(qkv.clone(), ls.clone(), spec)
    } else {
        attention_generic(qkv.clone(), spec.cosine.then(|| ls.clone()), spec)
    };
    let loss = (out.clone() * Tensor::from_data(weights.to_data(), &dev)).sum();
    let grads = loss.backward();
    let g_ls =
        ls.grad(&grads).map(|g| g.into_data()).unwrap_or_else(|| TensorData::zeros::<f32, _>([spec.heads, 1, 1]));
    [out.into_data(), qkv.grad(&grads).expect("qkv gradient").into_data(), g_ls]
}

fn check(name: &str, [b, d, h, w]: [usize; 4], spec: AttnSpec) {
    let dev = Device::flex();
    let qkv = Tensor::<4>::random([b, 3 * d, h, w], Distribution::Normal(0.0, 1.0), &dev);
    let ls = Tensor::<3>::random([spec.heads, 1, 1], Distribution::Uniform(1.0, 3.0), &dev);
    let weights = Tensor::<4>::random([b, d, h, w], Distribution::Normal(0.0, 1.0), &dev);
    let fused = run(true, &qkv, &ls, &weights, spec);
    let generic = run(false, &qkv, &ls, &weights, spec);
    for (what, (f, g)) in ["output", "d qkv", "d logit_scale"].iter().zip(fused.iter().zip(&generic)) {
        if *what == "d logit_scale" && !spec.cosine {
            continue;
        }
        assert_close(&format!("{name}: {what}"), f, g, 1e-4);
    }
}

#[test]
fn cosine_rope_attention_on_24x24_latents() {
    let _autodiff = common::autodiff_alone();
    let spec = AttnSpec { heads: 2, r: 2, rope: true, cosine: true, scale: 1.0 };
    check("cosine + RoPE, 2 heads, r 2, 24x24", [2, 16, 24, 24], spec);
}

#[test]
fn one_head_dot_product_without_downsampling_or_rope() {
    let _autodiff = common::autodiff_alone();
    let spec = AttnSpec { heads: 1, r: 1, rope: false, cosine: false, scale: 8f32.powf(-0.5) };
    check("dot product, 1 head, r 1", [1, 8, 6, 6], spec);
}

#[test]
fn other_combinations() {
    let _autodiff = common::autodiff_alone();
    let cases = [
        ("cosine, no RoPE, 3 heads", [1, 12, 8, 8], AttnSpec { heads: 3, r: 2, rope: false, cosine: true, scale: 1.0 }),
        ("RoPE, dot product", [2, 8, 8, 8], AttnSpec { heads: 2, r: 2, rope: true, cosine: false, scale: 0.5 }),
        ("cosine + RoPE, r 1", [1, 8, 4, 4], AttnSpec { heads: 1, r: 1, rope: true, cosine: true, scale: 1.0 }),
    ];
    for (name, dims, spec) in cases {
        check(name, dims, spec);
    }
}

/// Above ln 100 the temperature is clamped, and logit_scale gets no gradient.
#[test]
fn clamped_logit_scale_gets_no_gradient() {
    let _autodiff = common::autodiff_alone();
    let spec = AttnSpec { heads: 1, r: 2, rope: false, cosine: true, scale: 1.0 };
    let dev = Device::flex();
    let qkv = Tensor::<4>::random([1, 12, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
    let ls = Tensor::<3>::full([1, 1, 1], 5.0, &dev);
    let weights = Tensor::<4>::random([1, 4, 4, 4], Distribution::Normal(0.0, 1.0), &dev);
    let [_, _, g] = run(true, &qkv, &ls, &weights, spec);
    assert_eq!(g.as_slice::<f32>().unwrap(), [0.0]);
}
