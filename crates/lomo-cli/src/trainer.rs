//! One optimizer step, whatever `--optimizer` says: the fused step for LOMO and AdaLomo,
//! full backward + a burn optimizer for the SGD and AdamW baselines.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::module::{ModuleMapper, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::tensor::{DType, ElementConversion, Tensor};
use lomo_models::plan::{PlanOptimizer, StepMode};
use lomo_models::TrainBackend;
use lomo_models::{Batch, Llama};
use lomo_optim::{
    full_backward_grads, AdaLomoConfig, DynamicLossScaler, FusedConfig, FusedStep, Lomo, LossScaleConfig, RuleUpdater,
    StageStore, StepReducer, StepReport, UpdateRule,
};

use crate::args::OptimizerKind;

/// The settings every optimizer shares.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub weight_decay: f64,
    pub clip_grad_norm: Option<f64>,
    pub clip_grad_value: Option<f64>,
    /// fp16 dynamic loss scaling's first scale.
    pub loss_scale: Option<f64>,
}

impl OptimizerKind {
    /// The planner's name of the update and how the step is arranged: the one place besides
    /// [`Trainer::new`] where an `--optimizer` name means something.
    pub fn plan(self) -> (PlanOptimizer, StepMode) {
        match self {
            OptimizerKind::Lomo => (PlanOptimizer::Lomo, StepMode::Fused),
            OptimizerKind::Adalomo => (PlanOptimizer::AdaLomo, StepMode::Fused),
            OptimizerKind::Sgd => (PlanOptimizer::Sgd, StepMode::Full),
            OptimizerKind::Adamw => (PlanOptimizer::AdamW, StepMode::Full),
        }
    }

    /// Whether the step is the fused one (the update applied inside the stage-wise backward).
    pub fn fused(self) -> bool {
        self.plan().1 == StepMode::Fused
    }
}

/// The fused step of one update rule, whichever it is: its state goes to and comes from a
/// checkpoint through the rule ([`UpdateRule::save_state`], [`UpdateRule::load_state`]).
pub trait FusedRule<B: TrainBackend> {
    fn step(
        &mut self,
        model: Llama<B>,
        micro_batches: &[Batch],
        lr: f64,
        reducer: &mut dyn StepReducer<B::InnerBackend>,
        store: &mut dyn StageStore<B, Llama<B>>,
    ) -> Result<(Llama<B>, StepReport)>;
    fn scaler(&self) -> Option<&DynamicLossScaler>;
    fn set_scaler(&mut self, scaler: DynamicLossScaler);
    fn save_state(&self, model: &Llama<B>, file: &Path) -> Result<()>;
    fn load_state(&mut self, model: &Llama<B>, file: &Path, device: &B::Device) -> Result<()>;
}

impl<B: TrainBackend, R: UpdateRule<B::InnerBackend> + Clone> FusedRule<B> for FusedStep<RuleUpdater<R>> {
    fn step(
        &mut self,
        model: Llama<B>,
        micro_batches: &[Batch],
        lr: f64,
        reducer: &mut dyn StepReducer<B::InnerBackend>,
        store: &mut dyn StageStore<B, Llama<B>>,
    ) -> Result<(Llama<B>, StepReport)> {
        Ok(self.step_stored(model, micro_batches, lr, reducer, store)?)
    }

    fn scaler(&self) -> Option<&DynamicLossScaler> {
        FusedStep::scaler(self)
    }

    fn set_scaler(&mut self, scaler: DynamicLossScaler) {
        FusedStep::set_scaler(self, scaler)
    }

    fn save_state(&self, model: &Llama<B>, file: &Path) -> Result<()> {
        let rule = &self.updater().rule;
        rule.save_state(model, file)?;
        // burn's file recorder leaves its last buffer to `BufWriter`'s drop, which drops a failed
        // write (a full disk) unseen: the state is read back into a copy of the rule, so that a
        // short file fails the save instead of being marked complete.
        rule.clone()
            .load_state(model, file, &model.device())
            .with_context(|| format!("checking the update rule's state just written to {}", file.display()))
    }

