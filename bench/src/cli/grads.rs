//! `moe grads`: logits, losses and every parameter gradient of one batch, for
//! comparison with another implementation (CONTRACT §8).
//!
//! ```text
//! moe grads --checkpoint DIR --tokens tokens.json --out result.safetensors
//! ```
//!
//! `tokens.json` is `{"input_ids": [[…], …], "targets": [[…], …], "aux_alpha": 0.01}`:
//! `b` rows of `t` ids each (the same shape for both), every id `< vocab_size`;
//! a target may also be `-100` (Hugging Face's `ignore_index`, mapped to
//! [`moe_core::IGNORE_INDEX`]: the CE is the mean over the other positions,
//! as `F.cross_entropy(…, ignore_index=-100)`; not every target may be
//! ignored); targets are used per position as given (no shifting); `aux_alpha` defaults to
//! 0.01 when absent. The result file (written atomically) holds `logits`
//! `[b, t, v]`, the 0-d `loss`, `ce_loss` and `aux_loss`, and `<name>.grad` for every
//! parameter of CONTRACT §2, in layout order (zeros for an expert that received no
//! token). Its `__metadata__` records `batch`, `seq` and `aux_alpha`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use moe_core::{Losses, MoETransformer, Mode, TokenId};
use serde_json::Value;

use crate::io::checkpoint::{self, CheckpointError, CheckpointErrorKind, F32Tensor};
use crate::io::read::{read_to_string_bounded, ReadError, ReadErrorKind, MAX_JSON_BYTES};

/// Default `aux_alpha` when `tokens.json` has none (CONTRACT §4).
pub const DEFAULT_AUX_ALPHA: f32 = 0.01;

/// Arguments of `moe grads`.
#[derive(Debug, Clone, clap::Args)]
pub struct GradsArgs {
    /// Checkpoint directory (config.json + model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Token file: {"input_ids": [[…]], "targets": [[…]], "aux_alpha": 0.01}.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// Output safetensors file (logits, losses and `<name>.grad` for every parameter).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Threads (the batch split into `moe_core::DEFAULT_MICRO_BATCHES`
    /// micro-batches, as `moe train` does: the same gradients for every N);
    /// default: the available cores.
    #[arg(long, value_name = "N", value_parser = crate::cli::threads_arg, default_value_t = moe_core::available_threads())]
    pub threads: usize,
}

