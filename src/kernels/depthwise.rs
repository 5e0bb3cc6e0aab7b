//! Depthwise convolution (U-DiT's downsampler, Sec. 3.2, and its FFN, Sec. 3.3) as a burn
//! backend extension with its own backward pass on the CPU `flex` backend.
//!
//! Burn's generic path takes the input gradient of a grouped convolution through a grouped
//! transposed convolution and the weight gradient one group (here: one channel) at a time,
//! which made depthwise convolutions the largest cost of a U-DiT training step. For a
//! stride-1 "same" depthwise convolution both gradients are short loops over one channel
//! plane: the input gradient is the same convolution with the kernel flipped, the weight
//! gradient one dot product per tap. `tests/depthwise.rs` compares all three gradients with
//! burn's generic convolution. CUDA builds leave this module out and run burn's kernels.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use super::flex::{dims4, slice, tensor};

use super::cpu::{dot, sum, vectorized};

/// `[B, C, H, W]` convolved with `[C, 1, k, k]` plus `[C]`: stride 1, zero padding (k-1)/2.
#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseOps: Backend {
    fn depthwise_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The gradients of [`DepthwiseOps::depthwise_conv2d`] with respect to x, weight and bias,
/// on the backends that run its forward; only the autodiff wrapper calls it.
pub trait DepthwiseGrads: Backend {
    fn depthwise_conv2d_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
}

/// Depthwise convolution of `x` by `weight` (`[C, 1, k, k]`, k odd) plus `bias`, on the CPU
/// backend with or without autodiff.
pub fn depthwise_conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let out =
        <Dispatch as DepthwiseOps>::depthwise_conv2d(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch());
    Tensor::from_dispatch(out)
}

impl DepthwiseOps for Flex {
    fn depthwise_conv2d(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let [b, c, h, w] = dims4(&x);
        let k = dims4(&weight)[3];
        let (x, weight, bias) = (slice(&x), slice(&weight), slice(&bias));
        let out = convolve_planes(&x, [b, c, h, w], k, &weight, &bias);
        tensor(out, [b, c, h, w])
    }
}

impl DepthwiseGrads for Flex {
    fn depthwise_conv2d_grads(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> [FlexTensor; 3] {
        let [b, c, h, w] = dims4(&x);
        let k = dims4(&weight)[3];
        let (x, weight, grad) = (slice(&x), slice(&weight), slice(&grad));
        let (x, weight, grad) = (&x[..], &weight[..], &grad[..]);
        // Input gradient: the convolution of the output gradient by the flipped kernel.
        let flipped: Vec<f32> = weight.chunks(k * k).flat_map(|taps| taps.iter().rev().copied()).collect();
        let grad_x = convolve_planes(grad, [b, c, h, w], k, &flipped, &vec![0f32; c]);
        // Weight and bias gradients: per channel, sums over the batch.
        let mut grad_w = vec![0f32; c * k * k];
        let mut grad_b = vec![0f32; c];
        grad_w.par_chunks_mut(k * k).zip(grad_b.par_iter_mut()).enumerate().for_each_init(
            || Scratch::new(h, w, k),
            |scratch, (ch, (gw, gb))| {
                for bi in 0..b {
                    let plane = bi * c + ch;
                    let g = &grad[plane * h * w..(plane + 1) * h * w];
                    *gb += sum(g);
                    scratch.correlate(&x[plane * h * w..(plane + 1) * h * w], g, gw);
                }
            },
        );
        [tensor(grad_x, [b, c, h, w]), tensor(grad_w, [c, 1, k, k]), tensor(grad_b, [c])]
    }
}

impl<B: Backend + DepthwiseOps + DepthwiseGrads, C: CheckpointStrategy> DepthwiseOps for Autodiff<B, C> {
    fn depthwise_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct DepthwiseBackward;

        impl<B: Backend + DepthwiseGrads> Backward<B, 3> for DepthwiseBackward {
            /// The input and the weight.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                register!(B, ops.parents, B::depthwise_conv2d_grads(x, weight, grad), grads);
            }
        }

        let guards = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
        let out = B::depthwise_conv2d(x.clone(), weight.clone(), bias);
        match DepthwiseBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// Every `[H, W]` plane of `src` convolved by its channel's k x k taps plus bias.
fn convolve_planes(src: &[f32], [b, c, h, w]: [usize; 4], k: usize, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; b * c * h * w];
    out.par_chunks_mut(h * w).enumerate().for_each_init(
        || Scratch::new(h, w, k),
        |scratch, (plane, o)| {
            let ch = plane % c;
            scratch.convolve(
                &src[plane * h * w..(plane + 1) * h * w],
                &weight[ch * k * k..(ch + 1) * k * k],
                bias[ch],
                o,
            );
        },
    );
    out
}

/// One channel plane at a time, in a zero-bordered copy of row width w + k - 1, so that
/// every tap is one long multiply-add over the flattened rows (the border columns of the
/// accumulator get values nobody reads). Only interiors are ever written, so the borders
/// of `padded` and `rows` stay zero from construction on.
struct Scratch {
    padded: Vec<f32>,
    acc: Vec<f32>,
    /// An output gradient at row width w + k - 1 (weight gradient).
    rows: Vec<f32>,
    h: usize,
    w: usize,
    k: usize,
}

impl Scratch {
    fn new(h: usize, w: usize, k: usize) -> Self {
        let wp = w + k - 1;
        Self { padded: vec![0f32; (h + k - 1) * wp + k], acc: vec![0f32; h * wp], rows: vec![0f32; h * wp], h, w, k }
    }

    fn pad(&mut self, src: &[f32]) {
        let (h, w, pad) = (self.h, self.w, (self.k - 1) / 2);
        let wp = w + self.k - 1;
        for y in 0..h {
            self.padded[(y + pad) * wp + pad..(y + pad) * wp + pad + w].copy_from_slice(&src[y * w..(y + 1) * w]);
        }
    }

    /// `out = src * taps + bias` for one plane.
    fn convolve(&mut self, src: &[f32], taps: &[f32], bias: f32, out: &mut [f32]) {
        self.pad(src);
        let (k, w, wp) = (self.k, self.w, self.w + self.k - 1);
        let (padded, acc) = (&self.padded, &mut self.acc);
        vectorized(
            #[inline(always)]
            || {
                acc.iter_mut().for_each(|v| *v = bias);
                let len = acc.len();
                for ky in 0..k {
                    for kx in 0..k {
                        let t = taps[ky * k + kx];
                        let shifted = &padded[ky * wp + kx..ky * wp + kx + len];
                        acc.iter_mut().zip(shifted).for_each(|(a, &i)| *a = t.mul_add(i, *a));
                    }
                }
            },
        );
        for (y, row) in out.chunks_mut(w).enumerate() {
            row.copy_from_slice(&acc[y * wp..y * wp + w]);
        }
    }

    /// `taps += sum over pixels of grad * (shifted src)`, the weight gradient of one plane.
    fn correlate(&mut self, src: &[f32], grad: &[f32], taps: &mut [f32]) {
        self.pad(src);
        let (k, w, wp) = (self.k, self.w, self.w + self.k - 1);
        for (y, g) in grad.chunks(w).enumerate() {
            self.rows[y * wp..y * wp + w].copy_from_slice(g);
        }
        let (padded, rows) = (&self.padded, &self.rows);
        vectorized(
            #[inline(always)]
            || {
                for ky in 0..k {
                    for kx in 0..k {
                        let shifted = &padded[ky * wp + kx..ky * wp + kx + rows.len()];
                        taps[ky * k + kx] += dot(rows, shifted);
                    }
                }
            },
        );
    }
}
