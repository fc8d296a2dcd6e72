//! The `matrixmultiply` backend (feature `matrixmultiply`, for the benchmark's
//! comparison scenario only: it allocates packing buffers on every call).

use super::Mat;

/// `C[m,n] = α·op(A)·op(B) + β·C` through `matrixmultiply::sgemm`; the caller
/// (`gemm_with`) checked every operand against its shape.
#[allow(clippy::too_many_arguments)] // reason: the BLAS sgemm signature
pub(super) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    // Strides are bounded by slice lengths (checked by the caller), which fit isize.
    let s = |x: usize| x as isize;
    // SAFETY: `Mat::check` asserted that every element op(A)[i,p] for i < m, p < k
    // (at offset i·rs + p·cs) lies inside `a.data`, likewise op(B)[p,j] inside
    // `b.data`; `gemm_with` asserted C[i,j] (offset i·ldc + j) lies inside `c`,
    // which we hold exclusively. matrixmultiply reads/writes exactly those.
    unsafe {
        ::matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            s(a.rs),
            s(a.cs),
            b.data.as_ptr(),
            s(b.rs),
            s(b.cs),
            beta,
            c.as_mut_ptr(),
            s(ldc),
            1,
        );
    }
}
