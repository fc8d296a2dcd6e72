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

/// Lanes of [`sum_sq_f64`]: 16 interleaved f64 partial sums, `acc[l] +=
/// x_i²` for `i ≡ l (mod 16)` (the tail `x[16J + l]` joins lane `l`). On the
/// AVX2 path they are four independent `ymm` chains: with one chain of four
/// lanes the pass was bound by the latency of `vaddpd` (one element per
/// cycle ≈ 11 GB/s, below DRAM bandwidth), and from the scalar form LLVM
/// built 2-lane `vinsertps` chains.
pub(crate) const F64_LANES: usize = 16;

/// The fold of [`sum_sq_f64`]'s partial sums by halving: `acc[l] += acc[l + w]`
/// for `w = 8, 4, 2, 1`, then `acc[0]`.
#[inline(always)]
fn fold_f64(mut acc: [f64; F64_LANES]) -> f64 {
    let mut w = F64_LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] += acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// `Σ_i x_i²` in f64 ([`F64_LANES`] lanes, [`fold_f64`] order): each term is
/// `widen(x)·widen(x)` rounded, then added (no contraction) — the same bits on
/// every path.
pub(crate) fn sum_sq_f64(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if super::cpu::elementwise_avx2() {
        // SAFETY: `elementwise_avx2()` is true only when AVX2 and FMA were
        // detected on this CPU, `avx2::sum_sq_f64`'s only requirement.
        return unsafe { avx2::sum_sq_f64(x) };
    }
    let mut acc = [0.0f64; F64_LANES];
    for (i, &v) in x.iter().enumerate() {
        acc[i % F64_LANES] += (v as f64) * (v as f64);
    }
    fold_f64(acc)
}

/// `a ← a + b` (f32), `b ← 0`, returning [`sum_sq_f64`]`(a)` of the sums in
/// the same sweep (bit-identical to the three passes) over `min(len)` elements.
pub(crate) fn add_zero_sum_sq_f64(a: &mut [f32], b: &mut [f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&mut a[..n], &mut b[..n]);
    #[cfg(target_arch = "x86_64")]
    if super::cpu::elementwise_avx2() {
        // SAFETY: as in `sum_sq_f64`; `b` has `a`'s length.
        return unsafe { avx2::add_zero_sum_sq_f64(a, b) };
    }
    let mut acc = [0.0f64; F64_LANES];
    for (i, (x, y)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
        *x += *y;
        *y = 0.0;
        acc[i % F64_LANES] += (*x as f64) * (*x as f64);
    }
    fold_f64(acc)
}

/// `out[r] = Σ_i x[r·c + i]²` ([`sum_sq`]) for the rows `r < out.len()` that
/// `x` holds in full. On the AVX2 path the 8 lanes are explicit registers —
/// the same operations in the same order, so the same bits: from the scalar
/// form LLVM's SLP vectoriser built 4 × 2-lane chains (`vmovsd` loads), half
/// of `kernel_rmsnorm`'s time. Rows go 8 at a time (`avx2::sum_sq_8rows`:
/// 8 independent chains, one transposed fold), the last `n mod 8` one by one.
#[inline(always)]
pub(crate) fn sum_sq_rows(out: &mut [f32], x: &[f32], c: usize) {
    if c == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if super::cpu::elementwise_avx2() {
        let n = out.len().min(x.len() / c);
        let (blocks, rest) = out[..n].split_at_mut(n / 8 * 8);
        for (o, xb) in blocks.chunks_exact_mut(8).zip(x.chunks_exact(8 * c)) {
            // SAFETY: `elementwise_avx2()` is true only when AVX2 and FMA were
            // detected on this CPU; `xb` holds the 8 rows of `c` floats read.
            let sums = unsafe { avx2::sum_sq_8rows(xb, c) };
            o.copy_from_slice(&sums);
        }
        for (xr, o) in x[blocks.len() * c..].chunks_exact(c).zip(rest.iter_mut()) {
            // SAFETY: as above, `avx2::sum_sq`'s only requirement.
            *o = unsafe { avx2::sum_sq(xr) };
        }
        return;
    }
    for (xr, o) in x.chunks_exact(c).zip(out.iter_mut()) {
        *o = sum_sq(xr);
    }
}

