//! E6 / E7 — linear layer without bias, PyTorch convention `W: [out, in]`.
//!
//! Forward `y = x·Wᵀ` (`x: [n, in]`, `y: [n, out]`).
//! Backward (two GEMMs): `dx (+)= dy·W`, `dW += dyᵀ·x` (always accumulates).

use core::ops::Range;

use crate::kernels::bf16;
use crate::kernels::gemm::{bf16 as gemm_bf16, gemm, portable, Mat};

/// A read-only view of weights in their storage precision: `f32` values or
/// bf16 bit patterns (`u16`, see [`crate::kernels::bf16`]). The same view
/// serves a whole flat parameter buffer and one tensor of it ([`Weight::get`]).
#[derive(Debug, Clone, Copy)]
pub enum Weight<'a> {
    /// `f32` weights.
    F32(&'a [f32]),
    /// bf16 weights (upper 16 bits of an `f32`), widened to `f32` on use.
    Bf16(&'a [u16]),
}

impl<'a> Weight<'a> {
    /// Number of values.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
        }
    }

    /// Whether the view holds no value.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sub-view `range` (e.g. one tensor of the flat layout).
    ///
    /// # Panics
    /// If `range` lies outside the view.
    #[inline]
    pub fn get(&self, range: Range<usize>) -> Weight<'a> {
        match *self {
            Weight::F32(w) => Weight::F32(&w[range]),
            Weight::Bf16(w) => Weight::Bf16(&w[range]),
        }
    }

    /// Bytes the view's values occupy (4 or 2 per value).
    #[inline]
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(w) => 4 * w.len(),
            Weight::Bf16(w) => 2 * w.len(),
        }
    }

    /// Copies values `range` into `out` as `f32` (bf16 widened exactly).
    ///
    /// # Panics
    /// If `range` lies outside the view or `out.len() != range.len()`.
    #[inline]
    pub fn copy_to_f32(&self, range: Range<usize>, out: &mut [f32]) {
        match *self {
            Weight::F32(w) => out.copy_from_slice(&w[range]),
            Weight::Bf16(w) => bf16::widen_slice(out, &w[range]),
        }
    }
}

/// Whether a unit overwrites its output or adds into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accum {
    /// `y = f(x)`: the previous contents of `y` are never read.
    Set,
    /// `y += f(x)` (e.g. a residual connection, or a gradient summed over uses).
    Add,
}

impl Accum {
    /// The GEMM `β`: 0 for [`Accum::Set`], 1 for [`Accum::Add`].
    const fn beta(self) -> f32 {
        match self {
            Accum::Set => 0.0,
            Accum::Add => 1.0,
        }
    }
}

/// E6 — `y = x·Wᵀ` ([`Accum::Set`]) or `y += x·Wᵀ` ([`Accum::Add`]);
/// `x: [n, din]`, `w: [dout, din]`, `y: [n, dout]`.
///
/// # Panics
/// If a slice is shorter than its shape (the GEMM checks every operand once,
/// before it reads or writes anything). These are the innermost units of
/// the model, called on buffers of its own plan; a `Result` here would add
/// error plumbing to every GEMM without adding safety.
#[inline]
pub fn forward(y: &mut [f32], x: &[f32], w: &[f32], n: usize, din: usize, dout: usize, acc: Accum) {
    if n == 1 && dout >= GEMV_SPLIT_MIN && crate::parallel::current_installed() {
        return forward_gemv_split(y, x, w, din, dout, acc);
    }
    gemm(
        n,
        dout,
        din,
        1.0,
        Mat::n(x, din),
        Mat::t(w, din),
        acc.beta(),
        y,
        dout,
    );
}

/// E6 on a weight view — [`forward`] for [`Weight::F32`]; for
/// [`Weight::Bf16`] the same product with the weight widened to `f32` inside
/// the GEMM's packing ([`gemm_bf16::gemm`]) or, for one row (decoding), in
/// registers ([`bf16::gemv`]), split over an installed pool exactly as
/// [`forward`] splits its GEMV. Compute and accumulation are `f32`.
///
/// # Panics
/// As [`forward`].
#[inline]
pub fn forward_w(
    y: &mut [f32],
    x: &[f32],
    w: Weight,
    n: usize,
    din: usize,
    dout: usize,
    acc: Accum,
) {
    match w {
        Weight::F32(w) => forward(y, x, w, n, din, dout, acc),
        Weight::Bf16(w) => {
            if n == 1 && dout >= GEMV_SPLIT_MIN && crate::parallel::current_installed() {
                return forward_gemv_split_bf16(y, x, w, din, dout, acc);
            }
            gemm_bf16::gemm(
                n,
                dout,
                din,
                x,
                din,
                w,
                gemm_bf16::WOp::T,
                acc.beta(),
                y,
                dout,
            );
        }
    }
}

