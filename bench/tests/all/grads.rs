//! `moe grads`: a round trip through the `moe` binary against the committed
//! Hugging Face golden fixture, token-file validation, and zero gradients for
//! experts that receive no token.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use moe_bench::checkpoint::{self, parse_config, CheckpointError, CheckpointErrorKind};
use moe_bench::grads::{compute, parse_tokens, write_result, TokenBatch, TokensError};
use moe_core::{Config, Layout, MoETransformer};
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

const SEED: u64 = 1234;
const ABS_TOL: f32 = 1e-5;
const REL_TOL: f32 = 1e-4;

// ---------------------------------------------------------------------------------------
// The golden weight formula (tests/golden/README.md, "Weight formula"), reimplemented
// because moe-tests is not a dependency of moe-bench.
// ---------------------------------------------------------------------------------------

fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn formula_u(seed: u64, t: u64, i: u64) -> f32 {
    let key = seed
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add(t.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(i);
    let m = (splitmix64(key) >> 40) as i64;
    ((m - (1 << 23)) as f64 / (1u64 << 23) as f64) as f32
}

fn formula_params(cfg: &Config, seed: u64) -> Vec<f32> {
    let layout = Layout::new(cfg).unwrap();
    let mut params = vec![0.0f32; layout.total];
    for (t, info) in layout.tensors().iter().enumerate() {
        let scale = (3.0f64 / *info.shape.last().unwrap() as f64).sqrt() as f32;
        for (i, w) in params[info.range()].iter_mut().enumerate() {
            let u = formula_u(seed, t as u64, i as u64);
            *w = if info.shape.len() == 1 {
                1.0f32 + 0.25f32 * u
            } else if info.offset == layout.embed.start {
                u
            } else {
                scale * u
            };
        }
    }
    params
}

// ---------------------------------------------------------------------------------------
// Fixture access
// ---------------------------------------------------------------------------------------

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/fixtures/tiny_a0.01.safetensors")
}

struct Tensors {
    map: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
}

impl Tensors {
    fn read(path: &Path) -> Self {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let map = st
            .iter()
            .map(|(n, t)| {
                (
                    n.to_owned(),
                    (t.dtype(), t.shape().to_vec(), t.data().to_vec()),
                )
            })
            .collect();
        let metadata = SafeTensors::read_metadata(&bytes)
            .unwrap()
            .1
            .metadata()
            .clone()
            .unwrap_or_default();
        Tensors { map, metadata }
    }

    fn shape(&self, name: &str) -> &[usize] {
        &self
            .map
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .1
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let (dt, _, b) = self
            .map
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(*dt, Dtype::F32, "{name}");
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        let (dt, _, b) = self.map.get(name).unwrap();
        assert_eq!(*dt, Dtype::I64, "{name}");
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn assert_close(what: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (i, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        let err = (a - b).abs();
        let tol = ABS_TOL + REL_TOL * b.abs();
        assert!(
            err <= tol,
            "{what}[{i}]: ours {a} vs reference {b} (|diff| {err} > {tol})"
        );
    }
}

fn stride_samples(x: &[f32]) -> Vec<f32> {
    let stride = (x.len() / 97).max(1);
    x.iter().step_by(stride).copied().collect()
}

/// A checkpoint of the formula weights and the fixture's token file.
fn golden_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let cfg = Config::tiny();
    let model = MoETransformer::from_params(&cfg, formula_params(&cfg, SEED)).unwrap();
    let ckpt = dir.join("ckpt");
    checkpoint::save(&ckpt, &model).unwrap();
    // README: input_ids (i*131 + j*71 + 7) % 1000, targets (i*17 + j*29 + 3) % 1000, b2 t8.
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|i| (0..8).map(|j| (i * 131 + j * 71 + 7) % 1000).collect())
        .collect();
    let tgt: Vec<Vec<u32>> = (0..2)
        .map(|i| (0..8).map(|j| (i * 17 + j * 29 + 3) % 1000).collect())
        .collect();
    let tokens = dir.join("tokens.json");
    let json = serde_json::json!({"input_ids": ids, "targets": tgt, "aux_alpha": 0.01});
    fs::write(&tokens, json.to_string()).unwrap();
    (ckpt, tokens)
}

