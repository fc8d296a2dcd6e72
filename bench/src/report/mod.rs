//! `moe report FILE.json…`: writes `docs/bench-results.md` and SVG plots
//! under `docs/plots/` from one or more result files in the CONTRACT §7
//! schema — ours, or another language's (a column per file, named by its
//! `metadata.language`).
//!
//! Files are read as untyped JSON so that another harness's `null`s, missing
//! fields and integer/float differences are tolerated: a missing value prints
//! as `n/a`. Throughput and GFLOP/s are recomputed from each file's median
//! with *our* token and FLOP counts (docs/flops.md) for every scenario id we
//! know, so that all columns use one definition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod markdown;
pub mod plots;

use clap::Args;
use serde_json::Value;

use crate::harness::scenarios::{self, SCENARIOS};
use crate::io::atomic::write_bytes;
use crate::Error;

/// Options of `moe report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Result files; the first is the primary run, each further one adds columns.
    #[arg(required = true, value_name = "FILE.json")]
    pub files: Vec<PathBuf>,
    /// The Markdown report to write.
    #[arg(long, default_value = "docs/bench-results.md")]
    pub md: PathBuf,
    /// Directory of the SVG plots.
    #[arg(long, default_value = "docs/plots")]
    pub plots: PathBuf,
}

/// One result file.
#[derive(Debug)]
struct Run {
    /// Column name: `metadata.language`, disambiguated by file name if repeated.
    name: String,
    /// The file as given.
    path: PathBuf,
    meta: serde_json::Map<String, Value>,
    /// Scenario id → scenario object.
    by_id: BTreeMap<String, Value>,
    /// Ids in file order.
    ids: Vec<String>,
}

/// `v[path[0]][path[1]]…` as a number.
fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

impl Run {
    fn load(path: &Path) -> Result<Run, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = v
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| format!("{}: no \"metadata\" object", path.display()))?;
        let list = v
            .get("scenarios")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{}: no \"scenarios\" array", path.display()))?;
        let mut by_id = BTreeMap::new();
        let mut ids = Vec::new();
        for s in list {
            if let Some(id) = s.get("id").and_then(Value::as_str) {
                ids.push(id.to_owned());
                by_id.insert(id.to_owned(), s.clone());
            }
        }
        let name = meta
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        Ok(Run {
            name,
            path: path.to_owned(),
            meta,
            by_id,
            ids,
        })
    }

    fn get(&self, id: &str, path: &[&str]) -> Option<f64> {
        num(self.by_id.get(id)?, path)
    }

    fn median(&self, id: &str) -> Option<f64> {
        self.get(id, &["median_ns"]).filter(|&m| m > 0.0)
    }

    /// Tokens/s at the median: our token count for known ids, else the file's value.
    fn tokens_per_sec(&self, id: &str) -> Option<f64> {
        match scenarios::find(id) {
            Some(sc) => Some(sc.kind.tokens()? as f64 / (self.median(id)? * 1e-9)),
            None => self.get(id, &["throughput_tokens_per_sec"]),
        }
    }

    /// GFLOP/s at the median: our FLOP count for known ids, else the file's value.
    fn gflops(&self, id: &str) -> Option<f64> {
        match scenarios::find(id) {
            Some(sc) => Some(sc.kind.flops()? as f64 / self.median(id)?),
            None => self.get(id, &["derived", "gflops"]),
        }
    }

    fn meta_str(&self, key: &str) -> String {
        match self.meta.get(key) {
            None | Some(Value::Null) => "n/a".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) if o.is_empty() => "(none)".to_owned(),
            Some(Value::Object(o)) => o
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            Some(v) => v.to_string(),
        }
    }
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

/// `moe report`.
///
/// # Errors
/// Unreadable or malformed files, or unwritable outputs.
pub fn run(args: ReportArgs) -> Result<(), Error> {
    let mut runs = args
        .files
        .iter()
        .map(|p| Run::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    disambiguate(&mut runs);
    std::fs::create_dir_all(&args.plots)?;
    if let Some(dir) = args.md.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Plot links relative to the Markdown file when the plots are below it.
    let md_dir = args.md.parent().unwrap_or(Path::new(""));
    let link_dir = args
        .plots
        .strip_prefix(md_dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| {
            std::fs::canonicalize(&args.plots).unwrap_or_else(|_| args.plots.clone())
        });
    let link = |file: &str| link_dir.join(file).display().to_string().replace('\\', "/");

    let plots_written = plots::write_all(&runs, &args.plots)?;
    let md = markdown::render(&runs, &args.files, &plots_written, &link);
    write_bytes(&args.md, md.as_bytes())?;
    println!(
        "wrote {} and {} plot(s) in {}",
        args.md.display(),
        plots_written.len(),
        args.plots.display()
    );
    Ok(())
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
            md: dir.join("out.md"),
            plots: dir.join("plots"),
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
