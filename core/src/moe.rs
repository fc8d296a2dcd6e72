//! E11 — the sparse MoE block, as dispatch → compute → combine:
//! ```text
//! (p, idx, w) = router(x)                       E12
//! y_r = Σ_{j ∈ idx_r} w_rj · Expert_j(x_r)      E8, each expert once on its gathered rows
//! ```
//! Dispatch is counting sort, with no per-token work in the experts:
//! `counts[e]` → `offsets[e]` (exclusive prefix sum) → `slot_row[s]` (the row
//! of slot `s`; an expert's slots are contiguous, in row order) and
//! `slot_of[r·k + j]` (the slot of row `r`'s `j`-th choice).
//!
//! Backward, given `dout = dL/dy` (`[n, c]`):
//! ```text
//! dw_rj   = dout_r · Expert_j(x_r)              (into the router backward)
//! dye_s   = w_rj · dout_r                       (into each expert's backward)
//! dx_r   += Σ_j dxg_{slot(r,j)} + router dx
//! ```

use crate::arena::LayerActs;
use crate::config::Dims;
use crate::kernels::{axpy, dot};
use crate::layout::Layout;
use crate::linear::Weight;
use crate::model::Prepacked;
use crate::router;
use crate::swiglu::SwiGLU;

/// E11 dispatch — counting sort of `topk_idx: [n, k]` into per-expert slot ranges:
/// `counts: [e]`, `offsets: [e+1]` (exclusive prefix sum), `slot_row`, `slot_of: [n·k]`.
///
/// # Panics
/// If an expert id in `topk_idx` is `>= e` (`counts.len()`), `k = 0`, or a
/// buffer is shorter than stated (the router writes ids `< e` into buffers of
/// the model's plan).
pub fn dispatch(
    counts: &mut [u32],
    offsets: &mut [u32],
    slot_row: &mut [u32],
    slot_of: &mut [u32],
    topk_idx: &[u32],
    k: usize,
) {
    counts.iter_mut().for_each(|x| *x = 0);
    for &ex in topk_idx {
        counts[ex as usize] += 1;
    }
    offsets[0] = 0;
    for ex in 0..counts.len() {
        offsets[ex + 1] = offsets[ex] + counts[ex];
    }
    // Reuse `counts` as per-expert cursors; it ends equal to the counts again.
    counts.iter_mut().for_each(|x| *x = 0);
    for (i, &ex) in topk_idx.iter().enumerate() {
        let ex = ex as usize;
        let s = offsets[ex] + counts[ex];
        counts[ex] += 1;
        slot_row[s as usize] = (i / k) as u32;
        slot_of[i] = s;
    }
}

/// Expert `ex` of layer `l` as a [`SwiGLU`] over the flat `params`.
fn expert<'p>(params: Weight<'p>, lay: &Layout, l: usize, ex: usize, dm: &Dims) -> SwiGLU<'p> {
    let r = lay.expert(l, ex);
    SwiGLU {
        w13: params.get(r.w13),
        w2: params.get(r.w2),
        c: dm.c,
        f: dm.f,
    }
}

/// E11 forward: `y_r = Σ_{j ∈ topk(r)} w_rj · Expert_j(x_r)` (router E12,
/// experts E8 once each on their gathered rows `xg: [s, c]`, `s = n·k`).
/// Reads `la.xn2: [n, c]`, writes the router and expert activations of `la`,
/// and adds the block output into `resid: [n, c]` (the residual connection).
/// The block's weights are layer `l` of `lay` in the flat `params`; the
/// experts read `packed` (inference's pre-packed copies) where given.
pub(crate) fn forward(
    la: &mut LayerActs,
    resid: &mut [f32],
    params: Weight,
    packed: Option<&Prepacked>,
    lay: &Layout,
    l: usize,
    dm: &Dims,
) {
    let (n, c, e, k, f) = (dm.n, dm.c, dm.e, dm.k, dm.f);
    let wg = params.get(lay.layers[l].router.clone());
    router::forward_w(la.rprobs, la.topk_idx, la.topk_w, la.xn2, wg, dm);
    dispatch(
        la.counts,
        la.offsets,
        la.slot_row,
        la.slot_of,
        la.topk_idx,
        k,
    );
    // Gather: xg[s] = xn2[slot_row[s]].
    for (s, &r) in la.slot_row.iter().enumerate() {
        let r = r as usize;
        la.xg[s * c..(s + 1) * c].copy_from_slice(&la.xn2[r * c..(r + 1) * c]);
    }
    for ex in 0..e {
        let (lo, m) = (la.offsets[ex] as usize, la.counts[ex] as usize);
        if m == 0 {
            continue;
        }
        expert(params, lay, l, ex, dm).forward_packed(
            packed.map(|pk| pk.expert(l, ex)),
            &mut la.ye[lo * c..(lo + m) * c],
            &mut la.h13[lo * 2 * f..(lo + m) * 2 * f],
            &mut la.act[lo * f..(lo + m) * f],
            &la.xg[lo * c..(lo + m) * c],
            m,
        );
    }
    // Combine: resid_r += Σ_j w_rj · ye[slot(r, j)], added in increasing
    // expert order (the order of HF's per-expert `index_add_` loop).
    for r in 0..n {
        let idx = &la.topk_idx[r * k..(r + 1) * k];
        let out = &mut resid[r * c..(r + 1) * c];
        let mut prev: Option<u32> = None;
        for _ in 0..k {
            // The next larger expert index among this row's choices (k is small).
            let mut j_next = 0;
            let mut best = u32::MAX;
            for (j, &ex) in idx.iter().enumerate() {
                if prev.is_none_or(|p| ex > p) && ex < best {
                    best = ex;
                    j_next = j;
                }
            }
            prev = Some(best);
            let s = la.slot_of[r * k + j_next] as usize;
            axpy(out, la.topk_w[r * k + j_next], &la.ye[s * c..(s + 1) * c]);
        }
    }
}

