//! E33 — attention for training with memory linear in `t`: the forward saves
//! only each query row's softmax statistics, the backward recomputes that
//! row's probabilities (FlashAttention's idea, one row at a time).
//!
//! For each batch row, head and query `i`, over the visible keys `j ∈ keys(i)`
//! (causal, within the sliding window if any: `j0(i) ..= i`):
//! ```text
//! forward:   s_ij = s · q_i·k_j     m_i = max_j s_ij     u_i = 1 / Σ_j exp(s_ij − m_i)
//!            P_ij = exp(s_ij − m_i) · u_i               o_i = Σ_j P_ij v_j
//! saved:     m, u: [b, h, t]        (instead of P: [b, h, t, t])
//! backward:  P_ij recomputed from q_i, k_j, m_i, u_i (the same operations, so the same bits)
//!            dP_ij = do_i·v_j        dv_j += P_ij do_i
//!            dS_ij = P_ij (dP_ij − D_i),  D_i = Σ_j P_ij dP_ij  (= do_i·o_i)
//!            dq_i = s Σ_j dS_ij k_j   dk_j += s dS_ij q_i
//! ```
//! `D_i` is taken as the row sum `Σ_j P_ij dP_ij` (the row is at hand), which is
//! what [`super::backward`] computes from the saved `P`: the gradients are
//! bit-identical to it. A block-wise variant would use `D_i = do_i·o_i` instead.
//!
//! The visible keys of a query are one range, [`keys`]; a key-window bound
//! goes there and nowhere else.

use core::ops::Range;

use crate::config::Dims;
use crate::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernels::attn::Avx2;
use crate::kernels::{axpy_body, dot_body, exp, rows, softmax, vectorized};

/// The keys query `i` (position `i` of its sequence) attends to:
/// `j0(i) ..= i`, causal, with `j0(i) = max(0, i + 1 − W)` under a
/// `sliding_window = W` ([`Dims::first_key`]), else `0`.
#[inline]
pub fn keys(dm: &Dims, i: usize) -> Range<usize> {
    dm.first_key(i)..i + 1
}

/// E1 over one row `x`, exactly as [`softmax::forward_inplace`] (same
/// operations, same order), also returning the row max `m` and `u = 1/Σ exp(x − m)`.
/// The flag is `false` for a row that is not a distribution (NaN, `+∞`, all `−∞`).
#[inline(always)]
fn softmax_stats(x: &mut [f32]) -> (bool, f32, f32) {
    // The sweeps of `softmax::forward_inplace`, with its 8-lane kernels
    // (called from inside [`vectorized`], so no dispatch here).
    let (max, nan) = rows::max_nan(x);
    if nan {
        x.iter_mut().for_each(|v| *v = f32::NAN);
        return (false, f32::NAN, f32::NAN);
    }
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return (false, max, 0.0);
    }
    let sum = rows::exp_shift_sum_inplace(x, max);
    let inv = 1.0 / sum;
    rows::scale(x, inv);
    (max.is_finite(), max, inv)
}

/// `Err(ShapeMismatch)` unless `len >= need`.
fn need(arg: &'static str, len: usize, need: usize) -> Result<()> {
    if len < need {
        return Err(Error::ShapeMismatch {
            arg,
            expected: need,
            actual: len,
        });
    }
    Ok(())
}

