//! Checkpoint I/O: round trips, bit-identical resume, typed errors for every
//! kind of corrupt file, and atomic saves.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use moe_bench::checkpoint::{
    self, config_json, load, load_training, load_training_with_extra, parse_config, read_config,
    save, save_training, save_with, write_atomic, CheckpointError, CheckpointErrorKind,
    SaveOptions, CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE,
};
use moe_core::{Config, LrSchedule, MoETransformer, Mode, StepStats, TrainConfig, Trainer};
use safetensors::SafeTensors;
use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn tiny_model(seed: u64) -> MoETransformer {
    MoETransformer::new(&Config::tiny(), seed).expect("tiny model")
}

fn saved(seed: u64) -> (TempDir, MoETransformer) {
    let dir = TempDir::new().unwrap();
    let model = tiny_model(seed);
    save(dir.path(), &model).expect("save");
    (dir, model)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn tokens(step: usize, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 131 + step * 71 + 7) % vocab) as u32)
        .collect()
}

/// One raw safetensors entry: name, dtype string, shape, bytes.
type Raw = (String, String, Vec<usize>, Vec<u8>);

/// The tensors of a safetensors file, in file order.
fn read_raw(path: &Path) -> Vec<Raw> {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(usize, Raw)> = st
        .iter()
        .map(|(n, t)| {
            (
                t.data().as_ptr() as usize,
                (
                    n.to_owned(),
                    format!("{:?}", t.dtype()),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                ),
            )
        })
        .collect();
    v.sort_by_key(|e| e.0);
    v.into_iter().map(|e| e.1).collect()
}

/// Writes a safetensors file with arbitrary dtypes, in the given order.
fn write_raw(path: &Path, tensors: &[Raw]) {
    let mut parts = vec![r#""__metadata__":{"format":"pt"}"#.to_owned()];
    let mut off = 0usize;
    for (name, dtype, shape, data) in tensors {
        parts.push(format!(
            r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{off},{}]}}"#,
            off + data.len()
        ));
        off += data.len();
    }
    let mut header = format!("{{{}}}", parts.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    for t in tensors {
        out.extend(&t.3);
    }
    fs::write(path, out).unwrap();
}

fn edit_model(dir: &Path, f: impl FnOnce(&mut Vec<Raw>)) {
    let path = dir.join(MODEL_FILE);
    let mut raw = read_raw(&path);
    f(&mut raw);
    write_raw(&path, &raw);
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join(CONFIG_FILE);
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn find<'a>(raw: &'a mut [Raw], name: &str) -> &'a mut Raw {
    raw.iter_mut().find(|t| t.0 == name).unwrap()
}

