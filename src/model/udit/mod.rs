//! U-DiT (Tian et al., NeurIPS 2024): a 3-level U-Net of DiT blocks whose self-attention
//! runs on four 2x-downsampled copies of the feature map (paper Sec. 3.2, [`attention`]),
//! with cosine attention, RoPE2D, a depthwise-conv FFN and structural re-parametrization
//! (Sec. 3.3, [`ffn`]). Module and field names follow the reference `udit_models.py`, since
//! its state-dict keys are the public checkpoint format.

#![allow(non_snake_case)]

pub mod attention;
pub mod config;
pub mod ffn;

use burn::module::Module;
use burn::prelude::*;

pub use attention::{DownSampleAttn, DownSampler};
pub use config::{AttnType, DownFactor, FfnType, PosEmbType, UDiTConfig};
pub use ffn::{FeedForward, Mlp, RepFeedForward, SingleFeedForward};

use super::FfnForm;
use super::layers::{
    AdaLnModulation, Conv2d, Init, LabelEmbedder, TimestepEmbedder, Trace, pixel_shuffle, pixel_unshuffle,
};
use crate::kernels;

/// The U-DiT denoiser. Level 1 runs at width C = `hidden_size` on the H x W latent, level 2
/// at 2C on H/2 x W/2, level 3 (`latent`) at 4C on H/4 x W/4; each level has its own
/// timestep and label embedders at its width.
#[derive(Module, Debug)]
pub struct UDiT {
    pub x_embedder: OverlapPatchEmbed,
    pub t_embedder_1: TimestepEmbedder,
    pub y_embedder_1: LabelEmbedder,
    pub t_embedder_2: TimestepEmbedder,
    pub y_embedder_2: LabelEmbedder,
    pub t_embedder_3: TimestepEmbedder,
    pub y_embedder_3: LabelEmbedder,
    pub encoder_level_1: Vec<UDiTBlock>,
    pub down1_2: Downsample,
    pub encoder_level_2: Vec<UDiTBlock>,
    pub down2_3: Downsample,
    pub latent: Vec<UDiTBlock>,
    pub up3_2: Upsample,
    pub reduce_chan_level2: Conv2d,
    pub decoder_level_2: Vec<UDiTBlock>,
    pub up2_1: Upsample,
    pub reduce_chan_level1: Conv2d,
    pub decoder_level_1: Vec<UDiTBlock>,
    pub output: Conv2d,
    pub final_layer: FinalLayer,
}

impl UDiT {
    /// A freshly initialised model (reference `initialize_weights`).
    pub fn new(cfg: &UDiTConfig, form: FfnForm, device: &Device) -> Self {
        let c = cfg.hidden_size;
        let stages = cfg.stages();
        let blocks = |i: usize| -> Vec<UDiTBlock> {
            let (dim, _, _) = stages[i];
            (0..cfg.depth[i]).map(|_| UDiTBlock::new(dim, cfg.down_factor.stage(i), cfg, form, device)).collect()
        };
        let conv = |i, o, k, bias| Conv2d::new(i, o, k, bias, Init::Xavier, device);
        let rows = cfg.label_rows();
        Self {
            x_embedder: OverlapPatchEmbed { proj: conv(cfg.in_channels, c, 3, true) },
            t_embedder_1: TimestepEmbedder::new(c, device),
            y_embedder_1: LabelEmbedder::new(rows, c, device),
            t_embedder_2: TimestepEmbedder::new(2 * c, device),
            y_embedder_2: LabelEmbedder::new(rows, 2 * c, device),
            t_embedder_3: TimestepEmbedder::new(4 * c, device),
            y_embedder_3: LabelEmbedder::new(rows, 4 * c, device),
            encoder_level_1: blocks(0),
            down1_2: Downsample { body__0: conv(c, c / 2, 3, false) },
            encoder_level_2: blocks(1),
            down2_3: Downsample { body__0: conv(2 * c, c, 3, false) },
            latent: blocks(2),
            up3_2: Upsample { body__0: conv(4 * c, 8 * c, 3, false) },
            reduce_chan_level2: conv(4 * c, 2 * c, 1, true),
            decoder_level_2: blocks(3),
            up2_1: Upsample { body__0: conv(2 * c, 4 * c, 3, false) },
            reduce_chan_level1: conv(2 * c, 2 * c, 1, true),
            decoder_level_1: blocks(4),
            output: conv(2 * c, 2 * c, 3, true),
            final_layer: FinalLayer {
                adaLN_modulation: AdaLnModulation::new(2 * c, 2, device),
                out_proj: Conv2d::new(2 * c, cfg.out_channels(), 3, true, Init::Zero, device),
            },
        }
    }

