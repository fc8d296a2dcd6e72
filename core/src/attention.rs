//! E10 — causal multi-query / grouped-query self-attention (`MQAttention`).
//!
//! Input is the fused projection `qkv: [n, (h+2kv)·d]` (row = `[q₀…q_{h−1} | k₀…k_{kv−1} | v₀…v_{kv−1}]`,
//! q and k already rotated by RoPE). Query head `j` reads KV head `j / (h/kv)`.
//! For each batch row and head, with `s = 1/√d`:
//! ```text
//! S_ij = s · q_i·k_j   (j ≤ i; masked to −∞ for j > i)
//! P    = softmax_row(S)                         (E1)
//! o_i  = Σ_j P_ij v_j                            → att: [n, h·d]
//! ```
//! Backward, given `do = d att`:
//! ```text
//! dP_ij = do_i·v_j        dv_j += Σ_i P_ij do_i
//! dS    = P ⊙ (dP − rowsum(P ⊙ dP))             (softmax backward)
//! dq_i  = s Σ_j dS_ij k_j   dk_j += s Σ_i dS_ij q_i
//! ```
//! `dk`, `dv` sum over the `h/kv` query heads that share a KV head.

use crate::config::Dims;
use crate::kernels::{axpy, dot, softmax};
use crate::kv_cache::KvSource;

/// E10 forward: `att_i = Σ_j softmax_j(q_i·k_j/√d, j ≤ i) v_j` per batch row and
/// head, from `qkv: [n, (h+2kv)·d]`.
/// `att: [n, h·d]`; `probs` is `[b, h, t, t]` when `save` (training),
/// else a scratch row of at least `t` scores reused by every query.
pub fn forward(att: &mut [f32], probs: &mut [f32], qkv: &[f32], dm: &Dims, save: bool) {
    let (t, q) = (dm.t, dm.q);
    let hd = dm.h * dm.d;
    for bi in 0..dm.b {
        let rows = &qkv[bi * t * q..(bi + 1) * t * q];
        let kvs = KvSource {
            k: rows,
            v: rows,
            stride: q,
            k_off: hd,
            v_off: hd + dm.kv * dm.d,
        };
        let p = if save {
            &mut probs[bi * dm.h * t * t..(bi + 1) * dm.h * t * t]
        } else {
            &mut probs[..]
        };
        attend(
            &mut att[bi * t * hd..(bi + 1) * t * hd],
            p,
            save,
            rows,
            kvs,
            0,
            dm,
        );
    }
}

/// E10 — attention of one sequence, `o_i = Σ_{j ≤ pos0+i} softmax_j(s·q_i·k_j) v_j`: `t` query rows (`qkv_rows: [t, q]`, absolute
/// positions `pos0 + i`) over keys/values at positions `0 ..= pos0 + i` in `kvs`.
/// With `save`, `probs` is `[h, t, t]` (requires `pos0 = 0`); otherwise it is a
/// score row of at least `pos0 + t` elements.
pub fn attend(
    att: &mut [f32],
    probs: &mut [f32],
    save: bool,
    qkv_rows: &[f32],
    kvs: KvSource,
    pos0: usize,
    dm: &Dims,
) {
    let (t, h, kv, d, q) = (dm.t, dm.h, dm.kv, dm.d, dm.q);
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let hd = h * d;
    debug_assert!(!save || pos0 == 0);
    for hh in 0..h {
        let g = hh / group;
        let (ko, vo) = (kvs.k_off + g * d, kvs.v_off + g * d);
        for i in 0..t {
            let keys = pos0 + i + 1; // causal: positions 0 ..= pos0 + i
            let qi = &qkv_rows[i * q + hh * d..i * q + hh * d + d];
            let prow = if save {
                &mut probs[(hh * t + i) * t..(hh * t + i + 1) * t]
            } else {
                &mut probs[..keys]
            };
            for j in 0..keys {
                let kj = &kvs.k[j * kvs.stride + ko..j * kvs.stride + ko + d];
                prow[j] = dot(qi, kj) * scale;
            }
            softmax::forward_inplace(&mut prow[..keys]);
            prow[keys..].iter_mut().for_each(|x| *x = 0.0);
            let oi = &mut att[i * hd + hh * d..i * hd + hh * d + d];
            oi.iter_mut().for_each(|x| *x = 0.0);
            for j in 0..keys {
                let vj = &kvs.v[j * kvs.stride + vo..j * kvs.stride + vo + d];
                axpy(oi, prow[j], vj);
            }
        }
    }
}

/// E28 (backward of E10): `dP_ij = do_i·v_j`, `dv_j += Σ_i P_ij do_i`,
/// `dS = P ⊙ (dP − rowsum(P ⊙ dP))` (E22), `dq_i = s Σ_j dS_ij k_j`,
/// `dk_j += s Σ_i dS_ij q_i`.
/// Overwrites `dqkv: [n, (h+2kv)·d]` (dq, dk, dv, before RoPE backward);
/// `datt: [n, h·d]`; `probs: [b, h, t, t]` saved; `dp: [t, t]` scratch.
pub fn backward(
    dqkv: &mut [f32],
    dp: &mut [f32],
    datt: &[f32],
    probs: &[f32],
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
            let p_all = &probs[(bi * h + hh) * t * t..(bi * h + hh + 1) * t * t];
            for i in 0..t {
                let doi = &datt[(rows + i) * hd + qo..(rows + i) * hd + qo + d];
                let prow = &p_all[i * t..i * t + i + 1];
                let dprow = &mut dp[i * t..i * t + i + 1];
                // forward: o_i = Σ_j P_ij v_j
                for j in 0..=i {
                    let vj = &qkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    dprow[j] = dot(doi, vj);
                    let dvj = &mut dqkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    axpy(dvj, prow[j], doi);
                }
                // forward: P_i = softmax(S_i)
                softmax::backward_inplace(dprow, prow);
                // forward: S_ij = s · q_i·k_j
                let qi = &qkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                let dqi = &mut dqkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                for j in 0..=i {
                    let kj = &qkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    axpy(dqi, dprow[j] * scale, kj);
                }
                for j in 0..=i {
                    let dkj = &mut dqkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    axpy(dkj, dprow[j] * scale, qi);
                }
            }
        }
    }
}