fn load_err(dir: &Path) -> CheckpointError {
    match load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

#[test]
fn save_load_forward_bit_identical() {
    let (dir, model) = saved(7);
    let back = load(dir.path()).unwrap();
    assert_eq!(back.config(), model.config());
    assert_eq!(bits(back.params().unwrap()), bits(model.params().unwrap()));
    let (b, t) = (2, 8);
    let toks = tokens(0, b * t, model.config().vocab_size);
    let mut ws1 = model.workspace(b, t, Mode::Inference).unwrap();
    let mut ws2 = back.workspace(b, t, Mode::Inference).unwrap();
    let l1 = model.forward(&mut ws1, &toks, b, t).unwrap().to_vec();
    let l2 = back.forward(&mut ws2, &toks, b, t).unwrap();
    assert_eq!(bits(&l1), bits(l2));
    // Only the two files, no temporaries left behind.
    let files: Vec<String> = snapshot(dir.path()).into_keys().collect();
    assert_eq!(files, vec![CONFIG_FILE.to_owned(), MODEL_FILE.to_owned()]);
}

#[test]
fn config_json_has_the_hf_mixtral_fields() {
    let (dir, _) = saved(1);
    let v: Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(
        v["architectures"],
        serde_json::json!(["MixtralForCausalLM"])
    );
    assert_eq!(v["model_type"], "mixtral");
    for (k, x) in [
        ("vocab_size", 1000),
        ("hidden_size", 64),
        ("intermediate_size", 256),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 1),
        ("head_dim", 16),
        ("num_local_experts", 4),
        ("num_experts_per_tok", 2),
        ("max_position_embeddings", 512),
    ] {
        assert_eq!(v[k], x, "{k}");
    }
    assert_eq!(v["rope_theta"].as_f64(), Some(10000.0));
    assert_eq!(v["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(v["router_aux_loss_coef"].as_f64(), Some(0.01));
    assert_eq!(v["tie_word_embeddings"], false);
    assert_eq!(v["torch_dtype"], "float32");
    assert_eq!(v["moe_rs"]["format_version"], 1);
    assert_eq!(v["moe_rs"]["rope_base"].as_f64(), Some(10000.0));
    assert_eq!(v["moe_rs"]["rope_alpha"].as_f64(), Some(1.0));

    // A given coefficient is written.
    let d2 = TempDir::new().unwrap();
    let opts = SaveOptions {
        router_aux_loss_coef: 10.0,
    };
    save_with(d2.path(), &tiny_model(1), &opts).unwrap();
    assert_eq!(
        read_config(d2.path()).unwrap().router_aux_loss_coef,
        Some(10.0)
    );
}

#[test]
fn config_round_trips_for_every_profile_including_ntk_rope() {
    for cfg in [Config::tiny(), Config::scale_256(), Config::full()] {
        let text = config_json(&cfg, &SaveOptions::default());
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["rope_theta"].as_f64().unwrap() as f32, cfg.rope_theta());
        let back = parse_config(&text, Path::new("config.json")).unwrap();
        assert_eq!(back.config, cfg);
        assert_eq!(back.format_version, Some(1));
    }
    // full(): alpha 8 → base' = 10000 · 8^(64/62), written explicitly.
    let full = Config::full();
    assert!(full.rope_theta() > 10000.0 * 8.0);
}

#[test]
fn model_file_is_deterministic_and_in_layout_order() {
    let (d1, model) = saved(3);
    let d2 = TempDir::new().unwrap();
    save(d2.path(), &model).unwrap();
    assert_eq!(snapshot(d1.path()), snapshot(d2.path()));

    let raw = read_raw(&d1.path().join(MODEL_FILE));
    let names: Vec<&str> = raw.iter().map(|t| t.0.as_str()).collect();
    let layout: Vec<&str> = model
        .layout()
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, layout);
    for (r, t) in raw.iter().zip(model.layout().tensors()) {
        assert_eq!(r.1, "F32");
        assert_eq!(r.2, t.shape);
    }
    // The data section is the flat buffer, little-endian.
    let data: Vec<u8> = raw.iter().flat_map(|t| t.3.iter().copied()).collect();
    let flat: Vec<u8> = model
        .params()
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(data, flat);
}

#[test]
fn loads_hf_style_config() {
    // As `save_pretrained` writes it: `rope_parameters`, `dtype`, no `moe_rs`.
    let (dir, model) = saved(4);
    edit_config(dir.path(), |c| {
        c.remove("rope_theta");
        c.remove("torch_dtype");
        c.remove("moe_rs");
        c.insert("dtype".into(), "float32".into());
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 10000.0, "rope_type": "default"}),
        );
    });
    let back = load(dir.path()).unwrap();
    assert_eq!(back.config(), model.config());
    assert_eq!(read_config(dir.path()).unwrap().format_version, None);

    // head_dim absent: hidden_size / num_attention_heads, as transformers does.
    edit_config(dir.path(), |c| {
        c.remove("head_dim");
    });
    assert_eq!(load(dir.path()).unwrap().config(), model.config());
}

#[test]
#[ignore = "needs /tmp/golden_ckpt from `make_golden.py --checkpoint-out /tmp/golden_ckpt`"]
fn loads_golden_generator_checkpoint() {
    let dir = PathBuf::from("/tmp/golden_ckpt");
    let model = load(&dir).unwrap();
    assert_eq!(model.config(), &Config::tiny());
    // Element 0 of t=0 and t=40 (tests/golden/README.md).
    assert_eq!(model.params().unwrap()[0].to_bits(), 0x3E6C_CA58);
    assert_eq!(
        model.params().unwrap()[model.layout().lm_head.start].to_bits(),
        0x3DF4_3100
    );
}

