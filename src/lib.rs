//! U-DiT in Rust: the U-shaped diffusion transformers of Tian et al. (NeurIPS 2024) and the
//! DiT baseline, loadable from the reference PyTorch checkpoints.

pub mod bench;
pub mod checkpoint;
pub mod cost;
pub mod model;

/// The device tensors run on: burn's CPU `flex` backend, or CUDA with `--features cuda`.
pub fn default_device() -> burn::prelude::Device {
    #[cfg(feature = "cuda")]
    {
        burn::prelude::Device::cuda(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        burn::prelude::Device::flex()
    }
}
