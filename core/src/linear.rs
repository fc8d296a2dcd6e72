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
