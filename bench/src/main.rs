//! `moe` — command-line front end of moe-rs.
//!
//! Each subcommand is one variant of [`Command`] dispatching to one library
//! function; adding a subcommand is a new variant, a new module and one match
//! arm.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use moe_bench::{cli, harness, report};

/// Every heap allocation is counted (see `moe_bench::harness::sys::alloc_counter`).
#[global_allocator]
static GLOBAL: harness::sys::alloc_counter::CountingAlloc =
    harness::sys::alloc_counter::CountingAlloc;

#[derive(Debug, Parser)]
#[command(
    name = "moe",
    version,
    about = "moe-rs: a no_std Mixture-of-Experts Transformer — demo and benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the tiny model, run one forward pass (b2 s32) and print the arena plan.
    Demo,
    /// Run the benchmark scenarios (spec §6–§7) and write the JSON result.
    Bench(harness::BenchArgs),
    /// Write a checked Markdown report and SVG plots (default target/moe-bench/report/) from result files of any track.
    Report(report::ReportArgs),
    /// Run one scenario in this process and print its JSON (used by `bench`).
    #[command(hide = true)]
    BenchOne(harness::BenchOneArgs),
    /// Build the model and run the first forward, then exit (`dispatch_cold_process`).
    #[command(hide = true)]
    ColdStart(harness::ColdStartArgs),
    /// Logits, losses and every parameter gradient of one batch, as safetensors.
    Grads(cli::grads::GradsArgs),
    /// Train on a text file (byte-level tokens): loss.csv, loss.svg and a checkpoint.
    Train(cli::train::TrainArgs),
    /// Generate text from a checkpoint (greedy, temperature, top-k or top-p).
    Generate(cli::generate::GenerateArgs),
    /// Print the memory plan: flat buffers, workspace entries per mode, KV cache.
    Plan(cli::plan::PlanArgs),
    /// Time `pick_token` through an enum, a `dyn` trait object and a generic (cold/warm).
    DispatchCompare(cli::dispatch_compare::DispatchCompareArgs),
    /// Run extreme-but-valid inputs and write docs/stability.md (NaN/Inf, divergence, typed errors).
    Stress(cli::stress::StressArgs),
    /// Write a checkpoint as Hugging Face does: bf16/f16 tensors, sharded with an index.
    Export(cli::export::ExportArgs),
    /// Tokenizers: `moe tokenizer train` (byte-level BPE tokenizer.json).
    Tokenizer(cli::tokenizer::TokenizerArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Demo => cli::demo::run(),
        Command::Bench(args) => harness::bench(args),
        Command::Report(args) => report::run(args),
        Command::BenchOne(args) => harness::bench_one(args),
        Command::ColdStart(args) => harness::cold_start(args),
        Command::Grads(args) => cli::grads::run(args).map_err(moe_bench::Error::from),
        Command::Train(args) => cli::train::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::DispatchCompare(args) => cli::dispatch_compare::run(args),
        Command::Stress(args) => cli::stress::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Tokenizer(args) => cli::tokenizer::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
