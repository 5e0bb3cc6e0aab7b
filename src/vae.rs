//! The KL autoencoder of latent diffusion (`AutoencoderKL`), in the diffusers layout of
//! `stabilityai/sd-vae-ft-ema` and `-mse`: a directory with `config.json` and
//! `diffusion_pytorch_model.safetensors`. Latents are VAE latents times `scaling_factor`
//! (0.18215) in the diffusion model's space.

#![allow(non_snake_case)]

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::Deserialize;

use crate::model::layers::{Conv2d, Init, Linear};

/// The `config.json` fields the architecture depends on.
#[derive(Clone, Debug, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "crate::model::defaults::yes")]
    pub use_quant_conv: bool,
    #[serde(default = "crate::model::defaults::yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "crate::model::defaults::yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn one() -> usize {
    1
}
fn groups() -> usize {
    32
}
fn scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.iter().any(|&c| c == 0 || c % self.norm_num_groups != 0) {
            bail!("block_out_channels must be non-empty multiples of norm_num_groups");
        }
        for t in &self.down_block_types {
            if t != "DownEncoderBlock2D" {
                bail!("unsupported down block {t:?} (only DownEncoderBlock2D)");
            }
        }
        for t in &self.up_block_types {
            if t != "UpDecoderBlock2D" {
                bail!("unsupported up block {t:?} (only UpDecoderBlock2D)");
            }
        }
        if !self.mid_block_add_attention || !self.use_quant_conv || !self.use_post_quant_conv {
            bail!("only the standard AutoencoderKL layout (mid-block attention, quant convs) is supported");
        }
        Ok(())
    }

    /// Pixels per latent side: 2^(number of blocks - 1).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `GroupNorm` with affine weights.
#[derive(Module, Debug)]
pub struct GroupNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub groups: usize,
}

