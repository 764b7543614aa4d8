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
//! `B` are packed into AMX's pair-interleaved layout (`[k/2][16 columns][2]`, into a per-thread
//! buffer, with the rows ahead prefetched), `A` is packed once per call tile by tile (each 16 ×
//! 32 tile 1 KiB in one run, zero-padded), every 32 × 32 block of the panel accumulates in four
//! tile registers over the whole `k` (for at most 1024 rows of A at a time, so that the f32 panel
//! stays small), and the f32 panel is handed to the caller to store
//! (converted, for a weight gradient, so that no f32 copy of a whole weight exists).
//!
//! Measured on this machine's cores (`tdpbf16ps` alone: 3.2 TFLOP/s a core): a tile load costs
//! about as much as a product, so the 2 × 2 block (four loads for four products, the most that
//! eight tile registers allow) peaks near 1 TFLOP/s a core whether its tiles come from L1 or L2;
//! the loads are ordered so that each product starts as soon as its operands are in.

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

/// `A` packed tile by tile: for each block of 16 rows, its `kp / 32` tiles of 16 × 32 bf16 one
/// after the other (`[rows/16][kp/32][16][32]`), so that every tile load reads 1 KiB in one run;
/// rows padded to a multiple of 32 and `k` to a multiple of 32, zeros in the padding.
pub(crate) struct PackedA {
    data: Vec<bf16>,
    rows: usize,
    k: usize,
}

impl PackedA {
    /// `a` (`rows × k`) packed.
    pub(crate) fn new(rows: usize, k: usize, a: Matrix<'_>) -> Self {
        let (rp, kp) = (rows.next_multiple_of(2 * TILE), k.next_multiple_of(TILE_K));
        let block = TILE * kp;
        let mut data = vec![bf16::ZERO; rp * kp];
        data.par_chunks_mut(block).enumerate().for_each(|(rb, out)| {
            super::elem::simd(
                #[inline(always)]
                || {
                    let r0 = rb * TILE;
                    let r1 = (r0 + TILE).min(rows);
                    let at = |r: usize, c: usize| (c / TILE_K) * TILE * TILE_K + (r - r0) * TILE_K + c % TILE_K;
                    if a.cs == 1 {
                        // Row-major: each row's run of 32 into its tile row.
                        for r in r0..r1 {
                            let row = &a.data[a.offset + r * a.rs..][..k];
                            for (t, run) in row.chunks(TILE_K).enumerate() {
                                out[at(r, t * TILE_K)..][..run.len()].copy_from_slice(run);
                            }
                        }
                    } else {
                        // A transposed view (its columns contiguous, as xᵀ in dW = xᵀ · dy): down each
                        // column's 16 rows of this block.
                        for c in 0..k {
                            let col = a.offset + c * a.cs;
                            for r in r0..r1 {
                                out[at(r, c)] = a.data[col + r * a.rs];
                            }
                        }
                    }
                },
            )
        });
        Self { data, rows: rp, k: kp }
    }
}

