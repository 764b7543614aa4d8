//! The update's arithmetic as a burn backend extension, [`UpdateKernels`]: LOMO's update and the
//! norm pass's sum of squares, each one parallel pass over the parameter on Flex, burn's ops
//! everywhere else.
//!
//! On burn-flex 0.21 every elementwise op is single-threaded and makes its result as a new
//! tensor unless its input is unshared: LOMO's `p − lr · g` through burn's ops is two serial
//! passes over each parameter (and for a parameter whose gradient sits in untouched zero pages,
//! a tied or untied embedding's, a page fault per 4 KiB on the write). Measured on a 134M f32
//! step: 0.16 s of 2.0. The Flex kernel reads the gradient and rewrites the weight in place, in
//! one pass split over every core, with the same f32 arithmetic in the same order.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorMetadata, TensorPrimitive};

use crate::rule::GradPrep;

/// A backend that applies LOMO's update and sums squares of gradients in one pass each.
///
/// Implemented by Flex with kernels of its own and, with the default methods (burn's ops, row
/// blocks for large bf16/f16 parameters as [`crate::blocks`] does them), by NdArray, LibTorch
/// and CUDA behind the features of those names.
pub trait UpdateKernels: Backend {
    /// `p · (1 − lr · weight_decay) − lr · prep(g)`, in f32, returned in `param`'s dtype.
    /// `grad` is the raw gradient (any float dtype); `param` is uniquely owned, so its buffer
    /// may be reused.
    fn lomo_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        prep: &GradPrep,
        lr: f64,
        weight_decay: f64,
    ) -> FloatTensor<Self> {
        fn update<B: Backend>(p: Tensor<B, 1>, g: Tensor<B, 1>, prep: &GradPrep, lr: f64, wd: f64) -> Tensor<B, 1> {
            let dtype = p.dtype();
            let mut p = p.cast(DType::F32);
            if wd > 0.0 {
                p = p.mul_scalar(1.0 - lr * wd);
            }
            (p - prep.apply(g).mul_scalar(lr)).cast(dtype)
        }
        let shape = param.shape();
        let n = shape.num_elements();
        let flat = |t: FloatTensor<Self>| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(t)).reshape([n]);
        let (p, g) = (flat(param), flat(grad));
        let p = if p.dtype() == DType::F32 {
            update(p, g, prep, lr, weight_decay)
        } else {
            // No f32 copy of a whole bf16/f16 parameter or gradient (see `blocks`).
            crate::blocks::map_rows(p, &g, |p, g| update(p, g, prep, lr, weight_decay))
        };
        Self::float_reshape(p.into_primitive().tensor(), shape)
    }

    /// AdaLomo's update of a matrix `param` `[m, n]` from its raw gradient: the factored second
    /// moment `(row, col)` (f32, `[m]` and `[n]`; `None` on the first update) moves to
    /// `β · old + (1 − β) · mean(prep(g)² + eps_sq)` along each axis, then
    /// `p ← p · (1 − lr_t · wd) − lr_t · u / max(1, rms(u) / clip)` with
    /// `u = prep(g) · rsqrt(row / mean(row)) · rsqrt(col)` and `lr_t = lr · max(eps_scale, rms(p))`.
    /// Returns the new weight (its dtype), row and col.
    #[allow(clippy::too_many_arguments)]
    fn adalomo_matrix_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        prep: &GradPrep,
        moment: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        lr: f64,
        beta: f64,
        config: &crate::AdaLomoConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let t = |p: FloatTensor<Self>| Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(p));
        let v = |p: FloatTensor<Self>| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(p));
        let (p, row, col) = crate::adalomo::matrix_update(
            t(param),
            prep.apply(t(grad)),
            moment.map(|(r, c)| (v(r), v(c))),
            lr,
            beta,
            config,
        );
        (p.into_primitive().tensor(), row.into_primitive().tensor(), col.into_primitive().tensor())
    }

    /// `Σ (g · scale)²` in f32 per block of elements, summed in f64.
    fn sum_sq(grad: FloatTensor<Self>, scale: f64) -> f64 {
        let n = grad.shape().num_elements();
        crate::blocks::sum_sq_scaled(
            Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(grad)).reshape([n]),
            scale,
        )
    }
}

#[cfg(feature = "ndarray")]
impl UpdateKernels for burn::backend::NdArray {}

#[cfg(feature = "tch")]
impl UpdateKernels for burn::backend::LibTorch {}

#[cfg(feature = "cuda")]
impl UpdateKernels for burn::backend::Cuda {}