impl GroupNorm {
    fn new(groups: usize, c: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([c], device)),
            bias: Param::from_tensor(Tensor::zeros([c], device)),
            groups,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let g = x.reshape([n, self.groups, (c / self.groups) * h * w]);
        let (var, mean) = g.clone().var_mean_bias(2);
        let normed = ((g - mean) / (var + 1e-6).sqrt()).reshape([n, c, h, w]);
        normed * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// `ResnetBlock2D` without time embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(c_in: usize, c_out: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm1: GroupNorm::new(groups, c_in, device),
            conv1: Conv2d::new(c_in, c_out, 3, true, Init::Xavier, device),
            norm2: GroupNorm::new(groups, c_out, device),
            conv2: Conv2d::new(c_out, c_out, 3, true, Init::Xavier, device),
            conv_shortcut: (c_in != c_out).then(|| Conv2d::new(c_in, c_out, 1, true, Init::Xavier, device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        match &self.conv_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over pixels with a residual (`Attention` of the mid block).
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct Attention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out__0: Linear,
}

impl Attention {
    fn new(c: usize, groups: usize, device: &Device) -> Self {
        let lin = || Linear::new(c, c, true, Init::Xavier, device);
        Self { group_norm: GroupNorm::new(groups, c, device), to_q: lin(), to_k: lin(), to_v: lin(), to_out__0: lin() }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let tokens = self.group_norm.forward(x.clone()).reshape([n, c, h * w]).swap_dims(1, 2);
        let q = self.to_q.forward(tokens.clone());
        let k = self.to_k.forward(tokens.clone());
        let v = self.to_v.forward(tokens);
        let attn = softmax(q.matmul(k.swap_dims(1, 2)) / (c as f64).sqrt(), 2);
        let out = self.to_out__0.forward(attn.matmul(v));
        out.swap_dims(1, 2).reshape([n, c, h, w]) + x
    }
}

#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock>,
    pub attentions: Vec<Attention>,
}

impl MidBlock {
    fn new(c: usize, groups: usize, device: &Device) -> Self {
        Self {
            resnets: vec![ResnetBlock::new(c, c, groups, device), ResnetBlock::new(c, c, groups, device)],
            attentions: vec![Attention::new(c, groups, device)],
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets[0].forward(x);
        let x = self.attentions[0].forward(x);
        self.resnets[1].forward(x)
    }
}

/// A 3x3 conv used for 2x resampling.
#[derive(Module, Debug)]
pub struct Resampler {
    pub conv: Conv2d,
}

#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    /// `Downsample2D`: pad right and bottom by one, 3x3 conv with stride 2.
    pub downsamplers: Vec<Resampler>,
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    /// `Upsample2D`: nearest-neighbour 2x, then a 3x3 conv.
    pub upsamplers: Vec<Resampler>,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

/// `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKl {
    pub encoder: Encoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
    pub decoder: Decoder,
}

/// The diagonal Gaussian the encoder returns, in VAE (unscaled) latent units.
pub struct Posterior {
    pub mean: Tensor<4>,
    /// Clamped to [-30, 20], as diffusers does.
    pub logvar: Tensor<4>,
}

impl Posterior {
    /// mean + exp(logvar / 2) * noise.
    pub fn sample(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }
}

impl AutoencoderKl {
    pub fn new(cfg: &VaeConfig, device: &Device) -> Self {
        let g = cfg.norm_num_groups;
        let ch = &cfg.block_out_channels;
        let last = *ch.last().expect("validated");
        let conv = |i, o, k| Conv2d::new(i, o, k, true, Init::Xavier, device);
        let l = cfg.latent_channels;
        let down_blocks = (0..ch.len())
            .map(|i| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                DownBlock {
                    resnets: (0..cfg.layers_per_block)
                        .map(|j| ResnetBlock::new(if j == 0 { c_in } else { ch[i] }, ch[i], g, device))
                        .collect(),
                    downsamplers: if i + 1 < ch.len() {
                        vec![Resampler { conv: conv(ch[i], ch[i], 3) }]
                    } else {
                        vec![]
                    },
                }
            })
            .collect();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up_blocks = (0..rev.len())
            .map(|i| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                UpBlock {
                    resnets: (0..=cfg.layers_per_block)
                        .map(|j| ResnetBlock::new(if j == 0 { c_in } else { rev[i] }, rev[i], g, device))
                        .collect(),
                    upsamplers: if i + 1 < rev.len() {
                        vec![Resampler { conv: conv(rev[i], rev[i], 3) }]
                    } else {
                        vec![]
                    },
                }
            })
            .collect();
        Self {
            encoder: Encoder {
                conv_in: conv(cfg.in_channels, ch[0], 3),
                down_blocks,
                mid_block: MidBlock::new(last, g, device),
                conv_norm_out: GroupNorm::new(g, last, device),
                conv_out: conv(last, 2 * l, 3),
            },
            quant_conv: conv(2 * l, 2 * l, 1),
            post_quant_conv: conv(l, l, 1),
            decoder: Decoder {
                conv_in: conv(l, last, 3),
                mid_block: MidBlock::new(last, g, device),
                up_blocks,
                conv_norm_out: GroupNorm::new(g, ch[0], device),
                conv_out: conv(ch[0], cfg.out_channels, 3),
            },
        }
    }

    /// Pixels in [-1, 1] `[N, 3, H, W]` -> posterior over unscaled latents.
    pub fn encode(&self, x: Tensor<4>) -> Posterior {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(x);
        for block in &e.down_blocks {
            for r in &block.resnets {
                h = r.forward(h);
            }
            for d in &block.downsamplers {
                let padded = h.clone().pad((0, 1, 0, 1), 0.0);
                let c = &d.conv;
                let options = ConvOptions::new([2, 2], [0, 0], [1, 1], 1);
                h = conv2d(padded, c.weight.val(), c.bias.as_ref().map(|b| b.val()), options);
            }
        }
        let h = e.mid_block.forward(h);
        let h = e.conv_out.forward(silu(e.conv_norm_out.forward(h)));
        let moments = self.quant_conv.forward(h);
        let l = moments.dims()[1] / 2;
        Posterior { mean: moments.clone().narrow(1, 0, l), logvar: moments.narrow(1, l, l).clamp(-30.0, 20.0) }
    }

    /// Unscaled latents -> pixels in about [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let h = d.conv_in.forward(self.post_quant_conv.forward(z));
        let mut h = d.mid_block.forward(h);
        for block in &d.up_blocks {
            for r in &block.resnets {
                h = r.forward(h);
            }
            for u in &block.upsamplers {
                h = u.conv.forward(upsample_nearest_2x(h));
            }
        }
        d.conv_out.forward(silu(d.conv_norm_out.forward(h)))
    }
}

fn upsample_nearest_2x(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h, 1, w, 1]).expand([n, c, h, 2, w, 2]).reshape([n, c, 2 * h, 2 * w])
}

/// A loaded autoencoder and its configuration.
pub struct Vae {
    pub config: VaeConfig,
    pub model: AutoencoderKl,
}

impl Vae {
    /// Loads a diffusers directory (`config.json` + `diffusion_pytorch_model.safetensors`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).with_context(|| {
            format!("{} is not a diffusers AutoencoderKL directory (no config.json)", dir.display())
        })?;
        let config: VaeConfig = serde_json::from_str(&text).with_context(|| format!("in {}", cfg_path.display()))?;
        config.validate().with_context(|| format!("in {}", cfg_path.display()))?;
        let weights_path = ["diffusion_pytorch_model.safetensors", "model.safetensors"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .with_context(|| format!("no diffusion_pytorch_model.safetensors in {}", dir.display()))?;
        let weights = crate::checkpoint::read_weights(&weights_path, None)?;
        let model = crate::checkpoint::load_into(AutoencoderKl::new(&config, device), &weights.tensors, device)
            .with_context(|| format!("in {}", weights_path.display()))?;
        Ok(Self { config, model })
    }
}
