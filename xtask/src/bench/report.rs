//! The bench's markdown: the side-by-side table and where our step's time goes.

use std::fmt::Write;

use super::case::{CaseKind, OursResult};
use super::{BenchResult, CaseResult, PeerResult};

/// Median, min and max of the measured (post-warm-up) values.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Stats { median, min: v[0], max: v[n - 1] })
}

fn ours_seconds(r: &OursResult, warmup: usize) -> Vec<f64> {
    r.steps.iter().skip(warmup).map(|s| s.seconds).collect()
}

fn peer_seconds(p: &PeerResult, warmup: usize) -> Vec<f64> {
    p.steps.iter().skip(warmup).map(|s| s.seconds).collect()
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn label(kind: CaseKind) -> &'static str {
    match kind {
        CaseKind::Lomo => "fused LOMO",
        CaseKind::LomoClip => "fused LOMO + clip-grad-norm 1.0 (two passes)",
        CaseKind::Adalomo => "fused AdaLomo",
        CaseKind::Adamw => "full backward + AdamW",
    }
}

/// A case's row of the side-by-side table: ours, the peer, the ratio, the first losses.
fn case_row(r: &BenchResult, c: &CaseResult, tokens: f64) -> String {
    let mut row = format!("| {} |", label(c.kind));
    let ours = c.ours.as_ref().and_then(|o| Some((o, stats(&ours_seconds(o, r.warmup))?)));
    match &ours {
        Some((o, s)) => {
            let cores = o.cpu_seconds / o.wall_seconds.max(1e-9);
            let rss = o.peak_rss.map_or("–".into(), gib);
            let _ = write!(
                row,
                " {:.3} ({:.3}–{:.3}) | {:.0} | {cores:.2} | {rss} |",
                s.median,
                s.min,
                s.max,
                tokens / s.median
            );
        }
        None => {
            let _ = write!(row, " failed: {} | | | |", c.error.as_deref().unwrap_or("?"));
        }
    }
    let peer = c.peer.as_ref().and_then(|p| Some((p, stats(&peer_seconds(p, r.warmup))?)));
    match &peer {
        Some((p, s)) => {
            let measured = &p.steps[r.warmup.min(p.steps.len())..];
            let (cpu, wall) = measured.iter().fold((0.0, 0.0), |(c, w), s| (c + s.cpu_seconds, w + s.seconds));
            let _ =
                write!(row, " {:.3} ({:.3}–{:.3}) | {:.2} | {} |", s.median, s.min, s.max, cpu / wall, gib(p.peak_rss));
        }
        None => {
            let _ = write!(row, " {} | | |", c.peer_error.as_deref().unwrap_or("–"));
        }
    }
    match (&ours, &peer) {
        (Some((_, a)), Some((_, b))) => {
            let _ = write!(row, " **{:.2} ×** |", a.median / b.median);
        }
        _ => row.push_str(" – |"),
    }
    let first_ours = c.ours.as_ref().and_then(|o| o.steps.first()).map(|s| format!("{:.6}", s.loss));
    let first_peer = c.peer.as_ref().and_then(|p| p.steps.first()).map(|s| format!("{:.6}", s.loss));
    let _ = writeln!(row, " {} / {} |", first_ours.as_deref().unwrap_or("–"), first_peer.as_deref().unwrap_or("–"));
    row
}

/// Where one step of ours goes (the fused step's timers per phase) and, with several ranks,
/// the all-reduce's share.
fn phases(out: &mut String, r: &BenchResult) {
    let _ = writeln!(
        out,
        "\nWhere one step of ours goes (the fused step's own timers, median over the measured steps, seconds):\n"
    );
    let _ = writeln!(out, "| step | forward (no tape) | norm pass | backward: embedding | blocks | loss stage | updates | timers total | wall |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.cases {
        let Some(o) = &c.ours else { continue };
        let measured: Vec<_> = o.steps.iter().skip(r.warmup).collect();
        if measured.iter().all(|s| s.timings.backward.is_empty()) {
            continue;
        }
        let med = |f: &dyn Fn(&super::case::StepSample) -> f64| {
            stats(&measured.iter().map(|s| f(s)).collect::<Vec<_>>()).map_or(0.0, |s| s.median)
        };
        let n = measured[0].timings.backward.len();
        let fwd = med(&|s| s.timings.forward);
        let norm = med(&|s| s.timings.norm_pass.unwrap_or(0.0));
        let embed = med(&|s| s.timings.backward.first().copied().unwrap_or(0.0));
        let blocks = med(&|s| s.timings.backward[1..n.saturating_sub(1).max(1)].iter().sum());
        let loss = med(&|s| s.timings.backward.last().copied().unwrap_or(0.0));
        let upd = med(&|s| s.timings.update);
        let total = med(&|s| s.timings.total());
        let wall = med(&|s| s.seconds);
        let norm = if measured[0].timings.norm_pass.is_some() { format!("{norm:.3}") } else { "–".into() };
        let _ = writeln!(
            out,
            "| {} | {fwd:.3} | {norm} | {embed:.3} | {blocks:.3} | {loss:.3} | {upd:.3} | {total:.3} | {wall:.3} |",
            label(c.kind)
        );
    }
    if r.nproc > 1 {
        let _ = writeln!(out, "\nData parallel: {} ranks sharing the threads, each with {} rows; rank 0's timers. The sums across ranks (all-reduce, median s/step, share of the wall time):\n", r.nproc, r.batch_size / r.nproc);
        for c in &r.cases {
            let Some(o) = &c.ours else { continue };
            let measured: Vec<_> = o.steps.iter().skip(r.warmup).collect();
            let reduce =
                stats(&measured.iter().map(|s| s.timings.reduce).collect::<Vec<_>>()).map_or(0.0, |s| s.median);
            let wall = stats(&measured.iter().map(|s| s.seconds).collect::<Vec<_>>()).map_or(0.0, |s| s.median);
            let _ = writeln!(
                out,
                "- {}: {reduce:.3} s of {wall:.3} s ({:.0} %)",
                label(c.kind),
                100.0 * reduce / wall.max(1e-9)
            );
        }
    }
}

