//! 1x1 convolutions (U-DiT's `to_qkv`, `to_out` and FFN projections) as single GEMMs in both
//! directions, a burn backend extension on the CPU `flex` backend. On an NCHW map a 1x1 conv
//! is, per sample, `[O, C] x [C, HW]`; its input gradient is `W^T x grad` and its weight
//! gradient `grad x x^T` summed over the batch, all on the tensors as they lie, without the
//! im2col, transposes and per-sample weight-gradient copies of the generic paths.

use std::mem::MaybeUninit;

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

use super::cpu::{gemm_strided, gemm_write, sum, transpose, vectorized, written};

/// `[B, C, H, W]` x `[O, C, 1, 1]` + `[O]` -> `[B, O, H, W]`.
#[backend_extension(Flex, Autodiff)]
pub trait Conv1x1Ops: Backend {
    fn conv1x1(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// d x, d weight, d bias of [`Conv1x1Ops::conv1x1`].
pub trait Conv1x1Grads: Backend {
    fn conv1x1_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
}

pub fn conv1x1(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as Conv1x1Ops>::conv1x1(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// Samples run in parallel; with fewer samples than threads, each GEMM uses them all.
fn inner_parallelism(batch: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if batch >= threads { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) }
}

impl Conv1x1Ops for Flex {
    fn conv1x1(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let [b, c, h, w] = dims4(&x);
        let o = dims4(&weight)[0];
        let plane = h * w;
        let (x, weight, bias) = (slice(&x), slice(&weight), slice(&bias));
        let inner = inner_parallelism(b);
        // Each sample's rows start as its bias (written by the thread that then runs its GEMM,
        // into memory nothing has touched: no zeroing, no serial fill).
        let fill = |[out]: [&mut [MaybeUninit<f32>]; 1]| {
            out.par_chunks_mut(o * plane).zip(x.par_chunks(c * plane)).for_each(|(ob, xb)| {
                for (row, &v) in ob.chunks_mut(plane).zip(bias.iter()) {
                    row.fill(MaybeUninit::new(v));
                }
                // SAFETY: every element of `ob` was written just above.
                let ob = unsafe { std::slice::from_raw_parts_mut(ob.as_mut_ptr().cast::<f32>(), ob.len()) };
                gemm_strided(o, plane, c, &weight, (c, 1), xb, (plane, 1), ob, (plane, 1), true, inner);
            })
        };
        // SAFETY: each sample's chunk is o rows of `plane`, all written as its bias.
        let [out] = unsafe { written([b * o * plane], fill) };
        tensor(out, [b, o, h, w])
    }
}

impl Conv1x1Grads for Flex {
    fn conv1x1_grads(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> [FlexTensor; 3] {
        let [b, c, h, w] = dims4(&x);
        let o = dims4(&weight)[0];
        let plane = h * w;
        let (x, weight, grad) = (slice(&x), slice(&weight), slice(&grad));
        assert_eq!(grad.len(), b * o * plane, "the output gradient has the output's shape");
        // d x_b = W^T g_b, per sample, from W^T laid out once (c rows of o): gemm then reads
        // it as it lies instead of packing W again for every sample.
        let inner = inner_parallelism(b);
        let wt = transpose(&weight, o, c);
        let fill = |[dx]: [&mut [MaybeUninit<f32>]; 1]| {
            dx.par_chunks_mut(c * plane).zip(grad.par_chunks(o * plane)).for_each(|(dxb, gb)| {
                gemm_write(c, plane, o, &wt, (o, 1), gb, (plane, 1), dxb, inner);
            })
        };
        // SAFETY: gemm_write writes each sample's whole chunk.
        let [dx] = unsafe { written([b * c * plane], fill) };
        // d W = sum_b g_b x_b^T: the samples split into one run per thread, each summing its
        // samples' products into its own buffer with the GEMM's accumulation; then the runs summed.
        let runs = rayon::current_num_threads().min(b);
        let per_run = b.div_ceil(runs);
        let product = |bi: usize| (&grad[bi * o * plane..][..o * plane], &x[bi * c * plane..][..c * plane]);
        let mut partial: Vec<Vec<f32>> = (0..b.div_ceil(per_run))
            .into_par_iter()
            .map(|run| {
                let (first, last) = (run * per_run, ((run + 1) * per_run).min(b));
                let (gb, xb) = product(first);
                // SAFETY: gemm_write writes all o x c elements.
                let [mut dw] = unsafe {
                    written([o * c], |[dw]| gemm_write(o, c, plane, gb, (plane, 1), xb, (1, plane), dw, inner))
                };
                for bi in first + 1..last {
                    let (gb, xb) = product(bi);
                    gemm_strided(o, c, plane, gb, (plane, 1), xb, (1, plane), &mut dw, (c, 1), true, inner);
                }
                dw
            })
            .collect();
        let mut dw = partial.remove(0);
        for part in partial {
            dw.iter_mut().zip(part).for_each(|(a, v)| *a += v);
        }
        // d bias: each sample's plane sums on the threads, then added up in sample order (a
        // fixed order, so that a step's gradients are the same bits in every run).
        let per_sample: Vec<Vec<f32>> = grad
            .par_chunks(o * plane)
            .map(|gb| gb.chunks(plane).map(|row| vectorized(|| sum(row))).collect())
            .collect();
        let mut db = vec![0f32; o];
        for sample in per_sample {
            db.iter_mut().zip(sample).for_each(|(d, v)| *d += v);
        }
        [tensor(dx, [b, c, h, w]), tensor(dw, [o, c, 1, 1]), tensor(db, [o])]
    }
}

impl<B: Backend + Conv1x1Ops + Conv1x1Grads, C: CheckpointStrategy> Conv1x1Ops for Autodiff<B, C> {
    fn conv1x1(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv1x1Backward;

        impl<B: Backend + Conv1x1Grads> Backward<B, 3> for Conv1x1Backward {
            /// The input and the weight.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                register!(B, ops.parents, B::conv1x1_grads(x, weight, grad), grads);
            }
        }

        let guards = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (x.into_primitive(), weight.into_primitive(), bias.into_primitive());
        let out = B::conv1x1(x.clone(), weight.clone(), bias);
        match Conv1x1Backward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, weight), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
