//! `loss.svg`, beside `--log`: train loss and eval loss against step, the learning rate on a
//! second axis; drawn with plotters' SVG backend and rewritten (atomically) at every log write.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lomo_cli::chart;
use plotters::prelude::*;

/// Points drawn per series at most: a long run is thinned evenly (its last point kept), so
/// redrawing at every step stays cheap.
const MAX_POINTS: usize = 2000;

/// A run's curves so far.
#[derive(Debug, Default, Clone)]
pub struct Curves {
    /// (step, train loss)
    pub train: Vec<(u64, f64)>,
    /// (step, eval loss)
    pub eval: Vec<(u64, f64)>,
    /// (step, learning rate)
    pub lr: Vec<(u64, f64)>,
}

/// `loss.svg` in the directory of `log`.
pub fn beside(log: &Path) -> PathBuf {
    log.with_file_name("loss.svg")
}

fn thin(points: &[(u64, f64)]) -> Vec<(f64, f64)> {
    let finite: Vec<(f64, f64)> = points.iter().filter(|p| p.1.is_finite()).map(|&(s, v)| (s as f64, v)).collect();
    if finite.len() <= MAX_POINTS {
        return finite;
    }
    let stride = finite.len().div_ceil(MAX_POINTS);
    let mut out: Vec<(f64, f64)> = finite.iter().step_by(stride).copied().collect();
    if out.last() != finite.last() {
        out.extend(finite.last());
    }
    out
}

/// A range around `values` that plotters can draw (never empty).
fn span(values: impl Iterator<Item = f64>, floor_at_zero: bool) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    let lo = if floor_at_zero { 0.0 } else { lo - pad };
    lo..hi + pad
}

/// The chart as SVG text: one line per series (train loss, eval loss if any, learning rate).
pub fn render(curves: &Curves) -> Result<String> {
    let train = thin(&curves.train);
    let eval = thin(&curves.eval);
    let lr = thin(&curves.lr);
    let steps = span(train.iter().chain(&eval).chain(&lr).map(|p| p.0), false);
    let loss = span(train.iter().chain(&eval).map(|p| p.1), false);
    let rate = span(lr.iter().map(|p| p.1), true);
    chart::svg((800, 480), |root| {
        let mut chart = chart::frame(root, "lomo train", 18)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .right_y_label_area_size(72)
            .build_cartesian_2d(steps.clone(), loss)
            .map_err(chart::error)?
            .set_secondary_coord(steps, rate);
        chart.configure_mesh().x_desc("step").y_desc("loss").light_line_style(WHITE).draw().map_err(chart::error)?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(chart::error)?;
        chart
            .draw_series(LineSeries::new(train, chart::BLUE.stroke_width(2)))
            .map_err(chart::error)?
            .label("train loss")
            .legend(chart::mark(chart::BLUE, 4));
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval, chart::ORANGE.stroke_width(2)))
                .map_err(chart::error)?
                .label("eval loss")
                .legend(chart::mark(chart::ORANGE, 4));
        }
        chart
            .draw_secondary_series(LineSeries::new(lr, chart::GREEN.stroke_width(1)))
            .map_err(chart::error)?
            .label("learning rate (right axis)")
            .legend(chart::mark(chart::GREEN, 4));
        chart::legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// Writes the chart to `path` durably, through a temporary file, so a viewer never reads half
/// of it.
pub fn write(path: &Path, curves: &Curves) -> Result<()> {
    let svg = render(curves)?;
    lomo_io::atomic::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data lines of an SVG document (which must parse as XML): polylines in a colour
    /// (plotters draws the axes' ticks as black polylines).
    fn series(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("the SVG parses as XML");
        doc.descendants()
            .filter(|n| n.tag_name().name() == "polyline")
            .filter_map(|n| n.attribute("stroke").map(str::to_string))
            .filter(|stroke| stroke != "#000000")
            .collect()
    }

    #[test]
    fn one_line_per_series() {
        let curves = Curves {
            train: (1..=50).map(|s| (s, 3.0 / s as f64)).collect(),
            eval: vec![(10, 1.0), (20, 0.8), (50, 0.5)],
            lr: (1..=50).map(|s| (s, 1e-3 * (1.0 - s as f64 / 50.0))).collect(),
        };
        let svg = render(&curves).unwrap();
        assert_eq!(series(&svg), ["#4E79A7", "#F28E2B", "#59A14F"], "{svg}");
        assert!(svg.contains("eval loss") && svg.contains("train loss"));
        let no_eval = Curves { eval: Vec::new(), ..curves };
        assert_eq!(series(&render(&no_eval).unwrap()).len(), 2);
    }

    #[test]
    fn one_point_and_non_finite_losses_draw() {
        let curves = Curves { train: vec![(1, f64::NAN), (2, 2.5)], eval: Vec::new(), lr: vec![(1, 0.0), (2, 0.0)] };
        assert_eq!(series(&render(&curves).unwrap()).len(), 2);
    }

    #[test]
    fn long_runs_are_thinned_keeping_the_last_point() {
        let points: Vec<(u64, f64)> = (0..10_001).map(|s| (s, s as f64)).collect();
        let thinned = thin(&points);
        assert!(thinned.len() <= MAX_POINTS + 1);
        assert_eq!(thinned.last(), Some(&(10_000.0, 10_000.0)));
    }
}
