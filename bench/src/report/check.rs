//! Reading a result file and checking what it says: which track wrote it,
//! units, placeholders, and every derived figure recomputed from the file's
//! own measured fields and `params`.
//!
//! The rules, each with the flag it leaves on the figure (a [`Flag`], shown
//! in the report as a superscript letter with a footnote) and a note under
//! that file's name:
//!
//! * **`peak_rss_bytes` below 1 MiB is KiB.** No process that loaded a
//!   language runtime and a model has a peak RSS below 1 MiB; a value that
//!   small is `ru_maxrss` left in Linux's unit (KiB). It is multiplied by
//!   1024 and flagged [`Flag::Kib`]. `0` is a placeholder (`n/a`).
//! * **`alloc_bytes` per trial.** The file's own `alloc_rate_bytes_per_sec`
//!   tells what `alloc_bytes` covered: if `rate × median` equals
//!   `alloc_bytes / trial_runs` (within 5 %), `alloc_bytes` is the total over
//!   the trials (Go's harness): it is divided by `trial_runs` and flagged
//!   [`Flag::TotalOverTrials`]. Any other disagreement between the file's
//!   rate and `alloc_bytes / median` is flagged [`Flag::Disagrees`]. The
//!   report's alloc rate is always `alloc_bytes per trial / median`.
//! * **GC time.** `total_gc_time_ns` and `gc_pause_count` cover all trials
//!   (CONTRACT §7); per step is ÷ `trial_runs`; `gc_throughput = 1 −
//!   gc_time / Σ timings` (or `trial_runs × median` without timings),
//!   recomputed and compared with the file's. A file that reports pauses but
//!   never a non-zero GC time did not measure GC time: `n/a`.
//! * **Placeholders** print `n/a`: `max_abs: 0.0`, `median_ns: 0`,
//!   `throughput_tokens_per_sec: 0`, `null`s and missing fields.
//! * **Tokens/s and GFLOP/s** come from the file's `params` (batch, seq_len,
//!   thread_count, M/K/N, n, shape) with our token and FLOP counts
//!   (docs/flops.md). Where the params differ from the spec's shape of that
//!   id, the figure is flagged [`Flag::Params`]; where the file's own
//!   `throughput_tokens_per_sec` or `derived.gflops` disagree with the
//!   recomputation by more than 2 %, [`Flag::Disagrees`].
//! * **Twins.** A scenario whose `params.twin` names another of the file
//!   reports `extra.speedup_vs_twin` = the twin's median / its own; it is
//!   recomputed from the two medians, and a disagreement beyond 2 % (or a
//!   twin the file lacks) is a note naming the row.
//! * **CPU/wall of parallel scenarios** (`thread_count` in the params) below
//!   0.5 counts the parent process only (Python's process pool, whose
//!   workers do the work even at T1): flagged [`Flag::ParentOnly`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ReportError;
use crate::harness::scenarios::{self, AdamPass, Kind};
use crate::io::read::{read_to_string_bounded, MAX_JSON_BYTES};
use moe_core::Config;

/// Below this, a `peak_rss_bytes` is read as KiB.
pub const MIN_PLAUSIBLE_RSS_BYTES: f64 = 1024.0 * 1024.0;
/// Relative tolerance between a file's derived value and the recomputed one.
const DERIVED_TOL: f64 = 0.02;
/// Tolerance of the "total over the trials" detection of `alloc_bytes`.
const TOTAL_TOL: f64 = 0.05;
/// Absolute tolerance on `gc_throughput`.
const GC_TOL: f64 = 0.005;
/// CPU/wall below this on a parallel scenario: parent process only.
const PARENT_ONLY_CPU_WALL: f64 = 0.5;

/// Which harness wrote a file (from its metadata, never from its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Track {
    /// This project (`moe bench`): `language: rust` with moe-rs's metadata
    /// (`schema_version`, `isolation`, `matmul_kernel`).
    MoeRs,
    /// The seed project's Rust track (`language: rust`, none of moe-rs's metadata).
    SeedRust,
    /// The study's Go track.
    Go,
    /// The study's Python track (NumPy, hand-written).
    Python,
    /// PyTorch (`torch_version` in the metadata): a framework run, not a track.
    PyTorch,
    /// Any other `metadata.language`.
    Other(String),
}

