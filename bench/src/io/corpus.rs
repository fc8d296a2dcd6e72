//! The byte-level tokenizer and the text corpus of `moe train`.
//!
//! # Tokenizer
//!
//! Token id = byte value: a UTF-8 text of `n` bytes is `n` tokens, ids 0–255.
//! The model's vocabulary has 1,000 ids (CONTRACT §1); ids 256–999 never occur
//! in the data, and the trained model learns to give them almost no mass. The
//! choice keeps the tool free of a trained tokenizer file, makes every text
//! (any language, any bytes) encodable, and makes the loss directly readable
//! as nats per byte. [`decode`] turns ids back into text lossily: an id outside
//! 0–255 becomes U+FFFD, and so does any invalid UTF-8 sequence.
//!
//! # Corpus
//!
//! [`Corpus::split`] cuts the bytes deterministically: the first
//! `⌊n · train_fraction⌋` bytes (90 % by default) for training, the rest held
//! out. A training batch is `b` windows of `t + 1` bytes at uniformly random
//! offsets of the training part ([`Corpus::sample_batch`]); inputs are the
//! first `t` bytes of each window, targets the last `t` (the next byte at each
//! position). The held-out evaluation uses a fixed set of windows spread evenly
//! over the held-out part ([`Corpus::eval_windows`]).

use std::fmt;

use moe_core::{RngCore, TokenId};

/// Byte → token id (`id = byte`).
pub fn encode(bytes: &[u8]) -> Vec<TokenId> {
    bytes.iter().map(|&b| TokenId::from(b)).collect()
}

/// [`encode`] into a buffer reserved with `try_reserve`.
fn try_encode(bytes: &[u8]) -> Result<Vec<TokenId>, CorpusError> {
    let mut v = Vec::new();
    v.try_reserve_exact(bytes.len())
        .map_err(|_| CorpusError::AllocationFailed {
            bytes: bytes.len().saturating_mul(std::mem::size_of::<TokenId>()),
        })?;
    v.extend(bytes.iter().map(|&b| TokenId::from(b)));
    Ok(v)
}

/// Token ids → text, lossily: ids `< 256` are bytes, decoded as UTF-8 with
/// invalid sequences replaced by U+FFFD; an id `>= 256` also becomes U+FFFD.
pub fn decode(ids: &[TokenId]) -> String {
    let mut bytes = Vec::with_capacity(ids.len());
    for &id in ids {
        match u8::try_from(id) {
            Ok(b) => bytes.push(b),
            Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Token ids → bytes, ids `>= 256` dropped (for byte-exact round trips).
pub fn to_bytes(ids: &[TokenId]) -> Vec<u8> {
    ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect()
}

/// A corpus that cannot be used with the requested window length (or held in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorpusError {
    /// The token buffers of the corpus (4 bytes per byte of text) could not be allocated.
    AllocationFailed {
        /// Bytes asked for.
        bytes: usize,
    },
    /// `train_fraction` is not in `(0, 1)`.
    BadFraction(String),
    /// A subword tokenizer needs UTF-8 text.
    NotUtf8,
    /// The tokenizer failed on the text.
    Tokenizer(String),
    /// One part of the split is shorter than one window of `seq + 1` bytes.
    TooShort {
        /// `"training"` or `"held-out"`.
        part: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The window length `seq + 1`.
        window: usize,
        /// Length of the whole corpus.
        total: usize,
    },
}

impl fmt::Display for CorpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorpusError::AllocationFailed { bytes } => write!(
                f,
                "allocation of {bytes} bytes for the corpus' token ids failed (4 bytes per byte of text)"
            ),
            CorpusError::NotUtf8 => {
                write!(f, "not valid UTF-8 (a --tokenizer encodes text)")
            }
            CorpusError::Tokenizer(m) => write!(f, "the tokenizer failed: {m}"),
            CorpusError::BadFraction(x) => {
                write!(f, "train fraction must be in (0, 1), got {x}")
            }
            CorpusError::TooShort {
                part,
                len,
                window,
                total,
            } => write!(
                f,
                "the {part} part of the corpus has {len} bytes (of {total}), fewer than one \
                 window of --seq + 1 = {window} bytes; use a longer --data file or a smaller --seq"
            ),
        }
    }
}

impl std::error::Error for CorpusError {}

/// A corpus split into a training part and a held-out part (token ids).
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The first part (training windows are drawn from it).
    pub train: Vec<TokenId>,
    /// The last part (evaluation only).
    pub heldout: Vec<TokenId>,
}

impl Corpus {
    /// Splits `bytes`: the first `⌊len · train_fraction⌋` bytes train, the rest
    /// are held out. Both parts must hold at least one window of `seq + 1` bytes.
    ///
    /// # Errors
    /// [`CorpusError`] for a fraction outside `(0, 1)` or a part that is too short.
    pub fn split(bytes: &[u8], train_fraction: f64, seq: usize) -> Result<Self, CorpusError> {
        if !(train_fraction > 0.0 && train_fraction < 1.0) {
            return Err(CorpusError::BadFraction(train_fraction.to_string()));
        }
        let cut = (bytes.len() as f64 * train_fraction).floor() as usize;
        let window = seq.saturating_add(1);
        for (part, len) in [("training", cut), ("held-out", bytes.len() - cut)] {
            if len < window {
                return Err(CorpusError::TooShort {
                    part,
                    len,
                    window,
                    total: bytes.len(),
                });
            }
        }
        Ok(Corpus {
            train: try_encode(&bytes[..cut])?,
            heldout: try_encode(&bytes[cut..])?,
        })
    }

