//! E10 — causal multi-query / grouped-query self-attention (`MQAttention`).
//!
//! Input is the fused projection `qkv: [n, (h+2kv)·d]` (row = `[q₀…q_{h−1} | k₀…k_{kv−1} | v₀…v_{kv−1}]`,
//! q and k already rotated by RoPE). Query head `j` reads KV head `j / (h/kv)`.
//! For each batch row and head, with `s = 1/√d`:
//! ```text
//! S_ij = s · q_i·k_j   (j0(i) ≤ j ≤ i; masked to −∞ elsewhere)
//! j0(i) = max(0, i + 1 − W) with `sliding_window = W`, else 0  (i − W < j ≤ i)
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

pub mod flash;

use crate::config::Dims;
use crate::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernels::attn::Avx2;
use crate::kernels::{axpy_body, dot_body, softmax, vectorized};
use crate::kv_cache::KvSource;

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

/// `Err` unless the head layout of `dm` is usable: `kv > 0`, `h % kv == 0`, `d > 0`.
fn check_heads(dm: &Dims) -> Result<()> {
    if dm.kv == 0 || !dm.h.is_multiple_of(dm.kv) {
        return Err(Error::InvalidConfig {
            field: "num_key_value_heads",
            expected: "> 0 and a divisor of num_attention_heads",
            actual: dm.kv as f64,
        });
    }
    if dm.q != (dm.h + 2 * dm.kv) * dm.d {
        return Err(Error::ShapeMismatch {
            arg: "dims.q",
            expected: (dm.h + 2 * dm.kv) * dm.d,
            actual: dm.q,
        });
    }
    Ok(())
}

/// E10 forward: `att_i = Σ_j softmax_j(q_i·k_j/√d, j ≤ i) v_j` per batch row and
/// head, from `qkv: [n, (h+2kv)·d]`.
/// `att: [n, h·d]`; `probs` is `[b, h, t, t]` when `save` (training),
/// else a scratch row of at least `t` scores reused by every query.
///
/// # Errors
/// [`Error::ShapeMismatch`] if a slice is shorter than its shape (or
/// `dm.q ≠ (h+2kv)·d`), [`Error::InvalidConfig`] if `kv` does not divide `h`,
/// and [`Error::NonFinite`] (`"attention scores"`, flat index `(b·h + head)·t + i`
/// of the first bad query row) if a score row holds NaN or ±∞ — causal
/// attention never masks a whole row, so such a row is never "fully masked".
pub fn forward(
    att: &mut [f32],
    probs: &mut [f32],
    qkv: &[f32],
    dm: &Dims,
    save: bool,
) -> Result<()> {
    let (t, q) = (dm.t, dm.q);
    let hd = dm.h * dm.d;
    check_heads(dm)?;
    need("qkv", qkv.len(), dm.b * t * q)?;
    need("att", att.len(), dm.b * t * hd)?;
    need(
        "probs",
        probs.len(),
        if save { dm.b * dm.h * t * t } else { t },
    )?;
    for bi in 0..dm.b {
        let p = if save {
            &mut probs[bi * dm.h * t * t..(bi + 1) * dm.h * t * t]
        } else {
            &mut probs[..]
        };
        attend_sequence(att, p, save, qkv, bi, dm)?;
    }
    Ok(())
}