/// A problem with the content of `tokens.json`.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokensError {
    /// Not valid JSON.
    Json(serde_json::Error),
    /// A required field is absent.
    MissingField {
        /// `"input_ids"` or `"targets"`.
        field: &'static str,
    },
    /// A value has the wrong JSON type.
    WrongType {
        /// Where, e.g. `"input_ids[1]"` or `"(root)"`.
        at: String,
        /// The type it must have.
        expected: &'static str,
    },
    /// `input_ids` (or one of its rows) is empty.
    Empty {
        /// Where, e.g. `"input_ids"` or `"input_ids[0]"`.
        at: String,
    },
    /// Rows of different lengths.
    Ragged {
        /// `"input_ids"` or `"targets"`.
        field: &'static str,
        /// The offending row.
        row: usize,
        /// Length of row 0 of `input_ids`.
        expected: usize,
        /// Length of this row.
        found: usize,
    },
    /// `targets` and `input_ids` have a different number of rows.
    RowCount {
        /// Rows of `input_ids`.
        expected: usize,
        /// Rows of `targets`.
        found: usize,
    },
    /// An id that is not an integer in `[0, vocab)`.
    BadId {
        /// `"input_ids"` or `"targets"`.
        field: &'static str,
        /// Row.
        row: usize,
        /// Column.
        col: usize,
        /// The value as written.
        value: String,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// Every target is `-100`: the CE would be a mean over no position.
    AllIgnored,
    /// `aux_alpha` is not a finite number `>= 0`.
    BadAlpha {
        /// The value as written.
        value: String,
    },
    /// `t` exceeds the model's `max_position_embeddings`.
    SeqTooLong {
        /// Row length.
        seq: usize,
        /// The model's maximum.
        max: usize,
    },
}

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokensError::Json(e) => write!(f, "invalid JSON: {e}"),
            TokensError::MissingField { field } => write!(f, "missing field `{field}`"),
            TokensError::WrongType { at, expected } => write!(f, "`{at}` must be {expected}"),
            TokensError::Empty { at } => write!(f, "`{at}` must not be empty"),
            TokensError::Ragged {
                field,
                row,
                expected,
                found,
            } => write!(
                f,
                "`{field}[{row}]` has {found} ids, expected {expected} (every row of input_ids and targets must have the same length)"
            ),
            TokensError::RowCount { expected, found } => write!(
                f,
                "`targets` has {found} rows, expected {expected} (as many as input_ids)"
            ),
            TokensError::BadId {
                field,
                row,
                col,
                value,
                vocab,
            } if *field == "targets" => write!(
                f,
                "`{field}[{row}][{col}]` = {value} is not a token id: must be an integer in [0, {vocab}) or -100 (ignore_index)"
            ),
            TokensError::BadId {
                field,
                row,
                col,
                value,
                vocab,
            } => write!(
                f,
                "`{field}[{row}][{col}]` = {value} is not a token id: must be an integer in [0, {vocab})"
            ),
            TokensError::AllIgnored => write!(
                f,
                "every entry of `targets` is -100 (ignore_index): the cross-entropy needs at least one target"
            ),
            TokensError::BadAlpha { value } => {
                write!(f, "`aux_alpha` must be a finite number >= 0, got {value}")
            }
            TokensError::SeqTooLong { seq, max } => write!(
                f,
                "rows have {seq} ids, more than the model's max_position_embeddings = {max}"
            ),
        }
    }
}

impl std::error::Error for TokensError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokensError::Json(e) => Some(e),
            _ => None,
        }
    }
}

/// Everything `moe grads` can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum GradsError {
    /// Loading the checkpoint or writing the result.
    Checkpoint(CheckpointError),
    /// `tokens.json` could not be read.
    TokensIo {
        /// The token file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `tokens.json` is not a regular file, too large, or changed while read
    /// (see [`crate::io::read`]; an OS error is [`GradsError::TokensIo`]).
    TokensRead(ReadError),
    /// A buffer the batch of `tokens.json` needs could not be allocated
    /// (`source` is moe-core's `AllocationFailed { bytes }` or `Overflow`).
    TooLarge {
        /// The token file whose batch asked for it.
        path: PathBuf,
        /// moe-core's error.
        source: moe_core::Error,
    },
    /// `tokens.json` is invalid.
    Tokens {
        /// The token file.
        path: PathBuf,
        /// What is wrong.
        source: TokensError,
    },
    /// The forward/backward pass failed (e.g. a non-finite loss).
    Model(moe_core::Error),
}

impl fmt::Display for GradsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GradsError::Checkpoint(e) => write!(f, "{e}"),
            GradsError::TokensIo { path, source } => write!(f, "{}: {source}", path.display()),
            GradsError::TokensRead(e) => write!(f, "{e}"),
            GradsError::TooLarge { path, source } => {
                write!(f, "{}: the batch is too large: {source}", path.display())
            }
            GradsError::Tokens { path, source } => write!(f, "{}: {source}", path.display()),
            GradsError::Model(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GradsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GradsError::Checkpoint(e) => Some(e),
            GradsError::TokensIo { source, .. } => Some(source),
            GradsError::TokensRead(e) => Some(e),
            GradsError::TooLarge { source, .. } => Some(source),
            GradsError::Tokens { source, .. } => Some(source),
            GradsError::Model(e) => Some(e),
        }
    }
}

