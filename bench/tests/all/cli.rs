//! `moe train` and `moe generate` through the binary: byte tokenizer, outputs of
//! a short run, generation length, bad parameters, and bit-identical resume.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moe_bench::checkpoint::{self, MODEL_FILE};
use moe_bench::corpus::{decode, encode, to_bytes, Corpus};
use moe_bench::train::{Row, CSV_HEADER};
use moe_core::TrainConfig;
use tempfile::TempDir;

use crate::common::without_run_id;

fn moe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .output()
        .expect("run moe")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A few KB of deterministic English-like text.
fn write_corpus(dir: &Path) -> PathBuf {
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
        "corpus",
        "of",
        "plain",
        "text",
        "is",
        "enough",
        "for",
        "this",
        "test",
    ];
    let mut s = String::new();
    let mut x = 7u32;
    for i in 0..900 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        s.push_str(words[(x >> 16) as usize % words.len()]);
        s.push(if i % 11 == 10 { '.' } else { ' ' });
        if i % 11 == 10 {
            s.push(' ');
        }
    }
    let path = dir.join("corpus.txt");
    fs::write(&path, s).unwrap();
    path
}

const SMALL: [&str; 8] = [
    "--batch",
    "2",
    "--seq",
    "16",
    "--eval-every",
    "2",
    "--eval-windows",
    "4",
];

