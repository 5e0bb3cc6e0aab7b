//! `udit plot-loss`: the loss curve of a training log as a PNG.

use std::path::Path;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

use super::LogLine;
use crate::io::plot::{Canvas, Drawn, write_plot};

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
    write_plot(out, font, (900, 540), |root| draw(&lines, root))
}

fn draw(lines: &[LogLine], root: &Canvas) -> Drawn {
    let steps = lines.last().map_or(1, |l| l.step).max(1) as f64;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let values = lines.iter().flat_map(|l| [l.loss, l.mse, l.vb]).filter(|&v| positive(v));
    let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Whole decades, so that labelled ticks reach below the smallest curve (VB).
    let (lo, hi) = (10f64.powf(lo.log10().floor()), 10f64.powf(hi.log10().ceil()).max(lo * 10.0));
    let mut chart = ChartBuilder::on(root)
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
    Ok(())
}