/// E33 forward: `att_i = Σ_j P_ij v_j` from `qkv: [n, (h+2kv)·d]` (q, k after
/// RoPE), saving `row_max`, `row_inv: [b, h, t]` (flat `(b·h + head)·t + i`);
/// `row: [≥ t]` is scratch. Same arithmetic as [`super::forward`], so `att`
/// is bit-identical to it.
///
/// # Errors
/// [`Error::ShapeMismatch`] for a short slice or `dm.q ≠ (h+2kv)·d`,
/// [`Error::InvalidConfig`] if `kv` does not divide `h`, [`Error::NonFinite`]
/// (`"attention scores"`, index `(b·h + head)·t + i` of the first bad row) as
/// [`super::forward`].
pub fn forward(
    att: &mut [f32],
    row: &mut [f32],
    row_max: &mut [f32],
    row_inv: &mut [f32],
    qkv: &[f32],
    dm: &Dims,
) -> Result<()> {
    let (b, t, h, d, q) = (dm.b, dm.t, dm.h, dm.d, dm.q);
    super::check_heads(dm)?;
    let hd = h * d;
    need("qkv", qkv.len(), b * t * q)?;
    need("att", att.len(), b * t * hd)?;
    need("row", row.len(), t)?;
    need("row_max", row_max.len(), b * h * t)?;
    need("row_inv", row_inv.len(), b * h * t)?;
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = Avx2::new() {
        return super::scores_status(k.run(
            #[inline(always)]
            || forward_body_avx2(k, att, row, row_max, row_inv, qkv, dm),
        ));
    }
    super::scores_status(vectorized(
        #[inline(always)]
        || forward_body(att, row, row_max, row_inv, qkv, dm),
    ))
}

/// [`forward_body`] on the AVX2 row kernels ([`Avx2`]: the same operations
/// in the same order, so the same bits); returns the first non-finite row.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn forward_body_avx2(
    k: Avx2,
    att: &mut [f32],
    row: &mut [f32],
    row_max: &mut [f32],
    row_inv: &mut [f32],
    qkv: &[f32],
    dm: &Dims,
) -> Option<usize> {
    let (b, t, h, kv, d, q) = (dm.b, dm.t, dm.h, dm.kv, dm.d, dm.q);
    let hd = h * d;
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let mut bad: Option<usize> = None;
    for bi in 0..b {
        let rows = bi * t;
        for hh in 0..h {
            let g = hh / group;
            let (qo, ko, vo) = (hh * d, hd + g * d, hd + kv * d + g * d);
            for i in 0..t {
                let ks = keys(dm, i);
                let qi = &qkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                let first = (rows + ks.start) * q;
                let prow = &mut row[ks];
                let (kj, vj) = (&qkv[first + ko..], &qkv[first + vo..]);
                let oi = &mut att[(rows + i) * hd + qo..(rows + i) * hd + qo + d];
                let at = (bi * h + hh) * t + i;
                let (m, u) = match k.row_small(oi, None, qi, kj, vj, q, prow.len(), scale) {
                    Some(mu) => mu,
                    None => {
                        k.scores(prow, qi, kj, q, scale);
                        let (ok, m, u) = k.softmax(prow);
                        if !ok && bad.is_none() {
                            bad = Some(at);
                        }
                        k.pv(oi, prow, vj, q);
                        (m, u)
                    }
                };
                row_max[at] = m;
                row_inv[at] = u;
            }
        }
    }
    bad
}

/// [`forward`]'s loops on checked slices, inside one [`vectorized`] instance
/// (no call per key); returns the first non-finite row.
#[inline(always)]
fn forward_body(
    att: &mut [f32],
    row: &mut [f32],
    row_max: &mut [f32],
    row_inv: &mut [f32],
    qkv: &[f32],
    dm: &Dims,
) -> Option<usize> {
    let (b, t, h, kv, d, q) = (dm.b, dm.t, dm.h, dm.kv, dm.d, dm.q);
    let hd = h * d;
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let mut bad: Option<usize> = None;
    for bi in 0..b {
        let rows = bi * t;
        for hh in 0..h {
            let g = hh / group;
            let (qo, ko, vo) = (hh * d, hd + g * d, hd + kv * d + g * d);
            for i in 0..t {
                let ks = keys(dm, i);
                let qi = &qkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                let prow = &mut row[ks.clone()];
                for (p, j) in prow.iter_mut().zip(ks.clone()) {
                    let kj = &qkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    *p = dot_body(qi, kj) * scale;
                }
                let (ok, m, u) = softmax_stats(prow);
                let at = (bi * h + hh) * t + i;
                if !ok && bad.is_none() {
                    bad = Some(at);
                }
                row_max[at] = m;
                row_inv[at] = u;
                let oi = &mut att[(rows + i) * hd + qo..(rows + i) * hd + qo + d];
                oi.iter_mut().for_each(|x| *x = 0.0);
                for (&p, j) in prow.iter().zip(ks) {
                    let vj = &qkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    axpy_body(oi, p, vj);
                }
            }
        }
    }
    bad
}

