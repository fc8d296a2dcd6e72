//! `moe report FILE.json…`: a Markdown report and SVG plots from one or more
//! result files in the CONTRACT §7 schema — ours, or another track's (a
//! column per file, named by the track that wrote it: [`check::Track`]).
//!
//! Outputs go to `target/moe-bench/report/` (`bench-results.md`, `plots/`)
//! unless `--md`/`--plots` say otherwise; both are checked to be writable
//! before anything is read, and every file is written atomically.
//!
//! Files are read as untyped JSON (bounded: [`crate::io::read::MAX_JSON_BYTES`])
//! so that another harness's `null`s, missing fields and integer/float
//! differences are tolerated, then *checked* ([`check`]): units, placeholders
//! (`n/a`), and every derived figure recomputed from the file's own measured
//! fields and `params`, with a flag and a note where the file disagrees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod check;
mod error;
mod markdown;
pub mod plots;
pub mod roofline;

use clap::Args;
use serde_json::Value;

pub use self::check::Run;
pub use self::error::ReportError;
use crate::harness::scenarios::{self, SCENARIOS};
use crate::io::atomic::{check_writable, write_atomic};
use crate::Error;

/// The default output directory of `moe report` (under the ignored `target/`).
pub const DEFAULT_DIR: &str = "target/moe-bench/report";

/// Options of `moe report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files; each adds a column (the first is the default baseline).
    #[arg(required = true, value_name = "FILE.json")]
    pub files: Vec<PathBuf>,
    /// The Markdown report to write [default: target/moe-bench/report/bench-results.md].
    #[arg(long, value_name = "FILE.md")]
    pub md: Option<PathBuf>,
    /// Directory of the SVG plots [default: `plots/` next to the Markdown file].
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// The run the summary table's ratios divide by: a column name (`go`,
    /// `moe-rs`, …) or a file name; default the first file.
    #[arg(long, value_name = "RUN")]
    pub baseline: Option<String>,
}

/// Gives repeated languages distinct column names (`rust (a.json)`).
fn disambiguate(runs: &mut [Run]) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs.iter() {
        *counts.entry(r.name.clone()).or_default() += 1;
    }
    for r in runs.iter_mut() {
        if counts[&r.name] > 1 {
            let file = r.path.file_name().map_or_else(
                || r.path.display().to_string(),
                |f| f.to_string_lossy().into_owned(),
            );
            r.name = format!("{} ({file})", r.name);
        }
    }
}

