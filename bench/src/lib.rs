//! # moe-bench (library)
//!
//! Everything behind the `moe` command-line tool, in four rooms; `main.rs`
//! only parses the command line and dispatches.
//!
//! * [`io`] — files: [`io::atomic`] (every file the tool writes is written
//!   atomically), [`io::corpus`] (the byte-level tokenizer and the train/held-out
//!   text corpus) and [`io::checkpoint`] (checkpoint directories with
//!   `config.json` and `model.safetensors`, plus `optimizer.safetensors` for
//!   training; typed errors).
//! * [`harness`] — `moe bench` and its child processes (`bench-one`,
//!   `cold-start`): scenarios, measurement, statistics, the JSON schema, and in
//!   [`harness::sys`] the tool's only `unsafe` (getrusage, getloadavg, uname,
//!   the counting allocator, OpenBLAS's core name) besides [`io::mmap`] (`Mmap::map`, `madvise`); the rest
//!   of the crate denies `unsafe_code`.
//! * [`report`] — `moe report`: the checked Markdown report and the SVG plots
//!   (whose chart code also draws `moe train`'s loss plot).
//! * [`cli`] — the other subcommands (`train`, `generate`, `grads`, `stress`,
//!   `plan`, `dispatch-compare`, `demo`) and what they share (core-error →
//!   flag mapping, checkpoint-directory resolution).
//!
//! Around them: [`profile::Profile`], the model-size presets of the scenarios
//! and of the `--profile` flags; [`Error`], the one error type of the
//! subcommands; [`fmt`], numbers for humans. The flat paths of before,
//! `moe_bench::{checkpoint, corpus, grads, generate, stress, train}`, are kept
//! as re-exports (the tests and fuzz targets use them).

#![deny(unsafe_code)]

pub mod cli;
mod error;
pub mod fmt;
pub mod harness;
pub mod io;
pub mod profile;
pub mod report;

pub use error::Error;

// `--features accelerate` (Apple's Accelerate as the CBLAS backend) exists for
// macOS only; elsewhere say so at compile time instead of failing to link.
#[cfg(all(feature = "accelerate", not(target_os = "macos")))]
compile_error!(
    "the `accelerate` feature needs macOS (Apple's Accelerate framework); on Linux use `--features openblas`"
);
#[cfg(all(feature = "accelerate", target_os = "macos"))]
extern crate accelerate_src;

pub use cli::{generate, grads, stress, train};
pub use io::{checkpoint, corpus};

/// The lib's own unit tests count allocations too (as `main.rs` installs the
/// counter for the `moe` binary; the library never installs it for its users).
#[cfg(test)]
#[global_allocator]
static GLOBAL: harness::sys::alloc_counter::CountingAlloc =
    harness::sys::alloc_counter::CountingAlloc;
