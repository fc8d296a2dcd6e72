//! Helpers shared by the test modules.

use std::fs;
use std::path::Path;

use serde_json::Value;

/// A safetensors file as (header with its `__metadata__.run_id` removed,
/// data section bytes): what two training runs that differ only in their run
/// id (every fresh `moe train` has its own) have in common, byte for byte.
pub fn without_run_id(path: &Path) -> (Value, Vec<u8>) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    if let Some(m) = header
        .get_mut("__metadata__")
        .and_then(Value::as_object_mut)
    {
        m.remove("run_id");
    }
    (header, bytes[8 + n..].to_vec())
}

/// Rewrites the `__metadata__` of the safetensors file `path` with `f`
/// (tensors and data unchanged).
pub fn edit_metadata(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let obj = header.as_object_mut().unwrap();
    let meta = obj
        .entry("__metadata__")
        .or_insert_with(|| Value::Object(Default::default()));
    f(meta.as_object_mut().unwrap());
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    fs::write(path, out).unwrap();
}

/// A few KB of deterministic English-like text in `dir/corpus.txt`.
pub fn corpus(dir: &Path) -> std::path::PathBuf {
    let words = [
        "the",
        "model",
        "routes",
        "each",
        "token",
        "to",
        "two",
        "experts",
        "and",
        "adds",
        "their",
        "outputs",
        "weighted",
        "by",
        "router",
        "probabilities",
        "a",
        "small",
    ];
    let mut s = String::new();
    let mut x = 11u32;
    for i in 0..900 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        s.push_str(words[(x >> 16) as usize % words.len()]);
        s.push(if i % 9 == 8 { '.' } else { ' ' });
    }
    let path = dir.join("corpus.txt");
    fs::write(&path, s).unwrap();
    path
}

/// The small, fast shape of the `moe train` runs of these tests (a
/// checkpoint at every step).
pub const FAST: [&str; 8] = [
    "--batch",
    "2",
    "--seq",
    "16",
    "--eval-every",
    "1",
    "--eval-windows",
    "2",
];

/// `moe train --data DATA --out OUT --steps N FAST… EXTRA…` as a command.
pub fn train_cmd(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moe"));
    c.arg("train")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .arg("--steps")
        .arg(steps.to_string())
        .args(FAST)
        .args(extra);
    c
}

/// Runs `moe ARGS…` to completion.
pub fn moe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .output()
        .expect("run moe")
}

/// Lossy UTF-8.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