impl Track {
    fn of(meta: &serde_json::Map<String, Value>) -> Track {
        let lang = meta
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let has = |k: &str| meta.get(k).is_some_and(|v| !v.is_null());
        let torch = has("torch_version")
            || meta
                .get("matmul_backend")
                .and_then(Value::as_str)
                .is_some_and(|b| b.starts_with("torch"));
        match lang {
            "rust" if has("schema_version") && has("isolation") && has("matmul_kernel") => {
                Track::MoeRs
            }
            "rust" => Track::SeedRust,
            "go" => Track::Go,
            "python" if torch => Track::PyTorch,
            "python" => Track::Python,
            other => Track::Other(other.to_owned()),
        }
    }

    /// The column name.
    pub fn label(&self) -> String {
        match self {
            Track::MoeRs => "moe-rs".to_owned(),
            Track::SeedRust => "seed-rust".to_owned(),
            Track::Go => "go".to_owned(),
            Track::Python => "python".to_owned(),
            Track::PyTorch => "PyTorch (framework)".to_owned(),
            Track::Other(l) => l.clone(),
        }
    }

    /// What this track's `alloc_bytes` counts (§6: not comparable across languages).
    pub fn alloc_counter(&self) -> &'static str {
        match self {
            Track::MoeRs => "every heap request through a counting global allocator (bytes requested, all threads, frees not subtracted), median per trial",
            Track::SeedRust => "a counting global allocator, mean per trial",
            Track::Go => "`runtime.MemStats.TotalAlloc` delta, written as the total over all trials (shown ÷ trials)",
            Track::Python => "tracemalloc's net growth of the Python heap per trial (NumPy's buffers are not counted)",
            Track::PyTorch => "not measured (tensor memory is outside the Python heap)",
            Track::Other(_) => "unknown (see that harness)",
        }
    }
}

/// A flag on one figure; shown as `<sup>letter</sup>` with a footnote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// `peak_rss_bytes` was KiB, converted.
    Kib,
    /// `alloc_bytes` was a total over the trials, divided by `trial_runs`.
    TotalOverTrials,
    /// The file's `params` differ from the spec's shape of this id.
    Params,
    /// The file's own derived value disagrees with the recomputation.
    Disagrees,
    /// CPU time of the parent process only (workers not counted).
    ParentOnly,
}

impl Flag {
    /// Every flag, in footnote order.
    pub const ALL: [Flag; 5] = [
        Flag::Kib,
        Flag::TotalOverTrials,
        Flag::Params,
        Flag::Disagrees,
        Flag::ParentOnly,
    ];

    /// The superscript letter.
    pub fn letter(self) -> &'static str {
        match self {
            Flag::Kib => "k",
            Flag::TotalOverTrials => "t",
            Flag::Params => "p",
            Flag::Disagrees => "d",
            Flag::ParentOnly => "w",
        }
    }

    /// The footnote.
    pub fn footnote(self) -> &'static str {
        match self {
            Flag::Kib => "the file's `peak_rss_bytes` is below 1 MiB, i.e. `ru_maxrss` in KiB (Linux); shown × 1024",
            Flag::TotalOverTrials => "the file's `alloc_bytes` is the total over all trials (its own alloc rate = alloc_bytes / (trials × median)); shown per trial",
            Flag::Params => "the file's `params` differ from the spec's shape of this scenario (see its notes); computed from the file's params, not comparable with the other columns",
            Flag::Disagrees => "the file's own derived value disagrees with the one recomputed here from its measured fields (see its notes); the recomputed value is shown",
            Flag::ParentOnly => "CPU time of the parent process only (worker processes not counted): CPU/wall is not a core count",
        }
    }
}

/// A number and its flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Val {
    /// `None` = n/a (missing, `null`, or a placeholder).
    pub v: Option<f64>,
    /// The rules that touched it.
    pub flags: Vec<Flag>,
}

