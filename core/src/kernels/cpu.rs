//! Run-time CPU feature selection shared by every kernel.
//!
//! Under `std` the features are detected once per process by
//! `is_x86_feature_detected!` (the standard library caches the CPUID result
//! in a static, so each query is one relaxed atomic load and a bit test — no
//! allocation, no system call after the first). Without `std` the choice is
//! made at compile time from `cfg(target_feature)`: a `no_std` build for a
//! generic x86-64 target runs the portable code, one built with
//! `-C target-feature=+avx2,+fma` (or a matching `target-cpu`) the AVX2 code.

/// Whether the AVX2 + FMA kernels may run on this CPU.
#[inline]
pub fn avx2_fma() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512F GEMM kernels may run on this CPU (they also need
/// AVX2 + FMA, which every AVX-512F CPU has; checked anyway).
#[inline]
pub fn avx512f() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx512f") && avx2_fma()
    }
    #[cfg(all(target_arch = "x86_64", not(feature = "std")))]
    {
        cfg!(target_feature = "avx512f") && avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU executes a 512-bit FMA at full width (two 16-lane FMA
/// pipes: the GEMM takes its wide AVX-512 tiles, and the FMA peak is twice
/// the `ymm` one). False without AVX-512F, and on AMD family 19h (Zen 4),
/// which splits each `zmm` FMA into two 256-bit halves: there 6 accumulators
/// cover the latency and the wider tiles measured slower (docs/performance.md,
/// fifth round). Every other AVX-512F core is taken as full width (AMD family
/// 1Ah (Zen 5) measured: 238 GFLOP/s with `zmm` against 120 with `ymm`; Intel
/// server cores have two 512-bit FMA ports). Only speed depends on it: every
/// tile computes each element as the same FMA chain, so the bits do not.
/// CPUID is read once per process (it traps to the hypervisor in a VM).
pub fn zmm_full_width() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    match KNOWN.load(Ordering::Relaxed) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    let full = avx512f() && !amd_family(0x19);
    KNOWN.store(if full { 2 } else { 1 }, Ordering::Relaxed);
    full
}

/// The display family of CPUID leaf 1's `eax`: the base family (bits
/// 8–11), plus the extended family (bits 20–27) when the base is 0xF.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn display_family(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xF;
    if base == 0xF {
        base + ((eax >> 20) & 0xFF)
    } else {
        base
    }
}

/// Whether the CPU is an AMD one of (display) family `family`.
#[allow(unused_variables)]
fn amd_family(family: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::__cpuid;
        // `__cpuid` is a safe intrinsic in current Rust, an `unsafe fn` in
        // older ones (MSRV 1.89), hence the block and the allow.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU; leaves 0 and 1 always
        // exist (leaf 0 reports the highest leaf, ≥ 1 on any x86_64 CPU).
        let (l0, l1) = unsafe { (__cpuid(0), __cpuid(1)) };
        let amd = l0.ebx == u32::from_le_bytes(*b"Auth")
            && l0.edx == u32::from_le_bytes(*b"enti")
            && l0.ecx == u32::from_le_bytes(*b"cAMD");
        amd && display_family(l1.eax) == family
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel path the elementwise kernels take on this CPU (for metadata).
pub fn elementwise_path() -> &'static str {
    if avx2_fma() {
        "avx2+fma"
    } else {
        "portable"
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    /// Test hook: this thread's elementwise kernels take the portable path.
    static FORCE_PORTABLE: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether the elementwise kernels of this thread run their AVX2+FMA clone
/// (also the bf16 kernels' choice, so the same test hook reaches them).
#[inline(always)]
pub(crate) fn elementwise_avx2() -> bool {
    #[cfg(feature = "std")]
    if FORCE_PORTABLE.with(|f| f.get()) {
        return false;
    }
    avx2_fma()
}

/// Runs `f` with the elementwise kernels of *this thread* forced onto the
/// portable path (test hook for the bit-identity test; other threads and the
/// GEMM are unaffected). Restores the previous setting even if `f` panics.
#[cfg(feature = "std")]
#[doc(hidden)]
pub fn with_portable_elementwise<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0;
            FORCE_PORTABLE.with(|c| c.set(old));
        }
    }
    let _restore = Restore(FORCE_PORTABLE.with(|c| c.replace(true)));
    f()
}

/// Runs `f` compiled for AVX2+FMA where the CPU has them, else as is.
///
/// `f` is monomorphised into (and inlined by LLVM into) the
/// `#[target_feature(enable = "avx2,fma")]` clone [`avx2_clone`], so the same
/// scalar Rust loops are auto-vectorised with 256-bit lanes there and with the
/// baseline ISA (SSE2) in the other instance. Rust never contracts `a·b + c`
/// into an FMA and never reassociates float operations, so both instances
/// compute the same operations in the same order: the results are
/// bit-identical across the two paths (tested). No allocation, one cached
/// feature query per call.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if elementwise_avx2() {
        // SAFETY: `elementwise_avx2()` returned true only because AVX2 and FMA
        // were detected on this CPU (run time under `std`, target features at
        // compile time otherwise), which is `avx2_clone`'s only requirement.
        return unsafe { avx2_clone(f) };
    }
    f()
}

