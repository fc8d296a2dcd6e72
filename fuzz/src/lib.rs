//! Helpers shared by the fuzz targets in `fuzz_targets/`: a byte reader that
//! turns the fuzzer's input into sizes, token ids, floats (any bit pattern,
//! so NaN, ±Inf, subnormals and huge values all occur) and sampling
//! strategies; the fixed small models; and the *oracles* — what each public
//! entry point must return for a given input (CONTRACT §6: the right `Err`
//! for an invalid input, `Ok` with finite values otherwise, never a panic).
//!
//! Byte formats (what the seed corpora in `seeds/<target>/` encode) are
//! described at each target.

use moe_core::{Config, Error, SamplingStrategy, TokenId};

/// The model of `forward_tokens` and `generate`: small enough for ~10⁴
/// executions per second, with GQA (h 4 / kv 2), 3 experts top-2, 2 layers.
pub const MODEL_CONFIG: Config = Config {
    vocab_size: 32,
    hidden_size: 8,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    head_dim: 4,
    intermediate_size: 8,
    num_local_experts: 3,
    num_experts_per_tok: 2,
    max_position_embeddings: 24,
    rope_base: 10_000.0,
    rope_alpha: 1.0,
    rms_norm_eps: 1e-5,
    sliding_window: None,
};

/// Workspace plan of `forward_tokens`: requests beyond it must be
/// `WorkspaceTooSmall`, beyond `max_position_embeddings` `SeqTooLong`.
pub const PLAN_BATCH: usize = 3;
/// See [`PLAN_BATCH`].
pub const PLAN_SEQ: usize = 16;

/// The config of `checkpoint_load` (228 parameters, so that a valid
/// `model.safetensors` seed is ~2 KB).
pub const CKPT_CONFIG: Config = Config {
    vocab_size: 8,
    hidden_size: 4,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 2,
    intermediate_size: 4,
    num_local_experts: 2,
    num_experts_per_tok: 1,
    max_position_embeddings: 8,
    rope_base: 10_000.0,
    rope_alpha: 1.0,
    rms_norm_eps: 1e-5,
    sliding_window: None,
};

/// Reads fixed-size little-endian values from the front of the input; past
/// the end every read returns zero (so every input is decodable).
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    /// A `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    /// A `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    /// A `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    /// An `f32` from 4 raw bytes: any bit pattern (NaN, ±Inf, subnormal, huge).
    pub fn f32_bits(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }

    /// Whether any input is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.data)
    }

    /// A token id: byte `m` then a `u16`. `m < 224` gives an id `< vocab`;
    /// otherwise the id is `vocab + u16` or, for `m = 255`, `u32::MAX − u16`
    /// (out of range), so ~1 id in 8 is invalid.
    pub fn token(&mut self, vocab: usize) -> TokenId {
        let m = self.u8();
        let x = self.u16() as u32;
        let v = vocab as u32;
        match m {
            0..=223 => x % v,
            255 => u32::MAX - x,
            _ => v.saturating_add(x),
        }
    }

    /// A float parameter: byte `m` then 4 bytes. `m` even: the raw bit
    /// pattern; `m` odd: a "nice" value `u32 / 2^k` in a sensible range, so
    /// that valid parameters are common too.
    pub fn param(&mut self) -> f32 {
        let m = self.u8();
        let bits = self.u32();
        if m.is_multiple_of(2) {
            f32::from_bits(bits)
        } else {
            (bits % 4096) as f32 / 1024.0 // [0, 4), 0 included
        }
    }

    /// A sampling strategy: selector byte (`% 4`: Greedy, Temperature, TopK,
    /// TopP), then the parameters (k: a `u16`; T and p: [`Reader::param`]).
    pub fn strategy(&mut self) -> SamplingStrategy {
        match self.u8() % 4 {
            0 => SamplingStrategy::Greedy,
            1 => SamplingStrategy::Temperature(self.param()),
            2 => {
                let k = self.u16() as usize;
                SamplingStrategy::TopK {
                    k,
                    temperature: self.param(),
                }
            }
            _ => {
                let p = self.param();
                SamplingStrategy::TopP {
                    p,
                    temperature: self.param(),
                }
            }
        }
    }
}

/// The parameter a strategy gets wrong (CONTRACT §6: `T ≤ 0` or non-finite,
/// `k == 0`, `p ∉ (0, 1]`), in the order `validate` checks them.
pub fn bad_strategy_param(s: &SamplingStrategy) -> Option<&'static str> {
    let bad_t = |t: f32| !(t.is_finite() && t > 0.0);
    match *s {
        SamplingStrategy::Greedy => None,
        SamplingStrategy::Temperature(t) => bad_t(t).then_some("temperature"),
        SamplingStrategy::TopK { k, temperature } => {
            if k == 0 {
                Some("k")
            } else {
                bad_t(temperature).then_some("temperature")
            }
        }
        SamplingStrategy::TopP { p, temperature } => {
            if !(p > 0.0 && p <= 1.0) {
                Some("p")
            } else {
                bad_t(temperature).then_some("temperature")
            }
        }
    }
}

