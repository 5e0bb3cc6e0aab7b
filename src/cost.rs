//! Analytic cost of a denoiser: parameter counts and multiply-accumulates of one forward
//! pass at batch 1, the way the papers count them ("GFLOPs" in their tables are GMACs of the
//! model with FFN branches merged; U-DiT Tables 2 and 8).
//!
//! U-DiT follows `torchprofile.profile_macs`, which the reference code imports: MACs of
//! convs, linears and matmuls, plus one per output element of every elementwise product
//! with an activation (adaLN modulate and gate, RoPE rotation, attention logit scaling).
//! DiT follows the DiT paper, which counts convs, linears and matmuls only. With these,
//! U-DiT-S/B/L give 6.04/22.22/85.00 GMACs and DiT-XL/2 118.6, as published.

use crate::model::udit::{FfnType, UDiTConfig};
use crate::model::{DiTConfig, ModelConfig};

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Cost {
    /// Trainable parameters in the training form (re-parametrization branches separate).
    pub params: u64,
    /// Every weight of the inference model, FFN branches merged (what the paper reports).
    pub params_merged: u64,
    /// Multiply-accumulates of one forward pass at batch 1, merged form.
    pub macs: u64,
}

impl Cost {
    pub fn of(cfg: &ModelConfig) -> Self {
        match cfg {
            ModelConfig::UDiT(c) => udit(c),
            ModelConfig::DiT(c) | ModelConfig::SiT(c) => dit(c, false),
            ModelConfig::SiTLLaMA(c) => dit(c, true),
        }
    }
}

/// Running totals: parameters and MACs of a layer applied at `pixels` positions.
#[derive(Default)]
struct Tally {
    params: u64,
    macs: u64,
}

impl Tally {
    /// A conv (or linear, k = 1) from `cin` to `cout` channels, applied at `pixels` positions.
    fn conv(&mut self, cin: usize, cout: usize, k: usize, groups: usize, bias: bool, pixels: usize) {
        let weights = (cout * (cin / groups) * k * k) as u64;
        self.params += weights + if bias { cout as u64 } else { 0 };
        self.macs += weights * pixels as u64;
    }
}

/// Timestep MLP (256 -> D -> D) and label table for width `d`.
fn conditioning(t: &mut Tally, d: usize, label_rows: usize) {
    t.conv(256, d, 1, 1, true, 1);
    t.conv(d, d, 1, 1, true, 1);
    t.params += (label_rows * d) as u64;
}

fn udit(c: &UDiTConfig) -> Cost {
    let count = |merged: bool| {
        let mut t = Tally::default();
        let ch = c.hidden_size;
        let k = c.downsampler_kernel().unwrap_or(5);
        let px = |side: usize| side * side;
        let s = c.input_size;
        t.conv(c.in_channels, ch, 3, 1, true, px(s));
        for d in [ch, 2 * ch, 4 * ch] {
            conditioning(&mut t, d, c.label_rows());
        }
        for (i, (dim, side, cond)) in c.stages().into_iter().enumerate() {
            for _ in 0..c.depth[i] * 2 {
                udit_pair(&mut t, c, dim, side, cond, k, c.down_factor.stage(i), merged);
            }
        }
        t.conv(ch, ch / 2, 3, 1, false, px(s));
        t.conv(2 * ch, ch, 3, 1, false, px(s / 2));
        t.conv(4 * ch, 8 * ch, 3, 1, false, px(s / 4));
        t.conv(4 * ch, 2 * ch, 1, 1, true, px(s / 2));
        t.conv(2 * ch, 4 * ch, 3, 1, false, px(s / 2));
        t.conv(2 * ch, 2 * ch, 1, 1, true, px(s));
        t.conv(2 * ch, 2 * ch, 3, 1, true, px(s));
        t.conv(2 * ch, 4 * ch, 1, 1, true, 1);
        t.conv(2 * ch, c.out_channels(), 3, 1, true, px(s));
        t.macs += (2 * ch * px(s)) as u64; // final modulate
        t
    };
    let (train, merged) = (count(false), count(true));
    Cost { params: train.params, params_merged: merged.params, macs: merged.macs }
}

