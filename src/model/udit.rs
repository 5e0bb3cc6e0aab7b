//! U-DiT (Tian et al., NeurIPS 2024): a 3-stage U-Net of DiT blocks whose self-attention
//! runs on four 2x-downsampled copies of the feature map (paper Sec. 3.2), with cosine
//! attention, RoPE2D, a depthwise-conv FFN and structural re-parametrization (Sec. 3.3).
//! Module and field names follow the reference `udit_models.py`, since its state-dict keys
//! are the public checkpoint format.

#![allow(non_snake_case)]

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::module::{attention, conv2d};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use serde::{Deserialize, Serialize};

use super::cpu::Gelu;
use super::layers::{
    AdaLnModulation, Conv2d, Init, LabelEmbedder, Linear, TimestepEmbedder, Trace, add_gated_2d, conv2d_same, gelu,
    layer_norm_2d, modulate_2d, norm_modulate_2d, pixel_shuffle, pixel_unshuffle,
};
use super::{FfnForm, flag, validate_common};

/// Constructor arguments of the reference `U_DiT`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UDiTConfig {
    #[serde(default = "super::defaults::input_size")]
    pub input_size: usize,
    #[serde(default = "d_down_factor")]
    pub down_factor: DownFactor,
    #[serde(default = "super::defaults::in_channels")]
    pub in_channels: usize,
    #[serde(default = "super::defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_depth")]
    pub depth: [usize; 5],
    #[serde(default = "super::defaults::num_heads")]
    pub num_heads: usize,
    #[serde(default = "super::defaults::mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "super::defaults::class_dropout_prob")]
    pub class_dropout_prob: f64,
    #[serde(default = "super::defaults::num_classes")]
    pub num_classes: usize,
    #[serde(default = "super::defaults::yes", deserialize_with = "flag::de")]
    pub learn_sigma: bool,
    #[serde(default = "super::defaults::yes", deserialize_with = "flag::de")]
    pub rep: bool,
    #[serde(default)]
    pub ffn_type: FfnType,
    #[serde(default)]
    pub attn_type: Option<AttnType>,
    #[serde(default)]
    pub posemb_type: Option<PosEmbType>,
    /// `"dwconvK"`: the KxK depthwise conv applied before the token split.
    pub downsampler: String,
    #[serde(default, deserialize_with = "flag::de")]
    pub down_shortcut: bool,
    /// How many leading output channels classifier-free guidance mixes. The reference
    /// hard-codes 3 "for exact reproducibility"; `None` means 3 for 4-channel latents (the
    /// paper's presets) and all `in_channels` otherwise. Not a reference argument.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cfg_channels: Option<usize>,
}

fn d_down_factor() -> DownFactor {
    DownFactor::All(2)
}
fn d_depth() -> [usize; 5] {
    [2, 5, 8, 5, 2]
}

/// Token-downsampling factor r (the attention splits the map into r*r groups), for all
/// five stages or per stage, as the reference accepts either.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DownFactor {
    All(usize),
    PerStage([usize; 5]),
}

