//! Arbitrary prompt, `max_len` and strategy → `moe_core::generate` on a fixed
//! small model (`moe_fuzz::MODEL_CONFIG`, `max_position_embeddings` 24).
//!
//! Input: a strategy ([`Reader::strategy`]), an RNG seed (`u64`), `max_len`
//! (`% 32`, so beyond the context too), then 3-byte prompt ids
//! ([`Reader::token`], ~1 in 8 out of range), at most 32.
//!
//! Oracle: the error CONTRACT §6 and `generate`'s docs prescribe, in order —
//! bad strategy parameter, empty prompt, `max_len < prompt.len()`,
//! `max_len > max_position_embeddings`, first out-of-range prompt id — else
//! `Ok` with exactly `max_len` in-range ids starting with the prompt, and the
//! same output for the same seed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moe_core::{generate, ChaCha8Rng, Error, MoETransformer, SeedableRng};
use moe_fuzz::{bad_strategy_param, Reader, MODEL_CONFIG};

fn model() -> &'static MoETransformer {
    static M: OnceLock<MoETransformer> = OnceLock::new();
    M.get_or_init(|| MoETransformer::new(&MODEL_CONFIG, 7).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let s = r.strategy();
    let seed = r.u64();
    let max_len = (r.u8() % 32) as usize;
    let v = MODEL_CONFIG.vocab_size;
    let mut prompt = Vec::new();
    while !r.is_empty() && prompt.len() < 32 {
        prompt.push(r.token(v));
    }
    let max = MODEL_CONFIG.max_position_embeddings;
    let got = generate(
        model(),
        &prompt,
        max_len,
        s,
        &mut ChaCha8Rng::seed_from_u64(seed),
    );
    let bad_id = prompt.iter().position(|&x| x as usize >= v);
    match got {
        Ok(out) => {
            assert!(bad_strategy_param(&s).is_none(), "{s:?} accepted");
            assert!(!prompt.is_empty() && prompt.len() <= max_len && max_len <= max);
            assert!(bad_id.is_none(), "out-of-range prompt id accepted");
            assert_eq!(out.len(), max_len);
            assert_eq!(&out[..prompt.len()], &prompt[..]);
            assert!(out.iter().all(|&x| (x as usize) < v));
            let again = generate(
                model(),
                &prompt,
                max_len,
                s,
                &mut ChaCha8Rng::seed_from_u64(seed),
            );
            assert_eq!(again.as_deref(), Ok(&out[..]), "not deterministic");
        }
        Err(e) => {
            if let Some(p) = bad_strategy_param(&s) {
                assert!(
                    matches!(e, Error::InvalidParameter { param, .. } if param == p),
                    "{s:?}: {e:?}"
                );
            } else if prompt.is_empty() {
                assert_eq!(e, Error::EmptyInput { arg: "prompt" });
            } else if max_len < prompt.len() {
                assert!(
                    matches!(
                        e,
                        Error::InvalidParameter {
                            param: "max_len",
                            ..
                        }
                    ),
                    "{e:?}"
                );
            } else if max_len > max {
                assert_eq!(e, Error::SeqTooLong { seq: max_len, max });
            } else {
                let i = bad_id
                    .unwrap_or_else(|| panic!("{s:?}, {prompt:?}, {max_len}: unexpected {e:?}"));
                assert!(
                    matches!(e, Error::TokenOutOfRange { index, token, vocab, .. }
                        if index == i && token == prompt[i] && vocab == v),
                    "{e:?}"
                );
            }
        }
    }
});
