//! The fused ops of a U-DiT or DiT-family step (and the optimizer's update), each deciding
//! here, in one place, which implementation runs: on the CPU a fused kernel with its own
//! backward (a burn backend extension, so that autodiff keeps only what the backward needs),
//! elsewhere burn's generic ops ([`generic`], also callable by name so that tests compare the
//! two). Model code calls these and never
//! branches on the backend.

/// Registers the `computed` gradients of the tracked `parents` of a backward step (a macro:
/// the node type of burn's autodiff graph is not public). Defined before the kernel
/// modules, which use it.
#[cfg(not(feature = "cuda"))]
macro_rules! register {
    ($B:ty, $parents:expr, $computed:expr, $grads:expr) => {
        for (parent, g) in $parents.into_iter().zip($computed) {
            if let Some(node) = parent {
                $grads.register::<$B>(node.id, g);
            }
        }
    };
}

#[cfg(not(feature = "cuda"))]
pub mod adamw;
#[cfg(not(feature = "cuda"))]
pub mod attention;
#[cfg(not(feature = "cuda"))]
pub mod conv1x1;
// A CUDA build runs none of the CPU kernels; `Gelu` and `applies` are all it uses here.
#[cfg_attr(feature = "cuda", allow(dead_code))]
pub mod cpu;
#[cfg(not(feature = "cuda"))]
pub mod depthwise;
#[cfg(not(feature = "cuda"))]
mod flex;
pub mod generic;
#[cfg(not(feature = "cuda"))]
pub mod pointwise;

use burn::prelude::*;

pub use cpu::Gelu;

/// Which of the two implementations runs: the fused CPU kernel (f32 only), or burn's generic
/// ops (CUDA, and mixed precision, [`crate::precision`]).
macro_rules! fused_or_generic {
    ($fused:expr, $generic:expr) => {{
        #[cfg(not(feature = "cuda"))]
        {
            if crate::precision::current() == crate::precision::Precision::F32 { $fused } else { $generic }
        }
        #[cfg(feature = "cuda")]
        {
            $generic
        }
    }};
}

/// A 1x1 convolution `[B, C, H, W]` x `[O, C, 1, 1]` + `[O]` (projections of the map).
pub fn conv1x1(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    fused_or_generic!(conv1x1::conv1x1(x, weight, bias), generic::conv1x1(x, weight, bias))
}

/// GELU, exact (the U-DiT FFN) or tanh-approximated (DiT's MLP, U-DiT's `basic` FFN).
pub fn gelu<const D: usize>(x: Tensor<D>, kind: Gelu) -> Tensor<D> {
    fused_or_generic!(pointwise::gelu(x, kind), generic::gelu(x, kind))
}

/// `silu(gate) * up` (SwiGLU's product, LLaMA's FFN).
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    fused_or_generic!(pointwise::swiglu(gate, up), generic::swiglu(gate, up))
}

/// `LayerNorm2d(x) * (1 + scale) + shift` with `[B, C]` shift and scale: adaLN's pre-norm.
pub fn norm_modulate(x: Tensor<4>, shift: Tensor<2>, scale: Tensor<2>) -> Tensor<4> {
    fused_or_generic!(pointwise::norm_modulate(x, shift, scale), generic::norm_modulate(x, shift, scale))
}

/// `x + gate * y` with a `[B, C]` gate: adaLN-Zero's gated residual.
pub fn add_gated(x: Tensor<4>, gate: Tensor<2>, y: Tensor<4>) -> Tensor<4> {
    fused_or_generic!(pointwise::add_gated(x, gate, y), generic::add_gated(x, gate, y))
}

/// Softmax attention of `[B, heads, N, hd]` queries, keys and values with logits
/// `scale * q.k`, through burn's fused attention (flash attention where the backend has it),
/// in the current [`crate::precision`] (f32 out).
pub fn dot_product_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    use crate::precision::{input, output};
    let options = burn::tensor::ops::AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
    output(burn::tensor::module::attention(input(q), input(k), input(v), None, None, options))
}

/// One AdamW step (PyTorch's `torch.optim.AdamW`, f32) and the EMA update of a parameter:
/// the gradient times `grad_scale`, weight decay, the moments, the bias-corrected step, then
/// `ema * ema_decay + w * (1 - ema_decay)`.
#[derive(Clone, Copy, Debug)]
pub struct AdamWUpdate {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1 - beta1^t and 1 - beta2^t at step t.
    pub bias_correction1: f64,
    pub bias_correction2: f64,
    pub grad_scale: f64,
    pub ema_decay: f64,
}

/// [`AdamWUpdate`] of flat `[w, grad, exp_avg, exp_avg_sq, ema]` -> the new
/// `[w, exp_avg, exp_avg_sq, ema]`: one pass on the CPU.
pub fn adamw(update: &AdamWUpdate, state: [Tensor<1>; 5]) -> [Tensor<1>; 4] {
    fused_or_generic!(adamw::adamw(update, state), generic::adamw(update, state))
}

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
    fused_or_generic!(
        {
            let logit_scale = logit_scale.unwrap_or_else(|| Tensor::zeros([spec.heads, 1, 1], &qkv.device()));
            attention::grouped_attention(qkv, logit_scale, spec)
        },
        generic::attention(qkv, logit_scale, spec)
    )
}
