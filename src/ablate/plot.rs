//! `fid-vs-gmacs.png`: the shape of the paper's Figures 1 and 6. FID against forward GMACs,
//! with error bars of one standard deviation over seeds. When the plan groups its entries into
//! systems, each system is a colour with a line through its sizes and each guidance scale a
//! marker (Figure 1); otherwise each guidance scale is a colour and each point is named
//! (the ladder). Entries with no finished run are left out.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::report::{EntryResult, Results};
use crate::io::plot::{Canvas, Drawn, write_plot};

/// Colours of the systems (or of the guidance scales), in order.
const COLOURS: [RGBColor; 6] =
    [BLUE, RED, RGBColor(0, 150, 0), RGBColor(200, 120, 0), RGBColor(140, 0, 170), RGBColor(0, 150, 160)];

pub fn fid_vs_gmacs(results: &Results, out: &Path, font: &Path) -> Result<()> {
    write_plot(out, font, (900, 600), |root| draw(results, root))
}

/// (low, high) with a margin of `frac` of the span (or of the value, for a single one).
fn padded(values: impl Iterator<Item = f64> + Clone, frac: f64) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { (hi - lo) * frac } else { lo.abs().max(1e-3) * frac };
    (lo - pad, hi + pad)
}

/// (GMACs, mean FID, sd) of `e` at guidance scale number `k`.
fn point(e: &EntryResult, k: usize) -> (f64, f64, f64) {
    let fid = &e.summary[k].fid;
    (e.gmacs, fid.mean, fid.sd.unwrap_or(0.0))
}

/// A marker of scale number `k` at `(x, y)`: filled circle, open circle, filled triangle,
/// cross.
fn marker<DB: DrawingBackend, C: Clone + 'static>(k: usize, at: C, colour: RGBColor) -> DynElement<'static, DB, C> {
    match k % 4 {
        0 => Circle::new(at, 5, colour.filled()).into_dyn(),
        1 => Circle::new(at, 5, colour.stroke_width(2)).into_dyn(),
        2 => TriangleMarker::new(at, 6, colour.filled()).into_dyn(),
        _ => Cross::new(at, 5, colour.stroke_width(2)).into_dyn(),
    }
}

fn draw(results: &Results, root: &Canvas) -> Drawn {
    let done: Vec<&EntryResult> = results.entries.iter().filter(|e| !e.summary.is_empty()).collect();
    let (x0, x1) = padded(done.iter().map(|e| e.gmacs), 0.15);
    let bars = done.iter().flat_map(|e| {
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
    let scales = &results.protocol.cfg_scales;
    let mut systems: Vec<&str> = Vec::new();
    for e in &results.entries {
        if !systems.contains(&e.system.as_str()) {
            systems.push(&e.system);
        }
    }
    let grouped = results.entries.iter().any(|e| e.system != e.name);
    for (k, &cfg_scale) in scales.iter().enumerate() {
        // Per line: its colour and points (a line per system, or one per scale).
        let lines: Vec<(RGBColor, Vec<(f64, f64, f64)>)> = match grouped {
            true => (systems.iter().enumerate())
                .map(|(j, system)| {
                    let mut points: Vec<_> = done.iter().filter(|e| e.system == *system).map(|e| point(e, k)).collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (COLOURS[j % COLOURS.len()], points)
                })
                .collect(),
            false => vec![(COLOURS[k % COLOURS.len()], done.iter().map(|e| point(e, k)).collect())],
        };
        for (colour, points) in &lines {
            let bar =
                |&(x, y, sd): &(f64, f64, f64)| ErrorBar::new_vertical(x, y - sd, y, y + sd, colour.stroke_width(1), 8);
            chart.draw_series(points.iter().map(bar))?;
            if grouped {
                chart.draw_series(LineSeries::new(points.iter().map(|&(x, y, _)| (x, y)), colour.stroke_width(2)))?;
            }
            chart.draw_series(points.iter().map(|&(x, y, _)| marker(k, (x, y), *colour)))?;
        }
        // The legend: a scale's marker (black when colours are systems).
        let colour = if grouped { BLACK } else { COLOURS[k % COLOURS.len()] };
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label(format!("guidance {cfg_scale}"))
            .legend(move |(x, y)| marker(k, (x + 10, y), colour));
        if !grouped && k == 0 {
            // Each name beside its point of the first scale (the other scales' points of an
            // entry lie at the same GMACs), a few pixels to the right.
            chart.draw_series(done.iter().map(|e| {
                let font = ("sans-serif", 14).into_font().color(&BLACK);
                EmptyElement::at((e.gmacs, e.summary[0].fid.mean)) + Text::new(e.name.clone(), (9, -7), font)
            }))?;
        }
    }
    if grouped {
        for (j, system) in systems.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label(system.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
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
