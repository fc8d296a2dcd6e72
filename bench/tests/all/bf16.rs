//! Issue 17 item 3 — bf16 checkpoints into `Precision::Bf16`: a float32
//! checkpoint rounded on load equals transformers on the bf16-rounded weights
//! (tests/golden/make_bf16.py), and a BF16 checkpoint written by transformers
//! (tests/golden/interop/bf16) loads bit for bit, without an f32 copy, and
//! gives transformers' logits, losses and gradients.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use moe_bench::checkpoint::{self, CheckpointErrorKind};
use moe_bench::grads::{compute, read_tokens};
use moe_core::kernels::bf16;
use moe_core::{Decoder, Mode, Pool, Precision};
use safetensors::{Dtype, SafeTensors};

const ABS_TOL: f32 = 1e-5;
const REL_TOL: f32 = 1e-4;

fn golden_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(rel)
}

fn golden(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = fs::read(dir.join("golden.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(n, t)| {
            let v = match t.dtype() {
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::I32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                d => panic!("{n}: dtype {d:?}"),
            };
            (n.to_owned(), v)
        })
        .collect()
}

fn check(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (&g, &e)) in got.iter().zip(want).enumerate() {
        let err = (g - e).abs();
        assert!(
            err <= ABS_TOL + REL_TOL * e.abs(),
            "{what}[{i}]: got {g}, transformers {e}"
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn f32_checkpoint_rounded_on_load_matches_transformers_on_rounded_weights() {
    let dir = golden_dir("bf16");
    let model = checkpoint::load_as(&dir, Precision::Bf16).unwrap();
    assert_eq!(model.precision(), Precision::Bf16);
    let g = golden(&dir);
    // Our RNE on the tie / subnormal / carry probes equals torch's.
    let w = model.params_bf16().unwrap();
    let emb = model.layout().embed.start;
    for (&i, &bits) in g["probe_index"].iter().zip(&g["rounded_bits"]) {
        assert_eq!(w[emb + i as usize], bits as u16, "probe at {i}");
    }
    // Every value equals the f32 checkpoint's rounded by our kernel.
    let f = checkpoint::load(&dir).unwrap();
    let want: Vec<u16> = f
        .params()
        .unwrap()
        .iter()
        .map(|&x| bf16::round(x))
        .collect();
    assert!(w == &want[..]);
    let tokens = read_tokens(&dir.join("tokens.json"), &model).unwrap();
    let out = compute(&model, &tokens).unwrap();
    let worst = check("logits", &out.logits, &g["logits"]);
    check("loss", &[out.losses.loss], &g["loss"]);
    check("ce_loss", &[out.losses.ce], &g["ce_loss"]);
    check("aux_loss", &[out.losses.aux], &g["aux_loss"]);
    eprintln!("bf16 parity: max |logit error| {worst:e}");
    // The rounding matters: the unrounded f32 model is outside the tolerance.
    let lf = compute(&f, &tokens).unwrap().logits;
    let d = lf
        .iter()
        .zip(&g["logits"])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d > 1e-3, "bf16 rounding has no visible effect ({d})");
    // Decoding with the KV cache on the pool gives the same logits.
    let pool = Pool::new(2).unwrap();
    let (t, v) = (tokens.seq, model.config().vocab_size);
    let mut dec = Decoder::with_pool(&model, t, &pool).unwrap();
    let first = dec.prefill(&tokens.input_ids[..1]).unwrap().to_vec();
    check("prefill", &first, &g["logits"][..v]);
    for (i, &tok) in tokens.input_ids[1..t].iter().enumerate() {
        let l = dec.step(tok).unwrap();
        check("decode", l, &g["logits"][(i + 1) * v..(i + 2) * v]);
    }
}

#[test]
fn bf16_checkpoint_from_transformers_loads_bit_for_bit_into_bf16() {
    let dir = golden_dir("interop/bf16");
    let model = checkpoint::load_as(&dir, Precision::Bf16).unwrap();
    // The widened f32 load, rounded back, is the same bits (BF16 → f32 → BF16 is exact).
    let f = checkpoint::load(&dir).unwrap();
    let via_f32 = f.to_precision(Precision::Bf16).unwrap();
    assert!(model.params_bf16().unwrap() == via_f32.params_bf16().unwrap());
    assert_eq!(
        model.param_bytes() * 2 - 8 * 32 * 5,
        f.param_bytes(),
        "half the bytes (+ norm table)"
    );
    let tokens = read_tokens(&dir.join("tokens.json"), &model).unwrap();
    let out = compute(&model, &tokens).unwrap();
    let g = golden(&dir);
    check("logits", &out.logits, &g["logits"]);
    check("loss", &[out.losses.loss], &g["loss"]);
    check("ce_loss", &[out.losses.ce], &g["ce_loss"]);
    check("aux_loss", &[out.losses.aux], &g["aux_loss"]);
    for t in model.layout().tensors() {
        check(
            &t.name,
            &out.grads[t.range()],
            &g[&format!("{}.grad", t.name)],
        );
    }
    // A bf16 model exports nothing silently: save refuses it with a typed error.
    let tmp = tempfile::tempdir().unwrap();
    let e = checkpoint::save(tmp.path().join("out"), &model).unwrap_err();
    assert!(
        matches!(
            &e.kind,
            CheckpointErrorKind::Model(moe_core::Error::PrecisionMismatch { .. })
        ),
        "{e}"
    );
    let mut ws = model.workspace(1, 4, Mode::Inference).unwrap();
    assert!(model.forward(&mut ws, &[1, 2, 3, 4], 1, 4).is_ok());
}

#[test]
fn f32_value_that_rounds_past_bf16_max_is_refused_on_bf16_load() {
    let src = golden_dir("bf16");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    // Overwrite the first value of the first tensor's data with f32::MAX
    // (finite in f32, +inf once rounded to bf16).
    let path = tmp.path().join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let at = 8 + hlen;
    bytes[at..at + 4].copy_from_slice(&f32::MAX.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(checkpoint::load(tmp.path()).is_ok(), "finite in f32");
    let e = checkpoint::load_as(tmp.path(), Precision::Bf16).unwrap_err();
    match &e.kind {
        CheckpointErrorKind::NonFinite { value, .. } => assert!(value.is_infinite()),
        k => panic!("{k:?}"),
    }
}
