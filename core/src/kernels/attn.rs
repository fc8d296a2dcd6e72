//! Attention's per-row kernels (E10, E33) in explicit AVX2, bit-identical to
//! the portable loops of [`crate::attention`].
//!
//! For one query row `q: [d]` over `nk` keys/values (rows of a strided
//! store, `k_j = k[j·stride ..][..d]`):
//! ```text
//! scores:  s_j = fold(lanes(q·k_j)) · scale   (dot_body's 8 lane partials, then its fold)
//! softmax: p = exp(s − max s) / Σ exp(s − max s)   (softmax::forward_row's three sweeps)
//! pv:      o = Σ_j p_j v_j, from 0, in key order    (the portable PV loop)
//! ```
//! Every value is computed by the same IEEE operations in the same order as
//! the portable code (no FMA contraction, no reassociation); only the
//! vectorisation differs:
//! * scores are taken 8 keys at a time, each key's 8 lane partials in one
//!   register (`acc_j[l] = Σ_m q[8m+l]·k_j[8m+l]`, the tail `d mod 8` as a
//!   masked load whose other lanes add `+0·+0`), then the 8 registers are
//!   transposed while folding (`((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))` per
//!   key), so the 8 scores come out in one register;
//! * the softmax's tail lanes (`nk mod 8`) are masked: `−∞` for the max,
//!   `+0` for the sum (a lane sum is never `−0`, so adding `+0` changes
//!   nothing);
//! * `exp` is [`super::exp`]'s operation sequence on 8 lanes.
//!
//! The autovectoriser had left the portable forms scalar (the `[[f32; 8]; 8]`
//! score accumulators lived on the stack, one `vmulss`/`vaddss`/`vmovss` per
//! element) and ran every row's `exp` tail as scalar code.

