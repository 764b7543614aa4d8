//! `y = x · W (+ b)` on Flex and its backward, with the outputs allocated here.
//!
//! burn-flex 0.21's matmul makes each output with `FlexTensor::empty`, which zeroes a byte
//! vector and then copies it into an aligned one (`Bytes::from_bytes_vec`), on the calling
//! thread: for the 134M step that was 8% of all CPU time, serial. Here gemm writes straight into
//! a fresh `Vec`, on every core.
//!
//! f32 runs gemm on the operands in place, any strides. bf16/f16 run it on f32 panels of the
//! weight (or of the weight gradient) of at most [`PANEL_ELEMS`] elements, converted in
//! parallel: the cost is the gemm, and no f32 copy of a whole weight exists (the activations,
//! `rows × in` and `rows × out`, are converted whole).

use burn::tensor::{Element, Shape};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::amx;
use super::elem::{dot, simd, tensor_from, with_elem, Elem};

/// Largest f32 panel of a weight a bf16/f16 product converts at once (1 MiB).
const PANEL_ELEMS: usize = 1 << 18;

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MACS: usize = 1 << 21;

/// A 2-D view: its elements, start, row and column strides.
struct View<'a, E> {
    data: &'a [E],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, E: Elem> View<'a, E> {
    fn new(t: &'a FlexTensor) -> Self {
        let layout = t.layout();
        let (rows, cols, rs, cs) = layout.as_2d_strides().expect("linear: operands are 2-D");
        assert!(rs >= 0 && cs >= 0, "linear: negative strides");
        Self { data: t.storage::<E>(), offset: layout.start_offset(), rows, cols, rs: rs as usize, cs: cs as usize }
    }

    #[inline]
    fn at(&self, r: usize, c: usize) -> E {
        self.data[self.offset + r * self.rs + c * self.cs]
    }

    /// The whole view as row-major f32.
    fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1)).enumerate().for_each(|(r, row)| {
            row.iter_mut().enumerate().for_each(|(c, o)| *o = self.at(r, c).to_f32());
        });
        out
    }

    /// Whether it is column-major (a transposed view of a row-major matrix).
    fn col_major(&self) -> bool {
        self.rows > 1 && self.cols > 1 && self.rs == 1 && self.cs == self.rows
    }
}

/// `c = a · b` into a new row-major `m × n` f32 buffer, `a` and `b` given as (slice, row
/// stride, column stride).
fn gemm_new(m: usize, n: usize, k: usize, a: (&[f32], usize, usize), b: (&[f32], usize, usize)) -> Vec<f32> {
    let mut c: Vec<f32> = Vec::with_capacity(m * n);
    gemm_raw(m, n, k, a, b, c.as_mut_ptr(), n, m * n * k >= PARALLEL_MACS);
    // SAFETY: gemm wrote every one of the m × n elements (it does not read dst here).
    unsafe { c.set_len(m * n) };
    c
}

/// `c = a · b` into `dst` (row stride `dst_rs`), overwriting it.
#[allow(clippy::too_many_arguments)]
fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "linear: lhs out of bounds");
        assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "linear: rhs out of bounds");
    }
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the operands were checked to lie in their slices; `dst` is valid for the
    // `m × n` elements at row stride `dst_rs` (the callers allocate or own it).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A pointer that rayon tasks writing disjoint panels of one buffer may share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// The element `i` past the start (a method, so that closures capture the whole `Sync`
    /// wrapper rather than its raw pointer).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
