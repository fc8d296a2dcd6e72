//! The integration, property and golden-parity tests of moe-rs, as one test
//! binary with one module per former `tests/*.rs` file (as bumpalo does):
//! the release profile links with fat LTO, and one binary links once instead
//! of fifteen times. Run a group with `cargo test --release -p moe-tests --test all -- MODULE::`.

mod alloc;
mod bf16;
mod determinism;
mod errors;
mod full_profile;
mod generate;
mod golden;
mod gradcheck;
mod interplay;
mod kernels;
mod mixed;
mod model_reference;
mod nonfinite_weights;
mod prepack;
mod proptest_error_table;
mod proptest_errors;
mod proptest_fuzz_regressions;
mod proptest_model;
mod proptest_units;
mod readme;
mod recompute;
mod reliability;
mod threads;
mod training;
