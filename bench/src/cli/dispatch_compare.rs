//! `moe dispatch-compare`: the same `pick_token` reached through three Rust
//! dispatch mechanisms, timed cold (first call in a fresh process) and warm
//! (median over many calls).
//!
//! * **enum** — [`SamplingStrategy::pick_token`] as moe-core ships it: one
//!   function, a `match` on the variant at run time.
//! * **dyn** — a `&dyn Sampler` trait object: one struct per strategy, the call
//!   goes through the vtable (an indirect call the compiler cannot inline).
//! * **generic** — `fn f<S: Sampler>(s: &S)`: monomorphised per strategy type,
//!   the call is static and can be inlined.
//!
//! The four `Sampler` structs delegate to the enum with a constant variant, so
//! all three paths run the *same* sampling code and the comparison isolates the
//! dispatch. Every input is passed through [`black_box`], so neither the
//! enum's variant nor the trait object's type is known to the optimiser.
//!
//! Every path calls [`SamplingStrategy::pick_token_with`] (one `exp` per
//! logit into planned scratch, as `generate` does), the scratch allocated once
//! outside the timed calls.
//!
//! Workloads: each strategy on 1,000 logits (the tiny model's vocabulary),
//! top-k and top-p also on 32,000 (Mixtral's; the run ends with their ratio),
//! greedy on 16 logits (so little work that dispatch is the largest share it can be), and a
//! mixed stream that changes strategy on every call (enum and dyn only: a
//! generic parameter fixes one type at compile time).

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use clap::Args;
use moe_core::{ChaCha8Rng, Result as CoreResult, SamplingStrategy, SeedableRng, TokenId};

use crate::Error;

/// One sampling strategy as a trait (object-safe: the RNG type is concrete).
pub trait Sampler {
    /// Picks the next token from `logits: [vocab]`, with `probs: [vocab]` the
    /// planned scratch of [`SamplingStrategy::pick_token_with`].
    fn pick_token(
        &self,
        logits: &[f32],
        probs: &mut [f32],
        rng: &mut ChaCha8Rng,
    ) -> CoreResult<TokenId>;
}

/// Argmax.
#[derive(Debug, Clone, Copy)]
pub struct Greedy;
/// `softmax(logits / T)`.
#[derive(Debug, Clone, Copy)]
pub struct Temperature(pub f32);
/// The `k` largest logits at temperature `T`.
#[derive(Debug, Clone, Copy)]
pub struct TopK(pub usize, pub f32);
/// Nucleus of mass `p` at temperature `T`.
#[derive(Debug, Clone, Copy)]
pub struct TopP(pub f32, pub f32);

impl Sampler for Greedy {
    #[inline]
    fn pick_token(
        &self,
        logits: &[f32],
        probs: &mut [f32],
        rng: &mut ChaCha8Rng,
    ) -> CoreResult<TokenId> {
        SamplingStrategy::Greedy.pick_token_with(logits, probs, rng)
    }
}
impl Sampler for Temperature {
    #[inline]
    fn pick_token(
        &self,
        logits: &[f32],
        probs: &mut [f32],
        rng: &mut ChaCha8Rng,
    ) -> CoreResult<TokenId> {
        SamplingStrategy::Temperature(self.0).pick_token_with(logits, probs, rng)
    }
}
impl Sampler for TopK {
    #[inline]
    fn pick_token(
        &self,
        logits: &[f32],
        probs: &mut [f32],
        rng: &mut ChaCha8Rng,
    ) -> CoreResult<TokenId> {
        SamplingStrategy::TopK {
            k: self.0,
            temperature: self.1,
        }
        .pick_token_with(logits, probs, rng)
    }
}
impl Sampler for TopP {
    #[inline]
    fn pick_token(
        &self,
        logits: &[f32],
        probs: &mut [f32],
        rng: &mut ChaCha8Rng,
    ) -> CoreResult<TokenId> {
        SamplingStrategy::TopP {
            p: self.0,
            temperature: self.1,
        }
        .pick_token_with(logits, probs, rng)
    }
}

