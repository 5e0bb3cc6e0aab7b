//! The per-element and per-pixel ops around U-DiT's attention and FFN, fused with their own
//! backward as a burn backend extension on the CPU `flex` backend: GELU (exact and tanh),
//! SwiGLU's `silu(gate) * up`, the adaLN pre-norm `LayerNorm2d(x) * (1 + scale) + shift`,
//! and the gated residual `x + gate * y`. Burn's generic ops run these as chains of broadcast ops (and scalar erf),
//! each keeping its own inputs for autodiff; here each op keeps only its inputs and the
//! backward recomputes the rest in one pass. `tests/pointwise_kernels.rs` compares them
//! with [`super::generic`].

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

use super::flex::{shape, slice, tensor, values};

use super::cpu::{
    Gelu, PIXEL_BLOCK, SyncPtr, add_gated_of, exp, gelu_of, norm_modulate_of, normal_cdf, pixel_blocks, sum,
    vectorized, written,
};

#[backend_extension(Flex, Autodiff)]
pub trait PointwiseOps: Backend {
    /// GELU, exact (`tanh` false) or tanh-approximated.
    fn fused_gelu(x: FloatTensor<Self>, tanh: bool) -> FloatTensor<Self>;
    /// `[B, C, H, W]`, `[B, C]`, `[B, C]` -> `LayerNorm2d(x) * (1 + scale) + shift`.
    fn norm_modulate(x: FloatTensor<Self>, shift: FloatTensor<Self>, scale: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `[B, C, H, W]`, `[B, C]`, `[B, C, H, W]` -> `x + gate * y`.
    fn add_gated(x: FloatTensor<Self>, gate: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `silu(gate) * up`, both of one shape.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The backward passes of [`PointwiseOps`], on the backends that run their forward.
pub trait PointwiseGrads: Backend {
    fn gelu_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, tanh: bool) -> FloatTensor<Self>;
    /// d x, d shift, d scale.
    fn norm_modulate_grads(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
    /// d gate, d y (d x is the output gradient itself).
    fn add_gated_grads(
        gate: FloatTensor<Self>,
        y: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2];
    /// d gate, d up.
    fn swiglu_grads(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> [FloatTensor<Self>; 2];
}

pub fn gelu<const D: usize>(x: Tensor<D>, kind: Gelu) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as PointwiseOps>::fused_gelu(x.into_dispatch(), kind == Gelu::Tanh))
}

pub fn norm_modulate(x: Tensor<4>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<4> {
    let out =
        <Dispatch as PointwiseOps>::norm_modulate(x.into_dispatch(), shift.into_dispatch(), scale.into_dispatch());
    Tensor::from_dispatch(out)
}

pub fn add_gated(x: Tensor<4>, gate: Tensor<2>, y: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PointwiseOps>::add_gated(
        x.into_dispatch(),
        gate.into_dispatch(),
        y.into_dispatch(),
    ))
}

pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as PointwiseOps>::swiglu(gate.into_dispatch(), up.into_dispatch()))
}

/// sigmoid(x), through the vectorisable [`exp`].
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Element chunks per parallel task of the per-element ops.
const CHUNK: usize = 1 << 14;

impl PointwiseOps for Flex {
    fn fused_gelu(x: FlexTensor, tanh: bool) -> FlexTensor {
        let kind = if tanh { Gelu::Tanh } else { Gelu::Erf };
        tensor(gelu_of(&slice(&x), kind), shape(&x))
    }

    fn norm_modulate(x: FlexTensor, shift: FlexTensor, scale: FlexTensor) -> FlexTensor {
        // Out of place, as every fused op: autodiff keeps `x` (in place would copy it first).
        let shape = shape(&x);
        tensor(norm_modulate_of(&slice(&x), shape4(&shape), &slice(&shift), &slice(&scale)), shape)
    }

