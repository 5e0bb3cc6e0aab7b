//! `fid-vs-gmacs.png`: the shape of the paper's Figures 1 and 6. One point per entry and
//! guidance scale (named once per entry), FID against forward GMACs, with error bars of one
//! standard deviation over seeds.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::report::Results;
use crate::io::plot::{Canvas, Drawn, write_plot};

/// Colours of the guidance scales, in the protocol's order.
const COLOURS: [RGBColor; 4] = [BLUE, RED, RGBColor(0, 150, 0), RGBColor(200, 120, 0)];

pub fn fid_vs_gmacs(results: &Results, out: &Path, font: &Path) -> Result<()> {
    write_plot(out, font, (900, 600), |root| draw(results, root))
}

/// (low, high) with a margin of `frac` of the span (or of the value, for a single one).
fn padded(values: impl Iterator<Item = f64> + Clone, frac: f64) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let pad = if hi > lo { (hi - lo) * frac } else { lo.abs().max(1e-3) * frac };
    (lo - pad, hi + pad)
}

fn draw(results: &Results, root: &Canvas) -> Drawn {
    let (x0, x1) = padded(results.entries.iter().map(|e| e.gmacs), 0.15);
    let bars = results.entries.iter().flat_map(|e| {
        e.summary.iter().flat_map(|s| {
            let sd = s.fid.sd.unwrap_or(0.0);
            [s.fid.mean - sd, s.fid.mean + sd]
        })
    });
    let (y0, y1) = padded(bars, 0.1);
    // Enough decimals that the FID ticks differ: one more per decade below 100.
    let decimals = (2.0 - (y1 - y0).log10().floor()).clamp(0.0, 4.0) as usize;
    let mut chart = ChartBuilder::on(root)
        .caption("FID against forward GMACs", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x0.max(0.0)..x1, y0.max(0.0)..y1)?;
    chart
        .configure_mesh()
        .x_desc("forward GMACs (batch 1)")
        .y_desc("FID (lower is better)")
        .x_label_formatter(&|v| format!("{v:.3}"))
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .draw()?;
    for (k, &cfg_scale) in results.protocol.cfg_scales.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let points: Vec<(f64, f64, f64)> = results
            .entries
            .iter()
            .map(|e| (e.gmacs, e.summary[k].fid.mean, e.summary[k].fid.sd.unwrap_or(0.0)))
            .collect();
        chart.draw_series(
            points.iter().map(|&(x, y, sd)| ErrorBar::new_vertical(x, y - sd, y, y + sd, colour.stroke_width(1), 8)),
        )?;
        chart
            .draw_series(points.iter().map(|&(x, y, _)| Circle::new((x, y), 5, colour.filled())))?
            .label(format!("guidance {cfg_scale}"))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, colour.filled()));
        // Each name beside its point of the first scale (the other scales' points of an
        // entry lie at the same GMACs), a few pixels to the right.
        if k == 0 {
            chart.draw_series(results.entries.iter().zip(&points).map(|(e, &(x, y, _))| {
                let font = ("sans-serif", 14).into_font().color(&BLACK);
                EmptyElement::at((x, y)) + Text::new(e.name.clone(), (9, -7), font)
            }))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}
