//! E3 — matrix multiply, `C = α·op(A)·op(B) + β·C`, row-major.
//!
//! The only GEMM entry point of the crate: the strided-matrix type [`Mat`],
//! the [`Backend`] choice and the dispatcher [`gemm`] / [`gemm_with`], which
//! checks every operand once and hands it to one file per backend:
//! * [`Backend::Portable`] (default, [`portable`]): the crate's own BLIS-style
//!   GEMM (both operands packed, L1/L2 blocking, 6 × 16 micro-kernel,
//!   special paths for decoding and depth-16 weight gradients), allocation-free,
//!   AVX2+FMA micro-kernel detected at run time.
//! * `Backend::MatrixMultiply` (feature `matrixmultiply`, off by default): the
//!   `matrixmultiply` crate, kept for comparison in the benchmark; it
//!   allocates packing buffers on every call, so the model never uses it.
//! * `Backend::Blas` (feature `blas`): CBLAS `cblas_sgemm` from whatever BLAS
//!   the final binary links (e.g. OpenBLAS through `moe-bench --features openblas`).
//!
//! Shapes: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]` with row
//! stride `ldc`. With `β = 0` the previous contents of `C` are never read.

pub mod bf16;
#[cfg(feature = "blas")]
mod blas;
#[cfg(feature = "matrixmultiply")]
mod matrixmultiply;
mod panel;
pub mod portable;

pub use portable::kernel_name;

/// A GEMM implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The crate's own allocation-free packed GEMM (always built).
    Portable,
    /// The `matrixmultiply` crate (feature `matrixmultiply`; allocates per call).
    #[cfg(feature = "matrixmultiply")]
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
            #[cfg(feature = "matrixmultiply")]
            Backend::MatrixMultiply => "matrixmultiply",
            #[cfg(feature = "blas")]
            Backend::Blas => "cblas",
        }
    }
}

/// A strided matrix operand `op(X)`: element `(r, c)` is `data[r·rs + c·cs]`.
/// [`Mat::n`] is a row-major matrix used as stored, [`Mat::t`] one used transposed.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// Stored elements.
    pub data: &'a [f32],
    /// Row stride of `op(X)`.
    pub rs: usize,
    /// Column stride of `op(X)`.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix used as stored, with row stride `ld`: strides `(ld, 1)`.
    pub const fn n(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// A row-major matrix used transposed; `ld` is the row stride of the
    /// *stored* matrix: strides `(1, ld)`.
    pub const fn t(data: &'a [f32], ld: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// `op(X)ᵀ`: the same elements with the strides swapped.
    #[inline(always)]
    pub const fn transposed(self) -> Self {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Element `(r, c)`.
    ///
    /// # Panics
    /// If `r·rs + c·cs` lies outside `data`.
    #[inline(always)]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }

    /// Asserts that `op(self)` of shape `[rows, cols]` lies inside `data` and
    /// that a row-major (or transposed) operand's stride covers its width.
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if self.cs == 1 {
            assert!(
                self.rs >= cols || rows <= 1,
                "gemm: {what} ld {} < cols {cols}",
                self.rs
            );
        } else if self.rs == 1 {
            assert!(
                self.cs >= rows || cols <= 1,
                "gemm: {what} ld {} < cols {rows}",
                self.cs
            );
        }
        if rows > 0 && cols > 0 {
            let need = (rows - 1) * self.rs + (cols - 1) * self.cs + 1;
            assert!(
                self.data.len() >= need,
                "gemm: {what} has {} elements, needs {need}",
                self.data.len()
            );
        }
    }
}

/// Shapes where the single-packed-operand kernel ([`panel`]) beats the
/// BLIS-style driver ([`portable`]) on this machine: 16–64 token rows against
/// a weight of ≥ 128 rows, depth ≥ 64 (forward `x·Wᵀ`, backward `dx = dy·W`)
/// — the weight is read in place there, where the BLIS driver packs it on
/// every call. But `panel` computes the token side in 16-column panels
/// (`16·⌈small/16⌉` columns), so when more than 1/8 of them would be padding
/// and the depth fits one `KC = 256` block, the BLIS driver (6-row tiles,
/// weight packed with the AVX2 transpose) is faster: 24 / 36 / 37 tokens ×
/// `W[2048, 256]` 88 / 94 / 83 vs 78 / 78 / 70 GFLOP/s (`gemm_shapes`
/// example, interleaved; docs/performance.md). Deeper products (`k = 1024`,
/// whose transposed packing reads 4 KiB-strided rows) stay on `panel`.
/// Decoding (`m ≤ 8`), depth-16 weight gradients, the `[t, t]` attention
/// products and large problems take the BLIS driver. On a core with
/// full-width 512-bit FMA the BLIS driver wins every `k ≤ 256` shape too
/// ([`blis_wide_wins`]), where both give the same bits; so the bits depend
/// on the shape alone, the CPU choosing only the speed.
#[inline]
fn panel_wins(m: usize, n: usize, k: usize) -> bool {
    let (small, large) = if m < n { (m, n) } else { (n, m) };
    let cols = small.div_ceil(16) * 16;
    let little_padding = 8 * (cols - small) <= cols;
    small > 8
        && small <= 64
        && large >= 128
        && k >= 64
        && (little_padding || k > 256)
        && !blis_wide_wins(k)
}

/// On a core with full-width 512-bit FMA the BLIS driver's 6 × 32 `zmm`
/// tiles beat [`panel`]'s 6 × 16 AVX2 ones on every [`panel_wins`] shape
/// (`gemm_shapes` s256, `x·Wᵀ` of 64 tokens × `W[384, 256]`: 113 → 205
/// GFLOP/s). Only products with `k ≤ KC = 256` are moved, where both give
/// the same bits (`gemm_routing_boundaries_match_reference_and_blis_bits`):
/// a model's results stay the same on every machine.
#[inline]
fn blis_wide_wins(k: usize) -> bool {
    k <= portable::KC && crate::kernels::cpu::zmm_full_width()
}

/// E3 — `C[m,n] = α·op(A)[m,k]·op(B)[k,n] + β·C` with the default backend.
///
/// # Panics
/// As [`gemm_with`].
#[inline]
#[allow(clippy::too_many_arguments)] // reason: the BLAS sgemm signature (shape, α, A, B, β, C, ldc)
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

/// E3 — [`gemm`] (`C[m,n] = α·op(A)[m,k]·op(B)[k,n] + β·C`) with an explicit
/// backend.
///
/// # Panics
/// If an operand is too short for its shape or a leading dimension is smaller
/// than its row (`ldc < n`, a [`Mat`] stride below its width): the model's
/// buffers are planned to fit, so this is a bug in the caller, not bad input.
#[allow(clippy::too_many_arguments)] // reason: the BLAS sgemm signature plus the backend
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
        Backend::Portable if panel_wins(m, n, k) => panel::gemm(m, n, k, alpha, a, b, beta, c, ldc),
        Backend::Portable => portable::gemm(
            m, n, k, alpha, a.data, a.rs, a.cs, b.data, b.rs, b.cs, beta, c, ldc, 1,
        ),
        #[cfg(feature = "matrixmultiply")]
        Backend::MatrixMultiply => matrixmultiply::sgemm(m, n, k, alpha, a, b, beta, c, ldc),
        #[cfg(feature = "blas")]
        Backend::Blas => blas::sgemm(m, n, k, alpha, a, b, beta, c, ldc),
    }
}