/// What `pick_token(logits)` must return, or `None` when it must succeed.
pub fn expected_pick_error(s: &SamplingStrategy, logits: &[f32]) -> Option<Error> {
    if let Some(param) = bad_strategy_param(s) {
        // The value is checked by the caller through the variant and name only.
        return Some(Error::InvalidParameter {
            param,
            expected: "",
            actual: 0.0,
        });
    }
    if logits.is_empty() {
        return Some(Error::EmptyInput { arg: "logits" });
    }
    logits
        .iter()
        .position(|x| !x.is_finite())
        .map(|index| Error::NonFinite {
            what: "logits",
            index,
        })
}

/// Whether `got` is the error `want` (for `InvalidParameter`, the same
/// parameter name; otherwise equal).
pub fn same_error(want: &Error, got: &Error) -> bool {
    match (want, got) {
        (Error::InvalidParameter { param: a, .. }, Error::InvalidParameter { param: b, .. }) => {
            a == b
        }
        _ => want == got,
    }
}

/// What a forward (or `loss_and_grad`) of `(b, t, tokens)` against a
/// workspace planned for `(plan_b, plan_t)` must return, in the documented
/// check order: empty input, longer than the model, beyond the plan, wrong
/// length, out-of-range id. `None`: it must succeed.
pub fn expected_forward_error(
    cfg: &Config,
    plan_b: usize,
    plan_t: usize,
    b: usize,
    t: usize,
    arg: &'static str,
    tokens: &[TokenId],
) -> Option<Error> {
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
    if b > plan_b {
        return Some(Error::WorkspaceTooSmall {
            dim: "batch",
            requested: b,
            planned: plan_b,
        });
    }
    if t > plan_t {
        return Some(Error::WorkspaceTooSmall {
            dim: "seq",
            requested: t,
            planned: plan_t,
        });
    }
    token_error(cfg, arg, tokens, b * t)
}

/// `ShapeMismatch` if `tokens.len() != n`, else `TokenOutOfRange` for the first bad id.
pub fn token_error(cfg: &Config, arg: &'static str, tokens: &[TokenId], n: usize) -> Option<Error> {
    if tokens.len() != n {
        return Some(Error::ShapeMismatch {
            arg,
            expected: n,
            actual: tokens.len(),
        });
    }
    tokens
        .iter()
        .position(|&x| x as usize >= cfg.vocab_size)
        .map(|index| Error::TokenOutOfRange {
            arg,
            index,
            token: tokens[index],
            vocab: cfg.vocab_size,
        })
}

#[cfg(test)]
mod tests {
    //! The committed seeds decode as intended (`cargo test --manifest-path fuzz/Cargo.toml`).
    use super::*;
    use std::path::Path;

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out
    }

    #[test]
    fn valid_config_seeds_parse() {
        for (name, bytes) in seeds("config_json") {
            let text = String::from_utf8(bytes).unwrap();
            let r = moe_bench::checkpoint::parse_config(&text, Path::new("config.json"));
            assert_eq!(r.is_ok(), name.starts_with("valid"), "{name}: {r:?}");
        }
    }

    #[test]
    fn valid_report_seeds_render() {
        for (name, bytes) in seeds("report_json") {
            let text = String::from_utf8(bytes).unwrap();
            let r = moe_bench::report::render_texts(&[(name.as_str(), text.as_str())]);
            assert_eq!(r.is_ok(), name.starts_with("valid"), "{name}: {r:?}");
        }
    }

    #[test]
    fn valid_checkpoint_seed_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = moe_bench::checkpoint::config_json(&CKPT_CONFIG, &Default::default());
        std::fs::write(dir.path().join("config.json"), cfg).unwrap();
        for (name, bytes) in seeds("checkpoint_load") {
            std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
            let r = moe_bench::checkpoint::load(dir.path());
            assert_eq!(r.is_ok(), name.starts_with("valid"), "{name}: {r:?}");
        }
    }

    #[test]
    fn valid_resume_seeds_load() {
        // As `fuzz_targets/train_resume.rs` sets up its directory.
        let dir = tempfile::tempdir().unwrap();
        let model = moe_core::MoETransformer::new(&CKPT_CONFIG, 7).unwrap();
        let tc = moe_core::TrainConfig::default();
        let mut tr = moe_core::Trainer::new(model, tc, 1, 4).unwrap();
        tr.train_step(&[1, 2, 3, 4], &[2, 3, 4, 5], 1, 4).unwrap();
        let extra = Default::default();
        moe_bench::checkpoint::save_training_with(dir.path(), &tr, &extra, Some("fuzz-run"))
            .unwrap();
        for (name, bytes) in seeds("train_resume") {
            std::fs::write(dir.path().join("optimizer.safetensors"), &bytes).unwrap();
            let r = moe_bench::checkpoint::load_training_run(dir.path(), tc, 1, 4);
            assert_eq!(
                r.is_ok(),
                name.starts_with("valid"),
                "{name}: {:?}",
                r.err()
            );
        }
    }

    #[test]
    fn reader_pads_with_zeros() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), 0x0201);
        assert_eq!(r.u32(), 3);
        assert!(r.is_empty());
        assert_eq!(r.u64(), 0);
    }
}
