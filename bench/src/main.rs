//! `moe` — command-line front end of moe-rs.
//!
//! Each subcommand is one variant of [`Command`] dispatching to one module
//! function; adding a subcommand is a new variant, a new module and one match
//! arm.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc_counter;
mod demo;
mod dispatch_compare;
mod flops;
mod harness;
mod measure;
mod meta;
mod plan;
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
    /// Train on a text file (byte-level tokens): loss.csv, loss.svg and a checkpoint.
    Train(moe_bench::train::TrainArgs),
    /// Generate text from a checkpoint (greedy, temperature, top-k or top-p).
    Generate(moe_bench::generate::GenerateArgs),
    /// Print the memory plan: flat buffers, workspace entries per mode, KV cache.
    Plan(plan::PlanArgs),
    /// Time `pick_token` through an enum, a `dyn` trait object and a generic (cold/warm).
    DispatchCompare(dispatch_compare::DispatchCompareArgs),
    /// Run extreme-but-valid inputs and write docs/stability.md (NaN/Inf, divergence, typed errors).
    Stress(moe_bench::stress::StressArgs),
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
        Command::Train(args) => moe_bench::train::run(args),
        Command::Generate(args) => moe_bench::generate::run(args),
        Command::Plan(args) => plan::run(args),
        Command::DispatchCompare(args) => dispatch_compare::run(args),
        Command::Stress(args) => moe_bench::stress::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