fn train(data: &Path, out: &Path, steps: u64, extra: &[&str]) -> Output {
    let steps = steps.to_string();
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        &steps,
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    let o = moe(&args);
    assert!(
        o.status.success(),
        "moe train failed:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

fn rows(dir: &Path) -> Vec<Row> {
    let csv = fs::read_to_string(dir.join("loss.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER));
    lines.map(|l| Row::from_csv(l).expect("row")).collect()
}

#[test]
fn byte_tokenizer_round_trips() {
    let s = "Plain ASCII, UTF-8 (naïve café, 日本語, emoji 🦀) and\nnewlines\t.";
    let ids = encode(s.as_bytes());
    assert_eq!(ids.len(), s.len());
    assert!(ids.iter().all(|&id| id < 256));
    assert_eq!(ids[0], u32::from(b'P'));
    assert_eq!(decode(&ids), s);
    // Any bytes survive as bytes; invalid UTF-8 and ids >= 256 decode to U+FFFD.
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(to_bytes(&encode(&bytes)), bytes);
    assert_eq!(decode(&[104, 105, 999, 0xff]), "hi\u{FFFD}\u{FFFD}");
}

#[test]
fn corpus_split_is_deterministic_and_checked() {
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 200) as u8).collect();
    let c = Corpus::split(&bytes, 0.9, 16).unwrap();
    assert_eq!(c.train.len(), 900);
    assert_eq!(c.heldout, encode(&bytes[900..]));
    let e = Corpus::split(&bytes[..100], 0.9, 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("held-out") && e.contains("--seq"), "{e}");
}

#[test]
fn train_writes_csv_plot_and_loadable_checkpoint_then_generate() {
    let tmp = TempDir::new().unwrap();
    let data = write_corpus(tmp.path());
    let out = tmp.path().join("run");
    let o = train(&data, &out, 5, &[]);
    let stdout = text(&o.stdout);
    assert!(stdout.contains("unigram baseline"), "{stdout}");
    assert!(stdout.contains("final held-out CE"), "{stdout}");

    // loss.csv: the step-0 evaluation, then one row per step; held-out CE on
    // evaluation steps (2, 4) and at the last step (5).
    let r = rows(&out);
    assert_eq!(
        r.iter().map(|r| r.step).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert!(r[0].train_ce.is_none() && r[0].heldout_ce.is_some());
    for row in &r[1..] {
        let ce = row.train_ce.unwrap();
        assert!(ce.is_finite() && ce > 0.0);
        assert!(row.lr.unwrap() > 0.0 && row.grad_norm.unwrap() > 0.0);
        assert!(row.tokens_per_sec.unwrap() > 0.0);
    }
    let evaluated: Vec<u64> = r
        .iter()
        .filter(|r| r.heldout_ce.is_some())
        .map(|r| r.step)
        .collect();
    assert_eq!(evaluated, [0, 2, 4, 5]);

    let svg = fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("held-out CE") && svg.contains("unigram baseline"));
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 5);
    assert!(summary["unigram_baseline_ce"].as_f64().unwrap() > 0.0);

    // The checkpoint loads as a model and as a training checkpoint at step 5.
    let ckpt = out.join("checkpoint");
    let model = checkpoint::load(&ckpt).expect("load model");
    assert_eq!(model.config(), &moe_core::Config::tiny());
    let trainer = checkpoint::load_training(&ckpt, TrainConfig::default(), 2, 16).unwrap();
    assert_eq!(trainer.optimizer().step(), 5);

    // Generation: the whole sequence (prompt included) has --max-len tokens.
    for strategy in ["greedy", "temperature", "top-k", "top-p"] {
        let o = moe(&[
            "generate",
            "--checkpoint",
            out.to_str().unwrap(),
            "--prompt",
            "the model",
            "--max-len",
            "40",
            "--strategy",
            strategy,
            "--seed",
            "3",
        ]);
        let err = text(&o.stderr);
        assert!(o.status.success(), "{strategy}: {err}");
        assert!(
            err.contains("40 tokens (9 prompt + 31 generated)"),
            "{strategy}: {err}"
        );
        let s = text(&o.stdout);
        assert!(s.starts_with("the model"), "{s}");
        // 40 bytes decode to at most 40 characters (+ the final newline).
        assert!(s.trim_end_matches('\n').chars().count() <= 40, "{s}");
        // Same seed, same text.
        let again = moe(&[
            "generate",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--prompt",
            "the model",
            "--max-len",
            "40",
            "--strategy",
            strategy,
            "--seed",
            "3",
        ]);
        assert_eq!(again.stdout, o.stdout, "{strategy}");
    }
}

/// Runs `moe generate` with `extra` and expects a failure naming `flag`.
fn generate_fails(ckpt: &Path, extra: &[&str], flag: &str) {
    let mut args = vec!["generate", "--checkpoint", ckpt.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = moe(&args);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "{extra:?} should fail");
    assert!(
        err.contains(flag),
        "{extra:?}: `{err}` does not name {flag}"
    );
    assert!(o.stdout.is_empty(), "{extra:?} printed text");
}

#[test]
fn bad_parameters_exit_non_zero_naming_the_parameter() {
    let tmp = TempDir::new().unwrap();
    let ckpt = tmp.path().join("ckpt");
    checkpoint::save(
        &ckpt,
        &moe_core::MoETransformer::new(&moe_core::Config::tiny(), 1).unwrap(),
    )
    .unwrap();
    let p = ["--prompt", "hello"];
    let cases: [(&[&str], &str); 9] = [
        (&["--strategy", "top-p", "--p", "1.5"], "--p"),
        (&["--strategy", "top-p", "--p", "0"], "--p"),
        (&["--max-len", "10000"], "--max-len"),
        (&["--max-len", "3"], "--max-len"),
        (
            &["--strategy", "temperature", "--temperature", "0"],
            "--temperature",
        ),
        (
            &["--strategy", "top-k", "--temperature", "-1"],
            "--temperature",
        ),
        (&["--strategy", "top-k", "--k", "0"], "--k"),
        (
            &["--strategy", "top-p", "--temperature", "nan"],
            "--temperature",
        ),
        (&["--strategy", "top-p", "--p", "-0.5"], "--p"),
    ];
    for (extra, flag) in cases {
        let mut args = p.to_vec();
        args.extend_from_slice(extra);
        generate_fails(&ckpt, &args, flag);
    }
    generate_fails(&ckpt, &["--prompt", ""], "--prompt");
    generate_fails(&tmp.path().join("missing"), &p, "--checkpoint");

    let data = write_corpus(tmp.path());
    let d = data.to_str().unwrap();
    let out = tmp.path().join("run");
    let o_ = out.to_str().unwrap();
    let train_cases: [(&[&str], &str); 6] = [
        (&["--steps", "0"], "--steps"),
        (&["--steps", "2", "--seq", "0"], "--seq"),
        (&["--steps", "2", "--seq", "513"], "--seq"),
        (&["--steps", "2", "--lr", "-1"], "--lr"),
        (&["--steps", "2", "--warmup", "3"], "--warmup"),
        (&["--steps", "2", "--seq", "2000"], "--seq"),
    ];
    for (extra, flag) in train_cases {
        let mut args = vec!["train", "--data", d, "--out", o_];
        args.extend_from_slice(extra);
        let o = moe(&args);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(
            err.contains(flag),
            "{extra:?}: `{err}` does not name {flag}"
        );
    }
    let o = moe(&[
        "train",
        "--data",
        "/nonexistent/corpus.txt",
        "--steps",
        "1",
        "--out",
        o_,
    ]);
    assert!(!o.status.success() && text(&o.stderr).contains("--data"));
}

#[test]
fn resume_continues_bit_identically() {
    // A constant learning rate (no warmup, min-lr = lr) makes the schedule
    // independent of --steps, so "4 steps, then resume to 8" must equal "8 steps".
    let constant = ["--warmup", "0", "--lr", "0.002", "--min-lr", "0.002"];
    let tmp = TempDir::new().unwrap();
    let data = write_corpus(tmp.path());
    let straight = tmp.path().join("straight");
    let resumed = tmp.path().join("resumed");
    train(&data, &straight, 8, &constant);
    train(&data, &resumed, 4, &constant);
    let mut args = constant.to_vec();
    let dir = resumed.to_str().unwrap().to_owned();
    args.extend_from_slice(&["--resume", &dir]);
    let o = train(&data, &resumed, 8, &args);
    assert!(
        text(&o.stdout).contains("resumed at step 4"),
        "{}",
        text(&o.stdout)
    );

    // Every fresh run has its own run id (in the metadata): the rest of the
    // file is compared byte for byte.
    let a = without_run_id(&straight.join("checkpoint").join(MODEL_FILE));
    let b = without_run_id(&resumed.join("checkpoint").join(MODEL_FILE));
    assert!(a == b, "resumed weights differ from the uninterrupted run");
    let strip = |r: Vec<Row>| -> Vec<Row> {
        r.into_iter()
            .map(|r| Row {
                tokens_per_sec: None,
                ..r
            })
            .collect()
    };
    let (ra, rb) = (strip(rows(&straight)), strip(rows(&resumed)));
    assert_eq!(ra.len(), 9);
    assert_eq!(ra, rb);

    // Resuming on other data is refused.
    let other = tmp.path().join("other.txt");
    fs::write(&other, fs::read_to_string(&data).unwrap().to_uppercase()).unwrap();
    let o = moe(&[
        "train",
        "--data",
        other.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
        "--steps",
        "9",
        "--resume",
        &dir,
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--resume"), "{}", text(&o.stderr));
}