/// Columns `c0..c0 + width` of `b` (`k × n`) in AMX's pair layout, per 16-column block
/// `[kp/2][16][2]` (one `u32` per bf16 pair), zero-padded to `blocks × 16` columns and `kp`
/// rows. Every element of `packed` (`blocks × kp/2 × 16`) is written, so it may hold anything
/// on entry. Inlined into [`product_panels`]' SIMD dispatch, so that its loops are compiled for
/// AVX-512.
#[inline(always)]
fn pack_b(b: Matrix<'_>, k: usize, kp: usize, c0: usize, width: usize, blocks: usize, packed: &mut [u32]) {
    let pairs = kp / 2;
    debug_assert_eq!(packed.len(), blocks * pairs * TILE);
    let bits: &[u16] = bytemuck::cast_slice(b.data);
    let pair_of = |lo: u16, hi: u16| u32::from(lo) | (u32::from(hi) << 16);
    if b.cs == 1 {
        // Row-major B (a weight W, or dy in dW = xᵀ · dy): two rows' runs of `width` elements
        // interleaved into each block's pair row, 16 lanes at a time.
        let row = |r: usize| (r < k).then(|| &bits[b.offset + r * b.rs + c0..][..width]);
        // Each row's run lies in its own page (the rows are a whole row of B apart), out of the
        // hardware prefetcher's reach: ask for the rows a few pairs ahead.
        const AHEAD: usize = 8;
        let prefetch = |r: usize| {
            if let Some(run) = row(r) {
                for line in (0..run.len()).step_by(32) {
                    prefetch_read(&run[line]);
                }
            }
        };
        (0..2 * AHEAD).for_each(prefetch);
        for pair in 0..pairs {
            prefetch(2 * (pair + AHEAD));
            prefetch(2 * (pair + AHEAD) + 1);
            let (r0, r1) = (row(2 * pair), row(2 * pair + 1));
            for blk in 0..blocks {
                let dst = &mut packed[(blk * pairs + pair) * TILE..][..TILE];
                let j0 = blk * TILE;
                let cols = width.saturating_sub(j0).min(TILE);
                match (r0, r1) {
                    _ if cols == 0 => {}
                    (Some(r0), Some(r1)) if cols == TILE => {
                        let (r0, r1): (&[u16; TILE], &[u16; TILE]) =
                            (r0[j0..j0 + TILE].try_into().unwrap(), r1[j0..j0 + TILE].try_into().unwrap());
                        let dst: &mut [u32; TILE] = dst.try_into().unwrap();
                        (0..TILE).for_each(|j| dst[j] = pair_of(r0[j], r1[j]));
                    }
                    (Some(r0), Some(r1)) => {
                        let (r0, r1) = (&r0[j0..j0 + cols], &r1[j0..j0 + cols]);
                        dst[..cols].iter_mut().zip(r0.iter().zip(r1)).for_each(|(d, (&lo, &hi))| *d = pair_of(lo, hi));
                    }
                    (Some(r0), None) => {
                        dst[..cols].iter_mut().zip(&r0[j0..j0 + cols]).for_each(|(d, &lo)| *d = u32::from(lo));
                    }
                    _ => dst[..cols].fill(0),
                }
                dst[cols..].fill(0);
            }
        }
        return;
    }
    // A transposed or strided B (Wᵀ in dx = dy · Wᵀ: its columns contiguous when `rs == 1`):
    // column by column, each pair two elements `rs` apart.
    for blk in 0..blocks {
        let dst = &mut packed[blk * pairs * TILE..][..pairs * TILE];
        for lane in 0..TILE {
            let j = blk * TILE + lane;
            if j >= width {
                (0..pairs).for_each(|p| dst[p * TILE + lane] = 0);
                continue;
            }
            let col = b.offset + (c0 + j) * b.cs;
            let at = |r: usize| if r < k { bits[col + r * b.rs] } else { 0 };
            if b.rs == 1 {
                let full = k / 2;
                for (p, two) in bits[col..col + 2 * full].chunks_exact(2).enumerate() {
                    dst[p * TILE + lane] = pair_of(two[0], two[1]);
                }
                (full..pairs).for_each(|p| dst[p * TILE + lane] = pair_of(at(2 * p), at(2 * p + 1)));
            } else {
                (0..pairs).for_each(|p| dst[p * TILE + lane] = pair_of(at(2 * p), at(2 * p + 1)));
            }
        }
    }
}

