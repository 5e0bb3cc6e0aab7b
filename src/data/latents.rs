//! Precomputed latents (model inputs), in two layouts:
//!
//! - this project's: `DIR/latents.npy` (float16 `[N, C, H, W]`, read sample by sample at its
//!   offset, so a 1.28M-image ImageNet set needs no memory beyond the OS page cache) and
//!   `DIR/labels.npy` (int64 `[N]`), written once by `udit extract-features`;
//! - the reference's (fast-DiT `extract_features.py`): `DIR/*_features/K.npy` and
//!   `DIR/*_labels/K.npy`, one small array per sample.

use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::{Dataset, Space};
use crate::codec::Codec;
use crate::rng::{Stream, push_normals};

pub const LATENTS_FILE: &str = "latents.npy";
pub const LABELS_FILE: &str = "labels.npy";

pub struct Latents {
    source: Source,
    labels: Vec<i64>,
    shape: [usize; 3],
    num_classes: usize,
}

enum Source {
    /// The f16 array file and the byte offset of its data.
    Packed { file: File, offset: u64 },
    /// One `.npy` file per sample.
    PerSample(Vec<PathBuf>),
}

impl Latents {
    /// Opens either layout in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let packed = dir.join(LATENTS_FILE);
        let latents = if packed.exists() { Self::open_packed(dir) } else { Self::open_reference(dir) };
        let mut latents = latents.with_context(|| format!("cannot read latents in {}", dir.display()))?;
        if let Some(bad) = latents.labels.iter().find(|&&l| l < 0) {
            bail!("latents in {}: negative label {bad}", dir.display());
        }
        latents.num_classes = latents.labels.iter().max().map_or(0, |&m| m as usize + 1);
        Ok(latents)
    }

    fn open_packed(dir: &Path) -> Result<Self> {
        let path = dir.join(LATENTS_FILE);
        let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let header = npyz::NpyHeader::from_reader(BufReader::new(&file))
            .with_context(|| format!("{} is not a .npy file", path.display()))?;
        let descr = descr(&header.dtype());
        let shape: Vec<usize> = header.shape().iter().map(|&d| d as usize).collect();
        let [n, c, h, w] = shape[..] else { bail!("{} has shape {shape:?}, not [N, C, H, W]", path.display()) };
        if descr != "<f2" {
            bail!("{} holds {descr}, expected float16 (<f2)", path.display());
        }
        // The data follows the header, whose length the preamble gives (u16 in format 1.0,
        // u32 later).
        let mut pre = [0u8; 12];
        file.read_exact_at(&mut pre, 0)?;
        let offset = match pre[6] {
            1 => 10 + u16::from_le_bytes([pre[8], pre[9]]) as u64,
            _ => 12 + u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
        };
        if file.metadata()?.len() != offset + (n * c * h * w * 2) as u64 {
            bail!("{} is truncated (or has trailing bytes) for shape {shape:?}", path.display());
        }
        let labels = read_labels(&dir.join(LABELS_FILE))?;
        if labels.len() != n {
            bail!("{} has {} labels for {n} latents", LABELS_FILE, labels.len());
        }
        Ok(Self { source: Source::Packed { file, offset }, labels, shape: [c, h, w], num_classes: 0 })
    }

    fn open_reference(dir: &Path) -> Result<Self> {
        let folder = |suffix: &str| -> Result<PathBuf> {
            std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)))
                .with_context(|| format!("no {LATENTS_FILE}, and no *{suffix} folder (the reference layout)"))
        };
        let (features, labels_dir) = (folder("_features")?, folder("_labels")?);
        let mut names: Vec<String> = std::fs::read_dir(&features)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".npy"))
            .collect();
        // The reference names files by a running counter: order them numerically.
        names.sort_by_key(|n| (n.trim_end_matches(".npy").parse::<u64>().unwrap_or(u64::MAX), n.clone()));
        if names.is_empty() {
            bail!("{} holds no .npy files", features.display());
        }
        let labels = names
            .iter()
            .map(|n| {
                let l = read_labels(&labels_dir.join(n))?;
                if l.len() != 1 {
                    bail!("{}/{n} holds {} labels, expected 1", labels_dir.display(), l.len());
                }
                Ok(l[0])
            })
            .collect::<Result<Vec<_>>>()?;
        let files: Vec<PathBuf> = names.iter().map(|n| features.join(n)).collect();
        let (first, shape) = read_f32_npy(&files[0])?;
        let chw = match shape[..] {
            [1, c, h, w] | [c, h, w] => [c, h, w],
            _ => bail!("{} has shape {shape:?}, expected [1, C, H, W]", files[0].display()),
        };
        debug_assert_eq!(first.len(), chw.iter().product::<usize>());
        Ok(Self { source: Source::PerSample(files), labels, shape: chw, num_classes: 0 })
    }
}

