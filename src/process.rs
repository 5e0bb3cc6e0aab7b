//! Which process a model was trained with, and so how it samples and what loss trains it:
//! DiT's Gaussian diffusion ([`crate::diffusion`]) or SiT's stochastic interpolant
//! ([`crate::transport`]). The networks are the same either way; only the time they are
//! called with (0..999 or [0, 1]) and the meaning of their output differ.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::diffusion::GaussianDiffusion;
use crate::model::ModelConfig;
use crate::transport::{LossWeight, PathType, Prediction, Transport};

/// Metadata key under which saved safetensors carry the process (JSON of [`ProcessSpec`]).
pub const PROCESS_METADATA_KEY: &str = "udit_process";

/// A process as stored with weights and written in recipes: `{"process": "diffusion"}` or
/// `{"process": "interpolant", "path_type": "Linear", "prediction": "velocity", ...}` with
/// the arguments of SiT's `create_transport`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "process", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProcessSpec {
    /// DiT's: 1000 linear betas, eps prediction with learned variance.
    Diffusion,
    /// SiT's interpolant.
    Interpolant {
        #[serde(default = "linear")]
        path_type: String,
        #[serde(default = "velocity")]
        prediction: String,
        /// `none`, `velocity` or `likelihood` (score and noise predictions only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        loss_weight: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        train_eps: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample_eps: Option<f64>,
    },
}

fn linear() -> String {
    "Linear".into()
}
fn velocity() -> String {
    "velocity".into()
}

impl ProcessSpec {
    /// SiT's default: the Linear path with velocity prediction.
    pub fn sit() -> Self {
        Self::Diffusion.overridden(Some("interpolant"), None, None, None).expect("SiT's process")
    }

    /// The process a configuration trains with unless told otherwise: the interpolant for SiT
    /// and SiT-LLaMA, Gaussian diffusion for DiT and U-DiT (as their papers).
    pub fn default_for(config: &ModelConfig) -> Self {
        match config {
            ModelConfig::SiT(_) | ModelConfig::SiTLLaMA(_) => Self::sit(),
            _ => Self::Diffusion,
        }
    }

    /// The process stored with weights (safetensors metadata [`PROCESS_METADATA_KEY`]), else
    /// the configuration's default.
    pub fn of_weights(metadata: &std::collections::HashMap<String, String>, config: &ModelConfig) -> Result<Self> {
        let stored = metadata.get(PROCESS_METADATA_KEY).map(|json| Self::from_json(json)).transpose();
        Ok(stored
            .context("the process stored with the weights is invalid")?
            .unwrap_or_else(|| Self::default_for(config)))
    }

    /// This process with SiT's flags over it: `process` (`diffusion` or `interpolant`) names
    /// the kind; a path, prediction or loss weight makes it an interpolant with those.
    pub fn overridden(
        self,
        process: Option<&str>,
        path_type: Option<&str>,
        prediction: Option<&str>,
        loss_weight: Option<&str>,
    ) -> Result<Self> {
        let interpolant_fields = path_type.is_some() || prediction.is_some() || loss_weight.is_some();
        let kind = match (process, &self) {
            (Some(kind), _) => kind,
            (None, Self::Diffusion) if !interpolant_fields => "diffusion",
            (None, _) => "interpolant",
        };
        let (p, v, w, train_eps, sample_eps) = match (kind, self) {
            ("diffusion", _) if interpolant_fields => {
                bail!("--path-type, --prediction and --loss-weight describe an interpolant, not diffusion")
            }
            ("diffusion", _) => return Ok(Self::Diffusion),
            ("interpolant", Self::Interpolant { path_type, prediction, loss_weight, train_eps, sample_eps }) => {
                (path_type, prediction, loss_weight, train_eps, sample_eps)
            }
            ("interpolant", Self::Diffusion) => (linear(), velocity(), None, None, None),
            (other, _) => bail!("unknown process {other:?}: use diffusion or interpolant"),
        };
        let spec = Self::Interpolant {
            path_type: path_type.map_or(p, str::to_string),
            prediction: prediction.map_or(v, str::to_string),
            loss_weight: loss_weight.map(str::to_string).or(w),
            train_eps,
            sample_eps,
        };
        spec.process()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(text).context("not a process (\"process\": diffusion or interpolant)")?;
        spec.process()?;
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a process serializes")
    }

    /// The process itself, or why its arguments are wrong.
    pub fn process(&self) -> Result<Process> {
        Ok(match self {
            Self::Diffusion => Process::Diffusion(GaussianDiffusion::reference()),
            Self::Interpolant { path_type, prediction, loss_weight, train_eps, sample_eps } => {
                let weight = loss_weight.as_deref().map(str::parse).transpose()?.unwrap_or(LossWeight::None);
                for eps in [train_eps, sample_eps].into_iter().flatten() {
                    anyhow::ensure!(
                        (0.0..0.5).contains(eps),
                        "train_eps and sample_eps must be in [0, 0.5), got {eps}"
                    );
                }
                Process::Interpolant(Transport::new(
                    path_type.parse::<PathType>()?,
                    prediction.parse::<Prediction>()?,
                    weight,
                    *train_eps,
                    *sample_eps,
                ))
            }
        })
    }

    /// `diffusion` or `interpolant`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Diffusion => "diffusion",
            Self::Interpolant { .. } => "interpolant",
        }
    }

    /// For people: "Gaussian diffusion" or "interpolant (Linear path, velocity)".
    pub fn describe(&self) -> String {
        match self {
            Self::Diffusion => "Gaussian diffusion (1000 linear betas, eps and learned variance)".into(),
            Self::Interpolant { path_type, prediction, .. } => {
                format!("interpolant ({path_type} path, {prediction} prediction, t in [0, 1])")
            }
        }
    }
}

/// A process ready to sample and train with.
#[derive(Clone, Debug)]
pub enum Process {
    Diffusion(GaussianDiffusion),
    Interpolant(Transport),
}

impl Process {
    /// The noise level sigma (EDM's: x / alpha = data + sigma noise) at model time `t`, the
    /// unit of the guidance interval in both processes.
    pub fn sigma_at(&self, t: f64) -> f64 {
        match self {
            Self::Diffusion(d) => d.sigma_at(t),
            Self::Interpolant(transport) => transport.path.sigma(t).0 / transport.path.alpha(t).0,
        }
    }
}
