//! The integration tests of moe-bench, in one test binary: with fat LTO
//! every test binary is a separate whole-program link, so one binary instead
//! of five cuts the build of `cargo test -p moe-bench --release`. Each
//! module is one former `bench/tests/NAME.rs` (test names are now
//! `NAME::test`).

mod bf16;
mod checkpoint;
mod cli;
mod common;
mod faults;
mod grads;
mod heap;
mod interop;
mod json_schema;
mod outputs;
mod plan_memory;
mod reliability;
mod report;
mod stress;
mod threads;
