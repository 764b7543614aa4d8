//! Weights that wait on disk: a working copy of the model as one safetensors file per stage,
//! read just before the stage runs and written back after its update ([`DiskStore`], the
//! fused step's [`StageStore`] for `--offload disk`).
//!
//! `stage-NNNNN.safetensors` holds the parameters updated at stage `N` (the lowest stage that
//! reads them; a tied embedding lives in stage 0's file and the loss stage reads it from there),
//! under their HF names but in burn's layout and the storage dtype, so that fetching a stage is a
//! read into the tensor's own buffer and writing it back is one write per tensor: no transpose,
//! no conversion. Its metadata says the step its weights are from. `store.json` says the last
//! step whose every stage was written back.
//!
//! A write-back goes to `stage-N.safetensors.tmp`, is synced, renamed over the stage's file and
//! the directory synced, before the stage's memory is released: a crash leaves every stage file
//! whole, from one step or the next ([`WorkingCopy::interrupted`]). The next stage is read on a
//! thread while the current one computes ([`StageStore::prefetch`]); reads go through the page
//! cache, never a mapping, so the resident set holds at most the stage that runs and the one
//! read ahead.
//!
//! The working copy is made from the source stage by stage ([`crate::load()`] with
//! [`crate::Residency::Disk`]), so the whole
//! model is never in memory; [`DiskStore::save_hf`] writes an HF checkpoint from it tensor by
//! tensor.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use lomo_io::atomic::AtomicFile;
use lomo_optim::{put_params, take_params, Held, OptimError, StageStore, Take};
use serde_json::{json, Value};

use crate::dtype::StorageDtype;
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::save::SaveOptions;
use crate::tensors::TensorSpec;
use crate::TrainBackend;

/// The working copy's record of the last step written back whole.
pub const STORE_FILE: &str = "store.json";

fn stage_file(dir: &Path, stage: usize) -> PathBuf {
    dir.join(format!("stage-{stage:05}.safetensors"))
}

/// One tensor of a stage file.
#[derive(Debug, Clone)]
struct Entry {
    id: ParamId,
    spec: TensorSpec,
    /// burn's layout.
    shape: Vec<usize>,
    /// Where its bytes start in the file.
    offset: u64,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct StageFile {
    path: PathBuf,
    entries: Vec<Entry>,
    /// Bytes of the 8-byte length and the header, padded.
    data_start: u64,
}

impl StageFile {
    fn len(&self) -> u64 {
        self.data_start + self.entries.iter().map(|e| e.bytes).sum::<u64>()
    }

    /// The safetensors header with `step` in its metadata (fixed width, so the data never moves).
    fn header(&self, stage: usize, dtype: StorageDtype, step: u64) -> Result<Vec<u8>> {
        let metadata = HashMap::from([
            ("format".to_string(), "lomo-stage".to_string()),
            ("layout".to_string(), "burn".to_string()),
            ("stage".to_string(), stage.to_string()),
            ("step".to_string(), format!("{step:020}")),
        ]);
        let tensors = self.entries.iter().map(|e| (e.spec.name.clone(), e.shape.clone()));
        crate::save::safetensors_header(&self.path, metadata, tensors, dtype, self.data_start as usize - 8)
    }
}

/// What was read and written, in bytes, since the store was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoStats {
    /// Bytes read from the stage files.
    pub read: u64,
    /// Bytes written to them (write-backs, not the making of the working copy).
    pub written: u64,
}

/// A stage's tensors as the read-ahead thread hands them over.
type ReadResult = std::result::Result<(Vec<(ParamId, TensorData)>, u64), String>;

/// The working copy of a model on disk, one file per stage: see the module docs.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    dtype: StorageDtype,
    files: Vec<StageFile>,
    /// The parameters each stage reads.
    reads: Vec<Vec<ParamId>>,
    /// Parameter → (stage file, entry).
    location: HashMap<ParamId, (usize, usize)>,
    /// The step the working copy is at (every stage written back).
    step: u64,
    prefetched: Option<(usize, JoinHandle<ReadResult>)>,
    io: IoStats,
    /// Bytes of weights each stage reads.
    stage_bytes: Vec<u64>,
    /// Crash tests: write-backs left before one fails.
    fail_after: Option<u64>,
}

/// A working copy's state as [`DiskStore::inspect`] reads it off the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingCopy {
    /// The last step whose every stage was written back (`store.json`).
    pub step: u64,
    /// The step each stage file is from.
    pub stage_steps: Vec<u64>,
}