/// Options of `moe dispatch-compare`.
#[derive(Debug, Args)]
pub struct DispatchCompareArgs {
    /// Fresh processes per cold measurement (the median is reported).
    #[arg(long, default_value_t = 11, value_parser = super::at_least_one)]
    pub cold_runs: usize,
    /// Timed rounds per warm measurement (the median per call is reported).
    #[arg(long, default_value_t = 101, value_parser = super::at_least_one)]
    pub warm_rounds: usize,
    /// Only these workloads (greedy, temperature, top_k, top_p, greedy_v16, mixed).
    #[arg(long, num_args = 1.., value_delimiter = ',', value_name = "NAME")]
    pub only: Vec<String>,
    /// Internal: time one first call of `MECH:WORKLOAD` and print its ns.
    #[arg(long, hide = true, value_name = "MECH:WORKLOAD")]
    pub cold_child: Option<String>,
}

const MECHS: [&str; 3] = ["enum", "dyn", "generic"];
const WORKLOADS: [&str; 8] = [
    "greedy",
    "temperature",
    "top_k",
    "top_p",
    "top_k_v32k",
    "top_p_v32k",
    "greedy_v16",
    "mixed",
];
/// Parameters of the workloads.
const T: f32 = 0.8;
const K: usize = 40;
const P: f32 = 0.9;
const VOCAB: usize = 1000;
const SMALL_VOCAB: usize = 16;
/// A production-size vocabulary (Mixtral's 32,000) for the `_v32k` workloads.
const LARGE_VOCAB: usize = 32_000;

/// The strategy of a workload name without its vocabulary suffix.
fn base(workload: &str) -> &str {
    workload.strip_suffix("_v32k").unwrap_or(workload)
}
const SEED: u64 = 42;

/// Fixed logits: SplitMix64 from `SEED`, `4·(2u − 1)` (as the softmax kernel fixture).
fn logits(n: usize) -> Vec<f32> {
    let mut x = SEED;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            4.0 * (2.0 * u - 1.0)
        })
        .collect()
}

fn enum_of(workload: &str) -> SamplingStrategy {
    match base(workload) {
        "temperature" => SamplingStrategy::Temperature(T),
        "top_k" => SamplingStrategy::TopK {
            k: K,
            temperature: T,
        },
        "top_p" => SamplingStrategy::TopP {
            p: P,
            temperature: T,
        },
        _ => SamplingStrategy::Greedy,
    }
}

const MIXED_ENUM: [SamplingStrategy; 4] = [
    SamplingStrategy::Greedy,
    SamplingStrategy::Temperature(T),
    SamplingStrategy::TopK {
        k: K,
        temperature: T,
    },
    SamplingStrategy::TopP {
        p: P,
        temperature: T,
    },
];

/// The static-dispatch call: monomorphised for each `S`.
#[inline(never)]
fn calls_generic<S: Sampler>(
    s: &S,
    logits: &[f32],
    probs: &mut [f32],
    rng: &mut ChaCha8Rng,
    n: usize,
) -> CoreResult<u64> {
    let mut acc = 0u64;
    for _ in 0..n {
        acc += s.pick_token(black_box(logits), probs, rng)? as u64;
    }
    Ok(acc)
}

#[inline(never)]
fn calls_dyn(
    s: &dyn Sampler,
    logits: &[f32],
    probs: &mut [f32],
    rng: &mut ChaCha8Rng,
    n: usize,
) -> CoreResult<u64> {
    let mut acc = 0u64;
    for _ in 0..n {
        acc += s.pick_token(black_box(logits), probs, rng)? as u64;
    }
    Ok(acc)
}

#[inline(never)]
fn calls_enum(
    s: SamplingStrategy,
    logits: &[f32],
    probs: &mut [f32],
    rng: &mut ChaCha8Rng,
    n: usize,
) -> CoreResult<u64> {
    let mut acc = 0u64;
    for _ in 0..n {
        acc += s.pick_token_with(black_box(logits), probs, rng)? as u64;
    }
    Ok(acc)
}

#[inline(never)]
fn calls_mixed_enum(
    logits: &[f32],
    probs: &mut [f32],
    rng: &mut ChaCha8Rng,
    n: usize,
) -> CoreResult<u64> {
    let all = black_box(&MIXED_ENUM);
    let mut acc = 0u64;
    for i in 0..n {
        acc += all[i % 4].pick_token_with(black_box(logits), probs, rng)? as u64;
    }
    Ok(acc)
}

#[inline(never)]
fn calls_mixed_dyn(
    logits: &[f32],
    probs: &mut [f32],
    rng: &mut ChaCha8Rng,
    n: usize,
) -> CoreResult<u64> {
    let (g, t, k, p) = (Greedy, Temperature(T), TopK(K, T), TopP(P, T));
    let all: [&dyn Sampler; 4] = black_box([&g, &t, &k, &p]);
    let mut acc = 0u64;
    for i in 0..n {
        acc += all[i % 4].pick_token(black_box(logits), probs, rng)? as u64;
    }
    Ok(acc)
}

