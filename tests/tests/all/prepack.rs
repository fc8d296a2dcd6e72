//! Pre-packed weights (issue 13 item 2, `MoETransformer::prepack`): the
//! packed forward's logits are bit-identical to the unpacked forward's on
//! every path (plain, KV cache, split over a pool, pooled decoding), a packed
//! copy never outlives a change of the weights, bf16 models refuse it, and
//! the GEMM entry point matches the unpacked GEMM bit for bit at the shapes
//! around its routing boundaries, on the AVX2 and the portable kernels.

use moe_core::kernels::gemm::{gemm_with, portable, Backend, Mat};
use moe_core::linear::{self, Accum, Weight};
use moe_core::{
    Config, Decoder, Error, MoETransformer, Mode, Pool, Precision, TrainConfig, Trainer,
    FORWARD_SPLITS,
};

fn tokens(n: usize, v: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7919 + salt * 31 + i * i) % v as u32)
        .collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// SplitMix64 values in [-1, 1), with a few exact zeros and negative zeros
/// (so sign-of-zero differences between paths would show).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            match i % 97 {
                0 => 0.0,
                1 => -0.0,
                _ => ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0,
            }
        })
        .collect()
}

fn prepacked(cfg: &Config, seed: u64) -> (MoETransformer, MoETransformer) {
    let plain = MoETransformer::new(cfg, seed).unwrap();
    let mut packed = plain.clone();
    packed.prepack().unwrap();
    assert!(packed.is_prepacked() && !plain.is_prepacked());
    (plain, packed)
}

/// Shapes whose per-expert token counts cross the routing boundaries
/// (≤ 4 rows: dot products; 5–16: `Cᵀ = W·xᵀ`; 9–64: `panel.rs` or the BLIS
/// driver by padding; > 64: the BLIS driver) and the lm head's rows.
const SHAPES: &[(usize, usize)] = &[
    (1, 1),
    (1, 3),
    (1, 5),
    (1, 9),
    (2, 8),
    (1, 17),
    (2, 16),
    (3, 21),
    (2, 32),
    (4, 32),
    (8, 64),
];

#[test]
fn prepacked_forward_is_bit_identical_to_unpacked() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let (plain, packed) = prepacked(&cfg, 42);
        let mut wa = plain.workspace(8, 64, Mode::Inference).unwrap();
        let mut wb = packed.workspace(8, 64, Mode::Inference).unwrap();
        for (i, &(b, t)) in SHAPES.iter().enumerate() {
            let x = tokens(b * t, cfg.vocab_size, i as u32);
            let want = bits(plain.forward(&mut wa, &x, b, t).unwrap());
            let got = bits(packed.forward(&mut wb, &x, b, t).unwrap());
            let same = want.iter().zip(&got).filter(|(a, b)| a == b).count();
            assert!(
                want == got,
                "c = {}: b{b} s{t}: {} of {} logits differ",
                cfg.hidden_size,
                want.len() - same,
                want.len()
            );
        }
    }
}

#[test]
fn prepacked_split_forward_and_decoding_are_bit_identical() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let (plain, packed) = prepacked(&cfg, 7);
        for threads in [1, 2] {
            let pool = Pool::new(threads).unwrap();
            for &(b, t) in &[(6, 12), (8, 64), (3, 5)] {
                let x = tokens(b * t, cfg.vocab_size, 9);
                let mut wa = plain.split_workspace(8, 64, FORWARD_SPLITS).unwrap();
                let mut wb = packed.split_workspace(8, 64, FORWARD_SPLITS).unwrap();
                let want = bits(plain.forward_split(&pool, &mut wa, &x, b, t).unwrap());
                let got = bits(packed.forward_split(&pool, &mut wb, &x, b, t).unwrap());
                assert!(
                    want == got,
                    "c = {}: split forward b{b} s{t} T{threads} differs",
                    cfg.hidden_size
                );
            }
            // Prefill (9 rows: the packed path) then decoding (1 row: the GEMV).
            let run = |m: &MoETransformer| {
                let mut dec = Decoder::with_pool(m, 32, &pool).unwrap();
                let mut out = bits(dec.prefill(&[3, 1, 4, 1, 5, 9, 2, 6, 5]).unwrap());
                for s in 0..5u32 {
                    out.extend(bits(dec.step(s * 17 + 2).unwrap()));
                }
                out
            };
            assert!(
                run(&plain) == run(&packed),
                "c = {}: pooled decoding T{threads} differs",
                cfg.hidden_size
            );
        }
        // And without a pool (the KV-cache forward).
        let run = |m: &MoETransformer| {
            let mut dec = Decoder::new(m, 32).unwrap();
            let mut out = bits(dec.prefill(&[8, 6, 7, 5, 3, 0, 9]).unwrap());
            out.extend(bits(dec.step(4).unwrap()));
            out
        };
        assert!(
            run(&plain) == run(&packed),
            "c = {}: decoding",
            cfg.hidden_size
        );
    }
}

