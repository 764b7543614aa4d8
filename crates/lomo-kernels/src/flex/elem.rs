//! The storage dtypes the kernels read and write (f32, bf16, f16), the math every kernel does in
//! f32 (the model ops' and the updates'), and the products of the attention kernel.

use burn::tensor::Element;
use burn_flex::FlexTensor;
use half::{bf16, f16};

/// A storage element: converted to f32 on load, rounded back on store.
pub(crate) trait Elem: Element + bytemuck::Pod + Send + Sync {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
    /// `v` rounded to this dtype, as f32: what an op that stores `v` and reads it back sees.
    #[inline]
    fn round_trip(v: f32) -> f32 {
        Self::from_f32(v).to_f32()
    }
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline]
    fn round_trip(v: f32) -> f32 {
        v
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits(v))
    }
}

/// `v` rounded to bf16 (to nearest, ties to even; NaN stays NaN), as `half::bf16::from_f32`
/// gives it, but without branches, so that a loop of them vectorises (half's version branches
/// per element and kept the bf16 Linear's stores scalar).
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let rounded = (x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16) as u16;
    let nan = ((x >> 16) | 0x40) as u16;
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Runs `$body` with `$E` bound to the element type of `$dtype` (f32, bf16 or f16).
///
/// # Panics
/// On any other dtype: the model only ever stores its floats in these three.
macro_rules! with_elem {
    ($dtype:expr, |$E:ident| $body:expr) => {
        match $dtype {
            burn::tensor::DType::F32 => {
                type $E = f32;
                $body
            }
            burn::tensor::DType::BF16 => {
                type $E = half::bf16;
                $body
            }
            burn::tensor::DType::F16 => {
                type $E = half::f16;
                $body
            }
            other => panic!("lomo-kernels: float dtype {other:?} is not f32, bf16 or f16"),
        }
    };
}
pub(crate) use with_elem;

/// The elements of `t` in row-major order (a contiguous copy first if `t` is a strided view).
pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// `t` itself when its buffer holds exactly its elements in row-major order from offset 0,
/// else a contiguous copy. Unlike [`contiguous`] it takes `t` by value, so an unshared buffer
/// stays unshared and an update can rewrite it in place.
pub(crate) fn into_contiguous(t: FlexTensor) -> FlexTensor {
    let n = t.layout().num_elements();
    if t.layout().contiguous_offsets() == Some((0, n)) && t.bytes().len() == n * t.dtype().size() {
        t
    } else {
        t.to_contiguous()
    }
}

/// The contiguous elements of `t`, which must be contiguous and of type `E`.
pub(crate) fn slice<E: Elem>(t: &FlexTensor) -> &[E] {
    t.as_slice::<E>().expect("lomo-kernels: tensor is contiguous and of the kernel's dtype")
}

/// A new tensor of `shape` from f32-computed values.
pub(crate) fn tensor_from<E: Elem>(values: Vec<E>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(values, shape))
}

/// `e^x` in f32 to about 2 ulp, written so that a loop over a slice vectorises (no branches
/// but selects, no calls): softmax and SiLU spend their time here.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Below the low bound e^x is under f32's smallest normal; the high one keeps 2^n finite.
    let x = x.clamp(-87.336_55, 88.0);
    // Round to nearest by adding and removing 1.5 · 2²³ (|x · log2 e| < 2²²): `f32::round`
    // is a libm call on baseline x86-64, which would keep the loops around this scalar.
    const SHIFT: f32 = 12_582_912.0;
    let n = (x * LOG2E + SHIFT) - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r on [-ln2/2, ln2/2]: Taylor to degree 7 (error below 2e-8 relative).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// Runs `f` compiled for the widest SIMD this CPU has (AVX-512, AVX2 + FMA, or the baseline),
/// picked at run time: the kernels' loops are written plainly and vectorised by the compiler
/// inside. Mark the closure `#[inline(always)]` so that its body is compiled there.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Lanes of the partial sums and maxima below: independent accumulators let the compiler
/// vectorise a reduction it may not reorder.
const LANES: usize = 16;

