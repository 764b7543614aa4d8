//! Shared by the lomo-optim test binaries: the backend the tests run on and a small staged
//! model with a tied parameter.
#![allow(dead_code)]

pub mod backend;
pub mod model;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use std::collections::HashMap;

/// Every float parameter as fp32 host values, by id.
pub fn params_host<B: Backend, M: Module<B>>(module: &M) -> HashMap<ParamId, (Vec<usize>, Vec<f32>)> {
    struct Collect(HashMap<ParamId, (Vec<usize>, Vec<f32>)>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            let dims = t.dims().to_vec();
            let values = t.cast(DType::F32).into_data().convert::<f32>().to_vec::<f32>().unwrap();
            self.0.insert(param.id, (dims, values));
        }
    }
    let mut c = Collect(HashMap::new());
    module.visit(&mut c);
    c.0
}

/// Every float parameter's raw bytes, by id: for bit-identity checks.
pub fn params_bytes<B: Backend, M: Module<B>>(module: &M) -> HashMap<ParamId, Vec<u8>> {
    struct Collect(HashMap<ParamId, Vec<u8>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.insert(param.id, param.val().into_data().bytes.to_vec());
        }
    }
    let mut c = Collect(HashMap::new());
    module.visit(&mut c);
    c.0
}

/// Every float parameter as fp32 host values, in visiting order: comparable across two
/// models built the same way (their parameter ids differ).
pub fn snapshot<B: Backend, M: Module<B>>(module: &M) -> Vec<(Vec<usize>, Vec<f32>)> {
    let by_id = params_host(module);
    lomo_optim::param_ids(module).into_iter().map(|id| by_id[&id].clone()).collect()
}

/// A by-id parameter set put in `module`'s visiting order.
pub fn ordered<B: Backend, M: Module<B>>(
    module: &M,
    by_id: &HashMap<ParamId, (Vec<usize>, Vec<f32>)>,
) -> Vec<(Vec<usize>, Vec<f32>)> {
    lomo_optim::param_ids(module).into_iter().map(|id| by_id[&id].clone()).collect()
}

/// The largest absolute difference between two parameter snapshots.
pub fn max_abs_diff(a: &[(Vec<usize>, Vec<f32>)], b: &[(Vec<usize>, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len(), "different parameter sets");
    let mut worst = 0f32;
    for ((shape, va), (shape_b, vb)) in a.iter().zip(b) {
        assert_eq!(shape, shape_b);
        for (x, y) in va.iter().zip(vb) {
            let d = (x - y).abs();
            assert!(d.is_finite(), "non-finite difference");
            worst = worst.max(d);
        }
    }
    worst
}