/// Sequence `bi` of [`forward`]: its queries attend to its own keys/values
/// (`qkv` rows `bi·t ..`), writing `att` rows `bi·t ..` and the probabilities
/// `p` (`[h, t, t]` when `save`, else one reused row); a non-finite score row
/// is reported at its batch-wide index `(bi·h + head)·t + i`.
fn attend_sequence(
    att: &mut [f32],
    p: &mut [f32],
    save: bool,
    qkv: &[f32],
    bi: usize,
    dm: &Dims,
) -> Result<()> {
    let (t, q) = (dm.t, dm.q);
    let hd = dm.h * dm.d;
    let rows = &qkv[bi * t * q..(bi + 1) * t * q];
    let kvs = KvSource {
        k: rows,
        v: rows,
        stride: q,
        k_off: hd,
        v_off: hd + dm.kv * dm.d,
    };
    attend(
        &mut att[bi * t * hd..(bi + 1) * t * hd],
        p,
        save,
        rows,
        kvs,
        0,
        dm,
    )
    .map_err(|e| match e {
        Error::NonFinite { what, index } => Error::NonFinite {
            what,
            index: bi * dm.h * t + index,
        },
        e => e,
    })
}

/// [`forward`] that saves the probabilities as bf16 ([`crate::AttnMemory::SavedBf16`]):
/// per sequence, the f32 rows go into `scratch: [h, t, t]` (the output
/// `att` uses them, so the forward's result is [`forward`]'s, bit for bit),
/// then are rounded to nearest even into `probs16: [b, h, t, t]`.
///
/// # Errors
/// As [`forward`].
pub fn forward_bf16(
    att: &mut [f32],
    scratch: &mut [f32],
    probs16: &mut [u16],
    qkv: &[f32],
    dm: &Dims,
) -> Result<()> {
    let (t, q) = (dm.t, dm.q);
    let hd = dm.h * dm.d;
    let per = dm.h * t * t;
    check_heads(dm)?;
    need("qkv", qkv.len(), dm.b * t * q)?;
    need("att", att.len(), dm.b * t * hd)?;
    need("probs", scratch.len(), per)?;
    need("probs16", probs16.len(), dm.b * per)?;
    for bi in 0..dm.b {
        let p = &mut scratch[..per];
        attend_sequence(att, p, true, qkv, bi, dm)?;
        crate::kernels::bf16::round_slice(&mut probs16[bi * per..(bi + 1) * per], p);
    }
    Ok(())
}

/// E10 — attention of one sequence, `o_i = Σ_{j ≤ pos0+i} softmax_j(s·q_i·k_j) v_j`: `t` query rows (`qkv_rows: [t, q]`, absolute
/// positions `pos0 + i`) over keys/values at positions `0 ..= pos0 + i` in `kvs`.
/// With `save`, `probs` is `[h, t, t]` (requires `pos0 = 0`); otherwise it is a
/// score row of at least `pos0 + t` elements.
///
/// # Errors
/// [`Error::ShapeMismatch`] if a slice (or `kvs`) is too short for `pos0 + t`
/// positions, or `save` with `pos0 ≠ 0`; [`Error::InvalidConfig`] for a head
/// layout with `h % kv ≠ 0`; [`Error::NonFinite`] (`"attention scores"`, index
/// `head·t + i` of the first bad row) if a score row holds NaN or ±∞. The
/// check is the status of each row's softmax (one flag per row, no extra pass).
pub fn attend(
    att: &mut [f32],
    probs: &mut [f32],
    save: bool,
    qkv_rows: &[f32],
    kvs: KvSource,
    pos0: usize,
    dm: &Dims,
) -> Result<()> {
    let (t, h, kv, d, q) = (dm.t, dm.h, dm.kv, dm.d, dm.q);
    check_heads(dm)?;
    if t == 0 {
        return Ok(());
    }
    let hd = h * d;
    if save && pos0 != 0 {
        return Err(Error::ShapeMismatch {
            arg: "pos0 (save needs pos0 = 0)",
            expected: 0,
            actual: pos0,
        });
    }
    need("qkv_rows", qkv_rows.len(), t * q)?;
    need("att", att.len(), t * hd)?;
    need(
        "probs",
        probs.len(),
        if save { h * t * t } else { pos0 + t },
    )?;
    // Last key/value read: position pos0 + t − 1, KV head kv − 1, d elements.
    let last = (pos0 + t - 1) * kvs.stride;
    need("kvs.k", kvs.k.len(), last + kvs.k_off + kv * d)?;
    need("kvs.v", kvs.v.len(), last + kvs.v_off + kv * d)?;
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = Avx2::new() {
        return scores_status(k.run(
            #[inline(always)]
            || attend_heads_avx2(k, att, probs, save, qkv_rows, &kvs, pos0, dm),
        ));
    }
    scores_status(vectorized(
        #[inline(always)]
        || attend_heads(att, probs, save, qkv_rows, &kvs, pos0, dm),
    ))
}