/// One attention + FFN pair with its adaLN at width `dim` on a `side`x`side` map.
#[allow(clippy::too_many_arguments)]
fn udit_pair(t: &mut Tally, c: &UDiTConfig, dim: usize, side: usize, cond: usize, k: usize, r: usize, merged: bool) {
    let n = side * side;
    // Attention: depthwise downsampler, qkv, scores and weighted sum inside each of the
    // r*r groups of n/r^2 tokens, output projection.
    t.conv(dim, dim, k, dim, true, n);
    t.conv(dim, 3 * dim, 1, 1, true, n);
    t.macs += 2 * (n * (n / (r * r)) * dim) as u64;
    t.conv(dim, dim, 1, 1, true, n);
    if c.attn_type.is_some() {
        t.params += c.num_heads as u64;
    }
    let h = c.ffn_hidden(dim);
    match (c.ffn_type, c.rep && !merged) {
        (FfnType::Basic, _) => {
            t.conv(dim, h, 1, 1, true, n);
            t.conv(h, dim, 1, 1, true, n);
        }
        (FfnType::Rep, true) => {
            t.conv(dim, h / 2, 1, 1, true, n);
            t.conv(h / 2, h, 1, 1, true, n);
            for kk in [5, 3, 1] {
                t.conv(h, h, kk, h, true, n);
            }
            t.conv(h, h / 2, 1, 1, true, n);
            t.conv(h / 2, dim, 1, 1, true, n);
        }
        (FfnType::Rep, false) => {
            t.conv(dim, h, 1, 1, true, n);
            t.conv(h, h, 5, h, true, n);
            t.conv(h, dim, 1, 1, true, n);
        }
    }
    t.conv(cond, 6 * dim, 1, 1, true, 1);
    // Elementwise products: modulate and gate for attention and FFN, RoPE on q and k
    // (complex products, one per pair), and the logits times their scale.
    let rope = usize::from(c.posemb_type.is_some());
    t.macs += ((4 + rope) * dim * n + c.num_heads * n * (n / (r * r))) as u64;
}

/// DiT and SiT; with `llama`, SiT-LLaMA's blocks: the SwiGLU FFN (three bias-free linears of
/// width `swiglu_hidden`; its gate's product is elementwise, not counted, as DiT's GELU).
fn dit(c: &DiTConfig, llama: bool) -> Cost {
    let mut t = Tally::default();
    let d = c.hidden_size;
    let n = c.grid() * c.grid();
    let h = (d as f64 * c.mlp_ratio) as usize;
    t.conv(c.in_channels, d, c.patch_size, 1, true, n);
    conditioning(&mut t, d, c.label_rows());
    let fixed_pos_embed = (n * d) as u64;
    for _ in 0..c.depth {
        t.conv(d, 3 * d, 1, 1, true, n);
        t.macs += 2 * (n * n * d) as u64;
        t.conv(d, d, 1, 1, true, n);
        if llama {
            let h = crate::model::dit::swiglu_hidden(d);
            t.conv(d, h, 1, 1, false, n);
            t.conv(d, h, 1, 1, false, n);
            t.conv(h, d, 1, 1, false, n);
        } else {
            t.conv(d, h, 1, 1, true, n);
            t.conv(h, d, 1, 1, true, n);
        }
        t.conv(d, 6 * d, 1, 1, true, 1);
        // Two elementwise products per block, one MAC per output: with them the count is the
        // published one for every size (DiT-XL/2 118.64; SiT S/B/L/XL 6.06 / 23.01 / 80.71 /
        // 118.64), most likely the two modulations x (1 + scale).
        t.macs += 2 * (n * d) as u64;
    }
    t.conv(d, 2 * d, 1, 1, true, 1);
    t.conv(d, c.patch_size * c.patch_size * c.out_channels(), 1, 1, true, n);
    // `params` counts what trains (pos_embed is fixed, as in the reference's count);
    // `params_merged` counts every weight of the inference model, as the paper does.
    Cost { params: t.params, params_merged: t.params + fixed_pos_embed, macs: t.macs }
}