/// `n` calls of `workload` through `mech`; `None` when the pair does not exist
/// (mixed + generic). Returns the sum of the picked token ids (a checksum).
fn run_calls(
    mech: &str,
    workload: &str,
    logits: &[f32],
    probs: &mut [f32],
    rng: &mut ChaCha8Rng,
    n: usize,
) -> Option<CoreResult<u64>> {
    if workload == "mixed" {
        return match mech {
            "enum" => Some(calls_mixed_enum(logits, probs, rng, n)),
            "dyn" => Some(calls_mixed_dyn(logits, probs, rng, n)),
            _ => None,
        };
    }
    Some(match mech {
        "enum" => calls_enum(black_box(enum_of(workload)), logits, probs, rng, n),
        "dyn" => {
            let (g, t, k, p) = (Greedy, Temperature(T), TopK(K, T), TopP(P, T));
            let s: &dyn Sampler = match base(workload) {
                "temperature" => &t,
                "top_k" => &k,
                "top_p" => &p,
                _ => &g,
            };
            calls_dyn(black_box(s), logits, probs, rng, n)
        }
        _ => match base(workload) {
            "temperature" => calls_generic(black_box(&Temperature(T)), logits, probs, rng, n),
            "top_k" => calls_generic(black_box(&TopK(K, T)), logits, probs, rng, n),
            "top_p" => calls_generic(black_box(&TopP(P, T)), logits, probs, rng, n),
            _ => calls_generic(black_box(&Greedy), logits, probs, rng, n),
        },
    })
}

/// Calls per reported unit: one, or one cycle of the four strategies for `mixed`.
fn calls_per_unit(workload: &str) -> usize {
    if workload == "mixed" {
        4
    } else {
        1
    }
}

fn vocab_of(workload: &str) -> usize {
    if workload == "greedy_v16" {
        SMALL_VOCAB
    } else if workload.ends_with("_v32k") {
        LARGE_VOCAB
    } else {
        VOCAB
    }
}

/// Child process: one first call, timed.
fn cold_child(spec: &str) -> Result<(), Error> {
    let (mech, workload) = spec
        .split_once(':')
        .ok_or("--cold-child expects MECH:WORKLOAD")?;
    let lg = logits(vocab_of(workload));
    let mut probs = vec![0.0f32; lg.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let t0 = Instant::now();
    let r = run_calls(
        mech,
        workload,
        &lg,
        &mut probs,
        &mut rng,
        calls_per_unit(workload),
    );
    let ns = t0.elapsed().as_nanos();
    match r {
        Some(r) => {
            black_box(r?);
            println!("{ns}");
            Ok(())
        }
        None => Err(format!("no such pair {spec}").into()),
    }
}

fn median(mut x: Vec<f64>) -> f64 {
    x.sort_by(f64::total_cmp);
    let n = x.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        x[n / 2]
    } else {
        0.5 * (x[n / 2 - 1] + x[n / 2])
    }
}

/// Median over `runs` fresh processes of the first call's time.
fn cold(mech: &str, workload: &str, runs: usize) -> Result<f64, Error> {
    let exe = std::env::current_exe()?;
    let mut ns: Vec<f64> = super::try_vec(runs, "--cold-runs")?;
    for _ in 0..runs {
        let out = Command::new(&exe)
            .args(["dispatch-compare", "--cold-child"])
            .arg(format!("{mech}:{workload}"))
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "cold child {mech}:{workload} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        ns.push(String::from_utf8(out.stdout)?.trim().parse::<f64>()?);
    }
    Ok(median(ns))
}