/// Fewest rows for which [`forward_packed`] reads a pre-packed weight. Up to
/// [`portable::SMALL_M`] rows (decoding, small experts) the unpacked GEMM
/// computes `x·Wᵀ` as dot products (a GEMV that reads `W` once), whose
/// summation order differs from the packed micro-kernel's, so those stay on
/// [`forward_w`]: the pre-packed forward is bit-identical to the unpacked one.
pub const PACKED_MIN_ROWS: usize = portable::SMALL_M + 1;

/// Whether [`forward_packed`] takes its packed path for `n` rows: `n ≥`
/// [`PACKED_MIN_ROWS`], and the model's GEMM is the portable backend (with
/// the `blas` feature the unpacked product runs on CBLAS, whose bits the
/// packed portable kernel would not reproduce).
#[inline]
pub const fn packed_applies(n: usize) -> bool {
    !cfg!(feature = "blas") && n >= PACKED_MIN_ROWS
}

/// Floats [`pack_weight`] writes for a weight `W[dout, din]`:
/// `din · ⌈dout/16⌉·16` (the panel layout of `B = Wᵀ`).
#[inline]
pub const fn packed_len(din: usize, dout: usize) -> usize {
    portable::packed_len(din, dout)
}

/// Packs `W[dout, din]` (row-major) as `B = Wᵀ` into the micro-kernel's
/// 16-column panels ([`portable::pack_b`]), for [`forward_packed`]. A copy:
/// every value keeps its bits.
///
/// # Panics
/// If `w.len() < dout·din` or `out.len() < packed_len(din, dout)`.
pub fn pack_weight(out: &mut [f32], w: &[f32], din: usize, dout: usize) {
    portable::pack_b(din, dout, w, 1, din, out);
}

/// E6 with an optional pre-packed copy of the weight: `y (+)= x·Wᵀ`
/// (`x: [n, din]`, `w: [dout, din]`, `y: [n, dout]`). With `packed` =
/// [`pack_weight`] of `w` and [`packed_applies`]`(n)`, the BLIS driver reads
/// the packed panels and packs nothing of `W`
/// ([`portable::gemm_prepacked_b`], which also prefetches the next panel:
/// the copy streams from memory); otherwise [`forward_w`]. Both give the
/// same bits: for `n ≥ 5` every route of the unpacked GEMM (`panel.rs`, the
/// BLIS driver, its transposed `Cᵀ = W·xᵀ` form) runs one FMA chain per
/// output in depth order over each `KC = 256` depth block, stores `1·acc`
/// (then `c + acc` for later blocks), exactly as the packed path does.
///
/// # Panics
/// As [`forward`]; also if `packed` is shorter than `packed_len(din, dout)`.
#[inline]
#[allow(clippy::too_many_arguments)] // reason: forward_w's signature plus the packed copy
pub fn forward_packed(
    y: &mut [f32],
    x: &[f32],
    w: Weight,
    packed: Option<&[f32]>,
    n: usize,
    din: usize,
    dout: usize,
    acc: Accum,
) {
    match packed {
        Some(pk) if packed_applies(n) => {
            portable::gemm_prepacked_b(n, dout, din, 1.0, x, din, 1, pk, acc.beta(), y, dout, 1)
        }
        _ => forward_w(y, x, w, n, din, dout, acc),
    }
}

