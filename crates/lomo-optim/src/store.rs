//! Where a stage's weights wait while the stage is not running: the fused step's offload hook.
//!
//! LOMO keeps no optimizer state and needs one stage's gradients at a time, so the only weights
//! the device must hold are those of the stage that runs. [`FusedStep::step_stored`] asks a
//! [`StageStore`] to bring a stage's parameters onto their device just before the stage runs
//! (the forward pass, the norm pass, the updating pass), and hands them back when it is done;
//! in the updating pass it names the parameters whose update is applied there, which the store
//! makes durable before the stage's memory goes. [`StageStore::prefetch`] says which stage comes
//! next, so a store can read it while the current one computes (double buffering).
//!
//! While a parameter is away, the model holds a placeholder: a tensor of no elements with the
//! parameter's id, dtype, device and `require_grad` flag (so the model still says where each
//! stage lives), which [`take_params`] leaves and [`put_params`] fills. Stores: [`Resident`]
//! (nothing moves: [`FusedStep::step`]), [`HostStore`] (host memory, below); the disk store,
//! a directory of safetensors files, is lomo-models' `DiskStore`. The step does not learn file
//! formats and the model does not learn where its weights wait.
//!
//! [`FusedStep::step_stored`]: crate::FusedStep::step_stored
//! [`FusedStep::step`]: crate::FusedStep::step

use std::collections::{HashMap, HashSet};

use burn::module::{AutodiffModule, ModuleMapper, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorData, TensorMetadata, TensorPrimitive};

use crate::stages::StagedModel;
use crate::OptimError;

/// Holds the parameters of the stages that are not running.
///
/// The fused step calls, per pass and stage `s`: `fetch(s)`, then the stage's work, then
/// `release(s, updated)`, with `updated` empty except in the updating pass, where it lists the
/// parameters whose update was applied at `s` (each parameter is updated at one stage: the
/// lowest that reads it). A parameter read by several stages (a tied embedding and LM head) is
/// fetched with each of them and written back only with the one that updates it.
pub trait StageStore<B: AutodiffBackend, M> {
    /// Brings the parameters stage `stage` reads onto their devices.
    fn fetch(&mut self, model: M, stage: usize) -> Result<M, OptimError>;

    /// Stage `stage` runs next after the one just fetched: a store may start reading it now.
    /// A hint only (the default does nothing).
    fn prefetch(&mut self, stage: usize) -> Result<(), OptimError> {
        let _ = stage;
        Ok(())
    }

    /// Stage `stage` is done for this pass: writes `updated` back (durably, for a store that
    /// persists) and takes the stage's parameters off the device.
    fn release(&mut self, model: M, stage: usize, updated: &[ParamId]) -> Result<M, OptimError>;

    /// Every stage of an applied step has been written back.
    fn end_step(&mut self) -> Result<(), OptimError> {
        Ok(())
    }
}

/// Every weight stays on its device: what [`crate::FusedStep::step`] runs with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resident;

impl<B: AutodiffBackend, M> StageStore<B, M> for Resident {
    fn fetch(&mut self, model: M, _stage: usize) -> Result<M, OptimError> {
        Ok(model)
    }

    fn release(&mut self, model: M, _stage: usize, _updated: &[ParamId]) -> Result<M, OptimError> {
        Ok(model)
    }
}

/// A parameter taken out of a model.
#[derive(Debug)]
pub enum Held<B: Backend> {
    /// As a tensor (on whatever device it was, or was moved to).
    Tensor(FloatTensor<B>),
    /// As host bytes (what a device without a host-side device gets, or a file gives).
    Data(TensorData),
}

/// What [`take_params`] does with each parameter it takes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Leave it in the model.
    Keep,
    /// Drop it (a copy is elsewhere).
    Drop,
    /// Hand it over as a tensor.
    Tensor,
    /// Hand it over as host bytes.
    Data,
}

