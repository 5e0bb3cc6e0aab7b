//! The offline quality meter for Fashion-MNIST: a small CNN classifier whose penultimate
//! features stand in for Inception's (FID in that space, against the test split) and whose
//! predictions give the class accuracy of class-conditional samples.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;

use super::metrics::{Stats, frechet_distance};
use crate::data::fashion_mnist::{FashionMnist, SIDE, to_model_space};
use crate::model::layers::{Conv2d, Init, Linear};

/// Width of the feature vector FID is computed on.
pub const FEATURES: usize = 128;

/// conv3x3(32) - pool - conv3x3(64) - pool - fc(128) - fc(10), on 1x32x32 in [-1, 1].
#[derive(Module, Debug)]
pub struct Classifier {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
}

fn pool(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(
        x,
        MaxPoolOptions {
            kernel_size: [2, 2],
            stride: [2, 2],
            padding: [(0, 0); 2],
            dilation: [1, 1],
            ceil_mode: false,
        },
    )
}

impl Classifier {
    pub fn new(device: &Device) -> Self {
        Self {
            conv1: Conv2d::new(1, 32, 3, true, Init::Xavier, device),
            conv2: Conv2d::new(32, 64, 3, true, Init::Xavier, device),
            fc1: Linear::new(64 * (SIDE / 4) * (SIDE / 4), FEATURES, true, Init::Xavier, device),
            fc2: Linear::new(FEATURES, 10, true, Init::Xavier, device),
        }
    }

    /// Penultimate features `[N, 128]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = pool(relu(self.conv1.forward(x)));
        let x = pool(relu(self.conv2.forward(x)));
        let n = x.dims()[0];
        relu(self.fc1.forward(x.reshape([n as i32, -1])))
    }

    pub fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(features)
    }

    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = crate::checkpoint::read_weights(path, None)?;
        crate::checkpoint::load_into(Self::new(device), &w.tensors, device)
            .with_context(|| format!("{} is not a `udit train-classifier` model", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::write_safetensors(path, &crate::checkpoint::state_dict(self), vec![])
    }

    /// Features and predicted classes of uint8 32x32 grayscale images, in batches.
    pub fn run(&self, pixels: &[u8], device: &Device) -> (Vec<f32>, Vec<usize>) {
        let per = SIDE * SIDE;
        let (mut feats, mut preds) = (Vec::new(), Vec::new());
        for chunk in pixels.chunks(256 * per) {
            let f = self.features(to_model_space(chunk, chunk.len() / per, device));
            let p = self.logits(f.clone()).argmax(1).into_data().convert::<i64>();
            preds.extend(p.as_slice::<i64>().expect("i64").iter().map(|&c| c as usize));
            feats.extend(f.into_data().convert::<f32>().as_slice::<f32>().expect("f32").iter().copied());
        }
        (feats, preds)
    }
}

/// Trains the classifier with AdamW (lr 1e-3, batch 128) on `train`, using the first
/// `limit` images if given; reports test accuracy after each epoch through `on_epoch`.
/// `seed` fixes the initial weights and the batch order.
pub fn train(
    train: &FashionMnist,
    test: &FashionMnist,
    epochs: usize,
    limit: Option<usize>,
    seed: u64,
    device: &Device,
    on_epoch: &mut dyn FnMut(usize, f64),
    on_step: &mut dyn FnMut(),
) -> Result<(Classifier, f64)> {
    if epochs == 0 {
        bail!("training needs at least 1 epoch");
    }
    let ad = device.clone().autodiff();
    let mut model = crate::rng::seeded(seed, || Classifier::new(&ad));
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let n = limit.unwrap_or(train.len()).min(train.len());
    let mut rng = crate::rng::Stream::ClassifierOrder.rng(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut acc = 0.0;
    for epoch in 0..epochs {
        for i in (1..n).rev() {
            order.swap(i, crate::rng::below(&mut rng, i as u64 + 1) as usize);
        }
        for idx in order.chunks(128) {
            let (x, y) = train.batch(idx, &ad);
            let logp = log_softmax(model.logits(model.features(x)), 1);
            let loss = logp.gather(1, y.reshape([idx.len(), 1])).mean().neg();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
            on_step();
        }
        acc = accuracy(&model.valid(), test, device);
        on_epoch(epoch + 1, acc);
    }
    Ok((model.valid(), acc))
}

/// Fraction of `data` classified correctly.
pub fn accuracy(model: &Classifier, data: &FashionMnist, device: &Device) -> f64 {
    let all: Vec<usize> = (0..data.len()).collect();
    let (_, preds) = model.run(&data.padded(&all), device);
    preds.iter().zip(&data.labels).filter(|(p, l)| **p == **l as usize).count() as f64 / data.len() as f64
}

/// The meter's numbers for a set of samples.
#[derive(Debug, serde::Serialize)]
pub struct MeterScores {
    /// FID in the classifier's feature space against the test split.
    pub fid: f64,
    /// Fraction of samples the classifier assigns to their requested class.
    pub class_accuracy: f64,
}

/// The offline meter: the classifier and its feature statistics of the test split.
pub struct Meter {
    pub model: Classifier,
    reference: Stats,
}

impl Meter {
    pub fn new(model: Classifier, test: &FashionMnist, device: &Device) -> Result<Self> {
        let all: Vec<usize> = (0..test.len()).collect();
        let (ref_feats, _) = model.run(&test.padded(&all), device);
        Ok(Self { reference: Stats::from_features(&ref_feats, FEATURES)?, model })
    }

    /// Scores uint8 32x32 grayscale samples with their requested labels.
    pub fn score(&self, samples: &crate::io::Images, device: &Device) -> Result<MeterScores> {
        if (samples.side, samples.channels) != (SIDE, 1) {
            bail!(
                "the Fashion-MNIST meter takes 32x32 grayscale images, got {0}x{0}x{1}",
                samples.side,
                samples.channels
            );
        }
        if samples.labels.iter().any(|&l| !(0..10).contains(&l)) {
            bail!("class accuracy needs the requested labels (arr_1) in 0..10");
        }
        let (feats, preds) = self.model.run(&samples.pixels, device);
        let fid = frechet_distance(&Stats::from_features(&feats, FEATURES)?, &self.reference)?;
        let correct = preds.iter().zip(&samples.labels).filter(|(p, l)| **p as i64 == **l).count();
        Ok(MeterScores { fid, class_accuracy: correct as f64 / preds.len() as f64 })
    }
}

/// Scores uint8 32x32 grayscale samples with their requested labels (see [`Meter`]).
pub fn meter(
    model: &Classifier,
    samples: &crate::io::Images,
    test: &FashionMnist,
    device: &Device,
) -> Result<MeterScores> {
    Meter::new(model.clone(), test, device)?.score(samples, device)
}
