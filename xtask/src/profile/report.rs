//! The suite's tables: markdown like the paper's Table 1 and an SVG like its Figure 2
//! (stacked bars of weights, gradients, optimizer state and activations per optimizer),
//! written by hand.

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
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart: one stacked bar per case (the plan's four parts), a black tick at the
/// measured peak heap.
pub fn svg(result: &SuiteResult) -> String {
    let (unit, unit_name) = unit_of(result);
    let cases: &[CaseResult] = &result.cases;
    let bar_w = 46.0;
    let gap = 24.0;
    let (left, top, plot_h, bottom) = (70.0, 40.0, 300.0, 90.0);
    let width = left + cases.len().max(1) as f64 * (bar_w + gap) + 170.0;
    let height = top + plot_h + bottom;
    let max_bytes = cases
        .iter()
        .map(|c| c.plan.total.max(c.measured.as_ref().and_then(|m| m.peak_heap).unwrap_or(0)))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_val = max_bytes / unit;
    // A round axis maximum: 1, 2 or 5 times a power of ten.
    let mag = 10f64.powf(max_val.log10().floor());
    let axis_max = [1.0, 2.0, 5.0, 10.0].iter().map(|k| k * mag).find(|&v| v >= max_val).unwrap_or(10.0 * mag);
    let y = |v: f64| top + plot_h - v / axis_max * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="13">Peak memory of one step, {} ({} {}) — bars: plan, tick: measured heap</text>"#,
        escape(&result.suite),
        escape(cases.first().map_or("", |c| &c.case.model_name)),
        escape(cases.first().map_or("", |c| &c.case.dtype)),
    );
    for i in 0..=5 {
        let v = axis_max * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            width - 170.0,
            left - 6.0,
            yy + 4.0,
            if axis_max >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") }
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{unit_name}</text>"#,
        top + plot_h / 2.0
    );
    let colours = [("weights", "#4e79a7"), ("gradients", "#f28e2b"), ("optimizer state", "#e15759"), ("activations", "#76b7b2")];
    for (i, c) in cases.iter().enumerate() {
        let x = left + gap / 2.0 + i as f64 * (bar_w + gap);
        let parts = [c.plan.weights, c.plan.gradients, c.plan.optimizer_state, c.plan.activations];
        let mut base = 0.0;
        for (bytes, (_, colour)) in parts.iter().zip(colours) {
            let v = *bytes as f64 / unit;
            if v > 0.0 {
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{:.1}" fill="{colour}"/>"#,
                    y(base + v),
                    y(base) - y(base + v)
                );
            }
            base += v;
        }
        if let Some(heap) = c.measured.as_ref().and_then(|m| m.peak_heap) {
            let yy = y(heap as f64 / unit);
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="black" stroke-width="2"/>"#,
                x - 4.0,
                x + bar_w + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + bar_w / 2.0,
            top + plot_h + 16.0,
            escape(c.case.mode.name()),
            x + bar_w / 2.0,
            top + plot_h + 30.0,
            escape(c.case.optimizer.name()),
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + bar_w / 2.0,
            y(base) - 4.0,
            size(c.plan.total, unit)
        );
    }
    let lx = width - 150.0;
    for (i, (name, colour)) in colours.iter().enumerate() {
        let ly = top + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colour}"/><text x="{:.0}" y="{:.0}">{name}</text>"#,
            lx + 18.0,
            ly + 10.0
        );
    }
    let ly = top + 10.0 + 4.0 * 18.0 + 6.0;
    let _ = writeln!(
        s,
        r#"<line x1="{lx}" x2="{:.0}" y1="{ly}" y2="{ly}" stroke="black" stroke-width="2"/><text x="{:.0}" y="{:.0}">measured peak heap</text>"#,
        lx + 12.0,
        lx + 18.0,
        ly + 4.0
    );
    s.push_str("</svg>\n");
    s
}
