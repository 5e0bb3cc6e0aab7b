//! The denoisers: U-DiT ([`udit`]) and the DiT baseline ([`dit`]), behind one [`Denoiser`]
//! type that samplers and training call without knowing which network it is.

pub mod choice;
pub mod dit;
pub mod layers;
pub mod udit;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use choice::ModelChoice;
pub use dit::{DiT, DiTConfig, SiTLLaMA};
pub use layers::Trace;
pub use udit::{UDiT, UDiTConfig};

/// Float tensors by name, as f32: a model's weights under their reference state-dict keys,
/// or other named tensors such as denoiser inputs. Defined here, beside the modules whose
/// keys it holds, so that `checkpoint` (the file formats) depends on `model` and not back.
pub type StateDict = std::collections::BTreeMap<String, burn::tensor::TensorData>;

/// A model configuration: the reference constructor arguments plus `"arch"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch")]
pub enum ModelConfig {
    #[serde(rename = "u-dit")]
    UDiT(UDiTConfig),
    #[serde(rename = "dit")]
    DiT(DiTConfig),
    /// SiT (Ma et al. 2024): DiT's network trained and sampled as an interpolant
    /// ([`crate::transport`]); with `learn_sigma` it computes 2C channels and returns the first C.
    #[serde(rename = "sit")]
    SiT(DiTConfig),
    /// SiT-LLaMA (VisionLLaMA): SiT with LLaMA blocks (2D RoPE attention, SwiGLU FFN).
    #[serde(rename = "sit-llama")]
    SiTLLaMA(DiTConfig),
}

/// Names accepted by `--model`.
pub const PRESETS: &[&str] = &[
    "U-DiT-S",
    "U-DiT-B",
    "U-DiT-L",
    "DiT-S/2",
    "DiT-S/4",
    "DiT-S/8",
    "DiT-B/2",
    "DiT-B/4",
    "DiT-B/8",
    "DiT-L/2",
    "DiT-L/4",
    "DiT-L/8",
    "DiT-XL/2",
    "DiT-XL/4",
    "DiT-XL/8",
    "SiT-S/2",
    "SiT-S/4",
    "SiT-S/8",
    "SiT-B/2",
    "SiT-B/4",
    "SiT-B/8",
    "SiT-L/2",
    "SiT-L/4",
    "SiT-L/8",
    "SiT-XL/2",
    "SiT-XL/4",
    "SiT-XL/8",
    "SiT-LLaMA-S/2",
    "SiT-LLaMA-B/2",
    "SiT-LLaMA-L/2",
    "SiT-LLaMA-XL/2",
];

impl ModelConfig {
    pub fn preset(name: &str) -> Result<Self> {
        UDiTConfig::preset(name)
            .map(Self::UDiT)
            .or_else(|| DiTConfig::preset(name).map(Self::DiT))
            .or_else(|| DiTConfig::preset(&format!("DiT-{}", name.strip_prefix("SiT-")?)).map(Self::SiT))
            .or_else(|| {
                let size = name.strip_prefix("SiT-LLaMA-")?.strip_suffix("/2")?;
                DiTConfig::preset(&format!("DiT-{size}/2")).map(Self::SiTLLaMA)
            })
            .with_context(|| format!("unknown model {name:?}; known: {}", PRESETS.join(", ")))
    }