/// Scratch and gradient buffers the MoE backward writes (the expert
/// gradients overwrite the layer's `ye`, `act`, `h13`, `xg`; see [`backward`]).
pub(crate) struct MoeGrads<'a> {
    /// `dL/d xn2`, overwritten: `[n, c]`.
    pub dxn: &'a mut [f32],
    /// Flat parameter gradient (accumulated).
    pub dparams: &'a mut [f32],
    pub dtopk_w: &'a mut [f32],
    pub drprobs: &'a mut [f32],
}

/// E29 (backward of E11): `dw_rj = dout_r · Expert_j(x_r)`, `dye_s = w_rj · dout_r`,
/// expert backward (E26), then the gather's adjoint `dx_r += Σ_j dxg_{slot(r,j)}`
/// and the router backward (E30).
/// `dout: [n, c]` is the gradient of the block output (the residual
/// stream after the block). Writes `g.dxn` = gradient w.r.t. `la.xn2`
/// (router and experts), accumulates weight gradients. `aux: [e]` is the
/// aux-loss gradient per router probability. The block's weights are layer
/// `l` of `lay` in the flat `params`. In place: `la.ye` becomes `dye`, and
/// [`SwiGLU::backward_inplace`] turns `la.act`, `la.h13`, `la.xg` into their
/// gradients (each dead once read), so the layer's expert activations are
/// gone afterwards.
#[allow(clippy::too_many_arguments)] // reason: llm.c order — grads, dout, saved, aux coefficients, then the weights (params, layout, layer) and dims
pub(crate) fn backward(
    g: MoeGrads,
    dout: &[f32],
    la: &mut LayerActs,
    aux: &[f32],
    params: Weight,
    lay: &Layout,
    l: usize,
    dm: &Dims,
) {
    let (n, c, e, k, f) = (dm.n, dm.c, dm.e, dm.k, dm.f);
    // forward: y_r = Σ_j w_rj · ye[slot(r, j)]
    for r in 0..n {
        let dr = &dout[r * c..(r + 1) * c];
        for j in 0..k {
            // Each slot is one (r, j): read ye_s, then overwrite it with dye_s.
            let s = la.slot_of[r * k + j] as usize;
            let ye = &mut la.ye[s * c..(s + 1) * c];
            g.dtopk_w[r * k + j] = dot(dr, ye);
            let w = la.topk_w[r * k + j];
            for (d, &x) in ye.iter_mut().zip(dr) {
                *d = w * x;
            }
        }
    }
    for ex in 0..e {
        let (lo, m) = (la.offsets[ex] as usize, la.counts[ex] as usize);
        if m == 0 {
            continue;
        }
        let r = lay.expert(l, ex);
        let (dw13, dw2) = g.dparams[r.all()].split_at_mut(r.w13.len());
        expert(params, lay, l, ex, dm).backward_inplace(
            dw13,
            dw2,
            &la.ye[lo * c..(lo + m) * c],
            &mut la.xg[lo * c..(lo + m) * c],
            &mut la.h13[lo * 2 * f..(lo + m) * 2 * f],
            &mut la.act[lo * f..(lo + m) * f],
            m,
        );
    }
    // forward: xg[s] = xn2[slot_row[s]]  (gather → scatter-add)
    g.dxn.iter_mut().for_each(|x| *x = 0.0);
    for (s, &r) in la.slot_row.iter().enumerate() {
        let r = r as usize;
        for (d, &x) in g.dxn[r * c..(r + 1) * c]
            .iter_mut()
            .zip(&la.xg[s * c..(s + 1) * c])
        {
            *d += x;
        }
    }
    let wr = lay.layers[l].router.clone();
    let (wg, dwg) = (params.get(wr.clone()), &mut g.dparams[wr]);
    router::backward(
        g.dxn,
        dwg,
        g.drprobs,
        g.dtopk_w,
        la.rprobs,
        la.topk_idx,
        la.topk_w,
        aux,
        la.xn2,
        wg,
        dm,
    );
}