/// Every id of any run: our table's order first, then unknown ids in file order.
fn all_ids(runs: &[Run]) -> Vec<String> {
    let mut ids: Vec<String> = SCENARIOS
        .iter()
        .filter(|s| runs.iter().any(|r| r.by_id.contains_key(s.id)))
        .map(|s| s.id.to_owned())
        .collect();
    for r in runs {
        for id in &r.ids {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
    }
    ids
}

/// The axis of `id` (our table, else the first file that has it).
fn axis_of(runs: &[Run], id: &str) -> String {
    if let Some(sc) = scenarios::find(id) {
        return sc.axis.to_owned();
    }
    runs.iter()
        .find_map(|r| r.by_id.get(id)?.get("axis")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

/// `b2 s32 c64 forward`-style summary of a `params` object.
fn params_str(runs: &[Run], id: &str) -> String {
    let Some(p) = runs
        .iter()
        .find_map(|r| r.by_id.get(id)?.get("params")?.as_object())
    else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (key, prefix) in [
        ("batch", "b"),
        ("seq_len", "s"),
        ("hidden_dim", "c"),
        ("thread_count", "T"),
    ] {
        if let Some(v) = p.get(key).and_then(Value::as_u64) {
            parts.push(format!("{prefix}{v}"));
        }
    }
    if let (Some(m), Some(k), Some(n)) = (p.get("M"), p.get("K"), p.get("N")) {
        parts.push(format!("{m}×{k}×{n}"));
    }
    if let Some(n) = p.get("n") {
        parts.push(format!("n={n}"));
    }
    if let Some(s) = p.get("shape") {
        parts.push(format!("shape {s}"));
    }
    for key in ["workload", "backend"] {
        if let Some(v) = p.get(key).and_then(Value::as_str) {
            parts.push(v.to_owned());
        }
    }
    parts.join(" ")
}

/// The index of the `--baseline` run.
fn baseline_index(runs: &[Run], given: Option<&str>) -> Result<usize, ReportError> {
    let Some(given) = given else { return Ok(0) };
    runs.iter()
        .position(|r| {
            r.name == given
                || r.path
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy() == given)
                || r.path.as_os_str().to_string_lossy() == given
        })
        .ok_or_else(|| ReportError::UnknownBaseline {
            given: given.to_owned(),
            known: runs.iter().map(|r| r.name.clone()).collect(),
        })
}

/// The plot file names [`plots::write_all`] may write (for the writability check).
const PLOT_PROBE: &str = "thread_speedup.svg";

/// `moe report`.
///
/// # Errors
/// Unwritable outputs (checked first), unreadable or inconsistent files
/// ([`ReportError`]), an unknown `--baseline`.
pub fn run(args: ReportArgs) -> Result<(), Error> {
    let md_path = args
        .md
        .clone()
        .unwrap_or_else(|| Path::new(DEFAULT_DIR).join("bench-results.md"));
    let plots_dir = args.plots.clone().unwrap_or_else(|| {
        md_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("plots")
    });
    // Outputs first: an unwritable path fails before any work.
    check_writable(&md_path)?;
    check_writable(&plots_dir.join(PLOT_PROBE))?;
    let mut runs = args
        .files
        .iter()
        .map(|p| Run::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    disambiguate(&mut runs);
    let baseline = baseline_index(&runs, args.baseline.as_deref())?;
    // Plot links relative to the Markdown file when the plots are below it.
    let md_dir = md_path.parent().unwrap_or(Path::new(""));
    let link_dir = plots_dir
        .strip_prefix(md_dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| {
            std::fs::canonicalize(&plots_dir).unwrap_or_else(|_| plots_dir.clone())
        });
    let link = |file: &str| link_dir.join(file).display().to_string().replace('\\', "/");

    let plots_written = plots::write_all(&runs, &plots_dir)?;
    let mut options = String::new();
    if let Some(md) = &args.md {
        options.push_str(&format!(" --md {}", md.display()));
    }
    if let Some(p) = &args.plots {
        options.push_str(&format!(" --plots {}", p.display()));
    }
    if let Some(b) = &args.baseline {
        options.push_str(&format!(" --baseline {b}"));
    }
    let md = markdown::render(
        &runs,
        &args.files,
        baseline,
        &options,
        &plots_written,
        &link,
    );
    write_atomic(&md_path, |w| w.write_all(md.as_bytes()))?;
    println!(
        "wrote {} and {} plot(s) in {}",
        md_path.display(),
        plots_written.len(),
        plots_dir.display()
    );
    Ok(())
}

/// Renders the Markdown of result-file texts without writing anything (the
/// `report_json` fuzz target's entry point): `(name, text)` pairs.
///
/// # Errors
/// As [`Run::parse`].
pub fn render_texts(files: &[(&str, &str)]) -> Result<String, ReportError> {
    let mut runs = files
        .iter()
        .map(|(name, text)| Run::parse(text, Path::new(name)))
        .collect::<Result<Vec<_>, _>>()?;
    disambiguate(&mut runs);
    let paths: Vec<PathBuf> = files.iter().map(|(n, _)| PathBuf::from(n)).collect();
    Ok(markdown::render(&runs, &paths, 0, "", &[], &|f: &str| {
        f.to_owned()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_foreign_files_with_nulls_and_missing_fields() {
        let dir = std::env::temp_dir().join(format!("moe-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let py = dir.join("python.json");
        std::fs::write(
            &py,
            r#"{"metadata": {"language": "python", "n_trials": 10},
                "scenarios": [
                  {"id": "parallel_T1", "axis": "parallel", "median_ns": 2000000, "memory": {"peak_rss_bytes": 1000, "alloc_bytes": null},
                   "gc": {"total_gc_time_ns": null}, "numerical": {"nan_count": 0, "inf_count": 0, "max_abs": 1.5}},
                  {"id": "parallel_T2", "axis": "parallel", "median_ns": 2500000},
                  {"id": "kernel_matmul", "axis": "compiler", "median_ns": 10000, "params": {"M": 64, "K": 64, "N": 64}},
                  {"id": "python_only", "axis": "memory", "median_ns": 5}
                ]}"#,
        )
        .unwrap();
        let run = Run::load(&py).unwrap();
        assert_eq!(run.tokens_per_sec("parallel_T1"), Some(64.0 / 2e-3));
        assert!((run.gflops("kernel_matmul").unwrap() - 52.4288).abs() < 1e-9);
        assert_eq!(run.get("parallel_T1", &["memory", "alloc_bytes"]), None);
        let args = ReportArgs {
            files: vec![py.clone(), py.clone()],
            md: Some(dir.join("out.md")),
            plots: Some(dir.join("plots")),
            baseline: None,
        };
        run_report(args);
        let md = std::fs::read_to_string(dir.join("out.md")).unwrap();
        assert!(
            md.contains("python (python.json)"),
            "duplicate languages are disambiguated"
        );
        assert!(md.contains("`python_only`"));
        assert!(md.contains("n/a"));
        assert!(dir.join("plots/thread_speedup.svg").exists());
        assert!(dir.join("plots/kernel_gflops.svg").exists());
        let svg = std::fs::read_to_string(dir.join("plots/kernel_gflops.svg")).unwrap();
        assert!(svg.contains("<text") && svg.contains("matmul"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn run_report(args: ReportArgs) {
        run(args).unwrap();
    }
}
