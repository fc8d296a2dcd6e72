//! `config.json` text → `moe_bench::checkpoint::parse_config`.
//!
//! Input: the file's bytes (non-UTF-8 inputs are skipped: `read_config` reads
//! a `String`). Oracle: never a panic; whatever parses is a valid `Config`
//! that survives `config_json` → `parse_config` unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use moe_bench::checkpoint::{config_json, parse_config, SaveOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("config.json");
    let Ok(parsed) = parse_config(text, path) else {
        return;
    };
    let cfg = parsed.config;
    assert!(
        cfg.validate().is_ok(),
        "parse_config returned an invalid {cfg:?}"
    );
    let written = config_json(&cfg, &SaveOptions::default());
    match parse_config(&written, path) {
        Ok(back) => assert_eq!(back.config, cfg, "round trip changed the config"),
        Err(e) => panic!("round trip of {cfg:?} failed: {e}\n{written}"),
    }
});
