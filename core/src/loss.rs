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

/// A target that contributes nothing to the CE (Hugging Face's
/// `ignore_index = -100`; `u32::MAX` here, as targets are [`TokenId`]s, and never
/// a token id since `vocab_size <= u32::MAX`). Only targets may hold it,
/// never input tokens. `moe grads` maps `-100` in `tokens.json` to it.
pub const IGNORE_INDEX: TokenId = TokenId::MAX;

/// `m`: the targets that count (not [`IGNORE_INDEX`]).
pub fn counted_targets(targets: &[TokenId]) -> usize {
    targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
}

/// Shapes (`logits` and, if given, `dlogits`: `[n, v]`; `ce_row: [n]`) and
/// target values (`< v` or [`IGNORE_INDEX`]); nothing is written.
fn check_ce(
    logits: usize,
    dlogits: Option<usize>,
    ce_row: usize,
    targets: &[TokenId],
    v: usize,
) -> Result<()> {
    let n = targets.len();
    if n == 0 {
        return Err(Error::EmptyInput { arg: "targets" });
    }
    if v == 0 {
        return Err(Error::EmptyInput { arg: "v" });
    }
    let dl = dlogits.map(|len| ("dlogits", len, n * v));
    for (arg, len, want) in [("logits", logits, n * v), ("ce_row", ce_row, n)]
        .into_iter()
        .chain(dl)
    {
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
    Ok(())
}

/// `m > 0`, else the all-ignored batch's typed error.
fn check_counted(m: usize) -> Result<()> {
    if m == 0 {
        return Err(Error::EmptyInput {
            arg: "non-ignored targets",
        });
    }
    Ok(())
}

/// E14 — `CE = (1/m) Σ_{r not ignored} [log Σ_j exp(z_rj) − z_r,target]` (returned, per row in
/// `ce_row: [n]`, 0 for ignored rows), and E15 — its gradient
/// `dlogits = (softmax(logits) − onehot) / m` (0 rows where ignored);
/// `m` = targets that are not [`IGNORE_INDEX`], exactly as PyTorch's
/// `F.cross_entropy(z, y, ignore_index=-100)`.
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
    targets: &[TokenId],
    v: usize,
) -> Result<f32> {
    check_ce(logits.len(), Some(dlogits.len()), ce_row.len(), targets, v)?;
    let m = counted_targets(targets);
    check_counted(m)?;
    let scale = 1.0 / m as f32;
    let total = crate::kernels::vectorized(
        #[inline(always)]
        || {
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
                // max; fused exp + 8-lane sum into dz; scale (kernels::rows).
                let ce = crate::kernels::rows::ce_row(dz, z, tgt as usize, scale);
                ce_row[r] = ce;
                total += ce as f64;
            }
            total
        },
    );
    Ok((total / m as f64) as f32)
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
    targets: &[TokenId],
    v: usize,
) -> Result<f32> {
    check_ce(logits.len(), None, ce_row.len(), targets, v)?;
    let m = counted_targets(targets);
    check_counted(m)?;
    let total = ce_rows_inplace(logits, ce_row, targets, v, m);
    Ok((total / m as f64) as f32)
}

/// One part (micro-batch) of a batch whose CE averages over `m_total`
/// counted targets: [`cross_entropy_inplace`]'s rows with the gradient scale
/// `1/m_total` (so each row's gradient is bit-identical to a single pass
/// over the whole batch), returning `Σ ce_row` (f64) of the part. A part may
/// have no counted target (then it writes zeros); `m_total > 0` is the
/// caller's check.
///
/// # Errors
/// As [`cross_entropy_inplace`] except the all-ignored case; `EmptyInput`
/// (`"non-ignored targets"`) for `m_total = 0`.
pub fn cross_entropy_inplace_part(
    logits: &mut [f32],
    ce_row: &mut [f32],
    targets: &[TokenId],
    v: usize,
    m_total: usize,
) -> Result<f64> {
    check_ce(logits.len(), None, ce_row.len(), targets, v)?;
    check_counted(m_total)?;
    Ok(ce_rows_inplace(logits, ce_row, targets, v, m_total))
}

/// The checked rows of the in-place CE with gradient scale `1/m`: returns
/// `Σ ce_row` in row order (f64).
fn ce_rows_inplace(
    logits: &mut [f32],
    ce_row: &mut [f32],
    targets: &[TokenId],
    v: usize,
    m: usize,
) -> f64 {
    let scale = 1.0 / m as f32;
    crate::kernels::vectorized(
        #[inline(always)]
        || {
            let mut total = 0.0f64;
            for (r, (z, &tgt)) in logits.chunks_exact_mut(v).zip(targets).enumerate() {
                if tgt == IGNORE_INDEX {
                    ce_row[r] = 0.0;
                    z.iter_mut().for_each(|d| *d = 0.0);
                    continue;
                }
                // max; fused exp + 8-lane sum in place; scale (kernels::rows).
                let ce = crate::kernels::rows::ce_row_inplace(z, tgt as usize, scale);
                ce_row[r] = ce;
                total += ce as f64;
            }
            total
        },
    )
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
