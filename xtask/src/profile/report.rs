//! The suite's tables: markdown like the paper's Table 1 and an SVG like its Figure 2
//! (stacked bars of weights, gradients, optimizer state and activations per optimizer),
//! drawn with plotters.

use std::fmt::Write;

use super::{CaseResult, SuiteResult};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// Bytes in the unit that keeps a suite's numbers readable: GiB from 1 GiB up, else MiB.
fn size(bytes: u64, unit: f64) -> String {
    if unit == GIB {
        format!("{:.2}", bytes as f64 / GIB)
    } else {
        format!("{:.1}", bytes as f64 / MIB)
    }
}

fn unit_of(result: &SuiteResult) -> (f64, &'static str) {
    let largest = result.cases.iter().map(|c| c.plan.weights).max().unwrap_or(0);
    if largest as f64 >= GIB {
        (GIB, "GiB")
    } else {
        (MIB, "MiB")
    }
}

fn opt_size(bytes: Option<u64>, unit: f64) -> String {
    bytes.map_or_else(|| "–".into(), |b| size(b, unit))
}

/// The markdown table.
pub fn markdown(result: &SuiteResult) -> String {
    let (unit, unit_name) = unit_of(result);
    let mut out = String::new();
    let first = result.cases.first();
    let _ = writeln!(
        out,
        "## Profile `{}` ({} backend, {} build)\n",
        result.suite,
        result.backend.name(),
        if result.release { "release" } else { "debug" }
    );
    if let Some(c) = first {
        let _ = writeln!(
            out,
            "Model {} ({:.1}M parameters, {}), batch {} × {} tokens, loss chunk {}. Memory in {unit_name}: \
             the planner's prediction (weights, gradients, optimizer state, activations, total) and the \
             measured peak live heap of the step, its error, and the peak RSS of the process.\n",
            c.case.model_name,
            c.params as f64 / 1e6,
            c.case.dtype,
            c.case.batch_size,
            c.case.tokens,
            c.case.loss_chunk_tokens.map_or_else(|| "default (2^24 logits)".into(), |n| format!("{n} positions")),
        );
    }
    let _ = writeln!(
        out,
        "| case | weights | gradients | optimizer state | activations | total (plan) | peak heap | plan error | peak RSS | step RSS | s/step |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &result.cases {
        let p = &c.plan;
        let m = c.measured.as_ref();
        let measured = match (m, &c.error) {
            (Some(m), _) => format!(
                "{} | {} | {} | {} | {:.2}",
                opt_size(m.peak_heap, unit),
                c.plan_error().map_or_else(|| "–".into(), |e| format!("{:+.1}%", e * 100.0)),
                opt_size(m.peak_rss, unit),
                opt_size(m.step_peak_rss, unit),
                m.seconds_per_step
            ),
            (None, Some(e)) => format!("failed: {e} | | | |"),
            (None, None) => "– | | | |".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {measured} |",
            c.case.label(),
            size(p.weights, unit),
            size(p.gradients, unit),
            size(p.optimizer_state, unit),
            size(p.activations, unit),
            size(p.total, unit),
        );
    }
    for c in &result.cases {
        if let Some(io) = c.measured.as_ref().and_then(|m| m.offload_io) {
            let _ = writeln!(
                out,
                "\n`{}`: the measured step read {} and wrote {} of the working copy ({unit_name}); the plan's weights are the two resident stages'.",
                c.case.label(),
                size(io.read, unit),
                size(io.written, unit),
            );
            if let Some(t) = c.measured.as_ref().and_then(|m| m.timings.as_ref()) {
                let _ = writeln!(
                    out,
                    "Its phases (s): tape-free forward {:.2}, stages' backward {:.2}, updates {:.2}, fetching from the store {:.2}, writing back {:.2}.",
                    t.forward,
                    t.backward.iter().sum::<f64>() + t.norm_pass.unwrap_or(0.0),
                    t.update,
                    t.store_fetch,
                    t.store_release,
                );
            }
        }
    }
    out
}

/// The chart: one stacked bar per case (the plan's four parts), a black tick at the
/// measured peak heap; drawn with plotters' SVG backend, as `lomo train`'s loss.svg is.
pub fn svg(result: &SuiteResult) -> anyhow::Result<String> {
    use lomo_cli::chart;
    use plotters::prelude::*;
    let (unit, unit_name) = unit_of(result);
    let cases: &[CaseResult] = &result.cases;
    let n = cases.len().max(1) as u32;
    let max_bytes = cases
        .iter()
        .map(|c| c.plan.total.max(c.measured.as_ref().and_then(|m| m.peak_heap).unwrap_or(0)))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let top = max_bytes / unit * 1.12;
    let title = format!(
        "Peak memory of one step, {} ({} {}): bars plan, tick measured heap",
        result.suite,
        cases.first().map_or("", |c| &c.case.model_name),
        cases.first().map_or("", |c| &c.case.dtype),
    );
    let label = |i: usize| {
        cases.get(i).map(|c| format!("{} {}", c.case.mode.name(), c.case.optimizer.name())).unwrap_or_default()
    };
    let width = 200 + 110 * n;
    chart::svg((width.max(640), 440), |root| {
        let mut chart = chart::bar_chart(root, &title, 15, n, top, unit_name, label)?;
        let colours = [
            ("weights", chart::BLUE),
            ("gradients", chart::ORANGE),
            ("optimizer state", chart::RED),
            ("activations", chart::TEAL),
        ];
        let parts = |c: &CaseResult| [c.plan.weights, c.plan.gradients, c.plan.optimizer_state, c.plan.activations];
        for (k, (name, colour)) in colours.into_iter().enumerate() {
            let bars = cases.iter().enumerate().filter_map(|(i, c)| {
                let p = parts(c);
                let base: f64 = p[..k].iter().map(|&b| b as f64 / unit).sum();
                let v = p[k] as f64 / unit;
                (v > 0.0).then(|| chart::bar(i as u32, base, base + v, colour.filled(), 14, 14))
            });
            chart.draw_series(bars).map_err(chart::error)?.label(name).legend(chart::mark(colour, 5));
        }
        let ticks = cases.iter().enumerate().filter_map(|(i, c)| {
            let heap = c.measured.as_ref().and_then(|m| m.peak_heap)? as f64 / unit;
            let h = top * 0.004;
            Some(chart::bar(i as u32, heap - h, heap + h, BLACK.filled(), 8, 8))
        });
        chart
            .draw_series(ticks)
            .map_err(chart::error)?
            .label("measured peak heap")
            .legend(|(x, y)| Rectangle::new([(x, y - 1), (x + 12, y + 1)], BLACK.filled()));
        let totals = cases.iter().enumerate().map(|(i, c)| {
            let heap = c.measured.as_ref().and_then(|m| m.peak_heap).unwrap_or(0);
            let y = c.plan.total.max(heap) as f64 / unit + top * 0.045;
            chart::note(size(c.plan.total, unit), i as u32, y, 11)
        });
        chart.draw_series(totals).map_err(chart::error)?;
        chart::legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}
