//! E3 — matrix multiply, `C = α·op(A)·op(B) + β·C`, row-major.
//!
//! The only GEMM entry point of the crate. Backends:
//! * [`Backend::Portable`] (default): the crate's own packed GEMM
//!   ([`super::gemm`]), allocation-free, AVX2+FMA micro-kernel detected at run time.
//! * [`Backend::MatrixMultiply`]: the `matrixmultiply` crate, kept for
//!   comparison in the benchmark; it allocates packing buffers on every call,
//!   so the model never uses it.
//! * `Backend::Blas` (feature `blas`): CBLAS `cblas_sgemm` from whatever BLAS
//!   the final binary links (e.g. OpenBLAS through `moe-bench --features openblas`).
//!
//! Shapes: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]` with
//! leading dimensions `lda`, `ldb`, `ldc` (row strides of the *stored* matrices).
//! With `β = 0` the previous contents of `C` are never read.

/// Whether an operand is used as stored (`N`) or transposed (`T`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trans {
    /// Use as stored.
    N,
    /// Use transposed.
    T,
}

/// A GEMM implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The crate's own allocation-free packed GEMM (always built).
    Portable,
    /// The `matrixmultiply` crate (always built; allocates per call).
    MatrixMultiply,
    /// CBLAS `sgemm` (feature `blas`).
    #[cfg(feature = "blas")]
    Blas,
}

impl Backend {
    /// The backend the model uses: BLAS when built with `blas`, else portable.
    pub const DEFAULT: Backend = {
        #[cfg(feature = "blas")]
        {
            Backend::Blas
        }
        #[cfg(not(feature = "blas"))]
        {
            Backend::Portable
        }
    };

    /// Short name for benchmark metadata.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Portable => "portable",
            Backend::MatrixMultiply => "matrixmultiply",
            #[cfg(feature = "blas")]
            Backend::Blas => "cblas",
        }
    }
}

/// Operand description: the stored slice, its row stride and whether it is transposed.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// Stored elements (row-major).
    pub data: &'a [f32],
    /// Row stride of the stored matrix.
    pub ld: usize,
    /// Transposition.
    pub trans: Trans,
}

impl<'a> Mat<'a> {
    /// A matrix used as stored, with row stride `ld`.
    pub const fn n(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            ld,
            trans: Trans::N,
        }
    }
    /// A matrix used transposed; `ld` is the row stride of the *stored* matrix.
    pub const fn t(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            ld,
            trans: Trans::T,
        }
    }
    /// (row stride, column stride) of `op(self)`.
    fn strides(&self) -> (usize, usize) {
        match self.trans {
            Trans::N => (self.ld, 1),
            Trans::T => (1, self.ld),
        }
    }
    /// Asserts that `op(self)` of shape `[rows, cols]` lies inside `data`.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        let (sr, sc) = match self.trans {
            Trans::N => (rows, cols),
            Trans::T => (cols, rows),
        };
        assert!(
            sc <= self.ld || sr <= 1,
            "gemm: {what} ld {} < cols {sc}",
            self.ld
        );
        if sr > 0 && sc > 0 {
            let need = (sr - 1) * self.ld + sc;
            assert!(
                self.data.len() >= need,
                "gemm: {what} has {} elements, needs {need}",
                self.data.len()
            );
        }
    }
}

/// E3 — `C[m,n] = α·op(A)[m,k]·op(B)[k,n] + β·C` with the default backend.
#[inline]
pub fn gemm(
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
    gemm_with(Backend::DEFAULT, m, n, k, alpha, a, b, beta, c, ldc)
}

/// E3 — [`gemm`] (`C[m,n] = α·op(A)[m,k]·op(B)[k,n] + β·C`) with an explicit backend. Panics (a bug, not user input) if an
/// operand is too short for its shape.
pub fn gemm_with(
    backend: Backend,
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
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= ldc || m <= 1, "gemm: ldc {ldc} < n {n}");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: C too short");
    if k == 0 {
        // op(A)·op(B) is zero: C = β·C.
        for i in 0..m {
            for x in &mut c[i * ldc..i * ldc + n] {
                *x = if beta == 0.0 { 0.0 } else { beta * *x };
            }
        }
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    match backend {
        Backend::Portable => {
            let (rsa, csa) = a.strides();
            let (rsb, csb) = b.strides();
            super::gemm::gemm(
                m,
                n,
                k,
                alpha,
                (a.data, rsa, csa),
                (b.data, rsb, csb),
                beta,
                c,
                ldc,
            );
        }
        Backend::MatrixMultiply => {
            let (rsa, csa) = a.strides();
            let (rsb, csb) = b.strides();
            // Strides are bounded by slice lengths (checked above), which fit isize.
            let s = |x: usize| x as isize;
            // SAFETY: `check` asserted that every element op(A)[i,p] for i < m, p < k
            // (at offset i·rsa + p·csa) lies inside `a.data`, likewise op(B)[p,j] inside
            // `b.data`; the assert above bounds C[i,j] (offset i·ldc + j) inside `c`,
            // which we hold exclusively. matrixmultiply reads/writes exactly those.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    alpha,
                    a.data.as_ptr(),
                    s(rsa),
                    s(csa),
                    b.data.as_ptr(),
                    s(rsb),
                    s(csb),
                    beta,
                    c.as_mut_ptr(),
                    s(ldc),
                    1,
                );
            }
        }
        #[cfg(feature = "blas")]
        Backend::Blas => blas::sgemm(m, n, k, alpha, a, b, beta, c, ldc),
    }
}

#[cfg(feature = "blas")]
mod blas {
    use super::{Mat, Trans};
    use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};

    fn i(x: usize) -> i32 {
        i32::try_from(x).expect("gemm dimension exceeds i32 (CBLAS int)") // ok: sizes are validated far below i32::MAX
    }

    fn t(x: Trans) -> CBLAS_TRANSPOSE {
        match x {
            Trans::N => CBLAS_TRANSPOSE::CblasNoTrans,
            Trans::T => CBLAS_TRANSPOSE::CblasTrans,
        }
    }

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
        let (mi, ni, ki) = (i(m), i(n), i(k));
        let (lda, ldb, ldci) = (i(a.ld.max(1)), i(b.ld.max(1)), i(ldc.max(1)));
        // SAFETY: the caller (`gemm_with`) asserted that op(A) [m,k], op(B) [k,n] and
        // C [m,n] with their leading dimensions lie inside their slices; all
        // dimensions were converted to i32 with a checked conversion above.
        unsafe {
            cblas_sgemm(
                CBLAS_LAYOUT::CblasRowMajor,
                t(a.trans),
                t(b.trans),
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
}
