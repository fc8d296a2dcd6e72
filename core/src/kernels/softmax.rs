//! E1 — softmax over one row, computed stably:
//! `p_i = exp(x_i − max x) / Σ_j exp(x_j − max x)`.
//!
//! Gradient: with `g = dL/dp`, `dL/dx_i = p_i · (g_i − Σ_j p_j g_j)`.

use super::{dot, rows};

/// E1 — in-place softmax of one row `x: [len]`:
/// `p_i = exp(x_i − max x) / Σ_j exp(x_j − max x)`.
///
/// Returns `true` when the output is a probability distribution (the row had
/// a finite maximum and no NaN), `false` otherwise:
/// * an all-`−∞` row (fully masked) becomes all zeros rather than NaN;
/// * a row holding any NaN is **never** treated as masked, even when every
///   entry is NaN (NaN compares false, so the running max alone would stay at
///   `−∞`): its NaN propagates into the output;
/// * a row holding `+∞` gives NaN (`exp(∞ − ∞)`).
///
/// Callers that never mask (attention scores, router logits) treat `false`
/// as [`crate::Error::NonFinite`]. The status costs one OR per element in the
/// max pass (branch-free, vectorises) and no extra pass.
#[inline]
pub fn forward_inplace(x: &mut [f32]) -> bool {
    super::vectorized(
        #[inline(always)]
        || forward_row(x),
    )
}

/// [`forward_inplace`]'s body (instantiated for the baseline ISA and AVX2+FMA;
/// callers already inside [`super::vectorized`] call it directly).
#[inline(always)]
pub(crate) fn forward_row(x: &mut [f32]) -> bool {
    // Sweep 1: max and the NaN flag, 8 lanes.
    let (max, nan) = rows::max_nan(x);
    if nan {
        // NaN is not a mask: poison the whole row so that no caller can
        // mistake it for a distribution.
        x.iter_mut().for_each(|v| *v = f32::NAN);
        return false;
    }
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return false;
    }
    // Sweep 2: x ← exp(x − max) with an 8-lane sum; sweep 3: scale by 1/Σ.
    let sum = rows::exp_shift_sum_inplace(x, max);
    rows::scale(x, 1.0 / sum);
    max.is_finite()
}

/// E22 (backward of E1) — `dx = p ⊙ (g − ⟨p, g⟩)` for one row (`dx`, `p`,
/// `g = dL/dp`: `[len]`); writes (not accumulates) `dx`.
/// `dx` may alias neither `p` nor `g` (use [`backward_inplace`] for that).
#[inline]
pub fn backward(dx: &mut [f32], p: &[f32], g: &[f32]) {
    debug_assert!(dx.len() == p.len() && p.len() == g.len());
    super::vectorized(
        #[inline(always)]
        || {
            let pg = dot(p, g);
            for ((d, &pi), &gi) in dx.iter_mut().zip(p).zip(g) {
                *d = pi * (gi - pg);
            }
        },
    )
}

/// E22 — like [`backward`] (`g ← p ⊙ (g − ⟨p, g⟩)`) with `g: [len]` overwritten by `dx`.
#[inline]
pub fn backward_inplace(g: &mut [f32], p: &[f32]) {
    super::vectorized(
        #[inline(always)]
        || backward_inplace_row(g, p),
    )
}

/// [`backward_inplace`]'s body (for callers already inside [`super::vectorized`]).
#[inline(always)]
pub(crate) fn backward_inplace_row(g: &mut [f32], p: &[f32]) {
    debug_assert!(g.len() == p.len());
    let pg = super::dot_body(p, g);
    for (gi, &pi) in g.iter_mut().zip(p) {
        *gi = pi * (*gi - pg);
    }
}
