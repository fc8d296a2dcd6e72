//! `moe bench`, and the hidden `bench-one` / `cold-start` subcommands.
//!
//! By default every scenario runs in its own child process (`moe bench-one
//! ID`, which prints that scenario's JSON on stdout), so that
//! `peak_rss_bytes` is that scenario's own and no scenario inherits another's
//! heap or caches; `--in-process` runs them all in this process (then
//! `peak_rss_bytes` is the process's high-water mark so far).

pub mod flops;
pub mod measure;
pub mod meta;
pub mod scenarios;
pub mod schema;
pub mod stats;
// The only `unsafe` of the tool (`#![deny(unsafe_code)]` everywhere else).
#[allow(unsafe_code)]
pub mod sys;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use self::meta::RunSettings;
use self::scenarios::{RunOpts, Scenario, N_TRIALS, N_WARMUP, SCENARIOS, SEED};
use self::schema::{BenchFile, ScenarioResult, AXES};
use crate::fmt::{fmt_bytes, fmt_ns};
use crate::Error;

/// Options of `moe bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run only these scenario ids (space- or comma-separated; see --list).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "ID")]
    pub only: Vec<String>,
    /// Run only the scenarios of these axes: memory, compiler, type_system, parallel, scale.
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub axis: Vec<String>,
    /// Also run the heavy scenarios (`full_decode_bf16`: the 6.88 B Full
    /// profile in bf16, ≈ 13.8 GB, minutes), which a default run leaves out
    /// (`--only ID` selects one too).
    #[arg(long)]
    pub heavy: bool,
    /// Timed trials per scenario.
    #[arg(long, default_value_t = N_TRIALS)]
    pub trials: usize,
    /// Warmup runs per scenario (timed, reported apart, not in the statistics).
    #[arg(long, default_value_t = N_WARMUP)]
    pub warmup: usize,
    /// Where to write the JSON result; `-` = stdout (the table then goes to
    /// stderr) [default: target/moe-bench/RUN/rust.json, RUN = the start time
    /// and the process id]. The committed reference is `--out benchmarks/rust.json`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Threads per model of the spec's single-model scenarios: they stay on
    /// one thread (comparable with the other tracks), so anything else is
    /// refused; one model on many threads is measured by the `threads_*`
    /// scenarios (T = 1, 2, 4 each), whatever this is.
    #[arg(long, value_name = "N", value_parser = crate::cli::threads_arg, default_value_t = 1)]
    pub threads: usize,
    /// Run every scenario in this process instead of one child process each.
    #[arg(long)]
    pub in_process: bool,
    /// List the scenario ids and axes, then exit.
    #[arg(long)]
    pub list: bool,
}

/// Options of `moe bench-one`.
#[derive(Debug, Args)]
pub struct BenchOneArgs {
    /// Scenario id.
    pub id: String,
    /// Timed trials.
    #[arg(long, default_value_t = N_TRIALS)]
    pub trials: usize,
    /// Warmup runs.
    #[arg(long, default_value_t = N_WARMUP)]
    pub warmup: usize,
}

/// Options of `moe cold-start`.
#[derive(Debug, Args)]
pub struct ColdStartArgs {
    /// Batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 8)]
    pub seq: usize,
    /// Seed.
    #[arg(long, default_value_t = SEED)]
    pub seed: u64,
}

/// The default output directory of `moe bench` (under the ignored `target/`).
pub const DEFAULT_DIR: &str = "target/moe-bench";

/// Where `moe bench` writes its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// `--out -`.
    Stdout,
    /// A file, written atomically.
    File(PathBuf),
}

impl Out {
    /// `--out` as given, or the default `target/moe-bench/RUN/rust.json`.
    pub fn resolve(out: Option<&std::path::Path>) -> Out {
        match out {
            Some(p) if p.as_os_str() == "-" => Out::Stdout,
            Some(p) => Out::File(p.to_path_buf()),
            None => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let stamp: String = meta::rfc3339_utc(secs)
                    .chars()
                    .filter(|c| *c != '-' && *c != ':')
                    .collect();
                let run = format!("{stamp}-{}", std::process::id());
                Out::File(PathBuf::from(DEFAULT_DIR).join(run).join("rust.json"))
            }
        }
    }
}