/// Median ns per unit (a call; a 4-call cycle for `mixed`) over `rounds`
/// rounds of enough calls to last ~50 µs (at least one unit).
fn warm(mech: &str, workload: &str, rounds: usize) -> Result<f64, Error> {
    let lg = logits(vocab_of(workload));
    let mut probs = vec![0.0f32; lg.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    // Warm up and size a round.
    let t0 = Instant::now();
    let probe = 64;
    run_calls(mech, workload, &lg, &mut probs, &mut rng, probe).ok_or("no such pair")??;
    let per = t0.elapsed().as_nanos() as f64 / probe as f64;
    let unit = calls_per_unit(workload);
    // Short rounds: on a shared machine a long round is likely to be preempted.
    let calls = (((50_000.0 / per.max(1.0)) as usize).clamp(unit, 1 << 20) / unit) * unit;
    let mut per_call: Vec<f64> = super::try_vec(rounds, "--warm-rounds")?;
    for _ in 0..rounds {
        let t = Instant::now();
        black_box(
            run_calls(mech, workload, &lg, &mut probs, &mut rng, calls).ok_or("no such pair")??,
        );
        per_call.push(t.elapsed().as_nanos() as f64 / (calls / unit) as f64);
    }
    Ok(median(per_call))
}

/// The three paths pick the same tokens from the same RNG stream.
fn same_tokens(workload: &str) -> Result<bool, Error> {
    let lg = logits(vocab_of(workload));
    let mut probs = vec![0.0f32; lg.len()];
    let mut sums = Vec::new();
    for mech in MECHS {
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        if let Some(r) = run_calls(mech, workload, &lg, &mut probs, &mut rng, 256) {
            sums.push(r?);
        }
    }
    Ok(sums.windows(2).all(|w| w[0] == w[1]))
}

fn label(workload: &str) -> String {
    match workload {
        "greedy" => format!("greedy, v={VOCAB}"),
        "temperature" => format!("temperature T={T}, v={VOCAB}"),
        "top_k" => format!("top-k k={K} T={T}, v={VOCAB}"),
        "top_p" => format!("top-p p={P} T={T}, v={VOCAB}"),
        "top_k_v32k" => format!("top-k k={K} T={T}, v={LARGE_VOCAB}"),
        "top_p_v32k" => format!("top-p p={P} T={T}, v={LARGE_VOCAB}"),
        "greedy_v16" => format!("greedy, v={SMALL_VOCAB}"),
        _ => format!("mixed: one call of each strategy, per cycle, v={VOCAB}"),
    }
}

/// Runs `moe dispatch-compare`.
///
/// # Errors
/// A failed child process or a moe-core error.
pub fn run(args: DispatchCompareArgs) -> Result<(), Error> {
    if let Some(spec) = &args.cold_child {
        return cold_child(spec);
    }
    if let Some(bad) = args.only.iter().find(|w| !WORKLOADS.contains(&w.as_str())) {
        return Err(format!("unknown workload {bad}; one of {}", WORKLOADS.join(", ")).into());
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; run with --release for meaningful numbers");
    }
    println!(
        "cold = first call (mixed: first cycle) in a fresh process, median of {} processes; warm = median ns per call (mixed: per cycle) over {} rounds",
        args.cold_runs, args.warm_rounds
    );
    println!();
    let mut enum_warm_of: Vec<(&str, f64)> = Vec::new();
    println!("| workload | mechanism | cold ns | warm ns/call | cold/warm | warm vs enum |");
    println!("|---|---|---:|---:|---:|---:|");
    for workload in WORKLOADS {
        if !args.only.is_empty() && !args.only.iter().any(|w| w == workload) {
            continue;
        }
        if !same_tokens(workload)? {
            return Err(format!("{workload}: the mechanisms picked different tokens").into());
        }
        let mut enum_warm = f64::NAN;
        for mech in MECHS {
            if workload == "mixed" && mech == "generic" {
                println!("| {} | generic | n/a | n/a | | |", label(workload));
                continue;
            }
            let c = cold(mech, workload, args.cold_runs)?;
            let w = warm(mech, workload, args.warm_rounds)?;
            if mech == "enum" {
                enum_warm = w;
                enum_warm_of.push((workload, w));
            }
            println!(
                "| {} | {mech} | {c:.0} | {w:.1} | {:.1} | {:.3} |",
                label(workload),
                c / w,
                w / enum_warm
            );
        }
    }
    let warm_of = |w: &str| enum_warm_of.iter().find(|(x, _)| *x == w).map(|&(_, t)| t);
    for (k, p, v) in [
        ("top_k", "top_p", VOCAB),
        ("top_k_v32k", "top_p_v32k", LARGE_VOCAB),
    ] {
        if let (Some(tk), Some(tp)) = (warm_of(k), warm_of(p)) {
            println!();
            println!(
                "top-p / top-k per token (enum, warm), v = {v}: {:.2} ({tp:.0} / {tk:.0} ns)",
                tp / tk
            );
        }
    }
    println!();
    println!(
        "All mechanisms picked identical tokens from identical RNG streams (checked per workload)."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_agree() {
        for w in WORKLOADS {
            assert!(same_tokens(w).unwrap(), "{w}");
        }
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