#[cfg(target_arch = "x86_64")]
pub(crate) use imp::Avx2;

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::super::rows::avx2::{exp8, exp8n, first_lanes};
    use core::arch::x86_64::*;

    /// A token that this thread's elementwise kernels run on AVX2 + FMA
    /// ([`super::super::cpu::elementwise_avx2`]); only [`Avx2::new`] makes one,
    /// so holding it proves the CPU has the features the kernels need.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2(());

    /// `Err` text of the bounds checks (a caller bug, never user input: the
    /// callers size every slice from checked shapes).
    const SHORT: &str = "attention row kernel: slice shorter than its shape";

    /// Keys up to which [`Avx2::row_small`] keeps a row in registers (four).
    pub(crate) const SMALL: usize = 32;

    impl Avx2 {
        /// The token, if this thread's elementwise kernels take the AVX2 path.
        #[inline]
        pub(crate) fn new() -> Option<Self> {
            super::super::cpu::elementwise_avx2().then_some(Avx2(()))
        }

        /// Runs `f` inside the AVX2 + FMA instance (so that the row kernels
        /// it calls inline into one function).
        #[inline(always)]
        pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> R {
            // SAFETY: an `Avx2` exists only if AVX2 and FMA were detected on
            // this CPU (`new`), `clone`'s only requirement.
            unsafe { clone(f) }
        }

        /// `out[j] = (q·k_j) · scale` for `j < out.len()`, `k_j = k[j·stride..][..q.len()]`,
        /// bit-identical to `dot_body(q, k_j) * scale`.
        ///
        /// # Panics
        /// If `k` is shorter than the last key's row.
        #[inline(always)]
        pub(crate) fn scores(
            self,
            out: &mut [f32],
            q: &[f32],
            k: &[f32],
            stride: usize,
            scale: f32,
        ) {
            let nk = out.len();
            if nk == 0 {
                return;
            }
            assert!(
                (nk - 1)
                    .checked_mul(stride)
                    .and_then(|x| x.checked_add(q.len()))
                    .is_some_and(|end| end <= k.len()),
                "{SHORT}"
            );
            // SAFETY: the token proves AVX2 + FMA; key rows `j < nk` end at
            // `(nk−1)·stride + d ≤ k.len()` (checked above), `out` and `q`
            // are read/written within their lengths.
            unsafe { scores(out, q, k.as_ptr(), stride, scale) }
        }

        /// `softmax::forward_row` (E1 in place on `x`, same operations, same
        /// order) that also returns the row max `m` and `u = 1/Σ exp(x − m)`
        /// as `flash::softmax_stats` does: `(ok, m, u)`, `ok = false` for a
        /// row that is not a distribution (NaN: row set to NaN, `m = u = NaN`;
        /// all `−∞`: row set to `0`, `u = 0`; a `+∞`: `m = +∞`).
        #[inline(always)]
        pub(crate) fn softmax(self, x: &mut [f32]) -> (bool, f32, f32) {
            // SAFETY: the token proves AVX2 + FMA; `x` is read/written within
            // its length.
            let (max, nan) = unsafe { max_nan(x) };
            if nan {
                x.iter_mut().for_each(|v| *v = f32::NAN);
                return (false, f32::NAN, f32::NAN);
            }
            if max == f32::NEG_INFINITY {
                x.iter_mut().for_each(|v| *v = 0.0);
                return (false, max, 0.0);
            }
            // SAFETY: as above.
            let sum = unsafe { exp_shift_sum(x, max) };
            let inv = 1.0 / sum;
            // SAFETY: as above.
            unsafe { scale(x, inv) };
            (max.is_finite(), max, inv)
        }

        /// `o = Σ_j p_j v_j` over `j < p.len()` from `0`, in key order
        /// (`v_j = v[j·stride..][..o.len()]`); overwrites `o`.
        ///
        /// # Panics
        /// If `v` is shorter than the last value's row.
        #[inline(always)]
        pub(crate) fn pv(self, o: &mut [f32], p: &[f32], v: &[f32], stride: usize) {
            let nk = p.len();
            if nk > 0 {
                assert!(
                    (nk - 1)
                        .checked_mul(stride)
                        .and_then(|x| x.checked_add(o.len()))
                        .is_some_and(|end| end <= v.len()),
                    "{SHORT}"
                );
            }
            // SAFETY: the token proves AVX2 + FMA; value rows `j < nk` end at
            // `(nk−1)·stride + d ≤ v.len()` (checked above; none is read
            // when `nk = 0`), `o` and `p` are accessed within their lengths.
            unsafe { pv(o, p, v.as_ptr(), stride) }
        }

        /// One query row of `nk ≤ SMALL` keys (`k_j`, `v_j` at `j·stride`) on
        /// registers: the scores ([`Avx2::scores`]), the softmax
        /// ([`Avx2::softmax`]) and the PV product ([`Avx2::pv`]) with no pass
        /// over memory in between (and no narrow store re-read as a vector) —
        /// the same operations in the same order, so the same bits.
        /// Writes `o` and, with `p_out: [nk]`, the probabilities; returns the
        /// row's `(m, u)`. Returns `None` (nothing written) when `nk = 0` or
        /// `nk > SMALL`, or the row is not an ordinary distribution (a NaN
        /// score or a non-finite max): the caller then takes the three-step
        /// path, which handles those rows.
        ///
        /// # Panics
        /// If `k` or `v` is shorter than the last key's or value's row.
        #[allow(clippy::too_many_arguments)]
        // reason: one row's operands: output, probabilities, q, keys, values, their stride, key count, scale
        #[inline(always)]
        pub(crate) fn row_small(
            self,
            o: &mut [f32],
            p_out: Option<&mut [f32]>,
            q: &[f32],
            k: &[f32],
            v: &[f32],
            stride: usize,
            nk: usize,
            scale: f32,
        ) -> Option<(f32, f32)> {
            if nk == 0 || nk > SMALL {
                return None;
            }
            let end = (nk - 1).checked_mul(stride);
            let fits =
                |len: usize, w: usize| end.and_then(|e| e.checked_add(w)).is_some_and(|e| e <= len);
            assert!(fits(k.len(), q.len()) && fits(v.len(), o.len()), "{SHORT}");
            if let Some(p) = &p_out {
                assert!(p.len() == nk, "{SHORT}");
            }
            // SAFETY: the token proves AVX2 + FMA; key rows `j < nk` end at
            // `(nk−1)·stride + d ≤ k.len()` and value rows at
            // `(nk−1)·stride + o.len() ≤ v.len()` (checked above); `p_out`
            // holds `nk` floats.
            unsafe {
                let (kp, vp) = (k.as_ptr(), v.as_ptr());
                match nk.div_ceil(8) {
                    1 => row_small::<1>(o, p_out, q, kp, vp, stride, nk, scale),
                    2 => row_small::<2>(o, p_out, q, kp, vp, stride, nk, scale),
                    3 => row_small::<3>(o, p_out, q, kp, vp, stride, nk, scale),
                    _ => row_small::<4>(o, p_out, q, kp, vp, stride, nk, scale),
                }
            }
        }

        /// [`Avx2::row_small`] for two query rows `qa`, `qb` over the same
        /// keys and values (two heads of one KV group at one position): their
        /// chains interleaved (one `exp` over both rows' registers, the PV sums
        /// of both rows in one pass over the values), each row's values the
        /// same bits as alone. Returns `None` (nothing written) where
        /// `row_small` would for either row.
        ///
        /// # Panics
        /// As [`Avx2::row_small`].
        #[allow(clippy::too_many_arguments)] // reason: two rows' operands and the shared keys/values
        #[inline(always)]
        pub(crate) fn rows_small2(
            self,
            o: [&mut [f32]; 2],
            p_out: Option<[&mut [f32]; 2]>,
            q: [&[f32]; 2],
            k: &[f32],
            v: &[f32],
            stride: usize,
            nk: usize,
            scale: f32,
        ) -> Option<[(f32, f32); 2]> {
            if nk == 0 || nk > SMALL {
                return None;
            }
            let d = q[0].len();
            let end = (nk - 1).checked_mul(stride);
            let fits =
                |len: usize, w: usize| end.and_then(|e| e.checked_add(w)).is_some_and(|e| e <= len);
            assert!(
                q[1].len() == d
                    && o[0].len() == o[1].len()
                    && fits(k.len(), d)
                    && fits(v.len(), o[0].len()),
                "{SHORT}"
            );
            if let Some(p) = &p_out {
                assert!(p[0].len() == nk && p[1].len() == nk, "{SHORT}");
            }
            // SAFETY: the token proves AVX2 + FMA; key rows `j < nk` end at
            // `(nk−1)·stride + d ≤ k.len()` and value rows at
            // `(nk−1)·stride + o.len() ≤ v.len()` (checked above, for both
            // rows' equal widths); each `p_out` holds `nk` floats.
            unsafe {
                let (kp, vp) = (k.as_ptr(), v.as_ptr());
                match nk.div_ceil(8) {
                    1 => rows_small2::<1, 2>(o, p_out, q, kp, vp, stride, nk, scale),
                    2 => rows_small2::<2, 4>(o, p_out, q, kp, vp, stride, nk, scale),
                    3 => rows_small2::<3, 6>(o, p_out, q, kp, vp, stride, nk, scale),
                    _ => rows_small2::<4, 8>(o, p_out, q, kp, vp, stride, nk, scale),
                }
            }
        }

        /// [`super::super::exp`] on 8 lanes (test hook for the bit-identity test).
        #[cfg(test)]
        pub(crate) fn exp8(self, x: [f32; 8]) -> [f32; 8] {
            let mut out = [0.0f32; 8];
            // SAFETY: the token proves AVX2 + FMA; both arrays hold 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
            out
        }
    }

    /// The AVX2 + FMA instance of [`Avx2::run`]'s closure.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn clone<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    /// [`Avx2::scores`] on raw parts.
    ///
    /// # Safety
    /// AVX2 + FMA; `k + j·stride .. + q.len()` readable for `j < out.len()`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn scores(out: &mut [f32], q: &[f32], k: *const f32, stride: usize, scale: f32) {
        let (nk, d) = (out.len(), q.len());
        let (full, r) = (d / 8 * 8, d % 8);
        let tail = first_lanes(r);
        // q's tail in the lanes l < r, +0 elsewhere.
        // SAFETY: the masked load reads only q[full + l], l < r, inside `q`.
        let qt = unsafe { _mm256_maskload_ps(q.as_ptr().add(full), tail) };
        let sc = _mm256_set1_ps(scale);
        let mut j = 0;
        while j < nk {
            let n = (nk - j).min(8);
            // Keys j .. j + n; the lanes past n repeat the last key (read,
            // computed, not stored).
            let mut kp = [k; 8];
            for (jj, p) in kp.iter_mut().enumerate() {
                // SAFETY: j + min(jj, n − 1) < nk, a key row inside `k`.
                *p = unsafe { k.add((j + jj.min(n - 1)) * stride) };
            }
            // SAFETY: each kp[jj] is a key row of d readable floats.
            let s = unsafe { dot8(q, full, r, qt, tail, &kp) };
            let s = _mm256_mul_ps(s, sc);
            if n == 8 {
                // SAFETY: out[j .. j + 8] is inside `out` (j + 8 ≤ nk).
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j), s) };
            } else {
                let mut tmp = [0.0f32; 8];
                // SAFETY: `tmp` holds 8 floats.
                unsafe { _mm256_storeu_ps(tmp.as_mut_ptr(), s) };
                out[j..j + n].copy_from_slice(&tmp[..n]);
            }
            j += n;
        }
    }

    /// [`Avx2::row_small`] with `NB = ⌈nk/8⌉` score registers.
    ///
    /// # Safety
    /// AVX2 + FMA; `1 ≤ nk ≤ 8·NB`, `nk > 8·(NB−1)`; key rows
    /// `k + j·stride .. + q.len()` and value rows `v + j·stride .. + o.len()`
    /// readable for `j < nk`; `p_out`, if any, holds `nk` floats.
    #[allow(clippy::too_many_arguments)] // reason: [`Avx2::row_small`]'s operands on raw parts
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn row_small<const NB: usize>(
        o: &mut [f32],
        p_out: Option<&mut [f32]>,
        q: &[f32],
        k: *const f32,
        v: *const f32,
        stride: usize,
        nk: usize,
        scale: f32,
    ) -> Option<(f32, f32)> {
        let d = q.len();
        let (full, r) = (d / 8 * 8, d % 8);
        let tail = first_lanes(r);
        // SAFETY: the masked load reads only q[full + l], l < r, inside `q`.
        let qt = unsafe { _mm256_maskload_ps(q.as_ptr().add(full), tail) };
        let sc = _mm256_set1_ps(scale);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        // Scores, 8 keys per register; the lanes past nk are −∞ (they leave
        // the max alone and give exp = +0, which leaves the sum alone).
        let mut s = [ninf; NB];
        for (b, sb) in s.iter_mut().enumerate() {
            let j = 8 * b;
            let n = (nk - j).min(8);
            let mut kp = [k; 8];
            for (jj, p) in kp.iter_mut().enumerate() {
                // SAFETY: j + min(jj, n − 1) < nk, a key row.
                *p = unsafe { k.add((j + jj.min(n - 1)) * stride) };
            }
            // SAFETY: each kp[jj] is a key row of d readable floats.
            let x = _mm256_mul_ps(unsafe { dot8(q, full, r, qt, tail, &kp) }, sc);
            *sb = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(first_lanes(n)));
        }
        // rows::max_nan: lane maxima in register order, then the lanes in order.
        let (mut mx, mut nan) = (ninf, _mm256_setzero_ps());
        for &sb in &s {
            mx = _mm256_max_ps(sb, mx);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(sb, sb));
        }
        if _mm256_movemask_ps(nan) != 0 {
            return None;
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
        let mut m = lanes[0];
        for &x in &lanes[1..] {
            m = if x > m { x } else { m };
        }
        if !m.is_finite() {
            return None;
        }
        // exp(s − m), its 8-lane sum in register order, the fold, 1/Σ, scale.
        let mv = _mm256_set1_ps(m);
        let mut x = [ninf; NB];
        for (xb, &sb) in x.iter_mut().zip(&s) {
            *xb = _mm256_sub_ps(sb, mv);
        }
        let e = exp8n(x);
        let mut acc = _mm256_setzero_ps();
        for &eb in &e {
            acc = _mm256_add_ps(acc, eb);
        }
        let inv = 1.0 / fold(acc);
        let iv = _mm256_set1_ps(inv);
        let mut buf = [0.0f32; SMALL];
        for (b, &eb) in e.iter().enumerate() {
            // SAFETY: 8b + 8 ≤ 8·NB ≤ SMALL floats of `buf`.
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr().add(8 * b), _mm256_mul_ps(eb, iv)) };
        }
        let p = &buf[..nk];
        if let Some(out) = p_out {
            out.copy_from_slice(p);
        }
        // SAFETY: value rows j < nk = p.len() are readable (the caller's contract).
        unsafe { pv(o, p, v, stride) };
        Some((m, inv))
    }

    /// [`Avx2::rows_small2`] with `NB = ⌈nk/8⌉` score registers per row and
    /// `N2 = 2·NB`.
    ///
    /// # Safety
    /// As [`row_small`], for both rows (`q[0]`, `q[1]` of one width `d`,
    /// `o[0]`, `o[1]` of one width).
    #[allow(clippy::too_many_arguments)] // reason: [`Avx2::rows_small2`]'s operands on raw parts
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn rows_small2<const NB: usize, const N2: usize>(
        o: [&mut [f32]; 2],
        p_out: Option<[&mut [f32]; 2]>,
        q: [&[f32]; 2],
        k: *const f32,
        v: *const f32,
        stride: usize,
        nk: usize,
        scale: f32,
    ) -> Option<[(f32, f32); 2]> {
        let d = q[0].len();
        let (full, r) = (d / 8 * 8, d % 8);
        let tail = first_lanes(r);
        // SAFETY: the masked loads read only q[row][full + l], l < r.
        let qt = unsafe {
            [
                _mm256_maskload_ps(q[0].as_ptr().add(full), tail),
                _mm256_maskload_ps(q[1].as_ptr().add(full), tail),
            ]
        };
        let sc = _mm256_set1_ps(scale);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        // Both rows' scores: registers 0..NB row a, NB..2NB row b.
        let mut s = [ninf; N2];
        for b in 0..NB {
            let j = 8 * b;
            let n = (nk - j).min(8);
            let mut kp = [k; 8];
            for (jj, p) in kp.iter_mut().enumerate() {
                // SAFETY: j + min(jj, n − 1) < nk, a key row.
                *p = unsafe { k.add((j + jj.min(n - 1)) * stride) };
            }
            let live = _mm256_castsi256_ps(first_lanes(n));
            for row in 0..2 {
                // SAFETY: each kp[jj] is a key row of d readable floats.
                let x = _mm256_mul_ps(unsafe { dot8(q[row], full, r, qt[row], tail, &kp) }, sc);
                s[row * NB + b] = _mm256_blendv_ps(ninf, x, live);
            }
        }
        let mut m = [0.0f32; 2];
        for row in 0..2 {
            let (mut mx, mut nan) = (ninf, _mm256_setzero_ps());
            for &sb in &s[row * NB..(row + 1) * NB] {
                mx = _mm256_max_ps(sb, mx);
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(sb, sb));
            }
            if _mm256_movemask_ps(nan) != 0 {
                return None;
            }
            let mut lanes = [0.0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
            let mut mr = lanes[0];
            for &x in &lanes[1..] {
                mr = if x > mr { x } else { mr };
            }
            if !mr.is_finite() {
                return None;
            }
            m[row] = mr;
        }
        let mut x = [ninf; N2];
        for (i, xi) in x.iter_mut().enumerate() {
            *xi = _mm256_sub_ps(s[i], _mm256_set1_ps(m[i / NB]));
        }
        let e = exp8n(x);
        let mut inv = [0.0f32; 2];
        let mut buf = [[0.0f32; SMALL]; 2];
        for row in 0..2 {
            let mut acc = _mm256_setzero_ps();
            for &eb in &e[row * NB..(row + 1) * NB] {
                acc = _mm256_add_ps(acc, eb);
            }
            inv[row] = 1.0 / fold(acc);
            let iv = _mm256_set1_ps(inv[row]);
            for b in 0..NB {
                // SAFETY: 8b + 8 ≤ 8·NB ≤ SMALL floats of `buf[row]`.
                unsafe {
                    _mm256_storeu_ps(
                        buf[row].as_mut_ptr().add(8 * b),
                        _mm256_mul_ps(e[row * NB + b], iv),
                    )
                };
            }
        }
        if let Some([pa, pb]) = p_out {
            pa.copy_from_slice(&buf[0][..nk]);
            pb.copy_from_slice(&buf[1][..nk]);
        }
        // SAFETY: value rows j < nk are readable (the caller's contract).
        unsafe { pv2(o, [&buf[0][..nk], &buf[1][..nk]], v, stride) };
        Some([(m[0], inv[0]), (m[1], inv[1])])
    }

    /// [`pv`] of two rows over the same values (`p[0]`, `p[1]` of one length,
    /// `o[0]`, `o[1]` of one width): each value block is loaded once and feeds
    /// both rows' sums, each sum still from `+0` in key order.
    ///
    /// # Safety
    /// AVX2 + FMA; `v + j·stride .. + o[0].len()` readable for `j < p[0].len()`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn pv2(o: [&mut [f32]; 2], p: [&[f32]; 2], v: *const f32, stride: usize) {
        let d = o[0].len();
        let nk = p[0].len();
        let op = [o[0].as_mut_ptr(), o[1].as_mut_ptr()];
        let mut c = 0;
        while c + 16 <= d {
            let mut acc = [_mm256_setzero_ps(); 4];
            for j in 0..nk {
                let (pa, pb) = (_mm256_set1_ps(p[0][j]), _mm256_set1_ps(p[1][j]));
                // SAFETY: v_j[c .. c + 16] is inside value row j (c + 16 ≤ d).
                let (x0, x1) = unsafe {
                    let vj = v.add(j * stride + c);
                    (_mm256_loadu_ps(vj), _mm256_loadu_ps(vj.add(8)))
                };
                acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(pa, x0));
                acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(pa, x1));
                acc[2] = _mm256_add_ps(acc[2], _mm256_mul_ps(pb, x0));
                acc[3] = _mm256_add_ps(acc[3], _mm256_mul_ps(pb, x1));
            }
            // SAFETY: o[row][c .. c + 16] is inside each output row.
            unsafe {
                _mm256_storeu_ps(op[0].add(c), acc[0]);
                _mm256_storeu_ps(op[0].add(c + 8), acc[1]);
                _mm256_storeu_ps(op[1].add(c), acc[2]);
                _mm256_storeu_ps(op[1].add(c + 8), acc[3]);
            }
            c += 16;
        }
        while c < d {
            let mk = first_lanes((d - c).min(8));
            let mut acc = [_mm256_setzero_ps(); 2];
            for j in 0..nk {
                // SAFETY: the masked load reads only v_j[c + l], l < min(8, d − c).
                let x = unsafe { _mm256_maskload_ps(v.add(j * stride + c), mk) };
                acc[0] = _mm256_add_ps(acc[0], _mm256_mul_ps(_mm256_set1_ps(p[0][j]), x));
                acc[1] = _mm256_add_ps(acc[1], _mm256_mul_ps(_mm256_set1_ps(p[1][j]), x));
            }
            for row in 0..2 {
                // SAFETY: the masked store writes only o[row][c + l], l < min(8, d − c).
                unsafe { _mm256_maskstore_ps(op[row].add(c), mk, acc[row]) };
            }
            c += 8;
        }
    }

    /// The 8 dot products `q·k_jj` (`k_jj = kp[jj][..d]`, `d = full + r`), in
    /// `dot_body`'s order: lane `l` of key `jj` sums `q[8m+l]·k_jj[8m+l]`
    /// over `m`, the tail element `full + l` last; then per key the fold
    /// `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`. Lane `jj` of the result is
    /// key `jj`'s dot product.
    ///
    /// # Safety
    /// AVX2 + FMA; `q[..d]` and every `kp[jj][..d]` readable; `qt` is
    /// `q[full..]` in lanes `l < r` and `+0` elsewhere, `tail` the mask of
    /// those lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn dot8(
        q: &[f32],
        full: usize,
        r: usize,
        qt: __m256,
        tail: __m256i,
        kp: &[*const f32; 8],
    ) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut m = 0;
        while m < full {
            // SAFETY: m + 8 ≤ full ≤ d = q.len().
            let qm = unsafe { _mm256_loadu_ps(q.as_ptr().add(m)) };
            for jj in 0..8 {
                // SAFETY: k_jj[m .. m + 8] is inside its row of d floats.
                let kv = unsafe { _mm256_loadu_ps(kp[jj].add(m)) };
                acc[jj] = _mm256_add_ps(acc[jj], _mm256_mul_ps(qm, kv));
            }
            m += 8;
        }
        if r > 0 {
            for jj in 0..8 {
                // SAFETY: the masked load reads only k_jj[full + l], l < r,
                // inside its row; the other lanes read as +0 (and `qt` is +0
                // there: they add +0·+0 = +0, which leaves a lane sum, never
                // −0, unchanged).
                let kv = unsafe { _mm256_maskload_ps(kp[jj].add(full), tail) };
                acc[jj] = _mm256_add_ps(acc[jj], _mm256_mul_ps(qt, kv));
            }
        }
        fold8(&acc)
    }

    /// Per register `a = acc[jj]`, `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`,
    /// as lane `jj` of the result.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fold8(acc: &[__m256; 8]) -> __m256 {
        // x_p: low half = key p's [a0+a4, a1+a5, a2+a6, a3+a7], high half key p+4's.
        let x = |p: usize| {
            let (a, b) = (acc[p], acc[p + 4]);
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        };
        let (x0, x1, x2, x3) = (x(0), x(1), x(2), x(3));
        // y: per half [s0+s2, s1+s3] of two keys.
        let y = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        };
        let (y0, y1) = (y(x0, x1), y(x2, x3));
        // (s0+s2) + (s1+s3), keys 0..3 in the low half, 4..7 in the high half.
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(y0, y1),
            _mm256_shuffle_ps::<0b11_01_11_01>(y0, y1),
        )
    }

    /// `rows::max_nan` on 8 lanes: lane `l` keeps `if x > m {x} else {m}` over
    /// `x[8j + l]` (the tail's missing lanes are `−∞`), then the lanes in
    /// order with the same select; and whether any element is NaN.
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn max_nan(x: &[f32]) -> (f32, bool) {
        let (n, p) = (x.len(), x.as_ptr());
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let (mut mx, mut nan) = (ninf, _mm256_setzero_ps());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: x[i .. i + 8] is inside `x`.
            let v = unsafe { _mm256_loadu_ps(p.add(i)) };
            // max_ps(v, m) = if v > m {v} else {m} (NaN v keeps m).
            mx = _mm256_max_ps(v, mx);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            i += 8;
        }
        if i < n {
            let mk = first_lanes(n - i);
            // SAFETY: the masked load reads only x[i + l], l < n − i.
            let v = unsafe { _mm256_maskload_ps(p.add(i), mk) };
            let v = _mm256_blendv_ps(ninf, v, _mm256_castsi256_ps(mk));
            mx = _mm256_max_ps(v, mx);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), mx) };
        let mut m = lanes[0];
        for &v in &lanes[1..] {
            m = if v > m { v } else { m };
        }
        (m, _mm256_movemask_ps(nan) != 0)
    }

    /// `x_i ← exp(x_i − max)` and `Σ_i x_i` in 8 lanes (lane `l` sums
    /// `x[8j + l]`, tail lanes add `+0`), folded as `rows::fold` — the sum
    /// `rows::exp_shift_sum_inplace` returns.
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp_shift_sum(x: &mut [f32], max: f32) -> f32 {
        let (n, p) = (x.len(), x.as_mut_ptr());
        let mv = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: x[i .. i + 8] is inside `x`.
            let e = exp8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(p.add(i)) }, mv));
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(p.add(i), e) };
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        if i < n {
            let mk = first_lanes(n - i);
            // SAFETY: the masked load/store touch only x[i + l], l < n − i.
            let e = exp8(_mm256_sub_ps(
                unsafe { _mm256_maskload_ps(p.add(i), mk) },
                mv,
            ));
            // SAFETY: as above.
            unsafe { _mm256_maskstore_ps(p.add(i), mk, e) };
            acc = _mm256_add_ps(acc, _mm256_and_ps(e, _mm256_castsi256_ps(mk)));
        }
        fold(acc)
    }

    /// `x_i ← x_i · a`.
    ///
    /// # Safety
    /// AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn scale(x: &mut [f32], a: f32) {
        let (n, p) = (x.len(), x.as_mut_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: x[i .. i + 8] is inside `x`.
            unsafe { _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), av)) };
            i += 8;
        }
        for v in &mut x[i..] {
            *v *= a;
        }
    }

    /// `rows::fold` of one register: `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7))`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn fold(acc: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    /// [`Avx2::pv`] on raw parts: `o[c] = Σ_j p_j·v_j[c]` from `+0`, `j` in
    /// order; four, two or one 8-float column blocks per pass over the keys
    /// (independent sums, more of them in flight), the last `d mod 8`
    /// columns by masked loads/stores.
    ///
    /// # Safety
    /// AVX2 + FMA; `v + j·stride .. + o.len()` readable for `j < p.len()`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn pv(o: &mut [f32], p: &[f32], v: *const f32, stride: usize) {
        let d = o.len();
        let op = o.as_mut_ptr();
        let mut c = 0;
        while c + 32 <= d {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm256_set1_ps(pj);
                // SAFETY: v_j[c .. c + 32] is inside value row j (c + 32 ≤ d).
                let vj = unsafe { v.add(j * stride + c) };
                for (b, a) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let x = unsafe { _mm256_loadu_ps(vj.add(8 * b)) };
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, x));
                }
            }
            for (b, a) in acc.iter().enumerate() {
                // SAFETY: o[c + 8b .. c + 8b + 8] is inside `o`.
                unsafe { _mm256_storeu_ps(op.add(c + 8 * b), *a) };
            }
            c += 32;
        }
        if c + 16 <= d {
            let mut acc = [_mm256_setzero_ps(); 2];
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm256_set1_ps(pj);
                // SAFETY: v_j[c .. c + 16] is inside value row j.
                let vj = unsafe { v.add(j * stride + c) };
                for (b, a) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    let x = unsafe { _mm256_loadu_ps(vj.add(8 * b)) };
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(pv, x));
                }
            }
            for (b, a) in acc.iter().enumerate() {
                // SAFETY: o[c + 8b .. c + 8b + 8] is inside `o`.
                unsafe { _mm256_storeu_ps(op.add(c + 8 * b), *a) };
            }
            c += 16;
        }
        if c + 8 <= d {
            let mut acc = _mm256_setzero_ps();
            for (j, &pj) in p.iter().enumerate() {
                // SAFETY: v_j[c .. c + 8] is inside value row j.
                let x = unsafe { _mm256_loadu_ps(v.add(j * stride + c)) };
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(pj), x));
            }
            // SAFETY: o[c .. c + 8] is inside `o`.
            unsafe { _mm256_storeu_ps(op.add(c), acc) };
            c += 8;
        }
        if c < d {
            let mk = first_lanes(d - c);
            let mut acc = _mm256_setzero_ps();
            for (j, &pj) in p.iter().enumerate() {
                // SAFETY: the masked load reads only v_j[c + l], l < d − c.
                let x = unsafe { _mm256_maskload_ps(v.add(j * stride + c), mk) };
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(pj), x));
            }
            // SAFETY: the masked store writes only o[c + l], l < d − c.
            unsafe { _mm256_maskstore_ps(op.add(c), mk, acc) };
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::Avx2;

    /// `exp8` is `exp` bit for bit, lane by lane, over a dense sweep and the
    /// special values.
    #[test]
    fn exp8_is_exp_bit_for_bit() {
        let Some(k) = Avx2::new() else { return };
        let mut xs: alloc::vec::Vec<f32> = alloc::vec![
            0.0,
            -0.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            88.722_83,
            88.722_84,
            -87.336_55,
            -87.336_56,
            -100.0,
            100.0,
            f32::MAX,
            f32::MIN,
        ];
        let mut x = -90.0f32;
        while x < 90.0 {
            xs.push(x);
            x += 0.000_731;
        }
        for bits in (0u32..=u32::MAX).step_by(65_537) {
            xs.push(f32::from_bits(bits));
        }
        while !xs.len().is_multiple_of(8) {
            xs.push(0.5);
        }
        for c in xs.chunks_exact(8) {
            let x: [f32; 8] = c.try_into().unwrap_or([0.0; 8]);
            let got = k.exp8(x);
            for l in 0..8 {
                let want = super::super::exp(x[l]);
                assert!(
                    got[l].to_bits() == want.to_bits() || (got[l].is_nan() && want.is_nan()),
                    "exp({:e}) = {:e} (want {:e})",
                    x[l],
                    got[l],
                    want
                );
            }
        }
    }
}
