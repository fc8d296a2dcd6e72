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
//!   `optimizer.safetensors`), and `summary.json` at the end.
//! * **Resume**: `--resume DIR` (a previous `--out` directory or its
//!   `checkpoint/`) restores weights, AdamW moments and step count, keeps the
//!   rows of its `loss.csv` up to that step, and continues to `--steps` (the
//!   total, not additional steps). The batch and schedule flags should be those
//!   of the first run; a different value is reported as a warning, a different
//!   data file or split is an error.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use moe_core::{
    AdamWConfig, ChaCha8Rng, Config, LrSchedule, MoETransformer, Mode, SeedableRng, TokenId,
    TrainConfig, Trainer,
};

use crate::checkpoint::{self, CheckpointError};
use crate::corpus::{cross_entropy_sum, Corpus};

/// Error type of the command.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Name of the checkpoint subdirectory of `--out`.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// Name of the loss table in `--out`.
pub const LOSS_CSV: &str = "loss.csv";
/// Name of the loss plot in `--out`.
pub const LOSS_SVG: &str = "loss.svg";
/// Name of the end-of-run summary in `--out`.
pub const SUMMARY_JSON: &str = "summary.json";
/// Header of `loss.csv`.
pub const CSV_HEADER: &str = "step,train_loss,train_ce,aux,heldout_ce,lr,grad_norm,tokens_per_sec";

/// Model size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `Config::tiny()` (c = 64, 542,528 parameters).
    Tiny,
    /// `Config::scale_256()` (c = 256, 7,134,464 parameters).
    #[value(name = "scale_256")]
    Scale256,
}