#[test]
fn the_packed_copy_is_sized_as_planned() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let (plain, packed) = prepacked(&cfg, 1);
        let lay = plain.layout();
        // Independent count: din·⌈dout/16⌉·16 per forward weight.
        let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (h, kv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.hidden_size / cfg.num_attention_heads,
        );
        let pad = |n: usize| n.div_ceil(16) * 16;
        let q = (h + 2 * kv) * d;
        let per_layer =
            c * pad(q) + h * d * pad(c) + cfg.num_local_experts * (c * pad(2 * f) + f * pad(c));
        let want = cfg.num_hidden_layers * per_layer + c * pad(v);
        assert_eq!(MoETransformer::prepacked_len(lay).unwrap(), want);
        assert_eq!(packed.packed_bytes(), 4 * want);
        assert_eq!(plain.packed_bytes(), 0);
    }
    // The numbers docs/performance.md quotes.
    let tiny = MoETransformer::prepacked_len(&moe_core::Layout::new(&Config::tiny()).unwrap());
    assert_eq!(tiny.unwrap() * 4, 1_912_832);
    let s256 = MoETransformer::prepacked_len(&moe_core::Layout::new(&Config::scale_256()).unwrap());
    assert_eq!(s256.unwrap() * 4, 27_508_736);
}

#[test]
fn a_packed_copy_never_outlives_a_weight_change() {
    let cfg = Config::tiny();
    let (_, mut m) = prepacked(&cfg, 3);
    let (b, t) = (2, 32);
    let x = tokens(b * t, cfg.vocab_size, 2);
    let lay = m.layout().clone();
    // Change weights of every packed kind: wqkv, wo, an expert, the lm head.
    {
        let p = m.params_mut().unwrap();
        for r in [
            lay.layers[0].wqkv.clone(),
            lay.layers[1].wo.clone(),
            lay.expert(0, 1).all(),
            lay.lm_head.clone(),
        ] {
            for w in &mut p[r] {
                *w = -0.75 * *w + 0.01;
            }
        }
    }
    assert!(!m.is_prepacked(), "params_mut must drop the packed copy");
    assert_eq!(m.packed_bytes(), 0);
    // The reference: a fresh unpacked model on the new weights.
    let fresh = MoETransformer::from_params(&cfg, m.params().unwrap().to_vec()).unwrap();
    let mut wf = fresh.workspace(b, t, Mode::Inference).unwrap();
    let want = bits(fresh.forward(&mut wf, &x, b, t).unwrap());
    let mut wm = m.workspace(b, t, Mode::Inference).unwrap();
    assert!(bits(m.forward(&mut wm, &x, b, t).unwrap()) == want);
    // Repacked: the same bits again.
    m.prepack().unwrap();
    assert!(bits(m.forward(&mut wm, &x, b, t).unwrap()) == want);
    // A clone keeps a (valid) copy; to_precision builds a new, unpacked model.
    let c = m.clone();
    assert!(c.is_prepacked());
    assert!(!m.to_precision(Precision::F32).unwrap().is_prepacked());
    m.drop_prepacked();
    assert!(!m.is_prepacked());
    assert!(bits(m.forward(&mut wm, &x, b, t).unwrap()) == want);

    // The Trainer: its updates go through params_mut, so a prepacked model
    // handed to it loses the copy at the first step, and its forward then
    // matches an unpacked model on the updated weights.
    let (_, packed) = prepacked(&cfg, 4);
    let mut tr = Trainer::new(packed, TrainConfig::default(), b, t).unwrap();
    let y = tokens(b * t, cfg.vocab_size, 5);
    tr.train_step(&x, &y, b, t).unwrap();
    assert!(
        !tr.model().is_prepacked(),
        "a training step left a stale pack"
    );
    let updated = MoETransformer::from_params(&cfg, tr.model().params().unwrap().to_vec()).unwrap();
    let mut w1 = updated.workspace(b, t, Mode::Inference).unwrap();
    let mut w2 = tr.model().workspace(b, t, Mode::Inference).unwrap();
    let want = bits(updated.forward(&mut w1, &x, b, t).unwrap());
    assert!(bits(tr.model().forward(&mut w2, &x, b, t).unwrap()) == want);
}

#[test]
fn bf16_models_refuse_to_prepack() {
    let mut m = MoETransformer::new_with(&Config::tiny(), 42, Precision::Bf16).unwrap();
    match m.prepack() {
        Err(Error::PrecisionMismatch {
            expected: "f32",
            actual: "bf16",
            what,
        }) => assert!(what.contains("prepack"), "{what}"),
        other => panic!("expected PrecisionMismatch, got {other:?}"),
    }
    assert!(!m.is_prepacked());
    assert_eq!(m.packed_bytes(), 0);
}

