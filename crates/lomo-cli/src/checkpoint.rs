//! Checkpoints: an HF directory (config.json, safetensors, tokenizer.json) that HF
//! transformers loads, plus what `--resume` needs to continue exactly: the step, the data
//! position, the loss scaler and the update rule's state. Written to a temporary directory, then
//! renamed into place, so a checkpoint is never half-written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use lomo_data::{DataPosition, TextTokenizer};
use lomo_models::{Llama, SaveOptions};
use lomo_optim::DynamicLossScaler;
use serde::{Deserialize, Serialize};

use crate::args::OptimizerKind;
use crate::trainer::Trainer;

/// The file of the training state.
pub const STATE_FILE: &str = "trainer_state.json";
/// The file of the update rule's state, when it keeps one (AdaLomo's: a burn record, without
/// extension: burn adds `.bin`).
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
    /// The eval loss at this step, when the run evaluated at it (`--keep-best` reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Data parallel: the ranks that trained it (`--resume` needs as many).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Writes the checkpoint to `dir`, replacing what was there only once everything is written.
#[allow(clippy::too_many_arguments)]
pub fn save<B: lomo_models::TrainBackend>(
    dir: &Path,
    model: &Llama<B>,
    store: Option<&lomo_models::DiskStore>,
    tokenizer: Option<&TextTokenizer>,
    tokenizer_file: Option<&Path>,
    state: &TrainerState,
    config: &str,
    trainer: &Trainer<B>,
) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().with_context(|| format!("--save {}: not a directory name", dir.display()))?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let result = (|| -> Result<()> {
        match store {
            // `--offload disk`: the weights are in the working copy, the model holds placeholders.
            Some(store) => store.save_hf(model, &tmp, &SaveOptions::default()),
            None => model.valid().save_hf(&tmp, &SaveOptions::default()),
        }
        .with_context(|| format!("saving the model to {}", tmp.display()))?;
        write_tokenizer(&tmp, tokenizer, tokenizer_file)?;
        let json = serde_json::to_string_pretty(state)?;
        std::fs::write(tmp.join(STATE_FILE), json)
            .with_context(|| format!("writing {}", tmp.join(STATE_FILE).display()))?;
        let file = tmp.join(crate::config::CONFIG_FILE);
        std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
        trainer.save_state(model, &tmp.join(OPTIMIZER_FILE))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // What else lives in the run's directory (periodic `step-N` checkpoints, `--log` and its
    // loss.svg, the user's own files) is carried over: only the checkpoint's own files are
    // replaced. An open log keeps writing to its file, which a rename does not change.
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if !tmp.join(&name).exists() {
                std::fs::rename(entry.path(), tmp.join(&name))
                    .with_context(|| format!("moving {}", entry.path().display()))?;
            }
        }
    }
    // Swap, durably: the old checkpoint is moved aside before the new one takes its name, and
    // removed last (what `tidy` undoes after a crash).
    let old = parent.join(format!(".{}.old-{}", name.to_string_lossy(), std::process::id()));
    lomo_io::atomic::replace_dir(&tmp, dir, &old)
        .with_context(|| format!("putting the checkpoint {} in place", dir.display()))
}

