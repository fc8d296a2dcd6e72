//! Row reductions and fused row kernels (E1 softmax, E5 RMSNorm, E14/E15 the
//! CE row) in eight fixed lanes.
//!
//! A plain `f32` sum (`s += x_i`) or a running maximum is one sequential
//! dependency chain: no ISA vectorises it, and a loop that carries it stays
//! scalar even when its other work (`exp`) would vectorise. Here every
//! reduction keeps 8 interleaved partials `acc[l] += x[8j + l]` (the tail
//! `x[8J + l]` joins lane `l`), folded as `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`
//! — a fixed order, so the result depends only on the input and its length.
//! Everything is plain scalar Rust run under [`super::vectorized`] by the
//! callers: the AVX2+FMA clone and the baseline build perform the same IEEE
//! operations in the same order (no contraction), so both paths give the same
//! bits (`dispatch_paths` tests).

use super::exp;

/// Lanes of every reduction here (one `ymm` of `f32`).
pub(crate) const LANES: usize = 8;

/// The fixed fold of 8 partial sums: `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
#[inline(always)]
pub(crate) fn fold(acc: [f32; LANES]) -> f32 {
    let s = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// `(max_i x_i, any x_i is NaN)`; `max` ignores NaN and is `−∞` for an empty
/// or all-`−∞` row. Eight lane maxima, then their maximum (max is exact, so
/// the lane split does not change the value).
#[inline(always)]
pub(crate) fn max_nan(x: &[f32]) -> (f32, bool) {
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            nan[l] |= c[l].is_nan();
            mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] };
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        nan[l] |= v.is_nan();
        mx[l] = if v > mx[l] { v } else { mx[l] };
    }
    let mut m = mx[0];
    for &v in &mx[1..] {
        m = if v > m { v } else { m };
    }
    (m, nan.iter().any(|&b| b))
}

/// `Σ_i x_i²` in 8 lanes ([`fold`] order).
#[inline(always)]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l] * c[l];
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += v * v;
    }
    fold(acc)
}

/// `out[r] = Σ_i x[r·c + i]²` ([`sum_sq`]) for the rows `r < out.len()` that
/// `x` holds in full. On the AVX2 path the 8 lanes are explicit registers —
/// the same operations in the same order, so the same bits: from the scalar
/// form LLVM's SLP vectoriser built 4 × 2-lane chains (`vmovsd` loads), half
/// of `kernel_rmsnorm`'s time.
#[inline(always)]
pub(crate) fn sum_sq_rows(out: &mut [f32], x: &[f32], c: usize) {
    if c == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::cpu::elementwise_avx2() {
        for (xr, o) in x.chunks_exact(c).zip(out.iter_mut()) {
            // SAFETY: `elementwise_avx2()` is true only when AVX2 and FMA were
            // detected on this CPU, `avx2::sum_sq`'s only requirement.
            *o = unsafe { avx2::sum_sq(xr) };
        }
        return;
    }
    for (xr, o) in x.chunks_exact(c).zip(out.iter_mut()) {
        *o = sum_sq(xr);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// [`super::sum_sq`] in one `ymm`: lane `l` sums `x[8j + l]²`, the tail
    /// `x[8J + l]` joins lane `l` (a masked load: the other lanes add `+0·+0`,
    /// leaving their sums, which are ≥ +0, unchanged), folded as
    /// `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))` — bit-identical to the scalar form.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn sum_sq(x: &[f32]) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: floats i..i + 8 ≤ n of `x` are readable.
            let v = unsafe { _mm256_loadu_ps(p.add(i)) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
            i += 8;
        }
        if i < n {
            let mk = _mm256_cmpgt_epi32(
                _mm256_set1_epi32((n - i) as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            // SAFETY: the masked load touches only lanes l < n − i, i.e.
            // x[i + l] inside `x`; masked-off lanes read as +0 without access.
            let v = unsafe { _mm256_maskload_ps(p.add(i), mk) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
        }
        fold(acc)
    }

    /// [`super::fold`] of one register: `[a0+a4, a1+a5, a2+a6, a3+a7]`, then
    /// `[s0+s2, s1+s3]`, then their sum.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fold(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }
}

/// `dst_i = exp(src_i − max)` and returns `Σ_i dst_i` (8 lanes, [`fold`]
/// order). `dst`, `src`: `[len]` (the shorter length is used).
///
/// Two sweeps (the `exp` loop, then the lane sum over the row just written,
/// still in L1): the loop vectoriser handles the plain `exp` loop, while a
/// fused loop over `[f32; 8]` blocks was left scalar by the SLP vectoriser.
#[inline(always)]
pub(crate) fn exp_shift_sum(dst: &mut [f32], src: &[f32], max: f32) -> f32 {
    let n = dst.len().min(src.len());
    let dst = &mut dst[..n];
    for (d, &s) in dst.iter_mut().zip(&src[..n]) {
        *d = exp(s - max);
    }
    sum(dst)
}

/// [`exp_shift_sum`] in place: `x_i ← exp(x_i − max)`, returns `Σ_i x_i`.
#[inline(always)]
pub(crate) fn exp_shift_sum_inplace(x: &mut [f32], max: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    sum(x)
}

/// `Σ_i x_i` in 8 lanes ([`fold`] order).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += v;
    }
    fold(acc)
}

/// `x_i ← a · x_i`.
#[inline(always)]
pub(crate) fn scale(x: &mut [f32], a: f32) {
    for v in x.iter_mut() {
        *v *= a;
    }
}

/// E14/E15 — one cross-entropy row in three sweeps over `v` logits (max;
/// fused `exp` + 8-lane sum written to `dz`; scale):
/// `lse = max + ln Σ_j exp(z_j − max)`, returns `ce = lse − z[tgt]`, and writes
/// `dz_j = scale · softmax(z)_j − scale·[j = tgt]`.
/// `dz`, `z`: `[v]`; `tgt < v` (checked by the caller; panics otherwise).
#[inline(always)]
pub fn ce_row(dz: &mut [f32], z: &[f32], tgt: usize, scale: f32) -> f32 {
    let (max, _) = max_nan(z);
    let sum = exp_shift_sum(dz, z, max);
    let lse = max + libm::logf(sum);
    let ce = lse - z[tgt];
    self::scale(dz, scale / sum);
    dz[tgt] -= scale;
    ce
}

/// [`ce_row`] with `z` overwritten by `dz` (the target logit is read first):
/// the same operations in the same order, so `ce` and the gradient are
/// bit-identical to [`ce_row`]'s. `z`: `[v]`; `tgt < v` (checked by the caller).
#[inline(always)]
pub fn ce_row_inplace(z: &mut [f32], tgt: usize, scale: f32) -> f32 {
    let (max, _) = max_nan(z);
    let zt = z[tgt];
    let sum = exp_shift_sum_inplace(z, max);
    let lse = max + libm::logf(sum);
    let ce = lse - zt;
    self::scale(z, scale / sum);
    z[tgt] -= scale;
    ce
}
