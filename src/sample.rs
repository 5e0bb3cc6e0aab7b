//! The sampling pipeline: noise -> sampler with classifier-free guidance -> codec -> uint8
//! images, in batches, deterministic per sample index (so runs resume and shard), with
//! PNG, labelled-grid and ADM `.npz` outputs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use image::ImageEncoder;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::classes::ClassNames;
use crate::diffusion::GaussianDiffusion;
use crate::diffusion::samplers::{NoiseStreams, Sampler};
use crate::model::layers::{pixel_shuffle, pixel_unshuffle};
use crate::model::{Denoiser, ModelConfig};
use crate::progress::Progress;
use crate::vae::Vae;

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

/// Which classes to draw.
#[derive(Clone, Debug)]
pub enum Classes {
    /// Sample i gets `list[i % len]`.
    Listed(Vec<usize>),
    /// Sample i gets a class drawn from its own stream of the run's seed.
    Random,
}

impl Classes {
    /// `random`, or a comma-separated list of class indices or names (see [`ClassNames::parse`]).
    pub fn parse(spec: &str, names: &ClassNames, num_classes: usize) -> Result<Self> {
        if spec.trim() == "random" {
            return Ok(Self::Random);
        }
        let list = spec.split(',').map(|c| names.parse(c, num_classes)).collect::<Result<Vec<_>>>()?;
        Ok(Self::Listed(list))
    }

    pub fn label(&self, seed: u64, index: usize, num_classes: usize) -> usize {
        match self {
            Self::Listed(list) => list[index % list.len()],
            Self::Random => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6c61_6265_6c73); // "labels"
                rng.set_stream(index as u64);
                (rng.next_u64() % num_classes as u64) as usize
            }
        }
    }
}

/// Everything that decides what sample i looks like.
#[derive(Clone, Debug)]
pub struct Settings {
    pub sampler: Sampler,
    pub steps: usize,
    /// Classifier-free guidance scale; 1 means no guidance.
    pub cfg_scale: f64,
    pub seed: u64,
    pub classes: Classes,
}

/// A batch of finished samples.
pub struct Images {
    /// uint8, NHWC.
    pub pixels: Vec<u8>,
    pub labels: Vec<i64>,
    pub side: usize,
    pub channels: usize,
}

impl Images {
    /// Adds `other`'s samples (of the same size) after these.
    pub fn append(&mut self, other: Images) {
        self.pixels.extend(other.pixels);
        self.labels.extend(other.labels);
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.pixels.truncate(n * self.side * self.side * self.channels);
        self.labels.truncate(n);
    }
}

/// Draws samples `first..first + count` with one batched run.
pub struct Generator<'a> {
    pub model: &'a Denoiser,
    pub config: &'a ModelConfig,
    pub codec: &'a Codec,
    pub diffusion: GaussianDiffusion,
    pub settings: Settings,
    pub device: Device,
}

