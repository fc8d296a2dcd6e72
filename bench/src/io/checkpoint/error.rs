//! [`CheckpointError`]: which file, and what is wrong with it.
//!
//! The messages are part of the interface: the tests assert on them and
//! `docs/errors.md` is generated from them, so `Display` reproduces them byte
//! for byte (`PATH: …`, or for a step mismatch `DIR: …`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use safetensors::SafeTensorError;

use super::{MODEL_FILE, OPTIMIZER_FILE};
use crate::io::read::{fmt_kind, ReadError, ReadErrorKind};

/// Everything that can go wrong while saving or loading a checkpoint: the
/// file (or directory) concerned, and what went wrong there.
pub struct CheckpointError {
    /// The file involved (for [`CheckpointErrorKind::StepMismatch`], the
    /// checkpoint directory; for [`CheckpointErrorKind::Model`], the file or
    /// directory being saved or loaded, not shown in the message).
    pub path: PathBuf,
    /// What went wrong.
    pub kind: CheckpointErrorKind,
}

/// What went wrong, per [`CheckpointError`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointErrorKind {
    /// A file or directory could not be read, written, created or renamed.
    Io {
        /// The OS error.
        source: io::Error,
    },
    /// `config.json` is not valid JSON (or not a JSON object).
    ConfigJson {
        /// The parser's error (line and column).
        source: serde_json::Error,
    },
    /// A required field is absent from `config.json` (or `null`).
    MissingField {
        /// The field, e.g. `"hidden_size"`.
        field: &'static str,
    },
    /// A field of `config.json` has the wrong type or an unsupported value.
    InvalidField {
        /// The field, e.g. `"torch_dtype"` or `"rope_parameters.rope_type"`.
        field: String,
        /// What the field must be.
        expected: String,
        /// What it was (as JSON).
        found: String,
    },
    /// The fields of `config.json` parse but do not form a valid
    /// [`moe_core::Config`] (e.g. `num_key_value_heads` does not divide
    /// `num_attention_heads`).
    InvalidConfig {
        /// The validation error of moe-core, naming the field.
        source: moe_core::Error,
    },
    /// A safetensors file is corrupt: unreadable header, bad offsets, …
    Safetensors {
        /// The safetensors crate's error.
        source: SafeTensorError,
    },
    /// A safetensors file is shorter than its header says.
    Truncated {
        /// The first tensor whose data lies (partly) past the end of the file;
        /// `None` if the header itself is cut off.
        tensor: Option<String>,
        /// File length (bytes) the header requires.
        expected_bytes: u64,
        /// Actual file length (bytes).
        actual_bytes: u64,
    },
    /// A tensor the layout needs is not in the file.
    MissingTensor {
        /// The tensor's name.
        name: String,
    },
    /// A tensor is not stored as F32, BF16 or F16 (F32 only for optimizer state).
    WrongDtype {
        /// The tensor's name.
        name: String,
        /// The dtype found, e.g. `"F16"`.
        found: String,
    },
    /// A tensor's shape differs from the layout's.
    WrongShape {
        /// The tensor's name.
        name: String,
        /// Shape the layout requires.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The file holds a tensor the layout does not know.
    UnexpectedTensor {
        /// The tensor's name.
        name: String,
    },
    /// A tensor holds NaN or ±Inf (on load), or a parameter is non-finite (on save).
    NonFinite {
        /// The tensor's name.
        name: String,
        /// Flat (row-major) index of the first non-finite element within the tensor.
        index: usize,
        /// The value there.
        value: f32,
    },
    /// A tensor element is finite but outside its domain (e.g. a negative AdamW second moment).
    InvalidValue {
        /// The tensor's name.
        name: String,
        /// Flat index within the tensor.
        index: usize,
        /// The value there.
        value: f32,
        /// What the value must satisfy.
        expected: &'static str,
    },
    /// A `__metadata__` entry of a safetensors file is missing or invalid.
    Metadata {
        /// The key, e.g. `"step"`.
        key: String,
        /// What it must be.
        expected: String,
        /// What it was (`None`: absent).
        found: Option<String>,
    },
    /// `model.safetensors` and `optimizer.safetensors` come from different
    /// saves (`path` is the checkpoint directory).
    StepMismatch {
        /// Step recorded in `model.safetensors` (`None`: not a training save).
        model_step: Option<u64>,
        /// Step recorded in `optimizer.safetensors`.
        optimizer_step: u64,
    },
    /// A moe-core error (building the model or trainer, allocation, …).
    Model(moe_core::Error),
    /// An input file is not a regular file, is larger than its kind allows,
    /// could not be buffered or changed while read (see
    /// [`crate::io::read`]; an ordinary OS error is [`CheckpointErrorKind::Io`]).
    Read(ReadErrorKind),
    /// `model.safetensors` and `optimizer.safetensors` were written by
    /// different training runs (`path` is the checkpoint directory).
    RunMismatch {
        /// `run_id` of `model.safetensors` (`None`: absent).
        model_run: Option<String>,
        /// `run_id` of `optimizer.safetensors` (`None`: absent).
        optimizer_run: Option<String>,
    },
    /// Sharded checkpoint: the same tensor is stored in two shards (`path`
    /// is the second shard).
    DuplicateTensor {
        /// The tensor's name.
        name: String,
        /// The shard that holds it first.
        first: PathBuf,
    },
    /// Sharded checkpoint: `model.safetensors.index.json`'s `weight_map`
    /// and the shards disagree (`path` is the index or the shard).
    IndexMismatch {
        /// The tensor's name.
        name: String,
        /// What is wrong, e.g. "the index places it in model-00002-of-00002.safetensors, which does not hold it".
        detail: String,
    },
    /// Another `moe train` holds the output directory's lock (`path` is the directory).
    Locked {
        /// The process id recorded in the lock file by its holder, if readable.
        pid: Option<u32>,
    },
}

