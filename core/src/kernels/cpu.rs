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

/// The kernel path the elementwise kernels take on this CPU (for metadata).
pub fn elementwise_path() -> &'static str {
    if avx2_fma() {
        "avx2+fma"
    } else {
        "portable"
    }
}
