//! `moe train`: train the model on a text file with a byte-level tokenizer.
//!
//! ```text
//! moe train --data data/python-docs-prose.txt --steps 3000 [--profile tiny|scale_256]
//!           [--seed 42] [--out runs/train] [--batch 8] [--seq 64] [--lr 3e-3]
//!           [--aux-alpha 0.01] [--eval-every 100] [--resume DIR]
//! ```
//!
//! * **Tokenizer**: token id = byte value (see [`crate::corpus`]): ids 0–255 of
//!   the 1,000-id vocabulary, loss in nats per byte.
//! * **Data**: the first 90 % of the file's bytes train (`--train-fraction`),
//!   the last 10 % are held out. Step `s` (0-based) draws its `--batch` windows
//!   of `--seq + 1` bytes from `ChaCha8Rng::seed_from_u64(seed)` on stream
//!   `s + 1` (stream 0 of the same key initialises the weights), so a step's
//!   batch depends only on the seed and the step: a resumed run sees exactly
//!   the batches of an uninterrupted one.
//! * **Optimisation**: AdamW (β 0.9/0.999, eps 1e-8, `--weight-decay` 0.01),
//!   global-norm clipping at `--clip` 1.0, linear warmup over `--warmup` steps
//!   (default `min(100, steps/10)`) then cosine from `--lr` to `--min-lr`
//!   (default `lr/10`) at the last step (`moe_core::LrSchedule`), loss
//!   CE + `--aux-alpha`·aux.
//! * **Evaluation**: before the first step, every `--eval-every` steps and at the
//!   last step, the mean CE over `--eval-windows` fixed held-out windows
//!   (forward only, CE computed here with log-sum-exp in f64). The unigram
//!   baseline (training-set byte frequencies, add-one smoothed, scored on the
//!   held-out bytes) is printed at the start for comparison.
//! * **Outputs** in `--out DIR`, rewritten atomically at every evaluation:
//!   `loss.csv` (one row per step: `step, train_loss, train_ce, aux, heldout_ce,
//!   lr, grad_norm, tokens_per_sec`; `heldout_ce` only on evaluation steps, and a
//!   step-0 row with the held-out CE of the initial weights), `loss.svg`
//!   (train CE, its moving average, held-out CE and the unigram baseline),
//!   `checkpoint/` (a training checkpoint: `config.json` + `model.safetensors`,
//!   loadable by `moe generate`, `moe grads` and `transformers`, plus
//!   `optimizer.safetensors`), and `summary.json` at the end. `checkpoint` is a
//!   symlink to the current generation directory `checkpoint.gen-NNNNNN/`,
//!   switched atomically once a new one is complete ([`crate::io::outdir`]);
//!   `--out` is created, checked writable and locked before any work, and the
//!   leftovers of killed runs are removed.
//! * **Resume**: `--resume DIR` (a previous `--out` directory or its
//!   `checkpoint/`) restores weights, AdamW moments and step count, keeps the
//!   rows of its `loss.csv` up to that step, and continues to `--steps` (the
//!   total, not additional steps). The batch and schedule flags should be those
//!   of the first run; a different value is reported as a warning, a different
//!   data file or split is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::ValueEnum as _;
use indicatif::{ProgressBar, ProgressStyle};
use moe_core::{
    AdamWConfig, ChaCha8Rng, LrSchedule, MoETransformer, Mode, SeedableRng, TokenId, TrainConfig,
    Trainer, Workspace,
};

use super::{arg_error, check_workspace_fits, train_checkpoint, try_vec, with_flag};
use crate::io::checkpoint::{self, CheckpointError};
use crate::io::corpus::{cross_entropy_sum, Corpus};
use crate::io::outdir::OutDir;
use crate::io::read::{read_bounded, read_to_string_bounded, MAX_TEXT_BYTES};
use crate::io::tokenizer::Tokenizer;
use crate::report::plots;
use crate::Error;

pub use super::CHECKPOINT_DIR;
/// Name of the loss table in `--out`.
pub const LOSS_CSV: &str = "loss.csv";
/// Name of the loss plot in `--out`.
pub const LOSS_SVG: &str = "loss.svg";
/// Name of the end-of-run summary in `--out`.
pub const SUMMARY_JSON: &str = "summary.json";
/// Header of `loss.csv`.
pub const CSV_HEADER: &str = "step,train_loss,train_ce,aux,heldout_ce,lr,grad_norm,tokens_per_sec";

crate::profile_choices! {
    /// Model size of `moe train`.
    TrainProfile {
        Tiny => "`Config::tiny()` (c = 64, 542,528 parameters)",
        Scale256 => "`Config::scale_256()` (c = 256, 7,134,464 parameters)",
    }
}

