//! Which model a command means: a preset name, a configuration file, or the configuration
//! stored with the weights; optionally at another latent size.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::ModelConfig;

/// Which model: a preset name or a JSON configuration file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ModelChoice {
    /// Preset: U-DiT-{S,B,L}, DiT-{S,B,L,XL}/{2,4,8}, SiT-{S,B,L,XL}/{2,4,8}, SiT-LLaMA-{S,B,L,XL}/2.
    #[arg(long, conflicts_with = "config")]
    pub model: Option<String>,
    /// JSON object of reference constructor arguments plus "arch": "u-dit", "dit", "sit" or "sit-llama".
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Latent side (overrides the configuration's input_size).
    #[arg(long)]
    pub latent_size: Option<usize>,
}

impl ModelChoice {
    /// Whether a model was named (preset or file).
    pub fn is_given(&self) -> bool {
        self.model.is_some() || self.config.is_some()
    }

    /// The configuration asked for, or the one stored with the weights, or an error.
    pub fn resolve(&self, stored: Option<&ModelConfig>) -> Result<ModelConfig> {
        let cfg = match (&self.model, &self.config, stored) {
            (Some(name), _, _) => ModelConfig::preset(name)?,
            (None, Some(path), _) => ModelConfig::from_file(path)?,
            (None, None, Some(cfg)) => cfg.clone(),
            (None, None, None) => bail!("say which model: --model NAME or --config FILE.json (the weights carry none)"),
        };
        match self.latent_size {
            Some(side) => cfg.with_input_size(side),
            None => Ok(cfg),
        }
    }
}
