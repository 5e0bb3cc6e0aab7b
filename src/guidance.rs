//! Classifier-free guidance of a sampling run: its scale, the noise levels where it applies
//! (the guidance interval of Kynkäänniemi et al. 2024, "Applying guidance in a limited interval
//! improves sample and distribution quality in diffusion models") and the output channels it
//! mixes; the denoiser a sampler calls under it; and the network evaluations that costs.

use anyhow::{Context, Result, bail};
use burn::prelude::*;

use crate::model::mix_guidance;
use crate::process::Process;

/// Where guidance applies: the noise levels sigma = sqrt((1 - abar) / abar) of the VP process
/// (EDM's sigma, the paper's unit; sigma_t / alpha_t on an interpolant's path) in (lo, hi].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GuidanceInterval {
    /// At every step (the reference).
    Everywhere,
    /// Only at lo < sigma <= hi; elsewhere the conditional batch alone.
    Between(f64, f64),
}

/// The paper's interval for DiT-XL/2 (its Table 1, with guidance weight 2.5 there), as
/// `--guidance-interval` takes it: DiT's diffusion process and latent space, which U-DiT shares.
/// Its ImageNet-512 EDM2-XXL interval is (0.28, 1.61], its Stable Diffusion XL one (0.28, 5.42].
pub const PAPER_INTERVAL: &str = "0.34,1.02";

impl GuidanceInterval {
    /// `none` (or `off`: guidance at every step) or `LO,HI` (`inf` allowed), 0 <= LO <= HI;
    /// LO = HI is empty: no guidance.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text == "none" || text == "off" {
            return Ok(Self::Everywhere);
        }
        let parse = |s: &str| s.trim().parse::<f64>().ok().filter(|v| !v.is_nan());
        let (lo, hi) = text
            .split_once(',')
            .and_then(|(lo, hi)| Some((parse(lo)?, parse(hi)?)))
            .with_context(|| format!("a guidance interval is LO,HI (noise levels sigma) or none, got {text:?}"))?;
        if lo < 0.0 || lo > hi {
            bail!("a guidance interval LO,HI needs 0 <= LO <= HI, got {text:?}");
        }
        Ok(Self::Between(lo, hi))
    }

    /// For people: "every step" or "(lo, hi]".
    pub fn describe(&self) -> String {
        match self {
            Self::Everywhere => "every step".to_string(),
            Self::Between(lo, hi) => format!("({lo}, {hi}]"),
        }
    }

    pub fn contains(&self, sigma: f64) -> bool {
        match *self {
            Self::Everywhere => true,
            Self::Between(lo, hi) => lo < sigma && sigma <= hi,
        }
    }
}

/// As `--guidance-interval` takes it: `none` or `LO,HI`.
impl std::fmt::Display for GuidanceInterval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Everywhere => f.write_str("none"),
            Self::Between(lo, hi) => write!(f, "{lo},{hi}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Guidance {
    /// The guidance scale; 1 means no guidance.
    pub scale: f64,
    pub interval: GuidanceInterval,
    /// How many leading output channels it mixes (None: the model configuration's
    /// `cfg_channels`).
    pub channels: Option<usize>,
}

impl Guidance {
    /// The reference's: `scale` at every step, on the configuration's channels.
    pub fn everywhere(scale: f64) -> Self {
        Self { scale, interval: GuidanceInterval::Everywhere, channels: None }
    }

    /// Whether a call at model time `t` of `process` runs the guided (doubled) batch.
    pub fn applies_at(&self, process: &Process, t: f32) -> bool {
        self.scale > 1.0 && self.interval.contains(process.sigma_at(t as f64))
    }

    /// The network evaluations per image of calls at model times `times`.
    pub fn evaluations(&self, times: &[f64], process: &Process) -> Evaluations {
        let guided = times.iter().filter(|&&t| self.applies_at(process, t as f32)).count();
        Evaluations { calls: times.len(), guided }
    }
}

/// `all` or a channel count: how many leading output channels guidance mixes.
pub fn parse_cfg_channels(text: &str, in_channels: usize) -> Result<usize> {
    match text.trim() {
        "all" => Ok(in_channels),
        n => n.parse().ok().with_context(|| format!("guided channels are a count or all, got {text:?}")),
    }
}

/// What a sampling run costs per image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evaluations {
    /// Denoiser calls (each one network pass over the batch, or two where guided).
    pub calls: usize,
    /// Of them, the guided ones: the doubled batch [conditional; null class].
    pub guided: usize,
}

impl Evaluations {
    /// Network evaluations per image, NFE: a guided call counts 2, since it runs the network on
    /// twice the batch.
    pub fn nfe(&self) -> usize {
        self.calls + self.guided
    }
}

/// The network a [`GuidedDenoiser`] calls: (x_t, model times, labels) -> output.
pub type Network<'a> = dyn FnMut(Tensor<4>, Tensor<1>, Tensor<1, Int>) -> Tensor<4> + 'a;

/// The denoiser a sampler calls under a guidance setting: the network on the conditional batch,
/// or, where guidance applies, on [x; x] with labels [y; null], mixed as the reference's
/// `forward_with_cfg`.
pub struct GuidedDenoiser<'a> {
    pub network: &'a mut Network<'a>,
    pub labels: Tensor<1, Int>,
    /// The null class's label (the number of classes).
    pub null_class: usize,
    pub guidance: &'a Guidance,
    /// Channels guidance mixes, resolved against the model.
    pub channels: usize,
    /// The model's process, which maps model times to noise levels.
    pub process: &'a Process,
}

impl GuidedDenoiser<'_> {
    pub fn call(&mut self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        // Guidance at every step needs no model time; otherwise read it (one value: the whole
        // batch shares it), which on a GPU is a device-to-host copy per call.
        let guided = match self.guidance.interval {
            GuidanceInterval::Everywhere => self.guidance.scale > 1.0,
            GuidanceInterval::Between(..) => {
                let time = t.clone().into_data().convert::<f32>().as_slice::<f32>().expect("f32")[0];
                self.guidance.applies_at(self.process, time)
            }
        };
        if !guided {
            return (self.network)(x, t, self.labels.clone());
        }
        let n = x.dims()[0];
        let null = Tensor::<1, Int>::full([n], self.null_class as i64, &x.device());
        let x2 = Tensor::cat(vec![x.clone(), x], 0);
        let t2 = Tensor::cat(vec![t.clone(), t], 0);
        let y2 = Tensor::cat(vec![self.labels.clone(), null], 0);
        mix_guidance((self.network)(x2, t2, y2), self.guidance.scale, self.channels).narrow(0, 0, n)
    }
}
