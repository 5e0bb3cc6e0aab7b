//! U-DiT's downsampled-token attention (paper Sec. 3.2) as one op with its own backward, a
//! burn backend extension on the CPU `flex` backend.
//!
//! Under autodiff, burn's generic ops save every intermediate of the chain (group split,
//! RoPE, normalisation, scores, softmax, value product, merge) and run each backward as
//! strided copies and small batched matmuls. Here the forward is the fused inference kernel
//! (`super::cpu::GroupedAttention`) and autodiff keeps only its input; the backward recomputes
//! each group's scores (flash-attention style) and returns the gradients of the `to_qkv` map
//! and of the cosine attention's `logit_scale`. `tests/attention_kernel.rs` compares both with
//! burn's generic ops ([`super::generic::attention`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use super::flex::{dims4, slice, tensor, values};

use super::cpu::{
    GroupedAttention, dot, exp, gather_group, gemm_strided, inverse_norms, max, rotate_pair, scale_tokens, sum,
    vectorized,
};
use super::generic::rope_table;
use super::{AttnSpec, LOGIT_SCALE_MAX};

/// `[B, 3D, H, W]` q, k, v channels (and `[heads, 1, 1]` logit scales, read only for cosine
/// attention) -> `[B, D, H, W]`.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionOps: Backend {
    fn grouped_attention(
        qkv: FloatTensor<Self>,
        logit_scale: FloatTensor<Self>,
        heads: usize,
        r: usize,
        rope: bool,
        cosine: bool,
        scale: f32,
    ) -> FloatTensor<Self>;
}

/// The gradients of [`AttentionOps::grouped_attention`] with respect to qkv and logit_scale.
pub trait AttentionGrads: Backend {
    fn grouped_attention_grads(
        qkv: FloatTensor<Self>,
        logit_scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: AttnSpec,
    ) -> [FloatTensor<Self>; 2];
}

/// The attention on the CPU backend, with or without autodiff. Without cosine attention,
/// `logit_scale` may be any `[heads, 1, 1]` tensor (it is not read).
pub fn grouped_attention(qkv: Tensor<4>, logit_scale: Tensor<3>, spec: AttnSpec) -> Tensor<4> {
    let AttnSpec { heads, r, rope, cosine, scale } = spec;
    let out = <Dispatch as AttentionOps>::grouped_attention(
        qkv.into_dispatch(),
        logit_scale.into_dispatch(),
        heads,
        r,
        rope,
        cosine,
        scale,
    );
    Tensor::from_dispatch(out)
}

/// exp(min(logit_scale, max)) per head, or the dot-product scale for every head.
fn temperatures(logit_scale: FlexTensor, spec: &AttnSpec) -> Option<Vec<f32>> {
    spec.cosine.then(|| values(logit_scale).into_iter().map(|s| s.min(LOGIT_SCALE_MAX).exp()).collect())
}

impl AttentionOps for Flex {
    fn grouped_attention(
        qkv: FlexTensor,
        logit_scale: FlexTensor,
        heads: usize,
        r: usize,
        rope: bool,
        cosine: bool,
        scale: f32,
    ) -> FlexTensor {
        let spec = AttnSpec { heads, r, rope, cosine, scale };
        let kernel = GroupedAttention { heads, r, rope, temperature: temperatures(logit_scale, &spec), scale };
        let dims = dims4(&qkv);
        let [b, d3, h, w] = dims;
        let out = kernel.forward_slice(&slice(&qkv), dims);
        tensor(out, [b, d3 / 3, h, w])
    }
}

