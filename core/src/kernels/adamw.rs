//! E16's per-parameter AdamW pass, dispatched like the other elementwise
//! kernels ([`vectorized`]): the same scalar arithmetic in the same order on
//! every path (IEEE `mul`, `add`, `div`, `sqrt`; no contraction), so results
//! are bit-identical to the baseline build.

use super::{sqrt, vectorized};

/// The per-step scalars of one AdamW update (computed by `AdamW::update_scaled`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWStep {
    /// `1 − lr·wd`.
    pub decay: f32,
    /// Gradient multiplier (clipping coefficient); `1` skips the multiplication.
    pub grad_scale: f32,
    /// `1 − β1`.
    pub w1: f32,
    /// `β2`.
    pub beta2: f32,
    /// `1 − β2`.
    pub w2: f32,
    /// `√(1 − β2ᵗ)`.
    pub bc2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f32,
}

/// One AdamW pass over `params`, `grads`, `m`, `v` (equal lengths, checked by the caller).
#[inline(always)]
pub(crate) fn adamw_pass(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    s: AdamWStep,
) {
    vectorized(
        #[inline(always)]
        || adamw_body(params, grads, m, v, s),
    )
}

/// [`adamw_pass`]'s loop (instantiated for the baseline ISA and for AVX2+FMA).
#[inline(always)]
fn adamw_body(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let AdamWStep {
        decay,
        grad_scale,
        w1,
        beta2,
        w2,
        bc2_sqrt,
        eps,
        step_size,
    } = s;
    for (((w, &g), m), v) in params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *w *= decay;
        let g = if grad_scale == 1.0 { g } else { g * grad_scale };
        *m += w1 * (g - *m);
        *v = *v * beta2 + w2 * g * g;
        let denom = sqrt(*v) / bc2_sqrt + eps;
        *w -= step_size * (*m / denom);
    }
}
