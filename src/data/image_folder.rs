//! An image folder in the ImageNet layout (`ROOT/CLASS/*.JPEG`, classes numbered in sorted
//! order as torchvision's `ImageFolder`), with the ADM center crop of the reference
//! `train.py`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Dataset, Space};

/// The crop side of the paper's ImageNet runs.
pub const ADM_IMAGE_SIZE: usize = 256;

/// File extensions read as images (case-insensitive), torchvision's list minus the rare ones.
const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "ppm"];

pub struct ImageFolder {
    files: Vec<(PathBuf, usize)>,
    pub classes: Vec<String>,
    pub image_size: usize,
}

impl ImageFolder {
    /// Lists `root/CLASS/*` images; crops will be `image_size` square.
    pub fn open(root: &Path, image_size: usize) -> Result<Self> {
        if image_size == 0 {
            bail!("the image size must be positive");
        }
        let entries = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            v.sort();
            Ok(v)
        };
        let class_dirs: Vec<PathBuf> = entries(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if class_dirs.is_empty() {
            bail!("{} has no class folders (expected ROOT/CLASS/IMAGE files)", root.display());
        }
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            classes.push(dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
            for f in entries(dir)? {
                let ext = f.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
                if EXTENSIONS.contains(&ext.as_str()) {
                    files.push((f, label));
                }
            }
        }
        if files.is_empty() {
            bail!("no images under {}", root.display());
        }
        Ok(Self { files, classes, image_size })
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn num_classes(&self) -> usize {
        self.classes.len()
    }
    /// ImageNet's names for WordNet-id folders (`n01440764`), else the folder names.
    fn class_names(&self) -> crate::classes::ClassNames {
        crate::classes::ClassNames::of_imagenet_wnids(&self.classes)
            .unwrap_or_else(|| crate::classes::ClassNames::new(self.classes.clone()))
    }
    fn shape(&self) -> [usize; 3] {
        [3, self.image_size, self.image_size]
    }
    fn space(&self) -> Space {
        Space::Pixels
    }
    fn read(&self, index: usize, flip: bool, out: &mut [f32]) -> Result<usize> {
        let (path, label) = &self.files[index];
        let img = image::open(path).with_context(|| format!("cannot decode {}", path.display()))?.to_rgb8();
        let (w, h) = img.dimensions();
        let pixels: Vec<f32> = img.into_raw().into_iter().map(f32::from).collect();
        let s = self.image_size;
        let crop = center_crop_arr(pixels, w as usize, h as usize, s);
        // HWC uint8 values -> CHW in [-1, 1].
        for (i, v) in crop.iter().enumerate() {
            let (y, x, c) = (i / (3 * s), (i / 3) % s, i % 3);
            let x = if flip { s - 1 - x } else { x };
            out[c * s * s + y * s + x] = v / 127.5 - 1.0;
        }
        Ok(*label)
    }
}

/// ADM's `center_crop_arr` on an RGB image (HWC, values 0..=255): halve with a box filter
/// while the short side is at least twice `size`, resize bicubically so the short side is
/// `size`, then take the central `size` x `size` square. Each resize rounds to 8 bits, as
/// PIL's does on RGB images.
pub fn center_crop_arr(mut img: Vec<f32>, mut w: usize, mut h: usize, size: usize) -> Vec<f32> {
    while w.min(h) >= 2 * size {
        img = resize(&img, w, h, w / 2, h / 2, Filter::Box);
        (w, h) = (w / 2, h / 2);
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = ((w as f64 * scale).round() as usize, (h as f64 * scale).round() as usize);
    img = resize(&img, w, h, nw, nh, Filter::Bicubic);
    let (top, left) = ((nh - size) / 2, (nw - size) / 2);
    let mut out = Vec::with_capacity(size * size * 3);
    for y in top..top + size {
        out.extend_from_slice(&img[(y * nw + left) * 3..(y * nw + left + size) * 3]);
    }
    out
}

#[derive(Clone, Copy)]
enum Filter {
    Box,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bicubic => 2.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => f64::from((-0.5..0.5).contains(&x)),
            // Keys' cubic with a = -0.5, PIL's BICUBIC.
            Self::Bicubic => {
                let (a, x) = (-0.5, x.abs());
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL's resampling coefficients for one axis: for each output pixel, the first input pixel
/// and the normalised weights (the filter is widened by the scale when shrinking).
fn coefficients(input: usize, output: usize, filter: Filter) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(input);
            let mut w: Vec<f64> = (lo..hi).map(|i| filter.weight((i as f64 - center + 0.5) / filterscale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w)
        })
        .collect()
}

/// Separable resize of an RGB image (HWC), horizontal pass then vertical, each rounded and
/// clamped to 0..=255.
fn resize(img: &[f32], w: usize, h: usize, nw: usize, nh: usize, filter: Filter) -> Vec<f32> {
    let round = |v: f64| v.round().clamp(0.0, 255.0) as f32;
    let cx = coefficients(w, nw, filter);
    let mut mid = vec![0f32; h * nw * 3];
    for y in 0..h {
        for (x, (lo, ws)) in cx.iter().enumerate() {
            for c in 0..3 {
                let v: f64 = ws.iter().enumerate().map(|(k, wt)| wt * img[(y * w + lo + k) * 3 + c] as f64).sum();
                mid[(y * nw + x) * 3 + c] = round(v);
            }
        }
    }
    let cy = coefficients(h, nh, filter);
    let mut out = vec![0f32; nh * nw * 3];
    for (y, (lo, ws)) in cy.iter().enumerate() {
        for x in 0..nw {
            for c in 0..3 {
                let v: f64 = ws.iter().enumerate().map(|(k, wt)| wt * mid[((lo + k) * nw + x) * 3 + c] as f64).sum();
                out[(y * nw + x) * 3 + c] = round(v);
            }
        }
    }
    out
}