impl Profile {
    /// The model config.
    pub fn config(self) -> Config {
        match self {
            Profile::Tiny => Config::tiny(),
            Profile::Scale256 => Config::scale_256(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Tiny => "tiny",
            Profile::Scale256 => "scale_256",
        }
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
    pub profile: Profile,
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
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
}

fn arg_error(flag: &str, msg: impl std::fmt::Display) -> BoxError {
    format!("{flag}: {msg}").into()
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
    ws: &mut moe_core::Workspace,
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

/// Resolves `--resume DIR`: the checkpoint directory and the run directory.
fn resume_dirs(dir: &Path) -> (PathBuf, PathBuf) {
    let sub = dir.join(CHECKPOINT_DIR);
    if sub.join(checkpoint::CONFIG_FILE).is_file() {
        (sub, dir.to_path_buf())
    } else {
        let run = dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        (dir.to_path_buf(), run)
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
    m.insert("tokenizer".into(), "bytes".into());
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
fn read_csv(path: &Path) -> Result<Vec<Row>, BoxError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
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

/// Runs `moe train`.
pub fn run(args: TrainArgs) -> Result<(), BoxError> {
    let wall = Instant::now();
    // ---- arguments -------------------------------------------------------------------
    if args.steps == 0 {
        return Err(arg_error("--steps", "must be >= 1, got 0"));
    }
    if args.batch == 0 {
        return Err(arg_error("--batch", "must be >= 1, got 0"));
    }
    if args.seq == 0 {
        return Err(arg_error("--seq", "must be >= 1, got 0"));
    }
    if args.eval_every == 0 {
        return Err(arg_error("--eval-every", "must be >= 1, got 0"));
    }
    if args.eval_windows == 0 {
        return Err(arg_error("--eval-windows", "must be >= 1, got 0"));
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
    };
    train_config.validate().map_err(|e| {
        let flag = match &e {
            moe_core::Error::InvalidParameter { param, .. } => match *param {
                "lr" => "--lr",
                "min_lr" => "--min-lr",
                "warmup" => "--warmup",
                "weight_decay" => "--weight-decay",
                "aux_alpha" => "--aux-alpha",
                "clip_grad_norm" => "--clip",
                _ => "training config",
            },
            _ => "training config",
        };
        arg_error(flag, e)
    })?;

    // ---- data --------------------------------------------------------------------------
    let data = fs::read(&args.data)
        .map_err(|e| arg_error("--data", format!("{}: {e}", args.data.display())))?;
    if std::str::from_utf8(&data).is_err() {
        eprintln!(
            "warning: {} is not valid UTF-8 (trained on its bytes anyway)",
            args.data.display()
        );
    }
    let corpus = Corpus::split(&data, args.train_fraction, args.seq).map_err(|e| match e {
        crate::corpus::CorpusError::BadFraction(_) => arg_error("--train-fraction", e),
        _ => arg_error("--data", e),
    })?;

    // ---- model / trainer -------------------------------------------------------------------
    let profile_name;
    let (mut trainer, mut rows) = match &args.resume {
        None => {
            let cfg = args.profile.config();
            if args.seq > cfg.max_position_embeddings {
                return Err(arg_error(
                    "--seq",
                    format!(
                        "must be <= max_position_embeddings = {}, got {}",
                        cfg.max_position_embeddings, args.seq
                    ),
                ));
            }
            profile_name = args.profile.name().to_owned();
            let model = MoETransformer::new(&cfg, args.seed)?;
            (
                Trainer::new(model, train_config, args.batch, args.seq)?,
                Vec::new(),
            )
        }
        Some(dir) => {
            let (ckpt, run_dir) = resume_dirs(dir);
            let cc = checkpoint::read_config(&ckpt).map_err(|e| arg_error("--resume", e))?;
            if args.seq > cc.config.max_position_embeddings {
                return Err(arg_error(
                    "--seq",
                    format!(
                        "must be <= max_position_embeddings = {}, got {}",
                        cc.config.max_position_embeddings, args.seq
                    ),
                ));
            }
            let (trainer, extra) =
                checkpoint::load_training_with_extra(&ckpt, train_config, args.batch, args.seq)
                    .map_err(|e| arg_error("--resume", e))?;
            let mine = run_extra(&args, "", &data, &schedule);
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
            for key in ["seed", "batch", "seq", "steps", "lr", "min_lr", "warmup"] {
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
            profile_name = match *found {
                c if c == Config::tiny() => "tiny".to_owned(),
                c if c == Config::scale_256() => "scale_256".to_owned(),
                _ => "custom".to_owned(),
            };
            if *found != args.profile.config() {
                eprintln!("note: the model config is taken from the checkpoint ({profile_name}), not --profile");
            }
            let step = trainer.optimizer().step();
            let mut rows = read_csv(&run_dir.join(LOSS_CSV))?;
            rows.retain(|r| r.step <= step);
            (trainer, rows)
        }
    };
    let extra = run_extra(&args, &profile_name, &data, &schedule);
    let start = trainer.optimizer().step();
    let cfg = *trainer.model().config();
    let params = cfg.param_counts();

    let out = &args.out;
    fs::create_dir_all(out).map_err(|e| arg_error("--out", format!("{}: {e}", out.display())))?;
    let ckpt_dir = out.join(CHECKPOINT_DIR);

    // ---- baseline and initial evaluation -------------------------------------------------------
    let unigram = corpus.unigram_baseline();
    let windows = corpus.eval_windows(args.eval_windows, args.seq);
    let mut eval_ws =
        trainer
            .model()
            .workspace(args.batch.min(windows.len()), args.seq, Mode::Inference)?;
    println!(
        "moe train: {} ({} bytes: {} train, {} held out), profile {profile_name} ({} parameters), \
         batch {} x seq {}, steps {}..{}",
        args.data.display(),
        data.len(),
        corpus.train.len(),
        corpus.heldout.len(),
        params.total,
        args.batch,
        args.seq,
        start,
        args.steps,
    );
    println!(
        "unigram baseline (train byte frequencies on the held-out bytes): {unigram:.4} nats/byte"
    );
    if start == 0 {
        let ce = evaluate(
            trainer.model(),
            &mut eval_ws,
            &corpus,
            &windows,
            args.batch,
            args.seq,
        )?;
        println!("held-out CE of the initial weights: {ce:.4} nats/byte");
        rows.push(Row {
            step: 0,
            heldout_ce: Some(ce),
            ..Row::default()
        });
    } else {
        println!("resumed at step {start}");
    }

    // ---- training loop ---------------------------------------------------------------------------
    let pb = ProgressBar::new(args.steps);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_position(start.min(args.steps));
    let (b, t) = (args.batch, args.seq);
    let mut tokens: Vec<TokenId> = Vec::with_capacity(b * t);
    let mut targets: Vec<TokenId> = Vec::with_capacity(b * t);
    let mut train_secs = 0.0f64;
    let mut trained_tokens = 0u64;
    let mut tps_ema = 0.0f64;
    let mut last_heldout = rows.iter().rev().find_map(|r| r.heldout_ce);
    let mut since_eval: (f64, u64) = (0.0, 0);
    let mut step = start;
    while step < args.steps {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        rng.set_stream(step + 1);
        corpus.sample_batch(&mut rng, b, t, &mut tokens, &mut targets);
        let t0 = Instant::now();
        let stats = trainer.train_step(&tokens, &targets, b, t)?;
        let secs = t0.elapsed().as_secs_f64();
        step = stats.step;
        train_secs += secs;
        trained_tokens += (b * t) as u64;
        let tps = (b * t) as f64 / secs.max(1e-9);
        tps_ema = if tps_ema == 0.0 {
            tps
        } else {
            0.95 * tps_ema + 0.05 * tps
        };
        since_eval.0 += f64::from(stats.ce_loss);
        since_eval.1 += 1;
        let mut row = Row {
            step,
            train_loss: Some(stats.loss),
            train_ce: Some(stats.ce_loss),
            aux: Some(stats.aux_loss),
            heldout_ce: None,
            lr: Some(stats.lr),
            grad_norm: Some(stats.grad_norm),
            tokens_per_sec: Some(tps),
        };
        let eval_now = step % args.eval_every == 0 || step == args.steps;
        if eval_now {
            let ce = evaluate(trainer.model(), &mut eval_ws, &corpus, &windows, b, t)?;
            row.heldout_ce = Some(ce);
            last_heldout = Some(ce);
        }
        rows.push(row);
        pb.set_position(step);
        pb.set_message(format!(
            "loss {:.3} ce {:.3} held-out {} | {:.0} tok/s",
            stats.loss,
            stats.ce_loss,
            last_heldout.map_or_else(|| "-".to_owned(), |x| format!("{x:.3}")),
            tps_ema
        ));
        if eval_now {
            say(
                &pb,
                format!(
                    "step {step:>6}/{}  train CE {:.4} (mean of {} steps)  held-out CE {:.4}  lr {:.3e}  {:.0} tok/s",
                    args.steps,
                    since_eval.0 / since_eval.1 as f64,
                    since_eval.1,
                    row.heldout_ce.unwrap_or(f64::NAN),
                    stats.lr,
                    tps_ema
                ),
            );
            since_eval = (0.0, 0);
            write_outputs(out, &ckpt_dir, &trainer, &extra, &rows, unigram)?;
        }
    }
    pb.finish_and_clear();
    if start >= args.steps {
        // Nothing trained: still leave a complete output directory.
        write_outputs(out, &ckpt_dir, &trainer, &extra, &rows, unigram)?;
    }

    // ---- summary -------------------------------------------------------------------------------
    let wall_s = wall.elapsed().as_secs_f64();
    let trained: Vec<&Row> = rows.iter().filter(|r| r.train_ce.is_some()).collect();
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
    let mean_tps = if train_secs > 0.0 {
        trained_tokens as f64 / train_secs
    } else {
        0.0
    };
    let summary = serde_json::json!({
        "data": args.data.display().to_string(),
        "data_bytes": data.len(),
        "train_bytes": corpus.train.len(),
        "heldout_bytes": corpus.heldout.len(),
        "tokenizer": "bytes (token id = byte value)",
        "profile": profile_name,
        "parameters": params.total,
        "seed": args.seed,
        "batch": b,
        "seq": t,
        "steps": step,
        "resumed_from_step": (start > 0).then_some(start),
        "lr": short(schedule.lr),
        "min_lr": short(schedule.min_lr),
        "warmup": schedule.warmup,
        "aux_alpha": short(args.aux_alpha),
        "unigram_baseline_ce": unigram,
        "final_heldout_ce": last_heldout,
        "final_train_ce_mean": tail_ce,
        "final_train_ce_window": tail.len(),
        "tokens_per_sec": mean_tps,
        "train_seconds": train_secs,
        "wall_seconds": wall_s,
    });
    let text = serde_json::to_string_pretty(&summary)? + "\n";
    checkpoint::write_atomic(&out.join(SUMMARY_JSON), |w| w.write_all(text.as_bytes()))?;

    println!("unigram baseline CE:   {unigram:.4} nats/byte");
    if let Some(ce) = tail_ce {
        println!(
            "final train CE:        {ce:.4} nats/byte (mean of the last {} steps)",
            tail.len()
        );
    }
    if let Some(ce) = last_heldout {
        println!(
            "final held-out CE:     {ce:.4} nats/byte ({} windows of {t})",
            windows.len()
        );
    }
    println!(
        "throughput:            {mean_tps:.0} tokens/s ({trained_tokens} tokens in {train_secs:.1} s of training steps)"
    );
    println!("wall time:             {wall_s:.1} s");
    println!(
        "outputs:               {} {} {} {}",
        out.join(LOSS_CSV).display(),
        out.join(LOSS_SVG).display(),
        ckpt_dir.display(),
        out.join(SUMMARY_JSON).display()
    );
    Ok(())
}

/// An f32 as the f64 of its shortest decimal form (0.01, not 0.009999999776).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn write_outputs(
    out: &Path,
    ckpt_dir: &Path,
    trainer: &Trainer,
    extra: &BTreeMap<String, String>,
    rows: &[Row],
    unigram: f64,
) -> Result<(), BoxError> {
    checkpoint::save_training(ckpt_dir, trainer, extra)?;
    write_csv(&out.join(LOSS_CSV), rows)?;
    let svg = plot::loss_svg(rows, unigram)?;
    checkpoint::write_atomic(&out.join(LOSS_SVG), |w| w.write_all(svg.as_bytes()))?;
    Ok(())
}

/// The loss plot (plotters' SVG backend only, as in `moe report`: text is SVG
/// `<text>` laid out with plotters' built-in metrics, no font library).
mod plot {
    use plotters::prelude::*;

    use super::{BoxError, Row};

    const SIZE: (u32, u32) = (900, 520);

    /// The SVG text of the loss curves: train CE per step (light), its moving
    /// average, held-out CE at the evaluation steps, and the unigram baseline.
    pub(super) fn loss_svg(rows: &[Row], unigram: f64) -> Result<String, BoxError> {
        let train: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.step as f64, f64::from(r.train_ce?))))
            .collect();
        let held: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.step as f64, r.heldout_ce?)))
            .collect();
        let window = (train.len() / 50).clamp(1, 100);
        let smooth: Vec<(f64, f64)> = train
            .iter()
            .enumerate()
            .map(|(i, &(x, _))| {
                let lo = i.saturating_sub(window - 1);
                let s = &train[lo..=i];
                (x, s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64)
            })
            .collect();
        let xmax = rows.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
        // Show everything up to twice the baseline; the first steps (CE ≈ 7) are cut off.
        let observed = train
            .iter()
            .chain(&held)
            .map(|p| p.1)
            .fold(unigram, f64::max);
        let ymax = observed.min(2.0 * unigram).max(1.0) * 1.05;
        let clamp = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
            pts.iter().map(|&(x, y)| (x, y.min(ymax))).collect()
        };

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption("moe train: byte-level cross-entropy", ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(42)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("cross-entropy (nats/byte)")
                .x_labels(10)
                .x_label_formatter(&|x| format!("{}", x.round()))
                .y_labels(10)
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            let light = RGBColor(0x9e, 0xc5, 0xe8);
            let blue = RGBColor(0x1f, 0x77, 0xb4);
            let red = RGBColor(0xd6, 0x27, 0x28);
            let gray = RGBColor(0x55, 0x55, 0x55);
            if !train.is_empty() {
                chart
                    .draw_series(LineSeries::new(clamp(&train), light.stroke_width(1)))?
                    .label("train CE (per step)")
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(1))
                    });
                chart
                    .draw_series(LineSeries::new(clamp(&smooth), blue.stroke_width(2)))?
                    .label(format!("train CE (moving average of {window})"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
                    });
            }
            if !held.is_empty() {
                let held = clamp(&held);
                chart
                    .draw_series(LineSeries::new(held.iter().copied(), red.stroke_width(2)))?
                    .label("held-out CE")
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2))
                    });
                chart.draw_series(held.iter().map(|&p| Circle::new(p, 3, red.filled())))?;
            }
            let style = ShapeStyle::from(&gray).stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.0, unigram), (xmax, unigram)],
                    6,
                    4,
                    style,
                ))?
                .label(format!("unigram baseline ({unigram:.3})"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
            root.present()?;
        }
        Ok(svg)
    }
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
        let svg = plot::loss_svg(&rows, 3.0).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("held-out CE") && svg.contains("train CE"));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
