//! E5 — RMSNorm: `y = x / sqrt(mean(x²) + eps) ⊙ w`, per row of `x: [n, c]`.
//!
//! Saves `rstd = 1/sqrt(mean(x²) + eps)` per row for backward. With
//! `x̂ = x·rstd` and `g = dy ⊙ w`:
//! `dw += Σ_rows dy ⊙ x̂`, `dx += rstd · (g − x̂ · mean(g ⊙ x̂))`.

use crate::kernels::rows;

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
    crate::kernels::vectorized(
        #[inline(always)]
        || forward_rows(y, rstd, x, w, eps, c),
    );
}

/// [`forward`]'s loop (instantiated for the baseline ISA and for AVX2+FMA).
#[inline(always)]
fn forward_rows(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32, c: usize) {
    // Three sweeps so that no row waits on another's divide/sqrt latency:
    // Σ x² per row (8 fixed lanes; a sequential sum would keep it scalar),
    // then rstd = 1/√(Σx²/c + eps) for 8 rows at a time, then y = w ⊙ (x·rstd).
    let n = (x.len() / c).min(y.len() / c).min(rstd.len());
    let rstd = &mut rstd[..n];
    rows::sum_sq_rows(rstd, x, c);
    let cf = c as f32;
    for rs in rstd.iter_mut() {
        *rs = 1.0 / crate::kernels::sqrt(*rs / cf + eps);
    }
    for ((yr, xr), &r) in y
        .chunks_exact_mut(c)
        .zip(x.chunks_exact(c))
        .zip(rstd.iter())
    {
        // Re-sliced to `c` so that the bounds are provably equal (the loop
        // then vectorises without checks).
        let (yr, xr, w) = (&mut yr[..c], &xr[..c], &w[..c]);
        for i in 0..c {
            yr[i] = w[i] * (xr[i] * r);
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
    crate::kernels::vectorized(
        #[inline(always)]
        || backward_rows(dx, dw, dy, x, rstd, w, c),
    );
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
        // (all re-sliced to `c`: provably equal bounds, so the loops vectorise)
        let (dxr, dyr, xr, w, dw) = (&mut dxr[..c], &dyr[..c], &xr[..c], &w[..c], &mut dw[..c]);
        // dw += dy ⊙ x̂ (elementwise); Σ (dy ⊙ w) ⊙ x̂ in 8 fixed lanes.
        for i in 0..c {
            dw[i] += dyr[i] * (xr[i] * r);
        }
        let mut acc = [0.0f32; rows::LANES];
        let (dyc, wc, xc) = (
            dyr.chunks_exact(rows::LANES),
            w.chunks_exact(rows::LANES),
            xr.chunks_exact(rows::LANES),
        );
        let tail = dyc.remainder().len();
        for ((a, b), xx) in dyc.zip(wc).zip(xc) {
            for l in 0..rows::LANES {
                acc[l] += a[l] * b[l] * (xx[l] * r);
            }
        }
        for l in 0..tail {
            let i = c - tail + l;
            acc[l] += dyr[i] * w[i] * (xr[i] * r);
        }
        let dot = rows::fold(acc);
        let mean = dot / c as f32;
        for i in 0..c {
            let xh = xr[i] * r;
            dxr[i] += r * (dyr[i] * w[i] - xh * mean);
        }
    }
}