impl Val {
    fn of(v: Option<f64>) -> Val {
        Val {
            v,
            flags: Vec::new(),
        }
    }
    fn flag(mut self, f: Flag) -> Val {
        if !self.flags.contains(&f) {
            self.flags.push(f);
        }
        self
    }
}

/// One scenario's figures after the checks.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Median wall time, ns.
    pub median_ns: Val,
    /// IQR, ns.
    pub iqr_ns: Val,
    /// Median CPU time, ns.
    pub cpu_ns: Val,
    /// CPU / wall.
    pub cpu_wall: Val,
    /// Peak RSS, bytes.
    pub peak_rss: Val,
    /// Heap bytes per trial.
    pub alloc_bytes: Val,
    /// Allocation calls per trial.
    pub alloc_count: Val,
    /// Heap bytes per trial / median, bytes/s.
    pub alloc_rate: Val,
    /// Planned arena bytes (moe-rs).
    pub arena_bytes: Val,
    /// GC time per trial, ns.
    pub gc_time_ns: Val,
    /// GC pauses per trial.
    pub gc_pauses: Val,
    /// `1 − GC time / wall time`.
    pub gc_throughput: Val,
    /// Tokens per second at the median.
    pub tokens_per_sec: Val,
    /// GFLOP/s at the median.
    pub gflops: Val,
    /// NaN count of the output.
    pub nan: Option<f64>,
    /// ±∞ count of the output.
    pub inf: Option<f64>,
    /// Largest finite |x|.
    pub max_abs: Val,
}

/// One result file, checked.
#[derive(Debug)]
pub struct Run {
    /// Column name: the track's label, disambiguated by file name if repeated.
    pub name: String,
    /// Who wrote it.
    pub track: Track,
    /// The file as given.
    pub path: PathBuf,
    /// `metadata`.
    pub meta: serde_json::Map<String, Value>,
    /// Scenario id → scenario object.
    pub by_id: BTreeMap<String, Value>,
    /// Ids in file order.
    pub ids: Vec<String>,
    /// Id → figures.
    pub figs: BTreeMap<String, Figures>,
    /// Notes about this file only (conversions, disagreements, placeholders).
    pub notes: Vec<String>,
}

/// `v[path[0]][path[1]]…` as a number.
pub fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))?
        .as_f64()
        .filter(|x| x.is_finite())
}

