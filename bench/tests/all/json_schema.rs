//! Runs `moe bench` on every scenario (`--trials 2 --warmup 1`) and
//! checks the JSON against CONTRACT §7: ids, axes, every field present and
//! typed, `min ≤ median ≤ max`, trial counts; then renders a report from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const MOE: &str = env!("CARGO_BIN_EXE_moe");

/// Every scenario id, in run order: the spec's 22, then the extras. The
/// whole set takes about 2 s at the test profile's opt-level with
/// `--trials 2 --warmup 1`, so the test runs all of them.
const IDS: &[&str] = &[
    "mem_train_step",
    "mem_scale_batch_1",
    "mem_scale_batch_2",
    "mem_scale_batch_4",
    "mem_scale_batch_8",
    "mem_scale_seq_8",
    "mem_scale_seq_16",
    "mem_scale_seq_32",
    "mem_scale_seq_64",
    "kernel_matmul",
    "kernel_softmax",
    "kernel_rmsnorm",
    "dispatch_warm",
    "dispatch_cold",
    "parallel_T1",
    "parallel_T2",
    "parallel_T4",
    "parallel_train_T1",
    "parallel_train_T2",
    "parallel_train_T4",
    "scale_forward_256",
    "scale_train_256",
    "kernel_matmul_portable",
    "kernel_matmul_matrixmultiply",
    "dispatch_cold_process",
    "machine_peak",
    "generate_kv_64",
    "machine_fma_peak",
    "machine_bandwidth",
    "optimizer_adamw_scale_256",
    "optimizer_adamw_zeroing_scale_256",
    "optimizer_adamw_then_zero_scale_256",
    "optimizer_adamw_bf16_scale_256",
    #[cfg(feature = "openblas")]
    "kernel_matmul_openblas",
    #[cfg(feature = "openblas")]
    "machine_peak_portable",
    #[cfg(feature = "openblas")]
    "machine_peak_openblas",
    "dispatch_warm_heap",
    "mem_train_step_heap",
    "scale_forward_256_heap",
    "scale_train_256_heap",
    "recompute_train_tiny_s512",
    "recompute_train_tiny_s512_off",
    "recompute_train_scale_s256",
    "recompute_train_scale_s256_off",
    "mixed_train_tiny_s512",
    "mixed_train_tiny_s512_f32",
    "mixed_train_scale_s256",
    "mixed_train_scale_s256_f32",
    "threads_train_T1",
    "threads_train_T2",
    "threads_train_T4",
    "threads_forward_T1",
    "threads_forward_T2",
    "threads_forward_T4",
    "threads_decode_T1",
    "threads_decode_T2",
    "generate_kv_64_scale_256",
    "generate_kv_64_bf16",
    "dispatch_warm_bf16",
    "dispatch_warm_rowmajor",
    "scale_forward_256_rowmajor",
];

fn expected_axis(id: &str) -> &'static str {
    match id {
        _ if id.starts_with("mem_") || id.starts_with("recompute_") || id.starts_with("mixed_") => {
            "memory"
        }
        _ if id == "dispatch_warm_heap" => "memory",
        _ if id.starts_with("kernel_") || id.starts_with("machine_") => "compiler",
        _ if id.starts_with("dispatch_") || id == "generate_kv_64" => "type_system",
        _ if id.starts_with("parallel_") || id.starts_with("threads_") => "parallel",
        _ if id.starts_with("scale_") || id.starts_with("optimizer_") => "scale",
        _ if id.starts_with("generate_kv_64_") || id == "full_decode_bf16" => "scale",
        _ => panic!("unexpected id {id}"),
    }
}

const AXES: [&str; 5] = ["memory", "compiler", "type_system", "parallel", "scale"];

