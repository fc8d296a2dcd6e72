//! One model on many threads through the tool: the `threads_*` scenarios
//! (ids, params, zero heap traffic), the `--threads` flags, and the measured
//! cost of a pool region against `std::thread::scope` (printed with
//! `--nocapture`; docs/tradeoffs.md quotes it).

use std::time::Instant;

use moe_bench::harness::scenarios::{find, Kind, SCENARIOS, SPEC_SCENARIOS};
use moe_bench::harness::sys::alloc_counter::{AllocSnapshot, CountingAlloc};
use moe_core::Pool;
use serde_json::Value;

use crate::common::{moe, text};

// The tool's counting allocator, for this binary (per-thread counters keep
// the other tests' threads out of the counts below).
#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn the_threads_scenarios_are_extras_with_fixed_ids() {
    let ids = [
        "threads_train_T1",
        "threads_train_T2",
        "threads_train_T4",
        "threads_forward_T1",
        "threads_forward_T2",
        "threads_forward_T4",
        "threads_decode_T1",
        "threads_decode_T2",
    ];
    for id in ids {
        let pos = SCENARIOS.iter().position(|s| s.id == id).unwrap();
        assert!(pos >= SPEC_SCENARIOS, "{id} must come after the spec's 22");
        let sc = find(id).unwrap();
        assert_eq!(sc.axis, "parallel");
        let Kind::Threads { threads, .. } = sc.kind else {
            panic!("{id} is not a threads scenario");
        };
        assert!(id.ends_with(&format!("_T{threads}")));
        let p = sc.kind.params();
        assert_eq!(p["thread_count"], threads);
        assert_eq!(p["profile"], "scale_256");
        assert_eq!(p["parallel_semantics"], "one_model");
    }
}

#[test]
fn a_threads_scenario_allocates_nothing_per_trial() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("thr.json");
    let o = moe(&[
        "bench",
        "--only",
        "threads_decode_T2",
        "--trials",
        "2",
        "--warmup",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let sc = &v["scenarios"][0];
    assert_eq!(sc["id"], "threads_decode_T2");
    assert_eq!(sc["memory"]["alloc_bytes"], 0, "{sc}");
    assert_eq!(sc["memory"]["alloc_count"], 0, "{sc}");
    assert!(sc["throughput_tokens_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn threads_zero_or_garbage_is_a_flag_error() {
    for sub in [
        &["train", "--data", "x", "--steps", "1"][..],
        &["generate", "--checkpoint", "x", "--prompt", "a"][..],
        &["grads", "--checkpoint", "x", "--tokens", "t", "--out", "o"][..],
        &["plan"][..],
        &["bench", "--list"][..],
    ] {
        for bad in ["0", "two", "1.5", "1000000"] {
            let mut args = sub.to_vec();
            args.extend(["--threads", bad]);
            let o = moe(&args);
            assert!(!o.status.success(), "{args:?} succeeded");
            let err = text(&o.stderr);
            assert!(err.contains("--threads"), "{args:?}: {err}");
        }
    }
}

#[test]
fn plan_prints_the_memory_of_each_micro_batch() {
    let o = moe(&[
        "plan",
        "--threads",
        "2",
        "--batch",
        "8",
        "--seq",
        "16",
        "--mode",
        "training",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(
        s.contains("Training on 2 threads, b8 s16: 4 micro-batches"),
        "{s}"
    );
    assert!(s.contains("6..8"), "{s}");
    assert!(s.contains("Split forward on 2 threads"), "{s}");
}

/// Median ns of `f` over `n` runs.
fn median_ns(n: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[n / 2]
}

#[test]
fn a_pool_region_costs_microseconds_and_no_allocation() {
    for t in [1, 2, 4] {
        let pool = Pool::new(t).unwrap();
        let work = |_: usize| {
            std::hint::black_box(0u64);
        };
        pool.run(t, &work);
        let a = AllocSnapshot::this_thread();
        for _ in 0..2000 {
            pool.run(t, &work);
        }
        let d = AllocSnapshot::this_thread().since(a);
        let ns = median_ns(2000, || pool.run(t, &work));
        println!("Pool T={t}: empty region of {t} tasks, median {ns:.0} ns, {} allocations on the caller in 2000 regions", d.count);
        assert_eq!(d.count, 0, "a region allocated on the caller");
        assert!(ns < 5e7, "a region took {ns} ns");
    }
    // The alternative the pool replaces: `std::thread::scope` per region.
    let scope = || {
        std::thread::scope(|s| {
            s.spawn(|| std::hint::black_box(0u64));
        })
    };
    let a = AllocSnapshot::this_thread();
    for _ in 0..200 {
        scope();
    }
    let d = AllocSnapshot::this_thread().since(a);
    let ns = median_ns(200, scope);
    let per = d.count as f64 / 200.0;
    println!("thread::scope + 1 spawn: median {ns:.0} ns, {per:.1} allocations per region");
    assert!(
        per >= 1.0,
        "spawning a scoped thread is expected to allocate"
    );
}