// SAFETY: every task writes only its own columns of the buffer (disjoint elements).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `x · W` for a bf16/f16 weight `w` (`in × out`, any strides): the weight converted to f32 in
/// column panels, one per task. `x` is row-major f32 `rows × in`.
fn product_by_weight_panels<E: Elem>(x: &[f32], rows: usize, w: &View<'_, E>) -> Vec<f32> {
    let (inner, out) = (w.rows, w.cols);
    let width = (PANEL_ELEMS / inner.max(1)).clamp(16, out.max(16));
    let mut y: Vec<f32> = Vec::with_capacity(rows * out);
    let dst = SharedOut(y.as_mut_ptr());
    (0..out.div_ceil(width)).into_par_iter().for_each(|p| {
        let (c0, c1) = (p * width, ((p + 1) * width).min(out));
        let mut panel = vec![0f32; inner * (c1 - c0)];
        for (r, row) in panel.chunks_exact_mut(c1 - c0).enumerate() {
            row.iter_mut().enumerate().for_each(|(c, v)| *v = w.at(r, c0 + c).to_f32());
        }
        // SAFETY: columns c0..c1 of y are this task's alone.
        gemm_raw(rows, c1 - c0, inner, (x, inner, 1), (&panel, c1 - c0, 1), dst.at(c0), out, false);
    });
    // SAFETY: the panels cover every column of every row.
    unsafe { y.set_len(rows * out) };
    y
}

/// `dy · Wᵀ` for a bf16/f16 weight (`in × out`): row panels of W converted to f32, one per task.
fn product_by_weight_t_panels<E: Elem>(dy: &[f32], rows: usize, w: &View<'_, E>) -> Vec<f32> {
    let (inner, out) = (w.rows, w.cols);
    let height = (PANEL_ELEMS / out.max(1)).clamp(16, inner.max(16));
    let mut dx: Vec<f32> = Vec::with_capacity(rows * inner);
    let dst = SharedOut(dx.as_mut_ptr());
    (0..inner.div_ceil(height)).into_par_iter().for_each(|p| {
        let (r0, r1) = (p * height, ((p + 1) * height).min(inner));
        let mut panel = vec![0f32; (r1 - r0) * out];
        for (r, row) in panel.chunks_exact_mut(out).enumerate() {
            row.iter_mut().enumerate().for_each(|(c, v)| *v = w.at(r0 + r, c).to_f32());
        }
        // dx[:, r0..r1] = dy (rows × out) · panelᵀ (out × (r1 − r0)).
        gemm_raw(rows, r1 - r0, out, (dy, out, 1), (&panel, 1, out), dst.at(r0), inner, false);
    });
    // SAFETY: the panels cover every column of every row.
    unsafe { dx.set_len(rows * inner) };
    dx
}

fn from_f32<E: Elem>(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    if E::dtype() == burn::tensor::DType::F32 {
        return tensor_from(v, shape);
    }
    let out: Vec<E> = v.par_iter().map(|&x| E::from_f32(x)).collect();
    tensor_from(out, shape)
}

/// At most this many rows go through [`matrix_vector`] instead of gemm (decoding's one token).
const GEMV_ROWS: usize = 8;

