//! The CBLAS backend (feature `blas`): `cblas_sgemm` from whatever BLAS the
//! final binary links.

use super::Mat;
use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};

fn i(x: usize) -> i32 {
    i32::try_from(x).expect("gemm dimension exceeds i32 (CBLAS int)") // ok: sizes are validated far below i32::MAX
}

/// How CBLAS sees `op(X)` of shape `[rows, cols]`: as stored (`cs = 1`,
/// leading dimension `rs`) or transposed (`rs = 1`, leading dimension `cs`).
/// A single row or column may have either stride equal to 1; the leading
/// dimension is then at least the stored width, as CBLAS requires.
fn op(x: &Mat, rows: usize, cols: usize) -> (CBLAS_TRANSPOSE, usize) {
    if x.cs == 1 && (x.rs >= cols || rows <= 1) {
        (CBLAS_TRANSPOSE::CblasNoTrans, x.rs.max(cols).max(1))
    } else {
        assert!(
            x.rs == 1 || cols <= 1,
            "gemm: CBLAS needs a unit stride in one direction"
        );
        (CBLAS_TRANSPOSE::CblasTrans, x.cs.max(rows).max(1))
    }
}

/// `C[m,n] = α·op(A)·op(B) + β·C` through `cblas_sgemm`.
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
    let (ta, lda) = op(&a, m, k);
    let (tb, ldb) = op(&b, k, n);
    let (mi, ni, ki) = (i(m), i(n), i(k));
    let (lda, ldb, ldci) = (i(lda), i(ldb), i(ldc.max(1)));
    // SAFETY: the caller (`gemm_with`) asserted that op(A) [m,k], op(B) [k,n] and
    // C [m,n] with their strides lie inside their slices; `op` maps each
    // operand to its CBLAS transposition and leading dimension; all dimensions
    // were converted to i32 with a checked conversion above.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            ta,
            tb,
            mi,
            ni,
            ki,
            alpha,
            a.data.as_ptr(),
            lda,
            b.data.as_ptr(),
            ldb,
            beta,
            c.as_mut_ptr(),
            ldci,
        );
    }
}
