//! DiT (Peebles & Xie, ICCV 2023), the baseline U-DiT is compared with: patchify, a stack of
//! adaLN-Zero transformer blocks on all tokens, unpatchify. Names follow `facebookresearch/DiT`
//! `models.py`. SiT (`willisma/SiT`) is this network; SiT-LLaMA (VisionLLaMA `sit/models.py`,
//! [`SiTLLaMA`]) swaps each block for a [`LLaMABlock`]: 2D RoPE attention and a SwiGLU FFN.

#![allow(non_snake_case)]

use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::layers::{AdaLnModulation, Conv2d, Init, LabelEmbedder, Linear, TimestepEmbedder, Trace};
use super::{Common, default_cfg_channels, defaults, flag};
use crate::kernels::{self, AttnSpec, Gelu};

/// Constructor arguments of the reference `DiT`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiTConfig {
    #[serde(default = "defaults::input_size")]
    pub input_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "defaults::class_dropout_prob")]
    pub class_dropout_prob: f64,
    #[serde(default = "defaults::num_classes")]
    pub num_classes: usize,
    #[serde(default = "defaults::yes", deserialize_with = "flag::de")]
    pub learn_sigma: bool,
    /// Channels classifier-free guidance mixes; see `UDiTConfig::cfg_channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_channels: Option<usize>,
}

fn d_patch() -> usize {
    2
}
fn d_depth() -> usize {
    28
}

impl DiTConfig {
    /// `DiT-{S,B,L,XL}/{2,4,8}`.
    pub fn preset(name: &str) -> Option<Self> {
        let (size, patch) = name.strip_prefix("DiT-")?.split_once('/')?;
        let (hidden_size, depth, num_heads) = match size {
            "S" => (384, 12, 6),
            "B" => (768, 12, 12),
            "L" => (1024, 24, 16),
            "XL" => (1152, 28, 16),
            _ => return None,
        };
        let patch_size = match patch {
            "2" => 2,
            "4" => 4,
            "8" => 8,
            _ => return None,
        };
        let defaults: Self = serde_json::from_str("{}").expect("defaults parse");
        Some(Self { hidden_size, depth, num_heads, patch_size, ..defaults })
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma { 2 * self.in_channels } else { self.in_channels }
    }

    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        Common {
            hidden: self.hidden_size,
            heads: self.num_heads,
            in_channels: self.in_channels,
            classes: self.num_classes,
            class_dropout_prob: self.class_dropout_prob,
            cfg_channels: self.cfg_channels,
            input_size: self.input_size,
            depth: self.depth,
            mlp_ratio: self.mlp_ratio,
        }
        .validate()?;
        anyhow::ensure!(
            self.patch_size > 0 && self.input_size % self.patch_size == 0 && self.input_size > 0,
            "input_size {} is not a positive multiple of patch_size {}",
            self.input_size,
            self.patch_size
        );
        anyhow::ensure!(
            self.hidden_size % 4 == 0,
            "the 2-D sin-cos position embedding needs hidden_size divisible by 4"
        );
        Ok(())
    }

    pub fn guided_channels(&self) -> usize {
        default_cfg_channels(self.cfg_channels, self.in_channels)
    }
}

/// `PatchEmbed`: a p x p conv with stride p, each patch one token.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl PatchEmbed {
    /// `(N, C, H, W) -> (N, D, H/p, W/p)`: the tokens of row-major patch order as a map.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.proj.forward(x)
    }
}

/// Multi-head self-attention over all tokens (timm `Attention`).
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        token_attention(&self.qkv, &self.proj, self.heads, false, x)
    }
}

/// Attention over the tokens of the map `x` (N, D, g, g), q, k, v from `qkv` (channels
/// ordered q, k, v, then heads, as timm's), RoPE2D on q and k when `rope`, scaled dot product,
/// then `proj`: the attention op of `kernels` with the whole grid as one group (on the CPU
/// the fused kernel with its own backward, which recomputes the scores instead of keeping
/// T x T).
fn token_attention(qkv: &Linear, proj: &Linear, heads: usize, rope: bool, x: Tensor<4>) -> Tensor<4> {
    let hd = x.dims()[1] / heads;
    let spec = AttnSpec { heads, r: 1, rope, cosine: false, scale: (hd as f32).powf(-0.5) };
    let qkv = qkv.forward_map(x); // (N, 3D, g, g)
    proj.forward_map(kernels::attention(qkv, None, spec)) // (N, D, g, g)
}