/// `Autodiff<B>` updates on `B` (the fused step updates inner tensors; this is for completeness
/// of the bound on autodiff models): the result carries no graph.
impl<B: UpdateKernels, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> UpdateKernels
    for burn::backend::Autodiff<B, C>
{
    fn lomo_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        prep: &GradPrep,
        lr: f64,
        weight_decay: f64,
    ) -> FloatTensor<Self> {
        use burn::tensor::backend::AutodiffBackend;
        let p = B::lomo_update(Self::inner(param), Self::inner(grad), prep, lr, weight_decay);
        Self::from_inner(p)
    }

    fn sum_sq(grad: FloatTensor<Self>, scale: f64) -> f64 {
        use burn::tensor::backend::AutodiffBackend;
        B::sum_sq(Self::inner(grad), scale)
    }

    fn adalomo_matrix_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        prep: &GradPrep,
        moment: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        lr: f64,
        beta: f64,
        config: &crate::AdaLomoConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        use burn::tensor::backend::AutodiffBackend;
        let moment = moment.map(|(r, c)| (Self::inner(r), Self::inner(c)));
        let (p, r, c) = B::adalomo_matrix_update(Self::inner(param), Self::inner(grad), prep, moment, lr, beta, config);
        (Self::from_inner(p), Self::from_inner(r), Self::from_inner(c))
    }
}

mod flex {
    use burn::backend::Flex;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::DType;
    use burn_flex::FlexTensor;
    use half::{bf16, f16};
    use rayon::prelude::*;

    use super::UpdateKernels;
    use crate::rule::GradPrep;

    /// Elements per parallel task.
    const CHUNK: usize = 1 << 16;

    /// Runs `f` compiled for the widest SIMD this CPU has, picked at run time.
    #[inline(always)]
    fn simd<R>(f: impl FnOnce() -> R) -> R {
        pulp::Arch::new().dispatch(f)
    }

    /// Independent partial sums, so that a reduction the compiler may not reorder vectorises.
    const LANES: usize = 16;

