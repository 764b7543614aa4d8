//! What the bench asks of an NVIDIA GPU from outside the measured process: its name (for the
//! MFU's peak) and a process's peak device memory, by polling `nvidia-smi`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `nvidia-smi`'s CSV answer to `--query-*=FIELDS`, one row per line; `None` without nvidia-smi.
fn query(what: &str) -> Option<Vec<Vec<String>>> {
    let out = Command::new("nvidia-smi").args([what, "--format=csv,noheader,nounits"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().map(|l| l.split(',').map(|f| f.trim().to_string()).collect()).collect())
}

/// The first GPU's name, as `nvidia-smi` gives it (`NVIDIA H200`).
pub fn name() -> Option<String> {
    query("--query-gpu=name")?.into_iter().next()?.into_iter().next()
}

/// Dense bf16/f16 tensor-core peaks with fp32 accumulation, TFLOP/s, from NVIDIA's data sheets,
/// by a substring of the name (checked in this order: `L40S` before `L4`, `A100` before `A10`).
const PEAKS: [(&str, f64); 9] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
    ("A10", 125.0),
    ("4090", 165.2),
    ("3090", 71.0),
];

/// The peak the MFU divides by for the GPU `name` and the storage dtype: the data sheet's dense
/// bf16/f16 figure; `None` for f32 (which tensor-core path a backend takes for f32 differs)
/// and for GPUs not in the table.
pub fn peak_tflops(name: &str, dtype: &str) -> Option<f64> {
    if dtype == "f32" {
        return None;
    }
    PEAKS.iter().find(|(key, _)| name.contains(key)).map(|&(_, peak)| peak)
}

/// Polls `nvidia-smi` every 200 ms while a process runs, keeping the peak of its device memory:
/// its own row of `--query-compute-apps` where its pid is listed, else (a container whose pids
/// the driver does not see) every GPU's `memory.used` less what was used when polling began.
pub struct DeviceMemoryPoll {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<u64>>,
}

impl DeviceMemoryPoll {
    /// Starts polling for process `pid`.
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let used = || -> Option<u64> {
                let rows = query("--query-gpu=memory.used")?;
                Some(rows.iter().filter_map(|r| r.first()?.parse::<u64>().ok()).sum())
            };
            let baseline = used()?;
            let mut peak: Option<u64> = None;
            let mut own_row = false;
            loop {
                let apps = query("--query-compute-apps=pid,used_memory").unwrap_or_default();
                let mine: Vec<u64> = apps
                    .iter()
                    .filter(|r| r.first().is_some_and(|p| p == &pid.to_string()))
                    .filter_map(|r| r.get(1)?.parse().ok())
                    .collect();
                let now = if mine.is_empty() {
                    (!own_row).then(|| used().map(|u| u.saturating_sub(baseline))).flatten()
                } else {
                    own_row = true;
                    Some(mine.iter().sum())
                };
                if let Some(mib) = now {
                    peak = Some(peak.map_or(mib, |p: u64| p.max(mib)));
                }
                if flag.load(Ordering::Relaxed) {
                    return peak.map(|mib| mib << 20);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self { stop, thread }
    }

    /// Stops polling; the peak in bytes (`nvidia-smi` counts MiB), `None` without nvidia-smi.
    pub fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}
