//! Every random stream of the project, in one place.
//!
//! All randomness is ChaCha8 keyed by a seed, read from a stream chosen here. A draw is then a
//! pure function of (seed, stream): it does not depend on batch size, sharding, thread count
//! or where a run was resumed, which is what makes sampling shardable and training resumable
//! bit for bit. Each kind of draw owns a block of 2^40 stream ids, so no two collide.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Stream ids per kind of draw.
const BLOCK: u64 = 1 << 40;
/// Key of the random-class streams: the seed xored with ASCII "labels".
const LABELS_KEY: u64 = 0x6c61_6265_6c73;

/// One random stream: what it draws, for which sample, step or epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Sampling: the initial noise and the per-step noise of sample `index`.
    SamplingNoise { index: u64 },
    /// Sampling: the class of sample `index` under `--class random`.
    RandomClass { index: u64 },
    /// Training loader: the sample order of epoch `epoch`.
    Order { epoch: u64 },
    /// Training loader: the horizontal flips of step `step`'s batch.
    Flips { step: u64 },
    /// Training step: sample `index` of the run (step x global batch + position): its
    /// timestep, label dropout, diffusion noise and VAE posterior noise, in that order.
    TrainSample { index: u64 },
    /// Latent extraction: the VAE posterior noise of image `index`.
    Posterior { index: u64 },
    /// The offline meter's classifier: the batch order of all its epochs.
    ClassifierOrder,
    /// Likelihood: the Hutchinson probes of data sample `index`.
    Probes { index: u64 },
    /// Weight initialisation of a model built under [`seeded`], every tensor in turn.
    Init,
}

impl Stream {
    /// The (key, stream id) this stream reads under `seed`.
    pub fn id(self, seed: u64) -> (u64, u64) {
        match self {
            Self::SamplingNoise { index } => (seed, index),
            Self::RandomClass { index } => (seed ^ LABELS_KEY, index),
            Self::Order { epoch } => (seed, BLOCK + epoch),
            Self::Flips { step } => (seed, 2 * BLOCK + step),
            Self::TrainSample { index } => (seed, 3 * BLOCK + index),
            Self::Posterior { index } => (seed, 4 * BLOCK + index),
            Self::ClassifierOrder => (seed, 5 * BLOCK),
            Self::Probes { index } => (seed, 6 * BLOCK + index),
            Self::Init => (seed, 7 * BLOCK),
        }
    }