/// `x · W` for a few rows of `x` (row-major f32 `rows × in`), streaming the weight once in its
/// storage dtype and layout, in contiguous runs split over the cores: decoding reads every
/// weight once per token, and gemm (which packs the weight first) spent most of a step on that.
/// A row-major W is split by its rows (each task's partial sums are added at the end), a
/// column-major one (a transposed view) by its columns (one dot product each).
fn matrix_vector<E: Elem>(x: &[f32], rows: usize, w: &View<'_, E>) -> Vec<f32> {
    let (inner, out) = (w.rows, w.cols);
    let tasks = 2 * rayon::current_num_threads().max(1);
    if w.cs == 1 {
        let per = inner.div_ceil(tasks).max(1);
        let partial = |t: usize| {
            let mut acc = vec![0f32; rows * out];
            simd(
                #[inline(always)]
                || {
                    for k in t * per..((t + 1) * per).min(inner) {
                        let wk = &w.data[w.offset + k * w.rs..][..out];
                        for r in 0..rows {
                            let xk = x[r * inner + k];
                            acc[r * out..][..out].iter_mut().zip(wk).for_each(|(a, &v)| *a += xk * v.to_f32());
                        }
                    }
                },
            );
            acc
        };
        return (0..inner.div_ceil(per)).into_par_iter().map(partial).reduce(
            || vec![0f32; rows * out],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    }
    let per = out.div_ceil(tasks).max(1);
    let parts: Vec<Vec<f32>> = (0..out.div_ceil(per))
        .into_par_iter()
        .map(|t| {
            let (c0, c1) = (t * per, ((t + 1) * per).min(out));
            let mut acc = vec![0f32; rows * (c1 - c0)];
            simd(
                #[inline(always)]
                || {
                    for j in c0..c1 {
                        let col = &w.data[w.offset + j * w.cs..][..inner];
                        for r in 0..rows {
                            acc[r * (c1 - c0) + j - c0] = dot(&x[r * inner..][..inner], col);
                        }
                    }
                },
            );
            acc
        })
        .collect();
    let mut y = vec![0f32; rows * out];
    for (t, part) in parts.iter().enumerate() {
        let (c0, width) = (t * per, part.len() / rows.max(1));
        for r in 0..rows {
            y[r * out + c0..][..width].copy_from_slice(&part[r * width..][..width]);
        }
    }
    y
}

/// `x · W + b` for `x` `[rows, in]` and `W` `[in, out]` (any strides), `[rows, out]` out.
pub(crate) fn forward(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    with_elem!(x.dtype(), |E| {
        let w = View::<E>::new(&weight);
        let xv = View::<E>::new(&x);
        assert_eq!(xv.cols, w.rows, "linear: x is [rows, in], the weight [in, out]");
        let (rows, inner, out) = (xv.rows, w.rows, w.cols);
        let bias: Option<Vec<f32>> = bias.map(|b| {
            let b = b.to_contiguous();
            b.as_slice::<E>().expect("contiguous").iter().map(|v| v.to_f32()).collect()
        });
        // (A column-major W has rs == 1 and its columns contiguous.)
        let gemv = rows <= GEMV_ROWS && (w.cs == 1 || w.rs == 1);
        if !gemv && use_amx::<E>() {
            let a = amx::PackedA::new(rows, inner, bf16_matrix(&xv, false));
            let y = amx_into::<E>(&a, rows, out, inner, bf16_matrix(&w, false), bias.as_deref());
            return tensor_from(y, vec![rows, out]);
        }
        let mut y = if gemv {
            matrix_vector(&xv.to_f32(), rows, &w)
        } else if E::dtype() == burn::tensor::DType::F32 {
            let (xs, ws): (&[f32], &[f32]) = (bytemuck::cast_slice(xv.data), bytemuck::cast_slice(w.data));
            gemm_new(rows, out, inner, (&xs[xv.offset..], xv.rs, xv.cs), (&ws[w.offset..], w.rs, w.cs))
        } else {
            product_by_weight_panels(&xv.to_f32(), rows, &w)
        };
        if let Some(b) = bias {
            y.par_chunks_mut(out.max(1)).for_each(|row| row.iter_mut().zip(&b).for_each(|(y, b)| *y += b));
        }
        from_f32::<E>(y, vec![rows, out])
    })
}

/// Whether products of `E` run on AMX tiles: bf16 where the CPU and OS allow it.
fn use_amx<E: Elem>() -> bool {
    E::dtype() == burn::tensor::DType::BF16 && amx::available()
}

/// A bf16 view as AMX's matrix (its transpose with `transposed`).
fn bf16_matrix<'a, E: Elem>(v: &View<'a, E>, transposed: bool) -> amx::Matrix<'a> {
    let data: &[half::bf16] = bytemuck::cast_slice(v.data);
    let (rs, cs) = if transposed { (v.cs, v.rs) } else { (v.rs, v.cs) };
    amx::Matrix { data, offset: v.offset, rs, cs }
}

