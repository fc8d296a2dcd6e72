//! Arbitrary logits (NaN, ±Inf, huge, subnormal, ties) and sampling
//! parameters → `SamplingStrategy::pick_token`.
//!
//! Input: a strategy ([`Reader::strategy`]: selector, then k / T / p, any bit
//! pattern or a "nice" value), an RNG seed (`u64`), a logits mode byte
//! (`% 3`: 0 raw `f32` bits, 4 bytes each; 1 `i8 / 4`, 1 byte each, many
//! ties; 2 `i8 · 1e36`, near `f32::MAX`), then the logits to the end.
//!
//! Oracle: exactly the error `moe_fuzz::expected_pick_error` predicts
//! (`InvalidParameter` naming the parameter, `EmptyInput`, `NonFinite` at the
//! first bad index); otherwise a token `< len`, the argmax (lowest index) for
//! Greedy, one of the k largest (ties to the lower index) for TopK, the same
//! token for the same seed, and at most one `u64` drawn.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_core::{ChaCha8Rng, RngCore, SamplingStrategy, SeedableRng};
use moe_fuzz::{expected_pick_error, same_error, Reader};

/// Counts the draws of the inner RNG.
struct Counting(ChaCha8Rng, usize);

impl RngCore for Counting {
    fn next_u32(&mut self) -> u32 {
        self.1 += 1;
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.1 += 1;
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.1 += 1;
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.1 += 1;
        self.0.try_fill_bytes(dest)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let s = r.strategy();
    let seed = r.u64();
    let mode = r.u8() % 3;
    let rest = r.rest();
    let logits: Vec<f32> = match mode {
        0 => rest
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        1 => rest.iter().map(|&b| b as i8 as f32 / 4.0).collect(),
        _ => rest.iter().map(|&b| b as i8 as f32 * 1e36).collect(),
    };
    // (Signed zeros stay as drawn: TopK ties −0.0 with +0.0 since the fix of
    // `pick_token_topk_treats_signed_zeros_as_a_tie`.)
    let mut rng = Counting(ChaCha8Rng::seed_from_u64(seed), 0);
    let got = s.pick_token(&logits, &mut rng);
    match (expected_pick_error(&s, &logits), got) {
        (Some(w), Err(e)) => assert!(same_error(&w, &e), "{s:?}: want {w:?}, got {e:?}"),
        (None, Ok(tok)) => {
            let tok = tok as usize;
            assert!(tok < logits.len());
            assert!(rng.1 <= 1, "{} draws", rng.1);
            let again = s
                .pick_token(&logits, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap();
            assert_eq!(again as usize, tok, "not deterministic");
            let x = logits[tok];
            // Tokens ranked strictly before the pick (ties: lower index first).
            let above = logits
                .iter()
                .enumerate()
                .filter(|&(j, &y)| y > x || (y == x && j < tok))
                .count();
            match s {
                SamplingStrategy::Greedy => assert_eq!(above, 0, "{s:?}: not the argmax"),
                SamplingStrategy::TopK { k, .. } => assert!(
                    above < k,
                    "{s:?}, seed {seed}: token {tok} ranks {above} in {:?}",
                    logits.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                ),
                _ => {}
            }
        }
        (w, g) => panic!("{s:?} on {} logits: want {w:?}, got {g:?}", logits.len()),
    }
});
