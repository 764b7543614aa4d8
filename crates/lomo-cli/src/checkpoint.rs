//! Checkpoints: an HF directory (config.json, safetensors, tokenizer.json) that HF
//! transformers loads, plus what `--resume` needs to continue exactly: the step, the data
//! position, the loss scaler and AdaLomo's state. Written to a temporary directory, then
//! renamed into place, so a checkpoint is never half-written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use lomo_data::DataPosition;
use lomo_models::{Llama, SaveOptions};
use lomo_optim::{AdaLomoRecord, DynamicLossScaler};
use serde::{Deserialize, Serialize};

use crate::args::OptimizerKind;

/// The file of the training state.
pub const STATE_FILE: &str = "trainer_state.json";
/// The file of AdaLomo's state (a burn record, without extension: burn adds `.bin`).
pub const OPTIMIZER_FILE: &str = "optimizer";

/// Where a run is, for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Steps the run was started for (the schedule depends on it).
    pub total_steps: u64,
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// The next batch.
    pub data_position: DataPosition,
    /// fp16 dynamic loss scaling.
    pub loss_scaler: Option<DynamicLossScaler>,
    /// Tokens trained on so far.
    pub tokens: u64,
}

/// Writes the checkpoint to `dir`, replacing what was there only once everything is written.
pub fn save<B: AutodiffBackend>(
    dir: &Path,
    model: &Llama<B>,
    tokenizer_file: Option<&Path>,
    state: &TrainerState,
    adalomo: Option<AdaLomoRecord<B::InnerBackend>>,
) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().with_context(|| format!("--save {}: not a directory name", dir.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let result = (|| -> Result<()> {
        model.valid().save_hf(&tmp, &SaveOptions::default()).with_context(|| format!("saving the model to {}", tmp.display()))?;
        if let Some(file) = tokenizer_file {
            std::fs::copy(file, tmp.join("tokenizer.json")).with_context(|| format!("copying {}", file.display()))?;
        }
        let json = serde_json::to_string_pretty(state)?;
        std::fs::write(tmp.join(STATE_FILE), json).with_context(|| format!("writing {}", tmp.join(STATE_FILE).display()))?;
        if let Some(record) = adalomo {
            BinFileRecorder::<FullPrecisionSettings>::new()
                .record(record, tmp.join(OPTIMIZER_FILE))
                .with_context(|| format!("writing the optimizer state to {}", tmp.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Periodic checkpoints (`step-N`) live inside the run's directory: carry them over.
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if entry.path().is_dir() && name.to_string_lossy().starts_with("step-") {
                std::fs::rename(entry.path(), tmp.join(&name)).with_context(|| format!("moving {}", entry.path().display()))?;
            }
        }
    }
    // Swap: the old checkpoint is moved aside before the new one takes its name, and removed last.
    let old = parent.join(format!(".{}.old-{}", name.to_string_lossy(), std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("moving the old {} aside", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// Reads the training state of a checkpoint.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let file = dir.join(STATE_FILE);
    if !file.exists() {
        bail!("--resume {}: no {STATE_FILE} (was it written by `lomo train --save`?)", dir.display());
    }
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a trainer state", file.display()))
}

/// Reads AdaLomo's state of a checkpoint.
pub fn load_adalomo<B: Backend>(dir: &Path, device: &B::Device) -> Result<AdaLomoRecord<B>> {
    let file: PathBuf = dir.join(OPTIMIZER_FILE);
    BinFileRecorder::<FullPrecisionSettings>::new()
        .load(file.clone(), device)
        .with_context(|| format!("reading the AdaLomo state {}.bin", file.display()))
}