    /// Parses a JSON object of constructor arguments with `"arch"`; an object that holds them
    /// under `"config"` (the fixtures' layout, `"arch"` beside it) is accepted too.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        if let Some(obj) = value.as_object_mut()
            && let Some(serde_json::Value::Object(inner)) = obj.get("config").cloned()
        {
            let arch = obj.get("arch").cloned().unwrap_or_else(|| "u-dit".into());
            let mut inner = inner;
            inner.entry("arch").or_insert(arch);
            value = serde_json::Value::Object(inner);
        }
        let cfg: Self = serde_json::from_value(value).context("not a model configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Self::UDiT(c) => c.validate(),
            Self::DiT(c) | Self::SiT(c) => c.validate(),
            Self::SiTLLaMA(c) => {
                c.validate()?;
                // VisionLLaMA's RoPE turns a quarter of each head's channels per grid axis.
                let hd = c.hidden_size / c.num_heads;
                anyhow::ensure!(hd % 4 == 0, "2D RoPE needs a head dim divisible by 4, this model has {hd}");
                Ok(())
            }
        }
    }

    /// Replaces the latent side (and keeps everything else).
    pub fn with_input_size(mut self, side: usize) -> Result<Self> {
        match &mut self {
            Self::UDiT(c) => c.input_size = side,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.input_size = side,
        }
        self.validate()?;
        Ok(self)
    }

    /// Replaces the number of classes (and keeps everything else).
    pub fn with_num_classes(mut self, n: usize) -> Result<Self> {
        match &mut self {
            Self::UDiT(c) => c.num_classes = n,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.num_classes = n,
        }
        self.validate()?;
        Ok(self)
    }

    pub fn input_size(&self) -> usize {
        match self {
            Self::UDiT(c) => c.input_size,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.input_size,
        }
    }

    pub fn in_channels(&self) -> usize {
        match self {
            Self::UDiT(c) => c.in_channels,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.in_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match self {
            Self::UDiT(c) => c.out_channels(),
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.out_channels(),
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Self::UDiT(c) => c.num_classes,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.num_classes,
        }
    }

    pub fn learn_sigma(&self) -> bool {
        match self {
            Self::UDiT(c) => c.learn_sigma,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.learn_sigma,
        }
    }

    pub fn class_dropout_prob(&self) -> f64 {
        match self {
            Self::UDiT(c) => c.class_dropout_prob,
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.class_dropout_prob,
        }
    }

    /// Leading output channels classifier-free guidance mixes.
    pub fn guided_channels(&self) -> usize {
        match self {
            Self::UDiT(c) => c.guided_channels(),
            Self::DiT(c) | Self::SiT(c) | Self::SiTLLaMA(c) => c.guided_channels(),
        }
    }

    /// Whether the model has a null class to guide with.
    pub fn has_null_class(&self) -> bool {
        self.class_dropout_prob() > 0.0
    }
}

/// Which form the re-parametrized FFN is built in (paper Sec. 3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnForm {
    /// Parallel branches, as trained.
    Train,
    /// Branches folded into single convs, for inference.
    Merged,
}

/// A denoiser of any family.
#[derive(Module, Debug)]
pub enum Denoiser {
    UDiT(UDiT),
    DiT(DiT),
    /// DiT's network returning its first C channels (SiT's `forward`).
    SiT(DiT),
    /// SiT-LLaMA, returning its first C channels as SiT.
    SiTLLaMA(SiTLLaMA),
}

impl Denoiser {
    /// A freshly initialised model.
    pub fn new(cfg: &ModelConfig, form: FfnForm, device: &Device) -> Self {
        match cfg {
            ModelConfig::UDiT(c) => Self::UDiT(UDiT::new(c, form, device)),
            ModelConfig::DiT(c) => Self::DiT(DiT::new(c, device)),
            ModelConfig::SiT(c) => Self::SiT(DiT::new(c, device)),
            ModelConfig::SiTLLaMA(c) => Self::SiTLLaMA(SiTLLaMA::new(c, device)),
        }
    }

    /// The same function with every re-parametrized FFN merged.
    pub fn merged(self) -> Self {
        match self {
            Self::UDiT(m) => Self::UDiT(m.merged()),
            other => other,
        }
    }

    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        self.forward_traced(x, t, y, &mut Trace::off())
    }

    pub fn forward_traced(&self, x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>, trace: &mut Trace) -> Tensor<4> {
        match self {
            Self::UDiT(m) => m.forward(x, t, y, trace),
            Self::DiT(m) => m.forward(x, t, y, trace),
            Self::SiT(m) => {
                let c = x.dims()[1];
                m.forward(x, t, y, trace).narrow(1, 0, c)
            }
            Self::SiTLLaMA(m) => {
                let c = x.dims()[1];
                m.forward(x, t, y, trace).narrow(1, 0, c)
            }
        }
    }

    /// Classifier-free guidance in one batched call, as the reference `forward_with_cfg`:
    /// the batch is [conditional half; null-class half]; the first half of `x` is used for
    /// both, and the output is mixed by [`mix_guidance`].
    pub fn forward_with_cfg(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        y: Tensor<1, Int>,
        scale: f64,
        guided: usize,
    ) -> Tensor<4> {
        let n = x.dims()[0];
        let half = x.narrow(0, 0, n / 2);
        mix_guidance(self.forward(Tensor::cat(vec![half.clone(), half], 0), t, y), scale, guided)
    }
}

