//! `udit plot-loss`: the loss curve of a training log as a PNG; and the font and PNG
//! helpers of every plot (`udit ablate` draws its FID-vs-GMACs figure with them).

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

use super::LogLine;

/// Debian's `fonts-dejavu-core`.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Reads `log` (one JSON [`LogLine`] per line) and draws loss, MSE and VB against the step,
/// on a log scale, into `out`.
pub fn plot_loss(log: &Path, out: &Path, font: &Path) -> Result<()> {
    let text = std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let lines: Vec<LogLine> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}: not a training log line", log.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    if lines.len() < 2 {
        bail!("{} has {} entries; a curve needs at least 2", log.display(), lines.len());
    }
    register_font(font)?;
    write_png(out, (900, 540), |buffer, size| draw(&lines, buffer, size))
}

/// Makes `font` the "sans-serif" of the plots' labels.
pub fn register_font(font: &Path) -> Result<()> {
    let font_bytes = std::fs::read(font).with_context(|| {
        format!("cannot read the font {} (install fonts-dejavu-core, or give another TrueType font)", font.display())
    })?;
    let font_bytes: &'static [u8] = Box::leak(font_bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font_bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType font", font.display()))
}

/// Draws a `size` plot with `draw` and writes it to `out` as a PNG, atomically.
pub fn write_png(
    out: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&mut [u8], (u32, u32)) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<()> {
    let (w, h) = size;
    let mut buffer = vec![0u8; (w * h * 3) as usize];
    draw(&mut buffer, size).map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &buffer,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )?;
    crate::checkpoint::write_atomic(out, &png)
}

fn draw(lines: &[LogLine], buffer: &mut [u8], size: (u32, u32)) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(buffer, size).into_drawing_area();
    root.fill(&WHITE)?;
    let steps = lines.last().map_or(1, |l| l.step).max(1) as f64;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let values = lines.iter().flat_map(|l| [l.loss, l.mse, l.vb]).filter(|&v| positive(v));
    let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Whole decades, so that labelled ticks reach below the smallest curve (VB).
    let (lo, hi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil()).max(lo * 10.0));
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..steps, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.2e}"))
        .draw()?;
    let series: [(&str, RGBColor, fn(&LogLine) -> f64); 3] =
        [("loss", BLUE, |l| l.loss), ("mse", RGBColor(0, 150, 0), |l| l.mse), ("vb", RED, |l| l.vb)];
    for (name, color, value) in series {
        let points: Vec<(f64, f64)> =
            lines.iter().map(|l| (l.step as f64, value(l))).filter(|&(_, v)| positive(v)).collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}
