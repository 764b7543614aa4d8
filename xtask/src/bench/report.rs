//! The bench's markdown: the side-by-side table and where our step's time goes.

use std::fmt::Write;

use super::case::{CaseKind, KernelTime, OursResult};
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

/// One side's cells of the side-by-side table: s/step median (min–max), tokens/s, MFU, cores,
/// peak RSS; `None`: `why` in the first cell.
fn side_cells(row: &mut String, r: &BenchResult, measured: Option<(Stats, f64, u64)>, why: Option<&str>) {
    let tokens = (r.batch_size * r.tokens) as f64;
    match measured {
        Some((s, cores, rss)) => {
            let mfu = match &r.peak {
                Some(p) => format!("{:.1} %", 100.0 * step_flops(r) / s.median / (p.tflops * 1e12)),
                None => "–".into(),
            };
            let _ = write!(
                row,
                " {:.3} ({:.3}–{:.3}) | {:.0} | {mfu} | {cores:.2} | {} |",
                s.median,
                s.min,
                s.max,
                tokens / s.median,
                if rss == 0 { "–".into() } else { gib(rss) }
            );
        }
        None => {
            let _ = write!(row, " {} | | | | |", why.unwrap_or("–"));
        }
    }
}

/// A peer's measured steps: statistics, cores, peak RSS.
fn peer_measured(r: &BenchResult, p: &PeerResult) -> Option<(Stats, f64, u64)> {
    let s = stats(&peer_seconds(p, r.warmup))?;
    let measured = &p.steps[r.warmup.min(p.steps.len())..];
    let (cpu, wall) = measured.iter().fold((0.0, 0.0), |(c, w), s| (c + s.cpu_seconds, w + s.seconds));
    Some((s, cpu / wall.max(1e-9), p.peak_rss))
}

/// Model FLOPs of one step with activation recompute: 8 × parameters × tokens (forward 2,
/// recompute 2, backward 4), the same for every case and side.
fn step_flops(r: &BenchResult) -> f64 {
    8.0 * r.params as f64 * (r.batch_size * r.tokens) as f64
}

/// A case's row of the side-by-side table: ours, both peers, the ratios, the first losses.
fn case_row(r: &BenchResult, c: &CaseResult) -> String {
    let mut row = format!("| {} |", label(c.kind));
    let ours = c.ours.as_ref().and_then(|o| {
        let s = stats(&ours_seconds(o, r.warmup))?;
        let cores = o.cpu_seconds / o.wall_seconds.max(1e-9);
        Some((s, cores, o.peak_rss.unwrap_or(0)))
    });
    let ours_median = ours.as_ref().map(|o| o.0.median);
    let failed = c.error.as_ref().map(|e| format!("failed: {e}"));
    side_cells(&mut row, r, ours, failed.as_deref().or(Some("?")));
    let peer = c.peer.as_ref().and_then(|p| peer_measured(r, p));
    let peer_median = peer.as_ref().map(|p| p.0.median);
    side_cells(&mut row, r, peer, c.peer_error.as_deref());
    let hooks = c.hooks.as_ref().and_then(|p| peer_measured(r, p));
    let hooks_median = hooks.as_ref().map(|p| p.0.median);
    side_cells(&mut row, r, hooks, c.hooks_error.as_deref());
    for other in [peer_median, hooks_median] {
        match (ours_median, other) {
            (Some(a), Some(b)) => {
                let _ = write!(row, " **{:.2} ×** |", a / b);
            }
            _ => row.push_str(" – |"),
        }
    }
    let first = |steps: Option<f64>| steps.map_or("–".to_string(), |l| format!("{l:.6}"));
    let _ = writeln!(
        row,
        " {} / {} / {} |",
        first(c.ours.as_ref().and_then(|o| o.steps.first()).map(|s| s.loss)),
        first(c.peer.as_ref().and_then(|p| p.steps.first()).map(|s| s.loss)),
        first(c.hooks.as_ref().and_then(|p| p.steps.first()).map(|s| s.loss)),
    );
    row
}

