//! Inference: KV-cache equivalence with a full forward, sampling
//! distributions, determinism and errors (CONTRACT §5, §6).

use moe_core::{
    generate, generate_greedy, generate_sample, generate_topk, generate_topp, ChaCha8Rng, Config,
    Decoder, Error, MoETransformer, Mode, SamplingStrategy, SeedableRng,
};

fn softmax64(x: &[f32], t: f64) -> Vec<f64> {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = x.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

fn kv_cache_matches_full_forward(cfg: Config, prompt_len: usize, total: usize) {
    let m = MoETransformer::new(&cfg, 42).unwrap();
    let v = cfg.vocab_size;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 97 + 13) % v as u32)
        .collect();
    let mut dec = Decoder::new(&m, total).unwrap();
    let mut seq = prompt.clone();
    let mut cached: Vec<f32> = dec.prefill(&prompt).unwrap().to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    while seq.len() < total {
        let last = &cached[(seq.len() - 1) * v..seq.len() * v];
        let next = SamplingStrategy::Temperature(1.0)
            .pick_token(last, &mut rng)
            .unwrap();
        seq.push(next);
        cached.extend_from_slice(dec.step(next).unwrap());
    }
    assert_eq!(dec.len(), total);
    let mut ws = m.workspace(1, total, Mode::Inference).unwrap();
    let full = m.forward(&mut ws, &seq, 1, total).unwrap();
    let mut max = 0.0f32;
    for (i, (a, b)) in cached.iter().zip(full).enumerate() {
        let err = (a - b).abs();
        max = max.max(err);
        assert!(
            err <= 1e-5 + 1e-5 * b.abs(),
            "position {} logit {}: cached {a} vs full {b}",
            i / v,
            i % v
        );
    }
    println!(
        "c = {}: max |cached − full| = {max:e} over {total} positions",
        cfg.hidden_size
    );
}

#[test]
fn kv_cache_logits_equal_a_full_recompute() {
    kv_cache_matches_full_forward(Config::tiny(), 5, 40);
    kv_cache_matches_full_forward(Config::scale_256(), 3, 12);
    // GQA with two KV heads and a one-token prompt.
    kv_cache_matches_full_forward(
        Config {
            num_key_value_heads: 2,
            ..Config::tiny()
        },
        1,
        20,
    );
}