/// Writes `extra.speedup_vs_twin = twin median / median` into every result
/// whose `params.twin` names another result of the same run.
fn link_twins(results: &mut [ScenarioResult]) {
    let medians: Vec<(String, u64)> = results
        .iter()
        .map(|r| (r.id.clone(), r.median_ns))
        .collect();
    for r in results.iter_mut() {
        let Some(twin) = r.params.get("twin").and_then(|v| v.as_str()) else {
            continue;
        };
        let Some(&(_, tm)) = medians.iter().find(|(id, _)| id == twin) else {
            continue;
        };
        if r.median_ns == 0 {
            continue;
        }
        let ratio = tm as f64 / r.median_ns as f64;
        let extra = r.extra.get_or_insert_with(|| serde_json::json!({}));
        extra["speedup_vs_twin"] = serde_json::json!(ratio);
    }
}

/// The scenarios picked by `--only` and `--axis` (both filters apply), heavy ones excluded unless named.
#[cfg(test)]
fn select(only: &[String], axes: &[String]) -> Result<Vec<&'static Scenario>, Error> {
    select_heavy(only, axes, false)
}

/// [`select`], with the heavy scenarios ([`scenarios::HEAVY`]) only when
/// `heavy` or named by `--only`.
fn select_heavy(
    only: &[String],
    axes: &[String],
    heavy: bool,
) -> Result<Vec<&'static Scenario>, Error> {
    for id in only {
        if scenarios::find(id).is_none() {
            let known: Vec<&str> = SCENARIOS.iter().map(|s| s.id).collect();
            return Err(format!("unknown scenario id {id:?}; known: {}", known.join(", ")).into());
        }
    }
    for a in axes {
        if !AXES.contains(&a.as_str()) {
            return Err(format!("unknown axis {a:?}; known: {}", AXES.join(", ")).into());
        }
    }
    let picked: Vec<&'static Scenario> = SCENARIOS
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|id| id == s.id))
        .filter(|s| axes.is_empty() || axes.iter().any(|a| a == s.axis))
        .filter(|s| heavy || !only.is_empty() || !scenarios::HEAVY.contains(&s.id))
        .collect();
    if picked.is_empty() {
        return Err("--only/--axis selected no scenario".into());
    }
    Ok(picked)
}

fn run_opts(warmup: usize, trials: usize) -> Result<RunOpts, Error> {
    if trials == 0 {
        return Err("--trials must be at least 1".into());
    }
    Ok(RunOpts {
        warmup,
        trials,
        seed: SEED,
        exe: std::env::current_exe()?,
    })
}

