//! bfloat16 storage: conversions and the one-row product on bf16 weights.
//!
//! A bf16 value is the upper 16 bits of an `f32` (sign, 8 exponent bits, 7
//! mantissa bits), held here as a `u16` bit pattern. Widening is exact:
//! `f32 = bits << 16`. Narrowing rounds to nearest, ties to even, on the bit
//! pattern — `(x + 0x7FFF + ((x >> 16) & 1)) >> 16` — which is what
//! `torch.Tensor.to(torch.bfloat16)` computes for every finite value
//! (subnormals kept, not flushed; values that round past `bf16::MAX` carry
//! into the exponent and become ±∞). A NaN stays a NaN: sign and the top
//! mantissa bits are kept and the quiet bit set, as the `half` crate does
//! (PyTorch's scalar and vector paths disagree on a NaN's payload — 0x7FC0
//! vs 0xFFFF — so no bit pattern matches both; we never produce one from a
//! finite input).
//!
//! Compute stays `f32`: weights are widened while a GEMM packs them
//! ([`crate::kernels::gemm::bf16`]) or, for one row, in registers
//! ([`gemv`]).

use crate::kernels::cpu;

/// `f32 → bf16` bits, round to nearest even (see the module docs).
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        // NaN: keep sign and payload top bits, force quiet.
        return ((b >> 16) | 0x0040) as u16;
    }
    let bias = 0x7FFF + ((b >> 16) & 1);
    (b.wrapping_add(bias) >> 16) as u16
}

/// `bf16 bits → f32`, exact.
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `f32` rounded to the nearest bf16 and widened back (`w.to(bf16).to(f32)`).
#[inline(always)]
pub fn rounded(x: f32) -> f32 {
    widen(round(x))
}

/// Whether bf16 bits are finite (exponent field not all ones).
#[inline(always)]
pub fn is_finite(b: u16) -> bool {
    b & 0x7F80 != 0x7F80
}

/// `dst[i] = round(src[i])`. Panics if the lengths differ.
pub fn round_slice(dst: &mut [u16], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "bf16::round_slice: lengths differ");
    cpu::vectorized(
        #[inline(always)]
        || {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = round(s);
            }
        },
    )
}

/// `dst[i] = widen(src[i])` (exact). Panics if the lengths differ.
///
/// AVX2: 8 values per step, `vpmovzxwd` (u16 → u32) then `vpslld 16`.
pub fn widen_slice(dst: &mut [f32], src: &[u16]) {
    assert_eq!(dst.len(), src.len(), "bf16::widen_slice: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if cpu::elementwise_avx2() {
        // SAFETY: AVX2 was detected on this CPU (`elementwise_avx2`), the only
        // requirement of `widen_avx2`; the lengths are equal (asserted).
        return unsafe { widen_avx2(dst, src) };
    }
    widen_portable(dst, src)
}

/// [`widen_slice`] in plain Rust.
#[inline(always)]
fn widen_portable(dst: &mut [f32], src: &[u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = widen(s);
    }
}

/// # Safety
/// The CPU must support AVX2; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn widen_avx2(dst: &mut [f32], src: &[u16]) {
    use core::arch::x86_64::*;
    let n = dst.len().min(src.len());
    let body = n - n % 8;
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 ≤ n ≤ both lengths: the 16-byte load reads
        // src[i..i+8] and the 32-byte store writes dst[i..i+8] (both unaligned).
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            let w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
        }
        i += 8;
    }
    widen_portable(&mut dst[body..n], &src[body..n]);
}

/// Index of the first bf16 value that is NaN or ±∞, if any.
pub fn first_non_finite(x: &[u16]) -> Option<usize> {
    cpu::vectorized(
        #[inline(always)]
        || {
            const B: usize = 64;
            for (bi, blk) in x.chunks(B).enumerate() {
                let bad = blk.iter().fold(false, |acc, &v| acc | !is_finite(v));
                if bad {
                    return blk.iter().position(|&v| !is_finite(v)).map(|i| bi * B + i);
                }
            }
            None
        },
    )
}

/// Lanes of the bf16 dot product: 8 interleaved partial sums (one `ymm`).
const LANES: usize = 8;

/// `Σ_p x[p]·widen(w[p])` over `min(len)` elements, in 8 interleaved partial
/// sums (lane `l` takes `p ≡ l mod 8`, each step one fused multiply-add
/// `s_l = fma(x_p, w_p, s_l)` in increasing `p`), reduced as
/// `((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7))`. The AVX2 path (`vfmadd`) and the
/// portable one (`f32::mul_add` / `libm::fmaf`, correctly rounded like the
/// instruction) perform the same operations in the same order, so they
/// return the same bits.
#[inline]
pub fn dot(x: &[f32], w: &[u16]) -> f32 {
    let mut out = [0.0f32];
    gemv(&mut out, x, w, x.len().min(w.len()), 0.0);
    out[0]
}

