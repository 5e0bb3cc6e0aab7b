//! PNG plots with plotters: a TrueType font registered as "sans-serif", an RGB canvas, the
//! PNG written atomically.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Debian's `fonts-dejavu-core`.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The canvas a plot draws on.
pub type Canvas<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What drawing returns (plotters' errors are boxed).
pub type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Makes `font` the "sans-serif" of the plots' labels (callers that draw late call this
/// early too, so that a bad font stops them before the long work).
pub fn register_font(font: &Path) -> Result<()> {
    let font_bytes = std::fs::read(font).with_context(|| {
        format!("cannot read the font {} (install fonts-dejavu-core, or give another TrueType font)", font.display())
    })?;
    let font_bytes: &'static [u8] = Box::leak(font_bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font_bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", font.display()))
}

/// Draws a `w` x `h` plot with `draw` and writes it to `out` as a PNG.
pub fn write_plot(out: &Path, font: &Path, (w, h): (u32, u32), draw: impl FnOnce(&Canvas) -> Drawn) -> Result<()> {
    register_font(font)?;
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
        draw(&root).map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &buffer,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )?;
    crate::io::write_atomic(out, &png)
}
