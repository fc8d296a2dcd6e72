//! E6 / E7 — linear layer without bias, PyTorch convention `W: [out, in]`.
//!
//! Forward `y = x·Wᵀ` (`x: [n, in]`, `y: [n, out]`).
//! Backward (two GEMMs): `dx (+)= dy·W`, `dW += dyᵀ·x` (always accumulates).

use crate::kernels::gemm::{gemm, Mat};

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