/// Arguments of `moe train`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Training text (any bytes; UTF-8 expected). Token id = byte value.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Total number of optimiser steps (a resumed run continues up to this step).
    #[arg(long)]
    pub steps: u64,
    /// Model size.
    #[arg(long, value_enum, default_value = "tiny")]
    pub profile: TrainProfile,
    /// Seed of the weight initialisation and of the batch sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (loss.csv, loss.svg, checkpoint/, summary.json).
    #[arg(long, value_name = "DIR", default_value = "runs/train")]
    pub out: PathBuf,
    /// Windows per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens (bytes) per window.
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3, allow_hyphen_values = true)]
    pub lr: f32,
    /// Final learning rate of the cosine schedule [default: lr / 10].
    #[arg(long, allow_hyphen_values = true)]
    pub min_lr: Option<f32>,
    /// Linear warmup steps [default: min(100, steps / 10)].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Weight of the load-balancing loss.
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true)]
    pub aux_alpha: f32,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true)]
    pub weight_decay: f32,
    /// Global gradient-norm clip threshold (0 disables clipping).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub clip: f32,
    /// Evaluate on the held-out part (and write the outputs) every K steps.
    #[arg(long, value_name = "K", default_value_t = 100)]
    pub eval_every: u64,
    /// Number of fixed held-out windows per evaluation.
    #[arg(long, default_value_t = 64)]
    pub eval_windows: usize,
    /// Fraction of the bytes (from the start) used for training; the rest is held out.
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true)]
    pub train_fraction: f64,
    /// Resume from a training checkpoint (an earlier --out directory or its checkpoint/).
    #[arg(long, value_name = "DIR", conflicts_with = "init")]
    pub resume: Option<PathBuf>,
    /// Threads of each training step (data-parallel over fixed micro-batches:
    /// the same model for every N); default: the available cores.
    #[arg(long, value_name = "N", value_parser = crate::cli::threads_arg, default_value_t = moe_core::available_threads())]
    pub threads: usize,
    /// Fine-tune: start from the weights (and config) of any loadable
    /// checkpoint DIR — ours, a `moe train --out` directory, or one written
    /// by `transformers` — with a fresh AdamW state (`--resume` continues our
    /// own training checkpoints instead).
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Encode `--data` with this Hugging Face tokenizer.json (e.g. from `moe
    /// tokenizer train`) instead of bytes. A fresh model's vocab_size is the
    /// tokenizer's; an `--init`/`--resume` model's must be at least it.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Training precision: `f32`, or `bf16` = mixed precision (f32 master
    /// weights, gradients and AdamW state; the forward and backward GEMMs
    /// read a bf16 copy of the weights refreshed by the AdamW pass; attention
    /// probabilities saved as bf16). The checkpoint holds the f32 master.
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: crate::cli::PrecisionArg,
}

/// One row of `loss.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Row {
    /// Step number after the update (0: the initial weights).
    pub step: u64,
    /// `ce + alpha·aux` of the step's batch (None on the step-0 row).
    pub train_loss: Option<f32>,
    /// Cross-entropy part.
    pub train_ce: Option<f32>,
    /// Aux loss (before alpha).
    pub aux: Option<f32>,
    /// Held-out CE after this step, on evaluation steps.
    pub heldout_ce: Option<f64>,
    /// Learning rate used by the step.
    pub lr: Option<f32>,
    /// Gradient norm before clipping.
    pub grad_norm: Option<f32>,
    /// Training tokens per second of the step (forward + backward + update).
    pub tokens_per_sec: Option<f64>,
}

fn opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(String::new, |v| v.to_string())
}

impl Row {
    /// The CSV line (no newline).
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{}",
            self.step,
            opt(self.train_loss),
            opt(self.train_ce),
            opt(self.aux),
            opt(self.heldout_ce.map(|x| format!("{x:.6}"))),
            opt(self.lr),
            opt(self.grad_norm),
            opt(self.tokens_per_sec.map(|x| format!("{x:.1}"))),
        )
    }

    /// Parses a line written by [`Row::to_csv`].
    pub fn from_csv(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.trim_end().split(',').collect();
        if f.len() != 8 {
            return None;
        }
        fn p<T: std::str::FromStr>(s: &str) -> Option<Option<T>> {
            if s.is_empty() {
                Some(None)
            } else {
                s.parse().ok().map(Some)
            }
        }
        Some(Row {
            step: f[0].parse().ok()?,
            train_loss: p(f[1])?,
            train_ce: p(f[2])?,
            aux: p(f[3])?,
            heldout_ce: p(f[4])?,
            lr: p(f[5])?,
            grad_norm: p(f[6])?,
            tokens_per_sec: p(f[7])?,
        })
    }
}

