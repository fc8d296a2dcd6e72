//! Property tests of CONTRACT §6: random *invalid* configs, shapes, token ids
//! and sampling parameters give the right typed `Err` variant — never a panic —
//! and random valid ones succeed.
//!
//! Each invalid case breaks exactly one rule of a valid baseline, so the
//! expected variant (and the argument it names) is known.

use moe_core::ChaCha8Rng;
use moe_core::{
    generate, Config, Error, KvCache, Layout, MoETransformer, Mode, SamplingStrategy, SeedableRng,
    TrainConfig, Trainer, Workspace,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence};

const CASES: u32 = 2048;
/// Cases that build a model (still tiny: a few µs each).
const MODEL_CASES: u32 = 512;

/// proptest's config with `cases` cases. Failing inputs persist to
/// `tests/proptest-regressions/proptest_errors.txt` (the path is relative to the
/// package root, where `cargo test` runs): the default `SourceParallel`
/// persistence looks for a `lib.rs`/`main.rs` next to the test file, finds
/// none for an integration test and would persist nothing.
fn pt_config(cases: u32) -> PtConfig {
    PtConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/proptest_errors.txt",
        ))),
        ..PtConfig::default()
    }
}
fn base() -> Config {
    Config {
        vocab_size: 17,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 4,
        intermediate_size: 8,
        num_local_experts: 3,
        num_experts_per_tok: 2,
        max_position_embeddings: 12,
        ..Config::tiny()
    }
}

/// A config with exactly one invalid field, and that field's name.
fn invalid_config() -> impl Strategy<Value = (Config, &'static str)> {
    let b = base();
    prop_oneof![
        Just((Config { vocab_size: 0, ..b }, "vocab_size")),
        Just((
            Config {
                hidden_size: 0,
                ..b
            },
            "hidden_size"
        )),
        Just((
            Config {
                num_hidden_layers: 0,
                ..b
            },
            "num_hidden_layers"
        )),
        Just((
            Config {
                num_attention_heads: 0,
                ..b
            },
            "num_attention_heads"
        )),
        Just((
            Config {
                num_key_value_heads: 0,
                ..b
            },
            "num_key_value_heads"
        )),
        Just((Config { head_dim: 0, ..b }, "head_dim")),
        Just((
            Config {
                intermediate_size: 0,
                ..b
            },
            "intermediate_size"
        )),
        Just((
            Config {
                num_local_experts: 0,
                num_experts_per_tok: 0,
                ..b
            },
            "num_local_experts"
        )),
        Just((
            Config {
                num_experts_per_tok: 0,
                ..b
            },
            "num_experts_per_tok"
        )),
        Just((
            Config {
                max_position_embeddings: 0,
                ..b
            },
            "max_position_embeddings"
        )),
        // h % kv != 0: kv in 1..=16 not dividing h in 1..=16.
        (1usize..=16, 1usize..=16)
            .prop_filter("kv must not divide h", |(h, kv)| h % kv != 0)
            .prop_map(move |(h, kv)| (
                Config {
                    num_attention_heads: h,
                    num_key_value_heads: kv,
                    ..b
                },
                "num_key_value_heads"
            )),
        // Odd head dim.
        (0usize..32).prop_map(move |x| (
            Config {
                head_dim: 2 * x + 1,
                ..b
            },
            "head_dim"
        )),
        // k > e.
        (1usize..8, 1usize..8).prop_map(move |(e, extra)| (
            Config {
                num_local_experts: e,
                num_experts_per_tok: e + extra,
                ..b
            },
            "num_experts_per_tok"
        )),
        // NTK alpha > 1 with d = 2.
        (1.001f32..100.0).prop_map(move |a| (
            Config {
                head_dim: 2,
                rope_alpha: a,
                ..b
            },
            "head_dim"
        )),
        // Non-finite or non-positive floats.
        bad_float().prop_map(move |x| (Config { rope_base: x, ..b }, "rope_base")),
        bad_float().prop_map(move |x| (Config { rope_alpha: x, ..b }, "rope_alpha")),
        bad_float().prop_map(move |x| (
            Config {
                rms_norm_eps: x,
                ..b
            },
            "rms_norm_eps"
        )),
    ]
}

