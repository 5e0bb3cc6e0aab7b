//! Training data: datasets that hand out one labelled sample at a time, and a loader that
//! assembles batches in a background thread.
//!
//! The batch of step `s` is a pure function of the seed and `s` (which samples, which are
//! mirrored), so a resumed run reads exactly the batches the uninterrupted run would have.

pub mod fashion_mnist;
pub mod image_folder;
pub mod latents;

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Result, bail};
use rand_core::RngCore;
use rayon::prelude::*;

use crate::rng::{Stream, below};

/// What a dataset's samples are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Pixels in [-1, 1]; the training codec turns them into model inputs.
    Pixels,
    /// Model inputs already (precomputed latents).
    Model,
}

/// A labelled training set, read one sample at a time from any thread.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn num_classes(&self) -> usize;
    /// Names of the classes in label order, where the dataset has them (ImageNet's for
    /// 1000 classes by default).
    fn class_names(&self) -> crate::classes::ClassNames {
        crate::classes::ClassNames::for_model(&Default::default(), self.num_classes()).unwrap_or_default()
    }
    /// `[C, H, W]` of every sample.
    fn shape(&self) -> [usize; 3];
    fn space(&self) -> Space;
    /// Writes sample `index` (mirrored left-right when `flip`) into `out`; returns its label.
    fn read(&self, index: usize, flip: bool, out: &mut [f32]) -> Result<usize>;
}

/// A batch in host memory, `[N, C, H, W]` row-major.
pub struct HostBatch {
    pub x: Vec<f32>,
    pub labels: Vec<i64>,
    pub shape: [usize; 4],
}

/// Dataset positions of the `batch` samples of step `step`: epoch `e` visits the samples in
/// a seeded random order, and step `s` takes positions `s * batch .. (s + 1) * batch` of the
/// epochs laid end to end.
pub fn batch_indices(len: usize, seed: u64, step: u64, batch: usize) -> Vec<usize> {
    let first = step as usize * batch;
    let mut out = Vec::with_capacity(batch);
    let mut epoch = usize::MAX;
    let mut order = Vec::new();
    for pos in first..first + batch {
        if pos / len != epoch {
            epoch = pos / len;
            order = permutation(len, seed, epoch as u64);
        }
        out.push(order[pos % len]);
    }
    out
}

/// A Fisher-Yates shuffle of `0..len` from the seed's stream for `epoch`.
fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Stream::Order { epoch }.rng(seed);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, below(&mut rng, i as u64 + 1) as usize);
    }
    order
}

/// Reads the batch of `step`: the samples in parallel, each mirrored with probability 1/2
/// when `flip` is on.
pub fn read_batch(data: &dyn Dataset, seed: u64, step: u64, batch: usize, flip: bool) -> Result<HostBatch> {
    let indices = batch_indices(data.len(), seed, step, batch);
    let mut rng = Stream::Flips { step }.rng(seed);
    let flips: Vec<bool> = indices.iter().map(|_| flip && rng.next_u32() & 1 == 1).collect();
    let [c, h, w] = data.shape();
    let per = c * h * w;
    let mut x = vec![0f32; batch * per];
    let labels = x
        .par_chunks_mut(per)
        .zip(indices.par_iter().zip(flips.par_iter()))
        .map(|(out, (&i, &f))| data.read(i, f, out).map(|l| l as i64))
        .collect::<Result<Vec<_>>>()?;
    Ok(HostBatch { x, labels, shape: [batch, c, h, w] })
}

/// Prepares the batches of steps `first, first + 1, ...` in a background thread, two ahead
/// of the model, so that decoding (JPEG, disk reads) overlaps the training step.
pub struct Loader {
    rx: Receiver<Result<HostBatch>>,
}

impl Loader {
    pub fn new(data: Arc<dyn Dataset>, seed: u64, first: u64, batch: usize, flip: bool) -> Result<Self> {
        if data.len() == 0 {
            bail!("the dataset is empty");
        }
        let (tx, rx): (SyncSender<Result<HostBatch>>, _) = sync_channel(2);
        std::thread::spawn(move || {
            for step in first.. {
                let b = read_batch(data.as_ref(), seed, step, batch, flip);
                let failed = b.is_err();
                if tx.send(b).is_err() || failed {
                    return; // the trainer is gone, or has the error
                }
            }
        });
        Ok(Self { rx })
    }

    pub fn next_batch(&mut self) -> Result<HostBatch> {
        self.rx.recv().map_err(|_| anyhow::anyhow!("the data loader stopped"))?
    }
}

/// Mirrors each row of a `[C, H, W]` sample in place.
pub fn flip_rows(x: &mut [f32], w: usize) {
    for row in x.chunks_mut(w) {
        row.reverse();
    }
}
