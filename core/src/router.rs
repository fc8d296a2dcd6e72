//! E12 — router: `p = softmax(x·W_gateᵀ)` over all `e` experts, top-k by
//! probability (ties: lower expert index first), renormalised
//! `wⱼ = pⱼ / Σ_{i∈topk} pᵢ`.
//!
//! Backward, given `dw` (gradient of the renormalised weights) and the aux-loss
//! term `a_e = ∂(α·aux)/∂p_e` (same for every row, see `loss::aux_grad_coef`):
//! ```text
//! dp_m = a_m + [m ∈ topk] · (dw_m − Σ_j dw_j w_j) / S        S = Σ_topk p
//! dz   = p ⊙ (dp − ⟨p, dp⟩)                                (softmax backward, E1)
//! dx  += dz·W_gate      dW_gate += dzᵀ·x
//! ```

use crate::config::Dims;
use crate::kernels::softmax;
use crate::linear::{self, Accum, Weight};

/// E12 forward: `p = softmax(x·W_gateᵀ)`, top-k of `p`, `w_j = p_j / Σ_topk p`.
/// For `n` rows: `rprobs: [n, e]` (saved), `topk_idx`, `topk_w: [n, k]`
/// (saved), `x: [n, c]`, `wg: [e, c]`. Uses `n, c, e, k` of `dm`.
/// A row of non-finite logits leaves NaN in its weights (softmax never
/// treats NaN as masked), which the model reports as [`crate::Error::NonFinite`].
///
/// # Panics
/// If a slice is shorter than its shape, `e = 0`, `k = 0` or `k > e` (the
/// model passes buffers from its own plan and `k ≤ e` from a validated config).
pub fn forward(
    rprobs: &mut [f32],
    topk_idx: &mut [u32],
    topk_w: &mut [f32],
    x: &[f32],
    wg: &[f32],
    dm: &Dims,
) {
    forward_w(rprobs, topk_idx, topk_w, x, Weight::F32(wg), dm)
}

/// E12 on a weight view ([`forward`] with `W_gate` in `f32` or bf16).
pub fn forward_w(
    rprobs: &mut [f32],
    topk_idx: &mut [u32],
    topk_w: &mut [f32],
    x: &[f32],
    wg: Weight,
    dm: &Dims,
) {
    let (n, c, e, k) = (dm.n, dm.c, dm.e, dm.k);
    linear::forward_w(rprobs, x, wg, n, c, e, Accum::Set);
    for ((p, idx), w) in rprobs
        .chunks_exact_mut(e)
        .zip(topk_idx.chunks_exact_mut(k))
        .zip(topk_w.chunks_exact_mut(k))
    {
        softmax::forward_inplace(p);
        select_topk(idx, w, p);
        let sum: f32 = w.iter().sum();
        let inv = 1.0 / sum;
        for x in w.iter_mut() {
            *x *= inv;
        }
    }
}

/// E12 top-k — writes the `idx.len()` largest entries of `p: [e]` (descending; ties to the
/// lower index) and their values. NaNs are never preferred, but indices stay
/// distinct even then.
///
/// # Panics
/// If `idx.len() > p.len()` (`k > e`: there are not `k` distinct experts) or
/// `val.len() != idx.len()`. A per-row kernel: its caller
/// ([`forward`]) takes `k ≤ e` from a validated [`crate::Config`], so the
/// check is an `assert!` (two compares per row) rather than a `Result`.
pub fn select_topk(idx: &mut [u32], val: &mut [f32], p: &[f32]) {
    assert!(
        idx.len() <= p.len(),
        "select_topk: k = {} > e = {}",
        idx.len(),
        p.len()
    );
    assert_eq!(val.len(), idx.len(), "select_topk: val.len() != k");
    // k ≤ e ≤ a few dozen: a selection pass per choice beats sorting.
    for kk in 0..idx.len() {
        let mut best = usize::MAX;
        for (j, &pj) in p.iter().enumerate() {
            if idx[..kk].contains(&(j as u32)) {
                continue;
            }
            if best == usize::MAX || pj > p[best] {
                best = j;
            }
        }
        idx[kk] = best as u32;
        val[kk] = p[best];
    }
}

/// E30 (backward of E12, with the aux term of E31):
/// `dp_m = a_m + [m ∈ topk]·(dw_m − Σ_j dw_j w_j)/S`, `dz = p ⊙ (dp − ⟨p, dp⟩)`,
/// `dx += dz·W_gate`, `dW_gate += dzᵀ·x`.
/// For `n` rows. Accumulates into `dx: [n, c]` and `dwg: [e, c]`;
/// uses `dp: [n, e]` as scratch; `aux: [e]` is the aux-loss gradient per
/// probability (zeros when `α = 0`). Uses `n, c, e, k` of `dm`.
///
/// # Panics
/// If a slice is shorter than its shape above.
#[allow(clippy::too_many_arguments)] // reason: llm.c order — d-inputs, d-weights, scratch, dout, the three saved forward outputs, aux coefficients, input, weight, dims; each a different slice
pub fn backward(
    dx: &mut [f32],
    dwg: &mut [f32],
    dp: &mut [f32],
    dtopk_w: &[f32],
    rprobs: &[f32],
    topk_idx: &[u32],
    topk_w: &[f32],
    aux: &[f32],
    x: &[f32],
    wg: Weight,
    dm: &Dims,
) {
    let (n, c, e, k) = (dm.n, dm.c, dm.e, dm.k);
    for r in 0..n {
        let p = &rprobs[r * e..(r + 1) * e];
        let idx = &topk_idx[r * k..(r + 1) * k];
        let w = &topk_w[r * k..(r + 1) * k];
        let dw = &dtopk_w[r * k..(r + 1) * k];
        let g = &mut dp[r * e..(r + 1) * e];
        g.copy_from_slice(aux);
        // forward: w_j = p_j / S
        let s: f32 = idx.iter().map(|&j| p[j as usize]).sum();
        let dot: f32 = dw.iter().zip(w).map(|(a, b)| a * b).sum();
        for (&j, &dwj) in idx.iter().zip(dw) {
            g[j as usize] += (dwj - dot) / s;
        }
        // forward: p = softmax(z)
        softmax::backward_inplace(g, p);
    }
    // forward: z = x·W_gateᵀ
    linear::backward_input_w(dx, dp, wg, n, c, e, Accum::Add);
    linear::backward_weight(dwg, dp, x, n, c, e);
}