/// FNV-1a 64 of the data, to recognise the same corpus on resume.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Held-out CE: mean over the positions of the `windows` of `seq + 1` tokens,
/// evaluated `batch` windows at a time with a forward-only workspace.
fn evaluate(
    model: &MoETransformer,
    ws: &mut Workspace,
    corpus: &Corpus,
    windows: &[usize],
    batch: usize,
    seq: usize,
) -> Result<f64, moe_core::Error> {
    let v = model.config().vocab_size;
    let mut tokens: Vec<TokenId> = Vec::with_capacity(batch * seq);
    let mut targets: Vec<TokenId> = Vec::with_capacity(batch * seq);
    let mut sum = 0.0;
    for chunk in windows.chunks(batch) {
        tokens.clear();
        targets.clear();
        for &s in chunk {
            tokens.extend_from_slice(&corpus.heldout[s..s + seq]);
            targets.extend_from_slice(&corpus.heldout[s + 1..s + seq + 1]);
        }
        let logits = model.forward(ws, &tokens, chunk.len(), seq)?;
        sum += cross_entropy_sum(logits, &targets, v);
    }
    Ok(sum / (windows.len() * seq) as f64)
}

/// Resolves `--resume DIR`: the checkpoint directory and the run directory
/// (`DIR/checkpoint` and `DIR` for a `--out` directory, else `DIR` and its parent).
fn resume_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    match train_checkpoint(dir) {
        Some(sub) => (sub, dir.to_path_buf()),
        None => {
            let run = dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (dir.to_path_buf(), run)
        }
    }
}

/// The values a resumed run must share with the first one (`extra` metadata).
fn run_extra(
    args: &TrainArgs,
    profile: &str,
    data: &[u8],
    sched: &LrSchedule,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("profile".into(), profile.to_owned());
    m.insert("seed".into(), args.seed.to_string());
    m.insert("batch".into(), args.batch.to_string());
    m.insert("seq".into(), args.seq.to_string());
    m.insert("steps".into(), args.steps.to_string());
    m.insert("lr".into(), sched.lr.to_string());
    m.insert("min_lr".into(), sched.min_lr.to_string());
    m.insert("warmup".into(), sched.warmup.to_string());
    m.insert("train_fraction".into(), args.train_fraction.to_string());
    m.insert("data_bytes".into(), data.len().to_string());
    m.insert("data_fnv1a64".into(), format!("{:016x}", fnv1a(data)));
    let tokenizer = match &args.tokenizer {
        Some(p) => format!("tokenizer.json {}", p.display()),
        None => "bytes".to_owned(),
    };
    m.insert("tokenizer".into(), tokenizer);
    m.insert(
        "precision".into(),
        args.precision.precision().name().to_owned(),
    );
    m
}

fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn write_csv(path: &Path, rows: &[Row]) -> Result<(), CheckpointError> {
    let mut text = String::with_capacity(64 * (rows.len() + 1));
    text.push_str(CSV_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.to_csv());
        text.push('\n');
    }
    checkpoint::write_atomic(path, |w| w.write_all(text.as_bytes()))
}

/// Reads the rows of an earlier `loss.csv` (empty if there is none).
fn read_csv(path: &Path) -> Result<Vec<Row>, Error> {
    let text = match read_to_string_bounded(path, MAX_TEXT_BYTES) {
        Ok(t) => t,
        Err(e) if e.io_error().map(std::io::Error::kind) == Some(std::io::ErrorKind::NotFound) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        return Err(format!(
            "{}: unexpected header (expected `{CSV_HEADER}`)",
            path.display()
        )
        .into());
    }
    lines
        .enumerate()
        .map(|(i, l)| {
            Row::from_csv(l).ok_or_else(|| {
                format!("{}: line {}: malformed row `{l}`", path.display(), i + 2).into()
            })
        })
        .collect()
}

/// Runs `moe train`: `Session::start` (arguments → data → model), then
/// `Session::train` (the loop), then `Session::finish` (the summary).
pub fn run(args: TrainArgs) -> Result<(), Error> {
    let wall = Instant::now();
    let mut session = Session::start(args, wall)?;
    session.train()?;
    session.finish()
}

/// Checks the flags and builds the schedule and the training config.
fn training_config(args: &TrainArgs) -> Result<(LrSchedule, TrainConfig), Error> {
    for (flag, value) in [
        ("--steps", args.steps),
        ("--batch", args.batch as u64),
        ("--seq", args.seq as u64),
        ("--eval-every", args.eval_every),
        ("--eval-windows", args.eval_windows as u64),
    ] {
        if value == 0 {
            return Err(arg_error(flag, "must be >= 1, got 0"));
        }
    }
    if args.steps > checkpoint::MAX_STEP {
        // A checkpoint beyond it could not be resumed (see `MAX_STEP`).
        return Err(arg_error(
            "--steps",
            format!(
                "must be <= {} (2^53), got {}",
                checkpoint::MAX_STEP,
                args.steps
            ),
        ));
    }
    if !(args.clip.is_finite() && args.clip >= 0.0) {
        return Err(arg_error(
            "--clip",
            format!("must be finite and >= 0, got {}", args.clip),
        ));
    }
    let warmup = args.warmup.unwrap_or((args.steps / 10).min(100));
    if warmup > args.steps {
        return Err(arg_error(
            "--warmup",
            format!("must be <= --steps = {}, got {warmup}", args.steps),
        ));
    }
    let schedule = LrSchedule {
        lr: args.lr,
        min_lr: args.min_lr.unwrap_or(args.lr * 0.1),
        warmup,
        total: args.steps,
    };
    let train_config = TrainConfig {
        schedule,
        adamw: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        clip_grad_norm: (args.clip > 0.0).then_some(args.clip),
        aux_alpha: args.aux_alpha,
        precision: args.precision.precision(),
    };
    train_config
        .validate()
        .map_err(|e| with_flag(e, Some("training config")))?;
    Ok((schedule, train_config))
}