    /// Fills `tokens` and `targets` (`batch · seq` each) with `batch` windows of
    /// `seq + 1` training tokens at offsets `rng.next_u64() % (len − seq)`.
    pub fn sample_batch(
        &self,
        rng: &mut dyn RngCore,
        batch: usize,
        seq: usize,
        tokens: &mut Vec<TokenId>,
        targets: &mut Vec<TokenId>,
    ) {
        tokens.clear();
        targets.clear();
        let starts = (self.train.len() - seq) as u64;
        for _ in 0..batch {
            let s = (rng.next_u64() % starts) as usize;
            tokens.extend_from_slice(&self.train[s..s + seq]);
            targets.extend_from_slice(&self.train[s + 1..s + seq + 1]);
        }
    }

    /// Offsets of `count` held-out windows of `seq + 1` tokens, spread evenly
    /// from the start to the end of the held-out part (the same on every call;
    /// they may overlap when the held-out part is short).
    pub fn eval_windows(&self, count: usize, seq: usize) -> Vec<usize> {
        let last = self.heldout.len() - (seq + 1);
        match count {
            0 => Vec::new(),
            1 => vec![0],
            _ => (0..count)
                .map(|i| (i as u128 * last as u128 / (count - 1) as u128) as usize)
                .collect(),
        }
    }

    /// Splits a UTF-8 text as [`Corpus::split`] does (the cut moved back to
    /// a character boundary) and encodes each part with `encode` (a subword
    /// tokenizer); the parts must hold a window of `seq + 1` *tokens*.
    /// Returns the corpus and the number of held-out bytes (for nats per byte).
    ///
    /// # Errors
    /// [`CorpusError::BadFraction`], [`CorpusError::NotUtf8`],
    /// [`CorpusError::Tokenizer`] (the message of `encode`), [`CorpusError::TooShort`].
    pub fn split_with(
        bytes: &[u8],
        train_fraction: f64,
        seq: usize,
        encode: impl Fn(&str) -> Result<Vec<TokenId>, String>,
    ) -> Result<(Self, usize), CorpusError> {
        if !(train_fraction > 0.0 && train_fraction < 1.0) {
            return Err(CorpusError::BadFraction(train_fraction.to_string()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| CorpusError::NotUtf8)?;
        let mut cut = (bytes.len() as f64 * train_fraction).floor() as usize;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let train = encode(&text[..cut]).map_err(CorpusError::Tokenizer)?;
        let heldout = encode(&text[cut..]).map_err(CorpusError::Tokenizer)?;
        let window = seq.saturating_add(1);
        for (part, len) in [("training", train.len()), ("held-out", heldout.len())] {
            if len < window {
                return Err(CorpusError::TooShort {
                    part,
                    len,
                    window,
                    total: bytes.len(),
                });
            }
        }
        Ok((Corpus { train, heldout }, bytes.len() - cut))
    }

    /// Cross-entropy (nats per token; per byte with the byte tokenizer) of
    /// predicting every held-out token with the training part's unigram
    /// distribution, add-one (Laplace) smoothed over the ids `0 ..= max(255,
    /// largest id seen)` so that a token unseen in training has a finite cost.
    pub fn unigram_baseline(&self) -> f64 {
        let top = self
            .train
            .iter()
            .chain(&self.heldout)
            .map(|&t| t as usize)
            .max()
            .unwrap_or(0)
            .max(255);
        let mut counts = vec![1u64; top + 1];
        for &t in &self.train {
            counts[t as usize] += 1;
        }
        let total: u64 = counts.iter().sum();
        let nll: f64 = self
            .heldout
            .iter()
            .map(|&t| -(counts[t as usize] as f64 / total as f64).ln())
            .sum();
        nll / self.heldout.len() as f64
    }
}

/// Sum over rows of `−log softmax(logits_row)[target]` (log-sum-exp, f64 sums),
/// for `logits: [n, vocab]` and `targets: [n]`.
pub fn cross_entropy_sum(logits: &[f32], targets: &[TokenId], vocab: usize) -> f64 {
    logits
        .chunks_exact(vocab)
        .zip(targets)
        .map(|(row, &t)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let z: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
            z.ln() - f64::from(row[t as usize] - max)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigram_of_constant_text_is_small() {
        let c = Corpus::split(&[b'a'; 1000], 0.9, 8).unwrap();
        let expected = -(901.0f64 / 1156.0).ln();
        assert!((c.unigram_baseline() - expected).abs() < 1e-12);
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_ln_vocab() {
        let ce = cross_entropy_sum(&[0.5; 20], &[3, 7], 10);
        assert!((ce / 2.0 - 10f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn eval_windows_cover_the_held_out_part() {
        let c = Corpus::split(&[b'x'; 200], 0.5, 9).unwrap();
        let w = c.eval_windows(5, 9);
        assert_eq!(w, vec![0, 22, 45, 67, 90]);
        assert_eq!(*w.last().unwrap() + 10, c.heldout.len());
    }
}
