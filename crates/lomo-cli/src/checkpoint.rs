//! Checkpoints: an HF directory (config.json, safetensors, tokenizer.json) that HF
//! transformers loads, plus what `--resume` needs to continue exactly: the step, the data
//! position, the loss scaler and the update rule's state. Written to a temporary directory, then
//! renamed into place, so a checkpoint is never half-written, and a save killed after its files
//! were complete is finished by the next start ([`save_dir`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use lomo_data::{DataPosition, TextTokenizer};
use lomo_models::{Llama, SaveOptions};
use lomo_optim::DynamicLossScaler;
use serde::{Deserialize, Serialize};

use crate::args::OptimizerKind;
use crate::trainer::Trainer;
use lomo_cli::save_dir;

/// The file of the training state.
pub use lomo_cli::save_dir::STATE_FILE;
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
    let tmp = save_dir::staging_dir(dir)?;
    let parent = tmp.parent().expect("beside the checkpoint");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
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
        // From here on the save is as good as done: a kill before the swap is finished by the
        // next start (`save_dir::prepare`), never undone.
        save_dir::mark_complete(&tmp)
    })();
    if let Err(e) = result {
        // A failure after the mark is in (syncing the directory it was renamed in) leaves a
        // complete save, which the next start finishes, as it would after a kill there.
        if !tmp.join(save_dir::COMPLETE).exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        return Err(e);
    }
    let name = dir.file_name().expect("staging_dir checked it").to_string_lossy().into_owned();
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    save_dir::finish(&tmp, dir, &old)
}

/// Makes sure `--save DIR` can be written before anything is trained, and recovers what a
/// killed save left behind (see [`save_dir`]). Returns notes to print.
pub fn prepare_save_dir(dir: &Path) -> Result<Vec<String>> {
    save_dir::prepare(dir)
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
            // Renamed away first: a kill mid-removal must not leave part of a checkpoint under
            // its name, which `--resume` would take for a whole one.
            save_dir::remove(&path)?;
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
