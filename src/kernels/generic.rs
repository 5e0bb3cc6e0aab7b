//! The ops of [`super`] in burn's generic tensor ops: what runs on CUDA, and the reference the
//! fused CPU kernels are tested against.

use burn::prelude::*;

use super::cpu::Gelu;
use super::{AttnSpec, LOGIT_SCALE_MAX};
use crate::precision;

/// A 1x1 convolution as one batched matmul: its backward is two matmuls, where burn's
/// generic conv backward takes a transposed convolution.
/// Its product runs in the current [`precision`].
pub fn conv1x1(x: Tensor<4>, weight: Tensor<4>, bias: Tensor<1>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let o = weight.dims()[0];
    let product = precision::input(weight.reshape([1, o, c])).matmul(precision::input(x.reshape([n, c, h * w])));
    let out = precision::output(product) + bias.reshape([1, o, 1]);
    out.reshape([n, o, h, w])
}

/// GELU, exact or tanh-approximated (burn evaluates erf and tanh per element).
pub fn gelu<const D: usize>(x: Tensor<D>, kind: Gelu) -> Tensor<D> {
    match kind {
        Gelu::Erf => burn::tensor::activation::gelu(x),
        Gelu::Tanh => burn::tensor::activation::gelu_approximate(x),
    }
}

/// [`super::AdamWUpdate`] in tensor ops, each as PyTorch's in-place op of the same name.
pub fn adamw(u: &super::AdamWUpdate, [w, g, m, v, ema]: [Tensor<1>; 5]) -> [Tensor<1>; 4] {
    let g = if u.grad_scale != 1.0 { g * u.grad_scale } else { g };
    let w = if u.weight_decay != 0.0 { w * (1.0 - u.lr * u.weight_decay) } else { w };
    // exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    let m = m.clone() + (g.clone() - m) * (1.0 - u.beta1);
    let v = v * u.beta2 + g.square() * (1.0 - u.beta2);
    let denom = v.clone().sqrt() / u.bias_correction2.sqrt() + u.eps;
    let w = w - m.clone() / denom * (u.lr / u.bias_correction1);
    // ema.mul_(decay).add_(param, alpha=1 - decay)
    let ema = ema * u.ema_decay + w.clone() * (1.0 - u.ema_decay);
    [w, m, v, ema]
}

/// `silu(gate) * up`, SwiGLU's product.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

