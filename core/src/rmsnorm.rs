//! E5 — RMSNorm: `y = x / sqrt(mean(x²) + eps) ⊙ w`, per row of `x: [n, c]`.
//!
//! Saves `rstd = 1/sqrt(mean(x²) + eps)` per row for backward. With
//! `x̂ = x·rstd` and `g = dy ⊙ w`:
//! `dw += Σ_rows dy ⊙ x̂`, `dx += rstd · (g − x̂ · mean(g ⊙ x̂))`.

/// E5 forward: `y = x · rstd ⊙ w`, `rstd = 1/sqrt(mean(x²) + eps)` per row.
/// `y: [n, c]`, `rstd: [n]` (saved), `x: [n, c]`, `w: [c]`.
/// Rows are zipped: with slices of inconsistent lengths only the common rows
/// are written (checked by `debug_assert!` in debug builds).
///
/// # Panics
/// If `w` is empty (`c = 0`) while `x` is not.
pub fn forward(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    debug_assert!(y.len() == x.len() && x.len() == rstd.len() * c);
    crate::kernels::vectorized(|| forward_rows(y, rstd, x, w, eps, c));
}

/// [`forward`]'s loop (instantiated for the baseline ISA and for AVX2+FMA).
#[inline(always)]
fn forward_rows(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32, c: usize) {
    for ((yr, xr), rs) in y
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(rstd.iter_mut())
    {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let r = 1.0 / libm::sqrtf(ss / c as f32 + eps);
        *rs = r;
        for ((yi, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
            *yi = wi * (xi * r);
        }
    }
}

/// E25 (backward of E5): with `x̂ = x·rstd`, `g = dy ⊙ w`,
/// `dw += Σ_rows dy ⊙ x̂`, `dx += rstd · (g − x̂ · mean(g ⊙ x̂))`.
/// Accumulates into `dx: [n, c]` and `dw: [c]`.
/// `dy: [n, c]`, saved `x: [n, c]`, `rstd: [n]`, weights `w: [c]`.
///
/// # Panics
/// If `w` is empty (`c = 0`) while `x` is not, or `dw` is shorter than `c`.
pub fn backward(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], rstd: &[f32], w: &[f32]) {
    let c = w.len();
    debug_assert!(dx.len() == x.len() && dy.len() == x.len() && dw.len() == c);
    crate::kernels::vectorized(|| backward_rows(dx, dw, dy, x, rstd, w, c));
}

/// [`backward`]'s loop (instantiated for the baseline ISA and for AVX2+FMA).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // reason: backward's arguments plus the row width
fn backward_rows(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    w: &[f32],
    c: usize,
) {
    for (((dxr, dyr), xr), &r) in dx
        .chunks_exact_mut(c)
        .zip(dy.chunks_exact(c))
        .zip(x.chunks_exact(c))
        .zip(rstd)
    {
        // forward: y = w ⊙ x̂, x̂ = x·r
        let mut dot = 0.0f32; // Σ (dy ⊙ w) ⊙ x̂
        for i in 0..c {
            let xh = xr[i] * r;
            dw[i] += dyr[i] * xh;
            dot += dyr[i] * w[i] * xh;
        }
        let mean = dot / c as f32;
        for i in 0..c {
            let xh = xr[i] * r;
            dxr[i] += r * (dyr[i] * w[i] - xh * mean);
        }
    }
}