    fn load_state(&mut self, model: &Llama<B>, file: &Path, device: &B::Device) -> Result<()> {
        Ok(self.updater_mut().rule.load_state(model, file, device)?)
    }
}

/// The fused step of `rule`.
fn fused<B: TrainBackend, R: UpdateRule<B::InnerBackend> + Clone + 'static>(
    rule: R,
    config: FusedConfig,
) -> Result<Box<dyn FusedRule<B>>> {
    Ok(Box::new(FusedStep::new(RuleUpdater::new(rule), config)?))
}

/// The optimizer of a run and its state.
pub enum Trainer<B: TrainBackend> {
    Fused(Box<dyn FusedRule<B>>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, Llama<B>, B>, StepSettings),
    AdamW(Box<OptimizerAdaptor<AdamW, Llama<B>, B>>, StepSettings),
}

impl<B: TrainBackend> Trainer<B> {
    /// The optimizer `kind` names: the one place an `--optimizer` name becomes an update.
    pub fn new(kind: OptimizerKind, s: StepSettings) -> Result<Self> {
        let config = FusedConfig {
            clip_grad_norm: s.clip_grad_norm,
            clip_grad_value: s.clip_grad_value,
            loss_scale: s.loss_scale.map(|init_scale| LossScaleConfig { init_scale, ..Default::default() }),
        };
        Ok(match kind {
            OptimizerKind::Lomo => Self::Fused(fused(Lomo::new(s.weight_decay)?, config)?),
            OptimizerKind::Adalomo => {
                let rule = AdaLomoConfig { weight_decay: s.weight_decay, ..Default::default() }.init()?;
                Self::Fused(fused::<B, lomo_optim::AdaLomo<B::InnerBackend>>(rule, config)?)
            }
            OptimizerKind::Sgd => {
                // Our weight decay is decoupled everywhere (p *= 1 - lr * wd) and applied below;
                // burn's SGD decay is an L2 term, so it stays off.
                Self::Sgd(SgdConfig::new().init(), s)
            }
            OptimizerKind::Adamw => Self::AdamW(
                Box::new(AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(s.weight_decay as f32).init()),
                s,
            ),
        })
    }

    /// One step over `micro_batches` at learning rate `lr`.
    pub fn step(&mut self, model: Llama<B>, micro_batches: &[Batch], lr: f64) -> Result<(Llama<B>, StepReport)> {
        self.step_reduced(model, micro_batches, lr, &mut lomo_optim::Local, &mut lomo_optim::Resident)
    }

    /// One step as a rank of a data-parallel group (`reducer` sums across the ranks), the
    /// weights of the stages not running in `store`; the full-backward baselines have neither.
    pub fn step_reduced(
        &mut self,
        model: Llama<B>,
        micro_batches: &[Batch],
        lr: f64,
        reducer: &mut dyn StepReducer<B::InnerBackend>,
        store: &mut dyn StageStore<B, Llama<B>>,
    ) -> Result<(Llama<B>, StepReport)> {
        if reducer.world_size() > 1 && !matches!(self, Self::Fused(_)) {
            bail!("--world-size: data parallelism runs the fused optimizers (lomo, adalomo), not the full-backward baselines");
        }
        match self {
            Self::Fused(step) => step.step(model, micro_batches, lr, reducer, store),
            Self::Sgd(optim, s) => {
                // As LOMO: the gradient is of the undecayed weights, p = p * (1 - lr * wd) - lr * g.
                let wd = s.weight_decay;
                full_step(model, micro_batches, lr, s, |m, g| {
                    let m = if wd > 0.0 { decay(m, lr * wd) } else { m };
                    optim.step(lr, m, g)
                })
            }
            Self::AdamW(optim, s) => full_step(model, micro_batches, lr, s, |m, g| optim.step(lr, m, g)),
        }
    }

    /// Writes the update rule's state (if it keeps one) for `model` to `file`.
    pub fn save_state(&self, model: &Llama<B>, file: &Path) -> Result<()> {
        match self {
            Self::Fused(step) => step.save_state(model, file),
            Self::Sgd(..) | Self::AdamW(..) => Ok(()),
        }
    }