/// Takes the parameters `what` selects out of `model`, leaving placeholders (no elements, same
/// id, dtype, device and `require_grad`). `sink` gets each parameter handed over, one at a time,
/// in the model's visiting order; its first error stops the hand-over (what is left stays
/// taken, and the error is returned).
pub fn take_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    what: &dyn Fn(ParamId) -> Take,
    sink: &mut dyn FnMut(ParamId, Held<B::InnerBackend>) -> Result<(), OptimError>,
) -> Result<M, OptimError> {
    struct Mapper<'a, B: Backend> {
        what: &'a dyn Fn(ParamId) -> Take,
        sink: &'a mut dyn FnMut(ParamId, Held<B>) -> Result<(), OptimError>,
        failed: Option<OptimError>,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Mapper<'_, B::InnerBackend> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let take = (self.what)(param.id);
            if take == Take::Keep {
                return param;
            }
            let (id, tensor, mapper) = param.consume();
            let require_grad = tensor.is_require_grad();
            let value = tensor.inner();
            let (device, dtype) = (value.device(), value.dtype());
            if value.shape().num_elements() > 0 && self.failed.is_none() {
                let held = match take {
                    Take::Tensor => Some(Held::Tensor(value.into_primitive().tensor())),
                    Take::Data => Some(Held::Data(value.into_data())),
                    Take::Drop | Take::Keep => None,
                };
                if let Some(held) = held {
                    if let Err(e) = (self.sink)(id, held) {
                        self.failed = Some(e);
                    }
                }
            }
            let placeholder = Tensor::<B::InnerBackend, D>::empty([0; D], (&device, dtype));
            let mut placeholder = Tensor::from_inner(placeholder);
            if require_grad {
                placeholder = placeholder.require_grad();
            }
            Param::from_mapped_value(id, placeholder, mapper)
        }
    }
    let mut mapper = Mapper::<B::InnerBackend> { what, sink, failed: None };
    let model = model.map(&mut mapper);
    match mapper.failed {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

/// Puts the parameters in `held` back into `model`'s placeholders: a tensor as it is (moved to
/// the placeholder's device), bytes onto the placeholder's device. A parameter of `held` whose
/// shape or dtype does not fit the placeholder's rank or dtype is an error naming it.
pub fn put_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    mut held: HashMap<ParamId, Held<B::InnerBackend>>,
) -> Result<M, OptimError> {
    struct Mapper<'a, B: Backend> {
        held: &'a mut HashMap<ParamId, Held<B>>,
        failed: Option<OptimError>,
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Mapper<'_, B::InnerBackend> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(held) = self.held.remove(&param.id) else { return param };
            let (id, tensor, mapper) = param.consume();
            let require_grad = tensor.is_require_grad();
            let placeholder = tensor.inner();
            let (device, dtype) = (placeholder.device(), placeholder.dtype());
            let value = match held {
                Held::Tensor(t) => {
                    let t = Tensor::<B::InnerBackend, D>::from_primitive(TensorPrimitive::Float(t));
                    if t.device() == device {
                        t
                    } else {
                        t.to_device(&device)
                    }
                }
                Held::Data(data) => {
                    if data.shape.len() != D || data.dtype != dtype {
                        self.failed.get_or_insert(OptimError::Store(format!(
                            "parameter {id}: stored as {:?} {:?}, the model holds a rank-{D} {dtype:?} tensor",
                            data.dtype, data.shape
                        )));
                        placeholder
                    } else {
                        Tensor::<B::InnerBackend, D>::from_data(data, (&device, dtype))
                    }
                }
            };
            let mut value = Tensor::from_inner(value);
            if require_grad {
                value = value.require_grad();
            }
            Param::from_mapped_value(id, value, mapper)
        }
    }
    let mut mapper = Mapper::<B::InnerBackend> { held: &mut held, failed: None };
    let model = model.map(&mut mapper);
    if let Some(e) = mapper.failed {
        return Err(e);
    }
    if let Some(id) = held.keys().next() {
        return Err(OptimError::Store(format!("parameter {id} is not in the model")));
    }
    Ok(model)
}

/// The parameters of every stage, and for each the stage that updates it.
#[derive(Debug, Clone)]
pub struct StageParams {
    /// The parameters each stage reads, in the order the model lists them.
    pub reads: Vec<Vec<ParamId>>,
    /// For each stage, the parameters updated there (their lowest reading stage): where a
    /// persisting store keeps them.
    pub home: Vec<Vec<ParamId>>,
}