impl From<CheckpointError> for GradsError {
    fn from(e: CheckpointError) -> Self {
        GradsError::Checkpoint(e)
    }
}

impl From<moe_core::Error> for GradsError {
    fn from(e: moe_core::Error) -> Self {
        GradsError::Model(e)
    }
}

/// A validated token batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// Rows `b`.
    pub batch: usize,
    /// Ids per row `t`.
    pub seq: usize,
    /// `[b, t]` row-major.
    pub input_ids: Vec<TokenId>,
    /// `[b, t]` row-major.
    pub targets: Vec<TokenId>,
    /// Weight of the aux loss.
    pub aux_alpha: f32,
}

fn id_matrix(
    root: &Value,
    field: &'static str,
    rows_expected: Option<(usize, usize)>,
    vocab: usize,
) -> Result<(usize, usize, Vec<TokenId>), TokensError> {
    let v = root
        .get(field)
        .filter(|v| !v.is_null())
        .ok_or(TokensError::MissingField { field })?;
    let rows = v.as_array().ok_or_else(|| TokensError::WrongType {
        at: field.to_owned(),
        expected: "an array of rows (arrays of token ids)",
    })?;
    if rows.is_empty() {
        return Err(TokensError::Empty { at: field.into() });
    }
    if let Some((b, _)) = rows_expected {
        if rows.len() != b {
            return Err(TokensError::RowCount {
                expected: b,
                found: rows.len(),
            });
        }
    }
    let mut t_expected = rows_expected.map(|(_, t)| t);
    let mut ids = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let row = row.as_array().ok_or_else(|| TokensError::WrongType {
            at: format!("{field}[{r}]"),
            expected: "an array of token ids",
        })?;
        if row.is_empty() {
            return Err(TokensError::Empty {
                at: format!("{field}[{r}]"),
            });
        }
        match t_expected {
            None => t_expected = Some(row.len()),
            Some(t) if t != row.len() => {
                return Err(TokensError::Ragged {
                    field,
                    row: r,
                    expected: t,
                    found: row.len(),
                })
            }
            Some(_) => {}
        }
        for (c, x) in row.iter().enumerate() {
            // Targets only: HF's ignore_index.
            if field == "targets" && x.as_i64() == Some(-100) {
                ids.push(moe_core::IGNORE_INDEX);
                continue;
            }
            let id =
                x.as_u64()
                    .filter(|&id| id < vocab as u64)
                    .ok_or_else(|| TokensError::BadId {
                        field,
                        row: r,
                        col: c,
                        value: x.to_string(),
                        vocab,
                    })?;
            ids.push(id as TokenId);
        }
    }
    Ok((rows.len(), t_expected.unwrap_or(0), ids))
}

/// Parses and validates the text of a token file against a model with
/// `vocab` tokens and sequences of at most `max_seq`.
///
/// # Errors
/// A [`TokensError`] naming the field, row and column.
pub fn parse_tokens(text: &str, vocab: usize, max_seq: usize) -> Result<TokenBatch, TokensError> {
    let root: Value = serde_json::from_str(text).map_err(TokensError::Json)?;
    if !root.is_object() {
        return Err(TokensError::WrongType {
            at: "(root)".into(),
            expected: "an object {\"input_ids\", \"targets\", \"aux_alpha\"}",
        });
    }
    let (batch, seq, input_ids) = id_matrix(&root, "input_ids", None, vocab)?;
    let (_, _, targets) = id_matrix(&root, "targets", Some((batch, seq)), vocab)?;
    if seq > max_seq {
        return Err(TokensError::SeqTooLong { seq, max: max_seq });
    }
    if targets.iter().all(|&t| t == moe_core::IGNORE_INDEX) {
        return Err(TokensError::AllIgnored);
    }
    let aux_alpha = match root.get("aux_alpha").filter(|v| !v.is_null()) {
        None => DEFAULT_AUX_ALPHA,
        Some(v) => match v.as_f64() {
            Some(a) if a.is_finite() && a >= 0.0 && (a as f32).is_finite() => a as f32,
            _ => {
                return Err(TokensError::BadAlpha {
                    value: v.to_string(),
                })
            }
        },
    };
    Ok(TokenBatch {
        batch,
        seq,
        input_ids,
        targets,
        aux_alpha,
    })
}