impl Generator<'_> {
    /// Checks the settings against the model before any work starts.
    pub fn validate(&self) -> Result<()> {
        let s = &self.settings;
        if s.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if !(s.cfg_scale >= 1.0) {
            bail!("--cfg-scale must be at least 1 (1 = no guidance), got {}", s.cfg_scale);
        }
        if s.cfg_scale > 1.0 && !self.config.has_null_class() {
            bail!(
                "this model was trained without label dropout (no null class), so it cannot be guided: use --cfg-scale 1"
            );
        }
        let classes = self.config.num_classes();
        if let Classes::Listed(list) = &s.classes {
            if list.is_empty() {
                bail!("no classes given");
            }
            if let Some(bad) = list.iter().find(|&&c| c >= classes) {
                bail!("class {bad} does not exist: the model has classes 0..{}", classes - 1);
            }
        }
        self.codec.image_shape(self.config.in_channels(), self.config.input_size())?;
        Ok(())
    }

    pub fn image_shape(&self) -> (usize, usize) {
        self.codec.image_shape(self.config.in_channels(), self.config.input_size()).expect("validated")
    }

    pub fn generate(&self, first: usize, count: usize, on_step: &mut dyn FnMut()) -> Result<Images> {
        let s = &self.settings;
        let dev = &self.device;
        let (c, side) = (self.config.in_channels(), self.config.input_size());
        let labels: Vec<i64> =
            (first..first + count).map(|i| s.classes.label(s.seed, i, self.config.num_classes()) as i64).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [count]), dev);
        let null = Tensor::<1, Int>::full([count], self.config.num_classes() as i64, dev);
        let guided = self.config.guided_channels();
        let mut model = |x: Tensor<4>, t: Tensor<1>| {
            if s.cfg_scale > 1.0 {
                let x2 = Tensor::cat(vec![x.clone(), x], 0);
                let t2 = Tensor::cat(vec![t.clone(), t], 0);
                let y2 = Tensor::cat(vec![y.clone(), null.clone()], 0);
                self.model.forward_with_cfg(x2, t2, y2, s.cfg_scale, guided).narrow(0, 0, count)
            } else {
                self.model.forward(x, t, y.clone())
            }
        };
        let mut noise = NoiseStreams::new(s.seed, first, count, [c, side, side]);
        let x_t = noise.next(dev);
        let z = s.sampler.sample(&self.diffusion, s.steps, &mut model, x_t, &mut noise, dev, on_step)?;
        let pixels = self.codec.decode(z);
        let [_, channels, h, _] = pixels.dims();
        // (x + 1) * 127.5, rounded and clamped, as the reference `sample_ddp.py`.
        let bytes = (pixels * 127.5 + 128.0).clamp(0.0, 255.0).permute([0, 2, 3, 1]).into_data();
        let pixels = bytes.convert::<f32>().as_slice::<f32>().expect("f32").iter().map(|&v| v as u8).collect();
        Ok(Images { pixels, labels, side: h, channels })
    }
}

/// Writes `NNNNNN.png` for each sample (index from `first`) into `dir`.
pub fn write_pngs(dir: &Path, first: usize, images: &Images) -> Result<()> {
    let per = images.side * images.side * images.channels;
    for (i, px) in images.pixels.chunks_exact(per).enumerate() {
        write_png(&dir.join(format!("{:06}.png", first + i)), px, images.side, images.side, images.channels)?;
    }
    Ok(())
}

fn write_png(path: &Path, pixels: &[u8], w: usize, h: usize, channels: usize) -> Result<()> {
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        other => bail!("cannot write a {other}-channel image as PNG"),
    };
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(pixels, w as u32, h as u32, color)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    crate::checkpoint::write_atomic(path, &bytes)
}

/// A grid of the samples, `cols` per row, each with its class printed above it: the name
/// where the model has names (wrapped onto two lines, cut to the image width), else the index.
pub fn write_grid(path: &Path, images: &Images, cols: usize, names: &ClassNames) -> Result<()> {
    let (s, c) = (images.side, images.channels);
    let n = images.labels.len();
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let lines = if names.is_empty() { 1 } else { 2 };
    let (label_h, pad) = (6 * lines + 3, 2);
    let (cell_w, cell_h) = (s + pad, s + pad + label_h);
    let (gw, gh) = (cols * cell_w + pad, rows * cell_h + pad);
    let mut grid = vec![255u8; gw * gh * c];
    for (i, (px, &label)) in images.pixels.chunks_exact(s * s * c).zip(&images.labels).enumerate() {
        let (x0, y0) = (pad + (i % cols) * cell_w, pad + (i / cols) * cell_h);
        let text = names.short(label as usize).map_or_else(|| label.to_string(), str::to_uppercase);
        for (k, line) in wrap(&text, s / GLYPH_ADVANCE, lines).iter().enumerate() {
            draw_text(&mut grid, gw, c, x0, y0 + 1 + 6 * k, line, x0 + s);
        }
        for y in 0..s {
            let dst = ((y0 + label_h + y) * gw + x0) * c;
            grid[dst..dst + s * c].copy_from_slice(&px[y * s * c..(y + 1) * s * c]);
        }
    }
    write_png(path, &grid, gw, gh, c)
}

/// Pixels from one character to the next in the 3x5 font.
const GLYPH_ADVANCE: usize = 4;

