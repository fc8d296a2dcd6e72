//! E19–E21 — choosing the next token from one row of logits:
//! `SamplingStrategy` with `pick_token` (E19 temperature, E20 top-k, E21 top-p)
//! and `argmax`. A leaf: it needs only the logits and the caller's RNG.
//!
//! Sampling: `q = softmax(logits / T)`, restricted to the `k` largest logits
//! (TopK) or to the smallest prefix, in descending order of `q`, whose mass
//! reaches `p` (TopP; always at least one token), renormalised, and sampled
//! with one uniform draw `u ∈ [0, 1)` from the caller's RNG: the token is the
//! first one (in index order) whose cumulative kept mass exceeds `u·Z`.
//! Greedy is argmax, lowest index on ties. No sorting is needed: the top-k and
//! top-p cut-offs are found by bisection over the IEEE bit patterns of the
//! values (32 passes at most), so `pick_token` allocates nothing and touches
//! nothing but the logits. `pick_token_with` takes planned scratch `[vocab]`
//! and computes each `exp` once into it, bisecting top-p on the stored
//! weights (same values, same sums, so the same token); `generate` uses it.

use rand_core::RngCore;

use crate::config::{check_param, Domain, TokenId};
use crate::error::{Error, Result};
use crate::kernels::exp;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplingStrategy {
    /// Argmax (lowest index on ties).
    Greedy,
    /// Sample from `softmax(logits / T)`, `T > 0`.
    Temperature(f32),
    /// Sample among the `k` largest logits (ties: lower index first), at temperature `temperature`.
    TopK {
        /// Kept tokens, `k ≥ 1` (`k ≥ vocab` keeps all).
        k: usize,
        /// Temperature, `> 0`.
        temperature: f32,
    },
    /// Nucleus sampling: the smallest set of most probable tokens whose mass reaches `p`.
    TopP {
        /// Mass, in `(0, 1]`.
        p: f32,
        /// Temperature, `> 0`.
        temperature: f32,
    },
}

