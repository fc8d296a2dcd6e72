//! E14 / E15 — cross-entropy, and E13 — the MoE load-balancing aux loss.
//!
//! Cross-entropy (mean over the `n = b·t` positions, stable log-sum-exp):
//! `CE = (1/n) Σ_r [ log Σ_j exp(z_rj) − z_r,target ]`,
//! gradient `dz_r = (softmax(z_r) − onehot(target_r)) / n`.
//!
//! Aux loss, exactly HF's `load_balancing_loss_func` without a mask: pool the
//! router probabilities of all `L` layers (`R = L·n` rows),
//! `P_e = (1/R) Σ_rows p_e`, `f_e = (1/R) · #{rows whose top-k contains e}`,
//! `aux = e · Σ_e f_e · P_e` (`= k` under uniform routing). `f` carries no
//! gradient, so `∂aux/∂p_{row,e} = e · f_e / R` for every row.

use crate::error::{Error, Result};

/// E14 — `CE = (1/n) Σ_r [log Σ_j exp(z_rj) − z_r,target]` (returned, per row in
/// `ce_row: [n]`), and E15 — its gradient `dlogits = (softmax(logits) − onehot) / n`.
/// `logits`, `dlogits: [n, v]`, `targets: [n]`.
///
/// # Errors
/// [`Error::EmptyInput`] for `n = 0` or `v = 0`, [`Error::ShapeMismatch`] for
/// a slice of the wrong length, [`Error::TokenOutOfRange`] for a target
/// `>= v` (all checked before anything is written).
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
    if let Some(index) = targets.iter().position(|&t| t as usize >= v) {
        return Err(Error::TokenOutOfRange {
            arg: "targets",
            index,
            token: targets[index],
            vocab: v,
        });
    }
    Ok(crate::kernels::vectorized(
        #[inline(always)]
        || ce_rows(dlogits, ce_row, logits, targets, v),
    ))
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
    let n = targets.len();
    let scale = 1.0 / n as f32;
    let mut total = 0.0f64;
    for (r, ((dz, z), &tgt)) in dlogits
        .chunks_exact_mut(v)
        .zip(logits.chunks_exact(v))
        .zip(targets)
        .enumerate()
    {
        // max; fused exp + 8-lane sum into dz; scale (kernels::rows::ce_row).
        let ce = crate::kernels::rows::ce_row(dz, z, tgt as usize, scale);
        ce_row[r] = ce;
        total += ce as f64;
    }
    (total / n as f64) as f32
}

/// E14 / E15 in place: like [`cross_entropy`], with `logits: [n, v]`
/// overwritten by `dlogits` (each row's target logit is read before its row
/// is overwritten). Same operations in the same order: the loss, `ce_row` and
/// the gradient are bit-identical to [`cross_entropy`]'s. The training
/// workspace has no separate `dlogits` buffer because of this.
///
/// # Errors
/// As [`cross_entropy`] (`logits` is the name for both shapes); nothing is
/// written on error.
pub fn cross_entropy_inplace(
    logits: &mut [f32],
    ce_row: &mut [f32],
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
    for (arg, len, want) in [("logits", logits.len(), n * v), ("ce_row", ce_row.len(), n)] {
        if len != want {
            return Err(Error::ShapeMismatch {
                arg,
                expected: want,
                actual: len,
            });
        }
    }
    if let Some(index) = targets.iter().position(|&t| t as usize >= v) {
        return Err(Error::TokenOutOfRange {
            arg: "targets",
            index,
            token: targets[index],
            vocab: v,
        });
    }
    Ok(crate::kernels::vectorized(
        #[inline(always)]
        || {
            let scale = 1.0 / n as f32;
            let mut total = 0.0f64;
            for (r, (z, &tgt)) in logits.chunks_exact_mut(v).zip(targets).enumerate() {
                // max; fused exp + 8-lane sum in place; scale (kernels::rows).
                let ce = crate::kernels::rows::ce_row_inplace(z, tgt as usize, scale);
                ce_row[r] = ce;
                total += ce as f64;
            }
            (total / n as f64) as f32
        },
    ))
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