/// `A · B (+ bias)` (`rows × n`) on AMX, rounded once into the storage dtype as each panel is
/// done.
fn amx_into<E: Elem>(
    a: &amx::PackedA,
    rows: usize,
    n: usize,
    k: usize,
    b: amx::Matrix<'_>,
    bias: Option<&[f32]>,
) -> Vec<E> {
    let mut c: Vec<E> = Vec::with_capacity(rows * n);
    let dst = SharedElems(c.as_mut_ptr());
    amx::product_panels(a, rows, n, k, b, |r0, c0, width, panel| {
        simd(
            #[inline(always)]
            || {
                for (r, row) in panel.chunks_exact(width.max(1)).enumerate() {
                    // SAFETY: columns c0..c0 + width of every row belong to this panel's task
                    // alone, and lie inside `c` (row r0 + r < rows).
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst.at((r0 + r) * n + c0).cast::<std::mem::MaybeUninit<E>>(),
                            width,
                        )
                    };
                    match bias {
                        Some(b) => out.iter_mut().zip(row).zip(&b[c0..]).for_each(|((o, &v), &b)| {
                            o.write(E::from_f32(v + b));
                        }),
                        None => out.iter_mut().zip(row).for_each(|(o, &v)| {
                            o.write(E::from_f32(v));
                        }),
                    }
                }
            },
        )
    });
    // SAFETY: the panels wrote every column of every row.
    unsafe { c.set_len(rows * n) };
    c
}

/// Row-major f32 elements of a 2-D tensor: borrowed when it already is one, converted otherwise.
fn rows_of<'a, E: Elem>(t: &'a FlexTensor, keep: &'a mut Vec<f32>) -> &'a [f32] {
    let n = t.layout().num_elements();
    if E::dtype() == burn::tensor::DType::F32 && t.is_contiguous() {
        let start = t.layout().start_offset();
        return &t.storage::<f32>()[start..start + n];
    }
    *keep = View::<E>::new(t).to_f32();
    keep
}

/// Gradients of [`forward`]: `dx = dy · Wᵀ`, `dW = xᵀ · dy` (laid out like `W`: a column-major
/// weight view, such as a tied LM head's transposed embedding, gets a column-major gradient), and
/// `db = Σ_rows dy` when `bias`.
pub(crate) fn backward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: bool,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor, Option<FlexTensor>) {
    with_elem!(x.dtype(), |E| {
        let w = View::<E>::new(&weight);
        let (rows, inner, out) = (x.layout().shape()[0], w.rows, w.cols);
        let f32_path = E::dtype() == burn::tensor::DType::F32;
        let col_major = w.col_major();
        if use_amx::<E>() {
            return amx_backward::<E>(&x, &w, bias, &grad, [rows, inner, out], col_major);
        }
        let (mut dy_keep, mut x_keep) = (Vec::new(), Vec::new());
        let dy = rows_of::<E>(&grad, &mut dy_keep);
        let xs = rows_of::<E>(&x, &mut x_keep);
        let (dx, dw) = if f32_path {
            let ws: &[f32] = bytemuck::cast_slice(w.data);
            // Wᵀ read through W's strides.
            let dx = gemm_new(rows, inner, out, (dy, out, 1), (&ws[w.offset..], w.cs, w.rs));
            let dw = if col_major {
                // dWᵀ = dyᵀ · x, row-major [out, in]: W's own layout, transposed back below.
                gemm_new(out, inner, rows, (dy, 1, out), (xs, inner, 1))
            } else {
                gemm_new(inner, out, rows, (xs, 1, inner), (dy, out, 1))
            };
            (dx, tensor_from(dw, if col_major { vec![out, inner] } else { vec![inner, out] }))
        } else {
            let dx = product_by_weight_t_panels(dy, rows, &w);
            (dx, weight_grad_panels::<E>(xs, dy, rows, inner, out, col_major))
        };
        let dw = if col_major {
            dw.with_layout(Layout::new(Shape::from(vec![inner, out]), vec![1, inner as isize], 0))
        } else {
            dw
        };
        let db = bias.then(|| {
            let mut sum = vec![0f32; out];
            for row in dy.chunks_exact(out) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            from_f32::<E>(sum, vec![out])
        });
        (from_f32::<E>(dx, vec![rows, inner]), dw, db)
    })
}

