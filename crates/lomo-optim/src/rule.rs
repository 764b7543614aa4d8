//! Update rules: what happens to one parameter once its gradient is final.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

use crate::error::OptimError;

/// The gradient transforms shared by every rule, applied in this order in fp32: unscale (fp16
/// loss scaling), clamp by value, multiply by the global-norm clip coefficient. The scalars
/// lomo-kernels' update kernels take, under the name the fused step has always given them.
pub use lomo_kernels::GradScale as GradPrep;

/// A per-parameter update rule (LOMO, AdaLomo). Works on the inner (non-autodiff) backend.
///
/// The fused step calls [`UpdateRule::update`] for each parameter exactly once per applied
/// step, right after that parameter's gradient is final; the gradient is then dropped.
pub trait UpdateRule<B: Backend> {
    /// Called once before the first update of an applied step (never for a skipped step).
    fn begin_step(&mut self) {}

    /// Whether each element's update depends on that element's weight and gradient only (and
    /// the rule's scalars), as LOMO's does. [`RuleUpdater`] then applies the rule to a large
    /// bf16/f16 parameter in row blocks ([`crate::blocks`]), so the fp32 working copies of
    /// the weight and the gradient are one block's, never the whole parameter's.
    fn elementwise(&self) -> bool {
        false
    }

    /// The new value of `param` (storage dtype) given its fp32 gradient `grad` (already
    /// through [`GradPrep`]) and the learning rate of this step. `param` is uniquely owned
    /// when the fused step calls this, so arithmetic on it can reuse its buffer.
    fn update<const D: usize>(&mut self, id: ParamId, param: Tensor<B, D>, grad: Tensor<B, D>, lr: f64)
        -> Tensor<B, D>;

    /// The new value of `param` given its raw gradient (the dtype backward produced, not yet
    /// through `prep`): what [`RuleUpdater`] calls. By default `prep` then
    /// [`UpdateRule::update`], in row blocks for a large bf16/f16 parameter of an elementwise
    /// rule; a rule with a fused kernel (LOMO) overrides it.
    fn update_raw<const D: usize>(
        &mut self,
        id: ParamId,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        prep: &GradPrep,
        lr: f64,
    ) -> Tensor<B, D> {
        if self.elementwise() && param.dtype() != DType::F32 {
            crate::blocks::map_rows(param, &grad, |p, g| self.update(id, p, prep.apply(g), lr))
        } else {
            let grad = prep.apply(grad);
            self.update(id, param, grad, lr)
        }
    }

    /// Writes the rule's state (AdaLomo's second moments) to `file`, naming each parameter by
    /// its path in `model` ([`param_paths`]), so that the state survives a reload of the model,
    /// which gives the parameters new ids. A stateless rule (LOMO) writes nothing: the default.
    fn save_state<BM: Backend, M: Module<BM>>(&self, _model: &M, _file: &Path) -> Result<(), OptimError> {
        Ok(())
    }

    /// Restores what [`UpdateRule::save_state`] wrote to `file` for the parameters of `model`,
    /// its tensors on `device`. A stateless rule reads nothing: the default.
    fn load_state<BM: Backend, M: Module<BM>>(
        &mut self,
        _model: &M,
        _file: &Path,
        _device: &B::Device,
    ) -> Result<(), OptimError> {
        Ok(())
    }
}

/// How the fused step hands a stage's final gradients to whatever updates the model.
///
/// Implemented for every [`UpdateRule`] through [`RuleUpdater`], and for burn optimizers
/// through [`crate::BurnOptimizer`].
pub trait Updater<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// Called once before the first update of an applied step.
    fn begin_step(&mut self);

    /// Applies the gradients in `grads` (raw: in the dtype backward produced, not yet through
    /// `prep`) to the parameters they name; other parameters are left as they are.
    fn apply(&mut self, model: M, grads: &mut GradientsParams, prep: &GradPrep, lr: f64) -> M;
}

/// Adapts an [`UpdateRule`] to an [`Updater`]: visits the model and replaces each parameter
/// that has a gradient, one at a time, so only one parameter's fp32 working copy exists (and
/// for an elementwise rule on a large bf16/f16 parameter, only one row block's).
#[derive(Debug, Clone)]
pub struct RuleUpdater<R> {
    /// The rule.
    pub rule: R,
}

impl<R> RuleUpdater<R> {
    /// Wraps `rule`.
    pub fn new(rule: R) -> Self {
        Self { rule }
    }
}

impl<B, M, R> Updater<B, M> for RuleUpdater<R>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    R: UpdateRule<B::InnerBackend>,
{
    fn begin_step(&mut self) {
        self.rule.begin_step();
    }

    fn apply(&mut self, model: M, grads: &mut GradientsParams, prep: &GradPrep, lr: f64) -> M {
        struct Mapper<'a, R> {
            rule: &'a mut R,
            grads: &'a mut GradientsParams,
            prep: &'a GradPrep,
            lr: f64,
        }
        impl<B: AutodiffBackend, R: UpdateRule<B::InnerBackend>> ModuleMapper<B> for Mapper<'_, R> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
                    return param;
                };
                let (id, tensor, mapper) = param.consume();
                let require_grad = tensor.is_require_grad();
                // The stage's graph is gone, so `inner()` hands over the only reference.
                let value = tensor.inner();
                let updated = self.rule.update_raw(id, value, grad, self.prep, self.lr);
                let mut updated = Tensor::from_inner(updated);
                if require_grad {
                    updated = updated.require_grad();
                }
                Param::from_mapped_value(id, updated, mapper)
            }
        }
        if grads.is_empty() {
            return model;
        }
        model.map(&mut Mapper { rule: &mut self.rule, grads, prep, lr })
    }
}

/// The path of every float parameter (`layers.3.attn.weight`) by id: a stable name for
/// saving optimizer state, since parameter ids are not kept by HF checkpoints.
pub fn param_paths<B: Backend, M: burn::module::Module<B>>(module: &M) -> HashMap<ParamId, String> {
    struct Paths {
        stack: Vec<String>,
        paths: HashMap<ParamId, String>,
    }
    impl<B: Backend> burn::module::ModuleVisitor<B> for Paths {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.paths.entry(param.id).or_insert_with(|| self.stack.join("."));
        }
    }
    let mut paths = Paths { stack: Vec::new(), paths: HashMap::new() };
    module.visit(&mut paths);
    paths.paths
}