/// The AVX2+FMA instance of [`vectorized`]'s closure.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_clone<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Independent FMA chains of [`fma_peak`]: 12 `ymm` accumulators cover the
/// FMA latency × throughput product (4 cycles × 2 pipes × 1.5) of current x86 cores.
#[doc(hidden)]
pub const PEAK_CHAINS: usize = 12;
/// Lanes per chain (one 256-bit register of `f32`).
#[doc(hidden)]
pub const PEAK_LANES: usize = 8;

/// Lanes per chain of [`fma_peak`] on this CPU: 16 (`zmm`) where the GEMM
/// runs AVX-512 kernels, else [`PEAK_LANES`].
#[doc(hidden)]
pub fn peak_lanes() -> usize {
    if avx512f() {
        16
    } else {
        PEAK_LANES
    }
}

/// The machine's single-core FMA peak loop (benchmark `machine_fma_peak`):
/// `iters` rounds of [`PEAK_CHAINS`] independent `acc = acc·x + y` of
/// [`peak_lanes`] lanes, i.e. `iters · 12 · lanes · 2` FLOPs; returns the
/// sum of the accumulators (so the work cannot be removed). The widest FMA
/// the GEMM uses: AVX-512F `zmm` where present (on a full-width core twice
/// the `ymm` rate, on a half-width one the same), AVX2+FMA `ymm`, else the
/// same recurrence in plain Rust (multiply then add).
#[doc(hidden)]
pub fn fma_peak(iters: u64, x: f32, y: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512f() {
        // SAFETY: AVX-512F was detected on this CPU just above, the only
        // requirement of `fma_peak_avx512`.
        return unsafe { fma_peak_avx512(iters, x, y) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected on this CPU just above, the only
        // requirement of `fma_peak_avx2`.
        return unsafe { fma_peak_avx2(iters, x, y) };
    }
    fma_peak_portable(iters, x, y)
}

/// [`fma_peak`] on 8-lane `ymm` chains even where AVX-512F exists (the
/// AVX2 peak, `iters · 12 · 8 · 2` FLOPs; the portable loop without AVX2).
#[doc(hidden)]
pub fn fma_peak_ymm(iters: u64, x: f32, y: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: AVX2 and FMA were detected on this CPU just above, the only
        // requirement of `fma_peak_avx2`.
        return unsafe { fma_peak_avx2(iters, x, y) };
    }
    fma_peak_portable(iters, x, y)
}

/// The portable recurrence of [`fma_peak`] (multiply then add, 8 lanes).
fn fma_peak_portable(iters: u64, x: f32, y: f32) -> f32 {
    let mut acc = [[0.0f32; PEAK_LANES]; PEAK_CHAINS];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for l in a.iter_mut() {
                *l = *l * x + y;
            }
        }
    }
    acc.iter().flatten().sum()
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_peak_avx2(iters: u64, x: f32, y: f32) -> f32 {
    use core::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); PEAK_CHAINS];
    let (xv, yv) = (_mm256_set1_ps(x), _mm256_set1_ps(y));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, xv, yv);
        }
    }
    let mut out = [0.0f32; PEAK_LANES];
    let mut s = 0.0f32;
    for a in acc {
        // SAFETY: `out` holds exactly 8 floats, the width of one `__m256`
        // (unaligned store).
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) };
        s += out.iter().sum::<f32>();
    }
    s
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_peak_avx512(iters: u64, x: f32, y: f32) -> f32 {
    use core::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); PEAK_CHAINS];
    let (xv, yv) = (_mm512_set1_ps(x), _mm512_set1_ps(y));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, xv, yv);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_family_decodes_known_cpuid_signatures() {
        // EPYC 9004 (Zen 4), EPYC 9005 (Zen 5), EPYC 7003 (Zen 3), a
        // Skylake-SP Xeon (family 6: no extended family added).
        assert_eq!(display_family(0x00A1_0F11), 0x19);
        assert_eq!(display_family(0x00B0_0F21), 0x1A);
        assert_eq!(display_family(0x00A0_0F11), 0x19);
        assert_eq!(display_family(0x0005_0654), 6);
    }

    #[test]
    fn full_width_zmm_needs_avx512f_and_is_stable() {
        let w = zmm_full_width();
        assert!(!w || avx512f());
        assert_eq!(zmm_full_width(), w, "the cached answer must not change");
        assert_eq!(peak_lanes(), if avx512f() { 16 } else { PEAK_LANES });
    }
}
