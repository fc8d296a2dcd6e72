//! `moe report` checks what it reads: each mis-unit and placeholder case of
//! the peer files (benchmarks/peers/README.md, "Known quirks"), duplicate
//! ids, params-derived figures, bounded reads, labels and per-file notes.

use std::path::Path;

use moe_bench::io::read::ReadErrorKind;
use moe_bench::report::check::{Flag, Track};
use moe_bench::report::{render_texts, ReportError, Run};
use serde_json::{json, Value};

/// A result file with `metadata` and `scenarios`.
fn file(meta: Value, scenarios: Vec<Value>) -> String {
    json!({ "metadata": meta, "scenarios": scenarios }).to_string()
}

/// A scenario of `id` with a 10-trial median of `median_ns`.
fn scenario(id: &str, params: Value, median_ns: u64) -> Value {
    json!({
        "id": id, "axis": "memory", "params": params, "trial_runs": 10,
        "timings_ns": vec![median_ns; 10], "median_ns": median_ns, "cpu_median_ns": median_ns,
        "memory": { "peak_rss_bytes": 30_000_000u64, "alloc_bytes": 1000 },
        "gc": { "total_gc_time_ns": 0, "gc_pause_count": 0 },
        "numerical": { "nan_count": 0, "inf_count": 0, "max_abs": 2.5 },
        "derived": { "alloc_rate_bytes_per_sec": 1000.0 / (median_ns as f64 * 1e-9), "gc_throughput": 1.0 },
    })
}

fn b2s32() -> Value {
    json!({ "batch": 2, "seq_len": 32, "hidden_dim": 64 })
}

fn parse(text: &str) -> Run {
    Run::parse(text, Path::new("t.json")).unwrap()
}

#[test]
fn python_peak_rss_in_kib_is_converted_and_flagged() {
    let mut s = scenario("dispatch_warm", b2s32(), 3_000_000);
    s["memory"]["peak_rss_bytes"] = json!(51_064);
    let run = parse(&file(json!({"language": "python"}), vec![s]));
    let f = run.fig("dispatch_warm");
    assert_eq!(f.peak_rss.v, Some(51_064.0 * 1024.0));
    assert_eq!(f.peak_rss.flags, [Flag::Kib]);
    assert!(
        run.notes.iter().any(|n| n.contains("KiB")),
        "{:?}",
        run.notes
    );
    // A plausible RSS is left alone.
    let run = parse(&file(
        json!({"language": "python"}),
        vec![scenario("dispatch_warm", b2s32(), 3_000_000)],
    ));
    let f = run.fig("dispatch_warm");
    assert_eq!(f.peak_rss.v, Some(30_000_000.0));
    assert!(f.peak_rss.flags.is_empty());
}

#[test]
fn go_alloc_total_over_trials_is_per_trial_and_the_rate_agrees() {
    // Go: alloc_bytes over 10 trials, its rate computed over 10 × median.
    let median = 8_000_000u64;
    let mut s = scenario(
        "mem_train_step",
        json!({"batch": 2, "seq_len": 8, "hidden_dim": 64}),
        median,
    );
    s["memory"]["alloc_bytes"] = json!(25_000_000);
    s["derived"]["alloc_rate_bytes_per_sec"] = json!(25_000_000.0 / (10.0 * median as f64 * 1e-9));
    s["gc"] = json!({ "total_gc_time_ns": 200_000, "gc_pause_count": 2 });
    s["derived"]["gc_throughput"] = json!(1.0 - 200_000.0 / (10.0 * median as f64));
    let run = parse(&file(json!({"language": "go"}), vec![s]));
    let f = run.fig("mem_train_step");
    assert_eq!(f.alloc_bytes.v, Some(2_500_000.0));
    assert_eq!(f.alloc_bytes.flags, [Flag::TotalOverTrials]);
    let rate = f.alloc_rate.v.unwrap();
    assert!((rate - 2_500_000.0 / 8e-3).abs() < 1e-3, "{rate}");
    assert_eq!(f.gc_time_ns.v, Some(20_000.0), "GC time per step");
    assert!(f.gc_throughput.flags.is_empty(), "{:?}", f.gc_throughput);
    assert!((f.gc_throughput.v.unwrap() - 0.9975).abs() < 1e-9);
    assert!(run
        .notes
        .iter()
        .any(|n| n.contains("total over the trials")));
}

