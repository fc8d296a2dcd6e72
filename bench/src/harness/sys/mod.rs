//! The operating-system calls of the tool: resource usage, machine
//! description, the counting allocator, the output-directory lock and
//! process liveness, the linked OpenBLAS's core name. The tool's only `unsafe` lives here,
//! each block with its `// SAFETY:` comment.

pub mod alloc_counter;
pub mod os;
pub mod process;
pub mod rusage;

/// `openblas_get_corename()` of the linked OpenBLAS: the core type whose
/// kernels it chose on this CPU (`metadata.blas_core`).
#[cfg(feature = "openblas")]
pub fn openblas_corename() -> Option<String> {
    extern "C" {
        fn openblas_get_corename() -> *const std::ffi::c_char;
    }
    // SAFETY: OpenBLAS exports this function (feature `openblas` links it);
    // it takes no arguments and returns a pointer to a static NUL-terminated
    // string (or null, checked), which is only read, never freed.
    let p = unsafe { openblas_get_corename() };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated, static (above).
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(s.to_string_lossy().trim().to_owned())
}

/// No BLAS is linked without the `openblas` feature.
#[cfg(not(feature = "openblas"))]
pub fn openblas_corename() -> Option<String> {
    None
}