impl Dataset for Latents {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn shape(&self) -> [usize; 3] {
        self.shape
    }
    fn space(&self) -> Space {
        Space::Model
    }
    fn read(&self, index: usize, flip: bool, out: &mut [f32]) -> Result<usize> {
        let per = out.len();
        match &self.source {
            Source::Packed { file, offset } => {
                let mut bytes = vec![0u8; per * 2];
                file.read_exact_at(&mut bytes, offset + (index * per * 2) as u64)
                    .with_context(|| format!("cannot read latent {index}"))?;
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            Source::PerSample(files) => {
                let (v, _) = read_f32_npy(&files[index])?;
                if v.len() != per {
                    bail!("{} holds {} values, expected {per}", files[index].display(), v.len());
                }
                out.copy_from_slice(&v);
            }
        }
        if flip {
            super::flip_rows(out, self.shape[2]);
        }
        Ok(self.labels[index] as usize)
    }
}

/// The numpy type string of `dtype` (`<f2`, `<i8`, ...).
fn descr(dtype: &npyz::DType) -> String {
    dtype.descr().trim_matches('\'').to_string()
}

/// A float `.npy` (f16, f32 or f64) as f32 values and its shape.
fn read_f32_npy(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| format!("{} is not a .npy file", path.display()))?;
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let values = match descr(&npy.dtype()).as_str() {
        "<f4" => npy.into_vec::<f32>()?,
        "<f8" => npy.into_vec::<f64>()?.into_iter().map(|v| v as f32).collect(),
        "<f2" => npy.into_vec::<half::f16>()?.into_iter().map(f32::from).collect(),
        other => bail!("{} holds {other}, expected float", path.display()),
    };
    Ok((values, shape))
}

/// An integer `.npy` of labels (int64 or int32).
fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| format!("{} is not a .npy file", path.display()))?;
    Ok(match descr(&npy.dtype()).as_str() {
        "<i8" => npy.into_vec::<i64>()?,
        "<i4" => npy.into_vec::<i32>()?.into_iter().map(i64::from).collect(),
        other => bail!("{} holds {other}, expected integer labels", path.display()),
    })
}

/// Writes `latents.npy` and `labels.npy` into `dir` sample by sample; nothing appears under
/// the final names until [`LatentWriter::finish`] has written every sample.
pub struct LatentWriter {
    dir: PathBuf,
    file: std::io::BufWriter<File>,
    labels: Vec<i64>,
    expected: usize,
    per: usize,
}

impl LatentWriter {
    pub fn create(dir: &Path, count: usize, shape: [usize; 3]) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let [c, h, w] = shape;
        let mut file = std::io::BufWriter::new(File::create(dir.join(format!(".{LATENTS_FILE}.partial")))?);
        file.write_all(&npy_header("<f2", &[count, c, h, w]))?;
        Ok(Self { dir: dir.to_path_buf(), file, labels: Vec::new(), expected: count, per: c * h * w })
    }

    /// Appends samples (`[n, C, H, W]` values) and their labels.
    pub fn push(&mut self, values: &[f32], labels: &[i64]) -> Result<()> {
        if values.len() != labels.len() * self.per || self.labels.len() + labels.len() > self.expected {
            bail!("latent batch does not fit the file being written");
        }
        let bytes: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        self.file.write_all(&bytes)?;
        self.labels.extend_from_slice(labels);
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        if self.labels.len() != self.expected {
            bail!("{} of {} latents written", self.labels.len(), self.expected);
        }
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let mut labels = npy_header("<i8", &[self.labels.len()]);
        labels.extend(self.labels.iter().flat_map(|l| l.to_le_bytes()));
        crate::io::write_atomic(&self.dir.join(LABELS_FILE), &labels)?;
        std::fs::rename(self.dir.join(format!(".{LATENTS_FILE}.partial")), self.dir.join(LATENTS_FILE))?;
        Ok(())
    }
}

/// A version 1.0 `.npy` header for a C-order array, padded to 64 bytes as numpy does.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.into_bytes());
    out
}

/// `udit extract-features`: encodes every image of an ImageNet-layout folder (ADM center
/// crop, no flip) with the VAE (a posterior sample times the scaling factor, as fast-DiT) into
/// `out/latents.npy` and `out/labels.npy`. Returns the number of latents.
#[allow(clippy::too_many_arguments)]
pub fn extract_features(
    root: &Path,
    image_size: usize,
    vae: &str,
    out: &Path,
    batch: usize,
    seed: u64,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<usize> {
    if batch == 0 {
        bail!("the batch size must be positive");
    }
    let images = super::image_folder::ImageFolder::open(root, image_size)?;
    let codec = Codec::open(vae, device)?;
    let Codec::Vae(v) = &codec else { bail!("latents need a VAE, not {vae:?}") };
    let side = image_size / v.config.downscale();
    let shape = [v.config.latent_channels, side, side];
    let n = images.len();
    let mut writer = LatentWriter::create(out, n, shape)?;
    let per = shape.iter().product::<usize>();
    for first in (0..n).step_by(batch) {
        let count = batch.min(n - first);
        let mut x = vec![0f32; count * 3 * image_size * image_size];
        let labels = {
            use rayon::prelude::*;
            x.par_chunks_mut(3 * image_size * image_size)
                .enumerate()
                .map(|(k, out)| images.read(first + k, false, out).map(|l| l as i64))
                .collect::<Result<Vec<_>>>()?
        };
        let pixels = Tensor::<4>::from_data(TensorData::new(x, [count, 3, image_size, image_size]), device);
        let mut noise = Vec::with_capacity(count * per);
        for i in first..first + count {
            let mut rng = Stream::Posterior { index: i as u64 }.rng(seed);
            push_normals(&mut rng, per, &mut noise);
        }
        let z = codec.encode(pixels, |mean| Tensor::from_data(TensorData::new(noise, mean.dims()), device));
        writer.push(
            &z.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?,
            &labels,
        )?;
        on_progress(first + count, n);
    }
    writer.finish()?;
    Ok(n)
}
