//! `--log`: one JSON line per step and per evaluation, and the `loss.svg` chart beside it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::args::TrainArgs;
use crate::plot::{self, Curves};

/// The run's log file (rank 0's, with `--log`), its curves and their chart.
pub(super) struct Log {
    /// The open log and its path (for errors: a full disk names the file).
    file: Option<(BufWriter<File>, PathBuf)>,
    curves: Curves,
    chart: Option<PathBuf>,
}

impl Log {
    /// Opens `--log` for rank 0 (`lead`). A resumed run continues its log: the lines of the
    /// steps the checkpoint has (up to `start_step`) are kept (those of steps after it, which
    /// are about to run again, are dropped) and drawn again.
    pub(super) fn open(args: &TrainArgs, lead: bool, resumed: bool, start_step: u64) -> Result<Self> {
        let mut curves = Curves::default();
        let file = match args.log.as_ref().filter(|_| lead) {
            Some(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("--log {}: creating {}", path.display(), parent.display()))?;
                }
                let file = if resumed {
                    // The kept lines replace the log whole, so that a kill while they are written
                    // leaves the old log, not an emptied one; the run appends to them.
                    let kept = kept_log_lines(path, start_step, &mut curves)?;
                    lomo_io::atomic::write(path, kept).with_context(|| format!("--log {}: writing", path.display()))?;
                    OpenOptions::new().append(true).open(path)
                } else {
                    File::create(path)
                };
                let file = BufWriter::new(file.with_context(|| format!("--log {}", path.display()))?);
                Some((file, path.clone()))
            }
            None => None,
        };
        let chart = args.log.as_deref().filter(|_| lead).map(plot::beside);
        Ok(Self { file, curves, chart })
    }

    /// Step `step`'s line, and its loss and learning rate on the curves.
    pub(super) fn step(&mut self, line: &serde_json::Value, step: u64, loss: f64, lr: f64) -> Result<()> {
        self.write(line)?;
        self.curves.train.push((step, loss));
        self.curves.lr.push((step, lr));
        Ok(())
    }

    /// The evaluation at step `step`: its loss on the curves, its line.
    pub(super) fn eval(&mut self, step: u64, result: &crate::scoring::EvalResult) -> Result<()> {
        self.curves.eval.push((step, result.loss));
        self.write(&serde_json::json!({"step": step, "eval": result}))
    }

    /// Redraws the chart, when there is one.
    pub(super) fn draw(&self) -> Result<()> {
        if let Some(path) = &self.chart {
            plot::write(path, &self.curves)?;
        }
        Ok(())
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<()> {
        if let Some((file, path)) = self.file.as_mut() {
            writeln!(file, "{line}")
                .and_then(|()| file.flush())
                .with_context(|| format!("--log {}: writing", path.display()))?;
        }
        Ok(())
    }
}

/// The lines of an earlier `--log` up to step `upto` (step lines and eval lines), with their
/// points added to `curves`; a missing file is an empty log, a line that is not ours an error.
fn kept_log_lines(path: &Path, upto: u64, curves: &mut Curves) -> Result<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(String::new()) };
    let mut kept = String::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("--log {}:{}: not a line lomo train wrote", path.display(), i + 1))?;
        let Some(step) = v["step"].as_u64() else { bail!("--log {}:{}: no \"step\"", path.display(), i + 1) };
        if step > upto {
            continue;
        }
        if let Some(loss) = v["eval"]["loss"].as_f64() {
            curves.eval.push((step, loss));
        } else if let (Some(loss), Some(lr)) = (v["loss"].as_f64(), v["lr"].as_f64()) {
            curves.train.push((step, loss));
            curves.lr.push((step, lr));
        }
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept)
}