/// [`backward`] on AMX tiles, reading `x`, `dy` and `W` as bf16 where they lie: `dx = dy · Wᵀ`,
/// `dW = xᵀ · dy` (or `dWᵀ = dyᵀ · x` for a column-major W), each rounded into bf16 panel by
/// panel (no f32 copy of the weight gradient).
fn amx_backward<E: Elem>(
    x: &FlexTensor,
    w: &View<'_, E>,
    bias: bool,
    grad: &FlexTensor,
    [rows, inner, out]: [usize; 3],
    col_major: bool,
) -> (FlexTensor, FlexTensor, Option<FlexTensor>) {
    let (xv, dyv) = (View::<E>::new(x), View::<E>::new(grad));
    let a = amx::PackedA::new(rows, out, bf16_matrix(&dyv, false));
    let dx = amx_into::<E>(&a, rows, inner, out, bf16_matrix(w, true), None);
    let dw = if col_major {
        let a = amx::PackedA::new(out, rows, bf16_matrix(&dyv, true));
        amx_into::<E>(&a, out, inner, rows, bf16_matrix(&xv, false), None)
    } else {
        let a = amx::PackedA::new(inner, rows, bf16_matrix(&xv, true));
        amx_into::<E>(&a, inner, out, rows, bf16_matrix(&dyv, false), None)
    };
    let dw = if col_major {
        tensor_from(dw, vec![out, inner]).with_layout(Layout::new(
            Shape::from(vec![inner, out]),
            vec![1, inner as isize],
            0,
        ))
    } else {
        tensor_from(dw, vec![inner, out])
    };
    let db = bias.then(|| {
        let mut sum = vec![0f32; out];
        for r in 0..rows {
            sum.iter_mut().enumerate().for_each(|(j, s)| *s += dyv.at(r, j).to_f32());
        }
        from_f32::<E>(sum, vec![out])
    });
    (tensor_from(dx, vec![rows, inner]), dw, db)
}

/// `xᵀ · dy` for a bf16/f16 weight, in f32 panels converted to the storage dtype as each is
/// done: no f32 gradient of the whole weight. Row-major `[in, out]`, or `[out, in]` with
/// `col_major`.
fn weight_grad_panels<E: Elem>(
    x: &[f32],
    dy: &[f32],
    rows: usize,
    inner: usize,
    out: usize,
    col_major: bool,
) -> FlexTensor {
    // The panels run along the output's rows; `span` is its row length.
    let (panel_rows, span) = if col_major { (out, inner) } else { (inner, out) };
    let width = (PANEL_ELEMS / panel_rows.max(1)).clamp(16, span.max(16));
    let mut dw: Vec<E> = vec![E::from_f32(0.0); inner * out];
    let dst = SharedElems(dw.as_mut_ptr());
    (0..span.div_ceil(width)).into_par_iter().for_each(|p| {
        let (c0, c1) = (p * width, ((p + 1) * width).min(span));
        let w = c1 - c0;
        let panel = if col_major {
            // dWᵀ[:, c0..c1] = dyᵀ (out × rows) · x[:, c0..c1].
            gemm_new(out, w, rows, (dy, 1, out), (&x[c0..], inner, 1))
        } else {
            // dW[:, c0..c1] = xᵀ (in × rows) · dy[:, c0..c1].
            gemm_new(inner, w, rows, (x, 1, inner), (&dy[c0..], out, 1))
        };
        for (r, row) in panel.chunks_exact(w).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                // SAFETY: element (r, c0 + c) lies in this task's columns only, inside `dw`.
                unsafe { *dst.at(r * span + c0 + c) = E::from_f32(v) };
            }
        }
    });
    tensor_from(dw, vec![panel_rows, span])
}

/// A pointer to the weight gradient that tasks writing disjoint columns share.
struct SharedElems<E>(*mut E);
impl<E> Clone for SharedElems<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for SharedElems<E> {}
impl<E> SharedElems<E> {
    /// The element `i` past the start (see [`SharedOut::at`]).
    fn at(self, i: usize) -> *mut E {
        self.0.wrapping_add(i)
    }
}
// SAFETY: every task writes only its own columns (disjoint elements).
unsafe impl<E> Send for SharedElems<E> {}
unsafe impl<E> Sync for SharedElems<E> {}