impl WorkingCopy {
    /// A step was under way: some stages are from the step after [`WorkingCopy::step`].
    pub fn interrupted(&self) -> bool {
        self.stage_steps.iter().any(|&s| s != self.step)
    }
}

fn io_err(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::io(path, e)
}

fn store_err(e: ModelError) -> OptimError {
    OptimError::Store(e.to_string())
}

/// Reads `count` elements of `dtype` at `offset` of `file` straight into a tensor's buffer.
fn read_tensor(file: &File, offset: u64, shape: Vec<usize>, dtype: DType) -> std::io::Result<TensorData> {
    use std::os::unix::fs::FileExt;
    let n: usize = shape.iter().product();
    fn read<E: burn::tensor::Element + Default + Clone>(
        file: &File,
        offset: u64,
        n: usize,
        shape: Vec<usize>,
    ) -> std::io::Result<TensorData> {
        let mut values = vec![E::default(); n];
        // SAFETY: f32, bf16 and f16 are plain old data: every byte pattern is a value, and the
        // slice covers exactly the vector's initialised elements.
        let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), n * size_of::<E>()) };
        file.read_exact_at(bytes, offset)?;
        Ok(TensorData::new(values, shape))
    }
    match dtype {
        DType::F32 => read::<f32>(file, offset, n, shape),
        DType::BF16 => read::<half::bf16>(file, offset, n, shape),
        DType::F16 => read::<half::f16>(file, offset, n, shape),
        other => Err(std::io::Error::other(format!("{other:?} is not a storage dtype"))),
    }
}

/// A read of some tensors: (parameter, file, offset, burn shape).
type ReadJob = Vec<(ParamId, PathBuf, u64, Vec<usize>)>;

fn run_reads(job: ReadJob, dtype: DType) -> ReadResult {
    let mut out = Vec::with_capacity(job.len());
    let mut bytes = 0;
    let mut open: Option<(PathBuf, File)> = None;
    for (id, path, offset, shape) in job {
        if open.as_ref().is_none_or(|(p, _)| p != &path) {
            let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            open = Some((path.clone(), file));
        }
        let (_, file) = open.as_ref().expect("opened");
        let data = read_tensor(file, offset, shape, dtype).map_err(|e| format!("{}: {e}", path.display()))?;
        bytes += data.bytes.len() as u64;
        out.push((id, data));
    }
    Ok((out, bytes))
}

/// Writes `stage`'s file under a temporary name, tensor by tensor as `fill` hands them over,
/// then syncs it and renames it into place.
fn write_stage(
    file: &StageFile,
    stage: usize,
    dtype: StorageDtype,
    step: u64,
    fill: impl FnOnce(&mut dyn FnMut(usize, &[u8]) -> Result<()>) -> Result<()>,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let atomic = AtomicFile::create(&file.path)?;
    let (out, tmp) = (atomic.file(), atomic.tmp_path());
    out.set_len(file.len()).map_err(|e| io_err(tmp, e))?;
    out.write_all_at(&file.header(stage, dtype, step)?, 0).map_err(|e| io_err(tmp, e))?;
    let mut written = vec![false; file.entries.len()];
    let mut bytes = 0;
    fill(&mut |i, data| {
        let e = &file.entries[i];
        if data.len() as u64 != e.bytes {
            return Err(ModelError::TensorRead {
                tensor: e.spec.name.clone(),
                reason: format!("{} bytes to write back, the working copy holds {}", data.len(), e.bytes),
            });
        }
        out.write_all_at(data, e.offset).map_err(|err| io_err(tmp, err))?;
        written[i] = true;
        bytes += data.len() as u64;
        Ok(())
    })?;
    if let Some(i) = written.iter().position(|w| !w) {
        return Err(ModelError::TensorRead {
            tensor: file.entries[i].spec.name.clone(),
            reason: "not handed over for the write-back".into(),
        });
    }
    atomic.commit()?;
    Ok(bytes)
}

/// Removes the files of a working copy from `dir` (stage files and `store.json`, and their
/// temporary files); any other file there is an error, since the working copy never overwrites a
/// user's files.
fn remove_working_copy(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with("stage-")
            && (name.ends_with(".safetensors") || name.ends_with(".safetensors.tmp")))
            || name == STORE_FILE
            || name == format!("{STORE_FILE}.tmp");
        if !ours {
            return Err(ModelError::Offload(format!(
                "{}: holds `{name}`, which is not part of a lomo working copy; give an empty or new directory",
                dir.display()
            )));
        }
        std::fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
    }
    Ok(())
}

