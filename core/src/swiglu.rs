//! E8 — one SwiGLU expert on its gathered rows:
//! `Expert(x) = w2( silu(x·w1ᵀ) ⊙ (x·w3ᵀ) )`, with `w1, w3: [f, c]` adjacent in
//! the flat buffer as one `w13: [2f, c]` (one GEMM for gate and up) and `w2: [c, f]`.
//!
//! Shapes for an expert that owns `m` rows: `xg: [m, c]`, `h13: [m, 2f]`
//! (row = `[h1 | h3]`), `act: [m, f]`, `y: [m, c]`. All three are saved.
//!
//! Backward, given `dy`:
//! ```text
//! dact = dy·w2             dw2  += dyᵀ·act
//! dh1  = dact ⊙ h3 ⊙ silu'(h1)     dh3 = dact ⊙ silu(h1)
//! dx   = dh13·w13          dw13 += dh13ᵀ·xg
//! ```

use crate::kernels::{self, silu, silu_grad};
use crate::linear::{self, Accum, Weight};

/// The expert function, named as in the spec. Borrowed views of its weights.
#[derive(Debug, Clone, Copy)]
pub struct SwiGLU<'a> {
    /// `[w1; w3]`: `[2f, c]`.
    pub w13: Weight<'a>,
    /// `w2`: `[c, f]`.
    pub w2: Weight<'a>,
    /// Model width `c`.
    pub c: usize,
    /// FFN width `f`.
    pub f: usize,
}

impl SwiGLU<'_> {
    /// E8 forward over `m` rows: `[h1 | h3] = xg·w13ᵀ`, `act = silu(h1) ⊙ h3`,
    /// `y = act·w2ᵀ`. `xg: [m, c]`; writes `h13: [m, 2f]`, `act: [m, f]` (saved)
    /// and `y: [m, c]`.
    ///
    /// # Panics
    /// If a slice is shorter than its shape above (the GEMM's operand check),
    /// or `f = 0` with rows to compute.
    pub fn forward(&self, y: &mut [f32], h13: &mut [f32], act: &mut [f32], xg: &[f32], m: usize) {
        self.forward_packed(None, y, h13, act, xg, m)
    }

    /// [`SwiGLU::forward`] with optional pre-packed copies `(w13, w2)` of the
    /// weights ([`linear::pack_weight`]), used where they apply
    /// ([`linear::forward_packed`]); the same bits as [`SwiGLU::forward`].
    ///
    /// # Panics
    /// As [`SwiGLU::forward`]; also if a packed copy is too short.
    pub fn forward_packed(
        &self,
        packed: Option<(&[f32], &[f32])>,
        y: &mut [f32],
        h13: &mut [f32],
        act: &mut [f32],
        xg: &[f32],
        m: usize,
    ) {
        let (c, f) = (self.c, self.f);
        let (p13, p2) = packed.unzip();
        linear::forward_packed(h13, xg, self.w13, p13, m, c, 2 * f, Accum::Set);
        kernels::rows::silu_mul_rows(act, h13, f);
        linear::forward_packed(y, act, self.w2, p2, m, f, c, Accum::Set);
    }

    /// E26 (backward of E8) over `m` rows: `dact = dy·w2`, `dw2 += dyᵀ·act`,
    /// `dh1 = dact ⊙ h3 ⊙ silu'(h1)`, `dh3 = dact ⊙ silu(h1)`,
    /// `dxg = dh13·w13`, `dw13 += dh13ᵀ·xg`. Overwrites `dxg: [m, c]` and the scratch
    /// `dh13: [m, 2f]`, `dact: [m, f]`; accumulates `dw13: [2f, c]`, `dw2: [c, f]`.
    ///
    /// # Panics
    /// As [`SwiGLU::forward`].
    #[allow(clippy::too_many_arguments)] // reason: llm.c order — d-input, two d-weights, two scratch buffers, dout, the input and two saved activations, rows; each a different slice
    pub fn backward(
        &self,
        dxg: &mut [f32],
        dw13: &mut [f32],
        dw2: &mut [f32],
        dh13: &mut [f32],
        dact: &mut [f32],
        dy: &[f32],
        xg: &[f32],
        h13: &[f32],
        act: &[f32],
        m: usize,
    ) {
        let (c, f) = (self.c, self.f);
        // forward: y = act·w2ᵀ
        linear::backward_input_w(dact, dy, self.w2, m, f, c, Accum::Set);
        linear::backward_weight(dw2, dy, act, m, f, c);
        // forward: act = silu(h1) ⊙ h3
        kernels::vectorized(
            #[inline(always)]
            || {
                for ((dh, hr), da) in dh13
                    .chunks_exact_mut(2 * f)
                    .zip(h13.chunks_exact(2 * f))
                    .zip(dact.chunks_exact(f))
                {
                    let (h1, h3) = hr.split_at(f);
                    let (dh1, dh3) = dh.split_at_mut(f);
                    for i in 0..f {
                        dh1[i] = da[i] * h3[i] * silu_grad(h1[i]);
                        dh3[i] = da[i] * silu(h1[i]);
                    }
                }
            },
        );
        // forward: h13 = xg·w13ᵀ
        linear::backward_input_w(dxg, dh13, self.w13, m, c, 2 * f, Accum::Set);
        linear::backward_weight(dw13, dh13, xg, m, c, 2 * f);
    }

    /// E26 in place: the arithmetic of [`SwiGLU::backward`], with each saved
    /// activation overwritten by its gradient once it is dead — `act ← dact`
    /// (after `dw2 += dyᵀ·act`), `h13 ← dh13` (element by element),
    /// `xg ← dxg` (after `dw13 += dh13ᵀ·xg`). Every output gets the same bits
    /// as [`SwiGLU::backward`]'s; no scratch.
    ///
    /// # Panics
    /// As [`SwiGLU::forward`].
    #[allow(clippy::too_many_arguments)] // reason: llm.c order — two d-weights, dout, the three saved activations (overwritten), rows
    pub fn backward_inplace(
        &self,
        dw13: &mut [f32],
        dw2: &mut [f32],
        dy: &[f32],
        xg: &mut [f32],
        h13: &mut [f32],
        act: &mut [f32],
        m: usize,
    ) {
        let (c, f) = (self.c, self.f);
        // forward: y = act·w2ᵀ
        linear::backward_weight(dw2, dy, act, m, f, c);
        linear::backward_input_w(act, dy, self.w2, m, f, c, Accum::Set);
        // forward: act = silu(h1) ⊙ h3
        kernels::vectorized(
            #[inline(always)]
            || {
                for (hr, da) in h13.chunks_exact_mut(2 * f).zip(act.chunks_exact(f)) {
                    let (h1, h3) = hr.split_at_mut(f);
                    for i in 0..f {
                        let (a, b) = (h1[i], h3[i]);
                        h1[i] = da[i] * b * silu_grad(a);
                        h3[i] = da[i] * silu(a);
                    }
                }
            },
        );
        // forward: h13 = xg·w13ᵀ
        linear::backward_weight(dw13, h13, xg, m, c, 2 * f);
        linear::backward_input_w(xg, h13, self.w13, m, c, 2 * f, Accum::Set);
    }
}
