//! A rule applied in row blocks (`lomo_kernels::blocks`, as `RuleUpdater` does for a large
//! bf16/f16 parameter) gives exactly what the rule applied to the whole tensor gives. The
//! blocks' casts, sums and norms themselves are tested in lomo-kernels' `tests/update.rs`.

use burn::module::ParamId;
use burn::tensor::{DType, Distribution, Tensor};
use lomo_kernels::blocks::{self, BLOCK_ELEMS};
use lomo_optim::{GradPrep, Lomo, UpdateRule};

use crate::common::backend::{device, Inner, SUPPORTS_F16};

/// `[rows, 1000]` with more elements than a block.
fn big(rows: usize, dtype: DType, seed_shift: f64) -> Tensor<Inner, 2> {
    assert!(rows * 1000 > BLOCK_ELEMS);
    Tensor::<Inner, 2>::random([rows, 1000], Distribution::Normal(seed_shift, 1.0), &device()).cast(dtype)
}

fn bits(t: Tensor<Inner, 2>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

fn half_dtypes() -> Vec<DType> {
    if SUPPORTS_F16 {
        vec![DType::BF16, DType::F16]
    } else {
        vec![]
    }
}

/// LOMO on a large bf16/f16 weight, as `RuleUpdater` applies it (row blocks, each through
/// `GradPrep`), is bit-identical to the rule applied to the whole tensor.
#[test]
fn lomo_in_row_blocks_equals_lomo_on_the_whole_tensor() {
    for dtype in half_dtypes() {
        let (p, g) = (big(1100, dtype, 0.0), big(1100, dtype, 0.1));
        let prep = GradPrep { inv_scale: 0.5, clip_value: Some(1.5), clip_coef: Some(0.7) };
        let mut rule = Lomo::new(0.01).unwrap();
        let id = ParamId::new();
        let whole = UpdateRule::<Inner>::update(&mut rule, id, p.clone(), prep.apply(g.clone()), 0.05);
        let blocked =
            blocks::map_rows(p, &g, |p, g| UpdateRule::<Inner>::update(&mut rule, id, p, prep.apply(g), 0.05));
        assert_eq!(blocked.dtype(), dtype);
        assert_eq!(bits(blocked), bits(whole), "{dtype:?}");
    }
}