/// The metadata field `field` of a safetensors file's header.
fn header_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |reason: String| ModelError::InvalidSafetensors { path: path.to_path_buf(), reason };
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| io_err(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let value: Value = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let meta = value.get("__metadata__").and_then(Value::as_object).ok_or_else(|| bad("no __metadata__".into()))?;
    Ok(meta.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
}

impl DiskStore {
    /// Makes the working copy in `dir` for `skeleton` (a model of placeholders, see
    /// [`crate::Residency::Disk`]), stage file by stage file, each tensor from `take` (burn's layout,
    /// the storage dtype, as [`Llama`]'s loaders hand them over). `dir` is created; files of an
    /// earlier working copy there are replaced; anything else there is an error (the working
    /// copy never overwrites a user's files). `step` is the step the weights are from.
    ///
    /// # Errors
    /// A file of `dir` that is not a working copy's, a tensor `take` fails to give, or a write
    /// that fails (a full disk): then no file of the working copy is left behind, and `dir` is
    /// removed if this call created it.
    pub fn create<B: Backend>(
        dir: &Path,
        skeleton: &Llama<B>,
        step: u64,
        take: impl FnMut(&TensorSpec) -> Result<TensorData>,
    ) -> Result<Self> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let made = remove_working_copy(dir).and_then(|()| Self::fill(dir, skeleton, step, take));
        if made.is_err() {
            // Nothing half-written stays: a later run would find stage files of no step.
            let _ = remove_working_copy(dir);
            if created {
                let _ = std::fs::remove_dir(dir);
            }
        }
        made
    }

    /// Writes every stage file of a new working copy in `dir` and its `store.json`.
    fn fill<B: Backend>(
        dir: &Path,
        skeleton: &Llama<B>,
        step: u64,
        mut take: impl FnMut(&TensorSpec) -> Result<TensorData>,
    ) -> Result<Self> {
        let mut store = Self::layout(dir, skeleton, step)?;
        let dtype = store.dtype;
        for (s, file) in store.files.iter().enumerate() {
            write_stage(file, s, dtype, step, |put| {
                for (i, e) in file.entries.iter().enumerate() {
                    let data = take(&e.spec)?;
                    if data.shape.as_slice() != e.shape.as_slice() || data.dtype != dtype.to_burn() {
                        return Err(ModelError::TensorRead {
                            tensor: e.spec.name.clone(),
                            reason: format!(
                                "the source gave {:?} {:?}, the model holds {:?} {:?}",
                                data.dtype,
                                data.shape,
                                dtype.to_burn(),
                                e.shape
                            ),
                        });
                    }
                    put(i, data.as_bytes())?;
                }
                Ok(())
            })?;
        }
        store.write_step(step)?;
        store.io = IoStats::default();
        Ok(store)
    }

    /// Where every tensor of `skeleton` goes: stage files and offsets.
    fn layout<B: Backend>(dir: &Path, skeleton: &Llama<B>, step: u64) -> Result<Self> {
        let dtype = skeleton.dtype();
        let layers = skeleton.config().num_layers;
        let n = layers + 2;
        // Each stage reads its rows of the tensor table; the loss stage of a tied model reads the
        // embedding too (it is the LM head), kept in stage 0's file.
        let mut reads: Vec<Vec<ParamId>> = vec![Vec::new(); n];
        let mut specs: HashMap<ParamId, TensorSpec> = HashMap::new();
        for (spec, p) in skeleton.hf_params() {
            reads[spec.slot.stage(layers)].push(p.id());
            specs.insert(p.id(), spec);
        }
        if skeleton.config().tie_word_embeddings {
            reads[n - 1].push(skeleton.embed_tokens.weight.id);
        }
        let mut seen = HashSet::new();
        let mut files = Vec::with_capacity(n);
        let mut location = HashMap::new();
        for (s, ids) in reads.iter().enumerate() {
            let mut entries = Vec::new();
            for &id in ids {
                if !seen.insert(id) {
                    continue;
                }
                let spec = specs.get(&id).expect("every parameter has an HF name").clone();
                let shape = if spec.transposed { vec![spec.shape[1], spec.shape[0]] } else { spec.shape.clone() };
                let bytes = (spec.numel() * dtype.size_of()) as u64;
                location.insert(id, (s, entries.len()));
                entries.push(Entry { id, spec, shape, offset: 0, bytes });
            }
            let mut file = StageFile { path: stage_file(dir, s), entries, data_start: 8 };
            // The header's length does not depend on the step (fixed width): lay it out once.
            let header_len = file.header(s, dtype, 0)?.len() as u64;
            file.data_start = 8 + (header_len - 8).next_multiple_of(8);
            let mut offset = file.data_start;
            for e in &mut file.entries {
                e.offset = offset;
                offset += e.bytes;
            }
            files.push(file);
        }
        let stage_bytes = reads
            .iter()
            .map(|ids| ids.iter().map(|id| files[location[id].0].entries[location[id].1].bytes).sum())
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            dtype,
            files,
            reads,
            location,
            step,
            prefetched: None,
            io: IoStats::default(),
            stage_bytes,
            fail_after: None,
        })
    }

    /// Reads a working copy's state: the step of every stage file and of `store.json`.
    pub fn inspect(dir: &Path) -> Result<WorkingCopy> {
        let store_path = dir.join(STORE_FILE);
        let text = std::fs::read_to_string(&store_path).map_err(|e| io_err(&store_path, e))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path: store_path.clone(), source })?;
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| ModelError::Offload(format!("{}: no `{name}`", store_path.display())))
        };
        let (step, num_stages) = (field("step")?, field("num_stages")? as usize);
        let stage_steps = (0..num_stages)
            .map(|s| {
                let path = stage_file(dir, s);
                let meta = header_metadata(&path)?;
                meta.get("step").and_then(|v| v.parse().ok()).ok_or_else(|| ModelError::InvalidSafetensors {
                    path: path.clone(),
                    reason: "no step in its metadata".into(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(WorkingCopy { step, stage_steps })
    }

    /// Records that the working copy is whole at `step` (`store.json`); the next write-backs
    /// are tagged `step + 1`.
    pub fn write_step(&mut self, step: u64) -> Result<()> {
        self.step = step;
        let value = json!({ "step": step, "num_stages": self.files.len(), "dtype": self.dtype.safetensors_name() });
        Ok(lomo_io::atomic::write(self.dir.join(STORE_FILE), serde_json::to_vec_pretty(&value).expect("JSON"))?)
    }

    /// The step the working copy is at.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The working copy's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes read and written so far.
    pub fn io(&self) -> IoStats {
        self.io
    }

    /// Bytes of weights stage `stage` reads (what it brings onto the device).
    pub fn stage_bytes(&self, stage: usize) -> u64 {
        self.stage_bytes[stage]
    }

    /// Makes the write-back after the next `n` fail, as a crash between two stages' write-backs
    /// would stop it (for crash tests: `LOMO_OFFLOAD_FAIL_AFTER` in `lomo train`).
    pub fn fail_after_writes(&mut self, n: u64) {
        self.fail_after = Some(n);
    }

    /// The read of every tensor stage `stage` reads.
    fn job(&self, stage: usize) -> ReadJob {
        self.reads[stage]
            .iter()
            .map(|id| {
                let (f, i) = self.location[id];
                let e = &self.files[f].entries[i];
                (*id, self.files[f].path.clone(), e.offset, e.shape.clone())
            })
            .collect()
    }

    /// Stage `stage`'s tensors: from the read ahead if it was for this stage, else read now.
    fn read_stage(&mut self, stage: usize) -> std::result::Result<Vec<(ParamId, TensorData)>, OptimError> {
        let result = match self.prefetched.take() {
            Some((s, handle)) if s == stage => {
                handle.join().map_err(|_| OptimError::Store("the read-ahead thread panicked".into()))?
            }
            other => {
                if let Some((_, handle)) = other {
                    let _ = handle.join();
                }
                run_reads(self.job(stage), self.dtype.to_burn())
            }
        };
        let (tensors, bytes) = result.map_err(OptimError::Store)?;
        self.io.read += bytes;
        Ok(tensors)
    }

    /// Writes an HF checkpoint (config.json and safetensors, [`Llama::save_hf`]'s layout) of the
    /// working copy to `dir`, one tensor in memory at a time. `skeleton` is the model it is for.
    pub fn save_hf<B: TrainBackend>(&self, skeleton: &Llama<B>, dir: &Path, options: &SaveOptions) -> Result<()> {
        let by_name: HashMap<&str, &Entry> =
            self.files.iter().flat_map(|f| f.entries.iter()).map(|e| (e.spec.name.as_str(), e)).collect();
        let files: HashMap<&str, &Path> = self
            .files
            .iter()
            .flat_map(|f| f.entries.iter().map(|e| (e.spec.name.as_str(), f.path.as_path())))
            .collect();
        let size = self.dtype.size_of();
        crate::save::save_hf_tensors(dir, skeleton.config(), self.dtype, options, &mut |spec: &TensorSpec| {
            let e = by_name[spec.name.as_str()];
            let path = files[spec.name.as_str()];
            let file = File::open(path).map_err(|err| io_err(path, err))?;
            let data =
                read_tensor(&file, e.offset, e.shape.clone(), self.dtype.to_burn()).map_err(|err| io_err(path, err))?;
            if !spec.transposed {
                return Ok(data);
            }
            let bytes = transpose_bytes(data.as_bytes(), e.shape[0], e.shape[1], size);
            Ok(TensorData::from_bytes_vec(bytes, spec.shape.clone(), self.dtype.to_burn()))
        })
    }
}

/// The bytes of the transpose of a row-major `rows × cols` matrix of `size`-byte elements, in
/// tiles so both sides stay in cache.
fn transpose_bytes(src: &[u8], rows: usize, cols: usize, size: usize) -> Vec<u8> {
    const TILE: usize = 64;
    let mut out = vec![0u8; src.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    let from = (r * cols + c) * size;
                    let to = (c * rows + r) * size;
                    out[to..to + size].copy_from_slice(&src[from..from + size]);
                }
            }
        }
    }
    out
}