fn tmp(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("json_schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn bench(out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench",
        "--trials",
        "2",
        "--warmup",
        "1",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let st = Command::new(MOE)
        .args(&args)
        .output()
        .expect("run moe bench");
    assert!(
        st.status.success(),
        "moe bench failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let stdout = String::from_utf8_lossy(&st.stdout);
    for id in IDS {
        assert!(stdout.contains(id), "summary table lists {id}:\n{stdout}");
    }
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn uint(v: &Value, key: &str) -> u64 {
    v.get(key)
        .unwrap_or_else(|| panic!("missing {key} in {v}"))
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer: {v}"))
}

fn float(v: &Value, key: &str) -> f64 {
    v.get(key)
        .unwrap_or_else(|| panic!("missing {key}"))
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number"))
}

fn string<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .unwrap_or_else(|| panic!("missing {key}"))
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

fn uints(v: &Value, key: &str, len: usize) -> Vec<u64> {
    let a = v
        .get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{key} is not an array"));
    assert_eq!(a.len(), len, "{key} length");
    a.iter()
        .map(|x| {
            x.as_u64()
                .unwrap_or_else(|| panic!("{key} holds a non-integer"))
        })
        .collect()
}

fn nullable_number(v: &Value, key: &str) -> Option<f64> {
    let x = v
        .get(key)
        .unwrap_or_else(|| panic!("missing {key} (must be present, possibly null)"));
    if x.is_null() {
        None
    } else {
        Some(
            x.as_f64()
                .unwrap_or_else(|| panic!("{key} is neither null nor a number")),
        )
    }
}

fn check_metadata(m: &Value, isolation: &str) {
    assert_eq!(string(m, "language"), "rust");
    assert!(string(m, "language_version").starts_with("rustc "));
    for key in [
        "os",
        "kernel",
        "arch",
        "cpu_model",
        "matmul_backend",
        "matmul_kernel",
        "git_rev",
        "build_profile",
    ] {
        assert!(!string(m, key).is_empty(), "{key}");
    }
    let ts = string(m, "timestamp");
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && &ts[10..11] == "T",
        "RFC 3339 UTC: {ts}"
    );
    assert_eq!(uint(m, "n_trials"), 2);
    assert_eq!(uint(m, "n_warmup"), 1);
    assert_eq!(uint(m, "seed"), 42);
    assert_eq!(uint(m, "threads"), 1);
    assert_eq!(uint(m, "schema_version"), 1);
    assert!(uint(m, "logical_cpus") >= 1);
    assert!(m["load_average"].is_array());
    assert!(m["openblas_env"].is_object());
    // The SIMD extensions this CPU has, as the kernels detect them.
    let simd = m["cpu_simd"].as_array().expect("metadata.cpu_simd");
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        simd.iter().any(|x| x == "avx2"),
        std::is_x86_feature_detected!("avx2"),
        "cpu_simd {simd:?}"
    );
    assert!(m["blas_core"].is_null() || m["blas_core"].is_string());
    assert!(m["git_dirty"].is_boolean() || m["git_dirty"].is_null());
    assert_eq!(string(m, "isolation"), isolation);
}

fn check_scenario(s: &Value) {
    let id = string(s, "id");
    let axis = string(s, "axis");
    assert!(AXES.contains(&axis), "{id}: axis {axis}");
    assert_eq!(axis, expected_axis(id), "{id}");
    assert!(s["params"].is_object(), "{id}: params");
    assert_eq!(uint(s, "warmup_runs"), 1, "{id}");
    assert_eq!(uint(s, "trial_runs"), 2, "{id}");
    let t = uints(s, "timings_ns", 2);
    uints(s, "cpu_times_ns", 2);
    uints(s, "warmup_timings_ns", 1);
    let (median, min, max) = (uint(s, "median_ns"), uint(s, "min_ns"), uint(s, "max_ns"));
    assert!(
        min <= median && median <= max,
        "{id}: {min} <= {median} <= {max}"
    );
    assert!(min > 0, "{id}: a trial took 0 ns");
    assert_eq!(min, *t.iter().min().unwrap());
    assert_eq!(max, *t.iter().max().unwrap());
    let p95 = uint(s, "p95_ns");
    assert!(median <= p95 && p95 <= max, "{id}: p95");
    assert!(uint(s, "iqr_ns") <= max - min, "{id}: iqr");
    uint(s, "cpu_median_ns");

    let mem = &s["memory"];
    assert!(
        uint(mem, "peak_rss_bytes") > 1 << 20,
        "{id}: peak RSS in bytes"
    );
    let alloc = uint(mem, "alloc_bytes");
    uint(mem, "alloc_count");
    let arena = uint(mem, "arena_bytes");
    let gc = &s["gc"];
    assert_eq!(uint(gc, "total_gc_time_ns"), 0);
    assert_eq!(uint(gc, "gc_pause_count"), 0);
    let num = &s["numerical"];
    assert_eq!(uint(num, "nan_count"), 0, "{id}");
    assert_eq!(uint(num, "inf_count"), 0, "{id}");
    assert!(float(num, "max_abs") > 0.0, "{id}: max_abs");
    let tps = nullable_number(s, "throughput_tokens_per_sec");
    let d = &s["derived"];
    float(d, "alloc_rate_bytes_per_sec");
    assert_eq!(float(d, "gc_throughput"), 1.0);
    let gflops = nullable_number(d, "gflops");
    if let Some(twin) = s["params"].get("twin").and_then(|t| t.as_str()) {
        // A bf16 scenario: its f32 twin's median over its own, from the same file.
        let r = s["extra"]["speedup_vs_twin"].as_f64();
        assert!(
            r.is_some_and(|r| r > 0.0),
            "{id}: speedup_vs_twin vs {twin}"
        );
    }

    if id.starts_with("optimizer_") {
        // Memory-bound passes: bytes per iteration instead of FLOPs.
        assert_eq!(tps, None, "{id}");
        assert_eq!(gflops, None, "{id}");
        assert!(uint(&s["params"], "bytes_per_iter") > 1 << 20, "{id}");
        assert_eq!(uint(mem, "alloc_bytes"), 0, "{id}: steady-state allocation");
        return;
    }
    if id.starts_with("kernel_") || id.starts_with("machine_") {
        assert_eq!(tps, None, "{id}: kernels have no tokens");
        assert!(gflops.unwrap() > 0.0, "{id}");
        assert_eq!(arena, 0, "{id}");
    } else {
        assert!(tps.unwrap() > 0.0, "{id}");
        assert!(arena > 0, "{id}: arena_bytes");
    }
    if id.starts_with("dispatch_cold") {
        assert!(
            alloc > 1 << 20,
            "{id}: construction allocates the parameters"
        );
        assert_eq!(gflops, None, "{id}");
    } else if id.starts_with("generate_kv_64") || id.starts_with("threads_decode_") {
        // Decoding: no analytic FLOP count is claimed, but still no allocation.
        assert_eq!(alloc, 0, "{id}: steady-state allocation");
        assert_eq!(gflops, None, "{id}");
    } else if id.ends_with("_heap") {
        // Heap per step: at least the planned buffers are allocated, every step,
        // one allocation per buffer.
        assert!(
            alloc as f64 >= 0.9 * arena as f64,
            "{id}: {alloc} vs plan {arena}"
        );
        assert!(uint(&s["memory"], "alloc_count") >= 20, "{id}");
        assert!(gflops.unwrap() > 0.0, "{id}");
    } else if id == "kernel_matmul_matrixmultiply" {
        // The `matrixmultiply` crate allocates its packing buffers per call.
        assert!(gflops.unwrap() > 0.0, "{id}");
    } else {
        // Steady state: the arena is planned up front, nothing is allocated per iteration.
        assert_eq!(alloc, 0, "{id}: steady-state allocation");
        assert!(gflops.unwrap() > 0.0, "{id}");
    }
}

#[test]
fn bench_json_follows_contract_section_7() {
    let out = tmp("rust.json");
    let v = bench(&out, &["--in-process"]);
    check_metadata(&v["metadata"], "in-process");
    let scenarios = v["scenarios"].as_array().unwrap();
    let ids: Vec<&str> = scenarios.iter().map(|s| string(s, "id")).collect();
    assert_eq!(ids, IDS);
    for s in scenarios {
        check_scenario(s);
    }

    // Parallel arena is the sum over threads: twice the single-model workspace.
    let by_id = |id: &str| scenarios.iter().find(|s| s["id"] == id).unwrap();
    let seq8 = uint(&by_id("mem_scale_seq_8")["memory"], "arena_bytes");
    assert!(uint(&by_id("parallel_T2")["memory"], "arena_bytes") > seq8);
    assert_eq!(by_id("parallel_T2")["params"]["thread_count"], 2);
    // The spec's inference scenarios run pre-packed weights, their twins
    // row-major, the ratio in the twin's extra; no allocation either way.
    for (id, twin) in [
        ("dispatch_warm", "dispatch_warm_rowmajor"),
        ("scale_forward_256", "scale_forward_256_rowmajor"),
    ] {
        // A BLAS build keeps row-major weights (the packed kernel would not
        // reproduce BLAS's bits).
        let packed = if moe_bench::harness::scenarios::prepack_applies() {
            "prepacked"
        } else {
            "row_major"
        };
        assert_eq!(by_id(id)["params"]["weights"], packed, "{id}");
        assert_eq!(by_id(twin)["params"]["weights"], "row_major", "{twin}");
        assert_eq!(by_id(twin)["params"]["twin"], id, "{twin}");
        assert!(by_id(twin)["extra"]["speedup_vs_twin"].as_f64().unwrap() > 0.0);
        for x in [id, twin] {
            assert_eq!(uint(&by_id(x)["memory"], "alloc_bytes"), 0, "{x}");
        }
    }
    assert_eq!(by_id("mem_scale_seq_32")["params"]["weights"], "row_major");

    // The report renders from it.
    let md = tmp("bench-results.md");
    let plots = tmp("plots");
    let st = Command::new(MOE)
        .args([
            "report",
            out.to_str().unwrap(),
            "--md",
            md.to_str().unwrap(),
            "--plots",
            plots.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let text = std::fs::read_to_string(&md).unwrap();
    for id in IDS {
        assert!(text.contains(&format!("`{id}`")), "report mentions {id}");
    }
    assert!(plots.join("thread_speedup.svg").exists());
}

#[test]
fn isolated_mode_runs_each_scenario_in_a_child() {
    let out = tmp("isolated.json");
    let st = Command::new(MOE)
        .args([
            "bench",
            "--trials",
            "2",
            "--warmup",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--only",
            "kernel_rmsnorm,mem_scale_seq_8",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    check_metadata(&v["metadata"], "process");
    let s = v["scenarios"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    s.iter().for_each(check_scenario);
}

#[test]
fn unknown_ids_are_rejected() {
    let st = Command::new(MOE)
        .args(["bench", "--only", "no_such_scenario"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("unknown scenario id"));
}