/// The mixing of `forward_with_cfg` on an output of [conditional half; null-class half]: the
/// first `guided` channels get uncond + s (cond - uncond) in both halves; the other channels
/// (the rest of eps, then the variance) pass through.
pub fn mix_guidance(out: Tensor<4>, scale: f64, guided: usize) -> Tensor<4> {
    let [n, c, _, _] = out.dims();
    let eps = out.clone().narrow(1, 0, guided);
    let cond = eps.clone().narrow(0, 0, n / 2);
    let uncond = eps.narrow(0, n / 2, n / 2);
    let guided_eps = uncond.clone() + (cond - uncond) * scale;
    let eps = Tensor::cat(vec![guided_eps.clone(), guided_eps], 0);
    if guided == c { eps } else { Tensor::cat(vec![eps, out.narrow(1, guided, c - guided)], 1) }
}

pub(crate) fn default_cfg_channels(explicit: Option<usize>, in_channels: usize) -> usize {
    // The reference guides only 3 channels "for exact reproducibility"; its published
    // checkpoints are 4-channel latent models, so that is where the quirk applies.
    explicit.unwrap_or(if in_channels == 4 { 3 } else { in_channels })
}

/// What both families' configurations have, for the checks they share.
pub(crate) struct Common {
    pub hidden: usize,
    pub heads: usize,
    pub in_channels: usize,
    pub classes: usize,
    pub class_dropout_prob: f64,
    pub cfg_channels: Option<usize>,
    pub input_size: usize,
    /// Blocks in all.
    pub depth: usize,
    pub mlp_ratio: f64,
}

/// Largest sizes a configuration may ask for: far beyond any published model (DiT-XL/2 is
/// 1152 wide and 28 deep on 32x32 latents), small enough that shapes and costs cannot
/// overflow.
const MAX_WIDTH: usize = 1 << 16;
const MAX_DEPTH: usize = 4096;
const MAX_SIDE: usize = 1 << 14;
const MAX_CLASSES: usize = 1 << 24;
const MAX_MLP_RATIO: f64 = 64.0;

impl Common {
    /// Checks both families share: widths, heads, channels, classes, label dropout,
    /// guidance, and the sizes' limits.
    pub fn validate(&self) -> Result<()> {
        let (hidden, heads) = (self.hidden, self.heads);
        if hidden == 0 || heads == 0 || hidden % heads != 0 {
            bail!("hidden_size {hidden} must be a positive multiple of num_heads {heads}");
        }
        if self.in_channels == 0 || self.classes == 0 {
            bail!("in_channels and num_classes must be positive");
        }
        if !(0.0..1.0).contains(&self.class_dropout_prob) {
            bail!("class_dropout_prob must be in [0, 1)");
        }
        if let Some(g) = self.cfg_channels.filter(|&g| g == 0 || g > self.in_channels) {
            bail!("cfg_channels must be in 1..={}, got {g}", self.in_channels);
        }
        for (name, value, max) in [
            ("hidden_size", hidden, MAX_WIDTH),
            ("in_channels", self.in_channels, MAX_WIDTH),
            ("depth (blocks in all)", self.depth, MAX_DEPTH),
            ("input_size", self.input_size, MAX_SIDE),
            ("num_classes", self.classes, MAX_CLASSES),
        ] {
            if value > max {
                bail!("{name} {value} is beyond this implementation's limit of {max}");
            }
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= MAX_MLP_RATIO) {
            bail!("mlp_ratio must be in (0, {MAX_MLP_RATIO}], got {}", self.mlp_ratio);
        }
        Ok(())
    }
}

/// Defaults shared by the reference constructors (serde `default = "..."` functions).
pub mod defaults {
    pub fn input_size() -> usize {
        32
    }
    pub fn in_channels() -> usize {
        4
    }
    pub fn hidden_size() -> usize {
        1152
    }
    pub fn num_heads() -> usize {
        16
    }
    pub fn mlp_ratio() -> f64 {
        4.0
    }
    pub fn class_dropout_prob() -> f64 {
        0.1
    }
    pub fn num_classes() -> usize {
        1000
    }
    pub fn yes() -> bool {
        true
    }
}

/// The reference writes 0/1 for switches; JSON from other tools writes booleans.
pub(crate) mod flag {
    use serde::{Deserialize, Deserializer};

    pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Flag {
            Bool(bool),
            Int(i64),
        }
        match Flag::deserialize(d)? {
            Flag::Bool(b) => Ok(b),
            Flag::Int(0) => Ok(false),
            Flag::Int(1) => Ok(true),
            Flag::Int(other) => Err(serde::de::Error::custom(format!("expected 0 or 1, got {other}"))),
        }
    }
}

/// One line per architectural choice, for `udit info`.
pub fn describe(cfg: &ModelConfig) -> String {
    match cfg {
        ModelConfig::UDiT(c) => format!(
            "U-DiT  hidden {} (stages {}/{}/{}/{}/{}), heads {}, depth {:?} (block = 2 attention+FFN pairs)\n\
             latent {}x{}x{}, {} classes, learn_sigma {}, token downsampling {:?}\n\
             attention {}, position {}, downsampler {}{}, FFN {} (mlp_ratio {})",
            c.hidden_size,
            c.hidden_size,
            2 * c.hidden_size,
            4 * c.hidden_size,
            2 * c.hidden_size,
            2 * c.hidden_size,
            c.num_heads,
            c.depth,
            c.in_channels,
            c.input_size,
            c.input_size,
            c.num_classes,
            c.learn_sigma,
            c.down_factor,
            if c.attn_type.is_some() { "cosine (v2)" } else { "scaled dot product" },
            if c.posemb_type.is_some() { "RoPE2D" } else { "none" },
            c.downsampler,
            if c.down_shortcut { " + shortcut" } else { "" },
            match (c.ffn_type, c.rep) {
                (udit::FfnType::Basic, _) => "basic MLP",
                (udit::FfnType::Rep, true) => "depthwise-conv, re-parametrized",
                (udit::FfnType::Rep, false) => "depthwise-conv",
            },
            c.mlp_ratio
        ),
        ModelConfig::DiT(c) | ModelConfig::SiT(c) | ModelConfig::SiTLLaMA(c) => format!(
            "{}  hidden {}, depth {}, heads {}, patch {}, latent {}x{}x{}, {} classes, learn_sigma {}",
            match cfg {
                ModelConfig::SiT(_) => "SiT",
                ModelConfig::SiTLLaMA(_) => "SiT-LLaMA (2D RoPE attention, SwiGLU FFN)",
                _ => "DiT",
            },
            c.hidden_size,
            c.depth,
            c.num_heads,
            c.patch_size,
            c.in_channels,
            c.input_size,
            c.input_size,
            c.num_classes,
            c.learn_sigma
        ),
    }
}

/// The denoiser inputs `x`, `t`, `y` from a tensor file, checked against the model.
pub fn inputs_from(
    tensors: &StateDict,
    cfg: &ModelConfig,
    device: &Device,
) -> Result<(Tensor<4>, Tensor<1>, Tensor<1, Int>)> {
    let get = |k: &str| tensors.get(k).with_context(|| format!("the inputs have no tensor `{k}`"));
    let (x, t, y) = (get("x")?, get("t")?, get("y")?);
    let dims = x.shape().to_vec();
    let n = dims.first().copied().unwrap_or(0);
    if dims.len() != 4 || dims[1] != cfg.in_channels() || dims[2] != dims[3] || dims[2] == 0 {
        bail!("x must be [N, {}, S, S], got {dims:?}", cfg.in_channels());
    }
    if dims[2] != cfg.input_size() {
        bail!("x is {}x{} but the model's input_size is {} (use --latent-size)", dims[2], dims[3], cfg.input_size());
    }
    if t.shape().to_vec() != [n] || y.shape().to_vec() != [n] {
        bail!("t and y must have shape [{n}], got {:?} and {:?}", t.shape().to_vec(), y.shape().to_vec());
    }
    let rows = cfg.num_classes() + usize::from(cfg.has_null_class());
    let labels = y
        .as_slice::<f32>()
        .map_err(|e| anyhow::anyhow!("y: {e:?}"))?
        .iter()
        .map(|&v| {
            if v.fract() != 0.0 || v < 0.0 || v as usize >= rows {
                bail!("label {v} is not a class index in 0..{rows}");
            }
            Ok(v as i64)
        })
        .collect::<Result<Vec<i64>>>()?;
    Ok((
        Tensor::from_data(x.clone(), device),
        Tensor::from_data(t.clone(), device),
        Tensor::from_data(burn::tensor::TensorData::new(labels, [n]), device),
    ))
}
