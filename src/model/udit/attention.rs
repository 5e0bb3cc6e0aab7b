//! The attention of paper Sec. 3.2 on downsampled tokens, with the cosine attention and
//! RoPE2D of U-DiT's improvements (reference `DownSampleAttn`, `DownSampler`).

use burn::module::{Module, Param};
use burn::prelude::*;

use super::UDiTConfig;
use crate::kernels::{self, AttnSpec};
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
        let qkv = self.to_qkv.forward_map(x); // (B, 3D, H, W)
        let out = kernels::attention(qkv, self.logit_scale.as_ref().map(|s| s.val()), self.spec()); // (B, D, H, W)
        self.to_out.forward(out)
    }

    /// Heads, downsampling, RoPE2D, and cosine attention or the dot product scaled by
    /// 1/sqrt(head dim).
    fn spec(&self) -> AttnSpec {
        let hd = self.to_out.weight.dims()[0] / self.heads;
        AttnSpec {
            heads: self.heads,
            r: self.down_factor,
            rope: self.rope,
            cosine: self.logit_scale.is_some(),
            scale: (hd as f32).powf(-0.5),
        }
    }
}