fn bad_float() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(0.0f32),
        Just(-0.0f32),
        -1e30f32..0.0,
    ]
}

/// An invalid sampling strategy and the parameter it gets wrong.
fn invalid_strategy() -> impl Strategy<Value = (SamplingStrategy, &'static str)> {
    let good_t = 0.01f32..10.0;
    prop_oneof![
        bad_float().prop_map(|t| (SamplingStrategy::Temperature(t), "temperature")),
        bad_float().prop_map(|t| (
            SamplingStrategy::TopK {
                k: 3,
                temperature: t
            },
            "temperature"
        )),
        good_t.clone().prop_map(|t| (
            SamplingStrategy::TopK {
                k: 0,
                temperature: t
            },
            "k"
        )),
        (
            prop_oneof![
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                Just(0.0f32),
                -10.0f32..=0.0,
                1.000_001f32..1e30
            ],
            good_t.clone()
        )
            .prop_map(|(p, t)| (SamplingStrategy::TopP { p, temperature: t }, "p")),
        (0.01f32..=1.0, bad_float())
            .prop_map(|(p, t)| (SamplingStrategy::TopP { p, temperature: t }, "temperature")),
    ]
}

fn valid_strategy() -> impl Strategy<Value = SamplingStrategy> {
    prop_oneof![
        Just(SamplingStrategy::Greedy),
        (1e-3f32..100.0).prop_map(SamplingStrategy::Temperature),
        (1usize..40, 1e-3f32..100.0)
            .prop_map(|(k, temperature)| SamplingStrategy::TopK { k, temperature }),
        (1e-6f32..=1.0, 1e-3f32..100.0)
            .prop_map(|(p, temperature)| SamplingStrategy::TopP { p, temperature }),
    ]
}

/// Finite logits including huge and tiny magnitudes and exact ties.
fn finite_logits() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            4 => -20.0f32..20.0,
            1 => Just(1.0f32),
            1 => Just(f32::MAX),
            1 => Just(-f32::MAX),
            1 => -3e38f32..3e38,
            1 => -1e-38f32..1e-38,
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(pt_config(CASES))]

    #[test]
    fn invalid_configs_name_the_field((cfg, field) in invalid_config()) {
        let errs = [
            cfg.validate().unwrap_err(),
            Layout::new(&cfg).unwrap_err(),
            MoETransformer::new(&cfg, 1).unwrap_err(),
            MoETransformer::from_params(&cfg, vec![0.0; 4]).unwrap_err(),
            Workspace::new(&cfg, 1, 1, Mode::Inference).unwrap_err(),
            Workspace::new(&cfg, 1, 1, Mode::Training).unwrap_err(),
            KvCache::new(&cfg, 1).unwrap_err(),
        ];
        for e in errs {
            match &e {
                Error::InvalidConfig { field: f, .. } => prop_assert_eq!(*f, field, "{:?}", cfg),
                other => prop_assert!(false, "{}: expected InvalidConfig, got {:?}", field, other),
            }
            prop_assert!(e.to_string().contains(field), "{}", e);
        }
    }

    #[test]
    fn invalid_sampling_parameters_name_the_parameter(
        (s, param) in invalid_strategy(),
        logits in finite_logits(),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        match s.pick_token(&logits, &mut rng) {
            Err(Error::InvalidParameter { param: p, .. }) => prop_assert_eq!(p, param),
            other => prop_assert!(false, "{:?}: expected InvalidParameter({}), got {:?}", s, param, other),
        }
        prop_assert!(s.validate().is_err());
    }

    #[test]
    fn sampling_valid_parameters_picks_a_kept_token(
        s in valid_strategy(),
        logits in finite_logits(),
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tok = s.pick_token(&logits, &mut rng).unwrap() as usize;
        prop_assert!(tok < logits.len());
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        match s {
            SamplingStrategy::Greedy => {
                let first = logits.iter().position(|&x| x == max).unwrap();
                prop_assert_eq!(tok, first);
            }
            SamplingStrategy::TopK { k, .. } => {
                // At most k-1 tokens rank strictly above the pick (ties: lower index first).
                let above = logits
                    .iter()
                    .enumerate()
                    .filter(|&(j, &x)| x > logits[tok] || (x == logits[tok] && j < tok))
                    .count();
                prop_assert!(above < k, "token {} has {} above it with k = {}", tok, above, k);
            }
            _ => {}
        }
    }

    #[test]
    fn non_finite_or_empty_logits_are_errors(
        s in valid_strategy(),
        mut logits in finite_logits(),
        bad in prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
        at in any::<prop::sample::Index>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let i = at.index(logits.len());
        logits[i] = bad;
        prop_assert_eq!(
            s.pick_token(&logits, &mut rng).unwrap_err(),
            Error::NonFinite { what: "logits", index: i }
        );
        prop_assert_eq!(s.pick_token(&[], &mut rng).unwrap_err(), Error::EmptyInput { arg: "logits" });
    }
}