/// `forward_packed` against `forward_w` (the model's unpacked GEMM route) at
/// shapes around every routing boundary, depths one and several `KC` blocks.
#[test]
fn forward_packed_matches_the_unpacked_gemm_bit_for_bit() {
    // (din, dout): model shapes and odd ones (dout not a multiple of 16,
    // depth > KC = 256 and not a multiple of it).
    let shapes = [
        (64, 96),
        (64, 512),
        (256, 64),
        (64, 1000),
        (256, 2048),
        (1024, 256),
        (300, 40),
        (513, 130),
        (16, 33),
    ];
    let rows = [
        1, 2, 4, 5, 6, 7, 8, 9, 12, 16, 17, 24, 25, 28, 31, 32, 33, 36, 37, 45, 64, 65, 70,
    ];
    for (si, &(din, dout)) in shapes.iter().enumerate() {
        let w = values(din * dout, 11 + si as u64);
        let mut pk = vec![f32::NAN; linear::packed_len(din, dout)];
        linear::pack_weight(&mut pk, &w, din, dout);
        for &n in &rows {
            let x = values(n * din, 100 + n as u64);
            for acc in [Accum::Set, Accum::Add] {
                let init = values(n * dout, 7);
                let mut want = init.clone();
                linear::forward_w(&mut want, &x, Weight::F32(&w), n, din, dout, acc);
                let mut got = init.clone();
                linear::forward_packed(&mut got, &x, Weight::F32(&w), Some(&pk), n, din, dout, acc);
                assert!(
                    bits(&want) == bits(&got),
                    "x[{n},{din}]·W[{dout},{din}]ᵀ {acc:?}: packed differs"
                );
            }
        }
    }
}

/// The packed copy is what is read (the test above could pass by ignoring it):
/// a packed copy of another weight changes the result, for `n ≥ 5` only.
#[test]
fn forward_packed_reads_the_packed_copy() {
    let (din, dout) = (64, 96);
    let w = values(din * dout, 1);
    let other = values(din * dout, 2);
    let mut pk = vec![0.0; linear::packed_len(din, dout)];
    linear::pack_weight(&mut pk, &other, din, dout);
    for n in [1, 4, 5, 32] {
        let x = values(n * din, 3);
        let mut y = vec![0.0; n * dout];
        linear::forward_packed(
            &mut y,
            &x,
            Weight::F32(&w),
            Some(&pk),
            n,
            din,
            dout,
            Accum::Set,
        );
        let mut y_other = vec![0.0; n * dout];
        linear::forward_w(
            &mut y_other,
            &x,
            Weight::F32(&other),
            n,
            din,
            dout,
            Accum::Set,
        );
        let mut y_w = vec![0.0; n * dout];
        linear::forward_w(&mut y_w, &x, Weight::F32(&w), n, din, dout, Accum::Set);
        let used_packed = bits(&y) == bits(&y_other);
        assert_eq!(used_packed, linear::packed_applies(n), "n = {n}");
        assert_eq!(!used_packed, bits(&y) == bits(&y_w), "n = {n}");
    }
}

/// The portable (non-AVX2) kernels: the packed driver against the unpacked
/// BLIS driver on the same kernel path, and on the AVX2 path against the
/// model's dispatcher (`gemm_with`, which may route to `panel.rs`).
#[test]
fn packed_gemm_matches_on_both_kernel_paths() {
    use portable::Path;
    for &(k, n) in &[(64, 96), (256, 2048), (1024, 256), (300, 40)] {
        let w = values(k * n, 5);
        let mut pk = vec![0.0; portable::packed_len(k, n)];
        portable::pack_b(k, n, &w, 1, k, &mut pk);
        for m in [5, 8, 13, 16, 24, 32, 37, 64] {
            let x = values(m * k, 6);
            for path in [
                Path::Portable,
                Path::Avx2,
                Path::Avx512Narrow,
                Path::Avx512Wide,
                Path::Auto,
            ] {
                let mut want = vec![0.0; m * n];
                portable::gemm_on(path, m, n, k, 1.0, &x, k, 1, &w, 1, k, 0.0, &mut want, n, 1);
                let mut got = vec![f32::NAN; m * n];
                portable::gemm_packed_b_on(path, m, n, k, 1.0, &x, k, 1, &pk, 0.0, &mut got, n, 1);
                assert!(bits(&want) == bits(&got), "{path:?} m{m} n{n} k{k}");
            }
            let mut route = vec![0.0; m * n];
            gemm_with(
                Backend::Portable,
                m,
                n,
                k,
                1.0,
                Mat::n(&x, k),
                Mat::t(&w, k),
                0.0,
                &mut route,
                n,
            );
            let mut got = vec![0.0; m * n];
            portable::gemm_packed_b(m, n, k, 1.0, &x, k, 1, &pk, 0.0, &mut got, n, 1);
            assert!(bits(&route) == bits(&got), "route m{m} n{n} k{k}");
            // With the next-panel prefetch (what the model calls): the same bits.
            let mut got = vec![0.0; m * n];
            portable::gemm_prepacked_b(m, n, k, 1.0, &x, k, 1, &pk, 0.0, &mut got, n, 1);
            assert!(bits(&route) == bits(&got), "prefetching m{m} n{n} k{k}");
        }
    }
}
