//! What a sweep leaves: `sweep.json` (settings and rows), `sweep.md` (the table) and
//! `fid-vs-nfe.png` (FID against network evaluations, one line per sampler setting).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::{Row, SweepSettings};
use crate::guidance::GuidanceInterval;
use crate::io::plot::{Canvas, Drawn, write_plot};
use crate::io::write_atomic;

/// What NFE counts, as the files say it.
pub const NFE_MEANS: &str = "network evaluations per image; a guided call runs the doubled batch and counts 2";

/// A row's numbers in one line: "FID 9.81, class accuracy 0.787, 0.051 s per image".
pub fn summary(row: &Row) -> String {
    let mut s = format!("FID {:.2}", row.fid);
    if let Some(a) = row.class_accuracy {
        s += &format!(", class accuracy {a:.3}");
    }
    if let Some(t) = row.seconds_per_image {
        s += &format!(", {t:.3} s per image");
    }
    s
}

/// Writes the three files into `dir`.
pub fn write(dir: &Path, settings: &SweepSettings, rows: &[Row], font: &Path) -> Result<()> {
    let json = serde_json::json!({ "settings": settings, "nfe": NFE_MEANS, "rows": rows });
    write_atomic(&dir.join("sweep.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_atomic(&dir.join("sweep.md"), table(settings, rows).as_bytes())?;
    write_plot(&dir.join("fid-vs-nfe.png"), font, (1000, 620), |root| plot(rows, root))
}

/// The markdown table, with a line that says what was measured.
pub fn table(settings: &SweepSettings, rows: &[Row]) -> String {
    let accuracy = rows.iter().any(|r| r.class_accuracy.is_some());
    let mut s = format!(
        "{} samples per row (seed {}, classes {}, batch {}) of {}, scored by {}. NFE: {NFE_MEANS}; \
         time: sampling wall clock per image.\n\n",
        settings.num_samples, settings.seed, settings.classes, settings.batch, settings.model, settings.meter
    );
    s += "| sampler | schedule | steps | NFE | guidance | interval | FID |";
    s += if accuracy { " accuracy | time (s) |\n" } else { " time (s) |\n" };
    s += if accuracy { "|---|---|---|---|---|---|---|---|---|\n" } else { "|---|---|---|---|---|---|---|---|\n" };
    for r in rows {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} |",
            r.sampler,
            r.schedule,
            r.steps,
            r.nfe,
            r.cfg_scale,
            or_dash(r.interval.as_deref().map(|i| GuidanceInterval::parse(i).map_or(i.to_string(), |i| i.describe()))),
            r.fid
        );
        if accuracy {
            s += &format!(" {} |", or_dash(r.class_accuracy.map(|a| format!("{a:.3}"))));
        }
        s += &format!(" {} |\n", or_dash(r.seconds_per_image.map(|t| format!("{t:.3}"))));
    }
    s
}

/// FID against NFE on a log axis, one line per series in order of first appearance.
fn plot(rows: &[Row], root: &Canvas) -> Drawn {
    let mut series: Vec<&str> = Vec::new();
    for r in rows {
        if !series.contains(&r.series.as_str()) {
            series.push(&r.series);
        }
    }
    let nfe = rows.iter().map(|r| r.nfe as f64);
    let (lo, hi) = nfe.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let fid_max = rows.iter().map(|r| r.fid).filter(|f| f.is_finite()).fold(0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption("FID against network evaluations per image", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo / 1.25..hi * 1.25).log_scale(), 0f64..(fid_max * 1.1).max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("NFE (log scale; a guided call counts 2)")
        .y_desc("FID")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    for (i, name) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut points: Vec<(f64, f64)> =
            rows.iter().filter(|r| r.series == *name).map(|r| (r.nfe as f64, r.fid)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}