/// E33 backward: recomputes each row `P_i` from `qkv`, `row_max`, `row_inv`
/// (as saved by [`forward`]) into `prow: [≥ t]`, then exactly the arithmetic
/// of [`super::backward`] with `dprow: [≥ t]` as the `dP` row.
/// Overwrites `dqkv: [n, (h+2kv)·d]` (dq, dk, dv, before RoPE backward);
/// `datt: [n, h·d]`.
///
/// # Panics
/// If a slice is shorter than stated or `dm.kv` does not divide `dm.h` (the
/// buffers come from the plan the forward checked).
#[allow(clippy::too_many_arguments)] // reason: llm.c order — d-input, two scratch rows, dout, the two saved statistics, the saved input, dims
pub fn backward(
    dqkv: &mut [f32],
    prow: &mut [f32],
    dprow: &mut [f32],
    datt: &[f32],
    row_max: &[f32],
    row_inv: &[f32],
    qkv: &[f32],
    dm: &Dims,
) {
    vectorized(
        #[inline(always)]
        || backward_body(dqkv, prow, dprow, datt, row_max, row_inv, qkv, dm),
    )
}

/// [`backward`]'s loops, inside one [`vectorized`] instance (no call per key).
#[allow(clippy::too_many_arguments)] // reason: [`backward`]'s arguments, passed through
#[inline(always)]
fn backward_body(
    dqkv: &mut [f32],
    prow: &mut [f32],
    dprow: &mut [f32],
    datt: &[f32],
    row_max: &[f32],
    row_inv: &[f32],
    qkv: &[f32],
    dm: &Dims,
) {
    let (t, h, kv, d, q) = (dm.t, dm.h, dm.kv, dm.d, dm.q);
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let hd = h * d;
    dqkv.iter_mut().for_each(|x| *x = 0.0);
    for bi in 0..dm.b {
        let rows = bi * t;
        for hh in 0..h {
            let g = hh / group;
            let (qo, ko, vo) = (hh * d, hd + g * d, hd + kv * d + g * d);
            for i in 0..t {
                let ks = keys(dm, i);
                let (lo, hi) = (ks.start, ks.end);
                let at = (bi * h + hh) * t + i;
                let qi = &qkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                // forward: P_ij = exp(s·q_i·k_j − m_i) · u_i
                let p = &mut prow[lo..hi];
                for (pj, j) in p.iter_mut().zip(ks.clone()) {
                    let kj = &qkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    *pj = dot_body(qi, kj) * scale;
                }
                let (m, u) = (row_max[at], row_inv[at]);
                for pj in p.iter_mut() {
                    *pj = exp(*pj - m);
                }
                rows::scale(p, u);
                let p: &[f32] = p;
                let doi = &datt[(rows + i) * hd + qo..(rows + i) * hd + qo + d];
                let dp = &mut dprow[lo..hi];
                // forward: o_i = Σ_j P_ij v_j
                for ((dpj, &pj), j) in dp.iter_mut().zip(p).zip(ks.clone()) {
                    let vj = &qkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    *dpj = dot_body(doi, vj);
                    let dvj = &mut dqkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    axpy_body(dvj, pj, doi);
                }
                // forward: P_i = softmax(S_i)
                softmax::backward_inplace_row(dp, p);
                // forward: S_ij = s · q_i·k_j
                let dqi = &mut dqkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                for (&dsj, j) in dp.iter().zip(ks.clone()) {
                    let kj = &qkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    axpy_body(dqi, dsj * scale, kj);
                }
                for (&dsj, j) in dp.iter().zip(ks) {
                    let dkj = &mut dqkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    axpy_body(dkj, dsj * scale, qi);
                }
            }
        }
    }
}
