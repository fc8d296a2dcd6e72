//! With the `openblas` feature, links the system OpenBLAS (which exports the
//! CBLAS symbols moe-core's `blas` backend calls).

fn main() {
    if std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        println!("cargo:rustc-link-lib=dylib=openblas");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