/// Reads `--data` and splits it into the training and held-out parts
/// (bytes, or `--tokenizer` ids); also returns the held-out part's bytes.
fn read_data(args: &TrainArgs, tok: Option<&Tokenizer>) -> Result<(Vec<u8>, Corpus, usize), Error> {
    let data = read_bounded(&args.data, MAX_TEXT_BYTES).map_err(|e| arg_error("--data", e))?;
    let flag = |e: crate::io::corpus::CorpusError| match e {
        crate::io::corpus::CorpusError::BadFraction(_) => arg_error("--train-fraction", e),
        _ => arg_error("--data", e),
    };
    if let Some(t) = tok {
        let (corpus, heldout_bytes) =
            Corpus::split_with(&data, args.train_fraction, args.seq, |s| {
                t.encode(s).map_err(|e| e.to_string())
            })
            .map_err(flag)?;
        return Ok((data, corpus, heldout_bytes));
    }
    if std::str::from_utf8(&data).is_err() {
        eprintln!(
            "warning: {} is not valid UTF-8 (trained on its bytes anyway)",
            args.data.display()
        );
    }
    let corpus = Corpus::split(&data, args.train_fraction, args.seq).map_err(flag)?;
    let heldout_bytes = corpus.heldout.len();
    Ok((data, corpus, heldout_bytes))
}

/// `--tokenizer`, loaded.
fn load_tokenizer(args: &TrainArgs) -> Result<Option<Tokenizer>, Error> {
    args.tokenizer
        .as_deref()
        .map(|p| Tokenizer::load(p).map_err(|e| arg_error("--tokenizer", e)))
        .transpose()
}

/// The model's vocabulary must hold every tokenizer id.
fn check_vocab(flag: &str, vocab: usize, tok: Option<&Tokenizer>) -> Result<(), Error> {
    match tok {
        Some(t) if t.vocab_size() > vocab => Err(arg_error(
            flag,
            format!(
                "the model's vocab_size = {vocab} is smaller than {}'s {} tokens",
                t.path().display(),
                t.vocab_size()
            ),
        )),
        _ => Ok(()),
    }
}

/// `--init DIR`: the weights and config of any loadable checkpoint, fresh AdamW.
fn init_from(
    args: &TrainArgs,
    dir: &Path,
    train_config: TrainConfig,
    tok: Option<&Tokenizer>,
) -> Result<(Trainer, String), Error> {
    let ckpt = crate::cli::checkpoint_dir(dir);
    let model = checkpoint::load(&ckpt).map_err(|e| arg_error("--init", e))?;
    let cfg = *model.config();
    check_vocab("--init", cfg.vocab_size, tok)?;
    check_seq(args, cfg.max_position_embeddings)?;
    check_workspace_fits(&cfg, args.batch, args.seq, Mode::Training, "--batch")?;
    let trainer = Trainer::new(model, train_config, args.batch, args.seq)
        .map_err(|e| arg_error("--batch", e))?;
    let name = TrainProfile::value_variants()
        .iter()
        .find(|p| p.0.config() == cfg)
        .map_or("custom", |p| p.0.name());
    println!(
        "fine-tuning {} ({name}) with a fresh AdamW state",
        ckpt.display()
    );
    Ok((trainer, format!("{name} (from --init)")))
}

/// `--seq` must fit the model's context.
fn check_seq(args: &TrainArgs, max_position_embeddings: usize) -> Result<(), Error> {
    if args.seq > max_position_embeddings {
        return Err(arg_error(
            "--seq",
            format!(
                "must be <= max_position_embeddings = {max_position_embeddings}, got {}",
                args.seq
            ),
        ));
    }
    Ok(())
}

/// A model and trainer from `--profile` and `--seed`; returns the profile name.
fn fresh(
    args: &TrainArgs,
    train_config: TrainConfig,
    tok: Option<&Tokenizer>,
) -> Result<(Trainer, String), Error> {
    let mut cfg = args.profile.0.config();
    if let Some(t) = tok {
        // The vocabulary comes from the tokenizer.
        cfg.vocab_size = t.vocab_size();
    }
    check_seq(args, cfg.max_position_embeddings)?;
    check_workspace_fits(&cfg, args.batch, args.seq, Mode::Training, "--batch")?;
    let model = MoETransformer::new(&cfg, args.seed)?;
    let trainer = Trainer::new(model, train_config, args.batch, args.seq).map_err(|e| match e {
        moe_core::Error::AllocationFailed { .. } | moe_core::Error::Overflow { .. } => {
            arg_error("--batch", e)
        }
        e => e.into(),
    })?;
    Ok((trainer, args.profile.0.name().to_owned()))
}

