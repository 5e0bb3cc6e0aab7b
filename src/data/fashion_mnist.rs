//! Fashion-MNIST from its IDX files (Debian's `dataset-fashion-mnist` installs them, gzipped,
//! under `/usr/share/datasets/fashion-mnist`), as a pixel-space dataset: 28x28 grayscale
//! padded to 32x32, 10 classes.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;

/// Where Debian puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

pub const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Side after padding: 28 + 2 + 2.
pub const SIDE: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// One split, as uint8 28x28 images and labels.
pub struct FashionMnist {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl FashionMnist {
    /// Reads `train-*` or `t10k-*` IDX files (`.gz` or plain) from `dir`.
    pub fn load(dir: &Path, split: Split) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let images = read_idx(dir, &format!("{prefix}-images-idx3-ubyte"), 0x0803)?;
        let labels = read_idx(dir, &format!("{prefix}-labels-idx1-ubyte"), 0x0801)?;
        if images.0 != [labels.0[0], 28, 28] {
            bail!("Fashion-MNIST in {}: images {:?} do not match {} labels", dir.display(), images.0, labels.0[0]);
        }
        if let Some(bad) = labels.1.iter().find(|&&l| l >= 10) {
            bail!("Fashion-MNIST in {}: label {bad} is not a class", dir.display());
        }
        Ok(Self { images: images.1, labels: labels.1 })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images `indices` as uint8 32x32 (zero-padded by 2).
    pub fn padded(&self, indices: &[usize]) -> Vec<u8> {
        let mut out = vec![0u8; indices.len() * SIDE * SIDE];
        for (k, &i) in indices.iter().enumerate() {
            let src = &self.images[i * 784..(i + 1) * 784];
            for y in 0..28 {
                let dst = k * SIDE * SIDE + (y + 2) * SIDE + 2;
                out[dst..dst + 28].copy_from_slice(&src[y * 28..(y + 1) * 28]);
            }
        }
        out
    }

    /// Images `indices` as a `[N, 1, 32, 32]` tensor in [-1, 1], and their labels.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        (
            to_model_space(&self.padded(indices), indices.len(), device),
            labels_tensor(indices.iter().map(|&i| self.labels[i] as i64).collect(), device),
        )
    }
}

/// uint8 32x32 grayscale images -> `[N, 1, 32, 32]` in [-1, 1].
pub fn to_model_space(pixels: &[u8], n: usize, device: &Device) -> Tensor<4> {
    let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
    Tensor::from_data(TensorData::new(v, [n, 1, SIDE, SIDE]), device)
}

fn labels_tensor(labels: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = labels.len();
    Tensor::from_data(TensorData::new(labels, [n]), device)
}

/// Reads an IDX file (unsigned bytes) named `name` or `name.gz` in `dir`.
fn read_idx(dir: &Path, name: &str, magic: u32) -> Result<(Vec<usize>, Vec<u8>)> {
    let plain = dir.join(name);
    let gz: PathBuf = dir.join(format!("{name}.gz"));
    let bytes = if plain.exists() {
        std::fs::read(&plain).with_context(|| format!("cannot read {}", plain.display()))?
    } else {
        let f = std::fs::File::open(&gz).with_context(|| {
            format!(
                "no {name}[.gz] in {} (install Debian's dataset-fashion-mnist, or give its directory)",
                dir.display()
            )
        })?;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut out)
            .with_context(|| format!("{} is not valid gzip", gz.display()))?;
        out
    };
    if bytes.len() < 4 || u32::from_be_bytes(bytes[..4].try_into().unwrap()) != magic {
        bail!("{name} is not an IDX file of unsigned bytes (magic {magic:#010x})");
    }
    let rank = (magic & 0xff) as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        bail!("{name} is truncated");
    }
    let dims: Vec<usize> =
        (0..rank).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let count: usize = dims.iter().product();
    if bytes.len() != header + count {
        bail!("{name}: {} data bytes for dimensions {dims:?}", bytes.len() - header);
    }
    Ok((dims, bytes[header..].to_vec()))
}

impl super::Dataset for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        CLASSES.len()
    }
    fn class_names(&self) -> crate::classes::ClassNames {
        crate::classes::ClassNames::new(CLASSES.iter().map(|c| c.to_string()).collect())
    }
    fn shape(&self) -> [usize; 3] {
        [1, SIDE, SIDE]
    }
    fn space(&self) -> super::Space {
        super::Space::Pixels
    }
    fn read(&self, index: usize, flip: bool, out: &mut [f32]) -> Result<usize> {
        for (o, &p) in out.iter_mut().zip(&self.padded(&[index])) {
            *o = p as f32 / 127.5 - 1.0;
        }
        if flip {
            super::flip_rows(out, SIDE);
        }
        Ok(self.labels[index] as usize)
    }
}