/// A shape request against a workspace planned for `(MAX_B, MAX_T)`.
const MAX_B: usize = 2;
const MAX_T: usize = 6;

/// What a `(b, t, tokens)` request must give, in the documented check order:
/// empty, too long for the model, beyond the plan, wrong length, bad id.
fn expected_forward_error(cfg: &Config, b: usize, t: usize, tokens: &[u32]) -> Option<Error> {
    if b == 0 {
        return Some(Error::EmptyInput { arg: "batch" });
    }
    if t == 0 {
        return Some(Error::EmptyInput { arg: "seq" });
    }
    if t > cfg.max_position_embeddings {
        return Some(Error::SeqTooLong {
            seq: t,
            max: cfg.max_position_embeddings,
        });
    }
    if b > MAX_B {
        return Some(Error::WorkspaceTooSmall {
            dim: "batch",
            requested: b,
            planned: MAX_B,
        });
    }
    if t > MAX_T {
        return Some(Error::WorkspaceTooSmall {
            dim: "seq",
            requested: t,
            planned: MAX_T,
        });
    }
    if tokens.len() != b * t {
        return Some(Error::ShapeMismatch {
            arg: "tokens",
            expected: b * t,
            actual: tokens.len(),
        });
    }
    tokens
        .iter()
        .position(|&x| x as usize >= cfg.vocab_size)
        .map(|index| Error::TokenOutOfRange {
            arg: "tokens",
            index,
            token: tokens[index],
            vocab: cfg.vocab_size,
        })
}

/// Shapes around the limits and token ids around `vocab` (17).
fn request() -> impl Strategy<Value = (usize, usize, Vec<u32>)> {
    (0usize..=4, prop_oneof![0usize..=8, 11usize..=14]).prop_flat_map(|(b, t)| {
        let n = b * t;
        let len = prop_oneof![3 => Just(n), 1 => 0usize..=n + 3];
        let id = prop_oneof![8 => 0u32..17, 1 => 17u32..20, 1 => Just(u32::MAX)];
        (
            Just(b),
            Just(t),
            len.prop_flat_map(move |l| prop::collection::vec(id.clone(), l)),
        )
    })
}

