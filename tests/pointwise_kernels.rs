//! The fused GELU, SwiGLU product, adaLN pre-norm, gated residual and 1x1 convolution (forward and their own backward)
//! against the same ops in burn's generic tensor ops: output and every input gradient.
#![cfg(not(feature = "cuda"))]

mod common;

use burn::prelude::*;
use common::*;
use udit::kernels::{Gelu, generic, pointwise};

/// Seeded standard-normal inputs on the CPU.
fn normal<const D: usize>(rng: &mut Normals, shape: [usize; D]) -> Tensor<D> {
    rng.normal(shape, &Device::flex())
}

/// Output and the gradients of `sum(f(inputs) * weights)` with respect to every input.
/// `[B, C]` modulation inputs travel as `[B, C, 1, 1]` and are reshaped by `f`.
fn run(inputs: &[TensorData], weights: &Tensor<4>, f: impl Fn(Vec<Tensor<4>>) -> Tensor<4>) -> Vec<TensorData> {
    let dev = Device::flex().autodiff();
    let ts: Vec<Tensor<4>> = inputs.iter().map(|d| Tensor::<4>::from_data(d.clone(), &dev).require_grad()).collect();
    let out = f(ts.clone());
    let grads = (out.clone() * Tensor::from_data(weights.to_data(), &dev)).sum().backward();
    let mut all = vec![out.into_data()];
    all.extend(ts.iter().map(|t| t.grad(&grads).expect("gradient").into_data()));
    all
}

fn compare(name: &str, fused: Vec<TensorData>, generic: Vec<TensorData>) {
    for (i, (f, g)) in fused.iter().zip(&generic).enumerate() {
        let what = if i == 0 { "output".to_string() } else { format!("d input {i}") };
        assert_close(&format!("{name}: {what}"), f, g, 1e-4);
    }
}

#[test]
fn gelu_both_forms_and_their_gradients() {
    let _autodiff = common::autodiff_alone();
    let mut rng = Normals::new(0);
    for (kind, name) in [(Gelu::Erf, "exact GELU"), (Gelu::Tanh, "tanh GELU")] {
        let x = normal(&mut rng, [2, 5, 7, 3]) * 3.0;
        let w = normal(&mut rng, [2, 5, 7, 3]);
        let fused = run(&[x.to_data()], &w, |t| pointwise::gelu(t[0].clone(), kind));
        let generic = run(&[x.to_data()], &w, |t| generic::gelu(t[0].clone(), kind));
        compare(name, fused, generic);
    }
}

#[test]
fn norm_modulate_and_its_gradients_on_odd_shapes() {
    let _autodiff = common::autodiff_alone();
    let mut rng = Normals::new(0);
    for [b, c, h, w] in [[2, 24, 24, 24], [1, 3, 5, 7], [3, 16, 1, 1]] {
        let (x, shift, scale) = (
            normal(&mut rng, [b, c, h, w]) * 2.0 + 0.5,
            normal(&mut rng, [b, c, 1, 1]),
            normal(&mut rng, [b, c, 1, 1]),
        );
        let weights = normal(&mut rng, [b, c, h, w]);
        let squeeze = |t: &Tensor<4>| t.clone().reshape([b, c]);
        let inputs = [x.to_data(), shift.to_data(), scale.to_data()];
        let fused = run(&inputs, &weights, |t| pointwise::norm_modulate(t[0].clone(), squeeze(&t[1]), squeeze(&t[2])));
        let generic = run(&inputs, &weights, |t| generic::norm_modulate(t[0].clone(), squeeze(&t[1]), squeeze(&t[2])));
        compare(&format!("norm_modulate {b}x{c}x{h}x{w}"), fused, generic);
    }
}

#[test]
fn gated_residual_and_its_gradients() {
    let _autodiff = common::autodiff_alone();
    let mut rng = Normals::new(0);
    let [b, c, h, w] = [2, 6, 5, 3];
    let (x, gate, y) = (normal(&mut rng, [b, c, h, w]), normal(&mut rng, [b, c, 1, 1]), normal(&mut rng, [b, c, h, w]));
    let weights = normal(&mut rng, [b, c, h, w]);
    let inputs = [x.to_data(), gate.to_data(), y.to_data()];
    let g = |t: &Tensor<4>| t.clone().reshape([b, c]);
    let fused = run(&inputs, &weights, |t| pointwise::add_gated(t[0].clone(), g(&t[1]), t[2].clone()));
    let generic = run(&inputs, &weights, |t| generic::add_gated(t[0].clone(), g(&t[1]), t[2].clone()));
    compare("add_gated", fused, generic);
}

#[test]
fn swiglu_and_its_gradients() {
    let _autodiff = common::autodiff_alone();
    let mut rng = Normals::new(0);
    // One shape within a parallel chunk of elements, one across several with a ragged end.
    for shape in [[1, 8, 6, 6], [2, 37, 19, 13]] {
        let (gate, up) = (normal(&mut rng, shape) * 3.0, normal(&mut rng, shape));
        let weights = normal(&mut rng, shape);
        let inputs = [gate.to_data(), up.to_data()];
        let fused = run(&inputs, &weights, |t| pointwise::swiglu(t[0].clone(), t[1].clone()));
        let generic = run(&inputs, &weights, |t| generic::swiglu(t[0].clone(), t[1].clone()));
        compare(&format!("swiglu {shape:?}"), fused, generic);
    }
}

#[test]
fn conv1x1_and_its_gradients() {
    let _autodiff = common::autodiff_alone();
    let mut rng = Normals::new(0);
    for ([b, c, h, w], o) in [([3, 5, 7, 4], 6), ([1, 8, 24, 24], 24)] {
        let (x, weight, bias) =
            (normal(&mut rng, [b, c, h, w]), normal(&mut rng, [o, c, 1, 1]), normal(&mut rng, [o, 1, 1, 1]));
        let weights = normal(&mut rng, [b, o, h, w]);
        let inputs = [x.to_data(), weight.to_data(), bias.to_data()];
        let bias1 = |t: &Tensor<4>| t.clone().reshape([o]);
        let fused =
            run(&inputs, &weights, |t| udit::kernels::conv1x1::conv1x1(t[0].clone(), t[1].clone(), bias1(&t[2])));
        let generic = run(&inputs, &weights, |t| generic::conv1x1(t[0].clone(), t[1].clone(), bias1(&t[2])));
        compare(&format!("conv1x1 {b}x{c}x{h}x{w} -> {o}"), fused, generic);
    }
}
