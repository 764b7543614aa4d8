//! LOMO's update: plain SGD with decoupled weight decay (Lv et al. 2024, §3.2).

use burn::module::ParamId;
use burn::tensor::{DType, Tensor};
use lomo_kernels::UpdateKernels;

use crate::error::OptimError;
use crate::rule::{GradPrep, UpdateRule};

/// LOMO: `p = p * (1 - lr * weight_decay) - lr * g`, computed in fp32 and stored back in the
/// parameter's dtype. No state: this is what makes LOMO's memory one copy of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lomo {
    /// Decoupled weight decay (0 disables it).
    pub weight_decay: f64,
}

impl Lomo {
    /// LOMO with the given decoupled weight decay.
    pub fn new(weight_decay: f64) -> Result<Self, OptimError> {
        if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
            return Err(OptimError::Config {
                field: "weight_decay",
                message: format!("must be a finite number >= 0, got {weight_decay}"),
            });
        }
        Ok(Self { weight_decay })
    }
}

impl<B: UpdateKernels> UpdateRule<B> for Lomo {
    fn elementwise(&self) -> bool {
        true
    }

    fn update<const D: usize>(
        &mut self,
        _id: ParamId,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        lr: f64,
    ) -> Tensor<B, D> {
        let dtype = param.dtype();
        let mut p = crate::blocks::cast(param, DType::F32);
        if self.weight_decay > 0.0 {
            p = p.mul_scalar(1.0 - lr * self.weight_decay);
        }
        let p = p - grad.mul_scalar(lr);
        crate::blocks::cast(p, dtype)
    }

    /// The whole update in one op of [`UpdateKernels`] (one parallel pass on Flex).
    fn update_raw<const D: usize>(
        &mut self,
        _id: ParamId,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        prep: &GradPrep,
        lr: f64,
    ) -> Tensor<B, D> {
        let p = B::lomo_update(
            param.into_primitive().tensor(),
            grad.into_primitive().tensor(),
            *prep,
            lr,
            self.weight_decay,
        );
        Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(p))
    }
}
