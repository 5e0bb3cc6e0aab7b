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

/// Runs `f` on one of rayon's worker threads and waits for it (a training step, a batch of
/// samples). Every parallel op of the CPU kernels inside `f` then starts from a worker, which
/// runs its share in place while the others steal the rest; called from another thread, each op is handed to the pool and
/// waited for, a sleep and a wake-up per op that small models feel (the bundled
/// configuration's training step 342-352 ms outside, 318-321 ms inside). `f` must not wait
/// for other work on the pool (a worker blocked in it would be one fewer to do that work).
/// `f` runs in the caller's [`precision`] (which is per thread).
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let caller = precision::current();
    rayon::scope(|_| {
        let _autocast = precision::autocast(caller);
        f()
    })
}

/// How many shards [`on_cores`] splits `count` items into: one a core on the CPU (at most
/// one an item), one under CUDA.
pub fn core_shards(count: usize) -> usize {
    if cfg!(feature = "cuda") { 1 } else { rayon::current_num_threads().min(count).max(1) }
}

/// Splits items `0..count` into `shards` contiguous ranges (shard i takes
/// `i * count / shards..(i + 1) * count / shards`) and runs `f` on each at once, each alone
/// on a core: on a one-thread rayon pool of its own (one per worker of the global pool, made
/// once), so that every parallel op inside runs in place, with no hand-offs between threads.
/// The results come back in shard order. For work that splits into independent shards too
/// small to share out op by op (a small model's training step: the second core sat idle a
/// third of DiT-64/2's, in sequential stretches and thread hand-offs). `f` runs in the
/// caller's [`precision`]. `shards` is at most [`core_shards`]`(count)`.
pub fn on_cores<R: Send>(count: usize, shards: usize, f: impl Fn(std::ops::Range<usize>) -> R + Sync) -> Vec<R> {
    static CORES: std::sync::OnceLock<Vec<rayon::ThreadPool>> = std::sync::OnceLock::new();
    let cores = CORES.get_or_init(|| {
        (0..rayon::current_num_threads())
            .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a one-thread pool"))
            .collect()
    });
    assert!(shards <= cores.len().min(count), "{shards} shards of {count} items for {} cores", cores.len());
    let caller = precision::current();
    let (f, bound) = (&f, |i: usize| i * count / shards);
    std::thread::scope(|scope| {
        let shards: Vec<_> = cores[..shards]
            .iter()
            .enumerate()
            .map(|(i, core)| {
                scope.spawn(move || {
                    core.install(|| {
                        let _autocast = precision::autocast(caller);
                        f(bound(i)..bound(i + 1))
                    })
                })
            })
            .collect();
        shards.into_iter().map(|s| s.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// Tells mimalloc (the binary's allocator) never to return freed memory to the system: a
/// training step frees and allocates the same large tensor buffers over and over, and with
/// mimalloc's default (purge after 10 ms) the next step pays page faults to map and zero them
/// again (DiT-B/2's step 4.8 s without purging, 6.4 s with). Call before any threads start.
pub fn tune_allocator() {
    // `mi_option_purge_delay` of mimalloc v3's `mi_option_e` (the version libmimalloc-sys
    // 0.1.49 builds); -1: no purging at all.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one option of the allocator; no allocation is in flight.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