/// The report: one row per case, ours beside the peer, then our phase breakdown.
pub fn markdown(r: &BenchResult) -> String {
    let mut out = String::new();
    let threads = r.threads.map_or_else(|| format!("{} (all)", r.cores), |t| t.to_string());
    let _ = writeln!(
        out,
        "#### cargo xtask bench `{}`: {} ({:.1}M parameters, {}), batch {} × {} tokens, {} backend, {} threads{}\n",
        r.name,
        r.model,
        r.params as f64 / 1e6,
        r.dtype,
        r.batch_size,
        r.tokens,
        r.backend.name(),
        threads,
        if r.release { "" } else { " (debug build)" },
    );
    let _ = writeln!(
        out,
        "Seconds per step: median (min–max) of the steps after {} warm-up; cores = process CPU time / wall time; ratio = ours / peer (below 1: ours is faster).\n",
        r.warmup
    );
    let _ = writeln!(out, "| step | lomo s/step | tokens/s | cores | peak RSS | PyTorch + lomo-optim s/step | cores | peak RSS | ratio | first loss: lomo / peer |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let tokens = (r.batch_size * r.tokens) as f64;
    for c in &r.cases {
        out.push_str(&case_row(r, c, tokens));
    }

    phases(&mut out, r);
    if let Some(p) = r.cases.iter().find_map(|c| c.peer.as_ref()) {
        let _ = writeln!(
            out,
            "\nPeer: {} (attention: {}, {} threads).",
            p.versions,
            p.attn_implementation.as_deref().unwrap_or("?"),
            p.threads
        );
    }
    out
}

/// The chart: per case, our median s/step beside the peer's (whiskers min–max), the ratio
/// above; drawn with plotters' SVG backend, as the profile's chart and `lomo train`'s loss.svg.
pub fn svg(r: &BenchResult) -> anyhow::Result<String> {
    use lomo_cli::chart;
    use plotters::prelude::*;
    let rows: Vec<(String, Option<Stats>, Option<Stats>)> = r
        .cases
        .iter()
        .map(|c| {
            let ours = c.ours.as_ref().and_then(|o| stats(&ours_seconds(o, r.warmup)));
            let peer = c.peer.as_ref().and_then(|p| stats(&peer_seconds(p, r.warmup)));
            (label(c.kind).to_string(), ours, peer)
        })
        .collect();
    let n = rows.len().max(1) as u32;
    let top = rows
        .iter()
        .flat_map(|(_, o, p)| [o.as_ref().map(|s| s.max), p.as_ref().map(|s| s.max)])
        .flatten()
        .fold(0f64, f64::max)
        .max(1e-3)
        * 1.4;
    let title = format!(
        "s/step, {} {} {} × {} ({} threads): lomo vs PyTorch + lomo-optim",
        r.model,
        r.dtype,
        r.batch_size,
        r.tokens,
        r.threads.unwrap_or(r.cores)
    );
    let width = 240 + 200 * n;
    // A case's segment in pixels (the plot less the y labels and margins), for the insets.
    let seg = (width - 60 - 24) as f64 / n.max(2) as f64;
    let px = |f: f64| (f * seg).round() as u32;
    chart::svg((width, 420), |root| {
        let label = |i: usize| rows.get(i).map(|(l, _, _)| l.clone()).unwrap_or_default();
        let mut chart = chart::bar_chart(root, &title, 14, n, top, "seconds per step (median)", label)?;
        for (side, (name, colour)) in
            [("lomo", chart::BLUE), ("PyTorch + lomo-optim", chart::ORANGE)].into_iter().enumerate()
        {
            let pick = |row: &(String, Option<Stats>, Option<Stats>)| {
                let stats = if side == 0 { row.1.as_ref() } else { row.2.as_ref() };
                stats.map(|s| (s.median, s.min, s.max))
            };
            // Each side takes half of its case's segment (pixel margins inset it).
            let (left, right) = if side == 0 { (px(0.1), px(0.52)) } else { (px(0.52), px(0.1)) };
            let bars = rows.iter().enumerate().filter_map(|(i, row)| {
                let (median, _, _) = pick(row)?;
                Some(chart::bar(i as u32, 0.0, median, colour.filled(), left, right))
            });
            chart.draw_series(bars).map_err(chart::error)?.label(name).legend(chart::mark(colour, 5));
            // A 3-pixel bar from min to max at the middle of the side's bar.
            let (left, right) = if side == 0 { (px(0.29) - 1, px(0.71) - 2) } else { (px(0.71) - 2, px(0.29) - 1) };
            let whiskers = rows.iter().enumerate().filter_map(|(i, row)| {
                let (_, min, max) = pick(row)?;
                Some(chart::bar(i as u32, min, max, BLACK.filled(), left, right))
            });
            chart.draw_series(whiskers).map_err(chart::error)?;
        }
        let ratios = rows.iter().enumerate().filter_map(|(i, (_, ours, peer))| {
            let (o, p) = (ours.as_ref()?, peer.as_ref()?);
            Some(chart::note(format!("{:.2} ×", o.median / p.median), i as u32, o.max.max(p.max) + top * 0.03, 12))
        });
        chart.draw_series(ratios).map_err(chart::error)?;
        chart::legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}
