//! Issue 15 — checkpoints as the Hugging Face ecosystem writes them: bf16 and
//! f16 sharded checkpoints *written by transformers* (`save_pretrained(...,
//! max_shard_size=...)`, GQA 4/2, head_dim ≠ hidden/heads, `sliding_window` 4
//! < t = 12, targets with -100) against transformers' golden logits, losses
//! and every gradient (tests/golden/make_interop.py); sharded-index errors;
//! `moe export` round trips; the Python-made tokenizer.json in Rust.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use moe_bench::checkpoint::{self, CheckpointErrorKind, ExportOptions, StoreDtype, INDEX_FILE};
use moe_bench::grads::{compute, read_tokens};
use moe_bench::io::tokenizer::Tokenizer;
use moe_core::{KvCache, MoETransformer, Mode};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::common::{moe, text};

const ABS_TOL: f32 = 1e-5;
const REL_TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/interop")
        .join(name)
}

fn golden(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = fs::read(dir.join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype(), Dtype::F32, "{n}");
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (n.to_owned(), v)
        })
        .collect()
}

/// Largest `|a − b| − (abs + rel·|b|)`; ≤ 0 means within tolerance.
fn worst(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut w = f32::NEG_INFINITY;
    for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
        let excess = (g - e).abs() - (ABS_TOL + REL_TOL * e.abs());
        assert!(excess <= 0.0, "{what}[{i}]: got {g}, transformers {e}");
        w = w.max(excess);
    }
    w
}

fn check_against_transformers(name: &str) {
    let dir = fixture(name);
    let model = checkpoint::load(&dir).unwrap();
    let cfg = *model.config();
    assert_eq!(
        cfg.sliding_window,
        Some(4),
        "{name}: window read from config.json"
    );
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (4, 2, 12)
    );
    let tokens = read_tokens(&dir.join("tokens.json"), &model).unwrap();
    assert_eq!((tokens.batch, tokens.seq), (2, 12));
    assert_eq!(
        tokens
            .targets
            .iter()
            .filter(|&&t| t == moe_core::IGNORE_INDEX)
            .count(),
        5,
        "-100 targets mapped to IGNORE_INDEX"
    );
    let out = compute(&model, &tokens).unwrap();
    let g = golden(&dir);
    worst("logits", &out.logits, &g["logits"]);
    worst("loss", &[out.losses.loss], &g["loss"]);
    worst("ce_loss", &[out.losses.ce], &g["ce_loss"]);
    worst("aux_loss", &[out.losses.aux], &g["aux_loss"]);
    let mut n = 0;
    for t in model.layout().tensors() {
        let want = &g[&format!("{}.grad", t.name)];
        assert!(
            want.iter().any(|&x| x != 0.0),
            "{}: zero golden gradient",
            t.name
        );
        worst(&t.name, &out.grads[t.range()], want);
        n += 1;
    }
    assert_eq!(n + 4, g.len(), "every golden gradient compared");

    // Without the window the logits differ: the test really exercises it.
    let mut full = cfg;
    full.sliding_window = None;
    let m2 = MoETransformer::from_params(&full, model.params().unwrap().to_vec()).unwrap();
    let mut ws = m2.workspace(2, 12, Mode::Inference).unwrap();
    let l2 = m2.forward(&mut ws, &tokens.input_ids, 2, 12).unwrap();
    let d = l2
        .iter()
        .zip(&g["logits"])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d > 1e-2, "window has no effect ({d})");

    // The KV-cache path applies the same window (the cache keeps every
    // position; only the mask matters): token-by-token logits = batch logits.
    let mut ws = model.workspace(1, 12, Mode::Inference).unwrap();
    let mut cache = KvCache::new(&cfg, 12).unwrap();
    let v = cfg.vocab_size;
    for (i, &tok) in tokens.input_ids[..12].iter().enumerate() {
        let step = model.forward_cached(&mut ws, &[tok], &mut cache).unwrap();
        worst("cached logits", step, &g["logits"][i * v..(i + 1) * v]);
    }
}

