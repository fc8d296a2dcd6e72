//! Whole-model parity of moe-core (f32) with the naive `f64` reference
//! (`moe_tests::reference`) on the benchmark profiles: logits of `forward`,
//! the CE / aux / total losses of `loss_and_grad`, `alpha = 0` giving exactly
//! CE, and `aux = k` under uniform routing.

use moe_core::{Config, MoETransformer, Mode};
use moe_tests::reference as r;
use moe_tests::reference::to_f64;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const SEED: u64 = 42;

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut g = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| g.next_u32() % vocab as u32).collect()
}

/// Max `|core − ref|`, asserting `|core − ref| <= 1e-4 + 1e-4·|ref|` everywhere.
fn check_logits(label: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let mut max = 0.0f64;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let err = (a as f64 - b).abs();
        assert!(
            err <= 1e-4 + 1e-4 * b.abs(),
            "{label}: logits[{i}] = {a}, reference {b}"
        );
        max = max.max(err);
    }
    let big = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    println!("{label}: max |logit| {big:.3}, max abs diff {max:.2e}");
    max
}

fn forward_parity(label: &str, cfg: &Config, b: usize, t: usize) {
    let model = MoETransformer::new(cfg, SEED).unwrap();
    let toks = tokens(b * t, cfg.vocab_size, 7);
    // A workspace planned larger than the step must not change the result.
    let mut ws = model.workspace(b + 1, t + 5, Mode::Inference).unwrap();
    let logits = model.forward(&mut ws, &toks, b, t).unwrap().to_vec();
    let want = r::forward(cfg, &to_f64(model.params().unwrap()), &toks, b, t);
    check_logits(label, &logits, &want);
    // The training workspace computes the same logits.
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut grads = vec![0.0; model.layout().total];
    let mut out = vec![f32::NAN; logits.len()];
    model
        .loss_and_grad(
            &mut ws,
            &mut grads,
            &toks,
            &toks,
            b,
            t,
            0.01,
            Some(&mut out),
        )
        .unwrap();
    check_logits(&format!("{label} (training)"), &out, &want);
}

#[test]
fn tiny_forward_matches_reference() {
    forward_parity("tiny b2 t32", &Config::tiny(), 2, 32);
}

#[test]
fn scale_256_forward_matches_reference() {
    forward_parity("scale_256 b1 t16", &Config::scale_256(), 1, 16);
}

#[test]
fn losses_match_reference() {
    let cfg = Config::tiny();
    let (b, t) = (2, 32);
    let model = MoETransformer::new(&cfg, SEED).unwrap();
    let toks = tokens(b * t, cfg.vocab_size, 8);
    let targets = tokens(b * t, cfg.vocab_size, 9);
    let params = to_f64(model.params().unwrap());
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut grads = vec![0.0; model.layout().total];
    for alpha in [0.01f32, 0.0, 10.0] {
        grads.iter_mut().for_each(|g| *g = 0.0);
        let got = model
            .loss_and_grad(&mut ws, &mut grads, &toks, &targets, b, t, alpha, None)
            .unwrap();
        let (total, ce, aux) = r::loss(&cfg, &params, &toks, &targets, b, t, alpha as f64);
        println!(
            "tiny α={alpha}: core total {} ce {} aux {} | reference total {total} ce {ce} aux {aux}",
            got.loss, got.ce, got.aux
        );
        let close = |what: &str, a: f32, b: f64| {
            assert!(
                (a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
                "α={alpha} {what}: core {a}, reference {b}"
            );
        };
        close("ce", got.ce, ce);
        close("aux", got.aux, aux);
        close("total", got.loss, total);
        if alpha == 0.0 {
            assert_eq!(
                got.loss.to_bits(),
                got.ce.to_bits(),
                "α = 0 must give exactly CE"
            );
        }
    }
}

#[test]
fn uniform_routing_gives_aux_equal_to_k() {
    for cfg in [
        Config::tiny(),
        Config {
            num_local_experts: 5,
            num_experts_per_tok: 3,
            ..Config::tiny()
        },
    ] {
        let (b, t) = (2, 8);
        let mut model = MoETransformer::new(&cfg, SEED).unwrap();
        let layout = model.layout().clone();
        for l in 0..cfg.num_hidden_layers {
            let info = layout
                .get(&format!("model.layers.{l}.block_sparse_moe.gate.weight"))
                .unwrap();
            model.params_mut().unwrap()[info.range()]
                .iter_mut()
                .for_each(|w| *w = 0.0);
        }
        let toks = tokens(b * t, cfg.vocab_size, 10);
        let mut ws = model.workspace(b, t, Mode::Training).unwrap();
        let mut grads = vec![0.0; layout.total];
        let got = model
            .loss_and_grad(&mut ws, &mut grads, &toks, &toks, b, t, 0.01, None)
            .unwrap();
        let k = cfg.num_experts_per_tok as f64;
        let (_, _, aux) = r::loss(
            &cfg,
            &to_f64(model.params().unwrap()),
            &toks,
            &toks,
            b,
            t,
            0.01,
        );
        println!(
            "uniform e{} k{k}: core aux {} reference aux {aux}",
            cfg.num_local_experts, got.aux
        );
        assert!((aux - k).abs() < 1e-12, "reference aux {aux} != k {k}");
        assert!(
            (got.aux as f64 - k).abs() <= 1e-6 * k,
            "core aux {} != k {k}",
            got.aux
        );
    }
}

#[test]
fn loss_and_grad_accumulates_into_grads() {
    let cfg = Config::tiny();
    let (b, t) = (1, 8);
    let model = MoETransformer::new(&cfg, SEED).unwrap();
    let toks = tokens(b * t, cfg.vocab_size, 11);
    let targets = tokens(b * t, cfg.vocab_size, 12);
    let mut ws = model.workspace(b, t, Mode::Training).unwrap();
    let mut once = vec![0.0f32; model.layout().total];
    model
        .loss_and_grad(&mut ws, &mut once, &toks, &targets, b, t, 0.01, None)
        .unwrap();
    let mut twice = vec![0.0f32; model.layout().total];
    for _ in 0..2 {
        model
            .loss_and_grad(&mut ws, &mut twice, &toks, &targets, b, t, 0.01, None)
            .unwrap();
    }
    let big = once.iter().fold(0.0f64, |m, &g| m.max((g as f64).abs()));
    assert!(big > 0.0, "zero gradient");
    for (i, (&a, &b)) in once.iter().zip(&twice).enumerate() {
        // Partial sums round differently when accumulated onto g: not bitwise.
        let err = (2.0 * a as f64 - b as f64).abs();
        assert!(
            err <= 1e-6 * big + 1e-5 * (a as f64).abs(),
            "grads[{i}]: once {a}, twice {b}"
        );
    }
}