/// `modulate(LayerNorm2d(x), shift, scale)`, the adaLN pre-norm of every U-DiT pair.
pub fn norm_modulate(x: Tensor<4>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<4> {
    modulate_2d(layer_norm_2d(x), shift, scale)
}

/// LayerNorm over the channels of every pixel, eps 1e-6, no affine weights
/// (`LayerNorm2d(affine=False)` of the reference).
pub fn layer_norm_2d(x: Tensor<4>) -> Tensor<4> {
    let (var, mean) = x.clone().var_mean_bias(1);
    (x - mean) / (var + 1e-6).sqrt()
}

/// `x * (1 + scale) + shift`, with `[N, C]` modulation broadcast over the spatial dims.
pub fn modulate_2d(x: Tensor<4>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<4> {
    let scale: Tensor<4> = scale.unsqueeze_dims(&[2, 3]);
    let shift: Tensor<4> = shift.unsqueeze_dims(&[2, 3]);
    x * (scale + 1.0) + shift
}

/// `x + gate * y`, gate `[N, C]` broadcast over the spatial dims (adaLN-Zero residual).
pub fn add_gated(x: Tensor<4>, gate: Tensor<2>, y: Tensor<4>) -> Tensor<4> {
    x + gate.unsqueeze_dims::<4>(&[2, 3]) * y
}

/// The same attention in burn's generic ops (the CUDA path, mixed precision, and the
/// reference the fused kernels are tested against).
pub fn attention(qkv: Tensor<4>, logit_scale: Option<Tensor<3>>, spec: AttnSpec) -> Tensor<4> {
    let [b, d3, h, w] = qkv.dims();
    let (r, heads) = (spec.r, spec.heads);
    let (hr, wr, d) = (h / r, w / r, d3 / 3);
    let (n, hd) = (hr * wr, d / heads);
    // 'b (slot he hd) (hr dh) (wr dw) -> (b dh dw) (slot he) (hr wr) hd': group r*dh + dw holds
    // pixels (r*hr+dh, r*wr+dw), the reference `DownSampler` rearrange.
    let qkv = qkv.reshape([b, 3 * heads, hd, hr, r, wr, r]).permute([0, 4, 6, 1, 3, 5, 2]).reshape([
        b * r * r,
        3 * heads,
        n,
        hd,
    ]);
    let part = |i: usize| qkv.clone().narrow(1, i * heads, heads);
    let (mut q, mut k, v) = (part(0), part(1), part(2));
    if spec.rope {
        let (cos, sin) = rope2d_tables(hd, n, &q.device());
        q = q.clone() * cos.clone() + swap_pairs(q) * sin.clone();
        k = k.clone() * cos + swap_pairs(k) * sin;
    }
    let scale = match (spec.cosine, logit_scale) {
        (true, Some(logit_scale)) => {
            let temp = logit_scale.clamp_max(LOGIT_SCALE_MAX).exp().reshape([1, heads, 1, 1]);
            q = l2_normalize(q) * temp;
            k = l2_normalize(k);
            1.0
        }
        _ => spec.scale as f64,
    };
    let out = super::dot_product_attention(q, k, v, scale); // [b r r, heads, n, hd]
    // 'b (dh dw) he (hr wr) hd -> b (he hd) (hr dh) (wr dw)'
    out.reshape([b, r, r, heads, hr, wr, hd]).permute([0, 3, 6, 4, 1, 5, 2]).reshape([b, d, h, w])
}

/// Channel pair (2m, 2m+1) of the last dimension -> (-(2m+1), 2m): RoPE's rotation is then
/// `x cos + swap(x) sin`.
fn swap_pairs(x: Tensor<4>) -> Tensor<4> {
    let [a, b, n, hd] = x.dims();
    let pairs = x.reshape([a, b, n, hd / 2, 2]);
    let (even, odd) = (pairs.clone().narrow(4, 0, 1), pairs.narrow(4, 1, 1));
    Tensor::cat(vec![odd.neg(), even], 4).reshape([a, b, n, hd])
}

/// `F.normalize(x, dim=-1)`: x / max(||x||, 1e-12).
pub fn l2_normalize(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().square().sum_dim(3).sqrt().clamp_min(1e-12);
    x / norm
}

/// RoPE2D angle of every (token, channel pair), `[n][hd/2]`: pair m = (2m, 2m+1) rotates
/// by x*w_{m/2} for even m and y*w_{(m-1)/2} for odd m, with (x, y) = (n mod S, n div S),
/// S = floor(sqrt(n)), w_j = 10000^(-4j/hd) (reference `precompute_freqs_cis_2d`).
pub fn rope2d_angles(hd: usize, n: usize) -> Vec<f32> {
    let side = (n as f64).sqrt() as usize;
    let mut angles = Vec::with_capacity(n * hd / 2);
    for token in 0..n {
        let (x, y) = ((token % side) as f32, (token / side) as f32);
        for m in 0..hd / 2 {
            let freq = 1.0 / 10000f32.powf((4 * (m / 2)) as f32 / hd as f32);
            angles.push(if m % 2 == 0 { x * freq } else { y * freq });
        }
    }
    angles
}

/// cos/sin of the RoPE2D angles per channel, `[1, 1, n, hd]` (both channels of a pair).
fn rope2d_tables(hd: usize, n: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let angles = rope2d_angles(hd, n);
    let table = |f: fn(f32) -> f32| {
        let v: Vec<f32> = angles.iter().flat_map(|&a| [f(a); 2]).collect();
        Tensor::<1>::from_floats(v.as_slice(), device).reshape([1, 1, n, hd])
    };
    (table(f32::cos), table(f32::sin))
}

/// cos then sin of every (channel pair, token), `[2][hd/2][n]`, as the kernels read them.
pub(crate) fn rope_table(hd: usize, n: usize) -> Vec<f32> {
    let angles = rope2d_angles(hd, n);
    let mut table = Vec::with_capacity(hd * n);
    for f in [f32::cos, f32::sin] {
        for m in 0..hd / 2 {
            table.extend((0..n).map(|t| f(angles[t * hd / 2 + m])));
        }
    }
    table
}