/// Makes sure `--save DIR` can be written before anything is trained, and tidies what a killed
/// save left behind: a temporary directory (`.NAME.tmp-PID`) is removed, and a checkpoint
/// moved aside for the swap (`.NAME.old-PID`) is put back when its replacement never took its
/// name. Entries of a `lomo` process still running are left alone. Returns notes to print.
pub fn prepare_save_dir(dir: &Path) -> Result<Vec<String>> {
    let at = |what: &str| format!("--save {}: {what}", dir.display());
    if dir.exists() && !dir.is_dir() {
        bail!("{}", at("exists and is not a directory"));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dir.file_name().with_context(|| at("not a directory name"))?.to_string_lossy().into_owned();
    std::fs::create_dir_all(parent).with_context(|| at(&format!("cannot create {}", parent.display())))?;
    for place in [Some(parent), dir.is_dir().then_some(dir)].into_iter().flatten() {
        let probe = place.join(format!(".lomo-write-check-{}", std::process::id()));
        std::fs::create_dir(&probe).with_context(|| at(&format!("{} is not writable", place.display())))?;
        std::fs::remove_dir(&probe).with_context(|| at(&format!("removing {}", probe.display())))?;
    }
    let mut notes = tidy(parent, |n| n == name)?;
    if dir.is_dir() {
        notes.extend(tidy(dir, |n| n.starts_with("step-"))?);
    }
    Ok(notes)
}

/// Tidies `.NAME.tmp-PID` / `.NAME.old-PID` entries in `place` for the names `ours` accepts.
fn tidy(place: &Path, ours: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(place)
        .with_context(|| format!("reading {}", place.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // `old` before `tmp`, so that a checkpoint is restored before its replacement is removed.
    entries.sort_by_key(|p| !p.to_string_lossy().contains(".old-"));
    for path in entries {
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(rest) = file.strip_prefix('.') else { continue };
        let Some((name, kind, pid)) = ["tmp", "old"].iter().find_map(|kind| {
            let (name, pid) = rest.rsplit_once(&format!(".{kind}-"))?;
            Some((name.to_string(), *kind, pid.parse::<u32>().ok()?))
        }) else {
            continue;
        };
        if !ours(&name) || !path.is_dir() || lomo_is_running(pid) {
            continue;
        }
        let target = place.join(&name);
        if kind == "old" && !target.exists() {
            std::fs::rename(&path, &target).with_context(|| format!("restoring {}", target.display()))?;
            notes.push(format!(
                "restored {} from an interrupted save (it had been moved aside to {file})",
                target.display()
            ));
        } else {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            notes.push(format!("removed {}, left by an interrupted save", path.display()));
        }
    }
    Ok(notes)
}

/// Whether `pid` is a running `lomo` (Linux: `/proc/PID/comm`; elsewhere, assumed not).
fn lomo_is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim() == "lomo").unwrap_or(false)
}

/// `--save-total-limit`: deletes all but the newest `limit` `step-N` checkpoints in `dir` and,
/// with `keep_best`, the one whose `trainer_state.json` has the lowest eval loss. Returns the
/// directories removed.
pub fn rotate(dir: &Path, limit: usize, keep_best: bool) -> Result<Vec<PathBuf>> {
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let step = path.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()?;
            path.is_dir().then_some((step, path))
        })
        .collect();
    steps.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    let best = if keep_best {
        steps
            .iter()
            .filter_map(|(step, path)| Some((load_state(path).ok()?.eval_loss?, *step)))
            .filter(|(loss, _)| loss.is_finite())
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, step)| step)
    } else {
        None
    };
    let mut removed = Vec::new();
    for (step, path) in steps.into_iter().skip(limit) {
        if Some(step) != best {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
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

/// The tokenizer beside the weights, so that HF transformers (and `lomo eval`) find it: the
/// original `tokenizer.json` (and `tokenizer_config.json`) when the model came with them,
/// otherwise (a GGUF's tokenizer) the built one and a `tokenizer_config.json` naming its
/// special tokens and chat template.
fn write_tokenizer(dir: &Path, tokenizer: Option<&TextTokenizer>, file: Option<&Path>) -> Result<()> {
    if let Some(file) = file {
        std::fs::copy(file, dir.join("tokenizer.json")).with_context(|| format!("copying {}", file.display()))?;
        let config = file.with_file_name("tokenizer_config.json");
        if config.exists() {
            std::fs::copy(&config, dir.join("tokenizer_config.json"))
                .with_context(|| format!("copying {}", config.display()))?;
        }
        return Ok(());
    }
    let Some(tokenizer) = tokenizer else { return Ok(()) };
    let out = dir.join("tokenizer.json");
    tokenizer.inner().save(&out, false).map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    let name = |id: Option<u32>| id.and_then(|i| tokenizer.inner().id_to_token(i));
    let mut config = serde_json::Map::new();
    config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    for (key, id) in
        [("bos_token", tokenizer.bos_id()), ("eos_token", tokenizer.eos_id()), ("pad_token", tokenizer.pad_id())]
    {
        if let Some(token) = name(id) {
            config.insert(key.into(), token.into());
        }
    }
    if let Some(template) = tokenizer.chat_template_source() {
        config.insert("chat_template".into(), template.into());
    }
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