impl AttentionGrads for Flex {
    fn grouped_attention_grads(
        qkv: FlexTensor,
        logit_scale: FlexTensor,
        grad: FlexTensor,
        spec: AttnSpec,
    ) -> [FlexTensor; 2] {
        let [b, d3, h, w] = dims4(&qkv);
        let heads = spec.heads;
        let ls = values(logit_scale.clone());
        let temps = temperatures(logit_scale, &spec);
        let (qkv, grad) = (slice(&qkv), slice(&grad));
        let (d, plane) = (d3 / 3, h * w);
        let hd = d / heads;
        let n = (h / spec.r) * (w / spec.r);
        // The backward rotates by the negative angles: sin negated.
        let mut rope = if spec.rope { rope_table(hd, n) } else { vec![] };
        rope.iter_mut().skip(hd / 2 * n).for_each(|s| *s = -*s);
        let mut grad_qkv = vec![0f32; b * d3 * plane];
        // Channel blocks [b][slot][head] of hd planes; task (b, head) owns its three blocks.
        let mut blocks: Vec<Option<&mut [f32]>> = grad_qkv.chunks_mut(hd * plane).map(Some).collect();
        let tasks: Vec<(usize, [&mut [f32]; 3])> = (0..b * heads)
            .map(|task| {
                let (bi, head) = (task / heads, task % heads);
                let mut take = |slot: usize| blocks[(bi * 3 + slot) * heads + head].take().expect("one owner");
                (task, [take(0), take(1), take(2)])
            })
            .collect();
        let dtemp: Vec<f64> = tasks
            .into_par_iter()
            .map_init(
                || Scratch::new(hd, n),
                |scratch, (task, out)| {
                    let (bi, head) = (task / heads, task % heads);
                    let sample = &qkv[bi * d3 * plane..(bi + 1) * d3 * plane];
                    let g = &grad[(bi * d + head * hd) * plane..(bi * d + (head + 1) * hd) * plane];
                    let temp = temps.as_ref().map(|t| t[head]);
                    vectorized(
                        #[inline(always)]
                        || backward_head(sample, g, out, scratch, head, [d, hd, h, w], &spec, temp, &rope),
                    )
                },
            )
            .collect();
        // d logit_scale = d temperature * temperature below the clamp, else 0.
        let grad_ls: Vec<f32> = (0..heads)
            .map(|head| match &temps {
                Some(t) if ls[head] <= LOGIT_SCALE_MAX => {
                    let dt: f64 = (0..b).map(|bi| dtemp[bi * heads + head]).sum();
                    (dt * t[head] as f64) as f32
                }
                _ => 0.0,
            })
            .collect();
        [tensor(grad_qkv, [b, d3, h, w]), tensor(grad_ls, [heads, 1, 1])]
    }
}

/// The working buffers of [`backward_head`], made once per rayon job and reused by its tasks
/// (every buffer is written before it is read).
struct Scratch {
    /// q, k, v, d out, d q, d k, d v: `[hd][n]` each.
    tokens: [Vec<f32>; 7],
    /// P and d P (then d S): `[n][n]`.
    scores: [Vec<f32>; 2],
    /// The inverse norms of q and k, normalize_backward's projections: `[n]`.
    rows: [Vec<f32>; 3],
    /// The pixel of each token of the group.
    pixels: Vec<usize>,
}

impl Scratch {
    fn new(hd: usize, n: usize) -> Self {
        Self {
            tokens: std::array::from_fn(|_| vec![0.0; hd * n]),
            scores: std::array::from_fn(|_| vec![0.0; n * n]),
            rows: std::array::from_fn(|_| vec![0.0; n]),
            pixels: vec![0; n],
        }
    }
}