/// A hint that the cache line holding `at` will be read soon.
#[inline(always)]
fn prefetch_read<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>((at as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Per-thread buffers of [`product_panels`] (packed B and the f32 panel), kept between calls so
/// that each panel neither allocates nor faults in fresh zeroed pages.
#[derive(Default)]
struct Scratch {
    packed: Vec<u32>,
    panel: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Rows of C computed per pass over a packed panel of B: bounds the per-thread f32 panel to
/// `ROW_BLOCK × PANEL` (512 KiB) whatever A's height (a tied LM head's `dWᵀ = dyᵀ · x` has one
/// row per vocabulary entry: 128k rows would make a 64 MiB panel per thread).
const ROW_BLOCK: usize = 1024;

/// `C[:, c0..c1] = A · B[:, c0..c1]` for each column panel, handed to `store(r0, c0, width,
/// block)` in blocks of at most [`ROW_BLOCK`] rows: `block` is row-major f32, rows `r0..` of C
/// (only A's unpadded `rows`), columns `c0..c0 + width`. `b` is `k × n`.
pub(crate) fn product_panels(
    a: &PackedA,
    rows: usize,
    n: usize,
    k: usize,
    b: Matrix<'_>,
    store: impl Fn(usize, usize, usize, &[f32]) + Sync,
) {
    assert!(available(), "AMX product called where AMX is not available");
    assert!(a.k >= k && a.rows >= rows, "packed A too small");
    let kp = a.k;
    (0..n.div_ceil(PANEL)).into_par_iter().for_each(|p| {
        let (c0, c1) = (p * PANEL, ((p + 1) * PANEL).min(n));
        let width = c1 - c0;
        let wp = width.next_multiple_of(2 * TILE);
        let blocks = wp / TILE;
        // Taken out of the thread's cell (not borrowed), so that a re-entrant call on this
        // thread gets fresh buffers instead of a conflict.
        let mut scratch = SCRATCH.take();
        scratch.packed.resize(blocks * kp / 2 * TILE, 0);
        super::elem::simd(
            #[inline(always)]
            || pack_b(b, k, kp, c0, width, blocks, &mut scratch.packed),
        );
        scratch.panel.resize(ROW_BLOCK.min(a.rows) * wp, 0.0);
        let (packed, c) = (&scratch.packed, &mut scratch.panel);
        for rb in (0..rows).step_by(ROW_BLOCK) {
            let rb1 = (rb + ROW_BLOCK).min(a.rows);
            // SAFETY: the tile configuration is valid; `c` holds `min(ROW_BLOCK, a.rows) × wp`
            // f32 ≥ (rb1 − rb) × wp, `a.data` `a.rows / 16` blocks of `16 × kp` bf16 and
            // `packed` `blocks × kp/2 × 16` bf16 pairs: every tile load and store below stays
            // inside them (rows in steps of 32 below rb1 ≤ a.rows, a multiple of 32; columns
            // in steps of 32 < wp). Every element of `c` is stored before it is read.
            unsafe {
                let packed = packed.as_ptr().cast::<bf16>();
                std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack));
                for r0 in (rb..rb1).step_by(2 * TILE) {
                    for j0 in (0..wp).step_by(2 * TILE) {
                        block_32x32(
                            a.data.as_ptr().add(r0 * kp),
                            a.data.as_ptr().add((r0 + TILE) * kp),
                            packed.add((j0 / TILE) * kp * TILE),
                            packed.add((j0 / TILE + 1) * kp * TILE),
                            kp,
                            c.as_mut_ptr().add((r0 - rb) * wp + j0),
                            wp * 4,
                        );
                    }
                }
                std::arch::asm!("tilerelease", options(nostack));
            }
            let live = rows.min(rb1) - rb;
            if width != wp {
                // Compact the rows in place (each row moves left, never over one not yet moved).
                for r in 1..live {
                    c.copy_within(r * wp..r * wp + width, r * width);
                }
            }
            store(rb, c0, width, &c[..live * width]);
        }
        SCRATCH.set(scratch);
    });
}

/// One 32 × 32 f32 block of C over the whole `k`: tiles 0–3 accumulate, 4–5 hold A's two
/// 16-row halves, 6–7 B's two 16-column halves.
///
/// # Safety
/// The tile configuration must be loaded; `a0`/`a1` must each hold `k / 32` tiles of 16 × 32
/// bf16 in a row (A's packed layout), `b0`/`b1` `k × 16` bf16 in pair layout, `c` 32 rows of
/// `c_stride` bytes.
#[inline(always)]
unsafe fn block_32x32(
    a0: *const bf16,
    a1: *const bf16,
    b0: *const bf16,
    b1: *const bf16,
    k: usize,
    c: *mut f32,
    c_stride: usize,
) {
    use std::arch::asm;
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack));
    // Both operands' tiles are 16 rows of 64 contiguous bytes.
    let stride: usize = 64;
    for kb in (0..k).step_by(TILE_K) {
        // The tiles at column kb: 16 × 32 bf16 of A, 16 pair-rows (32 k) × 16 columns of B.
        let (pa0, pa1) = (a0.add(kb * TILE), a1.add(kb * TILE));
        let (pb0, pb1) = (b0.add(kb * TILE), b1.add(kb * TILE));
        asm!(
            // Each load as late as possible and each product as soon as its operands are in:
            // the tile registers are not renamed, so a load waits for the last product that
            // reads its register.
            "tileloadd tmm4, [{pa0} + {sa}]",
            "tileloadd tmm6, [{pb0} + {sb}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{pb1} + {sb}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{pa1} + {sa}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            pa0 = in(reg) pa0,
            pa1 = in(reg) pa1,
            pb0 = in(reg) pb0,
            pb1 = in(reg) pb1,
            sa = in(reg) stride,
            sb = in(reg) stride,
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
