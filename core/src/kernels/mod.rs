//! Numeric kernels shared by the equation units: GEMM (E3), row softmax (E1)
//! and SiLU (E2). `unsafe` is allowed only in this module tree (BLAS FFI and
//! the `matrixmultiply` call), each block with a `// SAFETY:` comment.

pub mod matmul;
pub mod softmax;

/// `exp` in `f32` (libm's, so the crate stays `no_std`).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    libm::expf(x)
}

/// E2 — logistic sigmoid `σ(z) = 1 / (1 + e^(−z))`.
#[inline(always)]
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// E2 — SiLU, `silu(z) = z · σ(z)`.
#[inline(always)]
pub fn silu(z: f32) -> f32 {
    z * sigmoid(z)
}

/// E2 gradient — `d silu / dz = σ(z) · (1 + z · (1 − σ(z)))`.
#[inline(always)]
pub fn silu_grad(z: f32) -> f32 {
    let s = sigmoid(z);
    s * (1.0 + z * (1.0 - s))
}

/// Index of the first NaN/Inf in `x`, if any.
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    x.iter().position(|v| !v.is_finite())
}
