//! bf16 matrix products on Intel AMX tiles (`tdpbf16ps`: a 16 × 32 bf16 tile times a 32 × 16
//! one into a 16 × 16 f32 tile, in one instruction), through `asm!`: stable Rust has no AMX
//! intrinsics yet.
//!
//! Used by the bf16 Linear where the CPU has AMX-BF16 and AMX-TILE (CPUID leaf 7, EDX bits 22
//! and 24) and Linux grants the tile data state to this process (`arch_prctl(
//! ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); elsewhere the Linear converts f32 panels of the
//! weight and runs gemm. `LOMO_NO_AMX=1` turns it off (to compare the two paths).
//!
//! The product is computed one column panel of the output at a time: the panel's columns of
//! `B` are packed into AMX's pair-interleaved layout (`[k/2][16 columns][2]`), `A` is read as
//! row-major bf16 (packed and zero-padded to whole tiles once per call), every 32 × 32 block of
//! the panel accumulates in four tile registers over the whole `k`, and the f32 panel is handed
//! to the caller to store (converted, for a weight gradient, so that no f32 copy of a whole
//! weight exists).

use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

/// Rows and columns of an f32 accumulator tile; columns of a B tile.
const TILE: usize = 16;
/// `k` per A tile (32 bf16 = 64 bytes a row).
const TILE_K: usize = 32;
/// Output columns per parallel task.
const PANEL: usize = 128;

/// Whether this process can run AMX-BF16 (checked once).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    if std::env::var_os("LOMO_NO_AMX").is_some_and(|v| v != "0") {
        return false;
    }
    let leaf = core::arch::x86_64::__cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = ((leaf.edx >> 22) & 1 == 1, (leaf.edx >> 24) & 1 == 1);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall asking for the tile state permission; it changes nothing else.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The 64-byte tile configuration: palette 1, tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    const fn new() -> Self {
        let mut colsb = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut i = 0;
        while i < 8 {
            colsb[i] = 64;
            rows[i] = 16;
            i += 1;
        }
        Self { palette: 1, start_row: 0, reserved: [0; 14], colsb, rows }
    }
}

static CONFIG: TileConfig = TileConfig::new();

/// A bf16 matrix the product reads: element `(r, c)` at `data[offset + r · rs + c · cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    pub data: &'a [bf16],
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Matrix<'_> {
    /// Row `r`, columns `c0..c0 + out.len()`, into `out`.
    #[inline(always)]
    fn row_into(&self, r: usize, c0: usize, out: &mut [bf16]) {
        let start = self.offset + r * self.rs + c0 * self.cs;
        if self.cs == 1 {
            out.copy_from_slice(&self.data[start..][..out.len()]);
        } else {
            out.iter_mut().enumerate().for_each(|(j, o)| *o = self.data[start + j * self.cs]);
        }
    }
}

/// `A` packed: row-major bf16, rows padded to a multiple of 32 and `k` to a multiple of 32, zeros
/// in the padding.
pub(crate) struct PackedA<'a> {
    data: std::borrow::Cow<'a, [bf16]>,
    /// Elements from one row to the next.
    stride: usize,
    rows: usize,
    k: usize,
}

impl<'a> PackedA<'a> {
    /// `a` (`rows × k`) packed; borrowed as it is when it already has whole tiles (row-major,
    /// rows a multiple of 32, `k` of 32), which the model's shapes mostly do.
    pub(crate) fn new(rows: usize, k: usize, a: Matrix<'a>) -> Self {
        if a.cs == 1 && rows.is_multiple_of(2 * TILE) && k.is_multiple_of(TILE_K) && rows > 0 {
            let data = &a.data[a.offset..a.offset + (rows - 1) * a.rs + k];
            return Self { data: std::borrow::Cow::Borrowed(data), stride: a.rs, rows, k };
        }
        let (rp, kp) = (rows.next_multiple_of(2 * TILE), k.next_multiple_of(TILE_K));
        let mut data = vec![bf16::ZERO; rp * kp];
        if a.cs == 1 || a.rs != 1 {
            data.par_chunks_mut(kp).take(rows).enumerate().for_each(|(r, row)| a.row_into(r, 0, &mut row[..k]));
        } else {
            // A transposed view (its columns contiguous): transpose in 16 × 16 blocks, so that
            // both the reads and the writes stay within a few cache lines.
            data.par_chunks_mut(kp * TILE).enumerate().for_each(|(rb, out)| {
                let r0 = rb * TILE;
                let r1 = (r0 + TILE).min(rows);
                for k0 in (0..k).step_by(TILE) {
                    for kk in k0..(k0 + TILE).min(k) {
                        let col = &a.data[a.offset + kk * a.cs..];
                        for r in r0..r1 {
                            out[(r - r0) * kp + kk] = col[r];
                        }
                    }
                }
            });
        }
        Self { data: std::borrow::Cow::Owned(data), stride: kp, rows: rp, k: kp }
    }
}