/// The backward of one (sample, head): for every group, recompute q, k (rotated,
/// normalised), the scores and the softmax, then propagate `grad` (the head's `[hd][H*W]`
/// output gradient) to q, k and v, written into `out` (the head's q, k and v channel blocks).
/// `rope` holds cos and -sin (the inverse rotation). Returns this head's d temperature
/// (cosine attention).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_head(
    sample: &[f32],
    grad: &[f32],
    out: [&mut [f32]; 3],
    scratch: &mut Scratch,
    head: usize,
    [d, hd, h, w]: [usize; 4],
    spec: &AttnSpec,
    temp: Option<f32>,
    rope: &[f32],
) -> f64 {
    let r = spec.r;
    let (hr, wr) = (h / r, w / r);
    let n = hr * wr;
    let plane = h * w;
    let Scratch { tokens, scores, rows, pixels } = scratch;
    let [q, k, v, go, dq, dk, dv] = tokens.each_mut().map(|t| t.as_mut_slice());
    let [p, dp] = scores.each_mut().map(|t| t.as_mut_slice());
    let [inq, ink, proj] = rows.each_mut().map(|t| t.as_mut_slice());
    let mut dtemp = 0f64;
    let [out_q, out_k, out_v] = out;
    for dh in 0..r {
        for dw in 0..r {
            gather_group(sample, [d, hd, h, w], head, [r, dh, dw], pixels, [q, k, v]);
            for c in 0..hd {
                let src = &grad[c * plane..(c + 1) * plane];
                for (x, &px) in go[c * n..(c + 1) * n].iter_mut().zip(pixels.iter()) {
                    *x = src[px];
                }
            }
            let pair = |m: usize| (&rope[m * n..(m + 1) * n], &rope[(hd / 2 + m) * n..(hd / 2 + m + 1) * n]);
            if spec.rope {
                for m in 0..hd / 2 {
                    let (cos, neg_sin) = pair(m);
                    rotate_pair_forward(q, m, n, cos, neg_sin);
                    rotate_pair_forward(k, m, n, cos, neg_sin);
                }
            }
            // q becomes qs (what multiplies k in the scores), k becomes kn.
            match temp {
                Some(t) => {
                    inverse_norms(q, n, inq);
                    inverse_norms(k, n, ink);
                    scale_tokens(q, inq);
                    scale_tokens(k, ink);
                    q.iter_mut().for_each(|x| *x *= t);
                }
                None => q.iter_mut().for_each(|x| *x *= spec.scale),
            }
            // P = softmax(qs^T kn) over keys (rows are queries).
            gemm_strided(n, n, hd, q, (1, n), k, (n, 1), p, (n, 1), false, gemm::Parallelism::None);
            for row in p.chunks_exact_mut(n) {
                let m = max(row);
                row.iter_mut().for_each(|s| *s = exp(*s - m));
                let inv = 1.0 / sum(row);
                row.iter_mut().for_each(|s| *s *= inv);
            }
            // dV = P^T dO; dP = dO V^T; dS = P (dP - rowsum(P dP)) (rowsum(P dP)_i is dO_i . O_i,
            // taken from P and dP here: no second GEMM to recompute O = P V).
            gemm_strided(n, hd, n, p, (1, n), go, (1, n), dv, (1, n), false, gemm::Parallelism::None);
            gemm_strided(n, n, hd, go, (1, n), v, (n, 1), dp, (n, 1), false, gemm::Parallelism::None);
            for (dprow, prow) in dp.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                let rd = dot(prow, dprow);
                for (x, &pv) in dprow.iter_mut().zip(prow) {
                    *x = pv * (*x - rd);
                }
            }
            // d qs = dS kn; d kn = dS^T qs.
            gemm_strided(n, hd, n, dp, (n, 1), k, (1, n), dq, (1, n), false, gemm::Parallelism::None);
            gemm_strided(n, hd, n, dp, (1, n), q, (1, n), dk, (1, n), false, gemm::Parallelism::None);
            match temp {
                Some(t) => {
                    // qs = t qn: d t = sum(d qs . qn) = sum(d qs . qs) / t; d qn = t d qs.
                    dtemp += dq.iter().zip(q.iter()).map(|(&a, &b)| (a * b) as f64).sum::<f64>() / t as f64;
                    q.iter_mut().for_each(|x| *x /= t);
                    dq.iter_mut().for_each(|x| *x *= t);
                    normalize_backward(dq, q, inq, proj);
                    normalize_backward(dk, k, ink, proj);
                }
                None => dq.iter_mut().for_each(|x| *x *= spec.scale),
            }
            if spec.rope {
                // The rotation's transpose: rotate by the negative angle.
                for m in 0..hd / 2 {
                    let (cos, neg_sin) = pair(m);
                    rotate_pair(dq, m, n, cos, neg_sin);
                    rotate_pair(dk, m, n, cos, neg_sin);
                }
            }
            for (dst, src) in [(&mut *out_q, &*dq), (&mut *out_k, &*dk), (&mut *out_v, &*dv)] {
                for c in 0..hd {
                    let plane_out = &mut dst[c * plane..(c + 1) * plane];
                    for (&x, &px) in src[c * n..(c + 1) * n].iter().zip(pixels.iter()) {
                        plane_out[px] = x;
                    }
                }
            }
        }
    }
    dtemp
}