    /// The generator of this stream under `seed`.
    pub fn rng(self, seed: u64) -> ChaCha8Rng {
        let (key, stream) = self.id(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        rng.set_stream(stream);
        rng
    }
}

thread_local! {
    /// The generator of weight initialisation while [`seeded`] runs on this thread.
    static INIT: std::cell::RefCell<Option<ChaCha8Rng>> = const { std::cell::RefCell::new(None) };
}

/// Runs `init` with every weight initialisation on this thread drawing from [`Stream::Init`]
/// under `seed`, so that a seed gives the same weights whatever other threads draw (burn's
/// own generator is process-wide: a model loaded on another thread while this one was built
/// used to take draws from between this one's).
pub fn seeded<R>(seed: u64, init: impl FnOnce() -> R) -> R {
    /// Puts the previous generator back, also when `init` panics.
    struct Restore(Option<ChaCha8Rng>);
    impl Drop for Restore {
        fn drop(&mut self) {
            INIT.with(|g| *g.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(INIT.with(|g| g.replace(Some(Stream::Init.rng(seed)))));
    init()
}

/// A distribution of initial weights.
#[derive(Clone, Copy, Debug)]
pub enum InitDraw {
    /// Uniform in (-a, a).
    Uniform(f64),
    /// Normal(0, std).
    Normal(f64),
}

impl InitDraw {
    /// The same distribution for burn's generator.
    pub fn distribution(self) -> burn::tensor::Distribution {
        match self {
            Self::Uniform(a) => burn::tensor::Distribution::Uniform(-a, a),
            Self::Normal(std) => burn::tensor::Distribution::Normal(0.0, std),
        }
    }
}

/// `count` initial weights from [`seeded`]'s generator, or `None` outside [`seeded`] (a model
/// built to be loaded, whose weights are then overwritten).
pub fn init_draws(count: usize, draw: InitDraw) -> Option<Vec<f32>> {
    INIT.with(|g| {
        let mut g = g.borrow_mut();
        let rng = g.as_mut()?;
        let mut v = Vec::with_capacity(count);
        match draw {
            InitDraw::Uniform(a) => v.extend((0..count).map(|_| (a * (2.0 * unit_uniform(rng) - 1.0)) as f32)),
            InitDraw::Normal(std) => {
                push_normals(rng, count, &mut v);
                v.iter_mut().for_each(|x| *x = (*x as f64 * std) as f32);
            }
        }
        Some(v)
    })
}

/// A uniform integer in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for any n
/// this project meets).
pub fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((rng.next_u64() as u128 * n as u128) >> 64) as u64
}

/// A uniform draw in (0, 1) from the top 53 bits.
pub fn unit_uniform(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Appends `count` standard normal draws from `rng` to `out` (Box-Muller on 53-bit uniforms).
pub fn push_normals(rng: &mut ChaCha8Rng, count: usize, out: &mut Vec<f32>) {
    let end = out.len() + count;
    for _ in 0..count.div_ceil(2) {
        let (u1, u2) = (unit_uniform(rng), unit_uniform(rng));
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(end);
}

/// Gaussian noise with one independent stream per sample index: sample i draws the same
/// numbers whatever batch it is in, so runs can be resumed and sharded.
pub struct NoiseStreams {
    rngs: Vec<ChaCha8Rng>,
    shape: [usize; 3],
}

impl NoiseStreams {
    /// Streams for samples `first..first + count` of a run seeded with `seed`.
    pub fn new(seed: u64, first: usize, count: usize, shape: [usize; 3]) -> Self {
        let rngs = (first..first + count).map(|i| Stream::SamplingNoise { index: i as u64 }.rng(seed)).collect();
        Self { rngs, shape }
    }

    /// The probe streams ([`Stream::Probes`]) of data samples `first..first + count`.
    pub fn probes(seed: u64, first: usize, count: usize, shape: [usize; 3]) -> Self {
        let rngs = (first..first + count).map(|i| Stream::Probes { index: i as u64 }.rng(seed)).collect();
        Self { rngs, shape }
    }

    /// The next `[count, C, H, W]` Rademacher draw: +1 or -1 with probability 1/2 each, one
    /// bit of the stream per value (Hutchinson's probes).
    pub fn next_signs(&mut self, device: &Device) -> Tensor<4> {
        let per = self.shape.iter().product::<usize>();
        let mut values = Vec::with_capacity(self.rngs.len() * per);
        for rng in &mut self.rngs {
            for chunk in 0..per.div_ceil(64) {
                let bits = rng.next_u64();
                let n = (per - chunk * 64).min(64);
                values.extend((0..n).map(|b| if bits >> b & 1 == 1 { 1.0f32 } else { -1.0 }));
            }
        }
        let [c, h, w] = self.shape;
        Tensor::from_data(TensorData::new(values, [self.rngs.len(), c, h, w]), device)
    }

    /// The next `[count, C, H, W]` standard normal draw.
    pub fn next(&mut self, device: &Device) -> Tensor<4> {
        let per = self.shape.iter().product::<usize>();
        let mut values = Vec::with_capacity(self.rngs.len() * per);
        for rng in &mut self.rngs {
            push_normals(rng, per, &mut values);
        }
        let [c, h, w] = self.shape;
        Tensor::from_data(TensorData::new(values, [self.rngs.len(), c, h, w]), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of stream at the edges of its index range, under one seed: all distinct.
    #[test]
    fn no_two_streams_collide() {
        let last = BLOCK - 1;
        let streams: Vec<Stream> = [0, 1, last]
            .into_iter()
            .flat_map(|i| {
                [
                    Stream::SamplingNoise { index: i },
                    Stream::RandomClass { index: i },
                    Stream::Order { epoch: i },
                    Stream::Flips { step: i },
                    Stream::TrainSample { index: i },
                    Stream::Posterior { index: i },
                    Stream::Probes { index: i },
                ]
            })
            .chain([Stream::ClassifierOrder])
            .collect();
        for seed in [0, 7, LABELS_KEY] {
            let ids: std::collections::HashSet<(u64, u64)> = streams.iter().map(|s| s.id(seed)).collect();
            assert_eq!(ids.len(), streams.len(), "seed {seed}");
        }
        let first = |s: Stream| s.rng(3).next_u64();
        assert_ne!(first(Stream::SamplingNoise { index: 0 }), first(Stream::RandomClass { index: 0 }));
    }
}