/// `max x` over a row, in f32 (−∞ for an empty row).
#[inline(always)]
pub(crate) fn max_of<E: Elem>(x: &[E]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, v| m.max(v.to_f32()));
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i].to_f32());
        }
    }
    acc.iter().fold(rest, |m, &v| m.max(v))
}

/// `Σ e^(x − shift)` over a row, in f32.
#[inline(always)]
pub(crate) fn sum_exp<E: Elem>(x: &[E], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|v| exp(v.to_f32() - shift)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += exp(c[i].to_f32() - shift);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `Σ f(a_j, b_j)` over two rows, in f32.
#[inline(always)]
pub(crate) fn sum2<A: Copy, B: Copy>(a: &[A], b: &[B], f: impl Fn(A, B) -> f32) -> f32 {
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

/// `Σ a·b` over two rows, in f32.
#[inline(always)]
pub(crate) fn dot<A: Elem, B: Elem>(a: &[A], b: &[B]) -> f32 {
    let mut acc = [0f32; LANES];
    let n = a.len().min(b.len());
    let whole = n / LANES * LANES;
    for (ca, cb) in a[..whole].chunks_exact(LANES).zip(b[..whole].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i].to_f32() * cb[i].to_f32();
        }
    }
    let rest: f32 = a[whole..n].iter().zip(&b[whole..n]).map(|(x, y)| x.to_f32() * y.to_f32()).sum();
    acc.iter().sum::<f32>() + rest
}

/// `c = a · b` (or `c += a · b` with `accumulate`) for f32 matrices given by their strides, on
/// the calling thread (the kernels parallelise over heads and rows themselves).
///
/// # Panics
/// If a matrix's strides reach outside its slice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f32(
    [m, n, k]: [usize; 3],
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    c: (&mut [f32], usize),
    accumulate: bool,
) {
    let (a, a_rs, a_cs) = a;
    let (b, b_rs, b_cs) = b;
    let (c, c_rs) = c;
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if k > 0 {
        assert!(last(m, k, a_rs, a_cs) < a.len(), "gemm: lhs out of bounds");
        assert!(last(k, n, b_rs, b_cs) < b.len(), "gemm: rhs out of bounds");
    }
    assert!(last(m, n, c_rs, 1) < c.len(), "gemm: dst out of bounds");
    // SAFETY: every element gemm reads or writes was checked to lie inside its slice; `c` is
    // borrowed mutably, so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1e30), exp(-87.336_55));
        assert!(exp(-1e30) < 1.2e-38);
    }

    #[test]
    fn bf16_rounding_equals_half() {
        let mut x = 0x0000_0001u32;
        let mut specials =
            vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0, f32::MAX, f32::MIN_POSITIVE, 1.0039062];
        while x < 0xFFFF_0000 {
            specials.push(f32::from_bits(x));
            x = x.wrapping_mul(3).wrapping_add(0x1_2345);
        }
        for v in specials {
            let (ours, theirs) = (f32_to_bf16_bits(v), bf16::from_f32(v).to_bits());
            if v.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{v:e}");
            }
            assert_eq!(
                <bf16 as Elem>::to_f32(bf16::from_bits(theirs)).to_bits(),
                bf16::from_bits(theirs).to_f32().to_bits()
            );
        }
    }

    #[test]
    fn gemm_f32_strided_and_accumulating() {
        // a = [[1, 2], [3, 4]], b = a^T read through strides, c = a a^T = [[5, 11], [11, 25]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let mut c = [1.0f32; 4];
        gemm_f32([2, 2, 2], (&a, 2, 1), (&a, 1, 2), (&mut c, 2), false);
        assert_eq!(c, [5.0, 11.0, 11.0, 25.0]);
        gemm_f32([2, 2, 2], (&a, 2, 1), (&a, 1, 2), (&mut c, 2), true);
        assert_eq!(c, [10.0, 22.0, 22.0, 50.0]);
    }
}
