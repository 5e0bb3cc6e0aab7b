//! The depthwise-convolution extension (CPU forward and backward) against burn's generic
//! grouped convolution: outputs and the gradients of input, weight and bias.
#![cfg(not(feature = "cuda"))]

mod common;

use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use common::*;
use udit::kernels::depthwise::depthwise_conv2d;

fn generic(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>) -> Tensor<4> {
    let [c, _, k, _] = w.dims();
    let pad = (k - 1) / 2;
    conv2d(x, w, Some(b), ConvOptions::new([1, 1], [pad, pad], [1, 1], c))
}

#[test]
fn forward_and_gradients_match_the_generic_convolution() {
    let _autodiff = common::autodiff_alone();
    let dev = Device::flex();
    let ad = dev.clone().autodiff();
    let mut rng = Normals::new(0);
    for k in [1, 3, 5] {
        let (c, h, w) = (6, 7, 9);
        let (x, weight, bias) = (rng.normal([3, c, h, w], &dev), rng.normal([c, 1, k, k], &dev), rng.normal([c], &dev));
        // A fixed random cotangent, so that every output element has its own weight.
        let cot = rng.normal([3, c, h, w], &dev);
        let run = |conv: fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4>| {
            let x = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
            let b = Tensor::<1>::from_data(bias.to_data(), &ad).require_grad();
            let w_leaf = Tensor::<4>::from_data(weight.to_data(), &ad).require_grad();
            // The weight is an expression of a parameter, as in the on-the-fly FFN merge.
            let out = conv(x.clone(), w_leaf.clone() * 1.5, b.clone());
            let grads = (out.clone() * Tensor::from_data(cot.to_data(), &ad)).sum().backward();
            let grad = |t: Option<Tensor<4>>| t.unwrap().into_data();
            (out.into_data(), grad(x.grad(&grads)), grad(w_leaf.grad(&grads)), b.grad(&grads).unwrap().into_data())
        };
        let ours = run(depthwise_conv2d);
        let reference = run(generic);
        assert_close(&format!("k{k} output"), &ours.0, &reference.0, 1e-5);
        assert_close(&format!("k{k} grad x"), &ours.1, &reference.1, 1e-5);
        assert_close(&format!("k{k} grad weight"), &ours.2, &reference.2, 1e-5);
        assert_close(&format!("k{k} grad bias"), &ours.3, &reference.3, 1e-5);
        // Without autodiff the same kernel runs directly.
        let plain = depthwise_conv2d(x.clone(), weight.clone() * 1.5, bias.clone()).into_data();
        assert_close(&format!("k{k} inference"), &plain, &reference.0, 1e-5);
    }
}

#[test]
fn a_centred_one_hot_kernel_is_the_identity_and_its_gradient_is_the_input_sum() {
    let _autodiff = common::autodiff_alone();
    let ad = Device::flex().autodiff();
    let x = Tensor::<4>::from_data(TensorData::new((0..2 * 2 * 3 * 3).map(|v| v as f32).collect(), [2, 2, 3, 3]), &ad);
    let mut taps = vec![0f32; 2 * 9];
    taps[4] = 1.0;
    taps[9 + 4] = 1.0;
    let w = Tensor::<4>::from_data(TensorData::new(taps, [2, 1, 3, 3]), &ad).require_grad();
    let b = Tensor::<1>::zeros([2], &ad).require_grad();
    let out = depthwise_conv2d(x.clone(), w.clone(), b.clone());
    assert_eq!(out.to_data(), x.to_data());
    let grads = out.sum().backward();
    // d(sum)/d(centre tap of channel c) = sum of x over channel c; d/d bias = pixel count.
    let gw = w.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let sum_c = |c: usize| (0..2).flat_map(|n| (0..9).map(move |p| (n * 18 + c * 9 + p) as f32)).sum::<f32>();
    assert_eq!((gw[4], gw[13]), (sum_c(0), sum_c(1)));
    assert_eq!(b.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap(), vec![18.0, 18.0]);
}