// ---------------------------------------------------------------------------------------
// Training checkpoints
// ---------------------------------------------------------------------------------------

fn train_config() -> TrainConfig {
    TrainConfig {
        schedule: LrSchedule {
            lr: 3e-3,
            min_lr: 3e-4,
            warmup: 2,
            total: 6,
        },
        ..TrainConfig::default()
    }
}

fn steps(tr: &mut Trainer, range: std::ops::Range<usize>) -> Vec<StepStats> {
    let (b, t) = (2, 8);
    let v = tr.model().config().vocab_size;
    range
        .map(|s| {
            let x = tokens(s, b * t, v);
            let y = tokens(s + 100, b * t, v);
            tr.train_step(&x, &y, b, t).unwrap()
        })
        .collect()
}

fn stat_bits(s: &StepStats) -> [u64; 6] {
    [
        s.loss.to_bits() as u64,
        s.ce_loss.to_bits() as u64,
        s.aux_loss.to_bits() as u64,
        s.grad_norm.to_bits() as u64,
        s.lr.to_bits() as u64,
        s.step,
    ]
}

#[test]
fn resume_is_bit_identical() {
    let model = tiny_model(11);
    let tc = train_config();

    let mut straight = Trainer::new(model.clone(), tc, 2, 8).unwrap();
    let all = steps(&mut straight, 0..6);

    let mut first = Trainer::new(model, tc, 2, 8).unwrap();
    let before = steps(&mut first, 0..3);
    let dir = TempDir::new().unwrap();
    let mut extra = BTreeMap::new();
    extra.insert("data_cursor".to_owned(), "48".to_owned());
    save_training(dir.path(), &first, &extra).unwrap();

    // The state reads back exactly.
    let (resumed, extra_back) = load_training_with_extra(dir.path(), tc, 2, 8).unwrap();
    assert_eq!(extra_back, extra);
    assert_eq!(resumed.optimizer().step(), 3);
    assert_eq!(bits(resumed.optimizer().m()), bits(first.optimizer().m()));
    assert_eq!(bits(resumed.optimizer().v()), bits(first.optimizer().v()));
    assert_eq!(
        bits(resumed.model().params().unwrap()),
        bits(first.model().params().unwrap())
    );
    drop((first, resumed));

    let mut resumed = load_training(dir.path(), tc, 2, 8).unwrap();
    let after = steps(&mut resumed, 3..6);
    let joined: Vec<[u64; 6]> = before.iter().chain(&after).map(stat_bits).collect();
    let expected: Vec<[u64; 6]> = all.iter().map(stat_bits).collect();
    assert_eq!(joined, expected);
    assert_eq!(
        bits(resumed.model().params().unwrap()),
        bits(straight.model().params().unwrap())
    );
    assert_eq!(
        bits(resumed.optimizer().m()),
        bits(straight.optimizer().m())
    );
    assert_eq!(
        bits(resumed.optimizer().v()),
        bits(straight.optimizer().v())
    );
    assert_eq!(resumed.optimizer().step(), 6);
}