/// The ViT MLP (timm `Mlp`): fc1, tanh GELU, fc2.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.fc2.forward_map(kernels::gelu(self.fc1.forward_map(x), Gelu::Tanh))
    }
}

/// `DiTBlock`: attention and MLP with adaLN-Zero conditioning (DiT Fig. 3): every residual
/// branch is gated by a vector regressed from c, zero at initialisation, so each block
/// starts as the identity.
#[derive(Module, Debug)]
pub struct DiTBlock {
    pub attn: Attention,
    pub mlp: Mlp,
    pub adaLN_modulation: AdaLnModulation,
}

impl DiTBlock {
    fn new(d: usize, heads: usize, mlp_hidden: usize, device: &Device) -> Self {
        let lin = |i, o| Linear::new(i, o, true, Init::Xavier, device);
        Self {
            attn: Attention { qkv: lin(d, 3 * d), proj: lin(d, d), heads },
            mlp: Mlp { fc1: lin(d, mlp_hidden), fc2: lin(mlp_hidden, d) },
            adaLN_modulation: AdaLnModulation::new(d, 6, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, c: Tensor<2>) -> Tensor<4> {
        adaln_zero(x, c, &self.adaLN_modulation, |h| self.attn.forward(h), |h| self.mlp.forward(h))
    }
}

/// adaLN-Zero around an attention and an FFN (DiT Fig. 3), the residual form of DiT's and
/// LLaMA's blocks: x + gate * attn(modulate(norm(x))), then the same with the FFN; norm is
/// LayerNorm over each token's channels (eps 1e-6, no affine).
fn adaln_zero(
    x: Tensor<4>,
    c: Tensor<2>,
    modulation: &AdaLnModulation,
    attn: impl Fn(Tensor<4>) -> Tensor<4>,
    mlp: impl Fn(Tensor<4>) -> Tensor<4>,
) -> Tensor<4> {
    let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = modulation.forward(c);
    let x = kernels::add_gated(x.clone(), gate_msa, attn(kernels::norm_modulate(x, shift_msa, scale_msa)));
    kernels::add_gated(x.clone(), gate_mlp, mlp(kernels::norm_modulate(x, shift_mlp, scale_mlp)))
}

/// `FinalLayer`: LayerNorm modulated by c (shift and scale), then a linear map of every
/// token to its p x p patch of output channels.
#[derive(Module, Debug)]
pub struct FinalLayer {
    pub linear: Linear,
    pub adaLN_modulation: AdaLnModulation,
}

impl FinalLayer {
    /// `(N, D, g, g) -> (N, p p C, g, g)`.
    pub fn forward(&self, x: Tensor<4>, c: Tensor<2>) -> Tensor<4> {
        let [shift, scale] = self.adaLN_modulation.forward(c);
        self.linear.forward_map(kernels::norm_modulate(x, shift, scale))
    }
}

/// The DiT denoiser. Its tokens live channel-major, as a `(N, D, g, g)` map of the patch
/// grid (the reference's `(N, T, D)` transposed): every linear layer is then a 1x1
/// convolution and every op the one U-DiT's blocks use, with no layout copies.
#[derive(Module, Debug)]
pub struct DiT {
    pub x_embedder: PatchEmbed,
    pub t_embedder: TimestepEmbedder,
    pub y_embedder: LabelEmbedder,
    /// Fixed 2-D sin-cos embedding `[1, T, D]`; stored in checkpoints, never trained.
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<DiTBlock>,
    pub final_layer: FinalLayer,
    pub patch_size: usize,
    pub out_channels: usize,
}

impl DiT {
    pub fn new(cfg: &DiTConfig, device: &Device) -> Self {
        let (d, p, grid) = (cfg.hidden_size, cfg.patch_size, cfg.grid());
        let mlp_hidden = (d as f64 * cfg.mlp_ratio) as usize;
        let pos_embed = Tensor::<1>::from_floats(sincos_pos_embed_2d(d, grid).as_slice(), device);
        // The blocks draw their random weights first, as they always have (same seed, same model).
        let blocks = (0..cfg.depth).map(|_| DiTBlock::new(d, cfg.num_heads, mlp_hidden, device)).collect();
        Self {
            x_embedder: PatchEmbed {
                proj: Conv2d::new(cfg.in_channels, d, p, true, Init::Xavier, device).with_stride(p),
            },
            t_embedder: TimestepEmbedder::new(d, device),
            y_embedder: LabelEmbedder::new(cfg.label_rows(), d, device),
            pos_embed: Param::from_tensor(pos_embed.reshape([1, grid * grid, d])).set_require_grad(false),
            blocks,
            final_layer: FinalLayer {
                linear: Linear::new(d, p * p * cfg.out_channels(), true, Init::Zero, device),
                adaLN_modulation: AdaLnModulation::new(d, 2, device),
            },
            patch_size: p,
            out_channels: cfg.out_channels(),
        }
    }

    /// Denoiser output for latents `x`, timesteps `t` and labels `y`, as the reference
    /// `DiT.forward`; T = g g tokens of width D, g = H / p. `trace` taps the embedders and
    /// blocks (in the reference's `(N, T, D)`).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>, trace: &mut Trace) -> Tensor<4> {
        let x = self.x_embedder.forward(x) + token_map(self.pos_embed.val()); // (N, D, g, g)
        let c = trace.tap("t_embedder", self.t_embedder.forward(t)) + self.y_embedder.forward(y); // (N, D)
        let x = run_blocks(&self.blocks, x, &c, trace, DiTBlock::forward); // (N, D, g, g)
        let x = self.final_layer.forward(x, c); // (N, p p out_channels, g, g)
        unpatchify(x, self.patch_size, self.out_channels) // (N, out_channels, H, W)
    }
}

/// The blocks in turn, each one's output tapped as `blocks.i` in the token layout.
fn run_blocks<Block>(
    blocks: &[Block],
    x: Tensor<4>,
    c: &Tensor<2>,
    trace: &mut Trace,
    forward: impl Fn(&Block, Tensor<4>, Tensor<2>) -> Tensor<4>,
) -> Tensor<4> {
    blocks
        .iter()
        .enumerate()
        .fold(x, |x, (i, block)| trace.tap_as(format!("blocks.{i}"), forward(block, x, c.clone()), tokens))
}

/// `(N, T, D) -> (N, D, g, g)`, T = g g.
fn token_map(x: Tensor<3>) -> Tensor<4> {
    let [n, t, d] = x.dims();
    let g = (t as f64).sqrt() as usize;
    x.swap_dims(1, 2).reshape([n, d, g, g])
}

/// `(N, D, g, g) -> (N, T, D)`, the reference's layout.
fn tokens(x: Tensor<4>) -> Tensor<3> {
    let [n, d, gh, gw] = x.dims();
    x.reshape([n, d, gh * gw]).swap_dims(1, 2)
}

/// `(N, p p C, g, g) -> (N, C, g p, g p)`: each token's p x p patch (channels ordered
/// (row, column, channel), as the reference's `unpatchify`) back in its place.
fn unpatchify(x: Tensor<4>, p: usize, c: usize) -> Tensor<4> {
    let [n, _, gh, gw] = x.dims();
    x.reshape([n, p, p, c, gh, gw]).permute([0, 3, 4, 1, 5, 2]).reshape([n, c, gh * p, gw * p])
}

/// VisionLLaMA's `RAttention`: timm's attention with 2D RoPE on q and k (the token grid's
/// column and row, U-DiT's RoPE2D) and the scaled dot product.
#[derive(Module, Debug)]
pub struct RAttention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl RAttention {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        token_attention(&self.qkv, &self.proj, self.heads, true, x)
    }
}

