//! `moe generate`: text from a checkpoint, with the byte-level tokenizer of
//! `moe train` (see [`crate::corpus`]).
//!
//! ```text
//! moe generate (--checkpoint DIR | --random-init SEED [--profile tiny|scale_256|full])
//!              (--prompt "…" | --prompt-ids 1,2,3) [--max-len N]
//!              [--precision f32|bf16] [--tokenizer tokenizer.json] [--print-ids]
//!              [--strategy greedy|temperature|top-k|top-p]
//!              [--temperature 1.0] [--k 40] [--p 0.9] [--seed 0] [--threads N]
//! ```
//!
//! `--precision bf16` holds the weights as bf16 (a checkpoint is read
//! straight into bf16: BF16 tensors as stored, F32/F16 rounded to nearest
//! even; compute stays f32). `--random-init SEED` builds a model of
//! `--profile` from `SEED` instead of loading one — with bf16 initialised
//! straight into bf16 in parallel over the threads (no f32 copy: the 6.88 B
//! `full` profile in ≈ 13.8 GB) — and prints the init, prefill and decode
//! times on stderr.
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

use moe_core::{ChaCha8Rng, Error, MoETransformer, Precision, SamplingStrategy, SeedableRng};

use crate::cli::{arg_error, checkpoint_dir, with_flag, PrecisionArg};
use crate::io::checkpoint;
use crate::io::corpus::{decode, encode};
use crate::io::tokenizer::Tokenizer;

/// `--max-len` when neither it nor a trained `seq` is known: `moe train`'s default `--seq`.
pub const DEFAULT_MAX_LEN: usize = 64;

crate::profile_choices! {
    /// Model profile of `moe generate --random-init`.
    GenProfile {
        Tiny => "`Config::tiny()`",
        Scale256 => "`Config::scale_256()`" alias "scale256",
        Full => "`Config::full()` (6.88 B parameters: use --precision bf16, ≈ 13.8 GB)",
    }
}

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
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "random_init",
        conflicts_with = "random_init"
    )]
    pub checkpoint: Option<PathBuf>,
    /// Build a model of `--profile` with parameters drawn from SEED instead
    /// of loading a checkpoint (bf16: initialised straight into bf16, in
    /// parallel over `--threads`).
    #[arg(long, value_name = "SEED")]
    pub random_init: Option<u64>,
    /// Profile of `--random-init`.
    #[arg(long, value_enum, default_value = "tiny", requires = "random_init")]
    pub profile: GenProfile,
    /// Storage precision of the weights (compute is f32 either way).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
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
    let precision = args.precision.precision();
    let pool = crate::cli::pool(args.threads)?;
    let t_init = Instant::now();
    let (model, trained) = match (&args.checkpoint, args.random_init) {
        (Some(ck), _) => {
            let dir = checkpoint_dir(ck);
            let model =
                checkpoint::load_as(&dir, precision).map_err(|e| format!("--checkpoint: {e}"))?;
            (model, checkpoint::trained_seq(&dir))
        }
        (None, Some(seed)) => (random_model(&args, seed, precision, &pool)?, None),
        (None, None) => {
            return Err(arg_error(
                "--checkpoint",
                "give --checkpoint DIR or --random-init SEED",
            ))
        }
    };
    let init_secs = t_init.elapsed().as_secs_f64();
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
    if args.prompt_ids.is_some() {
        if let Some((i, id)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab)
        {
            return Err(arg_error(
                "--prompt-ids",
                format!("id {id} (position {i}) is not below the model's vocab_size = {vocab}"),
            ));
        }
    }
    let max_len = max_len(&args, trained);
    if args.random_init.is_some() {
        return run_timed(&args, &model, &prompt, max_len, strategy, &pool, init_secs);
    }
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

/// The `--random-init` model: `--profile` from `seed` in `precision`
/// (bf16: straight into bf16 on `pool`'s threads). Refuses up front, naming
/// the flag, a model whose weights exceed the machine's memory.
fn random_model(
    args: &GenerateArgs,
    seed: u64,
    precision: Precision,
    pool: &moe_core::Pool,
) -> Result<MoETransformer, crate::Error> {
    let cfg = args.profile.0.config();
    let params = cfg
        .param_counts_checked()
        .map_err(|e| with_flag(e, Some("--profile")))?;
    let bytes = params.total.saturating_mul(precision.bytes() as u64);
    if let Some(mem) = crate::cli::physical_memory() {
        if bytes > mem {
            return Err(arg_error(
                "--precision",
                format!(
                    "--profile {} in {} needs {bytes} bytes of weights, more than this machine's {mem} bytes of memory{}",
                    args.profile.0.name(),
                    precision.name(),
                    if precision == Precision::F32 { " (try --precision bf16)" } else { "" }
                ),
            ));
        }
    }
    match precision {
        Precision::F32 => MoETransformer::new(&cfg, seed),
        Precision::Bf16 => MoETransformer::new_bf16_on(&cfg, seed, pool),
    }
    .map_err(|e| with_flag(e, Some("--random-init")))
}

/// `--random-init`: prefill the prompt, then decode with the KV cache up to
/// `max_len` tokens, timing each phase; prints the ids (or text) on stdout
/// and `init / prefill / decode` seconds and tokens/s on stderr.
fn run_timed(
    args: &GenerateArgs,
    model: &MoETransformer,
    prompt: &[u32],
    max_len: usize,
    strategy: SamplingStrategy,
    pool: &moe_core::Pool,
    init_secs: f64,
) -> Result<(), crate::Error> {
    let flag = |e| with_flag(e, None);
    if max_len < prompt.len() {
        return Err(arg_error(
            "--max-len",
            format!(
                "{max_len} is shorter than the prompt ({} tokens)",
                prompt.len()
            ),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut dec = moe_core::Decoder::with_pool(model, max_len, pool).map_err(flag)?;
    let mut ids = prompt.to_vec();
    let t0 = Instant::now();
    let logits = dec.prefill(prompt).map_err(flag)?;
    let v = model.config().vocab_size;
    let mut next = strategy
        .pick_token(&logits[logits.len() - v..], &mut rng)
        .map_err(flag)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut steps = 0usize;
    while ids.len() < max_len {
        ids.push(next);
        if ids.len() == max_len {
            break;
        }
        let l = dec.step(next).map_err(flag)?;
        next = strategy.pick_token(l, &mut rng).map_err(flag)?;
        steps += 1;
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    // A random model's text is noise: always the ids.
    let text = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    eprintln!(
        "[moe generate] {} {} (random init {}), {} threads: init {:.3} s; prefill {} tokens in {:.3} s ({:.1} tokens/s); \
         decode {steps} steps in {:.3} s ({:.2} tokens/s); weights {} bytes",
        args.profile.0.name(),
        model.precision().name(),
        args.random_init.unwrap_or(0),
        args.threads,
        init_secs,
        prompt.len(),
        prefill_secs,
        prompt.len() as f64 / prefill_secs.max(1e-9),
        decode_secs,
        steps as f64 / decode_secs.max(1e-9),
        model.param_bytes(),
    );
    Ok(())
}