fn rel_diff(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

impl Run {
    /// Reads and checks `path` (bounded read: [`MAX_JSON_BYTES`], regular files only).
    ///
    /// # Errors
    /// [`ReportError`] naming the file: unreadable, not JSON, no `metadata`
    /// or `scenarios`, a scenario without a string `id`, a duplicate id.
    pub fn load(path: &Path) -> Result<Run, ReportError> {
        let text = read_to_string_bounded(path, MAX_JSON_BYTES)?;
        Run::parse(&text, path)
    }

    /// Checks the text of a result file; `path` names it in errors.
    ///
    /// # Errors
    /// As [`Run::load`], except reading.
    pub fn parse(text: &str, path: &Path) -> Result<Run, ReportError> {
        let v: Value = serde_json::from_str(text).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })?;
        let field = |field: String, expected| ReportError::Field {
            path: path.to_owned(),
            field,
            expected,
        };
        let meta = v
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| field("metadata".into(), "an object"))?;
        let list = v
            .get("scenarios")
            .and_then(Value::as_array)
            .ok_or_else(|| field("scenarios".into(), "an array"))?;
        let mut by_id = BTreeMap::new();
        let mut ids = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let id = s
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| field(format!("scenarios[{i}].id"), "a string"))?;
            if by_id.insert(id.to_owned(), s.clone()).is_some() {
                return Err(ReportError::DuplicateId {
                    path: path.to_owned(),
                    id: id.to_owned(),
                });
            }
            ids.push(id.to_owned());
        }
        let track = Track::of(&meta);
        let mut run = Run {
            name: track.label(),
            track,
            path: path.to_owned(),
            meta,
            by_id,
            ids,
            figs: BTreeMap::new(),
            notes: Vec::new(),
        };
        run.check();
        Ok(run)
    }

    /// The figures of `id` (all `n/a` if the file lacks it).
    pub fn fig(&self, id: &str) -> Figures {
        self.figs.get(id).cloned().unwrap_or_default()
    }

    /// Median wall time, ns.
    pub fn median(&self, id: &str) -> Option<f64> {
        self.figs.get(id)?.median_ns.v
    }

    /// Tokens/s (from the file's params).
    pub fn tokens_per_sec(&self, id: &str) -> Option<f64> {
        self.figs.get(id)?.tokens_per_sec.v
    }

    /// GFLOP/s (from the file's params).
    pub fn gflops(&self, id: &str) -> Option<f64> {
        self.figs.get(id)?.gflops.v
    }

    /// Heap bytes per trial (after the unit checks).
    pub fn alloc_bytes(&self, id: &str) -> Option<f64> {
        self.figs.get(id)?.alloc_bytes.v
    }

    /// A metadata value as text (`n/a` if missing).
    pub fn meta_str(&self, key: &str) -> String {
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

    /// A raw number of the file.
    pub fn get(&self, id: &str, path: &[&str]) -> Option<f64> {
        num(self.by_id.get(id)?, path)
    }

    /// Runs every rule of the module doc over every scenario; fills `figs` and `notes`.
    fn check(&mut self) {
        let mut kib = Vec::new();
        let mut totals = Vec::new();
        let mut disagree: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut params_notes = Vec::new();
        let mut parent_only = Vec::new();
        let mut placeholders: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        // GC time is "not measured" in a file that reports pauses but never a time.
        let any_pause = self
            .by_id
            .values()
            .any(|s| num(s, &["gc", "gc_pause_count"]).is_some_and(|p| p > 0.0));
        let any_gc_time = self
            .by_id
            .values()
            .any(|s| num(s, &["gc", "total_gc_time_ns"]).is_some_and(|t| t > 0.0));
        let gc_unmeasured = any_pause && !any_gc_time;
        let n_trials_meta = self.meta.get("n_trials").and_then(Value::as_f64);

        for id in self.ids.clone() {
            let s = &self.by_id[&id];
            let g = |p: &[&str]| num(s, p);
            let mut f = Figures::default();
            let median = g(&["median_ns"]).filter(|&m| m > 0.0);
            if median.is_none() {
                placeholders
                    .entry("median_ns")
                    .or_default()
                    .push(id.clone());
            }
            f.median_ns = Val::of(median);
            f.iqr_ns = Val::of(g(&["iqr_ns"]));
            f.cpu_ns = Val::of(g(&["cpu_median_ns"]).filter(|&c| c > 0.0));
            let trials = g(&["trial_runs"])
                .or(n_trials_meta)
                .filter(|&t| t >= 1.0)
                .unwrap_or(1.0);
            let timings_sum: Option<f64> = s
                .get("timings_ns")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .and_then(|a| a.iter().map(Value::as_f64).sum::<Option<f64>>());

            // Peak RSS.
            f.peak_rss = match g(&["memory", "peak_rss_bytes"]) {
                Some(b) if b > 0.0 && b < MIN_PLAUSIBLE_RSS_BYTES => {
                    kib.push(id.clone());
                    Val::of(Some(b * 1024.0)).flag(Flag::Kib)
                }
                Some(b) if b > 0.0 => Val::of(Some(b)),
                _ => Val::of(None),
            };

            // Allocations per trial, and the rate.
            let raw_alloc = g(&["memory", "alloc_bytes"]);
            let file_rate = g(&["derived", "alloc_rate_bytes_per_sec"]);
            f.alloc_bytes = Val::of(raw_alloc);
            if let (Some(a), Some(r), Some(m)) = (raw_alloc, file_rate, median) {
                let implied = r * m * 1e-9;
                if a > 0.0 && trials > 1.0 && rel_diff(a / trials, implied) < TOTAL_TOL {
                    totals.push(id.clone());
                    f.alloc_bytes = Val::of(Some(a / trials)).flag(Flag::TotalOverTrials);
                } else if rel_diff(a, implied) > DERIVED_TOL && (a > 0.0 || r > 0.0) {
                    disagree
                        .entry("alloc_rate_bytes_per_sec")
                        .or_default()
                        .push(id.clone());
                    f.alloc_bytes = f.alloc_bytes.flag(Flag::Disagrees);
                }
            }
            f.alloc_rate = Val {
                v: f.alloc_bytes.v.zip(median).map(|(a, m)| a / (m * 1e-9)),
                flags: f.alloc_bytes.flags.clone(),
            };
            f.alloc_count = Val::of(g(&["memory", "alloc_count"]));
            f.arena_bytes = Val::of(g(&["memory", "arena_bytes"]));

            // GC.
            let gc_time = g(&["gc", "total_gc_time_ns"]).filter(|_| !gc_unmeasured);
            f.gc_time_ns = Val::of(gc_time.map(|t| t / trials));
            f.gc_pauses = Val::of(g(&["gc", "gc_pause_count"]).map(|p| p / trials));
            let wall_total = timings_sum.or(median.map(|m| m * trials));
            f.gc_throughput = Val::of(
                gc_time
                    .zip(wall_total)
                    .filter(|&(_, w)| w > 0.0)
                    .map(|(t, w)| 1.0 - t / w),
            );
            if let (Some(mine), Some(theirs)) =
                (f.gc_throughput.v, g(&["derived", "gc_throughput"]))
            {
                if (mine - theirs).abs() > GC_TOL {
                    disagree
                        .entry("gc_throughput")
                        .or_default()
                        .push(id.clone());
                    f.gc_throughput = f.gc_throughput.flag(Flag::Disagrees);
                }
            }

            // Tokens and FLOPs from the file's own params.
            let spec = scenarios::find(&id).map(|sc| sc.kind);
            let params = s.get("params").cloned().unwrap_or(Value::Null);
            let own = spec.and_then(|k| with_params(k, &params));
            let (tokens, flops, differs) = match (spec, &own) {
                (Some(spec), Some(Ok(own))) => (own.tokens(), own.flops(), !same_shape(own, &spec)),
                (Some(_), Some(Err(why))) => {
                    params_notes.push(format!("`{id}`: {why}"));
                    (None, None, true)
                }
                _ => (None, None, false),
            };
            if differs {
                if let (Some(sp), Some(Ok(own))) = (spec, own) {
                    params_notes.push(format!(
                        "`{id}` ran with params {} (the spec's shape: {}); its tokens/s and GFLOP/s are computed for the file's params",
                        shape_of(&own),
                        shape_of(&sp)
                    ));
                }
            }
            let mark = |v: Val| if differs { v.flag(Flag::Params) } else { v };
            f.tokens_per_sec = mark(Val::of(
                tokens.zip(median).map(|(t, m)| t as f64 / (m * 1e-9)),
            ));
            f.gflops = mark(Val::of(flops.zip(median).map(|(fl, m)| fl as f64 / m)));
            if spec.is_none() {
                // Unknown id: the file's own values, unchecked.
                f.tokens_per_sec = Val::of(g(&["throughput_tokens_per_sec"]).filter(|&t| t > 0.0));
                f.gflops = Val::of(g(&["derived", "gflops"]).filter(|&t| t > 0.0));
            }
            for (key, path, val) in [
                (
                    "throughput_tokens_per_sec",
                    &["throughput_tokens_per_sec"][..],
                    &mut f.tokens_per_sec,
                ),
                ("derived.gflops", &["derived", "gflops"][..], &mut f.gflops),
            ] {
                match (val.v, g(path)) {
                    (Some(mine), Some(theirs))
                        if theirs > 0.0 && rel_diff(mine, theirs) > DERIVED_TOL =>
                    {
                        disagree.entry(key).or_default().push(id.clone());
                        *val = val.clone().flag(Flag::Disagrees);
                    }
                    (None, Some(0.0)) => {
                        placeholders.entry(key).or_default().push(id.clone());
                    }
                    _ => {}
                }
            }

            // CPU / wall.
            f.cpu_wall = Val::of(f.cpu_ns.v.zip(median).map(|(c, w)| c / w));
            let parallel = num(&params, &["thread_count"]).is_some_and(|w| w >= 1.0);
            if parallel && f.cpu_wall.v.is_some_and(|u| u < PARENT_ONLY_CPU_WALL) {
                parent_only.push(id.clone());
                f.cpu_wall = f.cpu_wall.flag(Flag::ParentOnly);
            }

            // Numerical.
            f.nan = g(&["numerical", "nan_count"]);
            f.inf = g(&["numerical", "inf_count"]);
            f.max_abs = Val::of(g(&["numerical", "max_abs"]).filter(|&x| x > 0.0));
            if g(&["numerical", "max_abs"]) == Some(0.0) {
                placeholders
                    .entry("numerical.max_abs")
                    .or_default()
                    .push(id.clone());
            }
            self.figs.insert(id, f);
        }

        let name = self.track.label();
        let list = |v: &[String]| {
            if v.len() == self.ids.len() && v.len() > 3 {
                format!("all {} scenarios", v.len())
            } else {
                v.iter()
                    .map(|i| format!("`{i}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        if !kib.is_empty() {
            self.notes.push(format!(
                "**{name}: peak RSS in KiB.** `memory.peak_rss_bytes` is below 1 MiB in {} — `ru_maxrss` left in \
                 Linux's unit (KiB); shown × 1024 and marked <sup>k</sup>.",
                list(&kib)
            ));
        }
        if !totals.is_empty() {
            self.notes.push(format!(
                "**{name}: `alloc_bytes` is a total over the trials** in {} (the file's own \
                 `alloc_rate_bytes_per_sec` equals alloc_bytes / (trials × median)); shown per trial \
                 (÷ trials) and marked <sup>t</sup>, and the alloc rate recomputed from it.",
                list(&totals)
            ));
        }
        if gc_unmeasured {
            self.notes.push(format!(
                "**{name}: GC time not measured.** The file reports GC pauses but `total_gc_time_ns` is 0 \
                 everywhere: GC time and `gc_throughput` are shown as n/a, not as 0 and 1.0."
            ));
        }
        // Twins: `extra.speedup_vs_twin` = the twin's median / this median,
        // both from this file.
        for (id, sc) in &self.by_id {
            let twin = sc.pointer("/params/twin").and_then(Value::as_str);
            let theirs = num(sc, &["extra", "speedup_vs_twin"]);
            let (Some(twin), Some(theirs)) = (twin, theirs) else {
                continue;
            };
            let mine = self
                .by_id
                .get(twin)
                .and_then(|t| num(t, &["median_ns"]))
                .zip(num(sc, &["median_ns"]))
                .filter(|&(_, m)| m > 0.0)
                .map(|(t, m)| t / m);
            if mine.is_none_or(|m| rel_diff(m, theirs) > DERIVED_TOL) {
                disagree
                    .entry("extra.speedup_vs_twin")
                    .or_default()
                    .push(id.clone());
            }
        }
        for (key, v) in &disagree {
            let why = if *key == "derived.gflops" {
                " For kernels this is usually a different FLOP count per element (ours: docs/flops.md)."
            } else {
                ""
            };
            self.notes.push(format!(
                "**{name}: the file's own `{key}` disagrees** with the value recomputed from its measured \
                 fields in {} (marked <sup>d</sup>; the recomputed value is shown).{why}",
                list(v)
            ));
        }
        for p in &params_notes {
            self.notes
                .push(format!("**{name}: params differ from the spec** — {p}."));
        }
        if !parent_only.is_empty() {
            self.notes.push(format!(
                "**{name}: parallel CPU time is the parent process's only** in {}: CPU/wall below \
                 {PARENT_ONLY_CPU_WALL} on the parallel axis means the workers' CPU time is not counted (marked <sup>w</sup>).",
                list(&parent_only)
            ));
        }
        for (key, v) in &placeholders {
            self.notes.push(format!(
                "**{name}: placeholder `{key}`** (0 or missing: not measured) in {} — shown as n/a.",
                list(v)
            ));
        }
        if self.track == Track::PyTorch {
            self.notes.push(format!(
                "**{name} is a framework run** (PyTorch's own kernels, autograd and optimizer; \
                 `scripts/torch_baseline.py`), not the study's Python track."
            ));
        }
    }
}

/// Whether a file's scenario ran the spec's shape. The peak loop's width is
/// the machine's, not part of the shape.
fn same_shape(own: &Kind, spec: &Kind) -> bool {
    match (own, spec) {
        (Kind::FmaPeak { iters: a, .. }, Kind::FmaPeak { iters: b, .. }) => a == b,
        _ => own == spec,
    }
}

/// The spec's `kind` with the shape of `params` substituted; `None` if the
/// params say nothing about the shape, `Err` if they name a model width we
/// have no FLOP count for.
fn with_params(kind: Kind, params: &Value) -> Option<Result<Kind, String>> {
    let u = |k: &str| {
        params
            .get(k)
            .and_then(Value::as_u64)
            .and_then(|x| usize::try_from(x).ok())
            .filter(|&x| x > 0 && x <= 1 << 24)
    };
    let hidden_ok = |expect: usize| match u("hidden_dim") {
        Some(h) if h != expect => Err(format!(
            "hidden_dim {h} (the spec's: {expect}); no FLOP or token count for that model"
        )),
        _ => Ok(()),
    };
    let tiny = Config::tiny().hidden_size;
    Some(match kind {
        Kind::Model {
            profile,
            workload,
            b,
            t,
            heap,
            packed,
            twin,
        } => hidden_ok(profile.config().hidden_size).map(|()| Kind::Model {
            profile,
            workload,
            b: u("batch").unwrap_or(b),
            t: u("seq_len").unwrap_or(t),
            heap,
            packed,
            twin,
        }),
        Kind::TrainMemory { profile, b, t, mem } => {
            hidden_ok(profile.config().hidden_size).map(|()| Kind::TrainMemory {
                profile,
                b: u("batch").unwrap_or(b),
                t: u("seq_len").unwrap_or(t),
                mem,
            })
        }
        Kind::TrainPrecision {
            profile,
            b,
            t,
            precision,
        } => hidden_ok(profile.config().hidden_size).map(|()| Kind::TrainPrecision {
            profile,
            b: u("batch").unwrap_or(b),
            t: u("seq_len").unwrap_or(t),
            precision,
        }),
        Kind::Parallel {
            threads,
            workload,
            b,
            t,
        } => hidden_ok(tiny).map(|()| Kind::Parallel {
            threads: u("thread_count").unwrap_or(threads),
            workload,
            b: u("batch").unwrap_or(b),
            t: u("seq_len").unwrap_or(t),
        }),
        Kind::DispatchCold { b, t } => hidden_ok(tiny).map(|()| Kind::DispatchCold {
            b: u("batch").unwrap_or(b),
            t: u("seq_len").unwrap_or(t),
        }),
        Kind::DispatchColdProcess { b, t } => hidden_ok(tiny).map(|()| Kind::DispatchColdProcess {
            b: u("batch").unwrap_or(b),
            t: u("seq_len").unwrap_or(t),
        }),
        Kind::Matmul { backend, m, n, k } => Ok(Kind::Matmul {
            backend,
            m: u("M").unwrap_or(m),
            n: u("N").unwrap_or(n),
            k: u("K").unwrap_or(k),
        }),
        Kind::Softmax { n } => Ok(Kind::Softmax {
            n: u("n").unwrap_or(n),
        }),
        Kind::RmsNorm { b, t, c } => {
            let shape: Option<Vec<usize>> =
                params.get("shape").and_then(Value::as_array).map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                        .filter(|&x| x > 0 && x <= 1 << 24)
                        .collect()
                });
            Ok(match shape.as_deref() {
                Some(&[b, t, c]) => Kind::RmsNorm { b, t, c },
                _ => Kind::RmsNorm { b, t, c },
            })
        }
        Kind::Decode { prompt, new_tokens } => Ok(Kind::Decode {
            prompt: u("prompt").unwrap_or(prompt),
            new_tokens: u("new_tokens").unwrap_or(new_tokens),
        }),
        Kind::FmaPeak { iters, .. } => {
            // The loop's width as the run recorded it: 8 or 16 lanes (files
            // from before the 16-lane loop have no `lanes` and ran 8).
            let lanes = match params.get("lanes") {
                None => Ok(moe_core::kernels::cpu::PEAK_LANES),
                Some(v) => match v.as_u64() {
                    Some(l @ (8 | 16)) => Ok(l as usize),
                    _ => Err(format!(
                        "lanes {v} (the peak loop runs 8 or 16); no FLOP count"
                    )),
                },
            };
            lanes.map(|l| Kind::FmaPeak {
                iters: params.get("iters").and_then(Value::as_u64).unwrap_or(iters),
                lanes: Some(l),
            })
        }
        Kind::Bandwidth { n } => Ok(Kind::Bandwidth {
            n: u("n").unwrap_or(n),
        }),
        Kind::Threads { work, threads } => {
            hidden_ok(Config::scale_256().hidden_size).map(|()| Kind::Threads {
                work,
                threads: u("thread_count").unwrap_or(threads),
            })
        }
        Kind::Prec { work, bf16 } => {
            hidden_ok(work.profile().config().hidden_size).map(|()| Kind::Prec { work, bf16 })
        }
        Kind::AdamW { n, pass } => Ok(Kind::AdamW {
            n: u("n").unwrap_or(n),
            // `pass` names the sweep; files written before it have only
            // `zero_grads` (then the fused zeroing pass or the plain one).
            pass: match (
                params.get("pass").and_then(Value::as_str),
                params.get("zero_grads").and_then(Value::as_bool),
            ) {
                (Some(name), _) => AdamPass::from_name(name).unwrap_or(pass),
                (None, Some(true)) => AdamPass::Zeroing,
                (None, Some(false)) => AdamPass::Plain,
                (None, None) => pass,
            },
        }),
    })
}

/// `batch 64, seq_len 32`-style shape of a kind.
fn shape_of(k: &Kind) -> String {
    let mut s = String::new();
    match *k {
        Kind::Model { b, t, .. }
        | Kind::TrainMemory { b, t, .. }
        | Kind::TrainPrecision { b, t, .. }
        | Kind::DispatchCold { b, t }
        | Kind::DispatchColdProcess { b, t } => {
            let _ = write!(s, "batch {b}, seq_len {t}");
        }
        Kind::Parallel { threads, b, t, .. } => {
            let _ = write!(s, "batch {b}, seq_len {t}, thread_count {threads}");
        }
        Kind::Matmul { m, n, k, .. } => {
            let _ = write!(s, "M {m}, K {k}, N {n}");
        }
        Kind::Softmax { n } => {
            let _ = write!(s, "n {n}");
        }
        Kind::RmsNorm { b, t, c } => {
            let _ = write!(s, "shape [{b}, {t}, {c}]");
        }
        Kind::Decode { prompt, new_tokens } => {
            let _ = write!(s, "prompt {prompt}, new_tokens {new_tokens}");
        }
        Kind::FmaPeak { iters, .. } => {
            let _ = write!(s, "iters {iters}");
        }
        Kind::Bandwidth { n } | Kind::AdamW { n, .. } => {
            let _ = write!(s, "n {n}");
        }
        Kind::Threads { work, threads } => {
            let _ = write!(s, "{}, thread_count {threads}", work.name());
        }
        Kind::Prec { work, bf16 } => {
            let _ = write!(
                s,
                "{} {}",
                work.profile().name(),
                if bf16 { "bf16" } else { "f32" }
            );
        }
    }
    s
}
