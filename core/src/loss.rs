//! E14 / E15 — cross-entropy, and E13 — the MoE load-balancing aux loss.
//!
//! Cross-entropy (mean over the `m` positions whose target is not
//! [`IGNORE_INDEX`], stable log-sum-exp), as PyTorch's
//! `F.cross_entropy(z, y, ignore_index=-100)`:
//! `CE = (1/m) Σ_{r: y_r ≠ ignore} [ log Σ_j exp(z_rj) − z_r,y_r ]`,
//! gradient `dz_r = (softmax(z_r) − onehot(y_r)) / m`, and `dz_r = 0`,
//! `ce_row_r = 0` for an ignored row.
//!
//! Aux loss, exactly HF's `load_balancing_loss_func` without a mask: pool the
//! router probabilities of all `L` layers (`R = L·n` rows),
//! `P_e = (1/R) Σ_rows p_e`, `f_e = (1/R) · #{rows whose top-k contains e}`,
//! `aux = e · Σ_e f_e · P_e` (`= k` under uniform routing). `f` carries no
//! gradient, so `∂aux/∂p_{row,e} = e · f_e / R` for every row.

use crate::config::TokenId;
use crate::error::{Error, Result};
use crate::kernels::exp;

/// A target that contributes nothing to the CE (Hugging Face's
/// `ignore_index = -100`; `u32::MAX` here, as targets are [`TokenId`]s, and never
/// a token id since `vocab_size <= u32::MAX`). Only targets may hold it,
/// never input tokens. `moe grads` maps `-100` in `tokens.json` to it.
pub const IGNORE_INDEX: TokenId = TokenId::MAX;

/// E14 — `CE = (1/m) Σ_{r not ignored} [log Σ_j exp(z_rj) − z_r,target]` (returned, per row in
/// `ce_row: [n]`, 0 for ignored rows), and E15 — its gradient
/// `dlogits = (softmax(logits) − onehot) / m` (0 rows where ignored);
/// `m` = targets that are not [`IGNORE_INDEX`].
/// `logits`, `dlogits: [n, v]`, `targets: [n]`.
///
/// # Errors
/// [`Error::EmptyInput`] for `n = 0` or `v = 0`, and (`arg`
/// `"non-ignored targets"`) when every target is [`IGNORE_INDEX`];
/// [`Error::ShapeMismatch`] for a slice of the wrong length,
/// [`Error::TokenOutOfRange`] for a target `>= v` other than
/// [`IGNORE_INDEX`] (all checked before anything is written).
pub fn cross_entropy(
    dlogits: &mut [f32],
    ce_row: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    v: usize,
) -> Result<f32> {
    let n = targets.len();
    if n == 0 {
        return Err(Error::EmptyInput { arg: "targets" });
    }
    if v == 0 {
        return Err(Error::EmptyInput { arg: "v" });
    }
    for (arg, len, want) in [
        ("logits", logits.len(), n * v),
        ("dlogits", dlogits.len(), n * v),
        ("ce_row", ce_row.len(), n),
    ] {
        if len != want {
            return Err(Error::ShapeMismatch {
                arg,
                expected: want,
                actual: len,
            });
        }
    }
    if let Some(index) = targets
        .iter()
        .position(|&t| t != IGNORE_INDEX && t as usize >= v)
    {
        return Err(Error::TokenOutOfRange {
            arg: "targets",
            index,
            token: targets[index],
            vocab: v,
        });
    }
    if targets.iter().all(|&t| t == IGNORE_INDEX) {
        return Err(Error::EmptyInput {
            arg: "non-ignored targets",
        });
    }
    Ok(crate::kernels::vectorized(|| {
        ce_rows(dlogits, ce_row, logits, targets, v)
    }))
}

/// [`cross_entropy`]'s loop over checked rows (instantiated for the baseline
/// ISA and AVX2+FMA): the mean CE, `dlogits` and `ce_row` written.
#[inline(always)]
fn ce_rows(
    dlogits: &mut [f32],
    ce_row: &mut [f32],
    logits: &[f32],
    targets: &[u32],
    v: usize,
) -> f32 {
    // m = rows that count (the caller checked m > 0).
    let m = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let scale = 1.0 / m as f32;
    let mut total = 0.0f64;
    for (r, ((dz, z), &tgt)) in dlogits
        .chunks_exact_mut(v)
        .zip(logits.chunks_exact(v))
        .zip(targets)
        .enumerate()
    {
        // Row selection: an ignored row has no loss and no gradient.
        if tgt == IGNORE_INDEX {
            ce_row[r] = 0.0;
            dz.iter_mut().for_each(|d| *d = 0.0);
            continue;
        }
        let mut max = f32::NEG_INFINITY;
        for &x in z {
            max = if x > max { x } else { max };
        }
        let mut sum = 0.0f32;
        for (d, &x) in dz.iter_mut().zip(z) {
            let e = exp(x - max);
            *d = e;
            sum += e;
        }
        let lse = max + libm::logf(sum);
        let ce = lse - z[tgt as usize];
        ce_row[r] = ce;
        total += ce as f64;
        let inv = scale / sum;
        for d in dz.iter_mut() {
            *d *= inv;
        }
        dz[tgt as usize] -= scale;
    }
    (total / m as f64) as f32
}

/// E13 — pooled routing statistics for the aux loss: `f[e]` and `p[e]` are
/// accumulated from each layer's `counts: [e]` and `rprobs: [n, e]`.
///
/// # Panics
/// If `f` is empty (`e = 0`) while `rprobs` is not.
pub fn aux_accumulate(f: &mut [f32], p: &mut [f32], counts: &[u32], rprobs: &[f32]) {
    let e = f.len();
    for (fe, &cnt) in f.iter_mut().zip(counts) {
        *fe += cnt as f32;
    }
    for row in rprobs.chunks_exact(e) {
        for (pe, &x) in p.iter_mut().zip(row) {
            *pe += x;
        }
    }
}

/// E13 — finishes the aux loss from the pooled sums over `rows = L·n` router rows:
/// turns `f`, `p` into means and returns `aux = e · Σ f_e P_e`.
pub fn aux_finish(f: &mut [f32], p: &mut [f32], rows: usize) -> f32 {
    let inv = 1.0 / rows as f32;
    let mut s = 0.0f32;
    for (fe, pe) in f.iter_mut().zip(p.iter_mut()) {
        *fe *= inv;
        *pe *= inv;
        s += *fe * *pe;
    }
    f.len() as f32 * s
}

/// E31 (gradient of E13) — per-probability gradient of `α·aux` (`f` carries no
/// gradient): `coef[e] = α · e · f_e / rows`, written into `f: [e]`.
pub fn aux_grad_coef(f: &mut [f32], alpha: f32, rows: usize) {
    let e = f.len() as f32;
    for fe in f.iter_mut() {
        *fe = alpha * e * *fe / rows as f32;
    }
}