/// E8's gate, `act[r][i] = silu(h1[r][i]) · h3[r][i]` for the rows of
/// `act: [m, f]` and `h13: [m, 2f]` (row `[h1 | h3]`). On the AVX2 path four
/// registers go through `exp` together (the same operations, so the same
/// bits as the portable loop).
///
/// # Panics
/// If `f = 0`.
#[inline]
pub(crate) fn silu_mul_rows(act: &mut [f32], h13: &[f32], f: usize) {
    let rows = act.chunks_exact_mut(f).zip(h13.chunks_exact(2 * f));
    #[cfg(target_arch = "x86_64")]
    if super::cpu::elementwise_avx2() {
        if super::cpu::avx512f() {
            for (a, hr) in rows {
                let (h1, h3) = hr.split_at(f);
                // SAFETY: `avx512f()` is true only when AVX-512F was detected
                // on this CPU; `h1` and `h3` hold `f = a.len()` floats.
                unsafe { avx512::silu_mul(a, h1, h3) };
            }
            return;
        }
        for (a, hr) in rows {
            let (h1, h3) = hr.split_at(f);
            // SAFETY: `elementwise_avx2()` is true only when AVX2 and FMA were
            // detected on this CPU; `h1` and `h3` hold `f = a.len()` floats.
            unsafe { avx2::silu_mul(a, h1, h3) };
        }
        return;
    }
    for (a, hr) in rows {
        let (h1, h3) = hr.split_at(f);
        for i in 0..f {
            a[i] = super::silu(h1[i]) * h3[i];
        }
    }
}