/// Monotone map of a finite `f32` to `u32` (order-preserving).
#[inline]
fn key(x: f32) -> u32 {
    // −0.0 and +0.0 are equal values and must tie (found by fuzzing).
    let b = (x + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// E20 / E21 cut-off — the largest key `τ` such that `count(key(x) ≥ τ)` satisfies `enough`
/// (a predicate monotone in the kept set), by bisection on the 32-bit key.
fn bisect_threshold(mut enough: impl FnMut(u32) -> bool) -> u32 {
    let (mut lo, mut hi) = (0u32, u32::MAX); // enough(lo) holds (keeps everything)
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if enough(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

impl SamplingStrategy {
    /// Checks the parameters (CONTRACT §6).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `T ≤ 0` or non-finite, `k == 0`, `p ∉ (0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let temp = |t: f32| check_param("temperature", t, Domain::Positive);
        match *self {
            SamplingStrategy::Greedy => Ok(()),
            SamplingStrategy::Temperature(t) => temp(t),
            SamplingStrategy::TopK { k, temperature } => {
                if k == 0 {
                    return Err(Error::InvalidParameter {
                        param: "k",
                        expected: ">= 1",
                        actual: 0.0,
                    });
                }
                temp(temperature)
            }
            SamplingStrategy::TopP { p, temperature } => {
                if !(p > 0.0 && p <= 1.0) {
                    return Err(Error::InvalidParameter {
                        param: "p",
                        expected: "in (0, 1]",
                        actual: p as f64,
                    });
                }
                temp(temperature)
            }
        }
    }

    /// E19–E21 — picks the next token from `logits: [vocab]`: greedy argmax, or
    /// `softmax(logits / T)` (E19) restricted to the `k` largest (E20, top-k) or to
    /// the smallest prefix of mass `≥ p` (E21, top-p), renormalised; drawing at most one
    /// `u64` from `rng` (none for `Greedy`).
    ///
    /// # Errors
    /// Invalid parameters, [`Error::EmptyInput`] for empty logits,
    /// [`Error::NonFinite`] if a logit is NaN or infinite.
    pub fn pick_token<R: RngCore + ?Sized>(&self, logits: &[f32], rng: &mut R) -> Result<TokenId> {
        self.check(logits)?;
        self.pick_checked(logits, None, rng)
    }

    /// [`SamplingStrategy::pick_token`] with planned scratch `probs` (at least
    /// `logits.len()` elements; its contents are overwritten): the unnormalised
    /// probabilities `w_i = exp((x_i − max)/T)` are computed once into it and the
    /// top-p cut-off is bisected on the stored values instead of re-evaluating
    /// `exp` over the vocabulary on every step. The arithmetic of every `w_i`
    /// and every sum is the same, so the token is identical to `pick_token`'s
    /// for the same RNG state. Allocates nothing.
    ///
    /// # Errors
    /// As [`SamplingStrategy::pick_token`], and [`Error::ShapeMismatch`]
    /// (`"probs"`) if `probs` is shorter than `logits` (checked after the logits).
    pub fn pick_token_with<R: RngCore + ?Sized>(
        &self,
        logits: &[f32],
        probs: &mut [f32],
        rng: &mut R,
    ) -> Result<TokenId> {
        self.check(logits)?;
        if probs.len() < logits.len() {
            return Err(Error::ShapeMismatch {
                arg: "probs",
                expected: logits.len(),
                actual: probs.len(),
            });
        }
        self.pick_checked(logits, Some(&mut probs[..logits.len()]), rng)
    }

    /// The parameter and logit checks of [`SamplingStrategy::pick_token`].
    fn check(&self, logits: &[f32]) -> Result<()> {
        self.validate()?;
        if logits.is_empty() {
            return Err(Error::EmptyInput { arg: "logits" });
        }
        if logits.len() > u32::MAX as usize {
            return Err(Error::ShapeMismatch {
                arg: "logits",
                expected: u32::MAX as usize,
                actual: logits.len(),
            });
        }
        if let Some(index) = logits.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "logits",
                index,
            });
        }
        Ok(())
    }

    /// The choice on checked logits; with `probs`, top-p and temperature
    /// sampling read the weights from it (filled here) instead of recomputing them.
    fn pick_checked<R: RngCore + ?Sized>(
        &self,
        logits: &[f32],
        probs: Option<&mut [f32]>,
        rng: &mut R,
    ) -> Result<TokenId> {
        let (temperature, keep) = match *self {
            SamplingStrategy::Greedy => return Ok(argmax(logits)),
            SamplingStrategy::Temperature(t) => (t, Keep::All),
            SamplingStrategy::TopK { k, temperature } => (temperature, Keep::TopK(k)),
            SamplingStrategy::TopP { p, temperature } => (temperature, Keep::TopP(p)),
        };
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        // Unnormalised probability w_i = exp((x_i − max) / T) ∈ [0, 1]; w(argmax) = 1.
        let w = |x: f32| exp((x - max) / temperature);
        match (keep, probs) {
            (Keep::TopK(_), _) | (_, None) => Ok(choose(logits, None, rng, keep, |i| w(logits[i]))),
            (_, Some(probs)) => {
                // exp once per token, into the planned scratch (vectorised fill;
                // the same scalar arithmetic, so the same values).
                crate::kernels::vectorized(
                    #[inline(always)]
                    || {
                        for (q, &x) in probs.iter_mut().zip(logits) {
                            *q = w(x);
                        }
                    },
                );
                let probs: &[f32] = probs;
                Ok(crate::kernels::vectorized(
                    #[inline(always)]
                    || choose(logits, Some(probs), rng, keep, |i| probs[i]),
                ))
            }
        }
    }
}

