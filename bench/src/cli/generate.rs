//! `moe generate`: text from a checkpoint, with the byte-level tokenizer of
//! `moe train` (see [`crate::corpus`]).
//!
//! ```text
//! moe generate --checkpoint DIR --prompt "…" [--max-len 256]
//!              [--strategy greedy|temperature|top-k|top-p]
//!              [--temperature 1.0] [--k 40] [--p 0.9] [--seed 0]
//! ```
//!
//! The prompt's UTF-8 bytes are the prompt tokens; `--max-len` is the length
//! of the whole sequence, prompt included (as `moe_core::generate` counts it),
//! so `max-len − prompt bytes` tokens are generated. The whole sequence is
//! printed on stdout, decoded lossily as UTF-8 (an id ≥ 256 or an invalid byte
//! sequence prints as U+FFFD), followed by a newline; a one-line summary goes
//! to stderr. `--temperature` applies to `temperature`, `top-k` and `top-p`;
//! `--k` only to `top-k`, `--p` only to `top-p`; the sampling RNG is
//! `ChaCha8Rng::seed_from_u64(--seed)`. `DIR` is a checkpoint directory or a
//! `moe train --out` directory (its `checkpoint/` is used).
//!
//! Bad parameters come back from `moe_core` as typed errors; they are printed
//! with the flag they concern and the command exits with status 1.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use moe_core::{ChaCha8Rng, Error, SamplingStrategy, SeedableRng};

use crate::cli::{checkpoint_dir, with_flag};
use crate::io::checkpoint;
use crate::io::corpus::{decode, encode};

/// Sampling strategy names of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Argmax (lowest id on ties); deterministic.
    Greedy,
    /// Sample from softmax(logits / T).
    Temperature,
    /// Sample among the k most likely tokens.
    TopK,
    /// Nucleus sampling: the smallest set of most likely tokens with mass >= p.
    TopP,
}

/// Arguments of `moe generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (config.json + model.safetensors), or a `moe train --out` directory.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Prompt text (its UTF-8 bytes are the prompt tokens; must not be empty).
    #[arg(long, allow_hyphen_values = true)]
    pub prompt: String,
    /// Length of the whole sequence in tokens (bytes), prompt included.
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// How the next token is chosen.
    #[arg(long, value_enum, default_value = "greedy")]
    pub strategy: Strategy,
    /// Temperature T > 0 (temperature, top-k and top-p).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub temperature: f32,
    /// Tokens kept by top-k (>= 1).
    #[arg(long, default_value_t = 40)]
    pub k: usize,
    /// Probability mass kept by top-p, in (0, 1].
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub p: f32,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads of each decoding step (its GEMVs split over fixed column
    /// blocks: the same text for every N); default: the available cores.
    #[arg(long, value_name = "N", value_parser = crate::cli::threads_arg, default_value_t = moe_core::available_threads())]
    pub threads: usize,
}

impl GenerateArgs {
    /// The core strategy these arguments select.
    pub fn sampling(&self) -> SamplingStrategy {
        let temperature = self.temperature;
        match self.strategy {
            Strategy::Greedy => SamplingStrategy::Greedy,
            Strategy::Temperature => SamplingStrategy::Temperature(temperature),
            Strategy::TopK => SamplingStrategy::TopK {
                k: self.k,
                temperature,
            },
            Strategy::TopP => SamplingStrategy::TopP {
                p: self.p,
                temperature,
            },
        }
    }
}

/// Runs `moe generate`.
pub fn run(args: GenerateArgs) -> Result<(), crate::Error> {
    let strategy = args.sampling();
    // Check the sampling parameters before loading anything.
    strategy.validate().map_err(|e| with_flag(e, None))?;
    let prompt = encode(args.prompt.as_bytes());
    if prompt.is_empty() {
        return Err(with_flag(Error::EmptyInput { arg: "prompt" }, None));
    }
    let dir = checkpoint_dir(&args.checkpoint);
    let model = checkpoint::load(&dir).map_err(|e| format!("--checkpoint: {e}"))?;
    let pool = crate::cli::pool(args.threads)?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let t0 = Instant::now();
    let ids = moe_core::generate_with(&model, &prompt, args.max_len, strategy, &mut rng, &pool)
        .map_err(|e| with_flag(e, None))?;
    let secs = t0.elapsed().as_secs_f64();
    let text = decode(&ids);
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    let generated = ids.len() - prompt.len();
    let outside = ids.iter().filter(|&&id| id > 255).count();
    eprintln!(
        "[moe generate] {} tokens ({} prompt + {generated} generated) with {strategy:?}, seed {}, \
         {} threads, in {:.3} s ({:.0} tokens/s){}",
        ids.len(),
        prompt.len(),
        args.seed,
        args.threads,
        secs,
        generated as f64 / secs.max(1e-9),
        if outside > 0 {
            format!("; {outside} ids outside the byte range printed as U+FFFD")
        } else {
            String::new()
        }
    );
    Ok(())
}