#[test]
fn a_derived_value_that_disagrees_is_flagged_and_recomputed() {
    let mut s = scenario("dispatch_warm", b2s32(), 2_000_000);
    s["throughput_tokens_per_sec"] = json!(99_999.0);
    s["derived"]["alloc_rate_bytes_per_sec"] = json!(1.0);
    s["derived"]["gc_throughput"] = json!(0.5);
    let run = parse(&file(json!({"language": "go"}), vec![s]));
    let f = run.fig("dispatch_warm");
    assert_eq!(f.tokens_per_sec.v, Some(64.0 / 2e-3));
    assert_eq!(f.tokens_per_sec.flags, [Flag::Disagrees]);
    assert_eq!(f.alloc_bytes.flags, [Flag::Disagrees]);
    assert_eq!(f.gc_throughput.v, Some(1.0));
    assert_eq!(f.gc_throughput.flags, [Flag::Disagrees]);
}

#[test]
fn placeholders_print_n_a() {
    let mut s = scenario(
        "mem_train_step",
        json!({"batch": 2, "seq_len": 8}),
        12_000_000,
    );
    s["numerical"]["max_abs"] = json!(0.0);
    // Pauses counted, time never measured.
    s["gc"] = json!({ "total_gc_time_ns": 0, "gc_pause_count": 1 });
    let mut k = scenario("kernel_matmul", json!({"M": 64, "K": 64, "N": 64}), 10_000);
    k["throughput_tokens_per_sec"] = json!(0);
    k["memory"]["peak_rss_bytes"] = json!(0);
    let mut n = scenario(
        "parallel_T2",
        json!({"batch": 2, "seq_len": 32, "thread_count": 2}),
        4_000_000,
    );
    n["memory"]["alloc_bytes"] = Value::Null;
    n["derived"]["alloc_rate_bytes_per_sec"] = Value::Null;
    let text = file(json!({"language": "python"}), vec![s, k, n]);
    let run = parse(&text);
    let f = run.fig("mem_train_step");
    assert_eq!(f.max_abs.v, None);
    assert_eq!(f.gc_time_ns.v, None, "GC time not measured");
    assert_eq!(f.gc_throughput.v, None, "not 1.0");
    let k = run.fig("kernel_matmul");
    assert_eq!(k.tokens_per_sec.v, None);
    assert_eq!(k.peak_rss.v, None);
    assert!((k.gflops.v.unwrap() - 52.4288).abs() < 1e-9);
    assert_eq!(run.fig("parallel_T2").alloc_bytes.v, None);
    assert!(run.notes.iter().any(|n| n.contains("GC time not measured")));
    assert!(run.notes.iter().any(|n| n.contains("numerical.max_abs")));
    let md = render_texts(&[("python.json", &text)]).unwrap();
    let row = md
        .lines()
        .find(|l| l.starts_with("| `mem_train_step` | python |"))
        .unwrap();
    assert!(
        row.ends_with("| n/a | n/a |"),
        "GC time and gc_throughput: {row}"
    );
}

#[test]
fn parallel_cpu_of_the_parent_process_only_is_flagged() {
    let mut s = scenario(
        "parallel_T2",
        json!({"batch": 2, "seq_len": 32, "thread_count": 2}),
        4_000_000,
    );
    s["cpu_median_ns"] = json!(650_000);
    // T1 in a worker process too.
    let mut t1 = scenario(
        "parallel_T1",
        json!({"batch": 2, "seq_len": 32, "thread_count": 1}),
        2_400_000,
    );
    t1["cpu_median_ns"] = json!(360_000);
    let run = parse(&file(json!({"language": "python"}), vec![s, t1]));
    let f = run.fig("parallel_T2");
    assert_eq!(f.cpu_wall.flags, [Flag::ParentOnly]);
    assert_eq!(run.fig("parallel_T1").cpu_wall.flags, [Flag::ParentOnly]);
    assert!(run.notes.iter().any(|n| n.contains("parent process")));
    // Two busy threads of one process: not flagged.
    let s = scenario(
        "parallel_T2",
        json!({"batch": 2, "seq_len": 32, "thread_count": 2}),
        4_000_000,
    );
    let mut s = s;
    s["cpu_median_ns"] = json!(7_900_000);
    assert!(parse(&file(json!({"language": "rust"}), vec![s]))
        .fig("parallel_T2")
        .cpu_wall
        .flags
        .is_empty());
}