/// [`forward_gemv_split`] on bf16 weights: the same fixed column blocks, each
/// `y[j0..j1] (+)= x·W[j0..j1]ᵀ` by [`bf16::gemv`] on the pool's threads
/// (bit-identical for every thread count).
fn forward_gemv_split_bf16(
    y: &mut [f32],
    x: &[f32],
    w: &[u16],
    din: usize,
    dout: usize,
    acc: Accum,
) {
    assert!(
        x.len() >= din,
        "linear: x has {} values, needs {din}",
        x.len()
    );
    assert!(
        w.len() >= dout * din,
        "linear: W has {} values, needs {}",
        w.len(),
        dout * din
    );
    let cols = dout.div_ceil(GEMV_CHUNKS).next_multiple_of(16);
    let mut blocks = y[..dout].chunks_mut(cols);
    let mut parts: [Option<&mut [f32]>; GEMV_CHUNKS] = core::array::from_fn(|_| blocks.next());
    crate::parallel::current_run(&mut parts, |j, part| {
        if let Some(yc) = part {
            let (j0, m) = (j * cols, yc.len());
            bf16::gemv(yc, &x[..din], &w[j0 * din..(j0 + m) * din], din, acc.beta());
        }
    });
}

/// E7 on a weight view — [`backward_input`] for [`Weight::F32`]; for
/// [`Weight::Bf16`], `dx (+)= dy·W` with `W` widened while packed
/// ([`gemm_bf16::gemm`] with `op(W) = W`). The input gradient that a
/// mixed-precision backward needs from bf16 weights.
///
/// # Panics
/// As [`forward`].
#[inline]
pub fn backward_input_w(
    dx: &mut [f32],
    dy: &[f32],
    w: Weight,
    n: usize,
    din: usize,
    dout: usize,
    acc: Accum,
) {
    match w {
        Weight::F32(w) => backward_input(dx, dy, w, n, din, dout, acc),
        Weight::Bf16(w) => gemm_bf16::gemm(
            n,
            din,
            dout,
            dy,
            dout,
            w,
            gemm_bf16::WOp::N,
            acc.beta(),
            dx,
            din,
        ),
    }
}

/// Output columns below which a decoding GEMV is not split.
pub const GEMV_SPLIT_MIN: usize = 128;
/// Fixed number of column blocks of a split decoding GEMV (independent of
/// the thread count, so the blocks, and the bits, are the same for every `T`).
pub const GEMV_CHUNKS: usize = 8;

/// E6 for one row (decoding) under an installed [`crate::Pool`]:
/// `y[1, dout] = x[1, din]·Wᵀ` as `GEMV_CHUNKS` GEMMs over fixed column blocks
/// `y[j0..j1] = x·W[j0..j1]ᵀ` (block width `⌈dout/8⌉` rounded up to 16), run
/// on the pool's threads. Each block's arithmetic depends only on its
/// boundaries, so the result is the same for any thread count.
fn forward_gemv_split(y: &mut [f32], x: &[f32], w: &[f32], din: usize, dout: usize, acc: Accum) {
    let cols = dout.div_ceil(GEMV_CHUNKS).next_multiple_of(16);
    let mut blocks = y[..dout].chunks_mut(cols);
    let mut parts: [Option<&mut [f32]>; GEMV_CHUNKS] = core::array::from_fn(|_| blocks.next());
    crate::parallel::current_run(&mut parts, |j, part| {
        if let Some(yc) = part {
            let (j0, m) = (j * cols, yc.len());
            let wj = &w[j0 * din..(j0 + m) * din];
            gemm(
                1,
                m,
                din,
                1.0,
                Mat::n(x, din),
                Mat::t(wj, din),
                acc.beta(),
                yc,
                m,
            );
        }
    });
}

/// E7 — `dx = dy·W` ([`Accum::Set`]) or `dx += dy·W` ([`Accum::Add`]);
/// `dy: [n, dout]`, `w: [dout, din]`, `dx: [n, din]`.
///
/// # Panics
/// As [`forward`].
#[inline]
pub fn backward_input(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    n: usize,
    din: usize,
    dout: usize,
    acc: Accum,
) {
    gemm(
        n,
        din,
        dout,
        1.0,
        Mat::n(dy, dout),
        Mat::n(w, din),
        acc.beta(),
        dx,
        din,
    );
}

/// E7 — `dW += dyᵀ·x` (always accumulates); `dy: [n, dout]`, `x: [n, din]`,
/// `dw: [dout, din]`.
///
/// # Panics
/// As [`forward`].
#[inline]
pub fn backward_weight(dw: &mut [f32], dy: &[f32], x: &[f32], n: usize, din: usize, dout: usize) {
    gemm(
        dout,
        din,
        n,
        1.0,
        Mat::t(dy, dout),
        Mat::n(x, din),
        1.0,
        dw,
        din,
    );
}