/// Runs `sc` in a child `moe bench-one` and parses its JSON.
fn run_isolated(sc: &Scenario, o: &RunOpts) -> Result<ScenarioResult, Error> {
    let out = Command::new(&o.exe)
        .args([
            "bench-one",
            sc.id,
            "--trials",
            &o.trials.to_string(),
            "--warmup",
            &o.warmup.to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("`moe bench-one {}` failed ({})", sc.id, out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `moe bench`.
///
/// # Errors
/// Bad flags, an unwritable output, or any failed scenario (the others still
/// run and are written).
pub fn bench(args: BenchArgs) -> Result<(), Error> {
    if args.list {
        for s in SCENARIOS {
            println!("{:<29} {}", s.id, s.axis);
        }
        return Ok(());
    }
    let picked = select_heavy(&args.only, &args.axis, args.heavy)?;
    let o = run_opts(args.warmup, args.trials)?;
    // The output first: a bench takes minutes, an unwritable --out must fail now.
    let out = Out::resolve(args.out.as_deref());
    if let Out::File(path) = &out {
        crate::io::atomic::check_writable(path)?;
    }
    if args.threads != 1 {
        return Err(crate::cli::arg_error(
            "--threads",
            format!(
                "{}: the spec's single-model scenarios run on 1 thread; \
                 one model on 1, 2 and 4 threads is `--only threads_train_T1,…` (see --list)",
                args.threads
            ),
        ));
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run `cargo run --release -p moe-bench -- bench` for real numbers");
    }
    let metadata = meta::collect(RunSettings {
        n_trials: o.trials as u64,
        n_warmup: o.warmup as u64,
        seed: o.seed,
        threads: 1,
        isolated: !args.in_process,
    });
    let t0 = Instant::now();
    let pb = ProgressBar::new(picked.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let mut results = Vec::with_capacity(picked.len());
    let mut failures = Vec::new();
    for sc in &picked {
        pb.set_message(sc.id);
        let r = if args.in_process {
            scenarios::run(sc, &o)
        } else {
            run_isolated(sc, &o)
        };
        match r {
            Ok(r) => results.push(r),
            Err(e) => {
                pb.println(format!("{}: FAILED: {e}", sc.id));
                failures.push(sc.id);
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    link_twins(&mut results);
    let total = t0.elapsed();
    let file = BenchFile {
        metadata,
        scenarios: results,
    };
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    let done = format!(
        "{} scenarios in {:.1} s ({})",
        file.scenarios.len(),
        total.as_secs_f64(),
        file.metadata.isolation
    );
    match &out {
        Out::Stdout => {
            print_summary(&mut std::io::stderr().lock(), &file)?;
            eprintln!("{done}");
            std::io::stdout().lock().write_all(text.as_bytes())?;
        }
        Out::File(path) => {
            crate::io::atomic::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
            print_summary(&mut std::io::stdout().lock(), &file)?;
            println!("{done}, wrote {}", path.display());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} scenario(s) failed: {}",
            failures.len(),
            failures.join(", ")
        )
        .into())
    }
}

/// `moe bench-one ID`: one scenario, JSON on stdout.
///
/// # Errors
/// Unknown id or a failed scenario.
pub fn bench_one(args: BenchOneArgs) -> Result<(), Error> {
    let sc =
        scenarios::find(&args.id).ok_or_else(|| format!("unknown scenario id {:?}", args.id))?;
    let o = run_opts(args.warmup, args.trials)?;
    let r = scenarios::run(sc, &o)?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &r)?;
    writeln!(stdout)?;
    Ok(())
}

/// `moe cold-start`: construction + first forward, one JSON line on stdout.
///
/// # Errors
/// moe-core errors.
pub fn cold_start(args: ColdStartArgs) -> Result<(), Error> {
    let r = scenarios::cold_start(args.batch, args.seq, args.seed)?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &r)?;
    writeln!(stdout)?;
    Ok(())
}

fn print_summary(w: &mut dyn Write, f: &BenchFile) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<29} {:<11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>12} {:>8}",
        "scenario",
        "axis",
        "median",
        "p95",
        "IQR",
        "cpu",
        "alloc",
        "allocs",
        "peak RSS",
        "tokens/s",
        "GFLOP/s"
    )?;
    for s in &f.scenarios {
        writeln!(
            w,
            "{:<29} {:<11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>12} {:>8}",
            s.id,
            s.axis,
            fmt_ns(s.median_ns as f64),
            fmt_ns(s.p95_ns as f64),
            fmt_ns(s.iqr_ns as f64),
            fmt_ns(s.cpu_median_ns as f64),
            fmt_bytes(s.memory.alloc_bytes as f64),
            s.memory.alloc_count,
            fmt_bytes(s.memory.peak_rss_bytes as f64),
            s.throughput_tokens_per_sec
                .map_or("-".to_owned(), |x| format!("{x:.0}")),
            s.derived
                .gflops
                .map_or("-".to_owned(), |x| format!("{x:.2}")),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_filters_and_rejects_unknown_names() {
        let ids = |v: Vec<&Scenario>| v.iter().map(|s| s.id).collect::<Vec<_>>();
        let all = select(&[], &[]).unwrap();
        assert_eq!(all.len(), SCENARIOS.len() - scenarios::HEAVY.len());
        assert!(
            !ids(all).contains(&"full_decode_bf16"),
            "heavy left out by default"
        );
        let heavy = select_heavy(&[], &[], true).unwrap();
        assert_eq!(heavy.len(), SCENARIOS.len());
        let full = select(&["full_decode_bf16".into()], &[]).unwrap();
        assert_eq!(ids(full), ["full_decode_bf16"]);
        let compiler = select(&[], &["compiler".into()]).unwrap();
        assert_eq!(
            ids(compiler),
            [
                "kernel_matmul",
                "kernel_softmax",
                "kernel_rmsnorm",
                "kernel_matmul_portable",
                "kernel_matmul_matrixmultiply",
                "machine_peak",
                "machine_fma_peak",
                "machine_bandwidth",
                #[cfg(feature = "openblas")]
                "kernel_matmul_openblas",
                #[cfg(feature = "openblas")]
                "machine_peak_portable",
                #[cfg(feature = "openblas")]
                "machine_peak_openblas",
            ]
        );
        let one = select(&["dispatch_cold".into()], &[]).unwrap();
        assert_eq!(ids(one), ["dispatch_cold"]);
        assert!(select(&["nope".into()], &[]).is_err());
        assert!(select(&[], &["gpu".into()]).is_err());
        assert!(select(&["dispatch_cold".into()], &["memory".into()]).is_err());
    }
}