    /// Restores the update rule's state for `model` from `file` (what [`Trainer::save_state`]
    /// wrote), its tensors on `device`; AdamW's moments are never saved, so it cannot resume.
    pub fn load_state(&mut self, model: &Llama<B>, file: &Path, device: &B::Device) -> Result<()> {
        match self {
            Self::Fused(step) => step.load_state(model, file, device),
            Self::Sgd(..) => Ok(()),
            Self::AdamW(..) => bail!("--resume with --optimizer adamw: AdamW's moments are not saved in checkpoints; resume works with lomo, adalomo and sgd"),
        }
    }

    /// The loss scaler's state, with fp16 loss scaling.
    pub fn scaler(&self) -> Option<&DynamicLossScaler> {
        match self {
            Self::Fused(step) => step.scaler(),
            _ => None,
        }
    }

    pub fn set_scaler(&mut self, scaler: DynamicLossScaler) {
        if let Self::Fused(step) = self {
            step.set_scaler(scaler);
        }
    }
}

/// Full backward, global clipping like the fused step's, then the optimizer.
fn full_step<B: TrainBackend>(
    model: Llama<B>,
    micro_batches: &[Batch],
    lr: f64,
    s: &StepSettings,
    apply: impl FnOnce(Llama<B>, GradientsParams) -> Llama<B>,
) -> Result<(Llama<B>, StepReport)> {
    let (grads, loss) = full_backward_grads::<B, _, 3>(&model, micro_batches)?;
    let targets = micro_batches.iter().map(Batch::num_targets).sum();
    let (grads, grad_norm, clip_coef) = clip(&model, grads, s)?;
    let report = StepReport {
        loss,
        targets,
        lr,
        grad_norm,
        clip_coef,
        loss_scale: None,
        skipped: false,
        timings: Default::default(),
    };
    Ok((apply(model, grads), report))
}

/// Clip by value, then by global norm (burn's own norm clipping is per parameter).
fn clip<B: TrainBackend>(
    model: &Llama<B>,
    mut grads: GradientsParams,
    s: &StepSettings,
) -> Result<(GradientsParams, Option<f64>, Option<f64>)> {
    if s.clip_grad_norm.is_none() && s.clip_grad_value.is_none() {
        return Ok((grads, None, None));
    }
    struct Visit<'a> {
        grads: &'a mut GradientsParams,
        value: Option<f64>,
        coef: Option<f64>,
        sum_sq: f64,
    }
    impl<B: TrainBackend> burn::module::ModuleVisitor<B> for Visit<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(mut g) = self.grads.remove::<B::InnerBackend, D>(param.id) else { return };
            if let Some(v) = self.value {
                g = g.clamp(-v, v);
            }
            match self.coef {
                None => self.sum_sq += g.clone().cast(DType::F32).square().sum().into_scalar().elem::<f64>(),
                Some(c) => g = g.mul_scalar(c),
            }
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
    }
    let mut v = Visit { grads: &mut grads, value: s.clip_grad_value, coef: None, sum_sq: 0.0 };
    burn::module::Module::visit(model, &mut v);
    let Some(max_norm) = s.clip_grad_norm else { return Ok((grads, None, None)) };
    let norm = v.sum_sq.sqrt();
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    let mut v = Visit { grads: &mut grads, value: None, coef: Some(coef), sum_sq: 0.0 };
    burn::module::Module::visit(model, &mut v);
    Ok((grads, Some(norm), Some(coef)))
}

/// Decoupled weight decay: `p *= 1 - factor`.
fn decay<B: TrainBackend>(model: Llama<B>, factor: f64) -> Llama<B> {
    struct Decay(f64);
    impl<B: TrainBackend> ModuleMapper<B> for Decay {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = param.consume();
            let t = Tensor::from_inner(t.inner().mul_scalar(1.0 - self.0)).require_grad();
            Param::from_mapped_value(id, t, mapper)
        }
    }
    burn::module::Module::map(model, &mut Decay(factor))
}