/// The rotation by +angle, from the table of cos and -sin that the backward holds.
#[inline(always)]
fn rotate_pair_forward(x: &mut [f32], m: usize, n: usize, cos: &[f32], neg_sin: &[f32]) {
    let (lo, hi) = x.split_at_mut((2 * m + 1) * n);
    let (a, b) = (&mut lo[2 * m * n..], &mut hi[..n]);
    for t in 0..n {
        let (x0, x1) = (a[t], b[t]);
        a[t] = x0 * cos[t] + x1 * neg_sin[t];
        b[t] = x1 * cos[t] - x0 * neg_sin[t];
    }
}

/// Backward of x -> x / max(||x||, eps) per token, given the normalised `xn`, the inverse
/// norms and the gradient `g` of the output (replaced by the input's gradient):
/// (g - xn (xn . g)) / ||x|| where the norm is above eps, g / eps below it.
#[inline(always)]
fn normalize_backward(g: &mut [f32], xn: &[f32], inv_norm: &[f32], proj: &mut [f32]) {
    let n = inv_norm.len();
    proj.iter_mut().for_each(|x| *x = 0.0);
    for (gc, xc) in g.chunks_exact(n).zip(xn.chunks_exact(n)) {
        for ((s, &a), &b) in proj.iter_mut().zip(gc).zip(xc) {
            *s = a.mul_add(b, *s);
        }
    }
    // Below eps (inverse norm 1e12) the map is linear: drop the projection.
    proj.iter_mut().zip(inv_norm).for_each(|(p, &inv)| {
        if inv >= 1e12 {
            *p = 0.0;
        }
    });
    for (gc, xc) in g.chunks_exact_mut(n).zip(xn.chunks_exact(n)) {
        for (((x, &xv), &p), &inv) in gc.iter_mut().zip(xc).zip(proj.iter()).zip(inv_norm) {
            *x = (*x - xv * p) * inv;
        }
    }
}

impl<B: Backend + AttentionOps + AttentionGrads, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn grouped_attention(
        qkv: FloatTensor<Self>,
        logit_scale: FloatTensor<Self>,
        heads: usize,
        r: usize,
        rope: bool,
        cosine: bool,
        scale: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward(AttnSpec);

        impl<B: Backend + AttentionGrads> Backward<B, 2> for AttentionBackward {
            /// The q, k, v map and the logit scales: the backward recomputes the rest.
            type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let grad = grads.consume::<B>(&ops.node);
                let (qkv, logit_scale) = ops.state;
                register!(B, ops.parents, B::grouped_attention_grads(qkv, logit_scale, grad, self.0), grads);
            }
        }

        let spec = AttnSpec { heads, r, rope, cosine, scale };
        let guards = [qkv.node(), logit_scale.node()];
        let (qkv, logit_scale) = (qkv.into_primitive(), logit_scale.into_primitive());
        let out = B::grouped_attention(qkv.clone(), logit_scale.clone(), heads, r, rope, cosine, scale);
        match AttentionBackward(spec).prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((qkv, logit_scale), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