/// Columns `c0..c0 + width` of `b` (`k × n`) in AMX's pair layout, per 16-column block
/// `[kp/2][16][2]`, zero-padded to `blocks × 16` columns and `kp` rows.
fn pack_b(b: Matrix<'_>, k: usize, kp: usize, c0: usize, width: usize, blocks: usize) -> Vec<bf16> {
    let mut packed = vec![bf16::ZERO; blocks * kp * TILE];
    if b.rs == 1 && b.cs != 1 {
        // B's columns are contiguous (B is a transposed view, as Wᵀ in dx = dy · Wᵀ): the pair
        // (B[2p, j], B[2p + 1, j]) is two adjacent elements of column j.
        for j in 0..width {
            let col = &b.data[b.offset + (c0 + j) * b.cs..][..k];
            let (blk, lane) = (j / TILE, j % TILE);
            let dst = &mut packed[blk * kp * TILE..][..kp * TILE];
            for (pair, two) in col.chunks(2).enumerate() {
                dst[pair * 2 * TILE + 2 * lane] = two[0];
                if let Some(&v) = two.get(1) {
                    dst[pair * 2 * TILE + 2 * lane + 1] = v;
                }
            }
        }
        return packed;
    }
    let mut rows = [vec![bf16::ZERO; width], vec![bf16::ZERO; width]];
    for pair in 0..k.div_ceil(2) {
        for (h, row) in rows.iter_mut().enumerate() {
            let kk = 2 * pair + h;
            if kk < k {
                b.row_into(kk, c0, row);
            } else {
                row.fill(bf16::ZERO);
            }
        }
        for blk in 0..blocks {
            let dst = &mut packed[blk * kp * TILE + pair * 2 * TILE..][..2 * TILE];
            let cols = (blk * TILE..((blk + 1) * TILE).min(width)).len();
            for j in 0..cols {
                dst[2 * j] = rows[0][blk * TILE + j];
                dst[2 * j + 1] = rows[1][blk * TILE + j];
            }
        }
    }
    packed
}

/// `C[:, c0..c1] = A · B[:, c0..c1]` for each column panel, handed to `store(c0, panel)` with
/// the panel row-major f32 `rows × (c1 − c0)` (`rows`: A's unpadded rows). `b` is `k × n`.
pub(crate) fn product_panels(
    a: &PackedA<'_>,
    rows: usize,
    n: usize,
    k: usize,
    b: Matrix<'_>,
    store: impl Fn(usize, &[f32]) + Sync,
) {
    assert!(available(), "AMX product called where AMX is not available");
    assert!(a.k >= k && a.rows >= rows, "packed A too small");
    let kp = a.k;
    (0..n.div_ceil(PANEL)).into_par_iter().for_each(|p| {
        let (c0, c1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        let width = c1 - c0;
        let wp = width.next_multiple_of(2 * TILE);
        let blocks = wp / TILE;
        let packed = pack_b(b, k, kp, c0, width, blocks);
        let mut c = vec![0f32; a.rows * wp];
        // SAFETY: the tile configuration is valid; `c` holds `a.rows × wp` f32, `a.data` holds
        // `a.rows` rows of `kp` bf16 at `a.stride` and `packed` `blocks × kp × 16`: every tile
        // load and store below stays inside them (rows in steps of 32 < a.rows, columns in steps
        // of 32 < wp).
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack));
            for r0 in (0..a.rows).step_by(2 * TILE) {
                for j0 in (0..wp).step_by(2 * TILE) {
                    block_32x32(
                        a.data.as_ptr().add(r0 * a.stride),
                        a.stride * 2,
                        packed.as_ptr().add((j0 / TILE) * kp * TILE),
                        packed.as_ptr().add((j0 / TILE + 1) * kp * TILE),
                        kp,
                        c.as_mut_ptr().add(r0 * wp + j0),
                        wp * 4,
                    );
                }
            }
            std::arch::asm!("tilerelease", options(nostack));
        }
        if width == wp {
            c.truncate(rows * wp);
            store(c0, &c);
        } else {
            let mut out = vec![0f32; rows * width];
            out.chunks_exact_mut(width).zip(c.chunks_exact(wp)).for_each(|(o, c)| o.copy_from_slice(&c[..width]));
            store(c0, &out);
        }
    });
}

/// One 32 × 32 f32 block of C over the whole `k`: tiles 0–3 accumulate, 4–5 hold A's two
/// 16-row halves, 6–7 B's two 16-column halves.
///
/// # Safety
/// The tile configuration must be loaded; `a` must hold 32 rows of `a_stride` bytes with `k`
/// bf16 each, `b0`/`b1` `k × 16` bf16 in pair layout, `c` 32 rows of `c_stride` bytes.
#[inline(always)]
unsafe fn block_32x32(a: *const bf16, a_stride: usize, b0: *const bf16, b1: *const bf16, k: usize, c: *mut f32, c_stride: usize) {
    use std::arch::asm;
    let a1 = a.byte_add(TILE * a_stride);
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack));
    let b_stride: usize = 64;
    for kb in (0..k).step_by(TILE_K) {
        // A: 16 rows × 32 bf16 at column kb; B: 16 pair-rows (32 k) × 16 columns.
        let (pa0, pa1) = (a.add(kb), a1.add(kb));
        let (pb0, pb1) = (b0.add(kb * TILE), b1.add(kb * TILE));
        asm!(
            "tileloadd tmm4, [{pa0} + {sa}]",
            "tileloadd tmm5, [{pa1} + {sa}]",
            "tileloadd tmm6, [{pb0} + {sb}]",
            "tileloadd tmm7, [{pb1} + {sb}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            pa0 = in(reg) pa0,
            pa1 = in(reg) pa1,
            pb0 = in(reg) pb0,
            pb1 = in(reg) pb1,
            sa = in(reg) a_stride,
            sb = in(reg) b_stride,
            options(nostack),
        );
    }
    let c1 = c.byte_add(TILE * c_stride);
    asm!(
        "tilestored [{c0} + {s}], tmm0",
        "tilestored [{c0r} + {s}], tmm1",
        "tilestored [{c1} + {s}], tmm2",
        "tilestored [{c1r} + {s}], tmm3",
        c0 = in(reg) c,
        c0r = in(reg) c.add(TILE),
        c1 = in(reg) c1,
        c1r = in(reg) c1.add(TILE),
        s = in(reg) c_stride,
        options(nostack),
    );
}