/// SwiGLU's gate on 16-lane registers, wherever AVX-512F is present: on a
/// full-width core it doubles the arithmetic per instruction, on a
/// half-width one (Zen 4) it halves the instructions to issue for the same
/// pipe time (`dispatch_warm` 2.5 % faster there, p10 of 4 alternating
/// pairs). Every element takes exactly the operations of `avx2::silu_mul`
/// and `avx2::exp8n` (and so of the portable loop): the same bits.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use core::arch::x86_64::*;

    /// `avx2::exp8n` on `N` 16-lane registers, operation for operation (the
    /// compares give masks, the blends are mask blends, `andnot` is a
    /// zero-masked move: each lane's value is the one of the 8-lane code).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp16n<const N: usize>(x: [__m512; N]) -> [__m512; N] {
        const LOG2E: f32 = core::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const HI: f32 = 88.722_83;
        const LO: f32 = -87.336_55;
        const ROUND: f32 = 12_582_912.0;
        const C: [f32; 7] = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        let (lo, hi) = (_mm512_set1_ps(LO), _mm512_set1_ps(HI));
        let round = _mm512_set1_ps(ROUND);
        let z = _mm512_setzero_ps();
        let (mut below, mut above) = ([0 as __mmask16; N], [0 as __mmask16; N]);
        let (mut t, mut r) = ([z; N], [z; N]);
        for i in 0..N {
            below[i] = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x[i], lo);
            above[i] = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x[i], hi);
            // if x < LO {LO} else if x > HI {HI} else {x}
            let xc = _mm512_mask_blend_ps(below[i], _mm512_mask_blend_ps(above[i], x[i], hi), lo);
            t[i] = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)), round);
            let n = _mm512_sub_ps(t[i], round);
            r[i] = _mm512_sub_ps(
                _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI))),
                _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)),
            );
        }
        let mut p = [_mm512_set1_ps(1.0 / 5040.0); N];
        for c in C {
            for i in 0..N {
                p[i] = _mm512_add_ps(_mm512_mul_ps(p[i], r[i]), _mm512_set1_ps(c));
            }
        }
        let bias = _mm512_set1_epi32(127);
        let mut out = [z; N];
        for i in 0..N {
            let ni = _mm512_sub_epi32(
                _mm512_castps_si512(t[i]),
                _mm512_set1_epi32(ROUND.to_bits() as i32),
            );
            let half = _mm512_srai_epi32::<1>(ni);
            let s1 = _mm512_slli_epi32::<23>(_mm512_add_epi32(half, bias));
            let s2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_sub_epi32(ni, half), bias));
            let y = _mm512_mul_ps(
                _mm512_mul_ps(p[i], _mm512_castsi512_ps(s1)),
                _mm512_castsi512_ps(s2),
            );
            // if x > HI {+∞} else if x < LO {+0} else {y}
            let y = _mm512_maskz_mov_ps(!below[i], y);
            out[i] = _mm512_mask_blend_ps(above[i], y, _mm512_set1_ps(f32::INFINITY));
        }
        out
    }

    /// `−z` (the sign bit flipped, as `avx2`'s `xor` with `−0.0`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn neg(z: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(z),
            _mm512_set1_epi32(i32::MIN),
        ))
    }

    /// `avx2::silu_mul` on 16-lane registers: four at a time, then the tail
    /// 16 lanes at a time under a mask.
    ///
    /// # Safety
    /// AVX-512F; `h1`, `h3` at least as long as `a`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn silu_mul(a: &mut [f32], h1: &[f32], h3: &[f32]) {
        let n = a.len();
        debug_assert!(h1.len() >= n && h3.len() >= n);
        let (ap, p1, p3) = (a.as_mut_ptr(), h1.as_ptr(), h3.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i + 64 <= n {
            let mut z = [_mm512_setzero_ps(); 4];
            for (b, zb) in z.iter_mut().enumerate() {
                // SAFETY: h1[i + 16b .. i + 16b + 16] is inside `h1` (i + 64 ≤ n).
                *zb = unsafe { _mm512_loadu_ps(p1.add(i + 16 * b)) };
            }
            let e = exp16n([neg(z[0]), neg(z[1]), neg(z[2]), neg(z[3])]);
            for b in 0..4 {
                let s = _mm512_div_ps(one, _mm512_add_ps(one, e[b]));
                // SAFETY: h3 and a at i + 16b .. i + 16b + 16 are inside them.
                let y = _mm512_mul_ps(_mm512_mul_ps(z[b], s), unsafe {
                    _mm512_loadu_ps(p3.add(i + 16 * b))
                });
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(ap.add(i + 16 * b), y) };
            }
            i += 64;
        }
        while i < n {
            let lanes = (n - i).min(16);
            let mk: __mmask16 = if lanes == 16 {
                0xFFFF
            } else {
                ((1u32 << lanes) - 1) as __mmask16
            };
            // SAFETY: the masked loads/store touch only index i + l < n of
            // each slice (lanes l < lanes); masked-off lanes are not accessed.
            let z = unsafe { _mm512_maskz_loadu_ps(mk, p1.add(i)) };
            let s = _mm512_div_ps(one, _mm512_add_ps(one, exp16n([neg(z)])[0]));
            // SAFETY: as above.
            let y = _mm512_mul_ps(_mm512_mul_ps(z, s), unsafe {
                _mm512_maskz_loadu_ps(mk, p3.add(i))
            });
            // SAFETY: as above.
            unsafe { _mm512_mask_storeu_ps(ap.add(i), mk, y) };
            i += 16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use core::arch::x86_64::*;

    /// Lanes `l < n` set (all ones), the others clear; `n ≤ 8`: the mask of
    /// a row's tail for masked loads and stores (here and in `attn`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::kernels) fn first_lanes(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

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
            let mk = first_lanes(n - i);
            // SAFETY: the masked load touches only lanes l < n − i, i.e.
            // x[i + l] inside `x`; masked-off lanes read as +0 without access.
            let v = unsafe { _mm256_maskload_ps(p.add(i), mk) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(v, v));
        }
        fold(acc)
    }

    /// [`super::sum_sq`] of the 8 rows of `x: [8, c]` at once: row `q`'s
    /// lanes are register `q`, fed exactly as in [`sum_sq`] (8 chains in
    /// flight instead of one), and the 8 folds run together on transposed
    /// registers, each addition the one of [`super::fold`]: `s_l = a_l +
    /// a_{l+4}`, then `(s_0 + s_2) + (s_1 + s_3)` — the same bits as 8 calls
    /// of [`sum_sq`], without 8 serial horizontal reductions.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    ///
    /// # Panics
    /// If `x` holds fewer than `8c` floats (checked before any load).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn sum_sq_8rows(x: &[f32], c: usize) -> [f32; 8] {
        assert!(x.len() >= 8 * c, "sum_sq_8rows: 8 rows of {c}");
        let p = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 8 <= c {
            for (q, a) in acc.iter_mut().enumerate() {
                // SAFETY: floats q·c + i .. q·c + i + 8 ≤ 8c of `x` are readable.
                let v = unsafe { _mm256_loadu_ps(p.add(q * c + i)) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(v, v));
            }
            i += 8;
        }
        if i < c {
            let mk = first_lanes(c - i);
            for (q, a) in acc.iter_mut().enumerate() {
                // SAFETY: lanes l < c − i only, x[q·c + i + l] inside `x`;
                // masked-off lanes read as +0 (sums ≥ +0 stay unchanged).
                let v = unsafe { _mm256_maskload_ps(p.add(q * c + i), mk) };
                *a = _mm256_add_ps(*a, _mm256_mul_ps(v, v));
            }
        }
        // [R_p | R_q] → [s(R_p) | s(R_q)], s_l = a_l + a_{l+4} (l < 4).
        let halves = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        };
        // Per 128-bit half: [s0, s1 | t0, t1] + [s2, s3 | t2, t3] of rows a, b.
        let pairs = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_shuffle_ps::<0x44>(a, b),
                _mm256_shuffle_ps::<0xEE>(a, b),
            )
        };
        let (t0, t1) = (halves(acc[0], acc[4]), halves(acc[1], acc[5]));
        let (t2, t3) = (halves(acc[2], acc[6]), halves(acc[3], acc[7]));
        let (u01, u23) = (pairs(t0, t1), pairs(t2, t3));
        // (s0 + s2) + (s1 + s3): lanes [rows 0, 1, 2, 3 | rows 4, 5, 6, 7].
        let sums = _mm256_add_ps(
            _mm256_shuffle_ps::<0x88>(u01, u23),
            _mm256_shuffle_ps::<0xDD>(u01, u23),
        );
        let mut out = [0.0f32; 8];
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
        out
    }

    /// [`super::sum_sq_f64`]: lanes `4j..4j + 4` of the 16 are register `j`,
    /// fed by `x[16i + 4j + q]`; the tail joins lanes `0..` in scalar code;
    /// then the portable fold. The same widening, f64 mul and f64 add per
    /// element as the portable loop.
    ///
    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn sum_sq_f64(x: &[f32]) -> f64 {
        // SAFETY: `x.len()` floats from its start are readable; nothing is written.
        unsafe { sum_sq_f64_body(x.len(), x.as_ptr(), None) }
    }

    /// [`super::add_zero_sum_sq_f64`]: `a ← a + b`, `b ← 0` element by
    /// element (f32 add), then as [`sum_sq_f64`] over the sums.
    ///
    /// # Safety
    /// The CPU supports AVX2; `b` has `a`'s length.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn add_zero_sum_sq_f64(a: &mut [f32], b: &mut [f32]) -> f64 {
        debug_assert_eq!(a.len(), b.len());
        let pa = a.as_mut_ptr();
        // SAFETY: `a` and `b` are distinct `&mut` slices of `a.len()` floats
        // each (the caller's contract); both are read and written only
        // through these pointers while the body runs.
        unsafe { sum_sq_f64_body(a.len(), pa, Some((pa, b.as_mut_ptr()))) }
    }

    /// The loop of both: reads `src[..n]`; with `add = Some((a, b))` (and
    /// `src == a`) first stores `a[k] + b[k]` into `a[k]` and `0` into `b[k]`.
    ///
    /// # Safety
    /// AVX2; `src[..n]` readable; with `add`, `a == src` and `b` are writable
    /// for `n` floats and do not overlap.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn sum_sq_f64_body(n: usize, src: *const f32, add: Option<(*mut f32, *mut f32)>) -> f64 {
        let mut acc = [_mm256_setzero_pd(); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (j, r) in acc.iter_mut().enumerate() {
                let o = i + 4 * j;
                // SAFETY: floats o..o + 4 ≤ n are in bounds of `src` (and of
                // `a`, `b`), per the contract above.
                let v = unsafe {
                    match add {
                        Some((a, b)) => {
                            let s = _mm_add_ps(_mm_loadu_ps(src.add(o)), _mm_loadu_ps(b.add(o)));
                            _mm_storeu_ps(a.add(o), s);
                            _mm_storeu_ps(b.add(o), _mm_setzero_ps());
                            s
                        }
                        None => _mm_loadu_ps(src.add(o)),
                    }
                };
                let d = _mm256_cvtps_pd(v);
                *r = _mm256_add_pd(*r, _mm256_mul_pd(d, d));
            }
            i += 16;
        }
        let mut lanes = [0.0f64; super::F64_LANES];
        for (j, r) in acc.iter().enumerate() {
            // SAFETY: lanes 4j..4j + 4 ≤ 16 of the array.
            unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * j), *r) };
        }
        for (l, k) in (i..n).enumerate() {
            // SAFETY: k < n, in bounds per the contract above.
            let v = unsafe {
                match add {
                    Some((a, b)) => {
                        let s = *src.add(k) + *b.add(k);
                        *a.add(k) = s;
                        *b.add(k) = 0.0;
                        s
                    }
                    None => *src.add(k),
                }
            };
            lanes[l] += (v as f64) * (v as f64);
        }
        super::fold_f64(lanes)
    }

    /// [`super::super::exp`] on 8 lanes, the same operations in the same order:
    /// clamp to `[LO, HI]` by two selects (NaN passes), `t = xc·log₂e + 1.5·2²³`,
    /// `n = t − 1.5·2²³`, `r = (xc − n·ln2_hi) − n·ln2_lo`, the degree-7 Horner
    /// polynomial (multiply, then add), `2ⁿ` as two exponent-field factors
    /// from `t`'s bits, `y = (p·s1)·s2`; then `+∞` above `HI`, `0` below `LO`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::kernels) fn exp8(x: __m256) -> __m256 {
        exp8n([x])[0]
    }

    /// [`exp8`] of `N` registers, written step by step across them: the `N`
    /// dependency chains (about 25 operations each) are interleaved in program
    /// order, so the out-of-order window holds independent work instead of
    /// one chain's waiting operations.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(in crate::kernels) fn exp8n<const N: usize>(x: [__m256; N]) -> [__m256; N] {
        const LOG2E: f32 = core::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        const HI: f32 = 88.722_83;
        const LO: f32 = -87.336_55;
        const ROUND: f32 = 12_582_912.0;
        const C: [f32; 7] = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        let (lo, hi) = (_mm256_set1_ps(LO), _mm256_set1_ps(HI));
        let round = _mm256_set1_ps(ROUND);
        let z = _mm256_setzero_ps();
        let (mut below, mut above, mut t, mut r) = ([z; N], [z; N], [z; N], [z; N]);
        for i in 0..N {
            below[i] = _mm256_cmp_ps::<_CMP_LT_OQ>(x[i], lo);
            above[i] = _mm256_cmp_ps::<_CMP_GT_OQ>(x[i], hi);
            // if x < LO {LO} else if x > HI {HI} else {x}
            let xc = _mm256_blendv_ps(_mm256_blendv_ps(x[i], hi, above[i]), lo, below[i]);
            t[i] = _mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), round);
            let n = _mm256_sub_ps(t[i], round);
            r[i] = _mm256_sub_ps(
                _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
                _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
            );
        }
        let mut p = [_mm256_set1_ps(1.0 / 5040.0); N];
        for c in C {
            for i in 0..N {
                p[i] = _mm256_add_ps(_mm256_mul_ps(p[i], r[i]), _mm256_set1_ps(c));
            }
        }
        let bias = _mm256_set1_epi32(127);
        let mut out = [z; N];
        for i in 0..N {
            let ni = _mm256_sub_epi32(
                _mm256_castps_si256(t[i]),
                _mm256_set1_epi32(ROUND.to_bits() as i32),
            );
            let half = _mm256_srai_epi32::<1>(ni);
            let s1 = _mm256_slli_epi32::<23>(_mm256_add_epi32(half, bias));
            let s2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias));
            let y = _mm256_mul_ps(
                _mm256_mul_ps(p[i], _mm256_castsi256_ps(s1)),
                _mm256_castsi256_ps(s2),
            );
            // if x > HI {+∞} else if x < LO {0} else {y}
            let y = _mm256_andnot_ps(below[i], y);
            out[i] = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), above[i]);
        }
        out
    }

    /// E8's gate on one row, `a_i = (z_i · (1 / (1 + exp(−z_i)))) · h3_i` with
    /// `z = h1` — `silu(z) · h3` in [`super::super::silu`]'s operations — four
    /// registers at a time ([`exp8n`]), the tail `len mod 8` masked.
    ///
    /// # Safety
    /// AVX2 + FMA; `h1`, `h3` at least as long as `a`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn silu_mul(a: &mut [f32], h1: &[f32], h3: &[f32]) {
        let n = a.len();
        debug_assert!(h1.len() >= n && h3.len() >= n);
        let (ap, p1, p3) = (a.as_mut_ptr(), h1.as_ptr(), h3.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i + 32 <= n {
            let mut z = [_mm256_setzero_ps(); 4];
            for (b, zb) in z.iter_mut().enumerate() {
                // SAFETY: h1[i + 8b .. i + 8b + 8] is inside `h1` (i + 32 ≤ n).
                *zb = unsafe { _mm256_loadu_ps(p1.add(i + 8 * b)) };
            }
            let e = exp8n([
                _mm256_xor_ps(z[0], sign),
                _mm256_xor_ps(z[1], sign),
                _mm256_xor_ps(z[2], sign),
                _mm256_xor_ps(z[3], sign),
            ]);
            for b in 0..4 {
                let s = _mm256_div_ps(one, _mm256_add_ps(one, e[b]));
                // SAFETY: h3 and a at i + 8b .. i + 8b + 8 are inside them.
                let y = _mm256_mul_ps(_mm256_mul_ps(z[b], s), unsafe {
                    _mm256_loadu_ps(p3.add(i + 8 * b))
                });
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(ap.add(i + 8 * b), y) };
            }
            i += 32;
        }
        while i < n {
            let mk = first_lanes((n - i).min(8));
            // SAFETY: the masked loads/store touch only index i + l < n of
            // each slice (lanes l < min(8, n − i)).
            let z = unsafe { _mm256_maskload_ps(p1.add(i), mk) };
            let s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(z, sign))));
            // SAFETY: as above.
            let y = _mm256_mul_ps(_mm256_mul_ps(z, s), unsafe {
                _mm256_maskload_ps(p3.add(i), mk)
            });
            // SAFETY: as above.
            unsafe { _mm256_maskstore_ps(ap.add(i), mk, y) };
            i += 8;
        }
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