    /// `Σ f(a_j, b_j)` over two rows, in f32.
    #[inline(always)]
    fn sum2<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f32) -> f32 {
        let mut acc = [0f32; LANES];
        let ca = a.chunks_exact(LANES);
        let cb = b.chunks_exact(LANES);
        let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
        for (x, y) in ca.zip(cb) {
            for l in 0..LANES {
                acc[l] += f(x[l], y[l]);
            }
        }
        acc.iter().sum::<f32>() + rest
    }

    /// A float storage element, converted to f32 and back.
    trait Elem: burn::tensor::Element + bytemuck::Pod + Send + Sync {
        fn get(self) -> f32;
        fn put(v: f32) -> Self;
    }
    impl Elem for f32 {
        #[inline(always)]
        fn get(self) -> f32 {
            self
        }
        #[inline(always)]
        fn put(v: f32) -> Self {
            v
        }
    }
    impl Elem for bf16 {
        #[inline(always)]
        fn get(self) -> f32 {
            f32::from_bits((self.to_bits() as u32) << 16)
        }
        /// Round to nearest even as `bf16::from_f32`, without its branches (so that the update
        /// loop vectorises).
        #[inline(always)]
        fn put(v: f32) -> Self {
            let x = v.to_bits();
            let rounded = (x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16) as u16;
            bf16::from_bits(if x & 0x7FFF_FFFF > 0x7F80_0000 { ((x >> 16) | 0x40) as u16 } else { rounded })
        }
    }
    impl Elem for f16 {
        #[inline(always)]
        fn get(self) -> f32 {
            self.to_f32()
        }
        #[inline(always)]
        fn put(v: f32) -> Self {
            f16::from_f32(v)
        }
    }

    macro_rules! with_elem {
        ($dtype:expr, |$E:ident| $body:expr) => {
            match $dtype {
                DType::F32 => {
                    type $E = f32;
                    $body
                }
                DType::BF16 => {
                    type $E = bf16;
                    $body
                }
                DType::F16 => {
                    type $E = f16;
                    $body
                }
                other => panic!("lomo-optim: float dtype {other:?} is not f32, bf16 or f16"),
            }
        };
    }

    /// The scalars of one update, as f32 the way burn's `mul_scalar` and `clamp` take them. A
    /// step that is not asked for is its identity (× 1, clamp to ±∞), which IEEE arithmetic
    /// makes exact for every value, NaN and ±0 included: the loop then has no branch and
    /// vectorises (with a branch per option it ran scalar, 0.17 s of a 1.3 s bf16 step).
    #[derive(Clone, Copy)]
    struct Scalars {
        decay: f32,
        inv_scale: f32,
        clip_value: f32,
        clip_coef: f32,
        lr: f32,
    }

    impl Scalars {
        fn new(prep: &GradPrep, lr: f64, weight_decay: f64) -> Self {
            Self {
                decay: if weight_decay > 0.0 { (1.0 - lr * weight_decay) as f32 } else { 1.0 },
                inv_scale: prep.inv_scale as f32,
                clip_value: prep.clip_value.map_or(f32::INFINITY, |v| v as f32),
                clip_coef: prep.clip_coef.map_or(1.0, |c| c as f32),
                lr: lr as f32,
            }
        }

        /// `GradPrep::apply` on one element, in its order.
        #[inline(always)]
        fn prep(&self, g: f32) -> f32 {
            // `clamp` without its `min <= max` assertion (a panic path in the loop keeps it
            // scalar); NaN stays NaN, as in `clamp`.
            let (g, v) = (g * self.inv_scale, self.clip_value);
            let g = if g < -v {
                -v
            } else if g > v {
                v
            } else {
                g
            };
            g * self.clip_coef
        }

        #[inline(always)]
        fn step(&self, p: f32, g: f32) -> f32 {
            p * self.decay - self.prep(g) * self.lr
        }
    }

    /// `t`'s elements in row-major order, contiguous from offset 0 (a copy only when `t` is a
    /// strided view).
    fn contiguous(t: FlexTensor) -> FlexTensor {
        let n = t.layout().num_elements();
        if t.layout().contiguous_offsets() == Some((0, n)) && t.bytes().len() == n * t.dtype().size() {
            t
        } else {
            t.to_contiguous()
        }
    }

    fn update_as<P: Elem, G: Elem>(param: FlexTensor, grad: &FlexTensor, s: Scalars) -> FlexTensor {
        let mut param = contiguous(param);
        let g: &[G] = grad.as_slice::<G>().expect("contiguous gradient");
        // In place when the weight is unshared (the fused step's case); a copy otherwise.
        let p: &mut [P] = param.storage_mut::<P>();
        p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(p, g)| {
            simd(
                #[inline(always)]
                || {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p = P::put(s.step(p.get(), g.get()));
                    }
                },
            )
        });
        param
    }

    fn f32_vec(t: FlexTensor) -> Vec<f32> {
        let t = contiguous(t);
        t.as_slice::<f32>().expect("f32 moment").to_vec()
    }

    /// The AdaLomo kernel: one pass for the moments' means, one for `rms(u)` and `rms(p)`, one
    /// for the update, each over rows in parallel; no tensor the size of the weight is made.
    #[allow(clippy::too_many_arguments)]
    fn adalomo_as<P: Elem, G: Elem>(
        param: FlexTensor,
        grad: &FlexTensor,
        [m, n]: [usize; 2],
        s: Scalars,
        moment: Option<(Vec<f32>, Vec<f32>)>,
        lr: f64,
        beta: f64,
        c: &crate::AdaLomoConfig,
    ) -> (FlexTensor, Vec<f32>, Vec<f32>) {
        let g: &[G] = grad.as_slice::<G>().expect("contiguous gradient");
        let eps_sq = c.eps_sq as f32;
        let rows_per_task = (CHUNK / n.max(1)).max(1);
        // Means of prep(g)² + eps along each axis.
        let mut row_mean = vec![0f32; m];
        let col_sum = row_mean
            .par_chunks_mut(rows_per_task)
            .zip(g.par_chunks(rows_per_task * n))
            .map(|(rm, g)| {
                let mut col = vec![0f32; n];
                simd(
                    #[inline(always)]
                    || {
                        for (rm, g) in rm.iter_mut().zip(g.chunks_exact(n)) {
                            let sq = |g: G| {
                                let g = s.prep(g.get());
                                g * g + eps_sq
                            };
                            col.iter_mut().zip(g).for_each(|(c, &g)| *c += sq(g));
                            *rm = sum2(g, g, |g, _| sq(g)) / n as f32;
                        }
                    },
                );
                col
            })
            .reduce(
                || vec![0f32; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        let (b, keep) = (beta as f32, (1.0 - beta) as f32);
        let col_mean = col_sum.iter().map(|v| v / m as f32);
        let (row, col): (Vec<f32>, Vec<f32>) = match moment {
            Some((row, col)) => (
                row.iter().zip(&row_mean).map(|(o, r)| o * b + r * keep).collect(),
                col.iter().zip(col_mean).map(|(o, c)| o * b + c * keep).collect(),
            ),
            None => (row_mean.iter().map(|r| r * keep).collect(), col_mean.map(|c| c * keep).collect()),
        };
        let mean_row = row.iter().sum::<f32>() / m as f32;
        let r_factor: Vec<f32> = row.iter().map(|r| (r / mean_row).sqrt().recip()).collect();
        let c_factor: Vec<f32> = col.iter().map(|c| c.sqrt().recip()).collect();

        let mut param = contiguous(param);
        let (sum_u, sum_p) = {
            let p: &[P] = param.as_slice::<P>().expect("contiguous weight");
            p.par_chunks(rows_per_task * n)
                .zip(g.par_chunks(rows_per_task * n))
                .enumerate()
                .map(|(task, (p, g))| {
                    simd(
                        #[inline(always)]
                        || {
                            let (mut su, mut sp) = (0f64, 0f64);
                            for (k, (p, g)) in p.chunks_exact(n).zip(g.chunks_exact(n)).enumerate() {
                                let r = r_factor[task * rows_per_task + k];
                                su += sum2(g, &c_factor, |g, c| {
                                    let u = (r * c) * s.prep(g.get());
                                    u * u
                                }) as f64;
                                sp += sum2(p, p, |w, _| w.get() * w.get()) as f64;
                            }
                            (su, sp)
                        },
                    )
                })
                .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
        };
        let numel = (m * n) as f64;
        let denom = ((sum_u / numel).sqrt() / c.clip_threshold).max(1.0) as f32;
        let lr_t = lr * c.eps_scale.max((sum_p / numel).sqrt());
        let decay = (c.weight_decay > 0.0).then_some((1.0 - lr_t * c.weight_decay) as f32);
        let lr_t = lr_t as f32;
        let p: &mut [P] = param.storage_mut::<P>();
        p.par_chunks_mut(rows_per_task * n).zip(g.par_chunks(rows_per_task * n)).enumerate().for_each(
            |(task, (p, g))| {
                simd(
                    #[inline(always)]
                    || {
                        for (k, (p, g)) in p.chunks_exact_mut(n).zip(g.chunks_exact(n)).enumerate() {
                            let r = r_factor[task * rows_per_task + k];
                            for ((p, &g), &c) in p.iter_mut().zip(g).zip(&c_factor) {
                                let mut u = (r * c) * s.prep(g.get());
                                if denom != 1.0 {
                                    u /= denom;
                                }
                                let w = match decay {
                                    Some(d) => p.get() * d,
                                    None => p.get(),
                                };
                                *p = P::put(w - u * lr_t);
                            }
                        }
                    },
                )
            },
        );
        (param, row, col)
    }

    impl UpdateKernels for Flex {
        fn lomo_update(
            param: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            prep: &GradPrep,
            lr: f64,
            weight_decay: f64,
        ) -> FloatTensor<Self> {
            assert_eq!(param.layout().num_elements(), grad.layout().num_elements(), "lomo_update: shapes differ");
            let s = Scalars::new(prep, lr, weight_decay);
            let grad = contiguous(grad);
            let shape = param.layout().shape().clone();
            let out = with_elem!(param.dtype(), |P| with_elem!(grad.dtype(), |G| update_as::<P, G>(param, &grad, s)));
            out.with_layout(burn_flex::Layout::contiguous(shape))
        }

        fn adalomo_matrix_update(
            param: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            prep: &GradPrep,
            moment: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
            lr: f64,
            beta: f64,
            config: &crate::AdaLomoConfig,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
            let shape = param.layout().shape().clone();
            let [m, n] = [shape[0], shape[1]];
            assert_eq!(grad.layout().shape()[..], shape[..], "adalomo_matrix_update: shapes differ");
            let grad = contiguous(grad);
            let moment = moment.map(|(r, c)| (f32_vec(r), f32_vec(c)));
            let s = Scalars::new(prep, 0.0, 0.0);
            let (out, row, col) = with_elem!(param.dtype(), |P| with_elem!(grad.dtype(), |G| {
                adalomo_as::<P, G>(param, &grad, [m, n], s, moment, lr, beta, config)
            }));
            let vec = |v: Vec<f32>| FlexTensor::from_data(burn::tensor::TensorData::new(v.clone(), [v.len()]));
            (out.with_layout(burn_flex::Layout::contiguous(shape)), vec(row), vec(col))
        }

        fn sum_sq(grad: FloatTensor<Self>, scale: f64) -> f64 {
            let grad = contiguous(grad);
            let scale = scale as f32;
            with_elem!(grad.dtype(), |G| {
                let g: &[G] = grad.as_slice::<G>().expect("contiguous gradient");
                g.par_chunks(CHUNK)
                    .map(|g| {
                        // Sixteen partial sums, so that the loop vectorises.
                        let mut acc = [0f32; 16];
                        let chunks = g.chunks_exact(16);
                        let rest: f32 = chunks.remainder().iter().map(|v| (v.get() * scale).powi(2)).sum();
                        for c in chunks {
                            for i in 0..16 {
                                let v = c[i].get() * scale;
                                acc[i] += v * v;
                            }
                        }
                        (acc.iter().sum::<f32>() + rest) as f64
                    })
                    .sum()
            })
        }
    }
}
