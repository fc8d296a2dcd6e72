//! The previous portable GEMM (one packed operand, the other read in place),
//! kept for the medium model shapes where it still beats the BLIS-style
//! driver in [`super::portable`]: `8 < min(m, n) ≤ 64`, `max(m, n) ≥ 128`,
//! `k ≥ 64`, with at most 1/8 of its 16-column panels padding unless
//! `k > 256` (`super::panel_wins`) — the forward `x·Wᵀ` products of 16–64
//! token rows and the backward `dx = dy·W` (measured in
//! docs/performance.md: the weight is read in place here, where the BLIS
//! driver packs it on every call). Packed panels on the stack and a
//! register-tiled micro-kernel that prefetches the next tile's rows of the
//! in-place operand, with no heap allocation.
//!
//! The product is computed as `D = U·V` where `U` (rows × k) is read in place
//! by broadcasting single elements (any strides) and `V` (k × cols) is packed
//! into contiguous `[kc][NR]` panels for vector loads. `V` is packed once per
//! GEMM, costing `k·cols` copies against `2·rows·cols·k` FLOPs; the driver
//! therefore makes the larger of `m`, `n` the `U` side (computing
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ` when `n > m`).
//!
//! Micro-kernels: AVX2 + FMA `6 × 16` (12 `ymm` accumulators), selected at run
//! time under `std` (or at compile time when the target enables the features);
//! otherwise a portable `4 × 16` tile in plain Rust that the compiler vectorises
//! for the baseline ISA.

use super::Mat;

/// Depth of one packed panel.
const KC: usize = 256;
/// Panel width shared by all micro-kernels (columns of a tile).
const NR: usize = 16;
/// Largest tile height of any micro-kernel.
const MR_MAX: usize = 6;

/// Micro-kernel signature: `acc[r][j] = Σ_p U[rows[r] + p·cs] · b[p][j]` over
/// `kc` steps; `u` is read in place (row offsets `rows`, column stride `cs`),
/// `b: [kc][NR]` is a packed panel.
/// `pf`: offset from each row of this tile to the same row of the next tile
/// (the AVX2 kernel prefetches those rows' lines while it computes), or
/// `usize::MAX` for no prefetching.
type Micro = fn(
    kc: usize,
    u: &[f32],
    rows: &[usize; MR_MAX],
    cs: usize,
    pf: usize,
    b: &[f32],
    acc: &mut [[f32; NR]; MR_MAX],
);

/// Portable micro-kernel, `MR = 4`.
fn micro_portable(
    kc: usize,
    u: &[f32],
    rows: &[usize; MR_MAX],
    cs: usize,
    _pf: usize,
    b: &[f32],
    acc: &mut [[f32; NR]; MR_MAX],
) {
    const MR: usize = 4;
    let mut t = [[0.0f32; NR]; MR];
    for (p, bp) in b.chunks_exact(NR).take(kc).enumerate() {
        for r in 0..MR {
            let x = u[rows[r] + p * cs];
            for j in 0..NR {
                t[r][j] += x * bp[j];
            }
        }
    }
    acc[..MR].copy_from_slice(&t);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR_MAX, NR};
    use core::arch::x86_64::*;

    pub const MR: usize = 6;

    /// AVX2 + FMA micro-kernel, `6 × 16`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro(
        kc: usize,
        u: &[f32],
        rows: &[usize; MR_MAX],
        cs: usize,
        pf: usize,
        b: &[f32],
        acc: &mut [[f32; NR]; MR_MAX],
    ) {
        if kc == 0 {
            acc.iter_mut().for_each(|r| *r = [0.0; NR]);
            return;
        }
        // Every offset read below is rows[r] + p·cs with p < kc, or < kc·NR in `b`.
        // Row offsets are non-decreasing (the driver builds them so), so the
        // last one is the largest.
        let last = rows[MR - 1] + (kc - 1) * cs;
        assert!(
            last < u.len() && b.len() >= kc * NR,
            "gemm micro-kernel out of bounds"
        );
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        let pb = b.as_ptr();
        let pu = u.as_ptr();
        for p in 0..kc {
            if p % 16 == 0 && pf != usize::MAX {
                // The next tile's rows, one line per row every 16 steps (with
                // `cs = 1` the whole next tile by the end of this one): a
                // weight read once per forward streams from memory, and the
                // hardware prefetcher does not run a tile ahead.
                for r in 0..MR {
                    let at = pu.wrapping_add(rows[r] + pf + p * cs);
                    _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                }
            }
            // SAFETY: p < kc, so p·NR + 16 <= kc·NR <= b.len() and
            // rows[r] + p·cs <= last < u.len() (asserted above).
            unsafe {
                let b0 = _mm256_loadu_ps(pb.add(p * NR));
                let b1 = _mm256_loadu_ps(pb.add(p * NR + 8));
                for r in 0..MR {
                    let x = _mm256_broadcast_ss(&*pu.add(rows[r] + p * cs));
                    c[r][0] = _mm256_fmadd_ps(x, b0, c[r][0]);
                    c[r][1] = _mm256_fmadd_ps(x, b1, c[r][1]);
                }
            }
        }
        for r in 0..MR {
            // SAFETY: acc[r] has NR = 16 floats: two unaligned 8-float stores.
            unsafe {
                _mm256_storeu_ps(acc[r].as_mut_ptr(), c[r][0]);
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), c[r][1]);
            }
        }
    }

    pub fn micro_safe(
        kc: usize,
        u: &[f32],
        rows: &[usize; MR_MAX],
        cs: usize,
        pf: usize,
        b: &[f32],
        acc: &mut [[f32; NR]; MR_MAX],
    ) {
        // SAFETY: this function is only selected after runtime (or compile-time)
        // detection of AVX2 and FMA; `micro` checks its bounds itself (the
        // prefetches may point past `u`: they never fault).
        unsafe { micro(kc, u, rows, cs, pf, b, acc) }
    }
}

/// The micro-kernel for this CPU and its tile height.
fn select() -> (Micro, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::kernels::cpu::avx2_fma() {
            return (avx2::micro_safe, avx2::MR);
        }
    }
    (micro_portable, 4)
}

/// Packs `V[p0..p0+kc, j0..j0+nr]` into `bpack` as `[kc][NR]`, zero-padded.
#[inline]
fn pack_panel(bpack: &mut [f32; KC * NR], v: Mat, p0: usize, kc: usize, j0: usize, nr: usize) {
    if v.cs == 1 {
        // Rows of V are contiguous: one slice copy per depth step.
        for p in 0..kc {
            let src = (p0 + p) * v.rs + j0;
            let row = &mut bpack[p * NR..(p + 1) * NR];
            row[..nr].copy_from_slice(&v.data[src..src + nr]);
            row[nr..].iter_mut().for_each(|x| *x = 0.0);
        }
    } else if v.rs == 1 {
        // Columns of V are contiguous (a transposed operand): read each
        // column sequentially and write it down the panel.
        if nr < NR {
            bpack[..kc * NR].iter_mut().for_each(|x| *x = 0.0);
        }
        for j in 0..nr {
            let at = (j0 + j) * v.cs + p0;
            for (p, &x) in v.data[at..at + kc].iter().enumerate() {
                bpack[p * NR + j] = x;
            }
        }
    } else {
        for p in 0..kc {
            let row = &mut bpack[p * NR..(p + 1) * NR];
            for j in 0..nr {
                row[j] = v.at(p0 + p, j0 + j);
            }
            row[nr..].iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

/// Writes one tile row: `dst[j·cs] = α·acc[j] + β·dst[j·cs]` (`dst` not read when `β = 0`).
#[inline(always)]
fn store_row(d: &mut [f32], base: usize, cs: usize, acc: &[f32], alpha: f32, beta: f32) {
    if cs == 1 {
        // Contiguous output row: straight-line loops that vectorise.
        let dst = &mut d[base..base + acc.len()];
        if beta == 0.0 {
            for (o, &a) in dst.iter_mut().zip(acc) {
                *o = alpha * a;
            }
        } else {
            for (o, &a) in dst.iter_mut().zip(acc) {
                *o = alpha * a + beta * *o;
            }
        }
    } else {
        for (j, &a) in acc.iter().enumerate() {
            let o = &mut d[base + j * cs];
            *o = if beta == 0.0 {
                alpha * a
            } else {
                alpha * a + beta * *o
            };
        }
    }
}

/// `D[rows, cols] = α·U·V + β·D` on strided views (`d` with strides `rsd`, `csd`).
#[allow(clippy::too_many_arguments)] // reason: BLAS-style signature (shape, α, U, V, β, D and its two strides)
fn gemm_uv(
    rows: usize,
    cols: usize,
    k: usize,
    alpha: f32,
    u: Mat,
    v: Mat,
    beta: f32,
    d: &mut [f32],
    rsd: usize,
    csd: usize,
) {
    let (micro, mr) = select();
    let mut bpack = [0.0f32; KC * NR];
    let mut acc = [[0.0f32; NR]; MR_MAX];
    let mut p0 = 0;
    while p0 < k {
        let kc = KC.min(k - p0);
        // The first depth block applies β; later blocks accumulate.
        let beta_here = if p0 == 0 { beta } else { 1.0 };
        let mut j0 = 0;
        while j0 < cols {
            let nr = NR.min(cols - j0);
            pack_panel(&mut bpack, v, p0, kc, j0, nr);
            let mut i0 = 0;
            while i0 < rows {
                let m_here = mr.min(rows - i0);
                // Rows past the end repeat the last valid row; their results are dropped.
                let mut offs = [0usize; MR_MAX];
                for (r, o) in offs.iter_mut().enumerate() {
                    *o = (i0 + r.min(m_here - 1)) * u.rs + p0 * u.cs;
                }
                // Prefetch the next tile's rows for one-block depths (the
                // expert `x·W13ᵀ`, k = 256: 62 → 80 GFLOP/s with the weight
                // coming from memory; for k = 1024 it measured no better).
                let pf = if k <= KC { mr * u.rs } else { usize::MAX };
                micro(kc, u.data, &offs, u.cs, pf, &bpack[..kc * NR], &mut acc);
                if csd == 1 || rsd != 1 {
                    for r in 0..m_here {
                        let at = (i0 + r) * rsd + j0 * csd;
                        store_row(d, at, csd, &acc[r][..nr], alpha, beta_here);
                    }
                } else {
                    // Transposed output (D = Cᵀ): for each column j the tile's
                    // rows are contiguous in C.
                    for j in 0..nr {
                        let at = i0 + (j0 + j) * csd;
                        let col = &mut d[at..at + m_here];
                        for (r, o) in col.iter_mut().enumerate() {
                            let val = alpha * acc[r][j];
                            *o = if beta_here == 0.0 {
                                val
                            } else {
                                val + beta_here * *o
                            };
                        }
                    }
                }
                i0 += mr;
            }
            j0 += NR;
        }
        p0 += kc;
    }
}

/// Below this many rows of `op(A)`, `x·Wᵀ` is computed as dot products.
const GEMV_ROWS: usize = 4;

/// `C[m,n] = α·op(A)·op(B) + β·C`, operands given as strided views of
/// `op(A)` `[m, k]` and `op(B)` `[k, n]`, `C` row-major with row stride `ldc`.
/// Lengths were checked by the caller.
#[allow(clippy::too_many_arguments)] // reason: the BLAS sgemm signature
pub(super) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    va: Mat,
    vb: Mat,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m < GEMV_ROWS && va.cs == 1 && vb.rs == 1 {
        // A few rows times a transposed weight (decoding: x·Wᵀ for one token):
        // every output is a dot product of two contiguous vectors; a packed
        // panel would be mostly padding.
        for i in 0..m {
            let x = &va.data[i * va.rs..i * va.rs + k];
            for j in 0..n {
                let w = &vb.data[j * vb.cs..j * vb.cs + k];
                let o = &mut c[i * ldc + j];
                let val = alpha * crate::kernels::dot(x, w);
                *o = if beta == 0.0 { val } else { val + beta * *o };
            }
        }
        return;
    }
    if n > m {
        // Cᵀ[n, m] = op(B)ᵀ · op(A)ᵀ: U = op(B)ᵀ, V = op(A)ᵀ, D = Cᵀ (strides 1, ldc).
        gemm_uv(
            n,
            m,
            k,
            alpha,
            vb.transposed(),
            va.transposed(),
            beta,
            c,
            1,
            ldc,
        );
    } else {
        gemm_uv(m, n, k, alpha, va, vb, beta, c, ldc, 1);
    }
}
