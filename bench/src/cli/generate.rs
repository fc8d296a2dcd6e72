//! `moe generate`: text from a checkpoint, with the byte-level tokenizer of
//! `moe train` (see [`crate::corpus`]).
//!
//! ```text
//! moe generate --checkpoint DIR (--prompt "…" | --prompt-ids 1,2,3) [--max-len N]
//!              [--tokenizer tokenizer.json] [--print-ids]
//!              [--strategy greedy|temperature|top-k|top-p]
//!              [--temperature 1.0] [--k 40] [--p 0.9] [--seed 0]
//! ```
//!
//! With `--tokenizer FILE` (a Hugging Face `tokenizer.json`, e.g. from `moe
//! tokenizer train`) the prompt is encoded and the output decoded by it (the
//! model's `vocab_size` must be at least the tokenizer's); `--prompt-ids`
//! gives the prompt as ids directly and `--print-ids` prints the ids (comma
//! separated) instead of text, for any vocabulary. `--max-len` defaults to
//! the `--seq` the checkpoint was trained with (recorded by `moe train`), or
//! to 64 (`moe train`'s default `--seq`) for a checkpoint without one; a
//! `--max-len` above the trained length prints a warning (text degrades past
//! the positions the model was trained on).
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

use crate::cli::{arg_error, checkpoint_dir, with_flag};
use crate::io::checkpoint;
use crate::io::corpus::{decode, encode};
use crate::io::tokenizer::Tokenizer;

/// `--max-len` when neither it nor a trained `seq` is known: `moe train`'s default `--seq`.
pub const DEFAULT_MAX_LEN: usize = 64;

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
    /// Prompt text (its UTF-8 bytes, or its `--tokenizer` ids, are the prompt tokens; must not be empty).
    #[arg(
        long,
        allow_hyphen_values = true,
        required_unless_present = "prompt_ids",
        conflicts_with = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// Prompt as token ids, comma separated (e.g. `1,2,3`), for any vocabulary.
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Length of the whole sequence in tokens, prompt included (default: the
    /// checkpoint's trained `--seq`, else 64).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// A Hugging Face tokenizer.json to encode the prompt and decode the output (default: bytes).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Print the generated ids (comma separated) instead of text.
    #[arg(long)]
    pub print_ids: bool,
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

/// The prompt ids: `--prompt-ids`, or `--prompt` through the tokenizer (bytes by default).
fn prompt_ids(args: &GenerateArgs, tok: Option<&Tokenizer>) -> Result<Vec<u32>, crate::Error> {
    let prompt = match (&args.prompt_ids, &args.prompt, tok) {
        (Some(ids), _, _) => ids.clone(),
        (None, Some(p), Some(t)) => t.encode(p).map_err(|e| arg_error("--tokenizer", e))?,
        (None, Some(p), None) => encode(p.as_bytes()),
        (None, None, _) => Vec::new(),
    };
    if prompt.is_empty() {
        return Err(with_flag(Error::EmptyInput { arg: "prompt" }, None));
    }
    Ok(prompt)
}

/// `--max-len`, defaulting to the trained length; warns past it.
fn max_len(args: &GenerateArgs, trained: Option<usize>) -> usize {
    let len = args.max_len.or(trained).unwrap_or(DEFAULT_MAX_LEN);
    if let Some(seq) = trained.filter(|&s| len > s) {
        eprintln!(
            "warning: --max-len {len} exceeds the --seq {seq} this checkpoint was trained with; \
             text usually degrades past the trained length"
        );
    }
    len
}

/// Runs `moe generate`.
pub fn run(args: GenerateArgs) -> Result<(), crate::Error> {
    let strategy = args.sampling();
    // Check the sampling parameters before loading anything.
    strategy.validate().map_err(|e| with_flag(e, None))?;
    let tok = match &args.tokenizer {
        Some(p) => Some(Tokenizer::load(p).map_err(|e| arg_error("--tokenizer", e))?),
        None => None,
    };
    let prompt = prompt_ids(&args, tok.as_ref())?;
    let dir = checkpoint_dir(&args.checkpoint);
    let model = checkpoint::load(&dir).map_err(|e| format!("--checkpoint: {e}"))?;
    let vocab = model.config().vocab_size;
    if let Some(t) = &tok {
        if t.vocab_size() > vocab {
            return Err(arg_error(
                "--tokenizer",
                format!(
                    "{}: its {} tokens do not fit the model's vocab_size = {vocab}",
                    t.path().display(),
                    t.vocab_size()
                ),
            ));
        }
    }
    let max_len = max_len(&args, checkpoint::trained_seq(&dir));
    let pool = crate::cli::pool(args.threads)?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let t0 = Instant::now();
    let ids = moe_core::generate_with(&model, &prompt, max_len, strategy, &mut rng, &pool)
        .map_err(|e| with_flag(e, None))?;
    let secs = t0.elapsed().as_secs_f64();
    let text = if args.print_ids {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    } else {
        match &tok {
            Some(t) => t.decode(&ids).map_err(|e| arg_error("--tokenizer", e))?,
            None => decode(&ids),
        }
    };
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
        if outside > 0 && tok.is_none() && !args.print_ids {
            format!("; {outside} ids outside the byte range printed as U+FFFD")
        } else {
            String::new()
        }
    );
    Ok(())
}