    /// The same model with every FFN in its merged inference form.
    pub fn merged(self) -> Self {
        let merge = |v: Vec<UDiTBlock>| v.into_iter().map(UDiTBlock::merged).collect();
        Self {
            encoder_level_1: merge(self.encoder_level_1),
            encoder_level_2: merge(self.encoder_level_2),
            latent: merge(self.latent),
            decoder_level_2: merge(self.decoder_level_2),
            decoder_level_1: merge(self.decoder_level_1),
            ..self
        }
    }

    /// Denoiser output for latents `x`, timesteps `t` and labels `y` (already dropped to the
    /// null class where wanted), as the reference `U_DiT.forward`; `trace` taps each stage
    /// under its module name.
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>, trace: &mut Trace) -> Tensor<4> {
        let x = trace.tap("x_embedder", self.x_embedder.forward(x)); // (N, C, H, W)
        let c1 = self.conditioning(1, &t, &y, trace); // (N, C)
        let c2 = self.conditioning(2, &t, &y, trace); // (N, 2C)
        let c3 = self.conditioning(3, &t, &y, trace); // (N, 4C)
        let skip1 = level("encoder_level_1", &self.encoder_level_1, x, &c1, trace); // (N, C, H, W)
        let x = trace.tap("down1_2", self.down1_2.forward(skip1.clone())); // (N, 2C, H/2, W/2)
        let skip2 = level("encoder_level_2", &self.encoder_level_2, x, &c2, trace); // (N, 2C, H/2, W/2)
        let x = trace.tap("down2_3", self.down2_3.forward(skip2.clone())); // (N, 4C, H/4, W/4)
        let x = level("latent", &self.latent, x, &c3, trace); // (N, 4C, H/4, W/4)
        let x = trace.tap("up3_2", self.up3_2.forward(x)); // (N, 2C, H/2, W/2)
        let x = Tensor::cat(vec![x, skip2], 1); // (N, 4C, H/2, W/2)
        let x = trace.tap("reduce_chan_level2", self.reduce_chan_level2.forward(x)); // (N, 2C, H/2, W/2)
        let x = level("decoder_level_2", &self.decoder_level_2, x, &c2, trace); // (N, 2C, H/2, W/2)
        let x = trace.tap("up2_1", self.up2_1.forward(x)); // (N, C, H, W)
        let x = Tensor::cat(vec![x, skip1], 1); // (N, 2C, H, W)
        let x = trace.tap("reduce_chan_level1", self.reduce_chan_level1.forward(x)); // (N, 2C, H, W)
        // The last level stays at width 2C, so it takes the level-2 conditioning (reference).
        let x = level("decoder_level_1", &self.decoder_level_1, x, &c2, trace); // (N, 2C, H, W)
        let x = trace.tap("output", self.output.forward(x)); // (N, 2C, H, W)
        let x = self.final_layer.forward(x, c2, trace); // (N, out_channels, H, W)
        trace.tap("final_layer", x)
    }

    /// c_k = t_embedder_k(t) + y_embedder_k(y): the conditioning of level k at its width.
    fn conditioning(&self, k: usize, t: &Tensor<1>, y: &Tensor<1, Int>, trace: &mut Trace) -> Tensor<2> {
        let (t_embedder, y_embedder) = [
            (&self.t_embedder_1, &self.y_embedder_1),
            (&self.t_embedder_2, &self.y_embedder_2),
            (&self.t_embedder_3, &self.y_embedder_3),
        ][k - 1];
        let t = trace.tap(format!("t_embedder_{k}"), t_embedder.forward(t.clone()));
        t + trace.tap(format!("y_embedder_{k}"), y_embedder.forward(y.clone()))
    }
}

