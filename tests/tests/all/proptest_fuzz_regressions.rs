//! Regression tests for bugs found by fuzzing (fuzz/), the proptests and the
//! error-table review. Each is minimal and names where the bug lives.
//!
//! Bugs found by fuzzing and review, each kept as a regression test after its fix;
//! say so in their ignore reason; run them with
//! `cargo test -p moe-tests --test proptest_fuzz_regressions -- --ignored`.
//! Remove the `#[ignore]` with the fix.

use std::fs;
use std::time::{Duration, Instant};

use moe_bench::checkpoint::{self, config_json, SaveOptions, CONFIG_FILE};
use moe_core::{ChaCha8Rng, Config, Decoder, Error, MoETransformer, SamplingStrategy, SeedableRng};

/// Found by the `sampling` fuzz target (input kept as the seed
/// `fuzz/corpus/sampling/regress_topk_signed_zero`: TopK k = 3 over
/// `[2.4e-38, −0.0, 1.8e-43, +0.0, 0, …]` picked index 3): top-k ranks logits by
/// their IEEE bit pattern (`sampling.rs`, `key`), so −0.0 sorts below +0.0.
/// They are equal values, so the tie rule ("ties: lower index first") keeps
/// the −0.0 at index 1, not the +0.0 at index 2.
#[test]
fn pick_token_topk_treats_signed_zeros_as_a_tie() {
    let logits = [1.0f32, -0.0, 0.0];
    let s = SamplingStrategy::TopK {
        k: 2,
        temperature: 1.0,
    };
    let mut picked = [0usize; 3];
    for seed in 0..200 {
        let tok = s
            .pick_token(&logits, &mut ChaCha8Rng::seed_from_u64(seed))
            .unwrap();
        picked[tok as usize] += 1;
    }
    assert_eq!(
        picked[2], 0,
        "index 2 (+0.0) is outside the top-2 {{0, 1}}: {picked:?}"
    );
    assert!(picked[1] > 0, "index 1 (−0.0) never picked: {picked:?}");
}

/// Greedy and top-k agree on signed zeros once the above is fixed; greedy
/// already treats them as a tie (lowest index) — guard that.
#[test]
fn greedy_treats_signed_zeros_as_a_tie() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let tok = SamplingStrategy::Greedy
        .pick_token(&[-0.0, 0.0, -1.0], &mut rng)
        .unwrap();
    assert_eq!(tok, 0);
}

/// Found by review of `checkpoint::load` (the `config_json` fuzz target only
/// parses): a ~600-byte `config.json` that passes `Config::validate` with
/// 1,000,000 layers of width 1 (14 M parameters) makes `load` build the whole
/// `Layout` — 10 M named tensors, ~8 s and ~1.7 GB here — before it looks at
/// `model.safetensors`; with 10⁸ layers the process aborts on out-of-memory.
/// `load` should bound the work by the model file first (e.g. compare its
/// size or tensor count with the config's parameter count) and return a typed
/// error quickly.
#[test]
fn load_rejects_an_absurd_layer_count_before_building_the_layout() {
    let small = Config {
        vocab_size: 8,
        hidden_size: 1,
        num_hidden_layers: 1,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 2,
        intermediate_size: 1,
        num_local_experts: 1,
        num_experts_per_tok: 1,
        max_position_embeddings: 8,
        ..Config::tiny()
    };
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(dir.path(), &MoETransformer::new(&small, 1).unwrap()).unwrap();
    let huge = Config {
        num_hidden_layers: 1_000_000,
        ..small
    };
    assert!(huge.validate().is_ok());
    fs::write(
        dir.path().join(CONFIG_FILE),
        config_json(&huge, &SaveOptions::default()),
    )
    .unwrap();
    let start = Instant::now();
    let result = checkpoint::load(dir.path());
    let took = start.elapsed();
    assert!(result.is_err(), "a 1-layer model file loaded as 1e6 layers");
    assert!(
        took < Duration::from_secs(1),
        "load took {took:?} to reject a 1-layer model file under a 1e6-layer config"
    );
}

/// Found by review: `Config::validate` accepts a config whose NTK-scaled RoPE
/// base `rope_theta() = base · alpha^(d/(d−2))` overflows f32 (here
/// 3e38 · 2² = ∞). `checkpoint::save` then writes `"rope_theta": null`
/// (serde_json's encoding of ∞) and the checkpoint it just wrote fails to load
/// (`MissingField rope_theta`). Either `validate` should require a finite
/// `rope_theta()` (config.rs) or `save` should refuse it (checkpoint.rs).
#[test]
fn a_config_that_validates_round_trips_through_a_checkpoint() {
    let cfg = Config {
        rope_base: 3e38,
        rope_alpha: 2.0,
        head_dim: 4,
        hidden_size: 8,
        intermediate_size: 8,
        vocab_size: 16,
        max_position_embeddings: 8,
        ..Config::tiny()
    };
    assert!(cfg.rope_theta().is_infinite());
    // The fix: such a config no longer validates (so it can never be saved).
    match cfg.validate() {
        Err(Error::InvalidConfig {
            field: "rope_base", ..
        }) => {}
        other => panic!("expected InvalidConfig(rope_base), got {other:?}"),
    }
    // A config that does validate round-trips.
    let ok = Config {
        rope_base: 1e4,
        ..cfg
    };
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(dir.path(), &MoETransformer::new(&ok, 1).unwrap()).unwrap();
    assert_eq!(*checkpoint::load(dir.path()).unwrap().config(), ok);
}

/// Found while generating docs/errors.md: decoding past a KV cache's capacity
/// returns `SeqTooLong { seq: 5, max: 4 }`, whose message says
/// "exceeds max_position_embeddings = 4" although the model's
/// `max_position_embeddings` is 512 and 4 is the cache capacity
/// (error.rs `Display` of `SeqTooLong`, used by `forward_cached`).
#[test]
fn kv_cache_overflow_message_names_the_capacity() {
    let m = MoETransformer::new(&Config::tiny(), 1).unwrap();
    let mut dec = Decoder::new(&m, 4).unwrap();
    dec.prefill(&[1, 2, 3, 4]).unwrap();
    let e = dec.step(5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WorkspaceTooSmall {
                requested: 5,
                planned: 4,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        !msg.contains("max_position_embeddings = 4"),
        "misleading message: {msg}"
    );
}