/// Splits `text` at spaces and after slashes into at most `lines` lines of at most `width`
/// characters (words longer than a line are cut).
fn wrap(text: &str, width: usize, lines: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out: Vec<String> = Vec::new();
    for word in text.replace('/', "/ ").split(' ').filter(|w| !w.is_empty()) {
        match out.last_mut() {
            Some(line) if line.len() + 1 + word.len() <= width => {
                if !line.ends_with('/') {
                    line.push(' ');
                }
                line.push_str(word);
            }
            _ => out.push(word.chars().take(width).collect()),
        }
    }
    out.truncate(lines);
    out
}

/// Draws `text` in a 3x5 pixel font, dark on the white margin, clipped at column `x_end`.
fn draw_text(buf: &mut [u8], width: usize, channels: usize, x0: usize, y0: usize, text: &str, x_end: usize) {
    for (k, ch) in text.chars().enumerate() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3 {
                let (x, y) = (x0 + k * GLYPH_ADVANCE + col, y0 + row);
                let at = (y * width + x) * channels;
                if bits & (4 >> col) != 0 && x < x_end.min(width) && at + channels <= buf.len() {
                    buf[at..at + channels].fill(0);
                }
            }
        }
    }
}

/// Rows of a 3x5 glyph, 3 bits each (4 = left column); unknown characters draw as `?`.
fn glyph(ch: char) -> [u8; 5] {
    const DIGITS: [[u8; 5]; 10] = [
        [7, 5, 5, 5, 7],
        [2, 6, 2, 2, 7],
        [7, 1, 7, 4, 7],
        [7, 1, 7, 1, 7],
        [5, 5, 7, 1, 1],
        [7, 4, 7, 1, 7],
        [7, 4, 7, 5, 7],
        [7, 1, 1, 1, 1],
        [7, 5, 7, 5, 7],
        [7, 5, 7, 1, 7],
    ];
    const LETTERS: [[u8; 5]; 26] = [
        [2, 5, 7, 5, 5],
        [6, 5, 6, 5, 6],
        [3, 4, 4, 4, 3],
        [6, 5, 5, 5, 6],
        [7, 4, 6, 4, 7],
        [7, 4, 6, 4, 4],
        [3, 4, 5, 5, 3],
        [5, 5, 7, 5, 5],
        [7, 2, 2, 2, 7],
        [1, 1, 1, 5, 2],
        [5, 5, 6, 5, 5],
        [4, 4, 4, 4, 7],
        [5, 7, 7, 5, 5],
        [6, 5, 5, 5, 5],
        [2, 5, 5, 5, 2],
        [6, 5, 6, 4, 4],
        [2, 5, 5, 6, 3],
        [6, 5, 6, 5, 5],
        [3, 4, 2, 1, 6],
        [7, 2, 2, 2, 2],
        [5, 5, 5, 5, 7],
        [5, 5, 5, 5, 2],
        [5, 5, 7, 7, 5],
        [5, 5, 2, 5, 5],
        [5, 5, 2, 2, 2],
        [7, 1, 2, 4, 7],
    ];
    match ch {
        '0'..='9' => DIGITS[ch as usize - '0' as usize],
        'A'..='Z' => LETTERS[ch as usize - 'A' as usize],
        ' ' => [0; 5],
        '-' => [0, 0, 7, 0, 0],
        '/' => [1, 1, 2, 4, 4],
        '.' => [0, 0, 0, 0, 2],
        '\'' => [2, 2, 0, 0, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        _ => [7, 1, 2, 0, 2],
    }
}

/// A `--num-samples N --npz FILE` run in batches of `batch`: every finished batch is kept
/// in `FILE.parts/` (so an interrupted run resumes where it stopped, and shards of one run
/// can share the folder); when all batches exist they are merged into FILE.
pub struct NpzRun {
    pub npz: PathBuf,
    pub num_samples: usize,
    pub batch: usize,
}

impl NpzRun {
    pub fn parts_dir(&self) -> PathBuf {
        let mut name = self.npz.file_name().unwrap_or_default().to_os_string();
        name.push(".parts");
        self.npz.with_file_name(name)
    }

    pub fn num_batches(&self) -> usize {
        self.num_samples.div_ceil(self.batch)
    }

    fn part(&self, b: usize) -> PathBuf {
        self.parts_dir().join(format!("batch-{b:06}-of-{:06}-size-{}.npz", self.num_batches(), self.batch))
    }

    /// Batches of shard `shard` of `shards` that are not done yet.
    pub fn pending(&self, shard: usize, shards: usize) -> Vec<usize> {
        (0..self.num_batches()).filter(|b| b % shards == shard && !self.part(*b).exists()).collect()
    }

    /// Sample range of batch `b`.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        b * self.batch..((b + 1) * self.batch).min(self.num_samples)
    }

    pub fn save_part(&self, b: usize, images: &Images) -> Result<()> {
        std::fs::create_dir_all(self.parts_dir())
            .with_context(|| format!("cannot create {}", self.parts_dir().display()))?;
        write_npz(&self.part(b), images)
    }

    /// Batches not written yet.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.num_batches()).filter(|b| !self.part(*b).exists()).collect()
    }

    /// Merges the parts into the `.npz` once every batch is there; returns whether it did.
    pub fn merge(&self) -> Result<bool> {
        if !self.missing().is_empty() {
            return Ok(false);
        }
        let mut all: Option<Images> = None;
        for b in 0..self.num_batches() {
            let part = read_npz(&self.part(b))?;
            match &mut all {
                None => all = Some(part),
                Some(a) => {
                    if (a.side, a.channels) != (part.side, part.channels) {
                        bail!("{} holds images of another size", self.part(b).display());
                    }
                    a.append(part);
                }
            }
        }
        let all = all.context("no samples")?;
        write_npz(&self.npz, &all)?;
        std::fs::remove_dir_all(self.parts_dir()).ok();
        Ok(true)
    }
}