/// `Err(NonFinite("attention scores", row))` for the first row whose
/// softmax was not a distribution, if any.
fn scores_status(bad: Option<usize>) -> Result<()> {
    match bad {
        Some(index) => Err(Error::NonFinite {
            what: "attention scores",
            index,
        }),
        None => Ok(()),
    }
}

/// [`attend`]'s loops on checked slices, inside one [`vectorized`] instance
/// (the row kernels are called by their bodies, so the whole head loop is one
/// AVX2 function with no call per key); returns the first non-finite row.
#[inline(always)]
fn attend_heads(
    att: &mut [f32],
    probs: &mut [f32],
    save: bool,
    qkv_rows: &[f32],
    kvs: &KvSource,
    pos0: usize,
    dm: &Dims,
) -> Option<usize> {
    let (t, h, kv, d, q) = (dm.t, dm.h, dm.kv, dm.d, dm.q);
    let hd = h * d;
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let n_keys = pos0 + t;
    // Kᵀ of one KV head, `[d][n_keys]`, when it fits and rows share it.
    let use_kt = t > 1 && d * n_keys <= KT_MAX;
    // Only then is the 16 KiB filled (a decoding step, t = 1, never is).
    let mut kt_store;
    let kt: &mut [f32] = if use_kt {
        kt_store = [0.0f32; KT_MAX];
        &mut kt_store[..d * n_keys]
    } else {
        &mut []
    };
    let mut bad: Option<usize> = None;
    for hh in 0..h {
        let g = hh / group;
        let (ko, vo) = (kvs.k_off + g * d, kvs.v_off + g * d);
        if use_kt && hh % group == 0 {
            for j in 0..n_keys {
                let kj = &kvs.k[j * kvs.stride + ko..j * kvs.stride + ko + d];
                for (c, &x) in kj.iter().enumerate() {
                    kt[c * n_keys + j] = x;
                }
            }
        }
        for i in 0..t {
            let keys = pos0 + i + 1; // causal: positions j0 ..= pos0 + i
            let j0 = dm.first_key(pos0 + i); // sliding window: j > pos − W
            let qi = &qkv_rows[i * q + hh * d..i * q + hh * d + d];
            let prow = if save {
                &mut probs[(hh * t + i) * t..(hh * t + i + 1) * t]
            } else {
                &mut probs[..keys]
            };
            let mut j = j0;
            if use_kt {
                while j + 8 <= keys {
                    scores8(&mut prow[j..j + 8], qi, kt, n_keys, j, scale);
                    j += 8;
                }
            }
            for j in j..keys {
                let kj = &kvs.k[j * kvs.stride + ko..j * kvs.stride + ko + d];
                prow[j] = dot_body(qi, kj) * scale;
            }
            // A row keeps at least its own key (j0 ≤ pos), so a row that is
            // not a distribution (NaN, +∞, or all −∞ from overflow) is an
            // error, never a "fully masked" row of zeros.
            if !softmax::forward_row(&mut prow[j0..keys]) && bad.is_none() {
                bad = Some(hh * t + i);
            }
            prow[..j0].iter_mut().for_each(|x| *x = 0.0);
            prow[keys..].iter_mut().for_each(|x| *x = 0.0);
            // o_i = Σ_j P_ij v_j from 0, in key order, 8 output lanes at a
            // time held across the keys (the same sums as one `axpy` per key).
            let oi = &mut att[i * hd + hh * d..i * hd + hh * d + d];
            let mut c0 = 0;
            while c0 + 8 <= d {
                let mut acc = [0.0f32; 8];
                for j in j0..keys {
                    let at = j * kvs.stride + vo + c0;
                    let vj: &[f32; 8] = kvs.v[at..at + 8].try_into().unwrap_or(&[0.0; 8]);
                    let pj = prow[j];
                    for l in 0..8 {
                        acc[l] += pj * vj[l];
                    }
                }
                oi[c0..c0 + 8].copy_from_slice(&acc);
                c0 += 8;
            }
            if c0 < d {
                let tail = &mut oi[c0..];
                tail.iter_mut().for_each(|x| *x = 0.0);
                for j in j0..keys {
                    let at = j * kvs.stride + vo + c0;
                    axpy_body(tail, prow[j], &kvs.v[at..at + (d - c0)]);
                }
            }
        }
    }
    bad
}

