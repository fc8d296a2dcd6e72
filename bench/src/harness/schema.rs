//! The benchmark result file, CONTRACT §7. One doc line per field; the unit is
//! in the field name. `Option` fields are written as JSON `null` when absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of this layout, written to `metadata.schema_version`.
pub const SCHEMA_VERSION: u64 = 1;

/// The five axes of the spec (§6).
pub const AXES: [&str; 5] = ["memory", "compiler", "type_system", "parallel", "scale"];

/// A whole run: `{ "metadata": …, "scenarios": [...] }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchFile {
    /// Machine, toolchain and run settings.
    pub metadata: Metadata,
    /// One entry per scenario, in run order.
    pub scenarios: Vec<ScenarioResult>,
}

/// `metadata`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    /// Always `"rust"`; the report uses it as the column name.
    pub language: String,
    /// `rustc --version` of the compiler that built the binary.
    pub language_version: String,
    /// Operating system (`std::env::consts::OS`).
    pub os: String,
    /// Kernel name and release from `uname(2)`, e.g. `"Linux 6.1.0-18-amd64"`.
    pub kernel: String,
    /// CPU architecture (`std::env::consts::ARCH`).
    pub arch: String,
    /// CPU model (`model name` in `/proc/cpuinfo`), `"unknown"` if unavailable.
    pub cpu_model: String,
    /// Logical CPUs available to the process (`available_parallelism`).
    pub logical_cpus: u64,
    /// 1-, 5- and 15-minute load averages when the run started (`getloadavg`;
    /// empty if unavailable): a busy machine means noisy numbers.
    pub load_average: Vec<f64>,
    /// Start of the run, RFC 3339 UTC (`2026-11-26T01:02:03Z`).
    pub timestamp: String,
    /// Timed trials per scenario.
    pub n_trials: u64,
    /// Untimed-for-statistics warmup runs per scenario.
    pub n_warmup: u64,
    /// Seed of every model and fixture.
    pub seed: u64,
    /// GEMM backend of the model (`Backend::DEFAULT.name()`).
    pub matmul_backend: String,
    /// Micro-kernel of moe-core's portable GEMM on this CPU (`kernels::gemm::kernel_name()`).
    pub matmul_kernel: String,
    /// Intra-op threads per model (moe-core has none: always 1).
    pub threads: u64,
    /// `git rev-parse HEAD` at run time, `"unknown"` outside a checkout.
    pub git_rev: String,
    /// Whether tracked files differed from `git_rev` (`git status --porcelain
    /// --untracked-files=no` non-empty); `null` outside a checkout.
    pub git_dirty: Option<bool>,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u64,
    /// `"release"` or `"debug"` (debug numbers are not benchmarks).
    pub build_profile: String,
    /// `"process"` (one child process per scenario) or `"in-process"`.
    pub isolation: String,
    /// Every `OPENBLAS_*` environment variable that was set, unchanged.
    pub openblas_env: BTreeMap<String, String>,
    /// The SIMD extensions the kernels may use on this CPU, detected at run
    /// time (`avx2`, `fma`, `avx512f`; empty elsewhere): the same binary
    /// runs the AVX-512 GEMM on one VM and the AVX2 one on another.
    #[serde(default)]
    pub cpu_simd: Vec<String>,
    /// The core type whose kernels the linked BLAS chose
    /// (`openblas_get_corename()`, e.g. `Cooperlake` = its AVX-512 kernels),
    /// `null` without the `openblas` feature.
    #[serde(default)]
    pub blas_core: Option<String>,
}

/// One scenario's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// Scenario id (the spec's 22, then the extras).
    pub id: String,
    /// One of [`AXES`].
    pub axis: String,
    /// Workload parameters (`batch`, `seq_len`, `hidden_dim`, … or kernel sizes).
    pub params: serde_json::Value,
    /// Warmup runs done before the trials.
    pub warmup_runs: u64,
    /// Timed trials.
    pub trial_runs: u64,
    /// Wall time of each trial, ns (`Instant`).
    pub timings_ns: Vec<u64>,
    /// User + system CPU time of each trial, ns (`getrusage`; the whole process, all threads).
    pub cpu_times_ns: Vec<u64>,
    /// Wall time of each warmup run, ns.
    pub warmup_timings_ns: Vec<u64>,
    /// Median of `timings_ns` (type-7 quantile, rounded), ns.
    pub median_ns: u64,
    /// 95th percentile of `timings_ns`, ns.
    pub p95_ns: u64,
    /// Fastest trial, ns.
    pub min_ns: u64,
    /// Slowest trial, ns.
    pub max_ns: u64,
    /// Interquartile range `Q3 − Q1` of `timings_ns`, ns.
    pub iqr_ns: u64,
    /// Median of `cpu_times_ns`, ns.
    pub cpu_median_ns: u64,
    /// Memory metrics.
    pub memory: Memory,
    /// Garbage-collector metrics (Rust has none: zeros).
    pub gc: Gc,
    /// Finiteness of the output of the last trial.
    pub numerical: Numerical,
    /// Tokens processed per second at the median (all threads); `null` for kernels.
    pub throughput_tokens_per_sec: Option<f64>,
    /// Metrics derived from the ones above.
    pub derived: Derived,
    /// Scenario-specific figures of the extras (absent elsewhere): e.g. the
    /// bf16 and row-major-twin scenarios' `speedup_vs_twin` (twin median /
    /// this median, both in this file), `full_decode_bf16`'s init time, prefill and decode
    /// tokens/s, memory plan and bandwidth limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

/// `memory`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Memory {
    /// Peak resident set size of the measuring process at the end of the scenario, bytes.
    pub peak_rss_bytes: u64,
    /// Heap bytes requested per trial (median over trials; counting allocator, all threads).
    pub alloc_bytes: u64,
    /// Heap allocation calls per trial (median over trials).
    pub alloc_count: u64,
    /// Planned workspace (arena) bytes; summed over threads; 0 for kernels.
    pub arena_bytes: u64,
}

/// `gc`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Gc {
    /// Wall time spent in garbage collection during the trials, ns (always 0).
    pub total_gc_time_ns: u64,
    /// Garbage-collection pauses during the trials (always 0).
    pub gc_pause_count: u64,
}

/// `numerical`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Numerical {
    /// NaN values in the output (logits, loss or kernel output).
    pub nan_count: u64,
    /// ±∞ values in the output.
    pub inf_count: u64,
    /// Largest |x| over the finite outputs.
    pub max_abs: f64,
}

impl Numerical {
    /// Scans `values`.
    pub fn of(values: &[f32]) -> Self {
        let mut n = Numerical::default();
        let mut max = 0.0f32;
        for &x in values {
            if x.is_nan() {
                n.nan_count += 1;
            } else if x.is_infinite() {
                n.inf_count += 1;
            } else {
                max = max.max(x.abs());
            }
        }
        n.max_abs = f64::from(max);
        n
    }

    /// Combines two scans (counts add, max of maxima).
    pub fn merge(self, other: Numerical) -> Self {
        Numerical {
            nan_count: self.nan_count + other.nan_count,
            inf_count: self.inf_count + other.inf_count,
            max_abs: self.max_abs.max(other.max_abs),
        }
    }
}

/// `derived`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Derived {
    /// `alloc_bytes / (median_ns · 1e-9)`, bytes/s.
    pub alloc_rate_bytes_per_sec: f64,
    /// `1 − total_gc_time_ns / Σ timings_ns` (always 1.0).
    pub gc_throughput: f64,
    /// Analytic FLOPs (docs/flops.md) per iteration / median, GFLOP/s; `null` where no count is defined.
    pub gflops: Option<f64>,
}