    fn add_gated(x: FlexTensor, gate: FlexTensor, y: FlexTensor) -> FlexTensor {
        let shape = shape(&x);
        tensor(add_gated_of(&slice(&x), &slice(&gate), &slice(&y), shape[2] * shape[3]), shape)
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let shape = shape(&gate);
        // Out of place: autodiff keeps `gate` for the backward, so in place would copy it first.
        let (gate, up) = (slice(&gate), slice(&up));
        assert_eq!(gate.len(), up.len());
        let fill = |[out]: [&mut [MaybeUninit<f32>]; 1]| {
            out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(out, (a, u))| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ((o, &a), &u) in out.iter_mut().zip(a).zip(u) {
                            o.write(a * sigmoid(a) * u);
                        }
                    },
                )
            })
        };
        // SAFETY: the chunks cover the output, every element written.
        let [v] = unsafe { written([gate.len()], fill) };
        tensor(v, shape)
    }
}

fn shape4(shape: &[usize]) -> [usize; 4] {
    shape.try_into().expect("a 4-d tensor")
}

/// GELU'(x) of the tanh form: with t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3),
/// 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx.
#[inline(always)]
fn gelu_tanh_derivative(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x)
}

/// GELU'(x) exactly: Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
#[inline(always)]
fn gelu_erf_derivative(x: f32) -> f32 {
    normal_cdf(x) + x * exp(-0.5 * x * x) * 0.398_942_3
}

impl PointwiseGrads for Flex {
    fn gelu_grad(x: FlexTensor, grad: FlexTensor, tanh: bool) -> FlexTensor {
        let shape = shape(&x);
        let x = slice(&x);
        let mut g = values(grad);
        g.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(gs, xs)| {
            // One loop per form, as `for` loops: a `for_each` closure holding both forms was
            // compiled out of line, without the vector features (10% of a small DiT's step).
            vectorized(
                #[inline(always)]
                || {
                    if tanh {
                        for (g, &x) in gs.iter_mut().zip(xs) {
                            *g *= gelu_tanh_derivative(x);
                        }
                    } else {
                        for (g, &x) in gs.iter_mut().zip(xs) {
                            *g *= gelu_erf_derivative(x);
                        }
                    }
                },
            )
        });
        tensor(g, shape)
    }

    fn norm_modulate_grads(x: FlexTensor, scale: FlexTensor, grad: FlexTensor) -> [FlexTensor; 3] {
        let shape = shape(&x);
        let [b, c, h, w] = shape4(&shape);
        let plane = h * w;
        let (x, scale, mut g) = (slice(&x), slice(&scale), values(grad));
        let tasks = pixel_blocks(b, plane);
        let block = PIXEL_BLOCK.min(plane);
        let ptr = SyncPtr(g.as_mut_ptr());
        // Per task: its sample, and the partial sums of d shift and d scale over its pixels.
        let partial: Vec<(usize, Vec<f32>, Vec<f32>)> = tasks
            .par_iter()
            .map(|&(bi, p0)| {
                let len = block.min(plane - p0);
                // SAFETY: tasks cover disjoint (sample, pixel range) sets of `g`.
                let gs = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(bi * c * plane), c * plane) };
                let xs = &x[bi * c * plane..(bi + 1) * c * plane];
                let s = &scale[bi * c..(bi + 1) * c];
                let (dshift, dscale) = vectorized(
                    #[inline(always)]
                    || norm_modulate_backward_block(xs, gs, s, plane, p0, len),
                );
                (bi, dshift, dscale)
            })
            .collect();
        let (mut dshift, mut dscale) = (vec![0f32; b * c], vec![0f32; b * c]);
        for (bi, ds, dc) in partial {
            for ch in 0..c {
                dshift[bi * c + ch] += ds[ch];
                dscale[bi * c + ch] += dc[ch];
            }
        }
        [tensor(g, shape), tensor(dshift, vec![b, c]), tensor(dscale, vec![b, c])]
    }

    fn add_gated_grads(gate: FlexTensor, y: FlexTensor, grad: FlexTensor) -> [FlexTensor; 2] {
        let shape = shape(&y);
        let plane = shape[2] * shape[3];
        let (gate, y, g) = (slice(&gate), slice(&y), slice(&grad));
        assert!(gate.len() * plane == y.len() && g.len() == y.len(), "one gate per plane of y");
        let fill = |[dy, dgate]: [&mut [MaybeUninit<f32>]; 2]| {
            dy.par_chunks_mut(plane)
                .zip(dgate.par_iter_mut())
                .zip(g.par_chunks(plane).zip(y.par_chunks(plane)).zip(gate.par_iter()))
                .for_each(|((dys, dg), ((gs, ys), &gv))| {
                    vectorized(
                        #[inline(always)]
                        || {
                            dg.write(super::cpu::dot(gs, ys));
                            dys.iter_mut().zip(gs).for_each(|(d, &g)| {
                                d.write(gv * g);
                            });
                        },
                    )
                })
        };
        // SAFETY: every plane of dy and the d gate of every plane are written.
        let [dy, dgate] = unsafe { written([y.len(), gate.len()], fill) };
        [tensor(dgate, shape[..2].to_vec()), tensor(dy, shape)]
    }

    /// With s = sigmoid(a): d(a s b)/da = b s (1 + a (1 - s)), d/db = a s.
    fn swiglu_grads(gate: FlexTensor, up: FlexTensor, grad: FlexTensor) -> [FlexTensor; 2] {
        let shape = shape(&gate);
        let (gate, up, g) = (slice(&gate), slice(&up), slice(&grad));
        assert!(up.len() == gate.len() && g.len() == gate.len());
        let fill = |[dgate, dup]: [&mut [MaybeUninit<f32>]; 2]| {
            dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).enumerate().for_each(|(i, (dg, du))| {
                let range = i * CHUNK..(i * CHUNK + dg.len());
                let (a, b, g) = (&gate[range.clone()], &up[range.clone()], &g[range]);
                vectorized(
                    #[inline(always)]
                    || {
                        for j in 0..dg.len() {
                            let s = sigmoid(a[j]);
                            dg[j].write(g[j] * b[j] * s * (1.0 + a[j] * (1.0 - s)));
                            du[j].write(g[j] * a[j] * s);
                        }
                    },
                )
            })
        };
        // SAFETY: the chunks cover both outputs, every element written.
        let [dgate, dup] = unsafe { written([gate.len(); 2], fill) };
        [tensor(dgate, shape.clone()), tensor(dup, shape)]
    }
}