#[test]
fn duplicate_ids_are_an_error_naming_the_file() {
    let text = file(
        json!({"language": "go"}),
        vec![
            scenario("dispatch_warm", b2s32(), 1),
            scenario("dispatch_warm", b2s32(), 2),
        ],
    );
    let e = Run::parse(&text, Path::new("peers/go.json")).unwrap_err();
    assert!(matches!(&e, ReportError::DuplicateId { id, .. } if id == "dispatch_warm"));
    let msg = e.to_string();
    assert!(
        msg.contains("peers/go.json") && msg.contains("dispatch_warm"),
        "{msg}"
    );
    // A scenario without an id names its index.
    let e = Run::parse(
        &file(json!({}), vec![json!({"median_ns": 1})]),
        Path::new("x.json"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("scenarios[0].id"), "{e}");
}

#[test]
fn derived_figures_come_from_the_files_own_params() {
    // mem_scale_batch_8 that actually ran at batch 64.
    let median = 10_000_000u64;
    let s = scenario(
        "mem_scale_batch_8",
        json!({"batch": 64, "seq_len": 32, "hidden_dim": 64}),
        median,
    );
    let run = parse(&file(json!({"language": "go"}), vec![s]));
    let f = run.fig("mem_scale_batch_8");
    assert_eq!(
        f.tokens_per_sec.v,
        Some(64.0 * 32.0 / 1e-2),
        "batch 64, not 8"
    );
    assert!(f.tokens_per_sec.flags.contains(&Flag::Params));
    assert!(f.gflops.flags.contains(&Flag::Params));
    let spec = parse(&file(
        json!({"language": "go"}),
        vec![scenario(
            "mem_scale_batch_8",
            json!({"batch": 8, "seq_len": 32, "hidden_dim": 64}),
            median,
        )],
    ));
    let g = spec.fig("mem_scale_batch_8");
    assert!(g.tokens_per_sec.flags.is_empty());
    assert!(f.gflops.v.unwrap() > 7.0 * g.gflops.v.unwrap());
    assert!(
        run.notes
            .iter()
            .any(|n| n.contains("batch 64") && n.contains("batch 8")),
        "{:?}",
        run.notes
    );
    // A width we have no count for: n/a and a note, not a wrong number.
    let s = scenario(
        "dispatch_warm",
        json!({"batch": 2, "seq_len": 32, "hidden_dim": 128}),
        median,
    );
    let run = parse(&file(json!({"language": "go"}), vec![s]));
    assert_eq!(run.fig("dispatch_warm").gflops.v, None);
    assert!(run.notes.iter().any(|n| n.contains("hidden_dim 128")));
}

#[test]
fn prepacked_weights_and_row_major_twins_are_the_specs_shape() {
    // `weights` and `twin` (issue 13 item 2) do not change the shape: no
    // params flag, the same FLOPs as a file without them.
    let median = 1_000_000u64;
    let with = |id: &str, extra: Value| {
        let mut p = json!({"batch": 2, "seq_len": 32, "workload": "forward"});
        p["hidden_dim"] = json!(if id.starts_with("scale") { 256 } else { 64 });
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        scenario(id, p, median)
    };
    let run = parse(&file(
        json!({"language": "rust"}),
        vec![
            with("dispatch_warm", json!({"weights": "prepacked"})),
            with("scale_forward_256", json!({"weights": "prepacked"})),
            with(
                "dispatch_warm_rowmajor",
                json!({"weights": "row_major", "twin": "dispatch_warm"}),
            ),
            with(
                "scale_forward_256_rowmajor",
                json!({"weights": "row_major", "twin": "scale_forward_256"}),
            ),
        ],
    ));
    let plain = parse(&file(
        json!({"language": "rust"}),
        vec![
            with("dispatch_warm", json!({})),
            with("scale_forward_256", json!({})),
        ],
    ));
    for (id, spec) in [
        ("dispatch_warm", "dispatch_warm"),
        ("scale_forward_256", "scale_forward_256"),
        ("dispatch_warm_rowmajor", "dispatch_warm"),
        ("scale_forward_256_rowmajor", "scale_forward_256"),
    ] {
        let f = run.fig(id);
        assert!(f.gflops.flags.is_empty(), "{id}: {:?}", f.gflops.flags);
        assert!(f.tokens_per_sec.flags.is_empty(), "{id}");
        let g = f.gflops.v.unwrap();
        assert_eq!(Some(g), plain.fig(spec).gflops.v, "{id}: FLOPs of {spec}");
    }
    assert!(
        !run.notes.iter().any(|n| n.contains("params differ")),
        "{:?}",
        run.notes
    );
}

#[test]
fn tracks_are_told_apart_by_metadata_and_notes_stay_with_their_file() {
    let mut arena = scenario("dispatch_warm", b2s32(), 1_000_000);
    arena["memory"]["alloc_bytes"] = json!(0);
    arena["derived"]["alloc_rate_bytes_per_sec"] = json!(0.0);
    let moe_rs = file(
        json!({"language": "rust", "schema_version": 1, "isolation": "process", "matmul_kernel": "x"}),
        vec![arena],
    );
    let seed = file(
        json!({"language": "rust"}),
        vec![scenario("dispatch_warm", b2s32(), 1_300_000)],
    );
    let torch = file(
        json!({"language": "python", "torch_version": "2.15.0"}),
        vec![scenario("dispatch_warm", b2s32(), 1_800_000)],
    );
    let py = file(
        json!({"language": "python"}),
        vec![scenario("dispatch_warm", b2s32(), 3_600_000)],
    );
    assert_eq!(parse(&moe_rs).track, Track::MoeRs);
    assert_eq!(parse(&seed).track, Track::SeedRust);
    assert_eq!(parse(&torch).track, Track::PyTorch);
    assert_eq!(parse(&py).track, Track::Python);
    // The seed's Rust alone: no note about moe-rs's arena.
    let md = render_texts(&[("seed-rust.json", &seed)]).unwrap();
    assert!(!md.contains("steady state allocates nothing"), "{md}");
    let md = render_texts(&[
        ("rust.json", &moe_rs),
        ("seed-rust.json", &seed),
        ("pytorch.json", &torch),
        ("python.json", &py),
    ])
    .unwrap();
    let notes = &md[md.find("## Interpretation notes").unwrap()..];
    let (at_moe_rs, at_seed) = (
        notes.find("### moe-rs").unwrap(),
        notes.find("### seed-rust").unwrap_or(notes.len()),
    );
    assert!(at_moe_rs < at_seed);
    assert!(notes[at_moe_rs..at_seed].contains("steady state allocates nothing"));
    assert_eq!(md.matches("steady state allocates nothing").count(), 1);
    assert!(md.contains("| scenario | moe-rs | seed-rust | PyTorch (framework) | python |"));
    assert!(md.contains("(×1.30)"), "ratio to the first run");
    assert!(md.contains("framework run"));
}

#[test]
fn report_inputs_are_bounded_reads_of_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let e = Run::load(dir.path()).unwrap_err();
    assert!(
        matches!(&e, ReportError::Read(r) if matches!(r.kind, ReadErrorKind::NotRegular(_))),
        "{e}"
    );
    // A sparse file one byte over the JSON maximum: refused before reading.
    let big = dir.path().join("big.json");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(moe_bench::io::read::MAX_JSON_BYTES + 1).unwrap();
    let e = Run::load(&big).unwrap_err();
    assert!(
        matches!(&e, ReportError::Read(r) if matches!(r.kind, ReadErrorKind::TooLarge { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("big.json"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{").unwrap();
    let e = Run::load(&bad).unwrap_err();
    assert!(matches!(e, ReportError::Json { .. }) && e.to_string().contains("bad.json"));
}

#[test]
fn the_committed_peer_files_render_without_a_unit_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = Run::load(&root.join("benchmarks/peers/python.json")).unwrap();
    let rss = py.fig("dispatch_warm").peak_rss;
    assert!(rss.v.unwrap() > 10.0 * 1024.0 * 1024.0, "MiB, not KiB");
    assert_eq!(rss.flags, [Flag::Kib]);
    let go = Run::load(&root.join("benchmarks/peers/go.json")).unwrap();
    let f = go.fig("mem_train_step");
    assert_eq!(f.alloc_bytes.flags, [Flag::TotalOverTrials]);
    let per_step = f.alloc_bytes.v.unwrap() / (f.median_ns.v.unwrap() * 1e-9);
    assert!((f.alloc_rate.v.unwrap() - per_step).abs() < 1.0);
    let torch = Run::load(&root.join("benchmarks/peers/pytorch.json")).unwrap();
    assert_eq!(torch.track, Track::PyTorch);
}

#[test]
fn a_twin_speedup_is_recomputed_from_the_two_medians() {
    // `extra.speedup_vs_twin` = the twin's median / this median; a file whose
    // value disagrees (or names a twin it lacks) gets a note naming the row.
    let p = |twin: Option<&str>| {
        let mut p = json!({"batch": 2, "seq_len": 32, "hidden_dim": 64, "workload": "forward"});
        if let Some(t) = twin {
            p["twin"] = json!(t);
        }
        p
    };
    let make = |ratio: f64, twin: &str| {
        let mut s = scenario("dispatch_warm_rowmajor", p(Some(twin)), 2_000_000);
        s["extra"] = json!({ "speedup_vs_twin": ratio });
        parse(&file(
            json!({"language": "rust"}),
            vec![scenario("dispatch_warm", p(None), 1_000_000), s],
        ))
    };
    let twin_note = |run: &Run| {
        run.notes
            .iter()
            .any(|n| n.contains("extra.speedup_vs_twin") && n.contains("dispatch_warm_rowmajor"))
    };
    assert!(!twin_note(&make(0.5, "dispatch_warm")), "1 ms / 2 ms = 0.5");
    assert!(twin_note(&make(2.0, "dispatch_warm")));
    assert!(twin_note(&make(0.5, "no_such_id")));
}

#[test]
fn roofline_holds_row_kernels_against_the_flop_limit() {
    // The committed run: the expected ratio from its raw fields (the
    // harness's own `derived.gflops` of the peak loop, the 16,640 FLOPs of
    // docs/flops.md), not from the report's figures.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../benchmarks/rust.json");
    let text = std::fs::read_to_string(path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let raw = |id: &str, f: &dyn Fn(&Value) -> f64| {
        f(v["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap())
    };
    let peak = raw("machine_fma_peak", &|s| {
        s["derived"]["gflops"].as_f64().unwrap()
    });
    let median = raw("kernel_rmsnorm", &|s| s["median_ns"].as_f64().unwrap());
    let ratio = median / (16_640.0 / peak);
    let md = render_texts(&[("rust.json", &text)]).unwrap();
    let row = md
        .lines()
        .find(|l| l.starts_with("| `kernel_rmsnorm` | 16640 |"))
        .unwrap_or_else(|| panic!("no kernel_rmsnorm roofline row"));
    assert!(
        row.ends_with(&format!("| {ratio:.2}× |")),
        "{row} vs {ratio:.2}"
    );
}

#[test]
fn fma_peak_flops_follow_the_files_lanes_not_this_cpu() {
    // 12 chains × lanes × 2 FLOPs per round, from the file's `params.lanes`
    // (a 16-lane Zen 4 run read on an 8-lane machine stays a 16-lane run).
    let peak = |lanes: Option<u64>| {
        let mut p = json!({ "iters": 500_000, "chains": 12 });
        if let Some(l) = lanes {
            p["lanes"] = json!(l);
        }
        parse(&file(
            json!({"language": "rust"}),
            vec![scenario("machine_fma_peak", p, 1_000_000)],
        ))
    };
    // 500,000 rounds × 12 × 16 × 2 FLOPs in 1 ms: 192 GFLOP/s.
    assert_eq!(peak(Some(16)).gflops("machine_fma_peak"), Some(192.0));
    assert_eq!(peak(Some(8)).gflops("machine_fma_peak"), Some(96.0));
    // Files from before the 16-lane loop ran 8 lanes.
    assert_eq!(peak(None).gflops("machine_fma_peak"), Some(96.0));
    // Neither is a shape change: no params note.
    let notes = peak(Some(16)).notes;
    assert!(
        !notes.iter().any(|n| n.contains("ran with params")),
        "{notes:?}"
    );
    // A width the loop never runs: no figure, and a note naming it.
    let odd = peak(Some(12));
    assert_eq!(odd.gflops("machine_fma_peak"), None);
    assert!(
        odd.notes
            .iter()
            .any(|n| n.contains("machine_fma_peak") && n.contains("lanes 12")),
        "{:?}",
        odd.notes
    );
}