/// Reads and validates a token file for `model`.
///
/// # Errors
/// [`GradsError::TokensIo`], [`GradsError::Tokens`].
pub fn read_tokens(path: &Path, model: &MoETransformer) -> Result<TokenBatch, GradsError> {
    let text = read_to_string_bounded(path, MAX_JSON_BYTES).map_err(|e| match e.kind {
        ReadErrorKind::Io(source) => GradsError::TokensIo {
            path: e.path,
            source,
        },
        // As `std::fs::read_to_string` reported it before.
        ReadErrorKind::NotUtf8 => GradsError::TokensIo {
            path: e.path,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ),
        },
        _ => GradsError::TokensRead(e),
    })?;
    let cfg = model.config();
    parse_tokens(&text, cfg.vocab_size, cfg.max_position_embeddings).map_err(|source| {
        GradsError::Tokens {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Logits, losses and gradients of one batch.
#[derive(Debug, Clone)]
pub struct GradsOutput {
    /// `[b, t, v]`.
    pub logits: Vec<f32>,
    /// Total, CE and aux losses.
    pub losses: Losses,
    /// Flat gradient buffer (parameter layout).
    pub grads: Vec<f32>,
}

/// `n` zeros, or `AllocationFailed { bytes }`.
fn try_zeros(n: usize) -> Result<Vec<f32>, moe_core::Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| moe_core::Error::AllocationFailed {
            bytes: n.saturating_mul(4),
        })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// One forward + backward over `tokens` (gradients start at zero).
///
/// # Errors
/// moe-core's errors (shapes, token ids, non-finite loss, allocation).
pub fn compute(
    model: &MoETransformer,
    tokens: &TokenBatch,
) -> Result<GradsOutput, moe_core::Error> {
    let (b, t) = (tokens.batch, tokens.seq);
    let mut ws = model.workspace(b, t, Mode::Training)?;
    let n_logits = b
        .checked_mul(t)
        .and_then(|n| n.checked_mul(model.config().vocab_size))
        .ok_or(moe_core::Error::Overflow { what: "logits" })?;
    let mut logits = try_zeros(n_logits)?;
    let mut grads = try_zeros(model.layout().total)?;
    let losses = model.loss_and_grad(
        &mut ws,
        &mut grads,
        &tokens.input_ids,
        &tokens.targets,
        b,
        t,
        tokens.aux_alpha,
        Some(&mut logits),
    )?;
    Ok(GradsOutput {
        logits,
        losses,
        grads,
    })
}

/// [`compute`] as `moe train` computes a step's gradients: the batch split
/// into `DEFAULT_MICRO_BATCHES` micro-batches run on `threads` threads (the
/// same bits for every thread count; within the golden tolerance of [`compute`]).
///
/// # Errors
/// As [`compute`]; `InvalidParameter` (`"threads"`) for 0.
pub fn compute_with_threads(
    model: &MoETransformer,
    tokens: &TokenBatch,
    threads: usize,
) -> Result<GradsOutput, moe_core::Error> {
    let (b, t) = (tokens.batch, tokens.seq);
    let n_logits = b
        .checked_mul(t)
        .and_then(|n| n.checked_mul(model.config().vocab_size))
        .ok_or(moe_core::Error::Overflow { what: "logits" })?;
    let mut logits = try_zeros(n_logits)?;
    let config = moe_core::TrainConfig {
        aux_alpha: tokens.aux_alpha,
        ..moe_core::TrainConfig::default()
    };
    let mut tr = moe_core::Trainer::with_threads(model.clone(), config, b, t, threads)?;
    let losses =
        tr.compute_gradients(&tokens.input_ids, &tokens.targets, b, t, Some(&mut logits))?;
    let mut grads = try_zeros(0)?;
    grads.try_reserve_exact(model.layout().total).map_err(|_| {
        moe_core::Error::AllocationFailed {
            bytes: model.layout().total * 4,
        }
    })?;
    grads.extend_from_slice(tr.grads());
    Ok(GradsOutput {
        logits,
        losses,
        grads,
    })
}

/// Writes the result file of `moe grads` atomically.
///
/// # Errors
/// [`CheckpointErrorKind::Io`].
pub fn write_result(
    path: &Path,
    model: &MoETransformer,
    tokens: &TokenBatch,
    out: &GradsOutput,
) -> Result<(), CheckpointError> {
    let v = model.config().vocab_size;
    let loss = [out.losses.loss];
    let ce = [out.losses.ce];
    let aux = [out.losses.aux];
    let mut tensors = vec![
        F32Tensor {
            name: "logits".into(),
            shape: vec![tokens.batch, tokens.seq, v],
            data: &out.logits,
        },
        F32Tensor {
            name: "loss".into(),
            shape: vec![],
            data: &loss,
        },
        F32Tensor {
            name: "ce_loss".into(),
            shape: vec![],
            data: &ce,
        },
        F32Tensor {
            name: "aux_loss".into(),
            shape: vec![],
            data: &aux,
        },
    ];
    tensors.extend(model.layout().tensors().iter().map(|t| F32Tensor {
        name: format!("{}.grad", t.name),
        shape: t.shape.clone(),
        data: &out.grads[t.range()],
    }));
    let mut meta = BTreeMap::new();
    meta.insert("batch".to_owned(), tokens.batch.to_string());
    meta.insert("seq".to_owned(), tokens.seq.to_string());
    meta.insert("aux_alpha".to_owned(), tokens.aux_alpha.to_string());
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|source| CheckpointError::new(dir, CheckpointErrorKind::Io { source }))?;
    }
    checkpoint::write_f32_safetensors(path, &tensors, &meta)
}