/// What `--resume DIR` gives: the trainer, the rows of its `loss.csv` up to
/// its step, the profile name found in the checkpoint and its run id.
struct Resumed {
    trainer: Trainer,
    rows: Vec<Row>,
    profile_name: String,
    run_id: Option<String>,
}

/// A new run's id: the time in nanoseconds and the process id, in hex.
fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

/// The trainer of `--resume DIR` and the rows of its `loss.csv` up to its
/// step; returns the profile name found in the checkpoint.
fn resume(
    args: &TrainArgs,
    dir: &Path,
    train_config: TrainConfig,
    data: &[u8],
    schedule: &LrSchedule,
) -> Result<Resumed, Error> {
    let (ckpt, run_dir) = resume_dirs(dir);
    let cc = checkpoint::read_config(&ckpt).map_err(|e| arg_error("--resume", e))?;
    check_seq(args, cc.config.max_position_embeddings)?;
    check_workspace_fits(&cc.config, args.batch, args.seq, Mode::Training, "--batch")?;
    let loaded = checkpoint::load_training_run(&ckpt, train_config, args.batch, args.seq)
        .map_err(|e| arg_error("--resume", e))?;
    let (trainer, extra) = (loaded.trainer, loaded.extra);
    let mine = run_extra(args, "", data, schedule);
    for key in ["data_bytes", "data_fnv1a64", "train_fraction"] {
        if let Some(theirs) = extra.get(key) {
            if theirs != &mine[key] {
                return Err(arg_error(
                    "--resume",
                    format!(
                        "the checkpoint was trained on other data ({key} = {theirs}, now {}); \
                         resume with the same --data and --train-fraction",
                        mine[key]
                    ),
                ));
            }
        }
    }
    for key in [
        "seed",
        "batch",
        "seq",
        "steps",
        "lr",
        "min_lr",
        "warmup",
        "precision",
    ] {
        if let Some(theirs) = extra.get(key) {
            if theirs != &mine[key] {
                eprintln!(
                    "warning: resuming with {key} = {} (the checkpoint's run had {theirs})",
                    mine[key]
                );
            }
        }
    }
    let found = trainer.model().config();
    let profile_name = TrainProfile::value_variants()
        .iter()
        .find(|p| p.0.config() == *found)
        .map_or("custom", |p| p.0.name())
        .to_owned();
    if *found != args.profile.0.config() {
        eprintln!(
            "note: the model config is taken from the checkpoint ({profile_name}), not --profile"
        );
    }
    let step = trainer.optimizer().step();
    let mut rows = read_csv(&run_dir.join(LOSS_CSV))?;
    // `loss.csv` is written before the checkpoint pointer switches (see
    // `crate::io::outdir`): it may be ahead of the checkpoint, never behind.
    rows.retain(|r| r.step <= step);
    Ok(Resumed {
        trainer,
        rows,
        profile_name,
        run_id: loaded.run_id,
    })
}

/// One `moe train` run, from its checked arguments to its summary.
struct Session {
    args: TrainArgs,
    /// Started before the arguments were checked (`wall_seconds`).
    wall: Instant,
    schedule: LrSchedule,
    data: Vec<u8>,
    corpus: Corpus,
    trainer: Trainer,
    /// `loss.csv` so far.
    rows: Vec<Row>,
    profile_name: String,
    /// What a resumed run must share with this one (`optimizer.safetensors` metadata).
    extra: BTreeMap<String, String>,
    /// The step this run starts from (0, or the resumed checkpoint's).
    start: u64,
    /// The step reached.
    step: u64,
    unigram: f64,
    /// Start offsets of the fixed held-out windows.
    windows: Vec<usize>,
    eval_ws: Workspace,
    ckpt_dir: PathBuf,
    /// `--out`, locked for the whole run.
    out_dir: OutDir,
    /// This run's id (a resumed run keeps the checkpoint's).
    run_id: String,
    /// Seconds spent in training steps, and the tokens they trained on.
    train_secs: f64,
    trained_tokens: u64,
    last_heldout: Option<f64>,
    /// `"byte"`, or `"token"` with `--tokenizer`: the unit of the CEs printed.
    unit: &'static str,
    /// Held-out tokens per held-out byte (1 for bytes): CE per token × this = CE per byte.
    tokens_per_byte: f64,
}