#[test]
fn generation_beyond_the_context_is_an_error() {
    let m = MoETransformer::new(&Config::tiny(), 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert_eq!(
        generate_greedy(&m, &[1, 2], 513, &mut rng).unwrap_err(),
        Error::SeqTooLong { seq: 513, max: 512 }
    );
    let mut dec = Decoder::new(&m, 4).unwrap();
    dec.prefill(&[1, 2, 3]).unwrap();
    dec.step(4).unwrap();
    assert_eq!(
        dec.step(5).unwrap_err(),
        Error::WorkspaceTooSmall {
            dim: "kv_cache positions",
            requested: 5,
            planned: 4
        }
    );
    assert_eq!(
        Decoder::new(&m, 513).unwrap_err(),
        Error::SeqTooLong { seq: 513, max: 512 }
    );
    assert_eq!(
        generate_greedy(&m, &[], 5, &mut rng).unwrap_err(),
        Error::EmptyInput { arg: "prompt" }
    );
    assert!(matches!(
        generate_greedy(&m, &[1, 2, 3], 2, &mut rng).unwrap_err(),
        Error::InvalidParameter {
            param: "max_len",
            ..
        }
    ));
    assert!(matches!(
        generate_greedy(&m, &[1, 5000], 4, &mut rng).unwrap_err(),
        Error::TokenOutOfRange { token: 5000, .. }
    ));
    assert!(matches!(
        generate_greedy(&m, &[1, 5000], 2, &mut rng).unwrap_err(),
        Error::TokenOutOfRange { token: 5000, .. }
    ));
    let out = generate_greedy(&m, &[7, 8, 9], 10, &mut rng).unwrap();
    assert_eq!(out.len(), 10);
    assert_eq!(&out[..3], &[7, 8, 9]);
    assert!(out.iter().all(|&t| t < 1000));
}

#[test]
fn same_seed_same_tokens_and_wrappers_agree_with_generate() {
    let m = MoETransformer::new(&Config::tiny(), 3).unwrap();
    let run = |s: SamplingStrategy, seed| {
        generate(&m, &[1, 2, 3], 24, s, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap()
    };
    for s in [
        SamplingStrategy::Temperature(0.8),
        SamplingStrategy::TopK {
            k: 5,
            temperature: 1.0,
        },
        SamplingStrategy::TopP {
            p: 0.9,
            temperature: 1.2,
        },
    ] {
        assert_eq!(run(s, 11), run(s, 11));
        assert_ne!(
            run(s, 11),
            run(s, 12),
            "{s:?}: different seeds should differ over 21 sampled tokens"
        );
    }
    let r = || ChaCha8Rng::seed_from_u64(9);
    assert_eq!(
        generate_sample(&m, &[1, 2, 3], 24, 0.8, &mut r()).unwrap(),
        run(SamplingStrategy::Temperature(0.8), 9)
    );
    assert_eq!(
        generate_topk(&m, &[1, 2, 3], 24, 5, 1.0, &mut r()).unwrap(),
        run(
            SamplingStrategy::TopK {
                k: 5,
                temperature: 1.0
            },
            9
        )
    );
    assert_eq!(
        generate_topp(&m, &[1, 2, 3], 24, 0.9, 1.2, &mut r()).unwrap(),
        run(
            SamplingStrategy::TopP {
                p: 0.9,
                temperature: 1.2
            },
            9
        )
    );
    assert_eq!(
        generate_greedy(&m, &[1, 2, 3], 24, &mut r()).unwrap(),
        run(SamplingStrategy::Greedy, 1)
    );
}

const LOGITS: [f32; 8] = [1.0, 2.5, 0.3, 2.5, -1.0, 1.7, 0.0, 2.2];
const DRAWS: usize = 40_000;

fn frequencies(s: SamplingStrategy, logits: &[f32], seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[s.pick_token(logits, &mut rng).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / DRAWS as f64).collect()
}

/// Each empirical frequency within 5 binomial standard deviations of its
/// target (plus a tiny floor): P(false failure) < 8 · 6e-7 per call.
fn assert_matches(label: &str, got: &[f64], want: &[f64]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let sd = (w * (1.0 - w) / DRAWS as f64).sqrt();
        assert!(
            (g - w).abs() <= 5.0 * sd + 1e-4,
            "{label}: token {i} frequency {g:.4} vs target {w:.4}"
        );
    }
}

#[test]
fn temperature_sampling_follows_softmax_over_t() {
    for t in [0.5f32, 1.0, 2.0] {
        let want = softmax64(&LOGITS, t as f64);
        assert_matches(
            &format!("T={t}"),
            &frequencies(SamplingStrategy::Temperature(t), &LOGITS, 1),
            &want,
        );
    }
}

#[test]
fn top_k_keeps_exactly_the_k_largest_with_ties_to_the_lower_index() {
    // Sorted: 2.5 (1), 2.5 (3), 2.2 (7), 1.7 (5), 1.0 (0), …
    for (k, kept) in [
        (1usize, vec![1usize]),
        (2, vec![1, 3]),
        (3, vec![1, 3, 7]),
        (4, vec![1, 3, 7, 5]),
        (8, (0..8).collect()),
    ] {
        let f = frequencies(
            SamplingStrategy::TopK {
                k,
                temperature: 1.0,
            },
            &LOGITS,
            2,
        );
        let mut want = vec![0.0; 8];
        let sub = softmax64(&kept.iter().map(|&i| LOGITS[i]).collect::<Vec<_>>(), 1.0);
        for (&i, p) in kept.iter().zip(sub) {
            want[i] = p;
        }
        for i in 0..8 {
            if !kept.contains(&i) {
                assert_eq!(f[i], 0.0, "k={k}: token {i} outside the top-k was emitted");
            }
        }
        assert_matches(&format!("k={k}"), &f, &want);
    }
    // A tie exactly at the cut-off: k = 1 between two equal maxima keeps the lower index.
    let f = frequencies(
        SamplingStrategy::TopK {
            k: 1,
            temperature: 1.0,
        },
        &[0.0, 3.0, 3.0],
        3,
    );
    assert_eq!(f, vec![0.0, 1.0, 0.0]);
    // k beyond the vocabulary keeps everything.
    let f = frequencies(
        SamplingStrategy::TopK {
            k: 100,
            temperature: 1.0,
        },
        &LOGITS,
        4,
    );
    assert_matches("k=100", &f, &softmax64(&LOGITS, 1.0));
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    for (p, t) in [
        (0.3f32, 1.0f32),
        (0.5, 1.0),
        (0.9, 1.0),
        (0.999, 1.0),
        (1.0, 1.0),
        (0.7, 0.5),
        (0.1, 1.0),
    ] {
        let q = softmax64(&LOGITS, t as f64);
        // Reference: sort descending (stable, lower index first), take the prefix reaching p.
        let mut order: Vec<usize> = (0..8).collect();
        order.sort_by(|&a, &b| q[b].partial_cmp(&q[a]).unwrap().then(a.cmp(&b)));
        let mut kept = Vec::new();
        let mut mass = 0.0;
        for &i in &order {
            kept.push(i);
            mass += q[i];
            if mass >= p as f64 - 1e-9 {
                break;
            }
        }
        let z: f64 = kept.iter().map(|&i| q[i]).sum();
        let mut want = vec![0.0; 8];
        for &i in &kept {
            want[i] = q[i] / z;
        }
        let f = frequencies(SamplingStrategy::TopP { p, temperature: t }, &LOGITS, 5);
        for i in 0..8 {
            if !kept.contains(&i) {
                assert_eq!(
                    f[i], 0.0,
                    "p={p}: token {i} outside the nucleus {kept:?} was emitted"
                );
            }
        }
        assert_matches(&format!("p={p} T={t}"), &f, &want);
    }
}

#[test]
fn temperature_near_zero_approaches_greedy() {
    let greedy = SamplingStrategy::Greedy
        .pick_token(&LOGITS, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    assert_eq!(greedy, 1, "argmax with ties takes the lower index");
    let f = frequencies(SamplingStrategy::Temperature(1e-3), &LOGITS, 6);
    // 2.5 appears twice (indices 1 and 3): they split the mass; everything else vanishes.
    assert!((f[1] + f[3] - 1.0).abs() < 1e-9, "{f:?}");
    assert!(f[1] > 0.45 && f[3] > 0.45, "{f:?}");
    let f = frequencies(
        SamplingStrategy::Temperature(1e-3),
        &[0.1, 0.5, 0.4, -3.0],
        7,
    );
    assert_eq!(f, vec![0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn invalid_sampling_parameters_and_logits_are_errors() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let bad = [
        (SamplingStrategy::Temperature(0.0), "temperature"),
        (SamplingStrategy::Temperature(-1.0), "temperature"),
        (SamplingStrategy::Temperature(f32::NAN), "temperature"),
        (SamplingStrategy::Temperature(f32::INFINITY), "temperature"),
        (
            SamplingStrategy::TopK {
                k: 0,
                temperature: 1.0,
            },
            "k",
        ),
        (
            SamplingStrategy::TopK {
                k: 3,
                temperature: 0.0,
            },
            "temperature",
        ),
        (
            SamplingStrategy::TopP {
                p: 0.0,
                temperature: 1.0,
            },
            "p",
        ),
        (
            SamplingStrategy::TopP {
                p: 1.5,
                temperature: 1.0,
            },
            "p",
        ),
        (
            SamplingStrategy::TopP {
                p: f32::NAN,
                temperature: 1.0,
            },
            "p",
        ),
        (
            SamplingStrategy::TopP {
                p: 0.5,
                temperature: -2.0,
            },
            "temperature",
        ),
    ];
    for (s, param) in bad {
        match s.pick_token(&LOGITS, &mut rng).unwrap_err() {
            Error::InvalidParameter { param: p, .. } => assert_eq!(p, param, "{s:?}"),
            e => panic!("{s:?}: {e:?}"),
        }
    }
    let s = SamplingStrategy::TopP {
        p: 0.9,
        temperature: 1.0,
    };
    assert_eq!(
        s.pick_token(&[], &mut rng).unwrap_err(),
        Error::EmptyInput { arg: "logits" }
    );
    assert_eq!(
        s.pick_token(&[0.0, f32::NAN], &mut rng).unwrap_err(),
        Error::NonFinite {
            what: "logits",
            index: 1
        }
    );
    assert_eq!(
        SamplingStrategy::Greedy
            .pick_token(&[f32::INFINITY, 0.0], &mut rng)
            .unwrap_err(),
        Error::NonFinite {
            what: "logits",
            index: 0
        }
    );
    // Huge but finite logits are fine.
    for s in [
        SamplingStrategy::Temperature(1e-3),
        SamplingStrategy::TopK {
            k: 2,
            temperature: 1.0,
        },
        s,
    ] {
        let t = s.pick_token(&[-3e38, 3e38, 1e38, 0.0], &mut rng).unwrap();
        assert_eq!(t, 1, "{s:?}");
    }
}

/// `pick_token_with` (weights computed once into scratch) picks exactly the
/// token `pick_token` picks, for every strategy, with the same RNG stream —
/// including ties, signed zeros, huge spreads and weights that flush to 0.
#[test]
fn pick_token_with_scratch_is_identical_to_pick_token() {
    use moe_core::RngCore;
    let mut gen = ChaCha8Rng::seed_from_u64(7);
    let mut probs = vec![f32::NAN; 40_000];
    for case in 0..300 {
        let v = 1 + (gen.next_u32() as usize % 3000);
        let spread = [0.01f32, 1.0, 10.0, 100.0, 3000.0][case % 5];
        let logits: Vec<f32> = (0..v)
            .map(|i| match gen.next_u32() % 8 {
                0 => 0.0,
                1 => -0.0,
                2 if i > 0 => 1.5,
                _ => (gen.next_u32() as f32 / u32::MAX as f32 - 0.5) * spread,
            })
            .collect();
        for s in [
            SamplingStrategy::Greedy,
            SamplingStrategy::Temperature(0.7),
            SamplingStrategy::TopK {
                k: 1 + case % 50,
                temperature: 1.3,
            },
            SamplingStrategy::TopP {
                p: [1.0, 0.9, 0.5, 1e-6][case % 4],
                temperature: [0.05f32, 1.0, 2.5][case % 3],
            },
        ] {
            let seed = gen.next_u64();
            let (mut a, mut b) = (
                ChaCha8Rng::seed_from_u64(seed),
                ChaCha8Rng::seed_from_u64(seed),
            );
            for _ in 0..3 {
                assert_eq!(
                    s.pick_token(&logits, &mut a).unwrap(),
                    s.pick_token_with(&logits, &mut probs, &mut b).unwrap(),
                    "case {case}, {s:?}, v = {v}"
                );
            }
        }
    }
    let s = SamplingStrategy::TopP {
        p: 0.9,
        temperature: 1.0,
    };
    assert_eq!(
        s.pick_token_with(&[0.0, 1.0], &mut [0.0], &mut ChaCha8Rng::seed_from_u64(0)),
        Err(Error::ShapeMismatch {
            arg: "probs",
            expected: 2,
            actual: 1
        })
    );
}

/// Per-token time of top-k vs top-p (with and without the scratch) at
/// v = 1,000 and 32,000: `cargo test --release -p moe-tests pick_token_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn pick_token_timing() {
    use moe_core::RngCore;
    use std::time::Instant;
    for v in [1000usize, 32_000] {
        let mut gen = ChaCha8Rng::seed_from_u64(1);
        let logits: Vec<f32> = (0..v)
            .map(|_| (gen.next_u32() as f32 / u32::MAX as f32 - 0.5) * 20.0)
            .collect();
        let mut probs = vec![0.0f32; v];
        let k = SamplingStrategy::TopK {
            k: 40,
            temperature: 0.8,
        };
        let p = SamplingStrategy::TopP {
            p: 0.9,
            temperature: 0.8,
        };
        let reps = if v > 10_000 { 60 } else { 1000 };
        let time = |f: &mut dyn FnMut() -> u32| {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t0 = Instant::now();
                let mut acc = 0u32;
                for _ in 0..reps {
                    acc = acc.wrapping_add(f());
                }
                std::hint::black_box(acc);
                best = best.min(t0.elapsed().as_secs_f64() / reps as f64 * 1e6);
            }
            best
        };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let tk = time(&mut || k.pick_token_with(&logits, &mut probs, &mut rng).unwrap());
        let tp_old = time(&mut || p.pick_token(&logits, &mut rng).unwrap());
        let tp = time(&mut || p.pick_token_with(&logits, &mut probs, &mut rng).unwrap());
        println!(
            "v = {v}: top-k {tk:.1} µs, top-p recomputing exp {tp_old:.1} µs, top-p stored {tp:.1} µs ({:.2}× top-k)",
            tp / tk
        );
    }
}