/// [`attend_heads`] on the AVX2 row kernels ([`Avx2`]): per query row the
/// scores `s·q_i·k_j` (`j0 ≤ j ≤ pos0 + i`) straight from the key rows (no
/// `Kᵀ` copy), the softmax, then `o_i = Σ_j P_ij v_j` — the same operations
/// in the same order as the portable loops, so the same bits. Rows of up to
/// 32 keys (`kernels::attn::SMALL`) stay in registers, two query heads of one
/// KV head at a time (same keys and values, independent chains); longer or
/// non-finite rows take the three-step path. Rows run in (KV head, position, head) order, so the
/// bad row reported is the smallest index, as in [`attend_heads`]. Without
/// `save` the score row is scratch and is not zero-padded.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)] // reason: [`attend_heads`]' arguments and the token
#[inline(always)]
fn attend_heads_avx2(
    k: Avx2,
    att: &mut [f32],
    probs: &mut [f32],
    save: bool,
    qkv_rows: &[f32],
    kvs: &KvSource,
    pos0: usize,
    dm: &Dims,
) -> Option<usize> {
    let (t, h, kv, d, q) = (dm.t, dm.h, dm.kv, dm.d, dm.q);
    let hd = h * d;
    let group = h / kv;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let stride = kvs.stride;
    let mut bad: Option<usize> = None;
    // Per KV head and position, its query heads two at a time (the same keys
    // and values; independent chains interleaved), a lone head by itself.
    for g in 0..kv {
        let (ko, vo) = (kvs.k_off + g * d, kvs.v_off + g * d);
        for i in 0..t {
            let keys = pos0 + i + 1; // causal: positions j0 ..= pos0 + i
            let j0 = dm.first_key(pos0 + i); // sliding window: j > pos − W
            let (kj, vj) = (&kvs.k[j0 * stride + ko..], &kvs.v[j0 * stride + vo..]);
            let mut hh = g * group;
            while hh < (g + 1) * group {
                let q_of = |hh: usize| &qkv_rows[i * q + hh * d..i * q + hh * d + d];
                if hh + 1 < (g + 1) * group {
                    // Output rows of heads hh and hh + 1 (adjacent in att).
                    let (oa, ob) = att[i * hd + hh * d..i * hd + hh * d + 2 * d].split_at_mut(d);
                    let p_out = if save {
                        let (a, b) = probs.split_at_mut(((hh + 1) * t + i) * t);
                        let pa = &mut a[(hh * t + i) * t..(hh * t + i + 1) * t][j0..keys];
                        Some([pa, &mut b[j0..keys]])
                    } else {
                        None
                    };
                    let two = [q_of(hh), q_of(hh + 1)];
                    let nk = keys - j0;
                    if k.rows_small2([oa, ob], p_out, two, kj, vj, stride, nk, scale)
                        .is_some()
                    {
                        if save {
                            for hx in [hh, hh + 1] {
                                let prow = &mut probs[(hx * t + i) * t..(hx * t + i + 1) * t];
                                prow[..j0].iter_mut().for_each(|x| *x = 0.0);
                                prow[keys..].iter_mut().for_each(|x| *x = 0.0);
                            }
                        }
                        hh += 2;
                        continue;
                    }
                }
                let qi = q_of(hh);
                let prow = if save {
                    &mut probs[(hh * t + i) * t..(hh * t + i + 1) * t]
                } else {
                    &mut probs[..keys]
                };
                let s = &mut prow[j0..keys];
                let oi = &mut att[i * hd + hh * d..i * hd + hh * d + d];
                let p_out = if save { Some(&mut *s) } else { None };
                if k.row_small(oi, p_out, qi, kj, vj, stride, keys - j0, scale)
                    .is_none()
                {
                    k.scores(s, qi, kj, stride, scale);
                    // A row keeps at least its own key: not a distribution is
                    // an error, reported at the first (smallest) row index.
                    if !k.softmax(s).0 {
                        let at = hh * t + i;
                        bad = Some(bad.map_or(at, |b| b.min(at)));
                    }
                    k.pv(oi, s, vj, stride);
                }
                if save {
                    prow[..j0].iter_mut().for_each(|x| *x = 0.0);
                    prow[keys..].iter_mut().for_each(|x| *x = 0.0);
                }
                hh += 1;
            }
        }
    }
    bad
}