/// `udit merge-npz`: merges a complete run, or says that the `.npz` is already complete (the
/// last shard merged it), or names the batches still missing. Returns what it did.
pub fn merge_npz(run: &NpzRun) -> Result<String> {
    if run.npz.is_file() && !run.parts_dir().exists() {
        return Ok(format!("{} is already complete (the last shard merged it)", run.npz.display()));
    }
    if !run.parts_dir().is_dir() {
        bail!("nothing to merge: {} does not exist", run.parts_dir().display());
    }
    let missing = run.missing();
    if !missing.is_empty() {
        bail!(
            "{} of {} batches are missing in {}: {} (run the shards that own them)",
            missing.len(),
            run.num_batches(),
            run.parts_dir().display(),
            ranges(&missing)
        );
    }
    run.merge()?;
    Ok(format!("wrote {} samples to {}", run.num_samples, run.npz.display()))
}

/// "0-3, 7, 9-10" for sorted indices.
fn ranges(sorted: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    parts.join(", ")
}

/// ADM layout: `arr_0` uint8 `[N, H, W, C]`, `arr_1` int64 labels. Written atomically.
pub fn write_npz(path: &Path, images: &Images) -> Result<()> {
    use npyz::WriterBuilder;
    let n = images.labels.len() as u64;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut npz = npyz::npz::NpzWriter::new(&mut buf);
        let (s, c) = (images.side as u64, images.channels as u64);
        let mut w = npz.array::<u8>("arr_0", Default::default())?.default_dtype().shape(&[n, s, s, c]).begin_nd()?;
        w.extend(images.pixels.iter().copied())?;
        w.finish()?;
        let mut w = npz.array::<i64>("arr_1", Default::default())?.default_dtype().shape(&[n]).begin_nd()?;
        w.extend(images.labels.iter().copied())?;
        w.finish()?;
    }
    crate::checkpoint::write_atomic(path, buf.get_ref())
}