/// The device memory of each side, where one was measured (a GPU run): ours from cubecl's pool
/// and nvidia-smi, PyTorch's from its own counters and nvidia-smi.
fn device_memory(out: &mut String, r: &BenchResult) {
    let any = r.cases.iter().any(|c| {
        c.ours.as_ref().is_some_and(|o| o.device_reserved_peak.is_some() || o.nvidia_smi_peak.is_some())
            || [&c.peer, &c.hooks].into_iter().flatten().any(|p| p.max_memory_reserved.is_some())
    });
    if !any {
        return;
    }
    let mib = |b: Option<u64>| b.map_or("–".to_string(), |b| format!("{:.0}", b as f64 / (1u64 << 20) as f64));
    let _ = writeln!(out, "\nPeak device memory, MiB: ours = cubecl's pool reserved (the most after any step; its pools do not shrink in a run) and the process by `nvidia-smi` (polled every 200 ms: context and pool); PyTorch = `torch.cuda.max_memory_allocated` / `max_memory_reserved` and `nvidia-smi`:\n");
    let _ = writeln!(out, "| step | lomo pool | lomo nvidia-smi | lomo-optim allocated | reserved | nvidia-smi | hooks allocated | reserved | nvidia-smi |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.cases {
        let o = c.ours.as_ref();
        let mut row = format!(
            "| {} | {} | {} |",
            label(c.kind),
            mib(o.and_then(|o| o.device_reserved_peak)),
            mib(o.and_then(|o| o.nvidia_smi_peak))
        );
        for p in [&c.peer, &c.hooks] {
            let p = p.as_ref();
            let _ = write!(
                row,
                " {} | {} | {} |",
                mib(p.and_then(|p| p.max_memory_allocated)),
                mib(p.and_then(|p| p.max_memory_reserved)),
                mib(p.and_then(|p| p.nvidia_smi_peak))
            );
        }
        let _ = writeln!(out, "{row}");
    }
}

/// Where one step of ours goes (the fused step's timers per phase) and, with several ranks,
/// the all-reduce's share.
/// Per case, the kernels of its last measured step by device time (`--kernel-profile`).
fn kernels(out: &mut String, r: &BenchResult) {
    for c in &r.cases {
        let Some(kernels) = c.ours.as_ref().and_then(|o| o.kernels.as_ref()) else { continue };
        let _ = writeln!(
            out,
            "\nKernels of lomo's last measured step, {}: device time per kernel (cubecl's profiler, each kernel synchronised, so s/step above is slower than without --kernel-profile).\n",
            label(c.kind)
        );
        let _ = writeln!(out, "| kernel | device time | launches | share |\n|---|---:|---:|---:|");
        for k in kernels {
            let _ = writeln!(out, "| {} | {} | {} | {} |", k.name, k.time, k.launches, k.share);
        }
    }
}

/// The last table of kernels in a log of cubecl's profiler (one per `Backend::sync`, which the
/// bench calls after every step): its rows, `| name | duration | launches | ratio |`, where a
/// name holds ` | ` between the parts of its type (read from the right). `None` without one.
pub fn last_kernel_table(log: &str) -> Option<Vec<KernelTime>> {
    let lines: Vec<&str> = log.lines().collect();
    let header = lines.iter().rposition(|l| l.contains("| Num Computed |"))?;
    let mut rows = Vec::new();
    for line in &lines[header + 1..] {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 4 {
            // The rules between header, rows and total.
            if rows.is_empty() {
                continue;
            }
            break;
        }
        let n = cells.len();
        let (name, time, launches, share) = (&cells[..n - 3], cells[n - 3], cells[n - 2], cells[n - 1]);
        if name == ["Total"] {
            break;
        }
        let Ok(launches) = launches.parse() else { continue };
        // The type's first part, and of the rest (a matmul's run to thirty) its operation and
        // its families; not the runtime, which every kernel carries.
        let rest = name[1..].iter().filter(|p| p.ends_with("Op") || p.ends_with("Family"));
        let mut parts: Vec<&str> = name[..1].iter().chain(rest).copied().collect();
        parts.dedup();
        let name = parts.join(" · ");
        rows.push(KernelTime { name, time: time.to_string(), launches, share: share.to_string() });
    }
    (!rows.is_empty()).then_some(rows)
}

