//! `moe` — command-line front end of moe-rs.
//!
//! Each subcommand is one variant of [`Command`] dispatching to one module
//! function; adding a subcommand is a new variant, a new module and one match
//! arm.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc_counter;
mod demo;
mod flops;
mod harness;
mod measure;
mod meta;
mod report;
mod rusage;
mod scenarios;
mod schema;
mod stats;

/// Every heap allocation is counted (see `alloc_counter`).
#[global_allocator]
static GLOBAL: alloc_counter::CountingAlloc = alloc_counter::CountingAlloc;

/// The error type of the command-line layer.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// Write docs/bench-results.md and SVG plots from one or more result files.
    Report(report::ReportArgs),
    /// Run one scenario in this process and print its JSON (used by `bench`).
    #[command(hide = true)]
    BenchOne(harness::BenchOneArgs),
    /// Build the model and run the first forward, then exit (`dispatch_cold_process`).
    #[command(hide = true)]
    ColdStart(harness::ColdStartArgs),
    /// Logits, losses and every parameter gradient of one batch, as safetensors.
    Grads(moe_bench::grads::GradsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo::run(),
        Command::Bench(args) => harness::bench(args),
        Command::Report(args) => report::run(args),
        Command::BenchOne(args) => harness::bench_one(args),
        Command::ColdStart(args) => harness::cold_start(args),
        Command::Grads(args) => moe_bench::grads::run(args).map_err(BoxError::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