#[cfg(all(test, target_arch = "x86_64", feature = "std"))]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    /// The gate's three x86 instances — 16-lane, 8-lane, plain — give the
    /// same bits for every length (the 64-float body, the masked tails) and
    /// for the clamp and special inputs of `exp`.
    #[test]
    fn silu_mul_is_bit_identical_on_avx512_avx2_and_portable() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let wide = std::is_x86_feature_detected!("avx512f");
        let specials = [
            0.0f32,
            -0.0,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            88.8,
            -87.4,
            100.0,
            -100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 24.0 - 12.0
        };
        for n in [1usize, 7, 15, 16, 17, 31, 63, 64, 65, 100, 129, 256] {
            let mut h1: Vec<f32> = (0..n).map(|_| next()).collect();
            let h3: Vec<f32> = (0..n).map(|_| next()).collect();
            for (i, s) in specials.iter().enumerate() {
                if i < n {
                    h1[(i * 7) % n] = *s;
                }
            }
            // Every NaN as the canonical one: Rust leaves the payload and sign
            // of a NaN computed from NaNs unspecified (LLVM may commute a·b).
            let bits = |v: &[f32]| -> Vec<u32> {
                v.iter()
                    .map(|x| {
                        if x.is_nan() {
                            f32::NAN.to_bits()
                        } else {
                            x.to_bits()
                        }
                    })
                    .collect()
            };
            let want: Vec<f32> = h1
                .iter()
                .zip(&h3)
                .map(|(&z, &h)| super::super::silu(z) * h)
                .collect();
            let want = bits(&want);
            let mut a2 = vec![f32::NAN; n];
            // SAFETY: AVX2 and FMA detected above; h1, h3 hold n floats.
            unsafe { super::avx2::silu_mul(&mut a2, &h1, &h3) };
            assert_eq!(bits(&a2), want, "avx2, n {n}");
            if wide {
                let mut a5 = vec![f32::NAN; n];
                // SAFETY: AVX-512F detected above; h1, h3 hold n floats.
                unsafe { super::avx512::silu_mul(&mut a5, &h1, &h3) };
                assert_eq!(bits(&a5), want, "avx512, n {n}");
            }
        }
    }
}
