//! Training memory modes (`Memory`: activation checkpointing, attention
//! statistics instead of probabilities) and the in-place gradients: every
//! mode computes bit-identical losses and gradients, allocates nothing per
//! step, and shrinks the plan as stated in docs/runtime.md.

use moe_bench::harness::sys::alloc_counter::AllocSnapshot;
use moe_core::attention::{self, flash};
use moe_core::loss;
use moe_core::swiglu::SwiGLU;
use moe_core::{
    AttnMemory, Config, Dims, Losses, Memory, MoETransformer, Mode, PlanEntry, Recompute, Workspace,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const MODES: [Memory; 4] = [
    Memory {
        recompute: Recompute::None,
        attention: AttnMemory::Saved,
    },
    Memory {
        recompute: Recompute::Layers,
        attention: AttnMemory::Saved,
    },
    Memory {
        recompute: Recompute::None,
        attention: AttnMemory::Lse,
    },
    Memory::LOW,
];

fn uniform(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

fn tokens(n: usize, v: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7919 + salt) % v as u32)
        .collect()
}

/// Losses, gradients and the logits of one `loss_and_grad` in workspace `ws`.
fn step(
    m: &MoETransformer,
    ws: &mut Workspace,
    b: usize,
    t: usize,
    salt: u32,
) -> (Losses, Vec<f32>, Vec<f32>) {
    let v = m.config().vocab_size;
    let (x, y) = (tokens(b * t, v, salt), tokens(b * t, v, salt + 3));
    let mut g = vec![0.0; m.layout().total];
    let mut logits = vec![0.0; b * t * v];
    let l = m
        .loss_and_grad(ws, &mut g, &x, &y, b, t, 0.02, Some(&mut logits))
        .unwrap();
    (l, g, logits)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn every_memory_mode_gives_bit_identical_gradients() {
    // tiny (2 layers, h4/kv1) and scale_256 (d = 64), at a shape smaller than
    // the plan (the carve at a step's own shape) and at the plan's.
    for (cfg, shapes) in [
        (Config::tiny(), [(1, 17), (2, 24)]),
        (Config::scale_256(), [(2, 9), (1, 12)]),
    ] {
        let m = MoETransformer::new(&cfg, 7).unwrap();
        for &(b, t) in &shapes {
            let mut base_ws = m.workspace(2, 24, Mode::Training).unwrap();
            let (bb, bt) = (b, t);
            let (l0, g0, z0) = step(&m, &mut base_ws, bb, bt, 1);
            assert!(g0.iter().any(|&x| x != 0.0));
            for mem in MODES {
                let mut ws = m.workspace_with(2, 24, Mode::Training, mem).unwrap();
                assert_eq!(ws.memory(), mem);
                // Twice: the second step reuses the carved buffers.
                for _ in 0..2 {
                    let (l, g, z) = step(&m, &mut ws, bb, bt, 1);
                    assert_eq!(l.loss.to_bits(), l0.loss.to_bits(), "{mem:?} loss");
                    assert_eq!(l.aux.to_bits(), l0.aux.to_bits(), "{mem:?} aux");
                    assert!(bits(&z) == bits(&z0), "{mem:?}: logits differ");
                    let diff = g
                        .iter()
                        .zip(&g0)
                        .position(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(
                        diff, None,
                        "{mem:?} c{} b{bb} s{bt}: gradient",
                        cfg.hidden_size
                    );
                }
            }
        }
    }
}

#[test]
fn a_different_batch_changes_the_gradients() {
    // The comparison above can fail: other tokens give other bits.
    let m = MoETransformer::new(&Config::tiny(), 7).unwrap();
    let mut ws = m.workspace_with(2, 8, Mode::Training, Memory::LOW).unwrap();
    let (_, g1, _) = step(&m, &mut ws, 2, 8, 1);
    let (_, g2, _) = step(&m, &mut ws, 2, 8, 2);
    assert_ne!(bits(&g1), bits(&g2));
}

#[test]
fn memory_modes_keep_inference_unchanged() {
    let cfg = Config::tiny();
    let m = MoETransformer::new(&cfg, 3).unwrap();
    let x = tokens(16, cfg.vocab_size, 9);
    let mut a = m.workspace(2, 8, Mode::Inference).unwrap();
    let mut b = m
        .workspace_with(2, 8, Mode::Inference, Memory::LOW)
        .unwrap();
    assert_eq!(a.bytes(), b.bytes(), "inference ignores the options");
    let za = m.forward(&mut a, &x, 2, 8).unwrap().to_vec();
    let zb = m.forward(&mut b, &x, 2, 8).unwrap().to_vec();
    assert_eq!(bits(&za), bits(&zb));
}

fn plan_bytes(ws: &Workspace, name: &str) -> usize {
    ws.plan()
        .iter()
        .filter(|e| e.name == name)
        .map(PlanEntry::bytes)
        .sum()
}

#[test]
fn tiny_b8_s512_training_plan_meets_the_target() {
    let cfg = Config::tiny();
    let full = Workspace::new(&cfg, 8, 512, Mode::Training).unwrap();
    let low = Workspace::with_memory(&cfg, 8, 512, Mode::Training, Memory::LOW).unwrap();
    // Saved probabilities [b, h, t, t] per layer vs one row [t].
    assert_eq!(plan_bytes(&full, "probs"), 2 * 8 * 4 * 512 * 512 * 4);
    assert_eq!(plan_bytes(&low, "probs"), 512 * 4);
    assert_eq!(plan_bytes(&low, "row_max"), 8 * 4 * 512 * 4);
    assert_eq!(plan_bytes(&full, "row_max"), 0);
    // Checkpoints [L−1, n, c] only under recompute; one copy of h13 [s, 2f].
    assert_eq!(plan_bytes(&low, "ckpt"), 4096 * 64 * 4);
    assert_eq!(plan_bytes(&full, "ckpt"), 0);
    assert_eq!(plan_bytes(&low, "h13"), 8192 * 512 * 4);
    assert_eq!(plan_bytes(&full, "h13"), 2 * 8192 * 512 * 4);
    // No separate gradient buffers for what is computed in place.
    for gone in ["dlogits", "dh13", "dact", "dxg", "dye"] {
        assert!(full.plan().iter().all(|e| e.name != gone), "{gone}");
    }
    assert!(low.bytes() <= 70_000_000, "LOW plan {} B", low.bytes());
    assert!(full.bytes() > 2 * low.bytes());
    // Linear in t: doubling s from 256 to 512 at most doubles the LOW plan.
    let half = Workspace::with_memory(&cfg, 8, 256, Mode::Training, Memory::LOW).unwrap();
    assert!(low.bytes() <= 2 * half.bytes() + 4096);
}

#[test]
fn low_memory_steps_allocate_nothing() {
    for cfg in [Config::tiny(), Config::scale_256()] {
        let m = MoETransformer::new(&cfg, 42).unwrap();
        let mut ws = m
            .workspace_with(4, 16, Mode::Training, Memory::LOW)
            .unwrap();
        let v = cfg.vocab_size;
        let shapes = [(2, 8), (4, 16), (1, 3)];
        let data: Vec<_> = shapes
            .iter()
            .map(|&(b, t)| (tokens(b * t, v, 1), tokens(b * t, v, 5)))
            .collect();
        let mut g = vec![0.0; m.layout().total];
        m.loss_and_grad(&mut ws, &mut g, &data[0].0, &data[0].1, 2, 8, 0.01, None)
            .unwrap();
        for _ in 0..2 {
            for (&(b, t), (x, y)) in shapes.iter().zip(&data) {
                g.iter_mut().for_each(|x| *x = 0.0);
                let before = AllocSnapshot::this_thread();
                let l = m.loss_and_grad(&mut ws, &mut g, x, y, b, t, 0.01, None);
                let d = AllocSnapshot::this_thread().since(before);
                assert!(l.unwrap().loss.is_finite());
                assert_eq!((d.count, d.bytes), (0, 0), "b{b} s{t} allocated");
            }
        }
    }
}

#[test]
fn lse_attention_matches_saved_probabilities_bit_for_bit() {
    // Unit level: flash forward/backward vs attention::forward/backward, GQA
    // (h = 4, kv = 2), two sequences.
    let mut cfg = Config::tiny();
    cfg.num_key_value_heads = 2;
    let (b, t) = (2, 13);
    let dm = Dims::new(&cfg, b, t);
    let hd = dm.h * dm.d;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let qkv = uniform(&mut rng, dm.n * dm.q, 2.0);
    let datt = uniform(&mut rng, dm.n * hd, 1.0);
    let (mut a0, mut p) = (vec![0.0; dm.n * hd], vec![0.0; b * dm.h * t * t]);
    attention::forward(&mut a0, &mut p, &qkv, &dm, true).unwrap();
    let mut d0 = vec![0.0; dm.n * dm.q];
    attention::backward(&mut d0, &mut vec![0.0; t * t], &datt, &p, &qkv, &dm);
    let (mut a1, mut row) = (vec![0.0; dm.n * hd], vec![0.0; t]);
    let (mut mx, mut inv) = (vec![0.0; b * dm.h * t], vec![0.0; b * dm.h * t]);
    flash::forward(&mut a1, &mut row, &mut mx, &mut inv, &qkv, &dm).unwrap();
    assert_eq!(bits(&a0), bits(&a1));
    // The statistics reproduce every saved probability exactly.
    let mut d1 = vec![f32::NAN; dm.n * dm.q];
    let mut dp = vec![0.0; t];
    flash::backward(&mut d1, &mut row, &mut dp, &datt, &mx, &inv, &qkv, &dm);
    assert_eq!(bits(&d0), bits(&d1));
    assert!(d1.iter().all(|x| x.is_finite()) && d1.iter().any(|&x| x != 0.0));
    // A too-short statistics buffer is a typed error, not a panic.
    let e = flash::forward(&mut a1, &mut row, &mut mx[..5], &mut inv, &qkv, &dm).unwrap_err();
    assert!(matches!(
        e,
        moe_core::Error::ShapeMismatch { arg: "row_max", .. }
    ));
}

#[test]
fn lse_forward_reports_non_finite_scores() {
    let cfg = Config::tiny();
    let (b, t) = (1, 4);
    let dm = Dims::new(&cfg, b, t);
    let mut qkv = vec![0.1; dm.n * dm.q];
    qkv[2 * dm.q] = f32::NAN; // query row 2, head 0
    let mut att = vec![0.0; dm.n * dm.h * dm.d];
    let (mut mx, mut inv, mut row) = (vec![0.0; dm.h * t], vec![0.0; dm.h * t], vec![0.0; t]);
    let e = flash::forward(&mut att, &mut row, &mut mx, &mut inv, &qkv, &dm).unwrap_err();
    assert!(matches!(
        e,
        moe_core::Error::NonFinite {
            what: "attention scores",
            index: 2
        }
    ));
}

#[test]
fn in_place_expert_and_ce_gradients_equal_the_separate_ones() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (c, f, m) = (24, 40, 7);
    let w13 = uniform(&mut rng, 2 * f * c, 0.3);
    let w2 = uniform(&mut rng, c * f, 0.3);
    let ex = SwiGLU {
        w13: moe_core::Weight::F32(&w13),
        w2: moe_core::Weight::F32(&w2),
        c,
        f,
    };
    let xg = uniform(&mut rng, m * c, 1.0);
    let dy = uniform(&mut rng, m * c, 1.0);
    let (mut y, mut h13, mut act) = (vec![0.0; m * c], vec![0.0; m * 2 * f], vec![0.0; m * f]);
    ex.forward(&mut y, &mut h13, &mut act, &xg, m);
    let (mut dxg, mut dw13, mut dw2) = (vec![0.0; m * c], vec![0.0; 2 * f * c], vec![0.0; c * f]);
    let (mut dh13, mut dact) = (vec![0.0; m * 2 * f], vec![0.0; m * f]);
    ex.backward(
        &mut dxg, &mut dw13, &mut dw2, &mut dh13, &mut dact, &dy, &xg, &h13, &act, m,
    );
    let (mut x2, mut h2, mut a2) = (xg.clone(), h13.clone(), act.clone());
    let (mut dw13b, mut dw2b) = (vec![0.0; 2 * f * c], vec![0.0; c * f]);
    ex.backward_inplace(&mut dw13b, &mut dw2b, &dy, &mut x2, &mut h2, &mut a2, m);
    assert_eq!(bits(&x2), bits(&dxg));
    assert_eq!(bits(&h2), bits(&dh13));
    assert_eq!(bits(&a2), bits(&dact));
    assert_eq!(bits(&dw13b), bits(&dw13));
    assert_eq!(bits(&dw2b), bits(&dw2));

    let (n, v) = (5, 33);
    let z = uniform(&mut rng, n * v, 6.0);
    let tg: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let (mut dz, mut ce0) = (vec![0.0; n * v], vec![0.0; n]);
    let l0 = loss::cross_entropy(&mut dz, &mut ce0, &z, &tg, v).unwrap();
    let (mut zi, mut ce1) = (z.clone(), vec![0.0; n]);
    let l1 = loss::cross_entropy_inplace(&mut zi, &mut ce1, &tg, v).unwrap();
    assert_eq!(l0.to_bits(), l1.to_bits());
    assert_eq!(bits(&zi), bits(&dz));
    assert_eq!(bits(&ce0), bits(&ce1));
    let bad = [0, 1, 2, 3, v as u32];
    let e = loss::cross_entropy_inplace(&mut zi, &mut ce1, &bad, v).unwrap_err();
    assert!(matches!(
        e,
        moe_core::Error::TokenOutOfRange { index: 4, .. }
    ));
}

#[test]
fn a_reused_workspace_gives_the_bits_of_a_fresh_one_in_every_memory_mode() {
    // The arena is never re-filled between steps (docs/runtime.md): a step
    // must write every buffer before reading it. A fresh workspace holds the
    // poison (NaN / u32::MAX), a reused one the previous step's values at a
    // larger and then a smaller shape; all must give the fresh step's bits.
    let cfg = Config::tiny();
    let m = MoETransformer::new(&cfg, 11).unwrap();
    let bf16 = Memory {
        recompute: Recompute::None,
        attention: AttnMemory::SavedBf16,
    };
    for mem in MODES.into_iter().chain([bf16]) {
        let fresh = |b, t| {
            let mut ws = Workspace::with_memory(&cfg, 4, 16, Mode::Training, mem).unwrap();
            step(&m, &mut ws, b, t, 5)
        };
        let (l_small, g_small, z_small) = fresh(2, 8);
        let (l_big, g_big, z_big) = fresh(4, 16);
        let mut ws = Workspace::with_memory(&cfg, 4, 16, Mode::Training, mem).unwrap();
        for _ in 0..2 {
            let (l, g, z) = step(&m, &mut ws, 4, 16, 5);
            assert_eq!(
                (l.ce.to_bits(), l.aux.to_bits()),
                (l_big.ce.to_bits(), l_big.aux.to_bits()),
                "{mem:?}"
            );
            assert_eq!(bits(&g), bits(&g_big), "{mem:?}");
            assert_eq!(bits(&z), bits(&z_big), "{mem:?}");
            let (l, g, z) = step(&m, &mut ws, 2, 8, 5);
            assert_eq!(
                (l.ce.to_bits(), l.aux.to_bits()),
                (l_small.ce.to_bits(), l_small.aux.to_bits()),
                "{mem:?}"
            );
            assert_eq!(bits(&g), bits(&g_small), "{mem:?}");
            assert_eq!(bits(&z), bits(&z_small), "{mem:?}");
        }
        assert!(l_small.ce.is_finite() && g_small.iter().all(|x| x.is_finite()));
    }
    // Inference, with a KV cache's score rows in between (a longer row than the step's).
    let mut ws = m.workspace(2, 32, Mode::Inference).unwrap();
    let x = tokens(64, cfg.vocab_size, 1);
    let first = bits(m.forward(&mut ws, &x[..16], 2, 8).unwrap());
    m.forward(&mut ws, &x, 2, 32).unwrap();
    assert_eq!(first, bits(m.forward(&mut ws, &x[..16], 2, 8).unwrap()));
}