fn moe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moe"))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn formula_matches_fixture_weight_samples() {
    let fx = Tensors::read(&fixture_path());
    let cfg = Config::tiny();
    let layout = Layout::new(&cfg).unwrap();
    let params = formula_params(&cfg, SEED);
    for t in layout.tensors() {
        let reference = fx.f32(&format!("weight_samples.{}", t.name));
        let ours = stride_samples(&params[t.range()]);
        let (a, b): (Vec<u32>, Vec<u32>) = (
            ours.iter().map(|x| x.to_bits()).collect(),
            reference.iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(a, b, "{}", t.name);
    }
    // The fixture's own config (written by the Python generator) parses to tiny().
    let cc = parse_config(&fx.metadata["config"], Path::new("fixture config")).unwrap();
    assert_eq!(cc.config, cfg);
    assert_eq!(cc.router_aux_loss_coef, Some(0.01));
}

#[test]
fn grads_command_matches_golden_fixture() {
    let tmp = TempDir::new().unwrap();
    let (ckpt, tokens) = golden_inputs(tmp.path());
    let out = tmp.path().join("result.safetensors");
    let run = moe()
        .args(["grads", "--checkpoint"])
        .arg(&ckpt)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "moe grads failed: {}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    let fx = Tensors::read(&fixture_path());
    let res = Tensors::read(&out);
    let cfg = Config::tiny();
    let layout = Layout::new(&cfg).unwrap();

    // The fixture's tokens are the ones we wrote.
    let ids: Vec<i64> = (0..2)
        .flat_map(|i| (0..8).map(move |j| (i * 131 + j * 71 + 7) % 1000))
        .collect();
    assert_eq!(fx.i64("input_ids"), ids);

    // Shapes: logits [b,t,v], 0-d losses, one `.grad` per parameter, nothing else.
    assert_eq!(res.shape("logits"), &[2, 8, 1000]);
    for n in ["loss", "ce_loss", "aux_loss"] {
        assert_eq!(res.shape(n), &[] as &[usize], "{n}");
    }
    for t in layout.tensors() {
        assert_eq!(res.shape(&format!("{}.grad", t.name)), t.shape.as_slice());
    }
    assert_eq!(res.map.len(), 4 + layout.tensors().len());
    assert_eq!(res.metadata["aux_alpha"], "0.01");

    assert_close("logits", &res.f32("logits"), &fx.f32("logits"));
    for n in ["loss", "ce_loss", "aux_loss"] {
        assert_close(n, &res.f32(n), &fx.f32(n));
    }
    for t in layout.tensors() {
        let g = res.f32(&format!("{}.grad", t.name));
        assert_close(
            &format!("grad_samples.{}", t.name),
            &stride_samples(&g),
            &fx.f32(&format!("grad_samples.{}", t.name)),
        );
    }
}

