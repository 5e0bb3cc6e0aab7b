//! U-DiT's configuration: the reference `U_DiT` constructor arguments, the paper's presets
//! and the checks that decide whether a network can be built from them.

use serde::{Deserialize, Serialize};

use crate::model::{Common, default_cfg_channels, defaults, flag};

/// Constructor arguments of the reference `U_DiT`, with its defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UDiTConfig {
    #[serde(default = "defaults::input_size")]
    pub input_size: usize,
    #[serde(default = "d_down_factor")]
    pub down_factor: DownFactor,
    #[serde(default = "defaults::in_channels")]
    pub in_channels: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d_depth")]
    pub depth: [usize; 5],
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
    #[serde(default = "defaults::yes", deserialize_with = "flag::de")]
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
        Common {
            hidden: self.hidden_size,
            heads: self.num_heads,
            in_channels: self.in_channels,
            classes: self.num_classes,
            class_dropout_prob: self.class_dropout_prob,
            cfg_channels: self.cfg_channels,
            input_size: self.input_size,
            depth: self.depth.iter().fold(0usize, |a, &d| a.saturating_add(d)),
            mlp_ratio: self.mlp_ratio,
        }
        .validate()?;
        anyhow::ensure!(
            self.input_size % 4 == 0 && self.input_size > 0,
            "input_size must be a positive multiple of 4 (two 2x downsamplings), got {}",
            self.input_size
        );
        self.downsampler_kernel()?;
        // The first downsampling convolves to hidden_size / 2 channels, then folds 2x2 pixels
        // into channels: 2 * hidden_size only for an even width.
        anyhow::ensure!(self.hidden_size.is_multiple_of(2), "hidden_size must be even, got {}", self.hidden_size);
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
        default_cfg_channels(self.cfg_channels, self.in_channels)
    }

    /// Rows of the label tables: one more than the classes when label dropout made a null
    /// class to train with (reference `LabelEmbedder`).
    pub fn label_rows(&self) -> usize {
        self.num_classes + usize::from(self.class_dropout_prob > 0.0)
    }
}