#[test]
fn optimizer_and_model_from_different_saves_are_detected() {
    let tc = train_config();
    let mut tr = Trainer::new(tiny_model(12), tc, 2, 8).unwrap();
    steps(&mut tr, 0..2);
    let a = TempDir::new().unwrap();
    save_training(a.path(), &tr, &BTreeMap::new()).unwrap();
    steps(&mut tr, 2..3);
    let b = TempDir::new().unwrap();
    save_training(b.path(), &tr, &BTreeMap::new()).unwrap();

    fs::copy(b.path().join(OPTIMIZER_FILE), a.path().join(OPTIMIZER_FILE)).unwrap();
    match load_training(a.path(), tc, 2, 8) {
        Err(CheckpointError {
            kind:
                CheckpointErrorKind::StepMismatch {
                    model_step: Some(2),
                    optimizer_step: 3,
                    ..
                },
            ..
        }) => {}
        other => panic!("expected StepMismatch, got {other:?}"),
    }

    // A plain `save` over a training checkpoint: the optimizer file is stale.
    save(b.path(), tr.model()).unwrap();
    let e = load_training(b.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError {
                kind: CheckpointErrorKind::StepMismatch {
                    model_step: None,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    // The model part still loads.
    assert!(load(b.path()).is_ok());
}

#[test]
fn corrupt_optimizer_file_errors_name_the_tensor() {
    let tc = train_config();
    let mut tr = Trainer::new(tiny_model(13), tc, 2, 8).unwrap();
    steps(&mut tr, 0..1);
    let dir = TempDir::new().unwrap();
    save_training(dir.path(), &tr, &BTreeMap::new()).unwrap();
    let opt = dir.path().join(OPTIMIZER_FILE);
    let pristine = fs::read(&opt).unwrap();
    let header_meta = {
        let st = SafeTensors::read_metadata(&pristine).unwrap().1;
        st.metadata().clone().unwrap()
    };
    let rewrite_meta = |meta: &HashMap<String, String>, f: &dyn Fn(&mut Vec<Raw>)| {
        fs::write(&opt, &pristine).unwrap();
        let mut raw = read_raw(&opt);
        f(&mut raw);
        let mut parts = vec![format!(
            "\"__metadata__\":{}",
            serde_json::to_string(meta).unwrap()
        )];
        let mut off = 0;
        for (n, d, s, b) in raw.iter() {
            parts.push(format!(
                r#""{n}":{{"dtype":"{d}","shape":{s:?},"data_offsets":[{off},{}]}}"#,
                off + b.len()
            ));
            off += b.len();
        }
        let mut h = format!("{{{}}}", parts.join(",")).into_bytes();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        for t in raw.iter() {
            out.extend(&t.3);
        }
        fs::write(&opt, out).unwrap();
    };
    // Keep the original metadata (step, format).
    let rewrite = |f: &dyn Fn(&mut Vec<Raw>)| rewrite_meta(&header_meta, f);

    rewrite(&|r| r.retain(|t| t.0 != "v.model.norm.weight"));
    let e = load_training(dir.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::MissingTensor { name, .. }, .. } if name == "v.model.norm.weight"),
        "{e}"
    );

    rewrite(&|r| {
        let t = find(r, "v.lm_head.weight");
        t.3[40..44].copy_from_slice(&(-1.0f32).to_le_bytes());
    });
    let e = load_training(dir.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::InvalidValue { name, index: 10, .. }, .. } if name == "v.lm_head.weight"),
        "{e}"
    );

    rewrite(&|r| {
        let t = find(r, "m.model.embed_tokens.weight");
        t.3[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = load_training(dir.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::NonFinite { name, index: 0, .. }, .. } if name == "m.model.embed_tokens.weight"),
        "{e}"
    );

    // Metadata: foreign format, no step, a bad step.
    let mut meta = header_meta.clone();
    meta.insert("format".into(), "pt".into());
    rewrite_meta(&meta, &|_| {});
    let e = load_training(dir.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::Metadata { key, .. }, .. } if key == "format"),
        "{e}"
    );
    let mut meta = header_meta.clone();
    meta.remove("step");
    rewrite_meta(&meta, &|_| {});
    let e = load_training(dir.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::Metadata { key, found: None, .. }, .. } if key == "step"),
        "{e}"
    );
    meta.insert("step".into(), "-1".into());
    rewrite_meta(&meta, &|_| {});
    let e = load_training(dir.path(), tc, 2, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::Metadata { key, found: Some(_), .. }, .. } if key == "step"),
        "{e}"
    );
    // The pristine file still loads.
    fs::write(&opt, &pristine).unwrap();
    assert_eq!(
        load_training(dir.path(), tc, 2, 8)
            .unwrap()
            .optimizer()
            .step(),
        1
    );
}

// ---------------------------------------------------------------------------------------
// Corrupt model files
// ---------------------------------------------------------------------------------------