/// The LayerNorm2d + modulate backward of pixels `p0..p0 + len` of one sample: `g` (the
/// output gradient, channel-major) becomes the input gradient; returns the partial d shift
/// and d scale. With x^ the normalised input and r = 1 / sqrt(var + eps):
/// d x^ = g (1 + scale), d x = r (d x^ - mean_c(d x^) - x^ mean_c(d x^ x^)).
#[inline(always)]
fn norm_modulate_backward_block(
    x: &[f32],
    g: &mut [f32],
    scale: &[f32],
    plane: usize,
    p0: usize,
    len: usize,
) -> (Vec<f32>, Vec<f32>) {
    let c = scale.len();
    let (mut mean, mut rstd) = (vec![0f32; len], vec![0f32; len]);
    for ch in 0..c {
        let row = &x[ch * plane + p0..][..len];
        for ((m, s), &v) in mean.iter_mut().zip(rstd.iter_mut()).zip(row) {
            *m += v;
            *s = v.mul_add(v, *s);
        }
    }
    let inv_c = 1.0 / c as f32;
    for (m, s) in mean.iter_mut().zip(rstd.iter_mut()) {
        *m *= inv_c;
        *s = 1.0 / ((*s * inv_c - *m * *m).max(0.0) + 1e-6).sqrt();
    }
    let (mut dshift, mut dscale) = (vec![0f32; c], vec![0f32; c]);
    let (mut mean_dxh, mut mean_dxh_xh) = (vec![0f32; len], vec![0f32; len]);
    let mut xh = vec![0f32; len];
    for ch in 0..c {
        let (row, grow) = (&x[ch * plane + p0..][..len], &mut g[ch * plane + p0..][..len]);
        for ((xv, &v), (&m, &r)) in xh.iter_mut().zip(row).zip(mean.iter().zip(&rstd)) {
            *xv = (v - m) * r;
        }
        dshift[ch] = sum(grow);
        dscale[ch] = super::cpu::dot(grow, &xh);
        let gain = 1.0 + scale[ch];
        for ((gv, &xv), (a, bsum)) in grow.iter_mut().zip(&xh).zip(mean_dxh.iter_mut().zip(mean_dxh_xh.iter_mut())) {
            *gv *= gain; // now d x^
            *a += *gv;
            *bsum = gv.mul_add(xv, *bsum);
        }
    }
    for ch in 0..c {
        let (row, grow) = (&x[ch * plane + p0..][..len], &mut g[ch * plane + p0..][..len]);
        for (((gv, &v), (&m, &r)), (&a, &bsum)) in
            grow.iter_mut().zip(row).zip(mean.iter().zip(&rstd)).zip(mean_dxh.iter().zip(&mean_dxh_xh))
        {
            let xv = (v - m) * r;
            *gv = r * (*gv - a * inv_c - xv * bsum * inv_c);
        }
    }
    (dshift, dscale)
}