/// Elements of [`attend`]'s stack copy of `Kᵀ` (16 KiB): `d · (pos0 + t)`
/// up to this uses it, longer rows take the per-key path (same bits).
const KT_MAX: usize = 4096;

/// Eight scores `out[jj] = s · q·k_{j+jj}` from `kt: [d][n_keys]` (`Kᵀ`),
/// bit-identical to [`dot_body`]`(q, k_j) · s` per key: lane `c mod 8` of
/// each key's partial sums gets `q_c·k_c` in the same order (here one
/// accumulator per lane, eight keys wide), then the same fold.
#[inline(always)]
fn scores8(out: &mut [f32], q: &[f32], kt: &[f32], n_keys: usize, j: usize, scale: f32) {
    let d = q.len();
    let mut acc = [[0.0f32; 8]; 8];
    let row = |c: usize| -> &[f32; 8] {
        kt[c * n_keys + j..c * n_keys + j + 8]
            .try_into()
            .unwrap_or(&[0.0; 8])
    };
    let full = d / 8 * 8;
    for c8 in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            let (x, k) = (q[c8 + l], row(c8 + l));
            for jj in 0..8 {
                a[jj] += x * k[jj];
            }
        }
    }
    for c in full..d {
        let (x, k) = (q[c], row(c));
        let a = &mut acc[c - full];
        for jj in 0..8 {
            a[jj] += x * k[jj];
        }
    }
    for jj in 0..8 {
        let s = [
            acc[0][jj] + acc[4][jj],
            acc[1][jj] + acc[5][jj],
            acc[2][jj] + acc[6][jj],
            acc[3][jj] + acc[7][jj],
        ];
        out[jj] = ((s[0] + s[2]) + (s[1] + s[3])) * scale;
    }
}

/// E28 (backward of E10): `dP_ij = do_i·v_j`, `dv_j += Σ_i P_ij do_i`,
/// `dS = P ⊙ (dP − rowsum(P ⊙ dP))` (E22), `dq_i = s Σ_j dS_ij k_j`,
/// `dk_j += s Σ_i dS_ij q_i`.
/// Overwrites `dqkv: [n, (h+2kv)·d]` (dq, dk, dv, before RoPE backward);
/// `datt: [n, h·d]`; `probs: [b, h, t, t]` saved; `dp: [t, t]` scratch.
///
/// # Panics
/// If a slice is shorter than the shape above or `dm.kv` does not divide
/// `dm.h` (the buffers come from the same plan as the forward, which checked
/// them; a caller passing its own buffers must size them as stated).
pub fn backward(
    dqkv: &mut [f32],
    dp: &mut [f32],
    datt: &[f32],
    probs: &[f32],
    qkv: &[f32],
    dm: &Dims,
) {
    backward_rows(dqkv, dp, datt, SavedProbs::F32(probs), qkv, dm)
}

