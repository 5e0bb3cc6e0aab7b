//! U-DiT in Rust: the U-shaped diffusion transformers of Tian et al. (NeurIPS 2024) and the
//! DiT baseline, loadable from the reference PyTorch checkpoints.

pub mod ablate;
pub mod bench;
pub mod checkpoint;
pub mod classes;
pub mod codec;
pub mod commands;
pub mod cost;
pub mod data;
pub mod diffusion;
pub mod eval;
pub mod guidance;
pub mod hub;
pub mod io;
pub mod kernels;
pub mod model;
pub mod precision;
pub mod process;
pub mod progress;
pub mod rng;
pub mod sample;
pub mod serve;
pub mod sweep;
pub mod train;
pub mod transport;
pub mod vae;

/// The U-DiT trained on Fashion-MNIST that ships with the project (`assets/README.md`).
pub const BUNDLED_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/fashion-mnist-udit.safetensors");

/// The offline meter's classifier that ships with the project (`assets/README.md`).
pub const BUNDLED_METER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/meter-classifier.safetensors");

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

/// The first `n` devices, for data-parallel training: CUDA GPUs 0..n with `--features cuda`;
/// the CPU backend has one device.
pub fn devices(n: usize) -> anyhow::Result<Vec<burn::prelude::Device>> {
    if n == 0 {
        anyhow::bail!("training needs at least one device");
    }
    #[cfg(feature = "cuda")]
    {
        Ok((0..n).map(burn::prelude::Device::cuda).collect())
    }
    #[cfg(not(feature = "cuda"))]
    {
        if n > 1 {
            anyhow::bail!("{n} devices: data-parallel training needs a build with --features cuda");
        }
        Ok(vec![default_device()])
    }
}

/// Makes glibc keep freed buffers for reuse: by default every tensor over 32 MiB (and,
/// after the dynamic threshold adapts, smaller ones) is unmapped when dropped, and the next
/// op pays page faults to map and zero it again. The same holds for the per-thread arenas
/// (64 MiB heaps that glibc unmaps as they empty, whatever the thresholds), where rayon's
/// threads allocate the kernels' outputs: with them the kernel spent a sixth of a U-DiT-S
/// training step zeroing pages (`perf`: `clear_page_erms` 17.6%, 1.5% with one arena). So
/// every thread shares the main arena; a step's buffers are few and large, so its lock is
/// not contended. Costs nothing elsewhere.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
