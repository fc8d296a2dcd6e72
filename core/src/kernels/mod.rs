//! Numeric kernels shared by the equation units: GEMM (E3), row softmax (E1)
//! and SiLU (E2). `unsafe` is allowed only in this module tree (the AVX2
//! micro-kernel, BLAS FFI and the `matrixmultiply` call), each block with a
//! `// SAFETY:` comment.

pub mod adamw;
pub(crate) mod attn;
pub mod bf16;
pub mod cpu;
pub mod gemm;
pub mod rows;

pub use cpu::vectorized;
pub mod softmax;

/// `exp` in `f32`, branch-free so that loops over it vectorise (libm's `expf`
/// is a scalar call and dominated the forward pass).
///
/// `e^x = 2^n · e^r` with `n = round(x·log₂e)` and `r = x − n·ln 2` (ln 2 split
/// in two parts, Cody–Waite), `|r| ≤ ln2/2`, and `e^r` by its degree-7 Taylor
/// polynomial (truncation error < 1e-8 relative). Max error against f64 `exp`
/// is a few ulp (see the unit test). `exp(−∞) = 0`, `exp(+∞) = +∞`, NaN propagates.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exactly representable
    const LN2_LO: f32 = -2.121_944_4e-4;
    const HI: f32 = 88.722_83; // ln(f32::MAX)
    const LO: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting rounds to an integer
                                     // NaN stays NaN (both comparisons false); a select, not `f32::clamp`.
    #[allow(clippy::manual_clamp)] // reason: two selects, the form measured to vectorise
    let xc = if x < LO {
        LO
    } else if x > HI {
        HI
    } else {
        x
    };
    // t = ROUND + n exactly (|n| ≤ 128 and t's ulp is 1), so n's integer is
    // t's bit pattern minus ROUND's: no float→int conversion (which, being
    // saturating in Rust, kept this loop scalar).
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // 2^n by building the exponent field; n ∈ [−126, 128] after the clamp, so
    // split it to keep both factors normal.
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = ni >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - half + 127) as u32) << 23);
    let y = p * s1 * s2;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

/// `sqrt` in `f32`: the hardware instruction (vectorisable) under `std`,
/// libm's otherwise.
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        x.sqrt()
    }
    #[cfg(not(feature = "std"))]
    {
        libm::sqrtf(x)
    }
}

/// E2 — logistic sigmoid `σ(z) = 1 / (1 + e^(−z))`.
#[inline(always)]
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// E2 — SiLU, `silu(z) = z · σ(z)`.
#[inline(always)]
pub fn silu(z: f32) -> f32 {
    z * sigmoid(z)
}

/// E23 (gradient of E2) — `d silu / dz = σ(z) · (1 + z · (1 − σ(z)))` (scalar).
#[inline(always)]
pub fn silu_grad(z: f32) -> f32 {
    let s = sigmoid(z);
    s * (1.0 + z * (1.0 - s))
}

/// Lanes of the vector helpers below: eight independent partial sums, so the
/// compiler can keep them in one SIMD register (a plain `.sum()` over `f32`
/// must stay sequential and does not vectorise).
const LANES: usize = 8;

/// `Σ a_i b_i`, summed in 8 interleaved partial sums (a fixed order: the
/// result is deterministic for a given length).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    vectorized(
        #[inline(always)]
        || dot_body(a, b),
    )
}

/// [`dot`]'s loop (instantiated for the baseline ISA and for AVX2+FMA;
/// callers already inside [`vectorized`] call it directly).
#[inline(always)]
pub(crate) fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    let s = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// `y += a·x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    vectorized(
        #[inline(always)]
        || axpy_body(y, a, x),
    )
}

/// [`axpy`]'s loop (for callers already inside [`vectorized`]).
#[inline(always)]
pub(crate) fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Index of the first NaN/Inf in `x`, if any.
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    vectorized(
        #[inline(always)]
        || first_non_finite_body(x),
    )
}

/// [`first_non_finite`]'s scan (instantiated for the baseline ISA and AVX2).
#[inline(always)]
fn first_non_finite_body(x: &[f32]) -> Option<usize> {
    // Scan in blocks with a branch-free test (vectorises); locate only on a hit.
    const B: usize = 64;
    for (bi, blk) in x.chunks(B).enumerate() {
        let bad = blk.iter().fold(false, |acc, v| acc | !v.is_finite());
        if bad {
            return blk.iter().position(|v| !v.is_finite()).map(|i| bi * B + i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = libm::exp(x as f64);
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "max rel err {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn silu_gradient_matches_finite_differences() {
        for &z in &[-6.0f32, -1.5, -0.1, 0.0, 0.3, 2.0, 7.0] {
            let h = 1e-3f64;
            let f = |z: f64| z / (1.0 + (-z).exp());
            let fd = (f(z as f64 + h) - f(z as f64 - h)) / (2.0 * h);
            assert!((silu_grad(z) as f64 - fd).abs() < 1e-5, "z = {z}");
            assert!((silu(z) as f64 - f(z as f64)).abs() < 1e-6);
        }
    }
}