fn phases(out: &mut String, r: &BenchResult) {
    let waits = match (r.synced_timings, r.backend) {
        (true, _) => "waiting for the device at every phase",
        (false, crate::backend::BackendKind::Cpu) => "a CPU backend: each phase's own time",
        // On an asynchronous backend an unsynced timer reads when the kernels were queued.
        (false, _) => "not waiting for the device: queue times, not device times (--synced-timings)",
    };
    let _ = writeln!(
        out,
        "\nWhere one step of ours goes (the fused step's own timers, {waits}; median over the measured steps, seconds):\n"
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

/// How the MFU column is computed, and the peak it divides by.
fn mfu_note(r: &BenchResult) -> String {
    let flops = step_flops(r);
    match &r.peak {
        Some(p) => format!(
            "MFU = model FLOPs per step (8 × {:.1}M parameters × {} tokens = {flops:.3e}: forward, recompute, backward; attention's own FLOPs not counted) / s/step / {} TFLOP/s ({}).",
            r.params as f64 / 1e6,
            r.batch_size * r.tokens,
            p.tflops,
            p.source
        ),
        None => format!("MFU: no peak known (--peak-tflops F; on CUDA in bf16/f16 the data sheet's for the GPU nvidia-smi names); model FLOPs per step {flops:.3e} (8 × parameters × tokens)."),
    }
}

/// The report: one row per case, ours beside the peers, device memory on a GPU, then our phase
/// breakdown.
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
        "Seconds per step: median (min–max) of the steps after {} warm-up; cores = process CPU time / wall time; ratio = lomo / peer (below 1: lomo is faster). Peers: PyTorch + the LOMO authors' package (lomo-optim), and PyTorch's own fused-in-backward hooks (SGD in a post-accumulate-grad hook per parameter, torchtune's optimizer_in_bwd; the lomo case only), both with gradient checkpointing.\n",
        r.warmup
    );
    let _ = writeln!(out, "{}\n", mfu_note(r));
    let _ = writeln!(out, "| step | lomo s/step | tokens/s | MFU | cores | peak RSS | lomo-optim s/step | tokens/s | MFU | cores | peak RSS | hooks s/step | tokens/s | MFU | cores | peak RSS | lomo / lomo-optim | lomo / hooks | first loss: lomo / lomo-optim / hooks |");
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in &r.cases {
        out.push_str(&case_row(r, c));
    }

    device_memory(&mut out, r);
    phases(&mut out, r);
    kernels(&mut out, r);
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

/// The chart: per case, our median s/step beside each peer's (whiskers min–max), the ratios
/// to lomo-optim above; drawn with plotters' SVG backend, as the profile's chart and `lomo
/// train`'s loss.svg.
pub fn svg(r: &BenchResult) -> anyhow::Result<String> {
    use lomo_cli::chart;
    use plotters::prelude::*;
    // Per case: its label and each side's statistics (lomo, lomo-optim, hooks).
    let rows: Vec<(String, [Option<Stats>; 3])> = r
        .cases
        .iter()
        .map(|c| {
            let ours = c.ours.as_ref().and_then(|o| stats(&ours_seconds(o, r.warmup)));
            let peer = c.peer.as_ref().and_then(|p| stats(&peer_seconds(p, r.warmup)));
            let hooks = c.hooks.as_ref().and_then(|p| stats(&peer_seconds(p, r.warmup)));
            (label(c.kind).to_string(), [ours, peer, hooks])
        })
        .collect();
    let n = rows.len().max(1) as u32;
    let top =
        rows.iter().flat_map(|(_, sides)| sides.iter().flatten().map(|s| s.max)).fold(0f64, f64::max).max(1e-3) * 1.4;
    let title = format!(
        "s/step, {} {} {} × {} ({}): lomo vs PyTorch",
        r.model,
        r.dtype,
        r.batch_size,
        r.tokens,
        match r.backend {
            crate::backend::BackendKind::Cpu => format!("{} threads", r.threads.unwrap_or(r.cores)),
            other => other.name().to_string(),
        }
    );
    let width = 240 + 240 * n;
    // A case's segment in pixels (the plot less the y labels and margins), for the insets.
    let seg = (width - 60 - 24) as f64 / n.max(2) as f64;
    let px = |f: f64| (f * seg).round() as u32;
    chart::svg((width, 420), |root| {
        let label = |i: usize| rows.get(i).map(|(l, _)| l.clone()).unwrap_or_default();
        let mut chart = chart::bar_chart(root, &title, 14, n, top, "seconds per step (median)", label)?;
        let sides = [("lomo", chart::BLUE), ("PyTorch + lomo-optim", chart::ORANGE), ("PyTorch hooks", chart::GREEN)];
        for (side, (name, colour)) in sides.into_iter().enumerate() {
            let pick = |row: &(String, [Option<Stats>; 3])| row.1[side].as_ref().map(|s| (s.median, s.min, s.max));
            // Each side takes a quarter of its case's segment, the three centred in it.
            let from = 0.12 + 0.25 * side as f64;
            let (left, right) = (px(from), px(1.0 - from - 0.25));
            let bars = rows.iter().enumerate().filter_map(|(i, row)| {
                let (median, _, _) = pick(row)?;
                Some(chart::bar(i as u32, 0.0, median, colour.filled(), left, right))
            });
            chart.draw_series(bars).map_err(chart::error)?.label(name).legend(chart::mark(colour, 5));
            // A 3-pixel bar from min to max at the middle of the side's bar.
            let middle = from + 0.125;
            let (left, right) = (px(middle) - 1, px(1.0 - middle) - 2);
            let whiskers = rows.iter().enumerate().filter_map(|(i, row)| {
                let (_, min, max) = pick(row)?;
                Some(chart::bar(i as u32, min, max, BLACK.filled(), left, right))
            });
            chart.draw_series(whiskers).map_err(chart::error)?;
        }
        let ratios = rows.iter().enumerate().filter_map(|(i, (_, [ours, peer, hooks]))| {
            let o = ours.as_ref()?;
            let parts: Vec<String> = [peer, hooks]
                .into_iter()
                .zip(["lomo-optim", "hooks"])
                .filter_map(|(p, name)| Some(format!("{:.2} × {name}", o.median / p.as_ref()?.median)))
                .collect();
            if parts.is_empty() {
                return None;
            }
            let high = [ours, peer, hooks].into_iter().flatten().map(|s| s.max).fold(0f64, f64::max);
            Some(chart::note(parts.join(", "), i as u32, high + top * 0.03, 12))
        });
        chart.draw_series(ratios).map_err(chart::error)?;
        chart::legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

#[cfg(test)]
mod tests {
    use super::last_kernel_table;

    /// The end of a real profile (stories260K on wgpu, `xtask bench --kernel-profile`): the
    /// last table is read, names shortened, the total left out.
    #[test]
    fn the_last_table_of_cubecl_s_profile() {
        let log = "\
| 48.494µs   | SliceAssignKernel | WgpuRuntime
| Name | Duration | Num Computed | Ratio |
| KernelBinop | AddOp | WgpuRuntime | 1.5ms | 3 | 100 % |
| Total | 1.5ms | 3 | 100 % |
| Name                                                   | Duration     | Num Computed | Ratio |
|⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼|
| MatmulEntry | TensorArgs | DynamicScalar | __Lhs | SimpleMatmulFamily | UnitMatmulFamily | StridedStageFamily | Option | StridedStageFamily | SyncFullCyclicLoading | WgpuRuntime | 61.892508ms  | 188          | 30 %  |
| RmsNormKernel | WgpuRuntime                                                | 22.488677ms  | 21           | 11 %  |
| KernelBinop | SubOp | WgpuRuntime                                          | 22.274975ms  | 30           | 11 %  |
|⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼⎼|
| Total                                                  | 202.335771ms | 961          | 100 % |
|⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯⎯|
";
        let rows = last_kernel_table(log).unwrap();
        let got: Vec<(&str, &str, u64, &str)> =
            rows.iter().map(|k| (k.name.as_str(), k.time.as_str(), k.launches, k.share.as_str())).collect();
        assert_eq!(
            got,
            [
                (
                    "MatmulEntry · SimpleMatmulFamily · UnitMatmulFamily · StridedStageFamily",
                    "61.892508ms",
                    188,
                    "30 %"
                ),
                ("RmsNormKernel", "22.488677ms", 21, "11 %"),
                ("KernelBinop · SubOp", "22.274975ms", 30, "11 %"),
            ]
        );
        assert!(last_kernel_table("no table here").is_none());
    }
}