/// `find_multiple(int(2 * 4D / 3), 256)`: the SwiGLU hidden width of LLaMA (S 1024, B 2048,
/// L 2816, XL 3072).
pub fn swiglu_hidden(d: usize) -> usize {
    (2 * 4 * d / 3).div_ceil(256) * 256
}

/// VisionLLaMA's `LLaMAMLP`: `c_proj(silu(c_fc1 x) * c_fc2 x)`, no biases.
#[derive(Module, Debug)]
pub struct LLaMAMLP {
    pub c_fc1: Linear,
    pub c_fc2: Linear,
    pub c_proj: Linear,
}

impl LLaMAMLP {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (gate, up) = (self.c_fc1.forward_map(x.clone()), self.c_fc2.forward_map(x));
        self.c_proj.forward_map(kernels::swiglu(gate, up))
    }
}

/// `LLaMABlock`: DiT's adaLN-Zero block with [`RAttention`] and [`LLaMAMLP`].
#[derive(Module, Debug)]
pub struct LLaMABlock {
    pub attn: RAttention,
    pub mlp: LLaMAMLP,
    pub adaLN_modulation: AdaLnModulation,
}

impl LLaMABlock {
    fn new(d: usize, heads: usize, device: &Device) -> Self {
        let lin = |i, o, bias| Linear::new(i, o, bias, Init::Xavier, device);
        let h = swiglu_hidden(d);
        Self {
            attn: RAttention { qkv: lin(d, 3 * d, true), proj: lin(d, d, true), heads },
            mlp: LLaMAMLP { c_fc1: lin(d, h, false), c_fc2: lin(d, h, false), c_proj: lin(h, d, false) },
            adaLN_modulation: AdaLnModulation::new(d, 6, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, c: Tensor<2>) -> Tensor<4> {
        adaln_zero(x, c, &self.adaLN_modulation, |h| self.attn.forward(h), |h| self.mlp.forward(h))
    }
}

/// SiT-LLaMA (VisionLLaMA `SiTLLaMA`): SiT with [`LLaMABlock`]s. No absolute position
/// embedding is added (RoPE places the tokens), though `pos_embed` stays in the state dict.
#[derive(Module, Debug)]
pub struct SiTLLaMA {
    pub x_embedder: PatchEmbed,
    pub t_embedder: TimestepEmbedder,
    pub y_embedder: LabelEmbedder,
    /// The reference keeps DiT's fixed sin-cos table, unused, in its checkpoints.
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<LLaMABlock>,
    pub final_layer: FinalLayer,
    pub patch_size: usize,
    pub out_channels: usize,
}

impl SiTLLaMA {
    pub fn new(cfg: &DiTConfig, device: &Device) -> Self {
        let dit = DiT::new(&DiTConfig { depth: 0, ..cfg.clone() }, device);
        let blocks = (0..cfg.depth).map(|_| LLaMABlock::new(cfg.hidden_size, cfg.num_heads, device)).collect();
        Self {
            x_embedder: dit.x_embedder,
            t_embedder: dit.t_embedder,
            y_embedder: dit.y_embedder,
            pos_embed: dit.pos_embed,
            blocks,
            final_layer: dit.final_layer,
            patch_size: dit.patch_size,
            out_channels: dit.out_channels,
        }
    }

    /// As the reference `SiTLLaMA.forward` before its `learn_sigma` chunk (which
    /// `Denoiser::forward` takes).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>, trace: &mut Trace) -> Tensor<4> {
        let x = self.x_embedder.forward(x); // (N, D, g, g), no position embedding
        let c = trace.tap("t_embedder", self.t_embedder.forward(t)) + self.y_embedder.forward(y); // (N, D)
        let x = run_blocks(&self.blocks, x, &c, trace, LLaMABlock::forward); // (N, D, g, g)
        let x = self.final_layer.forward(x, c); // (N, p p out_channels, g, g)
        unpatchify(x, self.patch_size, self.out_channels) // (N, out_channels, H, W)
    }
}

/// The fixed 2-D sin-cos position embedding of MAE/DiT, `[grid*grid * dim]` row-major:
/// first half encodes the column, second half the row of token n = row*grid + col.
pub fn sincos_pos_embed_2d(dim: usize, grid: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            for pos in [col as f64, row as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}