#[test]
fn bf16_sharded_checkpoint_from_transformers_matches_its_gradients() {
    check_against_transformers("bf16");
}

#[test]
fn f16_sharded_checkpoint_from_transformers_matches_its_gradients() {
    check_against_transformers("f16");
}

/// A copy of the bf16 fixture's checkpoint files in a temporary directory.
fn copy_fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("ckpt");
    fs::create_dir(&d).unwrap();
    for e in fs::read_dir(fixture("bf16")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    (tmp, d)
}

fn edit_index(d: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = d.join(INDEX_FILE);
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    f(v["weight_map"].as_object_mut().unwrap());
    fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn sharded_index_errors_are_typed_and_name_the_file() {
    const SHARD1: &str = "model-00001-of-00002.safetensors";
    const SHARD2: &str = "model-00002-of-00002.safetensors";
    // A missing shard.
    let (_t, d) = copy_fixture();
    fs::remove_file(d.join(SHARD2)).unwrap();
    let e = checkpoint::load(&d).unwrap_err();
    assert!(matches!(e.kind, CheckpointErrorKind::Io { .. }), "{e}");
    assert!(e.to_string().contains(SHARD2), "{e}");

    // The index names a tensor in a shard that does not hold it.
    let (_t, d) = copy_fixture();
    let mut moved = String::new();
    edit_index(&d, |m| {
        let (k, _) = m.iter().find(|(_, v)| v.as_str() == Some(SHARD1)).unwrap();
        moved = k.clone();
        m.insert(moved.clone(), SHARD2.into());
    });
    let e = checkpoint::load(&d).unwrap_err();
    assert!(
        matches!(e.kind, CheckpointErrorKind::IndexMismatch { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains(&moved) && e.to_string().contains(INDEX_FILE),
        "{e}"
    );

    // The index names a tensor no shard has.
    let (_t, d) = copy_fixture();
    edit_index(&d, |m| {
        m.insert("model.layers.9.bogus.weight".into(), SHARD1.into());
    });
    let e = checkpoint::load(&d).unwrap_err();
    assert!(
        e.to_string().contains("model.layers.9.bogus.weight")
            && e.to_string().contains("does not hold it"),
        "{e}"
    );

    // A shard holds a tensor the index does not name.
    let (_t, d) = copy_fixture();
    let mut dropped = String::new();
    edit_index(&d, |m| {
        dropped = m.keys().next().unwrap().clone();
        m.remove(&dropped);
    });
    let e = checkpoint::load(&d).unwrap_err();
    assert!(
        matches!(e.kind, CheckpointErrorKind::IndexMismatch { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("not named by"), "{e}");

    // A shard name that escapes the directory.
    let (_t, d) = copy_fixture();
    edit_index(&d, |m| {
        let k = m.keys().next().unwrap().clone();
        m.insert(k, "../model.safetensors".into());
    });
    let e = checkpoint::load(&d).unwrap_err();
    assert!(
        matches!(e.kind, CheckpointErrorKind::InvalidField { .. }),
        "{e}"
    );

    // A tensor stored in two shards.
    let (_t, d) = copy_fixture();
    let model = checkpoint::load(&d).unwrap();
    let out = d.join("x");
    let opts = ExportOptions {
        max_shard_bytes: Some(20_000),
        ..ExportOptions::default()
    };
    checkpoint::export(&out, &model, &opts).unwrap();
    let names: Vec<String> = {
        let v: Value =
            serde_json::from_str(&fs::read_to_string(out.join(INDEX_FILE)).unwrap()).unwrap();
        let mut shards: Vec<String> = v["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        shards.sort();
        shards.dedup();
        shards
    };
    assert!(names.len() >= 3, "{names:?}");
    // Put shard 1's content also into the last shard's place.
    fs::copy(out.join(&names[0]), out.join(names.last().unwrap())).unwrap();
    let e = checkpoint::load(&out).unwrap_err();
    assert!(
        matches!(e.kind, CheckpointErrorKind::DuplicateTensor { .. }),
        "{e}"
    );

    // A FIFO as a shard is refused at once (no hang).
    let (_t, d) = copy_fixture();
    fs::remove_file(d.join(SHARD2)).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(d.join(SHARD2))
        .status()
        .unwrap();
    assert!(st.success());
    let e = checkpoint::load(&d).unwrap_err();
    assert!(e.to_string().contains("FIFO"), "{e}");
}

#[test]
fn export_bf16_sharded_round_trips_and_replaces_atomically() {
    let (_t, d) = copy_fixture();
    let model = checkpoint::load(&d).unwrap();
    // The fixture's weights are bf16 values: bf16 export → load is exact.
    let out = d.parent().unwrap().join("hf");
    let opts = ExportOptions {
        dtype: StoreDtype::BF16,
        max_shard_bytes: Some(30_000),
        ..ExportOptions::default()
    };
    checkpoint::export(&out, &model, &opts).unwrap();
    let cfg: Value =
        serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "bfloat16");
    assert_eq!(cfg["sliding_window"], 4);
    assert!(out.join(INDEX_FILE).is_file());
    let back = checkpoint::load(&out).unwrap();
    assert_eq!(back.params().unwrap(), model.params().unwrap());
    assert_eq!(back.config(), model.config());
    // Re-export over it as one f32 file: the old shards are gone, no temporaries left.
    checkpoint::export(&out, &model, &ExportOptions::default()).unwrap();
    let mut files: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["config.json", "model.safetensors"]);
    let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        checkpoint::load(&out).unwrap().params().unwrap(),
        model.params().unwrap()
    );

    // bf16 rounding of non-bf16 values is round-to-nearest-even.
    let mut p = model.params().unwrap().to_vec();
    p[0] = f32::from_bits(0x3F80_8000); // exactly halfway between two bf16: ties to even (down)
    p[1] = f32::from_bits(0x3F81_8000); // halfway, odd below: rounds up
    let m = MoETransformer::from_params(model.config(), p).unwrap();
    checkpoint::export(&out, &m, &opts).unwrap();
    let b = checkpoint::load(&out).unwrap();
    assert_eq!(b.params().unwrap()[0].to_bits(), 0x3F80_0000);
    assert_eq!(b.params().unwrap()[1].to_bits(), 0x3F82_0000);

    // f16 refuses a value it would turn into infinity.
    let mut p = model.params().unwrap().to_vec();
    p[3] = 1e6;
    let m = MoETransformer::from_params(model.config(), p).unwrap();
    let f16 = ExportOptions {
        dtype: StoreDtype::F16,
        ..ExportOptions::default()
    };
    let e = checkpoint::export(d.parent().unwrap().join("f16"), &m, &f16).unwrap_err();
    assert!(
        matches!(e.kind, CheckpointErrorKind::NonFinite { index: 3, .. }),
        "{e}"
    );
}

#[test]
fn moe_export_cli_writes_shards() {
    let (_t, d) = copy_fixture();
    let out = d.parent().unwrap().join("cli");
    let o = moe(&[
        "export",
        "--checkpoint",
        d.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--max-shard-size",
        "40KB",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.join(INDEX_FILE).is_file());
    assert_eq!(
        checkpoint::load(&out).unwrap().params().unwrap(),
        checkpoint::load(&d).unwrap().params().unwrap()
    );
    let o = moe(&[
        "export",
        "--checkpoint",
        d.to_str().unwrap(),
        "--out",
        "x",
        "--max-shard-size",
        "lots",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--max-shard-size"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn tokens_json_ignore_index_rules() {
    let model = checkpoint::load(fixture("bf16")).unwrap();
    let v = model.config().vocab_size;
    let parse = |s: &str| moe_bench::grads::parse_tokens(s, v, 64);
    // -100 in input_ids is not a token.
    let e = parse(r#"{"input_ids": [[1, -100]], "targets": [[1, 2]]}"#).unwrap_err();
    assert!(e.to_string().contains("input_ids[0][1]"), "{e}");
    // Any other negative target is refused.
    let e = parse(r#"{"input_ids": [[1, 2]], "targets": [[1, -1]]}"#).unwrap_err();
    assert!(e.to_string().contains("or -100"), "{e}");
    // All ignored: typed error.
    let e = parse(r#"{"input_ids": [[1, 2]], "targets": [[-100, -100]]}"#).unwrap_err();
    assert!(
        e.to_string().contains("every entry of `targets` is -100"),
        "{e}"
    );
    // The core refuses IGNORE_INDEX as an input token and an all-ignored batch.
    let mut ws = model.workspace(1, 2, Mode::Training).unwrap();
    let mut g = vec![0.0; model.layout().total];
    let ig = moe_core::IGNORE_INDEX;
    let e = model
        .loss_and_grad(&mut ws, &mut g, &[1, ig], &[1, 2], 1, 2, 0.01, None)
        .unwrap_err();
    assert!(
        matches!(e, moe_core::Error::TokenOutOfRange { arg: "tokens", .. }),
        "{e}"
    );
    let e = model
        .loss_and_grad(&mut ws, &mut g, &[1, 2], &[ig, ig], 1, 2, 0.01, None)
        .unwrap_err();
    assert!(matches!(e, moe_core::Error::EmptyInput { .. }), "{e}");
    // An ignored position adds nothing: CE over [t0] alone = CE with t1 ignored.
    let a = model
        .loss_and_grad(&mut ws, &mut g, &[1, 2], &[5, ig], 1, 2, 0.0, None)
        .unwrap();
    let mut ws1 = model.workspace(1, 1, Mode::Training).unwrap();
    let mut g1 = vec![0.0; model.layout().total];
    let b = model
        .loss_and_grad(&mut ws1, &mut g1, &[1], &[5], 1, 1, 0.0, None)
        .unwrap();
    assert!((a.ce - b.ce).abs() < 1e-6, "{} vs {}", a.ce, b.ce);
}

#[test]
fn python_tokenizer_json_encodes_like_python_and_round_trips() {
    let d = fixture("tokenizer");
    let ids: Value =
        serde_json::from_str(&fs::read_to_string(d.join("ids.json")).unwrap()).unwrap();
    let tok = Tokenizer::load(&d.join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size() as u64, ids["vocab_size"].as_u64().unwrap());
    let text_in = ids["text"].as_str().unwrap();
    let want: Vec<u32> = ids["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let got = tok.encode(text_in).unwrap();
    assert_eq!(got, want, "Rust tokenizers vs Python tokenizers");
    assert!(got.len() < text_in.len(), "merges are used");
    assert_eq!(tok.decode(&got).unwrap(), text_in);
    // Not a tokenizer: typed error naming the file.
    let e = Tokenizer::load(&d.join("ids.json")).unwrap_err();
    assert!(e.to_string().contains("ids.json"), "{e}");
}

#[test]
fn train_init_from_transformers_checkpoint_with_python_tokenizer_learns() {
    // init300: written by transformers' save_pretrained (vocab 300 = the
    // fixture tokenizer's); fine-tune it on a small corpus with that tokenizer.
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::common::corpus(tmp.path());
    let out = tmp.path().join("run");
    let tok = fixture("tokenizer").join("tokenizer.json");
    let o = crate::common::train_cmd(&data, &out, 30, &["--lr", "1e-2"])
        .arg("--init")
        .arg(fixture("init300"))
        .arg("--tokenizer")
        .arg(&tok)
        .output()
        .unwrap();
    let so = text(&o.stdout);
    assert!(o.status.success(), "{so}{}", text(&o.stderr));
    assert!(so.contains("fresh AdamW"), "{so}");
    let summary: Value =
        serde_json::from_str(&fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let csv = fs::read_to_string(out.join("loss.csv")).unwrap();
    let first: f64 = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(4)
        .unwrap()
        .parse()
        .unwrap();
    let last = summary["final_heldout_ce"].as_f64().unwrap();
    assert!(last < first - 0.3, "held-out CE {first} -> {last}");
    assert_eq!(summary["ce_unit"], "nats/token");
    assert!(summary["final_heldout_ce_per_byte"].as_f64().unwrap() < last);

    // Bytes into a 64-token model: typed error naming --data, before training.
    let o = crate::common::train_cmd(&data, &tmp.path().join("r2"), 1, &[])
        .arg("--init")
        .arg(fixture("bf16"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--data") && text(&o.stderr).contains("vocab_size = 64"),
        "{}",
        text(&o.stderr)
    );
    // A tokenizer larger than the model's vocabulary.
    let o = crate::common::train_cmd(&data, &tmp.path().join("r3"), 1, &[])
        .arg("--init")
        .arg(fixture("bf16"))
        .arg("--tokenizer")
        .arg(&tok)
        .output()
        .unwrap();
    assert!(
        text(&o.stderr).contains("--init") && text(&o.stderr).contains("300 tokens"),
        "{}",
        text(&o.stderr)
    );

    // generate: --prompt-ids / --print-ids, the trained length as default and warning.
    let ck = out.to_str().unwrap();
    let o = moe(&[
        "generate",
        "--checkpoint",
        ck,
        "--prompt-ids",
        "5,6,7",
        "--print-ids",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ids: Vec<u32> = text(&o.stdout)
        .trim()
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 16, "default --max-len = the trained --seq 16");
    assert_eq!(&ids[..3], &[5, 6, 7]);
    assert!(ids.iter().all(|&i| i < 300));
    // An id beyond the model's vocabulary names the flag, the id and its position.
    let o = moe(&["generate", "--checkpoint", ck, "--prompt-ids", "5,300,7"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--prompt-ids")
            && text(&o.stderr).contains("id 300 (position 1)")
            && text(&o.stderr).contains("vocab_size = 300"),
        "{}",
        text(&o.stderr)
    );
    let o = moe(&[
        "generate",
        "--checkpoint",
        ck,
        "--prompt",
        "the model",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--max-len",
        "20",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("the model"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("exceeds the --seq 16"),
        "{}",
        text(&o.stderr)
    );
    // grads accepts the --out directory too.
    let tj = tmp.path().join("t.json");
    fs::write(
        &tj,
        r#"{"input_ids": [[1, 2, 3]], "targets": [[2, -100, 4]]}"#,
    )
    .unwrap();
    let r = tmp.path().join("g.safetensors");
    let o = moe(&[
        "grads",
        "--checkpoint",
        ck,
        "--tokens",
        tj.to_str().unwrap(),
        "--out",
        r.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn moe_tokenizer_train_writes_a_loadable_byte_level_bpe() {
    let tmp = tempfile::tempdir().unwrap();
    let data = crate::common::corpus(tmp.path());
    let out = tmp.path().join("tok.json");
    let o = moe(&[
        "tokenizer",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let tok = Tokenizer::load(&out).unwrap();
    assert!(
        tok.vocab_size() > 256 && tok.vocab_size() <= 300,
        "{}",
        tok.vocab_size()
    );
    let s = "the router routes each token: ünïcode too\n";
    let ids = tok.encode(s).unwrap();
    assert!(ids.len() < s.len());
    assert_eq!(tok.decode(&ids).unwrap(), s);
    let o = moe(&[
        "tokenizer",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--vocab-size",
        "10",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        text(&o.stderr).contains("--vocab-size"),
        "{}",
        text(&o.stderr)
    );
    let o = moe(&[
        "tokenizer",
        "train",
        "--data",
        "/dev/zero",
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        text(&o.stderr).contains("not a regular file"),
        "{}",
        text(&o.stderr)
    );
}