/// E19–E21 on checked logits, with the weight of token `i` given by `w(i)`
/// (computed on the fly or read from stored probabilities: the same values).
#[inline(always)]
fn choose<R: RngCore + ?Sized>(
    logits: &[f32],
    stored: Option<&[f32]>,
    rng: &mut R,
    keep: Keep,
    w: impl Fn(usize) -> f32,
) -> TokenId {
    let n = logits.len();
    // The kept set is {i : key ≥ τ} plus, for ties at τ, the first `ties` of them in index order.
    let (tau, mut ties) = match keep {
        Keep::All => (0, usize::MAX),
        Keep::TopK(k) => {
            let k = k.min(n);
            let tau = bisect_threshold(|t| logits.iter().filter(|&&x| key(x) >= t).count() >= k);
            let above = logits.iter().filter(|&&x| key(x) > tau).count();
            (tau, k - above)
        }
        Keep::TopP(p) => {
            // Total mass Z and the cut-off on key(w_i), bisected on the weights.
            let z: f64 = (0..n).map(|i| w(i) as f64).sum();
            let target = p as f64 * z;
            let mass_at = |t: u32| -> f64 {
                (0..n)
                    .map(&w)
                    .filter(|&wi| key(wi) >= t)
                    .map(|wi| wi as f64)
                    .sum()
            };
            let thr = target * (1.0 - 1e-12);
            let tau = bisect_threshold(|t| match stored {
                // Decided by a lane-parallel sum when it is provably on the
                // same side of `thr` as the index-order sum `mass_at`.
                Some(q) => mass_reaches(q, t, thr).unwrap_or_else(|| mass_at(t) >= thr),
                None => mass_at(t) >= thr,
            });
            // Ties at τ join in index order until the mass reaches p.
            let above = mass_at(tau.saturating_add(1));
            let w_tau = (0..n).map(&w).find(|&wi| key(wi) == tau).unwrap_or(0.0) as f64;
            let need = if w_tau > 0.0 {
                libm::ceil((target - above) / w_tau).max(1.0) as usize
            } else {
                usize::MAX
            };
            // Compare the weights, not the logits, for this mode.
            return sample(n, rng, |i| key(w(i)), tau, need, &w);
        }
    };
    if ties == 0 {
        ties = usize::MAX; // cannot happen (k ≥ 1 keeps at least one at τ); stay total
    }
    sample(n, rng, |i| key(logits[i]), tau, ties, w)
}

/// Whether `mass_at(t) = Σ_{key(q_i) ≥ t} q_i` (f64, index order) is `≥ thr`,
/// decided from a 4-lane f64 sum `ŝ` of the same terms, or `None` when `ŝ` is
/// too close to `thr` to tell. Both sums are recursive sums of `n`
/// non-negative terms (exact f32 → f64 conversions, no overflow or underflow
/// for `q ∈ [0, 1]`), so each is within `γ = n·u/(1 − n·u)` (`u = 2⁻⁵³`) of
/// the exact sum and they differ by at most `≈ 2γ·ŝ`; outside a margin of
/// `4·n·u·ŝ` (relative ≈ 4.4·10⁻¹² at n = 10⁴) the answer is the sequential
/// one exactly, so the chosen token never changes.
#[inline(always)]
fn mass_reaches(q: &[f32], t: u32, thr: f64) -> Option<bool> {
    let mut acc = [0.0f64; 4];
    let chunks = q.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..4 {
            acc[l] += if key(c[l]) >= t { c[l] as f64 } else { 0.0 };
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += if key(x) >= t { x as f64 } else { 0.0 };
    }
    let s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    let margin = 4.0 * q.len() as f64 * f64::EPSILON * 0.5 * s;
    if s - margin >= thr {
        Some(true)
    } else if s + margin < thr {
        Some(false)
    } else {
        None
    }
}

#[derive(Clone, Copy)]
enum Keep {
    All,
    TopK(usize),
    TopP(f32),
}

/// E19–E21 draw — samples from the kept set `{i : kf(i) > τ} ∪ (first `ties` of {kf(i) = τ})`
/// among `0..n` with weights `w(i)`, using one uniform draw.
#[inline(always)]
fn sample<R: RngCore + ?Sized>(
    n: usize,
    rng: &mut R,
    kf: impl Fn(usize) -> u32,
    tau: u32,
    ties: usize,
    w: impl Fn(usize) -> f32,
) -> TokenId {
    let kept = |ties_left: &mut usize, i: usize| -> bool {
        let kx = kf(i);
        if kx > tau {
            true
        } else if kx == tau && *ties_left > 0 {
            *ties_left -= 1;
            true
        } else {
            false
        }
    };
    let mut left = ties;
    let z: f64 = (0..n)
        .filter(|&i| kept(&mut left, i))
        .map(|i| w(i) as f64)
        .sum();
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let target = u * z;
    let mut acc = 0.0f64;
    let mut last = 0;
    let mut left = ties;
    for i in 0..n {
        if kept(&mut left, i) {
            acc += w(i) as f64;
            last = i;
            if acc > target {
                return i as TokenId;
            }
        }
    }
    last as TokenId
}

/// Index of the largest logit, lowest index on ties.
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as TokenId
}
