//! Images on disk: the batch type every command passes around, PNG files and the labelled
//! sample grid (a 3x5 pixel font, so grids need no font file).

use std::path::Path;

use anyhow::{Context, Result, bail};
use image::ImageEncoder;

use crate::classes::ClassNames;

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

    /// Each sample's pixels (uint8 HWC).
    pub fn each(&self) -> std::slice::ChunksExact<'_, u8> {
        self.pixels.chunks_exact(self.side * self.side * self.channels)
    }

    /// Keeps the first `n` samples.
    pub fn truncate(&mut self, n: usize) {
        self.pixels.truncate(n * self.side * self.side * self.channels);
        self.labels.truncate(n);
    }
}

/// The file name of sample `index`: `NNNNNN.png`.
pub fn png_name(index: usize) -> String {
    format!("{index:06}.png")
}

/// Writes `NNNNNN.png` for each sample (index from `first`) into `dir`.
pub fn write_pngs(dir: &Path, first: usize, images: &Images) -> Result<()> {
    for (i, px) in images.each().enumerate() {
        write_png(&dir.join(png_name(first + i)), px, images.side, images.side, images.channels)?;
    }
    Ok(())
}

/// How many sample PNGs (`NNNNNN.png`) in `dir` are numbered `count` or above: an earlier,
/// larger run's, which a run of `count` samples leaves in place.
pub fn older_pngs(dir: &Path, count: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".png")?.parse::<usize>().ok())
        .filter(|&i| i >= count)
        .count()
}

pub fn write_png(path: &Path, pixels: &[u8], w: usize, h: usize, channels: usize) -> Result<()> {
    let bytes = png_bytes(pixels, w, h, channels).with_context(|| format!("cannot encode {}", path.display()))?;
    crate::io::write_atomic(path, &bytes)
}

/// The PNG file of a uint8 image (1 channel: grayscale, 3: RGB).
pub fn png_bytes(pixels: &[u8], w: usize, h: usize, channels: usize) -> Result<Vec<u8>> {
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        other => bail!("cannot write a {other}-channel image as PNG"),
    };
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes).write_image(pixels, w as u32, h as u32, color)?;
    Ok(bytes)
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
    for (i, (px, &label)) in images.each().zip(&images.labels).enumerate() {
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

/// Creates `dir` and checks that it is writable before any work starts.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let probe = dir.join(".udit-write-test");
    std::fs::write(&probe, b"").with_context(|| format!("cannot write into {}", dir.display()))?;
    std::fs::remove_file(probe).ok();
    Ok(())
}