#[test]
fn grads_command_rejects_bad_token_files() {
    let tmp = TempDir::new().unwrap();
    let (ckpt, _) = golden_inputs(tmp.path());
    let cases = [
        (
            r#"{"input_ids": [[1,2,3],[4,5]], "targets": [[1,2,3],[4,5,6]]}"#,
            "input_ids[1]",
        ),
        (
            r#"{"input_ids": [[1,2,3]], "targets": [[1,2,1000]]}"#,
            "targets[0][2]",
        ),
        (
            r#"{"input_ids": [[1,-2,3]], "targets": [[1,2,3]]}"#,
            "input_ids[0][1]",
        ),
        (r#"{"input_ids": [], "targets": []}"#, "input_ids"),
        (r#"{"input_ids": [[1,2,3]]}"#, "targets"),
        (
            r#"{"input_ids": [[1,2,3]], "targets": [[1,2,3]], "aux_alpha": -1}"#,
            "aux_alpha",
        ),
        ("[1, 2", "invalid JSON"),
    ];
    for (i, (json, needle)) in cases.iter().enumerate() {
        let tokens = tmp.path().join(format!("bad{i}.json"));
        fs::write(&tokens, json).unwrap();
        let out = tmp.path().join(format!("bad{i}.safetensors"));
        let run = moe()
            .args(["grads", "--checkpoint"])
            .arg(&ckpt)
            .arg("--tokens")
            .arg(&tokens)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{json}: should fail");
        assert!(
            stderr.contains(needle),
            "{json}: stderr {stderr:?} lacks {needle:?}"
        );
        assert!(!out.exists(), "{json}: wrote a result anyway");
    }

    // A missing checkpoint.
    let run = moe()
        .args(["grads", "--checkpoint"])
        .arg(tmp.path().join("nope"))
        .arg("--tokens")
        .arg(tmp.path().join("tokens.json"))
        .arg("--out")
        .arg(tmp.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("config.json"));
}

#[test]
fn parse_tokens_validates_shape_ids_and_alpha() {
    let ok = parse_tokens(
        r#"{"input_ids": [[1,2],[3,4]], "targets": [[5,6],[7,8]], "aux_alpha": 10}"#,
        1000,
        512,
    )
    .unwrap();
    assert_eq!(
        ok,
        TokenBatch {
            batch: 2,
            seq: 2,
            input_ids: vec![1, 2, 3, 4],
            targets: vec![5, 6, 7, 8],
            aux_alpha: 10.0,
        }
    );
    // aux_alpha defaults to 0.01.
    let ok = parse_tokens(r#"{"input_ids": [[1]], "targets": [[2]]}"#, 1000, 512).unwrap();
    assert_eq!(ok.aux_alpha, 0.01);

    let err = |s: &str| parse_tokens(s, 1000, 4).unwrap_err();
    assert!(matches!(
        err(r#"{"input_ids": [[1,2],[3]], "targets": [[1,2],[3,4]]}"#),
        TokensError::Ragged {
            field: "input_ids",
            row: 1,
            expected: 2,
            found: 1
        }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [[1,2],[3,4]], "targets": [[1,2],[3,4,5]]}"#),
        TokensError::Ragged {
            field: "targets",
            row: 1,
            expected: 2,
            found: 3
        }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [[1,2],[3,4]], "targets": [[1,2]]}"#),
        TokensError::RowCount {
            expected: 2,
            found: 1
        }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [[1,2]], "targets": [[1,1000]]}"#),
        TokensError::BadId {
            field: "targets",
            row: 0,
            col: 1,
            vocab: 1000,
            ..
        }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [[1.5]], "targets": [[1]]}"#),
        TokensError::BadId {
            field: "input_ids",
            row: 0,
            col: 0,
            ..
        }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [["7"]], "targets": [[1]]}"#),
        TokensError::BadId {
            field: "input_ids",
            ..
        }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [], "targets": []}"#),
        TokensError::Empty { .. }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [[]], "targets": [[]]}"#),
        TokensError::Empty { .. }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [1,2], "targets": [1,2]}"#),
        TokensError::WrongType { .. }
    ));
    assert!(matches!(
        err(r#"{"targets": [[1]]}"#),
        TokensError::MissingField { field: "input_ids" }
    ));
    assert!(matches!(
        err(r#"{"input_ids": [[1,2,3,4,5]], "targets": [[1,2,3,4,5]]}"#),
        TokensError::SeqTooLong { seq: 5, max: 4 }
    ));
    for a in ["-0.5", "\"x\"", "1e999"] {
        let s = format!(r#"{{"input_ids": [[1]], "targets": [[1]], "aux_alpha": {a}}}"#);
        let e = parse_tokens(&s, 1000, 4);
        assert!(
            matches!(
                e,
                Err(TokensError::BadAlpha { .. }) | Err(TokensError::Json(_))
            ),
            "{a}: {e:?}"
        );
    }
    assert!(matches!(err("[1, 2]"), TokensError::WrongType { .. }));
    assert!(matches!(err("{"), TokensError::Json(_)));
}

#[test]
fn unrouted_experts_get_zero_gradients() {
    // Router weights all zero: uniform probabilities, ties broken toward lower
    // indices, so experts 0 and 1 get every token and experts 2 and 3 none.
    let cfg = Config::tiny();
    let mut model = MoETransformer::new(&cfg, 3).unwrap();
    let layout = model.layout().clone();
    for l in 0..cfg.num_hidden_layers {
        let r = layout
            .get(&format!("model.layers.{l}.block_sparse_moe.gate.weight"))
            .unwrap()
            .range();
        model.params_mut().unwrap()[r]
            .iter_mut()
            .for_each(|w| *w = 0.0);
    }
    let tokens = parse_tokens(
        r#"{"input_ids": [[1,2,3,4],[5,6,7,8]], "targets": [[2,3,4,5],[6,7,8,9]], "aux_alpha": 0.01}"#,
        cfg.vocab_size,
        cfg.max_position_embeddings,
    )
    .unwrap();
    let out = compute(&model, &tokens).unwrap();
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("sub/result.safetensors");
    write_result(&path, &model, &tokens, &out).unwrap();
    let res = Tensors::read(&path);
    for l in 0..cfg.num_hidden_layers {
        for j in 0..cfg.num_local_experts {
            for w in ["w1", "w3", "w2"] {
                let name = format!("model.layers.{l}.block_sparse_moe.experts.{j}.{w}.weight.grad");
                let g = res.f32(&name);
                let nonzero = g.iter().filter(|x| **x != 0.0).count();
                if j >= 2 {
                    assert_eq!(nonzero, 0, "{name} should be all zeros");
                } else {
                    assert!(nonzero > 0, "{name} should not be all zeros");
                }
            }
        }
    }
    assert_eq!(res.f32("loss"), vec![out.losses.loss]);
    assert_eq!(res.f32("aux_loss"), vec![out.losses.aux]);
}

#[test]
fn result_write_is_atomic_over_an_existing_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("result.safetensors");
    fs::write(&path, b"previous").unwrap();
    // A directory where the file should go: the rename fails, nothing changes.
    let blocked = tmp.path().join("blocked");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep"), b"x").unwrap();
    let cfg = Config::tiny();
    let model = MoETransformer::new(&cfg, 1).unwrap();
    let tokens = parse_tokens(r#"{"input_ids": [[1,2]], "targets": [[2,3]]}"#, 1000, 512).unwrap();
    let out = compute(&model, &tokens).unwrap();
    let e = write_result(&blocked, &model, &tokens, &out).unwrap_err();
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
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "temporary file left behind: {names:?}");
    // A successful write replaces the old file.
    write_result(&path, &model, &tokens, &out).unwrap();
    assert_ne!(fs::read(&path).unwrap(), b"previous");
}

/// Issue 12, defect 1 (`moe grads` wrote NaN gradients beside finite logits):
/// a non-finite or huge weight in `q_proj`, `k_proj` or the router never
/// yields `Ok` with a non-finite logit, loss or gradient from
/// [`compute`] (what `moe grads` writes). Before the fix a NaN query made
/// every score row NaN, the row softmax took its "fully masked" branch and
/// wrote zeros, so the logits were finite and `compute` returned `Ok` with
/// NaN gradients.
#[test]
fn grads_never_returns_non_finite_output() {
    let cfg = Config::tiny();
    let clean = MoETransformer::new(&cfg, 7).unwrap();
    let layout = clean.layout().clone();
    let tokens = parse_tokens(
        r#"{"input_ids": [[1,2,3,4,5,6]], "targets": [[2,3,4,5,6,7]], "aux_alpha": 0.01}"#,
        cfg.vocab_size,
        cfg.max_position_embeddings,
    )
    .unwrap();
    let q0 = layout.layers[0].wqkv.start; // first element of q_proj
    let k0 = q0 + cfg.num_attention_heads * cfg.head_dim; // first element of k_proj
    let r0 = layout.layers[0].router.start;
    let mut refused = 0;
    for at in [q0, k0, r0] {
        for value in [f32::NAN, f32::INFINITY, f32::MAX] {
            let mut model = clean.clone();
            model.params_mut().unwrap()[at] = value;
            match compute(&model, &tokens) {
                Err(moe_core::Error::NonFinite { .. }) => refused += 1,
                Err(e) => panic!("weight {value} at {at}: unexpected error {e}"),
                Ok(out) => {
                    let finite = out.logits.iter().chain(&out.grads).all(|x| x.is_finite())
                        && [out.losses.loss, out.losses.ce, out.losses.aux]
                            .iter()
                            .all(|x| x.is_finite());
                    assert!(finite, "weight {value} at {at}: Ok with non-finite output");
                    assert!(
                        value.is_finite(),
                        "weight {value} at {at} cannot be absorbed"
                    );
                }
            }
        }
    }
    // Every NaN/Inf case is refused (6 of them); f32::MAX may be either.
    assert!(refused >= 6, "only {refused} refusals");
}
