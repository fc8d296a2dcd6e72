//! E16's per-parameter AdamW pass, dispatched like the other elementwise
//! kernels ([`vectorized`]): the same scalar arithmetic in the same order on
//! every path (IEEE `mul`, `add`, `div`, `sqrt`; no contraction), so results
//! are bit-identical to the baseline build.
//!
//! [`adamw_pass_zeroing`] is the same pass that also writes `g ← 0` right
//! behind each read, so the gradient buffer is ready for the next step's
//! accumulation without a separate `memset` sweep; it is the trainer's pass
//! (`Trainer::train_step`), the contract's single zeroing point (parameters
//! bit-identical to [`adamw_pass`] then zeroing: tested). It also checks its
//! output per 64-element block while the block is in L1 and returns whether
//! a parameter became NaN/±∞, so the caller needs no second sweep.

use super::{sqrt, vectorized};

/// The per-step scalars of one AdamW update (computed by `AdamW::update_scaled`).
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
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

/// One AdamW pass over `params`, `grads`, `m`, `v` (equal lengths, checked by
/// the caller; with unequal lengths only the common prefix is updated).
#[inline(always)]
pub fn adamw_pass(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    vectorized(
        #[inline(always)]
        || adamw_body(params, grads, m, v, s),
    )
}

/// [`adamw_pass`] that also zeroes each gradient after reading it:
/// `params`, `m`, `v` get exactly [`adamw_pass`]'s bits and `grads` is all
/// zeros afterwards (the next step's accumulation starts from it). Returns
/// whether an updated parameter is NaN/±∞ (tested per block while it is in
/// L1, so the caller needs no second sweep to check the result; locate it
/// with [`super::first_non_finite`] on the error path).
#[inline(always)]
pub fn adamw_pass_zeroing(
    params: &mut [f32],
    grads: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    s: AdamWStep,
) -> bool {
    vectorized(
        #[inline(always)]
        || {
            let n = params.len().min(grads.len()).min(m.len()).min(v.len());
            // One sweep: read g, update (w, m, v), then write g ← 0 in blocks of
            // 64 (the block stays in L1 between its read and its zero write).
            const B: usize = 64;
            let (params, grads, m, v) =
                (&mut params[..n], &mut grads[..n], &mut m[..n], &mut v[..n]);
            let mut bad = false;
            for (((pw, pg), pm), pv) in params
                .chunks_mut(B)
                .zip(grads.chunks_mut(B))
                .zip(m.chunks_mut(B))
                .zip(v.chunks_mut(B))
            {
                adamw_body_zeroing(pw, pg, pm, pv, s);
                bad |= any_non_finite(pw);
            }
            bad
        },
    )
}

/// Whether `x` holds a NaN/±∞ (branch-free, vectorises).
#[inline(always)]
fn any_non_finite(x: &[f32]) -> bool {
    x.iter().fold(false, |acc, w| acc | !w.is_finite())
}

/// [`adamw_pass_zeroing`] that also writes the refreshed bf16 copy of every
/// updated parameter, `copy[i] ← round_bf16(w[i])` (round to nearest even,
/// [`super::bf16::round`]), behind the update of each 64-element block — the
/// mixed-precision trainer's single sweep over the parameters: read w, g, m,
/// v; write w, m, v, g = 0 and the 2-byte copy. `params`, `m`, `v` get exactly
/// [`adamw_pass`]'s bits; `copy` equals `round_slice` of the updated `params`.
/// Returns whether an updated parameter or its copy is NaN/±∞ (a finite `w`
/// beyond bf16's rounding edge rounds to ±∞), as [`adamw_pass_zeroing`].
#[inline(always)]
pub fn adamw_pass_zeroing_bf16(
    params: &mut [f32],
    grads: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    copy: &mut [u16],
    s: AdamWStep,
) -> bool {
    vectorized(
        #[inline(always)]
        || {
            let n = params
                .len()
                .min(grads.len())
                .min(m.len())
                .min(v.len())
                .min(copy.len());
            const B: usize = 64;
            let mut bad = false;
            let (params, grads, m, v, copy) = (
                &mut params[..n],
                &mut grads[..n],
                &mut m[..n],
                &mut v[..n],
                &mut copy[..n],
            );
            for ((((pw, pg), pm), pv), pc) in params
                .chunks_mut(B)
                .zip(grads.chunks_mut(B))
                .zip(m.chunks_mut(B))
                .zip(v.chunks_mut(B))
                .zip(copy.chunks_mut(B))
            {
                adamw_body_zeroing(pw, pg, pm, pv, s);
                for (c, &w) in pc.iter_mut().zip(pw.iter()) {
                    *c = super::bf16::round(w);
                }
                // bf16 NaN/±∞: exponent bits all ones (covers a NaN `w` too).
                bad |= pc
                    .iter()
                    .fold(false, |acc, &c| acc | (c & 0x7F80 == 0x7F80));
            }
            bad
        },
    )
}

/// [`adamw_body`] that writes `g ← 0` right behind each read, in the same
/// loop (a separate `fill` per block compiles to a `memset` call per 64
/// floats); the update's arithmetic is [`adamw_body`]'s.
#[inline(always)]
fn adamw_body_zeroing(
    params: &mut [f32],
    grads: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    s: AdamWStep,
) {
    for (((w, g), m), v) in params
        .iter_mut()
        .zip(grads.iter_mut())
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let gi = *g;
        *g = 0.0;
        update_one(w, gi, m, v, s);
    }
}

/// E16 for one parameter: `w ← w·(1 − lr·wd) − step_size · m̂/(√v̂ + eps)`
/// with the moments updated from `g` (scaled by the clipping coefficient).
#[inline(always)]
fn update_one(w: &mut f32, g: f32, m: &mut f32, v: &mut f32, s: AdamWStep) {
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
    *w *= decay;
    let g = if grad_scale == 1.0 { g } else { g * grad_scale };
    *m += w1 * (g - *m);
    *v = *v * beta2 + w2 * g * g;
    let denom = sqrt(*v) / bc2_sqrt + eps;
    *w -= step_size * (*m / denom);
}

/// [`adamw_pass`]'s loop (instantiated for the baseline ISA and for AVX2+FMA).
#[inline(always)]
fn adamw_body(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    for (((w, &g), m), v) in params
        .iter_mut()
        .zip(grads)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        update_one(w, g, m, v, s);
    }
}
