//! E3 on bf16 weights: `C[m,n] = A[m,k]·op(W) + β·C` with `A`, `C` in `f32`
//! and `W` stored as bf16 bits (`u16`), widened to `f32` while it is packed.
//!
//! Built on the portable GEMM's pre-packed entry point: for each block of
//! [`NB`] output columns and [`KB`] depth, the block of `op(W)` is widened
//! into a fixed stack buffer in [`portable::pack_b`]'s panel layout (16-column
//! panels over the block's depth, element `(p, j)` at `q·16·kb + p·16 + j%16`,
//! the last panel zero-padded) and [`portable::gemm_packed_b`] multiplies it:
//! `C[:, j0..j1] (+)= A[:, p0..p1]·op(W)[p0..p1, j0..j1]`, β on the first depth
//! block only. No heap allocation; the blocks are a pure function of the shape,
//! so the summation order (and the bits) is fixed per shape.
//!
//! `m = 1` with `op(W) = Wᵀ` (decoding) never packs: [`bf16::gemv`] streams
//! the rows.

use core::mem::MaybeUninit;

use super::portable;
use crate::kernels::bf16;

/// Depth of one packed block.
pub const KB: usize = 256;
/// Output columns of one packed block (a multiple of the 16-wide panels).
pub const NB: usize = 64;

/// How the stored weight enters the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WOp {
    /// `op(W) = Wᵀ`, `W: [n, k]` stored row-major (row stride `k`): the
    /// forward `y = x·Wᵀ` of a `[out, in]` weight.
    T,
    /// `op(W) = W`, `W: [k, n]` stored row-major (row stride `n`): the input
    /// gradient `dx = dy·W`.
    N,
}

/// `C[m,n] = A[m,k]·op(W) + β·C`; `A` row-major with row stride `lda`, `C`
/// with row stride `ldc`, `W` as [`WOp`] says (dense rows). With `β = 0` the
/// previous contents of `C` are never read.
///
/// # Panics
/// If an operand is shorter than its shape or a stride is below its width
/// (the model's buffers are planned to fit: a caller bug, not bad input).
#[allow(clippy::too_many_arguments)] // reason: the sgemm shape (m, n, k), A + stride, W + op, β, C + stride
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    w: &[u16],
    op: WOp,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n || m == 1, "gemm_bf16: ldc {ldc} < n {n}");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm_bf16: C too short");
    assert!(
        w.len() >= n * k,
        "gemm_bf16: W has {} values, needs {}",
        w.len(),
        n * k
    );
    if k == 0 {
        for i in 0..m {
            for x in &mut c[i * ldc..i * ldc + n] {
                *x = if beta == 0.0 { 0.0 } else { beta * *x };
            }
        }
        return;
    }
    assert!(lda >= k || m == 1, "gemm_bf16: lda {lda} < k {k}");
    assert!(a.len() >= (m - 1) * lda + k, "gemm_bf16: A too short");
    if m == 1 && op == WOp::T && (beta == 0.0 || beta == 1.0) {
        return bf16::gemv(&mut c[..n], &a[..k], w, k, beta);
    }
    let mut buf = [MaybeUninit::<f32>::uninit(); KB * NB];
    for j0 in (0..n).step_by(NB) {
        let nb = NB.min(n - j0);
        for p0 in (0..k).step_by(KB) {
            let kb = KB.min(k - p0);
            let packed = pack(&mut buf, w, op, n, k, j0, nb, p0, kb);
            portable::gemm_packed_b(
                m,
                nb,
                kb,
                1.0,
                &a[p0..],
                lda,
                1,
                packed,
                if p0 == 0 { beta } else { 1.0 },
                &mut c[j0..],
                ldc,
                1,
            );
        }
    }
}

/// Widens `op(W)[p0..p0+kb, j0..j0+nb]` into `buf` in `pack_b`'s layout and
/// returns the initialised prefix (`portable::packed_len(kb, nb)` floats).
#[allow(clippy::too_many_arguments)] // reason: the buffer, W and its op and shape, and the block's two ranges
fn pack<'b>(
    buf: &'b mut [MaybeUninit<f32>; KB * NB],
    w: &[u16],
    op: WOp,
    n: usize,
    k: usize,
    j0: usize,
    nb: usize,
    p0: usize,
    kb: usize,
) -> &'b [f32] {
    const P: usize = portable::NR;
    let len = portable::packed_len(kb, nb);
    debug_assert!(len <= KB * NB && nb <= NB && kb <= KB);
    let panels = nb.div_ceil(P);
    for q in 0..panels {
        let panel = &mut buf[q * P * kb..(q + 1) * P * kb];
        let cols = P.min(nb - q * P);
        match op {
            WOp::T => {
                // op(W)[p, j] = W[j, p]: column jj of the panel is row j of W.
                for jj in 0..P {
                    if jj < cols {
                        let j = j0 + q * P + jj;
                        let row = &w[j * k + p0..j * k + p0 + kb];
                        for (p, &b) in row.iter().enumerate() {
                            panel[p * P + jj] = MaybeUninit::new(bf16::widen(b));
                        }
                    } else {
                        for p in 0..kb {
                            panel[p * P + jj] = MaybeUninit::new(0.0);
                        }
                    }
                }
            }
            WOp::N => {
                // op(W)[p, j] = W[p, j]: panel row p is 16 contiguous values.
                for p in 0..kb {
                    let r = (p0 + p) * n + j0 + q * P;
                    let src = &w[r..r + cols];
                    let dst = &mut panel[p * P..(p + 1) * P];
                    for (d, &b) in dst.iter_mut().zip(src) {
                        *d = MaybeUninit::new(bf16::widen(b));
                    }
                    for d in &mut dst[cols..] {
                        *d = MaybeUninit::new(0.0);
                    }
                }
            }
        }
    }
    // SAFETY: the loops above wrote every element of `buf[..panels·16·kb]`
    // (each panel's `kb` rows × 16 columns, real or zero padding), and
    // `panels·16·kb == packed_len(kb, nb) == len`; `MaybeUninit<f32>` has the
    // layout of `f32`.
    unsafe { core::slice::from_raw_parts(buf.as_ptr() as *const f32, len) }
}