impl StageParams {
    /// From the model's stages.
    pub fn of<B: AutodiffBackend, M: StagedModel<B, D>, const D: usize>(model: &M) -> Self {
        let n = model.num_stages();
        let reads: Vec<Vec<ParamId>> = (0..n).map(|s| model.stage_params(s)).collect();
        let mut seen = HashSet::new();
        let home = reads.iter().map(|ids| ids.iter().copied().filter(|&id| seen.insert(id)).collect()).collect();
        Self { reads, home }
    }
}

/// Host memory as the store: a stage's parameters wait on `host` (a device of the same backend:
/// LibTorch's CPU for a CUDA model) or, without one, as host bytes, and go to their stage's
/// device when it runs. Nothing is copied on the way back: the fused step applies each update
/// before the release, so what comes back is already the new weight.
///
/// On a CPU backend `host` is the device itself and every move is the identity: the code path
/// is the offload one, the cost is none.
#[derive(Debug)]
pub struct HostStore<B: Backend> {
    host: Option<B::Device>,
    stages: StageParams,
    held: HashMap<ParamId, Held<B>>,
}

impl<B: Backend> HostStore<B> {
    /// Takes every parameter of `model` into host memory; the model keeps placeholders.
    pub fn new<A, M, const D: usize>(model: M, host: Option<B::Device>) -> Result<(M, Self), OptimError>
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: StagedModel<A, D>,
    {
        let stages = StageParams::of::<A, M, D>(&model);
        let mut store = Self { host, stages, held: HashMap::new() };
        let all: HashSet<ParamId> = store.stages.reads.iter().flatten().copied().collect();
        let model = store.take(model, &all)?;
        Ok((model, store))
    }

    /// Where the parameters wait: a device of the backend, or `None` for host bytes.
    pub fn host(&self) -> Option<&B::Device> {
        self.host.as_ref()
    }

    /// Bytes of the parameters held now (not on a device).
    pub fn held_bytes(&self) -> usize {
        self.held
            .values()
            .map(|h| match h {
                Held::Tensor(t) => t.shape().num_elements() * t.dtype().size(),
                Held::Data(d) => d.bytes.len(),
            })
            .sum()
    }

    /// Puts every held parameter back into `model`: the model whole on its devices again.
    pub fn fetch_all<A: AutodiffBackend<InnerBackend = B>, M: AutodiffModule<A>>(
        &mut self,
        model: M,
    ) -> Result<M, OptimError> {
        put_params::<A, M>(model, std::mem::take(&mut self.held))
    }

    fn take<A: AutodiffBackend<InnerBackend = B>, M: AutodiffModule<A>>(
        &mut self,
        model: M,
        ids: &HashSet<ParamId>,
    ) -> Result<M, OptimError> {
        let how = if self.host.is_some() { Take::Tensor } else { Take::Data };
        let host = self.host.clone();
        let held = &mut self.held;
        take_params::<A, M>(model, &|id| if ids.contains(&id) { how } else { Take::Keep }, &mut |id, h| {
            let h = match (h, &host) {
                (Held::Tensor(t), Some(host)) if &B::float_device(&t) != host => {
                    Held::Tensor(B::float_to_device(t, host))
                }
                (other, _) => other,
            };
            held.insert(id, h);
            Ok(())
        })
    }
}

impl<A, M, B> StageStore<A, M> for HostStore<B>
where
    B: Backend,
    A: AutodiffBackend<InnerBackend = B>,
    M: AutodiffModule<A>,
{
    fn fetch(&mut self, model: M, stage: usize) -> Result<M, OptimError> {
        let mut out = HashMap::new();
        for id in &self.stages.reads[stage] {
            // A parameter read by two stages is fetched by the first and already in place.
            if let Some(h) = self.held.remove(id) {
                out.insert(*id, h);
            }
        }
        put_params::<A, M>(model, out)
    }

    fn release(&mut self, model: M, stage: usize, _updated: &[ParamId]) -> Result<M, OptimError> {
        let ids: HashSet<ParamId> = self.stages.reads[stage].iter().copied().collect();
        self.take(model, &ids)
    }
}
