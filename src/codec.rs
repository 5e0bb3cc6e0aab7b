//! Codecs: how images map to the model's input space and back. The SD VAE for latent
//! diffusion (the paper's setting), pixel space, or a lossless 2x space-to-depth that lets a
//! 4-channel model train on 1-channel images.

use anyhow::{Result, bail};
use burn::prelude::*;

use crate::model::layers::{pixel_shuffle, pixel_unshuffle};
use crate::vae::Vae;

/// The VAE of the paper and of DiT (ft-EMA), downloaded on first use.
pub const SD_VAE: &str = "hf://stabilityai/sd-vae-ft-ema";

/// The codec of a model: the one asked for, else the one stored with its weights, else the
/// SD VAE for 4-channel models (the paper's latents) and pixel space for any other.
pub fn codec_spec(asked: Option<&str>, stored: Option<&str>, in_channels: usize) -> String {
    asked.or(stored).unwrap_or(if in_channels == 4 { SD_VAE } else { "none" }).to_string()
}

/// How pixels map to the model's input space.
pub enum Codec {
    /// The latent-diffusion autoencoder; model space is its latents times `scaling_factor`.
    Vae(Box<Vae>),
    /// Pixel space.
    None,
    /// Lossless 2x space-to-depth: a 1x32x32 image is a 4x16x16 model input.
    Unshuffle2,
}

impl Codec {
    /// `none`, `unshuffle2`, or a VAE directory (local or `hf://OWNER/REPO`).
    pub fn open(spec: &str, device: &Device) -> Result<Self> {
        Ok(match spec {
            "none" => Self::None,
            "unshuffle2" => Self::Unshuffle2,
            path => {
                let dir = crate::hub::resolve(path, &["config.json", "diffusion_pytorch_model.safetensors"])?;
                Self::Vae(Box::new(Vae::load(&dir, device)?))
            }
        })
    }

    /// Image side and channels for a model input of `channels` x `side` x `side`.
    pub fn image_shape(&self, channels: usize, side: usize) -> Result<(usize, usize)> {
        match self {
            Self::Vae(v) => {
                if v.config.latent_channels != channels {
                    bail!("the VAE has {} latent channels but the model takes {channels}", v.config.latent_channels);
                }
                Ok((v.config.out_channels, side * v.config.downscale()))
            }
            Self::None => Ok((channels, side)),
            Self::Unshuffle2 if channels % 4 == 0 => Ok((channels / 4, side * 2)),
            Self::Unshuffle2 => bail!("unshuffle2 needs model channels divisible by 4, got {channels}"),
        }
    }

    /// Model space -> pixels in about [-1, 1].
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Vae(v) => v.model.decode(z / v.config.scaling_factor),
            Self::None => z,
            Self::Unshuffle2 => pixel_shuffle(z, 2),
        }
    }

    /// Pixels in [-1, 1] -> model space (for the VAE: a posterior sample from `noise`).
    pub fn encode(&self, x: Tensor<4>, noise: impl FnOnce(&Tensor<4>) -> Tensor<4>) -> Tensor<4> {
        match self {
            Self::Vae(v) => {
                let posterior = v.model.encode(x);
                let eps = noise(&posterior.mean);
                posterior.sample(eps) * v.config.scaling_factor
            }
            Self::None => x,
            Self::Unshuffle2 => pixel_unshuffle(x, 2),
        }
    }
}
