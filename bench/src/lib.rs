//! # moe-bench (library)
//!
//! Everything behind the `moe` command-line tool, in four rooms; `main.rs`
//! only parses the command line and dispatches.
//!
//! * [`io`] — files: [`io::atomic`] (every file the tool writes is written
//!   atomically), [`io::corpus`] (the byte-level tokenizer and the train/held-out
//!   text corpus) and [`io::checkpoint`] (checkpoint directories: `config.json`
//!   + `model.safetensors`, plus `optimizer.safetensors` for training; typed errors).
//! * [`harness`] — `moe bench` and its child processes (`bench-one`,
//!   `cold-start`): scenarios, measurement, statistics, the JSON schema, and in
//!   [`harness::sys`] the tool's only `unsafe` (getrusage, uname, the counting allocator).
//! * [`report`] — `moe report`: `docs/bench-results.md` and the SVG plots.
//! * [`cli`] — the other subcommands (`train`, `generate`, `grads`, `stress`,
//!   `plan`, `dispatch-compare`, `demo`) and what they share (model profiles,
//!   core-error → flag mapping, checkpoint-directory resolution).
//!
//! [`profile::Profile`] is the model-size preset of the scenarios and the
//! `--profile` flags. [`Error`] is the one error type of the subcommands; [`fmt`] formats numbers
//! for humans. The old flat paths `moe_bench::{checkpoint, corpus, grads,
//! generate, stress, train}` are kept as re-exports.

pub mod cli;
mod error;
pub mod fmt;
pub mod harness;
pub mod io;
pub mod profile;
pub mod report;

pub use error::Error;

pub use cli::{generate, grads, stress, train};
pub use io::{checkpoint, corpus};

/// The lib's own unit tests count allocations too (as `main.rs` installs the
/// counter for the `moe` binary; the library never installs it for its users).
#[cfg(test)]
#[global_allocator]
static GLOBAL: harness::sys::alloc_counter::CountingAlloc =
    harness::sys::alloc_counter::CountingAlloc;
