//! Result-file text → `moe_bench::report::render_texts` (the checks and the
//! Markdown of `moe report`, without writing files).
//!
//! Input: the bytes of one benchmark result file (non-UTF-8 inputs are
//! skipped: `moe report` reads UTF-8 text); it is rendered alone and next to
//! a fixed valid file (so cross-run ratios and the baseline are exercised).
//! Oracle: never a panic; a file that is accepted yields a report with every
//! section, and a rejected one an error that names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_bench::report::render_texts;

/// A small valid moe-rs-style file, the fixed second run.
const BASE: &str = r#"{"metadata":{"language":"go","n_trials":10},"scenarios":[
 {"id":"dispatch_warm","params":{"batch":2,"seq_len":32,"hidden_dim":64},"trial_runs":10,
  "median_ns":2000000,"cpu_median_ns":2000000,"memory":{"peak_rss_bytes":30000000,"alloc_bytes":1000},
  "gc":{"total_gc_time_ns":1000,"gc_pause_count":1},"numerical":{"nan_count":0,"inf_count":0,"max_abs":2.5},
  "derived":{"alloc_rate_bytes_per_sec":500000.0,"gc_throughput":0.99995}}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match render_texts(&[("fuzz.json", text)]) {
        Ok(md) => {
            assert!(md.contains("## Memory and GC"), "{md}");
            let both = render_texts(&[("fuzz.json", text), ("base.json", BASE)])
                .expect("an accepted file is accepted next to another");
            assert!(both.contains("## Cross-language summary"));
        }
        Err(e) => assert!(e.to_string().contains("fuzz.json"), "{e}"),
    }
});