impl Session {
    /// Arguments → data → model; prints the header and evaluates the
    /// initial weights (step-0 row) unless resuming.
    fn start(args: TrainArgs, wall: Instant) -> Result<Session, Error> {
        let (schedule, train_config) = training_config(&args)?;
        // Before any work: `--out` is created, writable and ours for the run
        // (and what a killed run left there is removed).
        let out_dir = OutDir::open(&args.out).map_err(|e| arg_error("--out", e))?;
        let tok = load_tokenizer(&args)?;
        let (data, corpus, heldout_bytes) = read_data(&args, tok.as_ref())?;
        let resumed = match (&args.resume, &args.init) {
            (None, Some(dir)) => {
                let (trainer, name) = init_from(&args, dir, train_config, tok.as_ref())?;
                Resumed {
                    trainer,
                    rows: Vec::new(),
                    profile_name: name,
                    run_id: None,
                }
            }
            (None, None) => {
                let (trainer, name) = fresh(&args, train_config, tok.as_ref())?;
                Resumed {
                    trainer,
                    rows: Vec::new(),
                    profile_name: name,
                    run_id: None,
                }
            }
            (Some(dir), _) => {
                let r = resume(&args, dir, train_config, &data, &schedule)?;
                check_vocab(
                    "--resume",
                    r.trainer.model().config().vocab_size,
                    tok.as_ref(),
                )?;
                r
            }
        };
        let Resumed {
            mut trainer,
            rows,
            profile_name,
            run_id,
        } = resumed;
        trainer.set_pool(crate::cli::pool(args.threads)?);
        // Every id of the corpus must be a token of the model (e.g. bytes
        // into an `--init` model whose vocab_size < 256).
        let vocab = trainer.model().config().vocab_size;
        if let Some(&top) = corpus.train.iter().chain(&corpus.heldout).max() {
            if top as usize >= vocab {
                return Err(arg_error(
                    "--data",
                    format!(
                        "token id {top} of the encoded corpus is >= the model's vocab_size = {vocab} \
                         (give a --tokenizer whose vocabulary fits, or a model with a larger vocabulary)"
                    ),
                ));
            }
        }
        let run_id = run_id.unwrap_or_else(new_run_id);
        let unit = if tok.is_some() { "token" } else { "byte" };
        let tokens_per_byte = corpus.heldout.len() as f64 / heldout_bytes.max(1) as f64;
        let extra = run_extra(&args, &profile_name, &data, &schedule);
        let start = trainer.optimizer().step();
        let ckpt_dir = out_dir.checkpoint_path();
        let unigram = corpus.unigram_baseline();
        // Distinct windows of `--seq + 1` bytes in the held-out part.
        let distinct = corpus.heldout.len() - args.seq;
        if args.eval_windows > distinct {
            return Err(arg_error(
                "--eval-windows",
                format!(
                    "must be <= {distinct} (the held-out part has {distinct} distinct windows of --seq + 1 bytes), got {}",
                    args.eval_windows
                ),
            ));
        }
        let windows = corpus.eval_windows(args.eval_windows, args.seq);
        let eval_b = args.batch.min(windows.len());
        let eval_ws = trainer
            .model()
            .workspace(eval_b, args.seq, Mode::Inference)
            .map_err(|e| arg_error("--batch", e))?;
        // A resumed run's last held-out CE; a fresh run's is set by `header`.
        let last_heldout = rows.iter().rev().find_map(|r| r.heldout_ce);
        let mut session = Session {
            args,
            wall,
            schedule,
            data,
            corpus,
            trainer,
            rows,
            profile_name,
            extra,
            start,
            step: start,
            unigram,
            windows,
            eval_ws,
            ckpt_dir,
            out_dir,
            run_id,
            train_secs: 0.0,
            trained_tokens: 0,
            last_heldout,
            unit,
            tokens_per_byte,
        };
        session.header()?;
        Ok(session)
    }

    /// The run's first lines, and the step-0 evaluation of a fresh run.
    fn header(&mut self) -> Result<(), Error> {
        let args = &self.args;
        println!(
            "moe train: {} ({} bytes: {} train, {} held out), profile {} ({} parameters), \
             batch {} x seq {}, steps {}..{}, precision {}",
            args.data.display(),
            self.data.len(),
            self.corpus.train.len(),
            self.corpus.heldout.len(),
            self.profile_name,
            self.trainer.model().config().param_counts().total,
            args.batch,
            args.seq,
            self.start,
            args.steps,
            match args.precision {
                crate::cli::PrecisionArg::F32 => "f32",
                crate::cli::PrecisionArg::Bf16 => "bf16 (mixed: f32 master weights)",
            },
        );
        println!(
            "unigram baseline (train {0} frequencies on the held-out {0}s): {1:.4} nats/{0}",
            self.unit, self.unigram
        );
        if self.start == 0 {
            let ce = self.evaluate()?;
            println!(
                "held-out CE of the initial weights: {ce:.4} nats/{}",
                self.unit
            );
            self.last_heldout = Some(ce);
            self.rows.push(Row {
                step: 0,
                heldout_ce: Some(ce),
                ..Row::default()
            });
        } else {
            println!("resumed at step {}", self.start);
        }
        Ok(())
    }