proptest! {
    #![proptest_config(pt_config(MODEL_CASES))]

    #[test]
    fn bad_shapes_and_token_ids_give_the_right_error(
        (b, t, tokens) in request(),
        targets_off in any::<bool>(),
    ) {
        let cfg = base();
        let model = MoETransformer::new(&cfg, 5).unwrap();
        let want = expected_forward_error(&cfg, b, t, &tokens);

        let mut ws = model.workspace(MAX_B, MAX_T, Mode::Inference).unwrap();
        let got = model.forward(&mut ws, &tokens, b, t);
        match (&want, got) {
            (None, Ok(logits)) => {
                prop_assert_eq!(logits.len(), b * t * cfg.vocab_size);
                prop_assert!(logits.iter().all(|x| x.is_finite()));
            }
            (Some(w), Err(e)) => prop_assert_eq!(w, &e),
            (w, g) => prop_assert!(false, "forward: want {:?}, got {:?}", w, g.map(|l| l.len())),
        }

        // Training: the same checks, then the targets (a copy of the tokens with
        // one id pushed out of range when `targets_off`).
        let mut targets = tokens.clone();
        if targets_off && !targets.is_empty() {
            let last = targets.len() - 1;
            targets[last] = cfg.vocab_size as u32;
        }
        let want_train = want.clone().or_else(|| {
            targets_off.then(|| Error::TokenOutOfRange {
                arg: "targets",
                index: targets.len() - 1,
                token: cfg.vocab_size as u32,
                vocab: cfg.vocab_size,
            })
        });
        let mut tws = model.workspace(MAX_B, MAX_T, Mode::Training).unwrap();
        let mut grads = vec![0.0; model.layout().total];
        let got = model.loss_and_grad(&mut tws, &mut grads, &tokens, &targets, b, t, 0.01, None);
        match (&want_train, got) {
            (None, Ok(l)) => prop_assert!(l.loss.is_finite()),
            (Some(w), Err(e)) => prop_assert_eq!(w, &e),
            (w, g) => prop_assert!(false, "loss_and_grad: want {:?}, got {:?}", w, g),
        }
        let before = model.params().unwrap().to_vec();
        let mut tr = Trainer::new(model, TrainConfig::default(), MAX_B, MAX_T).unwrap();
        match (&want_train, tr.train_step(&tokens, &targets, b, t)) {
            (None, Ok(s)) => prop_assert_eq!(s.step, 1),
            (Some(w), Err(e)) => {
                prop_assert_eq!(w, &e);
                // A rejected step leaves the weights untouched.
                prop_assert!(tr.model().params().unwrap() == &before[..]);
            }
            (w, g) => prop_assert!(false, "train_step: want {:?}, got {:?}", w, g),
        }
    }

    #[test]
    fn generate_validates_prompt_max_len_and_strategy(
        prompt in prop::collection::vec(prop_oneof![9 => 0u32..17, 1 => 17u32..=u32::MAX], 0..8),
        max_len in 0usize..=16,
        s in prop_oneof![4 => valid_strategy().prop_map(|s| (s, None)), 1 => invalid_strategy().prop_map(|(s, p)| (s, Some(p)))],
        seed in any::<u64>(),
    ) {
        let cfg = base();
        let model = MoETransformer::new(&cfg, 9).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (strategy, bad_param) = s;
        let got = generate(&model, &prompt, max_len, strategy, &mut rng);
        let bad_token = prompt.iter().position(|&x| x as usize >= cfg.vocab_size);
        match got {
            Ok(out) => {
                prop_assert!(bad_param.is_none() && bad_token.is_none());
                prop_assert!(!prompt.is_empty() && max_len >= prompt.len());
                prop_assert!(max_len <= cfg.max_position_embeddings);
                prop_assert_eq!(out.len(), max_len);
                prop_assert_eq!(&out[..prompt.len()], &prompt[..]);
                prop_assert!(out.iter().all(|&x| (x as usize) < cfg.vocab_size));
            }
            Err(e) => {
                if let Some(p) = bad_param {
                    prop_assert!(matches!(e, Error::InvalidParameter { param, .. } if param == p), "{:?}", e);
                } else if prompt.is_empty() {
                    prop_assert_eq!(e, Error::EmptyInput { arg: "prompt" });
                } else if max_len < prompt.len() {
                    prop_assert!(matches!(e, Error::InvalidParameter { param: "max_len", .. }), "{:?}", e);
                } else if max_len > cfg.max_position_embeddings {
                    prop_assert_eq!(e, Error::SeqTooLong { seq: max_len, max: cfg.max_position_embeddings });
                } else {
                    let i = bad_token.expect("an error with valid inputs");
                    prop_assert!(
                        matches!(e, Error::TokenOutOfRange { index, token, .. } if index == i && token == prompt[i]),
                        "{:?}", e
                    );
                }
            }
        }
    }
}