#[test]
fn truncated_model_file() {
    let (dir, _) = saved(1);
    let path = dir.path().join(MODEL_FILE);
    let bytes = fs::read(&path).unwrap();

    // Cut inside the data: the last tensor is cut off.
    fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(dir.path());
    match &e {
        CheckpointError {
            kind:
                CheckpointErrorKind::Truncated {
                    tensor: Some(t),
                    expected_bytes,
                    actual_bytes,
                    ..
                },
            ..
        } => {
            assert_eq!(t, "lm_head.weight");
            assert_eq!(*expected_bytes, bytes.len() as u64);
            assert_eq!(*actual_bytes, bytes.len() as u64 - 1000);
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(e.to_string().contains("lm_head.weight"), "{e}");

    // Cut in the middle of the data: the first tensor that is cut is named.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    fs::write(&path, &bytes[..8 + n + 256_000 + 100]).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::Truncated { tensor: Some(t), .. }, .. } if t == "model.layers.0.input_layernorm.weight"),
        "{e}"
    );

    // Cut inside the header.
    fs::write(&path, &bytes[..100]).unwrap();
    assert!(matches!(
        load_err(dir.path()),
        CheckpointError {
            kind: CheckpointErrorKind::Truncated { tensor: None, .. },
            ..
        }
    ));

    // Shorter than the length prefix; empty.
    for len in [5, 0] {
        fs::write(&path, &bytes[..len]).unwrap();
        let e = load_err(dir.path());
        assert!(
            matches!(
                e,
                CheckpointError {
                    kind: CheckpointErrorKind::Safetensors { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn garbage_header() {
    let (dir, _) = saved(1);
    let path = dir.path().join(MODEL_FILE);
    let mut bytes = fs::read(&path).unwrap();
    // Overwrite the start of the JSON header.
    bytes[8..24].copy_from_slice(b"not json at all!");
    fs::write(&path, &bytes).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(
            e,
            CheckpointError {
                kind: CheckpointErrorKind::Safetensors { .. },
                ..
            }
        ),
        "{e}"
    );

    // A valid length prefix and garbage after it; invalid UTF-8; absurd header length.
    let mut g = 16u64.to_le_bytes().to_vec();
    g.extend(b"not json at all!");
    for file in [
        g,
        vec![8, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0, 1, 2, 3],
        vec![0xff; 64],
    ] {
        fs::write(&path, &file).unwrap();
        let e = load_err(dir.path());
        assert!(
            matches!(
                e,
                CheckpointError {
                    kind: CheckpointErrorKind::Safetensors { .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    // Overlapping / wrong data offsets.
    let bad = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[1000,64],"data_offsets":[0,256000]},"model.layers.0.input_layernorm.weight":{"dtype":"F32","shape":[64],"data_offsets":[100,356]}}"#;
    let mut file = (bad.len() as u64).to_le_bytes().to_vec();
    file.extend(bad.as_bytes());
    file.extend(vec![0u8; 256_256]);
    fs::write(&path, &file).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(
            e,
            CheckpointError {
                kind: CheckpointErrorKind::Safetensors { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn wrong_dtype_names_the_tensor() {
    // F16 and BF16 load (converted to f32; tests in interop.rs).
    for (dtype, size) in [("F64", 8usize), ("I32", 4), ("U8", 1)] {
        let (dir, _) = saved(1);
        let name = "model.layers.1.self_attn.o_proj.weight";
        edit_model(dir.path(), |r| {
            let t = find(r, name);
            t.1 = dtype.into();
            t.3 = vec![0u8; 64 * 64 * size];
        });
        match load_err(dir.path()) {
            CheckpointError {
                kind: CheckpointErrorKind::WrongDtype { name: n, found, .. },
                ..
            } => {
                assert_eq!(n, name);
                assert_eq!(found, dtype);
            }
            other => panic!("expected WrongDtype, got {other:?}"),
        }
    }
}

#[test]
fn wrong_shape_names_the_tensor() {
    let (dir, _) = saved(1);
    let name = "model.layers.0.self_attn.k_proj.weight";
    edit_model(dir.path(), |r| find(r, name).2 = vec![64, 16]);
    let e = load_err(dir.path());
    match &e {
        CheckpointError {
            kind:
                CheckpointErrorKind::WrongShape {
                    name: n,
                    expected,
                    found,
                    ..
                },
            ..
        } => {
            assert_eq!(n, name);
            assert_eq!(expected, &vec![16, 64]);
            assert_eq!(found, &vec![64, 16]);
        }
        other => panic!("expected WrongShape, got {other:?}"),
    }
    assert!(
        e.to_string().contains("[16, 64]") && e.to_string().contains(name),
        "{e}"
    );

    // A model file of another config (router with 8 experts).
    let (dir, _) = saved(1);
    edit_model(dir.path(), |r| {
        let t = find(r, "model.layers.1.block_sparse_moe.gate.weight");
        t.2 = vec![8, 64];
        t.3 = vec![0u8; 8 * 64 * 4];
    });
    assert!(matches!(
        load_err(dir.path()),
        CheckpointError { kind: CheckpointErrorKind::WrongShape { name, .. }, .. } if name == "model.layers.1.block_sparse_moe.gate.weight"
    ));
}

#[test]
fn missing_tensor_names_the_tensor() {
    let (dir, _) = saved(1);
    let name = "model.layers.0.block_sparse_moe.experts.2.w3.weight";
    edit_model(dir.path(), |r| r.retain(|t| t.0 != name));
    let e = load_err(dir.path());
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::MissingTensor { name: n, .. }, .. } if n == name),
        "{e}"
    );
    assert!(e.to_string().contains(name));
}

#[test]
fn extra_tensor_names_the_tensor() {
    let (dir, _) = saved(1);
    let name = "model.layers.0.self_attn.q_proj.bias";
    edit_model(dir.path(), |r| {
        r.push((name.into(), "F32".into(), vec![64], vec![0u8; 256]))
    });
    let e = load_err(dir.path());
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::UnexpectedTensor { name: n, .. }, .. } if n == name),
        "{e}"
    );
}

#[test]
fn nan_or_inf_in_a_tensor_names_tensor_and_index() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (dir, _) = saved(1);
        let name = "model.norm.weight";
        edit_model(dir.path(), |r| {
            find(r, name).3[48..52].copy_from_slice(&bad.to_le_bytes());
        });
        let e = load_err(dir.path());
        match &e {
            CheckpointError {
                kind: CheckpointErrorKind::NonFinite { name: n, index, .. },
                ..
            } => {
                assert_eq!(n, name);
                assert_eq!(*index, 12);
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(e.to_string().contains("index 12"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Bad configs and missing files
// ---------------------------------------------------------------------------------------

#[test]
fn missing_config_field() {
    for field in [
        "hidden_size",
        "num_key_value_heads",
        "rope_theta",
        "model_type",
    ] {
        let (dir, _) = saved(1);
        edit_config(dir.path(), |c| {
            c.remove(field);
        });
        let e = load_err(dir.path());
        match &e {
            CheckpointError {
                path,
                kind: CheckpointErrorKind::MissingField { field: f },
            } => {
                assert_eq!(*f, field);
                assert!(path.ends_with(CONFIG_FILE));
            }
            other => panic!("{field}: expected MissingField, got {other:?}"),
        }
    }
    // `null` counts as missing.
    let (dir, _) = saved(1);
    edit_config(dir.path(), |c| {
        c.insert("vocab_size".into(), Value::Null);
    });
    assert!(matches!(
        load_err(dir.path()),
        CheckpointError {
            kind: CheckpointErrorKind::MissingField {
                field: "vocab_size",
                ..
            },
            ..
        }
    ));
}

#[test]
fn bad_config_values() {
    // num_key_value_heads does not divide num_attention_heads.
    let (dir, _) = saved(1);
    edit_config(dir.path(), |c| {
        c.insert("num_key_value_heads".into(), 3.into());
    });
    let e = load_err(dir.path());
    match &e {
        CheckpointError {
            kind:
                CheckpointErrorKind::InvalidConfig {
                    source: moe_core::Error::InvalidConfig { field, actual, .. },
                    ..
                },
            ..
        } => {
            assert_eq!(*field, "num_key_value_heads");
            assert_eq!(*actual, 3.0);
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    assert!(e.to_string().contains("num_key_value_heads"), "{e}");

    // k > e, odd head dim, zero layers.
    for (field, value) in [
        ("num_experts_per_tok", 5),
        ("head_dim", 15),
        ("num_hidden_layers", 0),
    ] {
        let (dir, _) = saved(1);
        edit_config(dir.path(), |c| {
            c.insert(field.into(), value.into());
        });
        assert!(
            matches!(
                load_err(dir.path()),
                CheckpointError {
                    kind: CheckpointErrorKind::InvalidConfig { .. },
                    ..
                }
            ),
            "{field}"
        );
    }

    // Unsupported or mistyped values.
    let cases: Vec<(&str, Value)> = vec![
        ("torch_dtype", "int8".into()),
        ("dtype", "float64".into()),
        ("model_type", "llama".into()),
        ("architectures", serde_json::json!(["LlamaForCausalLM"])),
        ("tie_word_embeddings", true.into()),
        ("hidden_act", "gelu".into()),
        ("sliding_window", 0.into()),
        ("hidden_size", "64".into()),
        ("hidden_size", (-64).into()),
        ("hidden_size", 64.5.into()),
        ("rms_norm_eps", "tiny".into()),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 10000.0, "rope_type": "yarn"}),
        ),
        (
            "rope_scaling",
            serde_json::json!({"type": "linear", "factor": 2.0}),
        ),
        ("rope_theta", 500000.0.into()), // disagrees with moe_rs.rope_base
        ("moe_rs", serde_json::json!({"format_version": 99})),
    ];
    for (field, value) in cases {
        let (dir, _) = saved(1);
        edit_config(dir.path(), |c| {
            c.insert(field.into(), value.clone());
        });
        let e = load_err(dir.path());
        match &e {
            CheckpointError {
                kind: CheckpointErrorKind::InvalidField { field: f, .. },
                ..
            } => {
                assert!(f.starts_with(field), "{field}: {e}")
            }
            other => panic!("{field} = {value}: expected InvalidField, got {other:?}"),
        }
    }

    // Not JSON; not an object.
    let (dir, _) = saved(1);
    fs::write(dir.path().join(CONFIG_FILE), "{\"vocab_size\": 1000,").unwrap();
    assert!(matches!(
        load_err(dir.path()),
        CheckpointError {
            kind: CheckpointErrorKind::ConfigJson { .. },
            ..
        }
    ));
    fs::write(dir.path().join(CONFIG_FILE), "[1, 2]").unwrap();
    assert!(matches!(
        load_err(dir.path()),
        CheckpointError {
            kind: CheckpointErrorKind::InvalidField { .. },
            ..
        }
    ));
}

#[test]
fn missing_files() {
    let (dir, _) = saved(1);
    fs::remove_file(dir.path().join(MODEL_FILE)).unwrap();
    match load_err(dir.path()) {
        CheckpointError {
            path,
            kind: CheckpointErrorKind::Io { source },
        } => {
            assert!(path.ends_with(MODEL_FILE));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
    match load_err(dir.path()) {
        CheckpointError {
            path,
            kind: CheckpointErrorKind::Io { .. },
        } => assert!(path.ends_with(CONFIG_FILE)),
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(matches!(
        load_err(&dir.path().join("does-not-exist")),
        CheckpointError {
            kind: CheckpointErrorKind::Io { .. },
            ..
        }
    ));
    // Training: no optimizer file.
    let (dir, _) = saved(1);
    let e = load_training(dir.path(), train_config(), 1, 8).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { path, kind: CheckpointErrorKind::Io { .. } } if path.ends_with(OPTIMIZER_FILE)),
        "{e}"
    );
}

#[test]
fn random_bytes_never_panic() {
    // A cheap deterministic fuzz: flip bytes of the header and data, truncate.
    let (dir, _) = saved(1);
    let path = dir.path().join(MODEL_FILE);
    let pristine = fs::read(&path).unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..40 {
        let mut b = pristine.clone();
        for _ in 0..4 {
            let i = (next() % 5000) as usize;
            b[i] = next() as u8;
        }
        if next() % 3 == 0 {
            let len = (next() % b.len() as u64) as usize;
            b.truncate(len);
        }
        fs::write(&path, &b).unwrap();
        let _ = load(dir.path()); // must return, not panic
    }
}

// ---------------------------------------------------------------------------------------
// Failing saves leave the previous checkpoint intact
// ---------------------------------------------------------------------------------------

#[test]
fn failing_save_keeps_previous_checkpoint() {
    let (dir, _) = saved(1);
    let before = snapshot(dir.path());

    // A non-finite parameter: refused before anything is written.
    let mut bad = tiny_model(2);
    let at = bad
        .layout()
        .get("model.layers.1.self_attn.v_proj.weight")
        .unwrap()
        .offset
        + 5;
    bad.params_mut().unwrap()[at] = f32::NAN;
    let e = save(dir.path(), &bad).unwrap_err();
    assert!(
        matches!(&e, CheckpointError { kind: CheckpointErrorKind::NonFinite { name, index: 5, .. }, .. } if name == "model.layers.1.self_attn.v_proj.weight"),
        "{e}"
    );
    assert_eq!(snapshot(dir.path()), before);

    // A writer that fails half-way through `model.safetensors`.
    let e = write_atomic(&dir.path().join(MODEL_FILE), |w| {
        w.write_all(&[0u8; 1000])?;
        Err(std::io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError {
                kind: CheckpointErrorKind::Io { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(
        bits(load(dir.path()).unwrap().params().unwrap()),
        bits(tiny_model(1).params().unwrap())
    );
}

#[test]
fn save_into_a_file_path_fails_cleanly() {
    let tmp = TempDir::new().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"hello").unwrap();
    let e = save(&file, &tiny_model(1)).unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError {
                kind: CheckpointErrorKind::Io { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(fs::read(&file).unwrap(), b"hello");
    // Below a file.
    let e = save(file.join("sub"), &tiny_model(1)).unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError {
                kind: CheckpointErrorKind::Io { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn save_into_read_only_dir_keeps_previous_checkpoint() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = saved(1);
    let before = snapshot(dir.path());
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
    // Root (CAP_DAC_OVERRIDE) ignores permission bits: nothing to test then.
    let probe = dir.path().join("probe");
    let enforced = fs::write(&probe, b"x").is_err();
    let _ = fs::remove_file(&probe);
    let result = save(dir.path(), &tiny_model(2));
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    if enforced {
        let e = result.unwrap_err();
        assert!(
            matches!(
                e,
                CheckpointError {
                    kind: CheckpointErrorKind::Io { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(snapshot(dir.path()), before);
    } else {
        eprintln!("permission bits not enforced (running as root?): read-only case skipped");
    }
}

const CHILD_ENV: &str = "MOE_CKPT_EFBIG_CHILD_DIR";

/// Real mid-write failure: the save runs in a child process whose file-size
/// limit (RLIMIT_FSIZE, 1 MiB) is below the size of `model.safetensors`
/// (2.2 MB), so the write fails with EFBIG after 1 MiB. This works as root too.
#[cfg(target_os = "linux")]
#[test]
fn save_failing_mid_write_keeps_previous_checkpoint() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // Child: limit file size, ignore SIGXFSZ so write() returns EFBIG.
        let lim = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        // SAFETY: plain libc calls with a valid pointer to a local struct; they only
        // change this (child) process's limits and signal disposition.
        let rc = unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim)
        };
        assert_eq!(rc, 0);
        let e = save(&dir, &tiny_model(2)).unwrap_err();
        match e {
            CheckpointError {
                kind: CheckpointErrorKind::Io { source, .. },
                ..
            } => {
                assert_eq!(source.raw_os_error(), Some(libc::EFBIG), "{source}")
            }
            other => panic!("expected Io(EFBIG), got {other:?}"),
        }
        return;
    }
    let (dir, _) = saved(1);
    let before = snapshot(dir.path());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkpoint::save_failing_mid_write_keeps_previous_checkpoint",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the child did not run the test"
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "checkpoint changed or temp files left"
    );
    assert_eq!(
        bits(load(dir.path()).unwrap().params().unwrap()),
        bits(tiny_model(1).params().unwrap())
    );
}

#[test]
fn errors_display_file_and_tensor() {
    let (dir, _) = saved(1);
    edit_model(dir.path(), |r| find(r, "lm_head.weight").1 = "I32".into());
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains(MODEL_FILE) && msg.contains("lm_head.weight") && msg.contains("I32"));
    let _ = checkpoint::DEFAULT_ROUTER_AUX_LOSS_COEF;
}