impl<B: Backend + PointwiseOps + PointwiseGrads, C: CheckpointStrategy> PointwiseOps for Autodiff<B, C> {
    fn fused_gelu(x: FloatTensor<Self>, tanh: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward(bool);
        impl<B: Backend + PointwiseGrads> Backward<B, 1> for GeluBackward {
            type State = B::FloatTensorPrimitive;
            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                register!(B, ops.parents, [B::gelu_grad(ops.state, grad, self.0)], grads);
            }
        }
        let guards = [x.node()];
        let x = x.into_primitive();
        let out = B::fused_gelu(x.clone(), tanh);
        match GeluBackward(tanh).prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn norm_modulate(x: FloatTensor<Self>, shift: FloatTensor<Self>, scale: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct NormModulateBackward;
        impl<B: Backend + PointwiseGrads> Backward<B, 3> for NormModulateBackward {
            /// The input and the scale.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);
            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, scale) = ops.state;
                register!(B, ops.parents, B::norm_modulate_grads(x, scale, grad), grads);
            }
        }
        let guards = [x.node(), shift.node(), scale.node()];
        let (x, shift, scale) = (x.into_primitive(), shift.into_primitive(), scale.into_primitive());
        let out = B::norm_modulate(x.clone(), shift, scale.clone());
        match NormModulateBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn add_gated(x: FloatTensor<Self>, gate: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AddGatedBackward;
        impl<B: Backend + PointwiseGrads> Backward<B, 3> for AddGatedBackward {
            /// The gate and the gated branch.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);
            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (gate, y) = ops.state;
                let [dgate, dy] = B::add_gated_grads(gate, y, grad.clone());
                register!(B, ops.parents, [grad, dgate, dy], grads);
            }
        }
        let guards = [x.node(), gate.node(), y.node()];
        let (x, gate, y) = (x.into_primitive(), gate.into_primitive(), y.into_primitive());
        let out = B::add_gated(x, gate.clone(), y.clone());
        match AddGatedBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((gate, y), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SwigluBackward;
        impl<B: Backend + PointwiseGrads> Backward<B, 2> for SwigluBackward {
            /// Both inputs.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);
            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (gate, up) = ops.state;
                register!(B, ops.parents, B::swiglu_grads(gate, up, grad), grads);
            }
        }
        let guards = [gate.node(), up.node()];
        let (gate, up) = (gate.into_primitive(), up.into_primitive());
        let out = B::swiglu(gate.clone(), up.clone());
        match SwigluBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((gate, up), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