    /// Held-out CE of the current weights.
    fn evaluate(&mut self) -> Result<f64, Error> {
        let (b, t) = (self.args.batch, self.args.seq);
        let model = self.trainer.model();
        Ok(evaluate(
            model,
            &mut self.eval_ws,
            &self.corpus,
            &self.windows,
            b,
            t,
        )?)
    }

    /// `loss.csv`, `loss.svg` and the checkpoint, as of now.
    fn write_outputs(&self) -> Result<(), Error> {
        let out = &self.args.out;
        // The checkpoint as a new generation; `loss.csv` is written once the
        // generation is complete and before the pointer switches to it, so
        // that after a crash its rows reach at least the checkpoint's step
        // (a resume drops the rows after it).
        self.out_dir
            .save_checkpoint(&self.trainer, &self.extra, &self.run_id, || {
                Ok(write_csv(&out.join(LOSS_CSV), &self.rows)?)
            })?;
        let svg = loss_svg(&self.rows, self.unigram)?;
        checkpoint::write_atomic(&out.join(LOSS_SVG), |w| w.write_all(svg.as_bytes()))?;
        Ok(())
    }

    /// The training loop, up to `--steps`: one row per step, an evaluation
    /// (and the outputs) every `--eval-every` steps and at the last.
    fn train(&mut self) -> Result<(), Error> {
        let steps = self.args.steps;
        let pb = ProgressBar::new(steps);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(self.start.min(steps));
        let (b, t) = (self.args.batch, self.args.seq);
        // `check_workspace_fits` bounded b·t already; still fallible.
        let bt = b.saturating_mul(t);
        let mut tokens: Vec<TokenId> = try_vec(bt, "--batch")?;
        let mut targets: Vec<TokenId> = try_vec(bt, "--batch")?;
        let mut tps_ema = 0.0f64;
        let mut since_eval: (f64, u64) = (0.0, 0);
        while self.step < steps {
            let mut rng = ChaCha8Rng::seed_from_u64(self.args.seed);
            rng.set_stream(self.step + 1);
            self.corpus
                .sample_batch(&mut rng, b, t, &mut tokens, &mut targets);
            let t0 = Instant::now();
            let stats = self.trainer.train_step(&tokens, &targets, b, t)?;
            let secs = t0.elapsed().as_secs_f64();
            self.step = stats.step;
            self.train_secs += secs;
            self.trained_tokens += (b * t) as u64;
            let tps = (b * t) as f64 / secs.max(1e-9);
            tps_ema = if tps_ema == 0.0 {
                tps
            } else {
                0.95 * tps_ema + 0.05 * tps
            };
            since_eval.0 += f64::from(stats.ce_loss);
            since_eval.1 += 1;
            let mut row = Row {
                step: self.step,
                train_loss: Some(stats.loss),
                train_ce: Some(stats.ce_loss),
                aux: Some(stats.aux_loss),
                heldout_ce: None,
                lr: Some(stats.lr),
                grad_norm: Some(stats.grad_norm),
                tokens_per_sec: Some(tps),
            };
            let eval_now = self.step.is_multiple_of(self.args.eval_every) || self.step == steps;
            if eval_now {
                let ce = self.evaluate()?;
                row.heldout_ce = Some(ce);
                self.last_heldout = Some(ce);
            }
            self.rows.push(row);
            pb.set_position(self.step);
            pb.set_message(format!(
                "loss {:.3} ce {:.3} held-out {} | {:.0} tok/s",
                stats.loss,
                stats.ce_loss,
                self.last_heldout
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.3}")),
                tps_ema
            ));
            if eval_now {
                say(
                    &pb,
                    format!(
                        "step {:>6}/{steps}  train CE {:.4} (mean of {} steps)  held-out CE {:.4}  lr {:.3e}  {:.0} tok/s",
                        self.step,
                        since_eval.0 / since_eval.1 as f64,
                        since_eval.1,
                        row.heldout_ce.unwrap_or(f64::NAN),
                        stats.lr,
                        tps_ema
                    ),
                );
                since_eval = (0.0, 0);
                self.write_outputs()?;
            }
        }
        pb.finish_and_clear();
        if self.start >= steps {
            // Nothing trained: still leave a complete output directory.
            self.write_outputs()?;
        }
        Ok(())
    }

    /// `summary.json` and the printed summary.
    fn finish(self) -> Result<(), Error> {
        let args = &self.args;
        let (out, t) = (&args.out, args.seq);
        let wall_s = self.wall.elapsed().as_secs_f64();
        let trained: Vec<&Row> = self.rows.iter().filter(|r| r.train_ce.is_some()).collect();
        let tail = &trained[trained.len().saturating_sub(args.eval_every as usize)..];
        let tail_ce = if tail.is_empty() {
            None
        } else {
            Some(
                tail.iter()
                    .filter_map(|r| r.train_ce)
                    .map(f64::from)
                    .sum::<f64>()
                    / tail.len() as f64,
            )
        };
        let (train_secs, trained_tokens) = (self.train_secs, self.trained_tokens);
        let mean_tps = if train_secs > 0.0 {
            trained_tokens as f64 / train_secs
        } else {
            0.0
        };
        let summary = serde_json::json!({
            "data": args.data.display().to_string(),
            "data_bytes": self.data.len(),
            "train_bytes": self.corpus.train.len(),
            "heldout_bytes": self.corpus.heldout.len(),
            "tokenizer": match &args.tokenizer {
                Some(p) => format!("{} ({} held-out tokens per byte)", p.display(), self.tokens_per_byte),
                None => "bytes (token id = byte value)".to_owned(),
            },
            "ce_unit": format!("nats/{}", self.unit),
            "final_heldout_ce_per_byte": self.last_heldout.map(|c| c * self.tokens_per_byte),
            "profile": self.profile_name,
            "parameters": self.trainer.model().config().param_counts().total,
            "seed": args.seed,
            "batch": args.batch,
            "seq": t,
            "steps": self.step,
            "resumed_from_step": (self.start > 0).then_some(self.start),
            "lr": short(self.schedule.lr),
            "min_lr": short(self.schedule.min_lr),
            "warmup": self.schedule.warmup,
            "aux_alpha": short(args.aux_alpha),
            "unigram_baseline_ce": self.unigram,
            "final_heldout_ce": self.last_heldout,
            "final_train_ce_mean": tail_ce,
            "final_train_ce_window": tail.len(),
            "tokens_per_sec": mean_tps,
            "train_seconds": train_secs,
            "wall_seconds": wall_s,
        });
        let text = serde_json::to_string_pretty(&summary)? + "\n";
        checkpoint::write_atomic(&out.join(SUMMARY_JSON), |w| w.write_all(text.as_bytes()))?;

        let unit = self.unit;
        println!("unigram baseline CE:   {:.4} nats/{unit}", self.unigram);
        if let Some(ce) = tail_ce {
            println!(
                "final train CE:        {ce:.4} nats/{unit} (mean of the last {} steps)",
                tail.len()
            );
        }
        if let Some(ce) = self.last_heldout {
            println!(
                "final held-out CE:     {ce:.4} nats/{unit} ({} windows of {t})",
                self.windows.len()
            );
            if self.unit != "byte" {
                println!(
                    "final held-out CE:     {:.4} nats/byte ({:.4} held-out tokens per byte)",
                    ce * self.tokens_per_byte,
                    self.tokens_per_byte
                );
            }
        }
        println!(
            "throughput:            {mean_tps:.0} tokens/s ({trained_tokens} tokens in {train_secs:.1} s of training steps)"
        );
        println!("wall time:             {wall_s:.1} s");
        println!(
            "outputs:               {} {} {} {}",
            out.join(LOSS_CSV).display(),
            out.join(LOSS_SVG).display(),
            self.ckpt_dir.display(),
            out.join(SUMMARY_JSON).display()
        );
        Ok(())
    }
}

