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
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::Value;

use crate::fmt::{fmt_bytes, fmt_ns};
use crate::harness::scenarios::{self, SCENARIOS, SPEC_SCENARIOS};
use crate::harness::schema::AXES;
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

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), f)
}

fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn h(s: &str) -> String {
    s.to_owned()
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
    let md = render(&runs, &args, &plots_written, &link);
    std::fs::write(&args.md, md)?;
    println!(
        "wrote {} and {} plot(s) in {}",
        args.md.display(),
        plots_written.len(),
        args.plots.display()
    );
    Ok(())
}

fn render(
    runs: &[Run],
    args: &ReportArgs,
    plots: &[&'static str],
    link: &dyn Fn(&str) -> String,
) -> String {
    let mut o = String::new();
    let ids = all_ids(runs);
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    let files: Vec<String> = args
        .files
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    let _ = writeln!(o, "# Benchmark results\n");
    let _ = writeln!(
        o,
        "Generated by `moe report {}` — do not edit by hand; rerun the command instead \
         (procedure: [runbook.md](runbook.md), FLOP counts: [flops.md](flops.md)).\n",
        args.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        o,
        "Runs: {}.\n",
        names
            .iter()
            .zip(&files)
            .map(|(n, f)| format!("**{n}** ({f})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let has_plot = |p: &str| plots.contains(&p);

    // Machine and run metadata.
    let _ = writeln!(o, "## Machine and run metadata\n");
    let mut keys: Vec<String> = [
        "language",
        "language_version",
        "os",
        "kernel",
        "arch",
        "cpu_model",
        "logical_cpus",
        "load_average",
        "timestamp",
        "n_trials",
        "n_warmup",
        "seed",
        "matmul_backend",
        "matmul_kernel",
        "threads",
        "git_rev",
        "git_dirty",
        "build_profile",
        "isolation",
        "openblas_env",
        "schema_version",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in runs {
        for k in r.meta.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut header = vec![h("field")];
    header.extend(names.iter().cloned());
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let mut row = vec![format!("`{k}`")];
            row.extend(runs.iter().map(|r| r.meta_str(k)));
            row
        })
        .collect();
    table(&mut o, &header, &rows);

    // Wall time per axis.
    let _ = writeln!(
        o,
        "## Wall time per axis\n\nMedian, interquartile range and median CPU time (user + sys, whole process) of the \
         timed trials. Quantiles are type 7 (linear interpolation, as NumPy). {}\n",
        if runs.len() > 1 {
            format!("`×{}` is each run's median divided by **{}**'s.", names[0], names[0])
        } else {
            String::new()
        }
    );
    let axes: Vec<String> = {
        let mut a: Vec<String> = AXES.iter().map(|s| s.to_string()).collect();
        for id in &ids {
            let ax = axis_of(runs, id);
            if !a.contains(&ax) {
                a.push(ax);
            }
        }
        a
    };
    for axis in &axes {
        let axis_ids: Vec<&String> = ids.iter().filter(|id| axis_of(runs, id) == *axis).collect();
        if axis_ids.is_empty() {
            continue;
        }
        let _ = writeln!(o, "### {axis}\n");
        let mut header = vec![h("scenario"), h("params")];
        for (i, n) in names.iter().enumerate() {
            header.push(format!("{n} median"));
            header.push(format!("{n} IQR"));
            header.push(format!("{n} CPU"));
            if i > 0 {
                header.push(format!("×{}", names[0]));
            }
        }
        let rows: Vec<Vec<String>> = axis_ids
            .iter()
            .map(|id| {
                let mut row = vec![format!("`{id}`{}", extra_mark(id)), params_str(runs, id)];
                for (i, r) in runs.iter().enumerate() {
                    row.push(opt(r.median(id), fmt_ns));
                    row.push(opt(r.get(id, &["iqr_ns"]), fmt_ns));
                    row.push(opt(r.get(id, &["cpu_median_ns"]), fmt_ns));
                    if i > 0 {
                        let ratio = r.median(id).zip(runs[0].median(id)).map(|(a, b)| a / b);
                        row.push(opt(ratio, |x| format!("{x:.2}")));
                    }
                }
                row
            })
            .collect();
        table(&mut o, &header, &rows);
        if axis == "memory" {
            for (file, alt) in [
                ("scaling_batch_time.svg", "forward time vs batch"),
                ("scaling_seq_time.svg", "forward time vs sequence length"),
                ("scaling_batch_alloc.svg", "heap bytes per forward vs batch"),
                (
                    "scaling_seq_alloc.svg",
                    "heap bytes per forward vs sequence length",
                ),
            ] {
                if has_plot(file) {
                    let _ = writeln!(o, "![{alt}]({})\n", link(file));
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "† extra scenario of this harness (not one of the spec's 22).\n"
    );

    // Throughput.
    let _ = writeln!(o, "## Throughput and GFLOP/s\n");
    let _ = writeln!(
        o,
        "Tokens/s = tokens per iteration (all threads) / median. GFLOP/s = analytic FLOPs per iteration \
         ([flops.md](flops.md)) / median, recomputed here for every run with the same counts. \
         Kernels have no tokens; `dispatch_cold*` no FLOP count (construction dominates).\n"
    );
    let mut header = vec![h("scenario"), h("params")];
    for n in &names {
        header.push(format!("{n} tokens/s"));
        header.push(format!("{n} GFLOP/s"));
    }
    let rows: Vec<Vec<String>> = ids
        .iter()
        .filter(|id| {
            runs.iter()
                .any(|r| r.tokens_per_sec(id).is_some() || r.gflops(id).is_some())
        })
        .map(|id| {
            let mut row = vec![format!("`{id}`{}", extra_mark(id)), params_str(runs, id)];
            for r in runs {
                row.push(opt(r.tokens_per_sec(id), |x| format!("{x:.0}")));
                row.push(opt(r.gflops(id), |x| format!("{x:.2}")));
            }
            row
        })
        .collect();
    table(&mut o, &header, &rows);
    if has_plot("kernel_gflops.svg") {
        let _ = writeln!(o, "![kernel GFLOP/s]({})\n", link("kernel_gflops.svg"));
    }

    // Dispatch.
    let _ = writeln!(o, "## Cold vs warm dispatch\n");
    let _ = writeln!(
        o,
        "`cold/warm = dispatch_cold / dispatch_warm` (spec §6.3). Note the two scenarios run different shapes \
         (cold: b1 s8, construction + first forward; warm: b2 s32 forward), as the spec defines them. \
         `dispatch_cold_process` adds process start-up and exit (spawn → exit of `moe cold-start`).\n"
    );
    let mut header = vec![h("metric")];
    header.extend(names.iter().cloned());
    let ratio = |r: &Run, a: &str, b: &str| r.median(a).zip(r.median(b)).map(|(x, y)| x / y);
    let rows = vec![
        std::iter::once(h("`dispatch_warm` median"))
            .chain(runs.iter().map(|r| opt(r.median("dispatch_warm"), fmt_ns)))
            .collect(),
        std::iter::once(h("`dispatch_cold` median"))
            .chain(runs.iter().map(|r| opt(r.median("dispatch_cold"), fmt_ns)))
            .collect(),
        std::iter::once(h("cold/warm ratio"))
            .chain(runs.iter().map(|r| {
                opt(ratio(r, "dispatch_cold", "dispatch_warm"), |x| {
                    format!("{x:.2}")
                })
            }))
            .collect(),
        std::iter::once(h("`dispatch_cold_process` median †"))
            .chain(
                runs.iter()
                    .map(|r| opt(r.median("dispatch_cold_process"), fmt_ns)),
            )
            .collect::<Vec<_>>(),
    ];
    table(&mut o, &header, &rows);

    // Parallel.
    let _ = writeln!(o, "## Thread scaling\n");
    let _ = writeln!(
        o,
        "T independent models, one per thread, barrier-synchronised; one trial = every thread does one iteration. \
         speedup = throughput(T) / throughput(T1); efficiency = speedup / T; CPU/wall = median CPU time of the \
         process / median wall time (≈ busy cores).\n"
    );
    let mut header = vec![h("workload"), h("T")];
    for n in &names {
        header.push(format!("{n} tokens/s"));
        header.push(format!("{n} speedup"));
        header.push(format!("{n} efficiency"));
        header.push(format!("{n} CPU/wall"));
    }
    let mut rows = Vec::new();
    for (workload, prefix) in [
        ("forward b2 s32", "parallel_T"),
        ("train step b2 s8", "parallel_train_T"),
    ] {
        for t in [1u32, 2, 4] {
            let id = format!("{prefix}{t}");
            let base = format!("{prefix}1");
            let mut row = vec![workload.to_owned(), t.to_string()];
            for r in runs {
                let speed = r
                    .tokens_per_sec(&id)
                    .zip(r.tokens_per_sec(&base))
                    .map(|(a, b)| a / b);
                row.push(opt(r.tokens_per_sec(&id), |x| format!("{x:.0}")));
                row.push(opt(speed, |x| format!("{x:.2}")));
                row.push(opt(speed.map(|s| s / f64::from(t)), |x| {
                    format!("{:.0} %", 100.0 * x)
                }));
                let util = r
                    .get(&id, &["cpu_median_ns"])
                    .zip(r.median(&id))
                    .map(|(c, w)| c / w);
                row.push(opt(util, |x| format!("{x:.2}")));
            }
            rows.push(row);
        }
    }
    table(&mut o, &header, &rows);
    for (file, alt) in [
        ("thread_throughput.svg", "throughput vs threads"),
        ("thread_speedup.svg", "speedup vs threads"),
    ] {
        if has_plot(file) {
            let _ = writeln!(o, "![{alt}]({})\n", link(file));
        }
    }

    // Memory / GC.
    let _ = writeln!(o, "## Memory and GC\n");
    let _ = writeln!(
        o,
        "Per trial (median over trials): `alloc` = heap bytes requested, `allocs` = allocation calls, \
         `alloc rate` = alloc / median time. `peak RSS` = `ru_maxrss` of the measuring process at the end of the \
         scenario (with process isolation, that scenario's own). `arena` = planned workspace bytes (summed over \
         threads). Only `peak RSS` is comparable across languages; see the limitations below.\n"
    );
    for r in runs {
        if runs.len() > 1 {
            let _ = writeln!(o, "### {}\n", r.name);
        }
        let header = vec![
            h("scenario"),
            h("peak RSS"),
            h("alloc/trial"),
            h("allocs/trial"),
            h("alloc rate"),
            h("arena"),
            h("GC time"),
            h("GC pauses"),
            h("gc_throughput"),
        ];
        let rows: Vec<Vec<String>> = ids
            .iter()
            .filter(|id| r.by_id.contains_key(*id))
            .map(|id| {
                vec![
                    format!("`{id}`{}", extra_mark(id)),
                    opt(r.get(id, &["memory", "peak_rss_bytes"]), fmt_bytes),
                    opt(r.get(id, &["memory", "alloc_bytes"]), fmt_bytes),
                    opt(r.get(id, &["memory", "alloc_count"]), |x| format!("{x:.0}")),
                    opt(r.get(id, &["derived", "alloc_rate_bytes_per_sec"]), |x| {
                        format!("{}/s", fmt_bytes(x))
                    }),
                    opt(r.get(id, &["memory", "arena_bytes"]), fmt_bytes),
                    opt(r.get(id, &["gc", "total_gc_time_ns"]), fmt_ns),
                    opt(r.get(id, &["gc", "gc_pause_count"]), |x| format!("{x:.0}")),
                    opt(r.get(id, &["derived", "gc_throughput"]), |x| {
                        format!("{x:.3}")
                    }),
                ]
            })
            .collect();
        table(&mut o, &header, &rows);
    }
    if runs.len() > 1 {
        let _ = writeln!(o, "### Peak RSS side by side\n");
        let mut header = vec![h("scenario")];
        header.extend(names.iter().cloned());
        let rows: Vec<Vec<String>> = ids
            .iter()
            .map(|id| {
                std::iter::once(format!("`{id}`{}", extra_mark(id)))
                    .chain(
                        runs.iter()
                            .map(|r| opt(r.get(id, &["memory", "peak_rss_bytes"]), fmt_bytes)),
                    )
                    .collect()
            })
            .collect();
        table(&mut o, &header, &rows);
    }

    // Numerical.
    let _ = writeln!(o, "## Numerical stability\n");
    let _ = writeln!(
        o,
        "NaN and ±∞ counts and the largest finite |x| of each scenario's output (logits; the loss for training \
         scenarios; the kernel's output for kernels).\n"
    );
    let mut header = vec![h("scenario")];
    for n in &names {
        header.push(format!("{n} NaN/Inf"));
        header.push(format!("{n} max \\|x\\|"));
    }
    let rows: Vec<Vec<String>> = ids
        .iter()
        .map(|id| {
            let mut row = vec![format!("`{id}`{}", extra_mark(id))];
            for r in runs {
                let nan = r.get(id, &["numerical", "nan_count"]);
                let inf = r.get(id, &["numerical", "inf_count"]);
                row.push(match (nan, inf) {
                    (Some(a), Some(b)) => format!("{a:.0}/{b:.0}"),
                    _ => "n/a".to_owned(),
                });
                row.push(opt(r.get(id, &["numerical", "max_abs"]), |x| {
                    format!("{x:.4}")
                }));
            }
            row
        })
        .collect();
    table(&mut o, &header, &rows);

    notes(&mut o, runs);
    o
}

fn extra_mark(id: &str) -> &'static str {
    match SCENARIOS.iter().position(|s| s.id == id) {
        Some(i) if i < SPEC_SCENARIOS => "",
        Some(_) => " †",
        None => "",
    }
}

fn notes(o: &mut String, runs: &[Run]) {
    let _ = writeln!(o, "## Interpretation notes and known limitations\n");
    let mut lines: Vec<String> = vec![
        "**`alloc_bytes` is not comparable across languages.** Rust counts every heap request through a counting \
         global allocator (bytes requested, reallocations counted at their new size, frees not subtracted), per \
         trial, all threads. Python's tracemalloc sees only the Python heap, not NumPy's buffers; Go reports \
         `runtime.MemStats` deltas; Julia `@allocated`. Compare `peak_rss_bytes` across languages, `alloc_bytes` \
         only within one."
            .to_owned(),
        "**Steady state allocates nothing in Rust.** moe-core plans every activation buffer into one arena at \
         workspace construction; forward and train steps carve slices out of it, so `alloc_bytes` is 0 for every \
         steady-state model scenario. Only `dispatch_cold*` allocate (the parameters, the arena, the RoPE table)."
            .to_owned(),
        "**GC fields are zero by construction** for Rust (no collector): `gc_throughput` = 1.0.".to_owned(),
        "**`peak_rss_bytes`** is the high-water mark of the process that measured the scenario. With process \
         isolation (the default) that is one scenario plus the runtime; with `--in-process` it only grows over \
         the run. `dispatch_cold_process` reports the child's own peak."
            .to_owned(),
        "**CPU time** comes from `getrusage(RUSAGE_SELF)` and covers every thread of the process, so on the \
         parallel axis it is the sum over threads (CPU/wall ≈ number of busy cores). Its resolution is a few \
         microseconds: kernel-scenario CPU times are coarse."
            .to_owned(),
        "**Kernels time one call per trial**, like the other harnesses, so `kernel_softmax`/`kernel_rmsnorm` \
         (a few µs) include the ~20–40 ns cost of reading the clock; their IQR is at the timer's resolution."
            .to_owned(),
        "**Matmul backend.** `kernel_matmul` and the model use the default GEMM (`metadata.matmul_backend`): \
         `portable` is moe-core's own allocation-free packed GEMM (its micro-kernel, chosen at run time, is \
         `metadata.matmul_kernel`), `cblas` when built with `--features openblas`. The spec's study used Apple \
         Accelerate everywhere. `kernel_matmul_portable` † always times moe-core's GEMM (the interesting \
         comparison under BLAS), `kernel_matmul_matrixmultiply` † the `matrixmultiply` crate (which allocates its \
         packing buffers per call, hence its non-zero `alloc_bytes`), and `machine_peak` † (single-thread SGEMM \
         1024³, default backend) gives the roof to read the other GFLOP/s against."
            .to_owned(),
        "**Small-model regime.** With hidden 64 the GEMMs are tiny (64×64 weights), so time goes to loop and \
         call overhead, packing, attention and the element-wise work; GFLOP/s well below `machine_peak` is expected. \
         The scale axis (hidden 256) shows how much of that gap closes as GEMMs grow."
            .to_owned(),
        "**Quantiles** are type 7 (linear interpolation between closest ranks), rounded to whole ns; with 10 \
         trials the p95 is interpolated between the two slowest trials."
            .to_owned(),
    ];
    for r in runs {
        let cpus = r.meta.get("logical_cpus").and_then(Value::as_u64);
        if let Some(c) = cpus {
            if c < 4 && r.by_id.contains_key("parallel_T4") {
                lines.push(format!(
                    "**{}: {c} logical CPUs vs T4.** With fewer cores than threads, T4 is oversubscribed: the \
                     speedup is capped near {c} and the extra threads only add scheduling. Read T4 as an \
                     oversubscription test on this machine, not as 4-way scaling.",
                    r.name
                ));
            }
        }
        // Four scenarios run the identical workload (tiny forward, b2 s32), each
        // in its own process by default: their spread is a built-in noise floor.
        let same: Vec<f64> = [
            "mem_scale_batch_2",
            "mem_scale_seq_32",
            "dispatch_warm",
            "parallel_T1",
        ]
        .iter()
        .filter_map(|id| r.median(id))
        .collect();
        if same.len() >= 2 {
            let lo = same.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = same.iter().copied().fold(0.0, f64::max);
            lines.push(format!(
                "**{}: noise floor.** `mem_scale_batch_2`, `mem_scale_seq_32`, `dispatch_warm` and `parallel_T1` \
                 run the identical workload (tiny forward, b2 s32); their medians span {} – {} ({:.0} %). \
                 Differences between scenarios or runs smaller than that are not significant.",
                r.name,
                fmt_ns(lo),
                fmt_ns(hi),
                100.0 * (hi - lo) / lo
            ));
        }
        // A single-threaded scenario whose CPU time is well below its wall time
        // spent part of its trials off the CPU: preempted by another process.
        let preempted: Vec<String> = r
            .ids
            .iter()
            .filter(|id| !id.starts_with("parallel_") && *id != "dispatch_cold_process")
            .filter(|id| {
                let cpu = r.get(id, &["cpu_median_ns"]);
                let wall = r.median(id);
                matches!((cpu, wall), (Some(c), Some(w)) if w > 100_000.0 && c / w < 0.9)
            })
            .map(|id| format!("`{id}`"))
            .collect();
        if !preempted.is_empty() {
            lines.push(format!(
                "**{}: preempted scenarios.** CPU time below 90 % of wall time in single-threaded {} — the \
                 process waited for a core during those trials; their times include that wait.",
                r.name,
                preempted.join(", ")
            ));
        }
        if r.meta.get("build_profile").and_then(Value::as_str) == Some("debug") {
            lines.push(format!(
                "**{}: debug build** — these numbers are not benchmarks.",
                r.name
            ));
        }
        if let Some(la) = r
            .meta
            .get("load_average")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_f64)
        {
            if la > 0.5 {
                lines.push(format!(
                    "**{}: load average {la:.2} at start** — other processes were running; expect noisier \
                     numbers, especially on the parallel axis.",
                    r.name
                ));
            }
        }
    }
    if runs.len() > 1 {
        lines.push(
            "**Side-by-side columns** come from different machines unless the metadata rows say otherwise; \
             compare ratios, not absolute times, across machines."
                .to_owned(),
        );
    }
    for l in lines {
        let _ = writeln!(o, "- {l}");
    }
    o.push('\n');
}

/// The SVG plots (plotters' SVG backend only: text is written as SVG
/// `<text>` and laid out with plotters' built-in metrics, no font library).
mod plots {
    use std::path::Path;

    use plotters::prelude::*;

    use super::Run;
    use crate::Error;

    const SIZE: (u32, u32) = (760, 460);

    /// A metric of one scenario of one run.
    type Metric<'a> = &'a dyn Fn(&Run, &str) -> Option<f64>;

    /// One line plot over scenario ids placed at x values.
    struct LinePlot<'a> {
        file: &'static str,
        title: &'a str,
        x_label: &'a str,
        y_label: &'a str,
        ids: &'a [(f64, String)],
        metric: Metric<'a>,
    }

    /// Writes every plot the data allows; returns the file names written.
    pub(super) fn write_all(runs: &[Run], dir: &Path) -> Result<Vec<&'static str>, Error> {
        let mut written = Vec::new();
        let series = |ids: &[(f64, String)],
                      f: &dyn Fn(&Run, &str) -> Option<f64>|
         -> Vec<(String, Vec<(f64, f64)>)> {
            runs.iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        ids.iter()
                            .filter_map(|(x, id)| Some((*x, f(r, id)?)))
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, pts)| !pts.is_empty())
                .collect()
        };
        let batch: Vec<(f64, String)> = [1, 2, 4, 8]
            .iter()
            .map(|&b| (f64::from(b), format!("mem_scale_batch_{b}")))
            .collect();
        let seq: Vec<(f64, String)> = [8, 16, 32, 64]
            .iter()
            .map(|&t| (f64::from(t), format!("mem_scale_seq_{t}")))
            .collect();
        let ms = |r: &Run, id: &str| r.median(id).map(|m| m / 1e6);
        let kib = |r: &Run, id: &str| r.get(id, &["memory", "alloc_bytes"]).map(|b| b / 1024.0);
        let plots = [
            LinePlot {
                file: "scaling_batch_time.svg",
                title: "Forward time vs batch (seq 32)",
                x_label: "batch",
                y_label: "median (ms)",
                ids: &batch,
                metric: &ms,
            },
            LinePlot {
                file: "scaling_seq_time.svg",
                title: "Forward time vs sequence length (batch 2)",
                x_label: "seq_len",
                y_label: "median (ms)",
                ids: &seq,
                metric: &ms,
            },
            LinePlot {
                file: "scaling_batch_alloc.svg",
                title: "Heap allocation per forward vs batch",
                x_label: "batch",
                y_label: "alloc per trial (KiB)",
                ids: &batch,
                metric: &kib,
            },
            LinePlot {
                file: "scaling_seq_alloc.svg",
                title: "Heap allocation per forward vs sequence length",
                x_label: "seq_len",
                y_label: "alloc per trial (KiB)",
                ids: &seq,
                metric: &kib,
            },
        ];
        for p in plots {
            let s = series(p.ids, p.metric);
            if !s.is_empty() {
                line_plot(&dir.join(p.file), p.title, p.x_label, p.y_label, &s, None)?;
                written.push(p.file);
            }
        }

        // Thread scaling.
        let mut thr = Vec::new();
        let mut spd = Vec::new();
        for r in runs {
            for (label, prefix) in [("forward", "parallel_T"), ("train", "parallel_train_T")] {
                let pts: Vec<(f64, f64)> = [1, 2, 4]
                    .iter()
                    .filter_map(|&t| {
                        Some((f64::from(t), r.tokens_per_sec(&format!("{prefix}{t}"))?))
                    })
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                if let Some(base) = r.tokens_per_sec(&format!("{prefix}1")) {
                    spd.push((
                        format!("{} {label}", r.name),
                        pts.iter().map(|&(t, x)| (t, x / base)).collect(),
                    ));
                }
                thr.push((format!("{} {label}", r.name), pts));
            }
        }
        if !thr.is_empty() {
            line_plot(
                &dir.join("thread_throughput.svg"),
                "Throughput vs threads",
                "threads T",
                "tokens/s (all threads)",
                &thr,
                None,
            )?;
            written.push("thread_throughput.svg");
        }
        if !spd.is_empty() {
            let ideal = vec![(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)];
            line_plot(
                &dir.join("thread_speedup.svg"),
                "Speedup vs threads",
                "threads T",
                "throughput(T) / throughput(1)",
                &spd,
                Some(ideal),
            )?;
            written.push("thread_speedup.svg");
        }

        // Kernel GFLOP/s.
        let kernels: Vec<&str> = [
            "kernel_matmul",
            "kernel_matmul_portable",
            "kernel_matmul_matrixmultiply",
            "kernel_softmax",
            "kernel_rmsnorm",
            "machine_peak",
        ]
        .into_iter()
        .filter(|id| runs.iter().any(|r| r.gflops(id).is_some()))
        .collect();
        if !kernels.is_empty() {
            bar_plot(
                &dir.join("kernel_gflops.svg"),
                "Kernel GFLOP/s (log scale)",
                &kernels,
                runs,
            )?;
            written.push("kernel_gflops.svg");
        }
        Ok(written)
    }

    fn color(i: usize) -> RGBColor {
        const C: [RGBColor; 8] = [
            RGBColor(0x1f, 0x77, 0xb4),
            RGBColor(0xd6, 0x27, 0x28),
            RGBColor(0x2c, 0xa0, 0x2c),
            RGBColor(0xff, 0x7f, 0x0e),
            RGBColor(0x94, 0x67, 0xbd),
            RGBColor(0x8c, 0x56, 0x4b),
            RGBColor(0xe3, 0x77, 0xc2),
            RGBColor(0x7f, 0x7f, 0x7f),
        ];
        C[i % C.len()]
    }

    fn line_plot(
        path: &Path,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[(String, Vec<(f64, f64)>)],
        ideal: Option<Vec<(f64, f64)>>,
    ) -> Result<(), Error> {
        let all = series
            .iter()
            .flat_map(|(_, p)| p.iter())
            .chain(ideal.iter().flatten());
        let (mut xmax, mut ymax) = (1.0f64, 0.0f64);
        for &(x, y) in all {
            xmax = xmax.max(x);
            ymax = ymax.max(y);
        }
        let ymax = if ymax > 0.0 { ymax * 1.15 } else { 1.0 };
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(42)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..xmax * 1.08, 0.0..ymax)?;
        // Whole numbers only on x (batch, seq_len, threads).
        let fmt_x = |x: &f64| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", x.round())
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_labels(10)
            .x_label_formatter(&fmt_x)
            .y_labels(8)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        if let Some(ideal) = ideal {
            let style = ShapeStyle::from(&BLACK.mix(0.4)).stroke_width(1);
            chart
                .draw_series(LineSeries::new(ideal, style))?
                .label("ideal (linear)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    }

    fn bar_plot(path: &Path, title: &str, ids: &[&str], runs: &[Run]) -> Result<(), Error> {
        let values: Vec<Vec<Option<f64>>> = runs
            .iter()
            .map(|r| ids.iter().map(|id| r.gflops(id)).collect())
            .collect();
        let flat = values
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| *v > 0.0);
        let (lo, hi) = flat.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if hi > 0.0 {
            (10f64.powf((lo * 0.5).log10().floor()), hi * 3.0)
        } else {
            (0.01, 1.0)
        };
        let n = ids.len() as f64;
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        // Short axis labels (the full ids overlap at this width).
        let labels: Vec<String> = ids
            .iter()
            .map(|id| match *id {
                "kernel_matmul_portable" => "matmul portable".to_owned(),
                "kernel_matmul_matrixmultiply" => "matmul mm-crate".to_owned(),
                "machine_peak" => "peak 1024³".to_owned(),
                other => other.strip_prefix("kernel_").unwrap_or(other).to_owned(),
            })
            .collect();
        let fmt_x = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(42)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5..n - 0.5, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(ids.len())
            .x_label_formatter(&fmt_x)
            .y_desc("GFLOP/s")
            .draw()?;
        let width = 0.8 / runs.len() as f64;
        for (ri, r) in runs.iter().enumerate() {
            let c = color(ri);
            let bars: Vec<Rectangle<(f64, f64)>> = values[ri]
                .iter()
                .enumerate()
                .filter_map(|(k, v)| {
                    let v = (*v)?;
                    let x0 = k as f64 - 0.4 + ri as f64 * width;
                    Some(Rectangle::new(
                        [(x0, lo), (x0 + width * 0.9, v)],
                        c.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(r.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            let texts: Vec<Text<(f64, f64), String>> = values[ri]
                .iter()
                .enumerate()
                .filter_map(|(k, v)| {
                    let v = (*v)?;
                    let x0 = k as f64 - 0.4 + ri as f64 * width;
                    Some(Text::new(
                        format!("{v:.2}"),
                        (x0, v * 1.15),
                        ("sans-serif", 12),
                    ))
                })
                .collect();
            chart.draw_series(texts)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    }
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