/// [`backward`] on probabilities saved as bf16 ([`forward_bf16`]):
/// `probs16: [b, h, t, t]`; each row is widened (exactly) into `row: [t]`
/// before use, so the arithmetic is [`backward`]'s on the rounded `P`.
///
/// # Panics
/// As [`backward`] (and if `row` is shorter than `t`).
pub fn backward_bf16(
    dqkv: &mut [f32],
    dp: &mut [f32],
    datt: &[f32],
    probs16: &[u16],
    row: &mut [f32],
    qkv: &[f32],
    dm: &Dims,
) {
    backward_rows(dqkv, dp, datt, SavedProbs::Bf16(probs16, row), qkv, dm)
}

/// Where the backward reads the saved probabilities from.
enum SavedProbs<'a> {
    F32(&'a [f32]),
    /// bf16 rows and an f32 row to widen them into.
    Bf16(&'a [u16], &'a mut [f32]),
}

/// The body of [`backward`] and [`backward_bf16`].
fn backward_rows(
    dqkv: &mut [f32],
    dp: &mut [f32],
    datt: &[f32],
    probs: SavedProbs,
    qkv: &[f32],
    dm: &Dims,
) {
    vectorized(
        #[inline(always)]
        || backward_body(dqkv, dp, datt, probs, qkv, dm),
    )
}

/// [`backward_rows`]' loops, inside one [`vectorized`] instance (the row
/// kernels called by their bodies: no call per key).
#[inline(always)]
fn backward_body(
    dqkv: &mut [f32],
    dp: &mut [f32],
    datt: &[f32],
    mut probs: SavedProbs,
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
            let base = (bi * h + hh) * t * t;
            for i in 0..t {
                let j0 = dm.first_key(i); // P_ij = 0 outside j0 ..= i
                let doi = &datt[(rows + i) * hd + qo..(rows + i) * hd + qo + d];
                let (lo, hi) = (base + i * t + j0, base + i * t + i + 1);
                let prow: &[f32] = match &mut probs {
                    SavedProbs::F32(p) => &p[lo..hi],
                    SavedProbs::Bf16(p16, row) => {
                        let r = &mut row[..hi - lo];
                        crate::kernels::bf16::widen_slice(r, &p16[lo..hi]);
                        r
                    }
                };
                let dprow = &mut dp[i * t + j0..i * t + i + 1];
                // forward: o_i = Σ_j P_ij v_j  (local index jj = j − j0)
                for (jj, j) in (j0..=i).enumerate() {
                    let vj = &qkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    dprow[jj] = dot_body(doi, vj);
                    let dvj = &mut dqkv[(rows + j) * q + vo..(rows + j) * q + vo + d];
                    axpy_body(dvj, prow[jj], doi);
                }
                // forward: P_i = softmax(S_i) over the visible keys
                softmax::backward_inplace_row(dprow, prow);
                // forward: S_ij = s · q_i·k_j
                let qi = &qkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                let dqi = &mut dqkv[(rows + i) * q + qo..(rows + i) * q + qo + d];
                for (jj, j) in (j0..=i).enumerate() {
                    let kj = &qkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    axpy_body(dqi, dprow[jj] * scale, kj);
                }
                for (jj, j) in (j0..=i).enumerate() {
                    let dkj = &mut dqkv[(rows + j) * q + ko..(rows + j) * q + ko + d];
                    axpy_body(dkj, dprow[jj] * scale, qi);
                }
            }
        }
    }
}