/// An f32 as the f64 of its shortest decimal form (0.01, not 0.009999999776).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The loss plot (see [`crate::report::plots::loss_svg`]): train CE per
/// step, held-out CE at the evaluation steps, the unigram baseline.
fn loss_svg(rows: &[Row], unigram: f64) -> Result<String, Error> {
    let train: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.step as f64, f64::from(r.train_ce?))))
        .collect();
    let held: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.step as f64, r.heldout_ce?)))
        .collect();
    let xmax = rows.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    plots::loss_svg(&train, &held, xmax, unigram)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_round_trip() {
        let r = Row {
            step: 12,
            train_loss: Some(2.5),
            train_ce: Some(2.49),
            aux: Some(2.0001),
            heldout_ce: Some(2.25),
            lr: Some(3e-3),
            grad_norm: Some(0.75),
            tokens_per_sec: Some(12345.5),
        };
        assert_eq!(Row::from_csv(&r.to_csv()), Some(r));
        let z = Row {
            step: 0,
            heldout_ce: Some(6.5),
            ..Row::default()
        };
        assert_eq!(z.to_csv(), "0,,,,6.500000,,,");
        assert_eq!(Row::from_csv(&z.to_csv()), Some(z));
    }

    #[test]
    fn svg_has_both_curves() {
        let rows: Vec<Row> = (0..20)
            .map(|s| Row {
                step: s,
                train_ce: (s > 0).then_some(3.0 - s as f32 * 0.05),
                heldout_ce: (s % 5 == 0).then_some(3.1 - s as f64 * 0.05),
                ..Row::default()
            })
            .collect();
        let svg = loss_svg(&rows, 3.0).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("held-out CE") && svg.contains("train CE"));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
