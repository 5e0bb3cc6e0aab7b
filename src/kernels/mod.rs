//! The fused ops of a U-DiT step, each deciding here, in one place, which implementation
//! runs: on the CPU a fused kernel with its own backward (a burn backend extension, so that
//! autodiff keeps only what the backward needs), elsewhere burn's generic ops ([`generic`],
//! also callable by name so that tests compare the two). Model code calls these and never
//! branches on the backend.

#[cfg(not(feature = "cuda"))]
pub mod attention;
pub mod generic;

use burn::prelude::*;

/// Largest log temperature of cosine attention, ln(100) as the reference writes it.
pub const LOGIT_SCALE_MAX: f32 = 4.6052;

/// The shape of the attention: heads, the token-downsampling factor r (r*r groups of
/// pixels (r*h+dh, r*w+dw)), RoPE2D on q and k, and cosine similarity times
/// exp(min(logit_scale, ln 100)) or, without it, the dot product times `scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnSpec {
    pub heads: usize,
    pub r: usize,
    pub rope: bool,
    pub cosine: bool,
    pub scale: f32,
}

/// U-DiT's downsampled-token attention on a `[B, 3D, H, W]` map of q, k, v channels ->
/// `[B, D, H, W]`; `logit_scale` (`[heads, 1, 1]`) for cosine attention.
pub fn attention(qkv: Tensor<4>, logit_scale: Option<Tensor<3>>, spec: AttnSpec) -> Tensor<4> {
    #[cfg(not(feature = "cuda"))]
    {
        let logit_scale = logit_scale.unwrap_or_else(|| Tensor::zeros([spec.heads, 1, 1], &qkv.device()));
        attention::grouped_attention(qkv, logit_scale, spec)
    }
    #[cfg(feature = "cuda")]
    generic::attention(qkv, logit_scale, spec)
}
