//! One optimizer step, whatever `--optimizer` says: the fused step for LOMO and AdaLomo,
//! full backward + a burn optimizer for the SGD and AdamW baselines.

use anyhow::Result;
use burn::module::{ModuleMapper, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::tensor::{DType, ElementConversion, Tensor};
use lomo_models::TrainBackend;
use lomo_models::{Batch, Llama};
use lomo_optim::{
    full_backward_grads, AdaLomo, AdaLomoConfig, FusedConfig, FusedStep, Lomo, LossScaleConfig, RuleUpdater, StepReport,
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

/// The optimizer of a run and its state.
#[allow(clippy::large_enum_variant)]
pub enum Trainer<B: TrainBackend> {
    Lomo(FusedStep<RuleUpdater<Lomo>>),
    AdaLomo(FusedStep<RuleUpdater<AdaLomo<B::InnerBackend>>>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, Llama<B>, B>, StepSettings),
    AdamW(OptimizerAdaptor<AdamW, Llama<B>, B>, StepSettings),
}

impl<B: TrainBackend> Trainer<B> {
    pub fn new(kind: OptimizerKind, s: StepSettings) -> Result<Self> {
        let fused = FusedConfig {
            clip_grad_norm: s.clip_grad_norm,
            clip_grad_value: s.clip_grad_value,
            loss_scale: s.loss_scale.map(|init_scale| LossScaleConfig { init_scale, ..Default::default() }),
        };
        Ok(match kind {
            OptimizerKind::Lomo => Self::Lomo(FusedStep::new(RuleUpdater::new(Lomo::new(s.weight_decay)?), fused)?),
            OptimizerKind::Adalomo => {
                let rule = AdaLomoConfig { weight_decay: s.weight_decay, ..Default::default() }.init()?;
                Self::AdaLomo(FusedStep::new(RuleUpdater::new(rule), fused)?)
            }
            OptimizerKind::Sgd => {
                // Our weight decay is decoupled everywhere (p *= 1 - lr * wd) and applied below;
                // burn's SGD decay is an L2 term, so it stays off.
                Self::Sgd(SgdConfig::new().init(), s)
            }
            OptimizerKind::Adamw => {
                Self::AdamW(AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(s.weight_decay as f32).init(), s)
            }
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
        reducer: &mut dyn lomo_optim::StepReducer<B::InnerBackend>,
        store: &mut dyn lomo_optim::StageStore<B, Llama<B>>,
    ) -> Result<(Llama<B>, StepReport)> {
        if reducer.world_size() > 1 && matches!(self, Self::Sgd(..) | Self::AdamW(..)) {
            anyhow::bail!("--world-size: data parallelism runs the fused optimizers (lomo, adalomo), not the full-backward baselines");
        }
        Ok(match self {
            Self::Lomo(step) => step.step_stored(model, micro_batches, lr, reducer, store)?,
            Self::AdaLomo(step) => step.step_stored(model, micro_batches, lr, reducer, store)?,
            Self::Sgd(optim, s) => {
                // As LOMO: the gradient is of the undecayed weights, p = p * (1 - lr * wd) - lr * g.
                let wd = s.weight_decay;
                full_step(model, micro_batches, lr, s, |m, g| {
                    let m = if wd > 0.0 { decay(m, lr * wd) } else { m };
                    optim.step(lr, m, g)
                })?
            }
            Self::AdamW(optim, s) => full_step(model, micro_batches, lr, s, |m, g| optim.step(lr, m, g))?,
        })
    }

    /// The AdaLomo rule, when this run has one (its state goes into checkpoints).
    pub fn adalomo(&self) -> Option<&AdaLomo<B::InnerBackend>> {
        match self {
            Self::AdaLomo(step) => Some(&step.updater().rule),
            _ => None,
        }
    }

    pub fn adalomo_mut(&mut self) -> Option<&mut AdaLomo<B::InnerBackend>> {
        match self {
            Self::AdaLomo(step) => Some(&mut step.updater_mut().rule),
            _ => None,
        }
    }

    /// The loss scaler's state, with fp16 loss scaling.
    pub fn scaler(&self) -> Option<&lomo_optim::DynamicLossScaler> {
        match self {
            Self::Lomo(step) => step.scaler(),
            Self::AdaLomo(step) => step.scaler(),
            _ => None,
        }
    }

    pub fn set_scaler(&mut self, scaler: lomo_optim::DynamicLossScaler) {
        match self {
            Self::Lomo(step) => step.set_scaler(scaler),
            Self::AdaLomo(step) => step.set_scaler(scaler),
            _ => {}
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
