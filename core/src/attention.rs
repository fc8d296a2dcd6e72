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

use crate::arena::Dims;
use crate::kernels::softmax;

/// Forward. `att: [n, h·d]`; `probs` is `[b, h, t, t]` when `save` (training),
/// else a `[t, t]` scratch reused by every head.
pub fn forward(att: &mut [f32], probs: &mut [f32], qkv: &[f32], dm: &Dims, save: bool) {
    let (t, h, kv, d, q) = (dm.t, dm.h, dm.kv, dm.d, dm.q);
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let hd = h * d;
    for bi in 0..dm.b {
        let rows = bi * t;
        for hh in 0..h {
            let g = hh / group;
            let (qo, ko, vo) = (hh * d, hd + g * d, hd + kv * d + g * d);
            let p_all = if save {
                &mut probs[(bi * h + hh) * t * t..(bi * h + hh + 1) * t * t]
            } else {
                &mut probs[..t * t]
            };
            for i in 0..t {
                let qi = &qkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                let prow = &mut p_all[i * t..(i + 1) * t];
                for j in 0..=i {
                    let kj = &qkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                    prow[j] = dot * scale;
                }
                softmax::forward_inplace(&mut prow[..=i]);
                prow[i + 1..].iter_mut().for_each(|x| *x = 0.0);
                let oi = &mut att[(rows + i) * hd + qo..(rows + i) * hd + qo + d];
                oi.iter_mut().for_each(|x| *x = 0.0);
                for j in 0..=i {
                    let pij = prow[j];
                    let vj = &qkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    for (o, &vv) in oi.iter_mut().zip(vj) {
                        *o += pij * vv;
                    }
                }
            }
        }
    }
}

/// Backward. Overwrites `dqkv: [n, (h+2kv)·d]` (dq, dk, dv, before RoPE backward);
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
                    dprow[j] = doi.iter().zip(vj).map(|(a, b)| a * b).sum();
                    let pij = prow[j];
                    let dvj = &mut dqkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    for (dv, &g) in dvj.iter_mut().zip(doi) {
                        *dv += pij * g;
                    }
                }
                // forward: P_i = softmax(S_i)
                softmax::backward_inplace(dprow, prow);
                // forward: S_ij = s · q_i·k_j
                for j in 0..=i {
                    let ds = dprow[j] * scale;
                    if ds == 0.0 {
                        continue;
                    }
                    for x in 0..d {
                        let kjx = qkv[(rows + j) * q + ko + x];
                        let qix = qkv[(rows + i) * q + qo + x];
                        dqkv[(rows + i) * q + qo + x] += ds * kjx;
                        dqkv[(rows + j) * q + ko + x] += ds * qix;
                    }
                }
            }
        }
    }
}
