//! E6 / E7 — linear layer without bias, PyTorch convention `W: [out, in]`.
//!
//! Forward `y = x·Wᵀ` (`x: [n, in]`, `y: [n, out]`).
//! Backward (two GEMMs, both accumulating): `dx += dy·W`, `dW += dyᵀ·x`.

use crate::kernels::matmul::{gemm, Mat};

/// E6 — `y = x·Wᵀ` (`beta = 0`) or `y += x·Wᵀ` (`beta = 1`);
/// `x: [n, din]`, `w: [dout, din]`, `y: [n, dout]`.
#[inline]
pub fn forward(y: &mut [f32], x: &[f32], w: &[f32], n: usize, din: usize, dout: usize, beta: f32) {
    gemm(
        n,
        dout,
        din,
        1.0,
        Mat::n(x, din),
        Mat::t(w, din),
        beta,
        y,
        dout,
    );
}

/// E7 — `dx (+)= dy·W` with `beta` 0 (overwrite) or 1 (accumulate);
/// `dy: [n, dout]`, `w: [dout, din]`, `dx: [n, din]`.
#[inline]
pub fn backward_input(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    n: usize,
    din: usize,
    dout: usize,
    beta: f32,
) {
    gemm(
        n,
        din,
        dout,
        1.0,
        Mat::n(dy, dout),
        Mat::n(w, din),
        beta,
        dx,
        din,
    );
}

/// E7 — `dW += dyᵀ·x` (always accumulates); `dy: [n, dout]`, `x: [n, din]`,
/// `dw: [dout, din]`.
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