impl<B: TrainBackend> StageStore<B, Llama<B>> for DiskStore {
    fn fetch(&mut self, model: Llama<B>, stage: usize) -> std::result::Result<Llama<B>, OptimError> {
        let tensors = self.read_stage(stage)?;
        put_params::<B, _>(model, tensors.into_iter().map(|(id, d)| (id, Held::Data(d))).collect())
    }

    fn prefetch(&mut self, stage: usize) -> std::result::Result<(), OptimError> {
        if stage >= self.reads.len() || self.prefetched.as_ref().is_some_and(|(s, _)| *s == stage) {
            return Ok(());
        }
        if let Some((_, handle)) = self.prefetched.take() {
            let _ = handle.join();
        }
        let (job, dtype) = (self.job(stage), self.dtype.to_burn());
        let handle = std::thread::Builder::new()
            .name("lomo-offload-read".into())
            .spawn(move || run_reads(job, dtype))
            .map_err(|e| OptimError::Store(format!("starting the read-ahead thread: {e}")))?;
        self.prefetched = Some((stage, handle));
        Ok(())
    }

    fn release(
        &mut self,
        model: Llama<B>,
        stage: usize,
        updated: &[ParamId],
    ) -> std::result::Result<Llama<B>, OptimError> {
        let reads: HashSet<ParamId> = self.reads[stage].iter().copied().collect();
        if updated.is_empty() {
            return take_params::<B, _>(
                model,
                &|id| if reads.contains(&id) { Take::Drop } else { Take::Keep },
                &mut |_, _| Ok(()),
            );
        }
        match &mut self.fail_after {
            Some(0) => return Err(OptimError::Store(format!("injected failure before writing back stage {stage}"))),
            Some(n) => *n -= 1,
            None => {}
        }
        // What is written back lives in this stage's file; a read ahead of it would be stale.
        let file_ix = self.location[&updated[0]].0;
        if let Some(&(s, _)) = self.prefetched.as_ref() {
            if self.reads[s].iter().any(|id| self.location[id].0 == file_ix) {
                let (_, handle) = self.prefetched.take().expect("checked");
                let _ = handle.join();
            }
        }
        let file = &self.files[file_ix];
        let writes: HashSet<ParamId> = file.entries.iter().map(|e| e.id).collect();
        if let Some(id) = updated.iter().find(|id| !writes.contains(id)) {
            return Err(OptimError::Store(format!("parameter {id} is not kept in stage {file_ix}'s file")));
        }
        let location = &self.location;
        let mut model = Some(model);
        let mut failed = None;
        let written = write_stage(file, file_ix, self.dtype, self.step + 1, |put| {
            let result = take_params::<B, _>(
                model.take().expect("once"),
                &|id| {
                    if writes.contains(&id) {
                        Take::Data
                    } else if reads.contains(&id) {
                        Take::Drop
                    } else {
                        Take::Keep
                    }
                },
                &mut |id, held| {
                    let Held::Data(data) = held else { unreachable!("asked for data") };
                    put(location[&id].1, data.as_bytes()).map_err(store_err)
                },
            );
            match result {
                Ok(m) => {
                    model = Some(m);
                    Ok(())
                }
                Err(e) => {
                    failed = Some(e);
                    Err(ModelError::Offload("the write-back stopped".into()))
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        self.io.written += written.map_err(store_err)?;
        Ok(model.expect("taken back"))
    }

    fn end_step(&mut self) -> std::result::Result<(), OptimError> {
        self.write_step(self.step + 1).map_err(store_err)
    }
}