/// Runs `moe grads`.
///
/// # Errors
/// Any [`GradsError`]; nothing is written under `--out` unless everything succeeded.
pub fn run(args: GradsArgs) -> Result<(), GradsError> {
    let model = checkpoint::load(crate::cli::checkpoint_dir(&args.checkpoint))?;
    let tokens = read_tokens(&args.tokens, &model)?;
    let too_large = |source| GradsError::TooLarge {
        path: args.tokens.clone(),
        source,
    };
    // The workspace grows linearly in the batch: check one row's size times
    // b against the host's memory before allocating it.
    let row = model
        .workspace(1, tokens.seq, Mode::Training)
        .map_err(too_large)?;
    let need = (row.bytes() as u64).saturating_mul(tokens.batch as u64);
    drop(row);
    if crate::cli::physical_memory().is_some_and(|mem| need > mem) {
        return Err(too_large(moe_core::Error::AllocationFailed {
            bytes: usize::try_from(need).unwrap_or(usize::MAX),
        }));
    }
    let out = compute_with_threads(&model, &tokens, args.threads).map_err(|e| match e {
        moe_core::Error::AllocationFailed { .. } | moe_core::Error::Overflow { .. } => too_large(e),
        e => GradsError::Model(e),
    })?;
    write_result(&args.out, &model, &tokens, &out)?;
    println!(
        "b = {}, t = {}, aux_alpha = {}: loss = {}, ce_loss = {}, aux_loss = {}; wrote {}",
        tokens.batch,
        tokens.seq,
        tokens.aux_alpha,
        out.losses.loss,
        out.losses.ce,
        out.losses.aux,
        args.out.display()
    );
    Ok(())
}