/// The blocks of one level in sequence, each output tapped as `{name}.{i}`.
fn level(name: &str, blocks: &[UDiTBlock], x: Tensor<4>, c: &Tensor<2>, trace: &mut Trace) -> Tensor<4> {
    blocks.iter().enumerate().fold(x, |x, (i, block)| trace.tap(format!("{name}.{i}"), block.forward(x, c.clone())))
}

/// `U_DiTBlock`: two DiT blocks on the feature map, each an (attention, FFN) pair with its
/// own adaLN-Zero modulation.
#[derive(Module, Debug)]
pub struct UDiTBlock {
    pub attn1: DownSampleAttn,
    pub mlp1: FeedForward,
    pub adaLN_modulation1: AdaLnModulation,
    pub attn2: DownSampleAttn,
    pub mlp2: FeedForward,
    pub adaLN_modulation2: AdaLnModulation,
}

impl UDiTBlock {
    fn new(dim: usize, r: usize, cfg: &UDiTConfig, form: FfnForm, device: &Device) -> Self {
        Self {
            attn1: DownSampleAttn::new(dim, r, cfg, device),
            mlp1: FeedForward::new(dim, cfg, form, device),
            adaLN_modulation1: AdaLnModulation::new(dim, 6, device),
            attn2: DownSampleAttn::new(dim, r, cfg, device),
            mlp2: FeedForward::new(dim, cfg, form, device),
            adaLN_modulation2: AdaLnModulation::new(dim, 6, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>, c: Tensor<2>) -> Tensor<4> {
        let x = adaln_zero_pair(x, c.clone(), &self.adaLN_modulation1, &self.attn1, &self.mlp1);
        adaln_zero_pair(x, c, &self.adaLN_modulation2, &self.attn2, &self.mlp2)
    }

    fn merged(self) -> Self {
        Self { mlp1: self.mlp1.merged(), mlp2: self.mlp2.merged(), ..self }
    }
}

/// DiT's block on a feature map: x + gate * attn(modulate(norm(x))), then the same with the
/// FFN, shift/scale/gate from the conditioning (gates start at zero: adaLN-Zero).
fn adaln_zero_pair(
    x: Tensor<4>,
    c: Tensor<2>,
    adaLN_modulation: &AdaLnModulation,
    attn: &DownSampleAttn,
    mlp: &FeedForward,
) -> Tensor<4> {
    let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = adaLN_modulation.forward(c);
    let x = kernels::add_gated(x.clone(), gate_msa, attn.forward(kernels::norm_modulate(x, shift_msa, scale_msa)));
    kernels::add_gated(x.clone(), gate_mlp, mlp.forward(kernels::norm_modulate(x, shift_mlp, scale_mlp)))
}

/// `x_embedder`: a 3x3 conv from the latent channels to the model width; overlapping
/// patches of one pixel each, so the U-Net keeps the latent's resolution.
#[derive(Module, Debug)]
pub struct OverlapPatchEmbed {
    pub proj: Conv2d,
}

impl OverlapPatchEmbed {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.proj.forward(x)
    }
}

/// `Downsample`: a bias-free 3x3 conv halving the channels, then pixel-unshuffle by 2, so
/// the next level has half the side and twice the width.
#[derive(Module, Debug)]
pub struct Downsample {
    pub body__0: Conv2d,
}

impl Downsample {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        pixel_unshuffle(self.body__0.forward(x), 2)
    }
}

/// `Upsample`: a bias-free 3x3 conv doubling the channels, then pixel-shuffle by 2.
#[derive(Module, Debug)]
pub struct Upsample {
    pub body__0: Conv2d,
}

impl Upsample {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        pixel_shuffle(self.body__0.forward(x), 2)
    }
}

/// `FinalLayer`: LayerNorm modulated by the conditioning (shift and scale, no gate), then
/// a 3x3 conv to the output channels.
#[derive(Module, Debug)]
pub struct FinalLayer {
    pub adaLN_modulation: AdaLnModulation,
    pub out_proj: Conv2d,
}

impl FinalLayer {
    fn forward(&self, x: Tensor<4>, c: Tensor<2>, trace: &mut Trace) -> Tensor<4> {
        let [shift, scale] = self.adaLN_modulation.forward(c);
        let x = trace.tap_as("final_layer.norm_final", x, kernels::generic::layer_norm_2d);
        self.out_proj.forward(kernels::norm_modulate(x, shift, scale))
    }
}