/// One-row product on bf16 weights, `y[j] = Σ_p x[p]·widen(w[j·k + p])
/// (+ β·y[j])`: `x: [k]`, `w: [y.len(), k]` (row `j` of a `[out, in]`
/// weight is output `j`), `β ∈ {0, 1}` (0: `y` is never read). The bf16 rows
/// are streamed once and widened in registers (the decoding GEMV: half the
/// bytes of an `f32` weight). Each `y[j]` is [`dot`]`(x, w_j)` bit for bit.
///
/// # Panics
/// If `x.len() < k` or `w.len() < y.len()·k`.
pub fn gemv(y: &mut [f32], x: &[f32], w: &[u16], k: usize, beta: f32) {
    let m = y.len();
    assert!(
        x.len() >= k,
        "bf16::gemv: x has {} values, needs {k}",
        x.len()
    );
    assert!(
        w.len() >= m * k,
        "bf16::gemv: w has {} values, needs {}",
        w.len(),
        m * k
    );
    let x = &x[..k];
    #[cfg(target_arch = "x86_64")]
    if cpu::elementwise_avx2() {
        // SAFETY: AVX2 was detected on this CPU (`elementwise_avx2`; the
        // test hook can only force the portable path), the only requirement of
        // `gemv_avx2`; `x.len() == k` and `w.len() >= y.len()·k` (asserted).
        return unsafe { gemv_avx2(y, x, w, k, beta) };
    }
    for (j, yj) in y.iter_mut().enumerate() {
        let s = dot_portable(x, &w[j * k..(j + 1) * k]);
        *yj = if beta == 0.0 { s } else { *yj + s };
    }
}

/// The reduction of the 8 lanes (shared by both paths).
#[inline(always)]
fn reduce(a: [f32; LANES]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// [`dot`] in plain Rust (`x.len() == w.len()`).
#[inline(always)]
fn dot_portable(x: &[f32], w: &[u16]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, wc) = (x.chunks_exact(LANES), w.chunks_exact(LANES));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (a, b) in xc.zip(wc) {
        for l in 0..LANES {
            acc[l] = fma(a[l], widen(b[l]), acc[l]);
        }
    }
    for (l, (a, &b)) in xr.iter().zip(wr).enumerate() {
        acc[l] = fma(*a, widen(b), acc[l]);
    }
    reduce(acc)
}

/// `a·b + c` with one rounding (the FMA instruction's result).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(feature = "std"))]
    {
        libm::fmaf(a, b, c)
    }
}

/// Rows of `w` per step of [`gemv_avx2`] (they share each load of `x`).
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 8;

/// # Safety
/// The CPU must support AVX2; `x.len() == k`, `w.len() >= y.len()·k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(y: &mut [f32], x: &[f32], w: &[u16], k: usize, beta: f32) {
    use core::arch::x86_64::*;
    let m = y.len();
    let body = k - k % LANES;
    let xp = x.as_ptr();
    let mut j = 0;
    // Widen 8 bf16 at `p` (16 bytes) into 8 f32.
    #[inline(always)]
    unsafe fn ld(p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable u16 at `p`.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16,
            ))
        }
    }
    let finish = |acc: __m256, row: &[u16], yj: &mut f32| {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: `lanes` holds exactly 8 floats (unaligned store).
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (l, (a, &b)) in x[body..].iter().zip(&row[body..k]).enumerate() {
            lanes[l] = fma(*a, widen(b), lanes[l]);
        }
        let s = reduce(lanes);
        *yj = if beta == 0.0 { s } else { *yj + s };
    };
    while j + ROWS <= m {
        let wp = w[j * k..].as_ptr();
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut p = 0;
        while p < body {
            // SAFETY: p + 8 ≤ k = x.len(), and row r's p..p+8 lies inside
            // w[(j+r)·k .. (j+r+1)·k] ⊂ w (j + ROWS ≤ m, w.len() ≥ m·k).
            unsafe {
                let xv = _mm256_loadu_ps(xp.add(p));
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = ld(wp.add(r * k + p));
                    *a = _mm256_fmadd_ps(xv, wv, *a);
                }
            }
            p += LANES;
        }
        for (r, &a) in acc.iter().enumerate() {
            finish(a, &w[(j + r) * k..(j + r + 1) * k], &mut y[j + r]);
        }
        j += ROWS;
    }
    while j < m {
        let wp = w[j * k..].as_ptr();
        let mut acc = _mm256_setzero_ps();
        let mut p = 0;
        while p < body {
            // SAFETY: as above, for the single row j < m.
            unsafe {
                let xv = _mm256_loadu_ps(xp.add(p));
                acc = _mm256_fmadd_ps(xv, ld(wp.add(p)), acc);
            }
            p += LANES;
        }
        finish(acc, &w[j * k..(j + 1) * k], &mut y[j]);
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_is_a_shift_and_round_trips() {
        for b in [0u16, 0x8000, 0x3F80, 0xBF80, 0x7F7F, 0x0001, 0x7F80, 0xFF80] {
            assert_eq!(widen(b).to_bits(), (b as u32) << 16);
            assert_eq!(round(widen(b)), b);
        }
        // Ties to even: 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷.
        assert_eq!(round(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(round(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(round(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(round(f32::MAX), 0x7F80); // rounds past bf16::MAX → +∞
        assert!(widen(round(f32::NAN)).is_nan());
    }

    #[test]
    fn widen_slice_paths_agree() {
        let src: [u16; 19] = core::array::from_fn(|i| (i as u16).wrapping_mul(7919) ^ 0x3F00);
        let mut a = [0.0f32; 19];
        widen_slice(&mut a, &src);
        for (x, &s) in a.iter().zip(&src) {
            assert_eq!(x.to_bits(), (s as u32) << 16);
        }
    }
}