/// Reads an ADM-layout `.npz` (`arr_0` uint8 NHWC with square images, `arr_1` labels if present).
pub fn read_npz(path: &Path) -> Result<Images> {
    let file = std::io::BufReader::new(crate::checkpoint::open_file(path)?);
    let mut npz =
        npyz::npz::NpzArchive::new(file).with_context(|| format!("cannot open {} as .npz", path.display()))?;
    let arr = npz.by_name("arr_0")?.with_context(|| format!("{} has no arr_0", path.display()))?;
    let shape = arr.shape().to_vec();
    if shape.len() != 4 || shape[1] != shape[2] {
        bail!("{}: arr_0 must be [N, H, W, C] with square images, got {shape:?}", path.display());
    }
    let pixels: Vec<u8> = arr.into_vec().with_context(|| format!("{}: arr_0 must be uint8", path.display()))?;
    let labels = match npz.by_name("arr_1")? {
        Some(l) => l.into_vec::<i64>().with_context(|| format!("{}: arr_1 must be int64", path.display()))?,
        None => vec![-1; shape[0] as usize],
    };
    Ok(Images { pixels, labels, side: shape[1] as usize, channels: shape[3] as usize })
}

/// Progress over denoiser steps (one unit per image and step), with a "decoding" phase
/// while a finished batch goes through the codec.
fn sampling_progress(images: usize, steps: usize) -> Progress {
    Progress::new("sampling", (images * steps) as u64, "image-steps")
}

/// Generates one batch while `progress` counts its steps and names the decoding phase.
fn generate_batch(g: &Generator, first: usize, n: usize, progress: &Progress) -> Result<Images> {
    let mut step = 0;
    progress.phase("sampling");
    g.generate(first, n, &mut || {
        step += 1;
        progress.inc(n as u64);
        if step == g.settings.steps {
            progress.phase("decoding");
        }
    })
}

/// Most samples `grid.png` shows.
pub const GRID_MAX: usize = 100;

/// Writes `count` samples as PNGs plus `grid.png` (the first [`GRID_MAX`], `cols` to a row,
/// by default a square) into `out`, in batches of `batch`.
pub fn run_pngs(
    g: &Generator,
    out: &Path,
    count: usize,
    batch: usize,
    cols: Option<usize>,
    names: &ClassNames,
) -> Result<()> {
    ensure_writable_dir(out)?;
    let progress = sampling_progress(count, g.settings.steps);
    let start = std::time::Instant::now();
    let mut grid: Option<Images> = None;
    for first in (0..count).step_by(batch) {
        let n = batch.min(count - first);
        let images = generate_batch(g, first, n, &progress)?;
        write_pngs(out, first, &images)?;
        let done = first + n;
        progress
            .set_message(format!("{done}/{count} images, {:.2} img/s", done as f64 / start.elapsed().as_secs_f64()));
        // The grid shows the first GRID_MAX samples; the rest only go to their PNGs.
        match &mut grid {
            None => grid = Some(images),
            Some(g) if g.labels.len() < GRID_MAX => g.append(images),
            Some(_) => {}
        }
    }
    progress.finish();
    let mut grid = grid.context("no samples requested")?;
    grid.truncate(GRID_MAX);
    let shown = grid.labels.len();
    progress.println("writing grid.png");
    write_grid(&out.join("grid.png"), &grid, cols.unwrap_or((shown as f64).sqrt().ceil() as usize), names)
}

/// Runs this shard's missing batches of `run`, then merges if the run is complete.
/// Returns whether the `.npz` was written.
pub fn run_npz(g: &Generator, run: &NpzRun, shard: usize, shards: usize) -> Result<bool> {
    if let Some(parent) = run.npz.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_writable_dir(parent)?;
    }
    let pending = run.pending(shard, shards);
    let todo: usize = pending.iter().map(|&b| run.range(b).len()).sum();
    let progress = sampling_progress(todo, g.settings.steps);
    let start = std::time::Instant::now();
    let mut done = 0;
    for b in pending {
        let range = run.range(b);
        let images = generate_batch(g, range.start, range.len(), &progress)?;
        run.save_part(b, &images)?;
        done += range.len();
        progress.set_message(format!("{done}/{todo} images, {:.2} img/s", done as f64 / start.elapsed().as_secs_f64()));
    }
    progress.finish();
    run.merge()
}

fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let probe = dir.join(".udit-write-test");
    std::fs::write(&probe, b"").with_context(|| format!("cannot write into {}", dir.display()))?;
    std::fs::remove_file(probe).ok();
    Ok(())
}
