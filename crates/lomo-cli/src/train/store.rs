//! `--offload`: where the weights of the stages that are not running wait, and the model
//! loaded into that place.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lomo_models::{DiskStore, IoStats, Llama, On, Residency, TrainBackend};
use lomo_optim::{HostStore, Resident, StageStore};

use crate::args::{OffloadArg, TrainArgs};
use crate::checkpoint::TrainerState;
use crate::model::{load, load_path, Loaded};

/// Where the weights of the stages that are not running wait (`--offload`).
pub(super) enum Store<B: TrainBackend> {
    Resident(Resident),
    Host(HostStore<B::InnerBackend>),
    Disk(DiskStore),
}

impl<B: TrainBackend> Store<B> {
    pub(super) fn as_dyn(&mut self) -> &mut dyn StageStore<B, Llama<B>> {
        match self {
            Store::Resident(r) => r,
            Store::Host(h) => h,
            Store::Disk(d) => d,
        }
    }

    pub(super) fn disk(&self) -> Option<&DiskStore> {
        match self {
            Store::Disk(d) => Some(d),
            _ => None,
        }
    }

    /// Runs `f` on the whole model (and the working copy, which holds it with `--offload disk`):
    /// host memory's weights come back for it and go again after.
    pub(super) fn whole<R>(
        &mut self,
        model: Llama<B>,
        f: impl FnOnce(&Llama<B>, Option<&DiskStore>) -> Result<R>,
    ) -> Result<(Llama<B>, R)> {
        match self {
            Store::Host(h) => {
                let model = h.fetch_all(model)?;
                let r = f(&model, None)?;
                let (model, store) = HostStore::new::<B, _, 3>(model, h.host().cloned())?;
                *h = store;
                Ok((model, r))
            }
            Store::Disk(d) => {
                let r = f(&model, Some(d))?;
                Ok((model, r))
            }
            Store::Resident(_) => {
                let r = f(&model, None)?;
                Ok((model, r))
            }
        }
    }

    /// After step `step` (counting from 0): the working copy marked whole at `step + 1` (a
    /// skipped step wrote nothing back), and the bytes it read and wrote since `before`, for
    /// the log.
    pub(super) fn after_step(&mut self, step: u64, before: Option<IoStats>) -> Result<Option<serde_json::Value>> {
        let Store::Disk(d) = self else { return Ok(None) };
        if d.step() != step + 1 {
            d.write_step(step + 1).context("--offload disk")?;
        }
        Ok(before.map(|before| {
            serde_json::json!({"read_bytes": d.io().read - before.read, "written_bytes": d.io().written - before.written})
        }))
    }
}

/// `--offload disk`'s working copy; with several ranks, each its own (`rank-R` inside it), since
/// `lomo launch` hands every rank the same flags.
fn offload_dir(args: &TrainArgs) -> Option<PathBuf> {
    let dir = match (&args.offload, &args.offload_dir, &args.save) {
        (Some(OffloadArg::Disk), Some(dir), _) => dir.clone(),
        (Some(OffloadArg::Disk), None, Some(save)) => save.join("offload"),
        _ => return None,
    };
    Some(if args.world_size > 1 { dir.join(format!("rank-{}", args.rank)) } else { dir })
}

/// The model of the run (the source, or the checkpoint `--resume` names, at `resumed`'s step)
/// on `on`, and the store its idle stages wait in.
pub(super) fn load_model<B: TrainBackend>(
    args: &TrainArgs,
    resumed: Option<&TrainerState>,
    on: On<'_, B::Device>,
) -> Result<(Loaded<B>, Store<B>)> {
    let dtype = args.dtype.storage();
    // The host store's device: the CPU of the backend where it has one (LibTorch), the device
    // itself on the CPU backends; else host bytes (wgpu's `cpu` adapter is a device of its own).
    let host_device: Option<B::Device> = match args.backend {
        crate::backend::BackendKind::Cuda | crate::backend::BackendKind::Wgpu => None,
        kind => crate::backend::parse_devices::<B>(kind, "cpu").ok().and_then(|d| d.into_iter().next()),
    };
    let (loaded, store) = match (offload_dir(args), &args.resume) {
        (Some(store_dir), _) => load_working_copy(args, resumed, on, store_dir)?,
        (None, Some(dir)) => (load_path(dir, dtype, on, Residency::Resident)?, Store::Resident(Resident)),
        (None, None) => (load(&args.source, dtype, on, args.seed, Residency::Resident)?, Store::Resident(Resident)),
    };
    if args.offload != Some(OffloadArg::Host) {
        return Ok((loaded, store));
    }
    let inner_host = host_device.as_ref().map(|d| burn::tensor::Tensor::<B, 1>::empty([1], d).inner().device());
    let (model, host) = HostStore::new::<B, _, 3>(loaded.model, inner_host)?;
    Ok((Loaded { model, ..loaded }, Store::Host(host)))
}

/// `--offload disk`: the working copy in `store_dir` made from the source or the resumed
/// checkpoint (an earlier working copy there is made again; what it was is said).
fn load_working_copy<B: TrainBackend>(
    args: &TrainArgs,
    resumed: Option<&TrainerState>,
    on: On<'_, B::Device>,
    store_dir: PathBuf,
) -> Result<(Loaded<B>, Store<B>)> {
    if let (Some(ckpt), Some(state), Ok(copy)) = (&args.resume, resumed, DiskStore::inspect(&store_dir)) {
        let steps: std::collections::BTreeSet<u64> = copy.stage_steps.iter().copied().collect();
        if copy.interrupted() {
            lomo_cli::noteln!(
                "--offload disk: the working copy in {} was interrupted during step {} (its stages are from steps {steps:?}); it is made again from {}, at step {}",
                store_dir.display(), copy.step + 1, ckpt.display(), state.step
            );
        } else {
            lomo_cli::noteln!(
                "--offload disk: the working copy in {} is at step {}; it is made again from {}, at step {}",
                store_dir.display(),
                copy.step,
                ckpt.display(),
                state.step
            );
        }
    }
    let dtype = args.dtype.storage();
    let step = resumed.map_or(0, |s| s.step);
    let residency = Residency::Disk { dir: &store_dir, step };
    let mut loaded = match &args.resume {
        Some(dir) => load_path(dir, dtype, on, residency)?,
        None => load(&args.source, dtype, on, args.seed, residency)?,
    };
    let mut disk = loaded.store.take().expect("a load into Residency::Disk makes a working copy");
    // Crash tests: the write-back after this many fails, as a crash between two stages'
    // write-backs would stop the step.
    if let Ok(n) = std::env::var("LOMO_OFFLOAD_FAIL_AFTER") {
        disk.fail_after_writes(n.parse().context("LOMO_OFFLOAD_FAIL_AFTER: a number of write-backs")?);
    }
    Ok((loaded, Store::Disk(disk)))
}