impl DownFactor {
    pub fn stage(&self, i: usize) -> usize {
        match self {
            DownFactor::All(r) => *r,
            DownFactor::PerStage(r) => r[i],
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnType {
    /// Depthwise-conv FFN (paper Sec. 3.3), re-parametrizable when `rep` is set.
    #[default]
    Rep,
    /// The ViT MLP: 1x1 conv, tanh GELU, 1x1 conv.
    Basic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttnType {
    /// Cosine-similarity attention with a learned per-head temperature.
    #[serde(rename = "v2")]
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PosEmbType {
    #[serde(rename = "rope2d")]
    Rope2d,
}

impl UDiTConfig {
    /// The paper's presets (Table 8): mlp_ratio 2 and every U-DiT feature on.
    pub fn preset(name: &str) -> Option<Self> {
        let (hidden, heads) = match name {
            "U-DiT-S" => (96, 4),
            "U-DiT-B" => (192, 8),
            "U-DiT-L" => (384, 16),
            _ => return None,
        };
        Some(Self {
            hidden_size: hidden,
            num_heads: heads,
            mlp_ratio: 2.0,
            attn_type: Some(AttnType::Cosine),
            posemb_type: Some(PosEmbType::Rope2d),
            downsampler: "dwconv5".into(),
            down_shortcut: true,
            ..Self::reference_defaults()
        })
    }

    /// What the reference constructor builds when given only `downsampler`.
    pub fn reference_defaults() -> Self {
        serde_json::from_str(r#"{"downsampler": "dwconv5"}"#).expect("defaults parse")
    }

    pub fn out_channels(&self) -> usize {
        if self.learn_sigma { 2 * self.in_channels } else { self.in_channels }
    }

    /// Hidden width of the FFN at model width `dim` (`int(dim * mlp_ratio)`).
    pub fn ffn_hidden(&self, dim: usize) -> usize {
        (dim as f64 * self.mlp_ratio) as usize
    }

    /// Kernel side K of `"dwconvK"`.
    pub fn downsampler_kernel(&self) -> anyhow::Result<usize> {
        let k = self
            .downsampler
            .strip_prefix("dwconv")
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|k| k % 2 == 1)
            .ok_or_else(|| anyhow::anyhow!("downsampler must be \"dwconvK\" with K odd, got {:?}", self.downsampler))?;
        Ok(k)
    }

    /// Widths and sides of the five stages: (channels, side, conditioning width).
    pub fn stages(&self) -> [(usize, usize, usize); 5] {
        let (c, s) = (self.hidden_size, self.input_size);
        [(c, s, c), (2 * c, s / 2, 2 * c), (4 * c, s / 4, 4 * c), (2 * c, s / 2, 2 * c), (2 * c, s, 2 * c)]
    }

    /// Rejects configurations the network cannot be built for, with a reason.
    pub fn validate(&self) -> anyhow::Result<()> {
        validate_common(
            self.hidden_size,
            self.num_heads,
            self.in_channels,
            self.num_classes,
            self.class_dropout_prob,
            self.cfg_channels,
        )?;
        anyhow::ensure!(
            self.input_size % 4 == 0 && self.input_size > 0,
            "input_size must be a positive multiple of 4 (two 2x downsamplings), got {}",
            self.input_size
        );
        self.downsampler_kernel()?;
        anyhow::ensure!(self.mlp_ratio > 0.0, "mlp_ratio must be positive");
        for (i, (dim, side, _)) in self.stages().into_iter().enumerate() {
            let r = self.down_factor.stage(i);
            anyhow::ensure!(r >= 1 && side % r == 0, "stage {} side {side} is not divisible by down_factor {r}", i + 1);
            anyhow::ensure!(
                dim % self.num_heads == 0,
                "stage {} width {dim} is not divisible by num_heads {}",
                i + 1,
                self.num_heads
            );
            if self.posemb_type.is_some() {
                let hd = dim / self.num_heads;
                anyhow::ensure!(hd % 4 == 0, "RoPE2D needs a head dim divisible by 4, stage {} has {hd}", i + 1);
                let n = (side / r) * (side / r);
                anyhow::ensure!(n > 0, "stage {} has no tokens", i + 1);
            }
        }
        Ok(())
    }

    /// Channels classifier-free guidance mixes (never variance channels).
    pub fn guided_channels(&self) -> usize {
        super::default_cfg_channels(self.cfg_channels, self.in_channels)
    }

    /// Rows of the label tables: one more than the classes when label dropout made a null
    /// class to train with (reference `LabelEmbedder`).
    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }
}

/// The attention of paper Sec. 3.2: depthwise conv, split into r*r spatially
/// downsampled groups, multi-head attention inside each group, merge, 1x1 `to_out`.
#[derive(Module, Debug)]
pub struct DownSampleAttn {
    pub to_qkv: Linear,
    pub to_out: Conv2d,
    /// Per-head log temperature of cosine attention, `[heads, 1, 1]`.
    pub logit_scale: Option<burn::module::Param<Tensor<3>>>,
    pub downsampler: DownSampler,
    pub heads: usize,
    pub down_factor: usize,
    pub rope: bool,
}

#[derive(Module, Debug)]
pub struct DownSampler {
    pub layer: Conv2d,
    pub shortcut: bool,
}

/// Largest temperature of cosine attention, ln(100) as the reference writes it.
const LOGIT_SCALE_MAX: f64 = 4.6052;

impl DownSampleAttn {
    fn new(dim: usize, r: usize, cfg: &UDiTConfig, device: &Device) -> Self {
        let heads = cfg.num_heads;
        let logit_scale =
            cfg.attn_type.map(|_| burn::module::Param::from_tensor(Tensor::full([heads, 1, 1], 10f32.ln(), device)));
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

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, d, h, w] = x.dims();
        let r = self.down_factor;
        let (hr, wr, heads) = (h / r, w / r, self.heads);
        let (n, hd) = (hr * wr, d / heads);
        let mut x2 = self.downsampler.layer.forward(x.clone());
        if self.downsampler.shortcut {
            x2 = x2 + x;
        }
        // `to_qkv` acts on each token alone, so it runs as a 1x1 conv on the whole map before
        // the split (faster than per-group matmuls).
        if super::cpu::applies(&x2) {
            let (weight, bias) = (self.to_qkv.weight.val(), self.to_qkv.bias.as_ref().map(|b| b.val()));
            let qkv = conv2d(x2, weight.reshape([3 * d, d, 1, 1]), bias, ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
            let temperature = self.logit_scale.as_ref().map(|s| {
                s.val()
                    .clamp_max(LOGIT_SCALE_MAX)
                    .exp()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32")
            });
            let kernel =
                super::cpu::GroupedAttention { heads, r, rope: self.rope, temperature, scale: (hd as f32).powf(-0.5) };
            return self.to_out.forward(kernel.forward(qkv));
        }
        // With RoPE the conv also yields q and k with their channel pairs swapped,
        // (a, b) -> (-b, a), so that the rotation is two products.
        let (weight, bias) = self.qkv_weights();
        let slots = weight.dims()[0] / hd;
        let qkv =
            conv2d(x2, weight.reshape([slots * hd, d, 1, 1]), Some(bias), ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        // 'b (slot hd) (hr dh) (wr dw) -> (b dh dw) slot (hr wr) hd': group p = r*dh + dw
        // holds pixels (r*hr+dh, r*wr+dw), the reference `DownSampler` rearrange.
        let qkv =
            qkv.reshape([b, slots, hd, hr, r, wr, r]).permute([0, 4, 6, 1, 3, 5, 2]).reshape([b * r * r, slots, n, hd]);
        let part = |i: usize| qkv.clone().narrow(1, i * heads, heads);
        let (mut q, mut k, v) = (part(0), part(1), part(2));
        if self.rope {
            let (cos, sin) = rope2d_tables(hd, n, &q.device());
            q = q * cos.clone() + part(3) * sin.clone();
            k = k * cos + part(4) * sin;
        }
        let scale = match &self.logit_scale {
            Some(logit_scale) => {
                // Cosine similarity times exp(min(logit_scale, ln 100)), folded into q.
                let temp = logit_scale.val().clamp_max(LOGIT_SCALE_MAX).exp().reshape([1, heads, 1, 1]);
                q = l2_normalize(q) * temp;
                k = l2_normalize(k);
                1.0
            }
            None => (hd as f64).powf(-0.5),
        };
        let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
        let out = attention(q, k, v, None, None, options); // [b r r, heads, n, hd]
        // 'b (dh dw) he (hr wr) d -> b (he d) (hr dh) (wr dw)'
        let out = out.reshape([b, r, r, heads, hr, wr, hd]).permute([0, 3, 6, 4, 1, 5, 2]).reshape([b, d, h, w]);
        self.to_out.forward(out)
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
        let swap_w = |t: Tensor<2>| {
            let pairs = t.reshape([qk / 2, 2, d]);
            let (a, bb) = (pairs.clone().narrow(1, 0, 1), pairs.narrow(1, 1, 1));
            Tensor::cat(vec![bb.neg(), a], 1).reshape([qk, d])
        };
        let swap_b = |t: Tensor<1>| {
            let pairs = t.reshape([qk / 2, 2]);
            let (a, bb) = (pairs.clone().narrow(1, 0, 1), pairs.narrow(1, 1, 1));
            Tensor::cat(vec![bb.neg(), a], 1).reshape([qk])
        };
        let w_swapped = swap_w(w.clone().narrow(0, 0, qk));
        let b_swapped = swap_b(b.clone().narrow(0, 0, qk));
        (Tensor::cat(vec![w, w_swapped], 0), Tensor::cat(vec![b, b_swapped], 0))
    }
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

/// The FFN of a block, in whichever form the weights are in.
#[derive(Module, Debug)]
pub enum FeedForward {
    /// `ffn_type` "rep", `rep` 1, training form: low-rank 1x1 pairs and three parallel
    /// depthwise branches plus identity (paper Sec. 3.3).
    Rep(RepFeedForward),
    /// One 1x1, one 5x5 depthwise, one 1x1: `rep` 0, and also the merged inference form of
    /// `rep` 1 (the identity and the 3x3/1x1 branches are folded into the 5x5 kernel).
    Single(SingleFeedForward),
    /// `ffn_type` "basic": fc1, tanh GELU, fc2.
    Basic(Mlp),
}

#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct RepFeedForward {
    pub project_in: Vec<Conv2d>,
    pub dwconv: Vec<Conv2d>,
    pub project_out: Vec<Conv2d>,
}

#[derive(Module, Debug)]
pub struct SingleFeedForward {
    pub project_in: Conv2d,
    pub dwconv: Conv2d,
    pub project_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
}

impl FeedForward {
    fn new(dim: usize, cfg: &UDiTConfig, form: FfnForm, device: &Device) -> Self {
        let hidden = cfg.ffn_hidden(dim);
        let conv = |i, o, k| Conv2d::new(i, o, k, true, Init::Xavier, device);
        match (cfg.ffn_type, cfg.rep && form == FfnForm::Train) {
            (FfnType::Basic, _) => Self::Basic(Mlp { fc1: conv(dim, hidden, 1), fc2: conv(hidden, dim, 1) }),
            (FfnType::Rep, true) => Self::Rep(RepFeedForward {
                project_in: vec![conv(dim, hidden / 2, 1), conv(hidden / 2, hidden, 1)],
                dwconv: [5, 3, 1].map(|k| Conv2d::depthwise(hidden, k, Init::Xavier, device)).into(),
                project_out: vec![conv(hidden, hidden / 2, 1), conv(hidden / 2, dim, 1)],
            }),
            (FfnType::Rep, false) => Self::Single(SingleFeedForward {
                project_in: conv(dim, hidden, 1),
                dwconv: Conv2d::depthwise(hidden, 5, Init::Xavier, device),
                project_out: conv(hidden, dim, 1),
            }),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            // In training the branches are folded on the fly: the same function of the same
            // parameters (so the same gradients) at the cost of one 1x1-5x5-1x1 chain.
            Self::Rep(f) if x.is_autodiff() => single_forward(x, f.merged_weights()),
            Self::Rep(f) => {
                let u = gelu(f.project_in[1].forward(f.project_in[0].forward(x)), Gelu::Erf);
                let mixed = f.dwconv.iter().fold(u.clone(), |acc, conv| acc + conv.forward(u.clone()));
                f.project_out[1].forward(f.project_out[0].forward(mixed))
            }
            Self::Single(f) => {
                let wb = |c: &Conv2d| (c.weight.val(), bias_of(c));
                single_forward(x, [wb(&f.project_in), wb(&f.dwconv), wb(&f.project_out)])
            }
            Self::Basic(f) => f.fc2.forward(gelu(f.fc1.forward(x), Gelu::Tanh)),
        }
    }

    /// Structural re-parametrization: the training form folded into one 1x1, one 5x5
    /// depthwise and one 1x1 conv computing the same function (reference `add_buffer`).
    pub fn merged(self) -> Self {
        let Self::Rep(f) = self else { return self };
        let [(wi, bi), (wd, bd), (wo, bo)] = f.merged_weights();
        let hidden = wd.dims()[0];
        Self::Single(SingleFeedForward {
            project_in: Conv2d::from_weights(wi, Some(bi), 1),
            dwconv: Conv2d::from_weights(wd, Some(bd), hidden),
            project_out: Conv2d::from_weights(wo, Some(bo), 1),
        })
    }
}

impl RepFeedForward {
    /// (weight, bias) of the merged 1x1, 5x5 depthwise and 1x1 convs, as tensor expressions
    /// of the branch parameters: the 1x1 pairs composed, and K5 + pad(K3) + pad(K1 + 1).
    fn merged_weights(&self) -> [(Tensor<4>, Tensor<1>); 3] {
        let [k5, k3, k1] = [&self.dwconv[0], &self.dwconv[1], &self.dwconv[2]];
        let hidden = k5.weight.dims()[0];
        let device = k5.weight.device();
        let pad = |w: Tensor<4>, p: usize| {
            let [c, _, k, _] = w.dims();
            Tensor::zeros([c, 1, k + 2 * p, k + 2 * p], &device).slice_assign([0..c, 0..1, p..p + k, p..p + k], w)
        };
        // The identity skip is a 1x1 depthwise kernel of ones.
        let eye = Tensor::<4>::ones([hidden, 1, 1, 1], &device);
        let dw = k5.weight.val() + pad(k3.weight.val(), 1) + pad(k1.weight.val() + eye, 2);
        let dw_bias = bias_of(k5) + bias_of(k3) + bias_of(k1);
        [
            compose_1x1(&self.project_in[0], &self.project_in[1]),
            (dw, dw_bias),
            compose_1x1(&self.project_out[0], &self.project_out[1]),
        ]
    }
}

/// 1x1 conv, exact GELU, 5x5 depthwise conv, 1x1 conv, from (weight, bias) pairs.
fn single_forward(x: Tensor<4>, [(wi, bi), (wd, bd), (wo, bo)]: [(Tensor<4>, Tensor<1>); 3]) -> Tensor<4> {
    let hidden = wd.dims()[0];
    let u = gelu(conv2d_same(x, wi, Some(bi), 1), Gelu::Erf);
    conv2d_same(conv2d_same(u, wd, Some(bd), hidden), wo, Some(bo), 1)
}

fn bias_of(conv: &Conv2d) -> Tensor<1> {
    conv.bias.as_ref().map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([conv.weight.dims()[0]], &conv.weight.device()))
}

/// Two stacked 1x1 convs as one: W = W2 W1, b = W2 b1 + b2.
fn compose_1x1(first: &Conv2d, second: &Conv2d) -> (Tensor<4>, Tensor<1>) {
    let [o1, i1, _, _] = first.weight.dims();
    let [o2, _, _, _] = second.weight.dims();
    let w1 = first.weight.val().reshape([o1, i1]);
    let w2 = second.weight.val().reshape([o2, o1]);
    let b = w2.clone().matmul(bias_of(first).reshape([o1, 1])).reshape([o2]) + bias_of(second);
    (w2.matmul(w1).reshape([o2, i1, 1, 1]), b)
}

/// `U_DiTBlock`: two (attention, FFN) pairs, each with its own adaLN-Zero modulation.
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

    pub fn forward(&self, mut x: Tensor<4>, c: Tensor<2>) -> Tensor<4> {
        let pairs =
            [(&self.attn1, &self.mlp1, &self.adaLN_modulation1), (&self.attn2, &self.mlp2, &self.adaLN_modulation2)];
        for (attn, mlp, ada) in pairs {
            let [shift_a, scale_a, gate_a, shift_f, scale_f, gate_f] =
                <[Tensor<2>; 6]>::try_from(ada.forward(c.clone(), 6)).expect("six chunks");
            x = add_gated_2d(x.clone(), gate_a, attn.forward(norm_modulate_2d(x, shift_a, scale_a)));
            x = add_gated_2d(x.clone(), gate_f, mlp.forward(norm_modulate_2d(x, shift_f, scale_f)));
        }
        x
    }

    fn merged(self) -> Self {
        Self { mlp1: self.mlp1.merged(), mlp2: self.mlp2.merged(), ..self }
    }
}

/// `x_embedder`: a 3x3 conv from the latent channels to the model width.
#[derive(Module, Debug)]
pub struct OverlapPatchEmbed {
    pub proj: Conv2d,
}

/// `Downsample`/`Upsample`: a bias-free 3x3 conv then pixel-(un)shuffle by 2.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct Resample {
    pub body__0: Conv2d,
}

#[derive(Module, Debug)]
pub struct FinalLayer {
    pub adaLN_modulation: AdaLnModulation,
    pub out_proj: Conv2d,
}

/// The U-DiT denoiser.
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
    pub down1_2: Resample,
    pub encoder_level_2: Vec<UDiTBlock>,
    pub down2_3: Resample,
    pub latent: Vec<UDiTBlock>,
    pub up3_2: Resample,
    pub reduce_chan_level2: Conv2d,
    pub decoder_level_2: Vec<UDiTBlock>,
    pub up2_1: Resample,
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
            down1_2: Resample { body__0: conv(c, c / 2, 3, false) },
            encoder_level_2: blocks(1),
            down2_3: Resample { body__0: conv(2 * c, c, 3, false) },
            latent: blocks(2),
            up3_2: Resample { body__0: conv(4 * c, 8 * c, 3, false) },
            reduce_chan_level2: conv(4 * c, 2 * c, 1, true),
            decoder_level_2: blocks(3),
            up2_1: Resample { body__0: conv(2 * c, 4 * c, 3, false) },
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

    /// Denoiser output `[N, out_channels, H, W]` for latents `x`, timesteps `t`, labels `y`
    /// (labels already dropped to the null class where wanted).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>, trace: &mut Trace) -> Tensor<4> {
        let x = self.x_embedder.proj.forward(x);
        trace.record("x_embedder", &x);
        let cond = |k: usize, te: &TimestepEmbedder, ye: &LabelEmbedder, trace: &mut Trace| {
            let (tk, yk) = (te.forward(t.clone()), ye.forward(y.clone()));
            trace.record(format!("t_embedder_{k}"), &tk);
            trace.record(format!("y_embedder_{k}"), &yk);
            tk + yk
        };
        let c1 = cond(1, &self.t_embedder_1, &self.y_embedder_1, trace);
        let c2 = cond(2, &self.t_embedder_2, &self.y_embedder_2, trace);
        let c3 = cond(3, &self.t_embedder_3, &self.y_embedder_3, trace);

        let run = |name: &str, blocks: &[UDiTBlock], mut h: Tensor<4>, c: &Tensor<2>, trace: &mut Trace| {
            for (i, block) in blocks.iter().enumerate() {
                h = block.forward(h, c.clone());
                trace.record(format!("{name}.{i}"), &h);
            }
            h
        };
        let skip1 = run("encoder_level_1", &self.encoder_level_1, x, &c1, trace);
        let h = pixel_unshuffle(self.down1_2.body__0.forward(skip1.clone()), 2);
        trace.record("down1_2", &h);
        let skip2 = run("encoder_level_2", &self.encoder_level_2, h, &c2, trace);
        let h = pixel_unshuffle(self.down2_3.body__0.forward(skip2.clone()), 2);
        trace.record("down2_3", &h);
        let h = run("latent", &self.latent, h, &c3, trace);

        let h = pixel_shuffle(self.up3_2.body__0.forward(h), 2);
        trace.record("up3_2", &h);
        let h = self.reduce_chan_level2.forward(Tensor::cat(vec![h, skip2], 1));
        trace.record("reduce_chan_level2", &h);
        let h = run("decoder_level_2", &self.decoder_level_2, h, &c2, trace);
        let h = pixel_shuffle(self.up2_1.body__0.forward(h), 2);
        trace.record("up2_1", &h);
        let h = self.reduce_chan_level1.forward(Tensor::cat(vec![h, skip1], 1));
        trace.record("reduce_chan_level1", &h);
        // The last stage runs at width 2C with the stage-2 conditioning, as in the reference.
        let h = run("decoder_level_1", &self.decoder_level_1, h, &c2, trace);
        let h = self.output.forward(h);
        trace.record("output", &h);

        let [shift, scale] =
            <[Tensor<2>; 2]>::try_from(self.final_layer.adaLN_modulation.forward(c2, 2)).expect("two chunks");
        let normed = layer_norm_2d(h);
        trace.record("final_layer.norm_final", &normed);
        let out = self.final_layer.out_proj.forward(modulate_2d(normed, shift, scale));
        trace.record("final_layer", &out);
        out
    }
}
