//! The attention of paper Sec. 3.2 on downsampled tokens, with the cosine attention and
//! RoPE2D of U-DiT's improvements (reference `DownSampleAttn`, `DownSampler`).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};

use super::UDiTConfig;
use crate::model::cpu;
use crate::model::layers::{Conv2d, Init, Linear};

/// The attention of paper Sec. 3.2: a depthwise conv, then the map split into r*r spatially
/// downsampled groups (every r-th pixel), multi-head attention inside each group, the groups
/// merged back and a 1x1 `to_out`. Attention inside groups of n/r^2 tokens costs 1/r^2 of
/// attention over all n; the conv filters the map before it is subsampled.
#[derive(Module, Debug)]
pub struct DownSampleAttn {
    pub to_qkv: Linear,
    pub to_out: Conv2d,
    /// Per-head log temperature of cosine attention, `[heads, 1, 1]`.
    pub logit_scale: Option<Param<Tensor<3>>>,
    pub downsampler: DownSampler,
    pub heads: usize,
    pub down_factor: usize,
    pub rope: bool,
}

/// The KxK depthwise conv before the token split (`downsampler` "dwconvK"), plus its input
/// when `down_shortcut` is set.
#[derive(Module, Debug)]
pub struct DownSampler {
    pub layer: Conv2d,
    pub shortcut: bool,
}

impl DownSampler {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.layer.forward(x.clone());
        if self.shortcut { y + x } else { y }
    }
}

/// Largest temperature of cosine attention, ln(100) as the reference writes it.
const LOGIT_SCALE_MAX: f64 = 4.6052;

impl DownSampleAttn {
    pub(super) fn new(dim: usize, r: usize, cfg: &UDiTConfig, device: &Device) -> Self {
        let heads = cfg.num_heads;
        let logit_scale = cfg.attn_type.map(|_| Param::from_tensor(Tensor::full([heads, 1, 1], 10f32.ln(), device)));
        Self {
            to_qkv: Linear::new(dim, 3 * dim, true, Init::Xavier, device),
            to_out: Conv2d::new(dim, dim, 1, true, Init::Xavier, device),
            logit_scale,
            downsampler: DownSampler {
                layer: Conv2d::depthwise(dim, cfg.downsampler_kernel().expect("validated"), Init::Xavier, device),
                shortcut: cfg.down_shortcut,
            },
            heads,
            down_factor: r,
            rope: cfg.posemb_type.is_some(),
        }
    }

    /// `(B, D, H, W) -> (B, D, H, W)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.downsampler.forward(x); // (B, D, H, W)
        let out = if cpu::applies(&x) { self.fused_cpu(x) } else { self.grouped(x) }; // (B, D, H, W)
        self.to_out.forward(out)
    }

    /// Inference on the CPU: `to_qkv`, then split, attention and merge in one fused kernel.
    fn fused_cpu(&self, x: Tensor<4>) -> Tensor<4> {
        let hd = x.dims()[1] / self.heads;
        let qkv = pointwise(x, self.to_qkv.weight.val(), self.to_qkv.bias.as_ref().map(|b| b.val()));
        let temperature =
            self.temperature().map(|t| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32"));
        let (heads, r, rope) = (self.heads, self.down_factor, self.rope);
        cpu::GroupedAttention { heads, r, rope, temperature, scale: (hd as f32).powf(-0.5) }.forward(qkv)
    }

    /// The same with burn ops (training, GPU): split into groups, attention in each, merge.
    fn grouped(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, d, h, w] = x.dims();
        let (r, heads) = (self.down_factor, self.heads);
        let (hr, wr, hd) = (h / r, w / r, d / heads);
        let n = hr * wr;
        // With RoPE the projection also yields q and k with their channel pairs swapped,
        // (a, b) -> (-b, a), so that the rotation is two products.
        let (weight, bias) = self.qkv_weights();
        let slots = weight.dims()[0] / hd;
        let qkv = pointwise(x, weight, Some(bias)); // (B, slots hd, H, W)
        // 'b (slot hd) (hr dh) (wr dw) -> (b dh dw) slot (hr wr) hd': group p = r*dh + dw
        // holds pixels (r*hr+dh, r*wr+dw), the reference `DownSampler` rearrange.
        let qkv =
            qkv.reshape([b, slots, hd, hr, r, wr, r]).permute([0, 4, 6, 1, 3, 5, 2]).reshape([b * r * r, slots, n, hd]);
        let part = |i: usize| qkv.clone().narrow(1, i * heads, heads);
        let (mut q, mut k, v) = (part(0), part(1), part(2)); // (B r r, heads, n, hd)
        if self.rope {
            let (cos, sin) = rope2d_tables(hd, n, &q.device());
            q = q * cos.clone() + part(3) * sin.clone();
            k = k * cos + part(4) * sin;
        }
        let scale = match self.temperature() {
            // Cosine similarity times the temperature, folded into q.
            Some(temperature) => {
                q = l2_normalize(q) * temperature.reshape([1, heads, 1, 1]);
                k = l2_normalize(k);
                1.0
            }
            None => (hd as f64).powf(-0.5),
        };
        let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
        let out = attention(q, k, v, None, None, options); // (B r r, heads, n, hd)
        // 'b (dh dw) he (hr wr) d -> b (he d) (hr dh) (wr dw)'
        out.reshape([b, r, r, heads, hr, wr, hd]).permute([0, 3, 6, 4, 1, 5, 2]).reshape([b, d, h, w])
    }

    /// exp(min(logit_scale, ln 100)) per head, `[heads, 1, 1]`, for cosine attention.
    fn temperature(&self) -> Option<Tensor<3>> {
        self.logit_scale.as_ref().map(|s| s.val().clamp_max(LOGIT_SCALE_MAX).exp())
    }

    /// `to_qkv` rows as [q; k; v], plus [swap(q); swap(k)] when RoPE is on, where swap maps
    /// channel pair (2m, 2m+1) of every head to (-(2m+1), 2m).
    fn qkv_weights(&self) -> (Tensor<2>, Tensor<1>) {
        let w = self.to_qkv.weight.val();
        let b = self.to_qkv.bias.as_ref().map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([w.dims()[0]], &w.device()));
        if !self.rope {
            return (w, b);
        }
        let [rows, d] = w.dims();
        let qk = rows * 2 / 3;
        let swap = |t: Tensor<2>, cols: usize| {
            let pairs = t.narrow(0, 0, qk).reshape([qk / 2, 2, cols]);
            let (a, b) = (pairs.clone().narrow(1, 0, 1), pairs.narrow(1, 1, 1));
            Tensor::cat(vec![b.neg(), a], 1).reshape([qk, cols])
        };
        let w_swapped = swap(w.clone(), d);
        let b_swapped = swap(b.clone().reshape([rows, 1]), 1).reshape([qk]);
        (Tensor::cat(vec![w, w_swapped], 0), Tensor::cat(vec![b, b_swapped], 0))
    }
}

/// A token-wise linear map `[out, in]` as a 1x1 conv on the whole map, before the split into
/// groups: one call instead of one matmul per group.
fn pointwise(x: Tensor<4>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let [o, i] = weight.dims();
    conv2d(x, weight.reshape([o, i, 1, 1]), bias, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
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