impl CheckpointError {
    /// An error of `kind` about `path`.
    pub fn new(path: impl Into<PathBuf>, kind: CheckpointErrorKind) -> Self {
        CheckpointError {
            path: path.into(),
            kind,
        }
    }
}

/// `map_err` adapter: an OS error about `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::new(path, CheckpointErrorKind::Io { source })
}

/// A bounded-read failure as a checkpoint error: an OS error keeps its
/// [`CheckpointErrorKind::Io`] (and message), a non-UTF-8 text file reads as
/// the OS error `std::fs::read_to_string` gave, the rest are
/// [`CheckpointErrorKind::Read`].
impl From<ReadError> for CheckpointError {
    fn from(e: ReadError) -> Self {
        let kind = match e.kind {
            ReadErrorKind::Io(source) => CheckpointErrorKind::Io { source },
            ReadErrorKind::NotUtf8 => CheckpointErrorKind::Io {
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ),
            },
            kind => CheckpointErrorKind::Read(kind),
        };
        CheckpointError { path: e.path, kind }
    }
}

/// `map_err` adapter: a moe-core error while handling `path`.
pub(crate) fn model_err(path: &Path) -> impl FnOnce(moe_core::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::new(path, CheckpointErrorKind::Model(e))
}

/// `Variant { path: …, fields… }`, as when every variant held its own path:
/// the variant name comes first (the error table of `docs/errors.md` reads it
/// from here), and a moe-core error shows as `Model(…)`.
impl fmt::Debug for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = format!("{:?}", self.kind);
        match kind.split_once(" { ") {
            _ if matches!(self.kind, CheckpointErrorKind::Model(_)) => f.write_str(&kind),
            Some((variant, fields)) => write!(f, "{variant} {{ path: {:?}, {fields}", self.path),
            None => write!(f, "{kind} {{ path: {:?} }}", self.path),
        }
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointErrorKind as K;
        let path = self.path.display();
        match &self.kind {
            K::Io { source } => write!(f, "{path}: {source}"),
            K::ConfigJson { source } => write!(f, "{path}: invalid JSON: {source}"),
            K::MissingField { field } => write!(f, "{path}: missing field `{field}`"),
            K::InvalidField {
                field,
                expected,
                found,
            } => write!(f, "{path}: field `{field}` must be {expected}, found {found}"),
            K::InvalidConfig { source } => write!(f, "{path}: {source}"),
            K::Safetensors { source } => write!(f, "{path}: corrupt safetensors file: {source}"),
            K::Truncated {
                tensor,
                expected_bytes,
                actual_bytes,
            } => {
                write!(
                    f,
                    "{path}: truncated: the header requires {expected_bytes} bytes, the file has {actual_bytes}"
                )?;
                match tensor {
                    Some(t) => write!(f, " (tensor `{t}` is cut off)"),
                    None => write!(f, " (the header itself is cut off)"),
                }
            }
            K::MissingTensor { name } => write!(f, "{path}: missing tensor `{name}`"),
            K::WrongDtype { name, found } => {
                write!(f, "{path}: tensor `{name}` must be F32, BF16 or F16, found {found}")
            }
            K::WrongShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "{path}: tensor `{name}` must have shape {expected:?}, found {found:?}"
            ),
            K::UnexpectedTensor { name } => write!(
                f,
                "{path}: unexpected tensor `{name}` (not a parameter of this config)"
            ),
            K::NonFinite { name, index, value } => write!(
                f,
                "{path}: tensor `{name}` holds a non-finite value {value} at flat index {index}"
            ),
            K::InvalidValue {
                name,
                index,
                value,
                expected,
            } => write!(
                f,
                "{path}: tensor `{name}` at flat index {index} must be {expected}, found {value}"
            ),
            K::Metadata {
                key,
                expected,
                found: Some(v),
            } => write!(f, "{path}: metadata `{key}` must be {expected}, found {v:?}"),
            K::Metadata {
                key,
                expected,
                found: None,
            } => write!(f, "{path}: metadata `{key}` is missing (expected {expected})"),
            K::StepMismatch {
                model_step: Some(s),
                optimizer_step,
            } => write!(
                f,
                "{path}: {MODEL_FILE} is from step {s} but {OPTIMIZER_FILE} from step {optimizer_step} (files of two different saves)"
            ),
            K::StepMismatch {
                model_step: None,
                optimizer_step,
            } => write!(
                f,
                "{path}: {MODEL_FILE} was not written by a training save (no `step` metadata) but {OPTIMIZER_FILE} is from step {optimizer_step}"
            ),
            K::Model(e) => write!(f, "{e}"),
            K::Read(kind) => fmt_kind(&self.path, kind, f),
            K::RunMismatch {
                model_run,
                optimizer_run,
            } => {
                let show = |r: &Option<String>| r.as_deref().map_or("no run id".to_owned(), |s| format!("run {s}"));
                write!(
                    f,
                    "{path}: {MODEL_FILE} is from {} but {OPTIMIZER_FILE} from {} (files of two different training runs)",
                    show(model_run),
                    show(optimizer_run)
                )
            }
            K::DuplicateTensor { name, first } => write!(
                f,
                "{path}: tensor `{name}` is also stored in {} (a tensor must be in exactly one shard)",
                first.display()
            ),
            K::IndexMismatch { name, detail } => {
                write!(f, "{path}: tensor `{name}`: {detail}")
            }
            K::Locked { pid } => {
                write!(f, "{path}: the output directory is in use by another `moe train`")?;
                match pid {
                    Some(p) => write!(f, " (pid {p})"),
                    None => Ok(()),
                }?;
                write!(f, "; wait for it to finish or choose another --out")
            }
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            CheckpointErrorKind::Io { source } => Some(source),
            CheckpointErrorKind::ConfigJson { source } => Some(source),
            CheckpointErrorKind::InvalidConfig { source } => Some(source),
            CheckpointErrorKind::Safetensors { source } => Some(source),
            CheckpointErrorKind::Model(e) => Some(e),
            _ => None,
        }
    }
}
