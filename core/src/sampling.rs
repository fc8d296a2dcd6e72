//! E19–E21 — choosing the next token from one row of logits:
//! `SamplingStrategy` with `pick_token` (E19 temperature, E20 top-k, E21 top-p)
//! and `argmax`. A leaf: it needs only the logits and the caller's RNG.
//!
//! Sampling: `q = softmax(logits / T)`, restricted to the `k` largest logits
//! (TopK) or to the smallest prefix, in descending order of `q`, whose mass
//! reaches `p` (TopP; always at least one token), renormalised, and sampled
//! with one uniform draw `u ∈ [0, 1)` from the caller's RNG: the token is the
//! first one (in index order) whose cumulative kept mass exceeds `u·Z`.
//! Greedy is argmax, lowest index on ties. Neither sorting nor scratch memory
//! is needed: the top-k and top-p cut-offs are found by bisection over the
//! IEEE bit patterns of the values (32 passes over the logits at most), so
//! `pick_token` allocates nothing and touches nothing but the logits.

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
        let (temperature, keep) = match *self {
            SamplingStrategy::Greedy => return Ok(argmax(logits)),
            SamplingStrategy::Temperature(t) => (t, Keep::All),
            SamplingStrategy::TopK { k, temperature } => (temperature, Keep::TopK(k)),
            SamplingStrategy::TopP { p, temperature } => (temperature, Keep::TopP(p)),
        };
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        // Unnormalised probability w_i = exp((x_i − max) / T) ∈ [0, 1]; w(argmax) = 1.
        let w = |x: f32| exp((x - max) / temperature);
        // The kept set is {i : key ≥ τ} plus, for ties at τ, the first `ties` of them in index order.
        let (tau, mut ties) = match keep {
            Keep::All => (0, usize::MAX),
            Keep::TopK(k) => {
                let k = k.min(logits.len());
                let tau =
                    bisect_threshold(|t| logits.iter().filter(|&&x| key(x) >= t).count() >= k);
                let above = logits.iter().filter(|&&x| key(x) > tau).count();
                (tau, k - above)
            }
            Keep::TopP(p) => {
                // Total mass Z and the cut-off on key(w_i), bisected on the weights.
                let z: f64 = logits.iter().map(|&x| w(x) as f64).sum();
                let target = p as f64 * z;
                let mass_at = |t: u32| -> f64 {
                    logits
                        .iter()
                        .map(|&x| w(x))
                        .filter(|&wi| key(wi) >= t)
                        .map(|wi| wi as f64)
                        .sum()
                };
                let tau = bisect_threshold(|t| mass_at(t) >= target * (1.0 - 1e-12));
                // Ties at τ join in index order until the mass reaches p.
                let above = mass_at(tau.saturating_add(1));
                let w_tau = logits
                    .iter()
                    .map(|&x| w(x))
                    .find(|&wi| key(wi) == tau)
                    .unwrap_or(0.0) as f64;
                let need = if w_tau > 0.0 {
                    libm::ceil((target - above) / w_tau).max(1.0) as usize
                } else {
                    usize::MAX
                };
                // Compare the weights, not the logits, for this mode.
                return Ok(sample(logits, rng, |x| key(w(x)), tau, need, w));
            }
        };
        if ties == 0 {
            ties = usize::MAX; // cannot happen (k ≥ 1 keeps at least one at τ); stay total
        }
        Ok(sample(logits, rng, key, tau, ties, w))
    }
}

#[derive(Clone, Copy)]
enum Keep {
    All,
    TopK(usize),
    TopP(f32),
}

/// E19–E21 draw — samples from the kept set `{i : kf(x_i) > τ} ∪ (first `ties` of {kf(x_i) = τ})`
/// with weights `w(x_i)`, using one uniform draw.
fn sample<R: RngCore + ?Sized>(
    logits: &[f32],
    rng: &mut R,
    kf: impl Fn(f32) -> u32,
    tau: u32,
    ties: usize,
    w: impl Fn(f32) -> f32,
) -> TokenId {
    let kept = |ties_left: &mut usize, x: f32| -> bool {
        let kx = kf(x);
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
    let z: f64 = logits
        .iter()
        .filter(|&&x| kept(&mut left, x))
        .map(|&x| w(x) as f64)
        .sum();
    let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let target = u * z;
    let mut acc = 0.0f64;
    let mut last = 0;
    let mut left = ties;
    for (i, &x) in logits.iter().enumerate() {
        if kept(&mut left, x) {
            acc += w(x) as f64;
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
