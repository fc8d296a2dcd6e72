//! Checkpoint directories (CONTRACT §8) and atomic safetensors writing.
//!
//! A checkpoint directory holds
//!
//! * `config.json` — the Hugging Face Mixtral fields (so that
//!   `transformers.MixtralForCausalLM.from_pretrained(dir)` loads it), with our
//!   own keys (`format_version`, `rope_base`, `rope_alpha`) under `"moe_rs"`;
//! * `model.safetensors` — every tensor of [`Layout::tensors`], by its CONTRACT §2
//!   name, F32, in flat-layout order (so the data section is the flat parameter
//!   buffer, byte for byte, little-endian), with `__metadata__ = {"format": "pt"}`;
//! * for a training checkpoint ([`save_training`]), also `optimizer.safetensors`:
//!   `m.<name>` for every tensor, then `v.<name>` for every tensor, and the AdamW
//!   step count in `__metadata__["step"]` (also written into `model.safetensors`'s
//!   metadata, so that a model file and an optimizer file from different saves are
//!   detected on load).
//!
//! # Atomicity
//!
//! Every file is first written to a hidden temporary file in the same directory
//! (`.NAME.tmp.PID.N`), flushed and `fsync`ed; only when *all* files of a save
//! have been written are they renamed over their final names, then the directory
//! is `fsync`ed. A failing save (disk full, read-only directory, a non-finite
//! parameter, …) removes its temporary files and leaves the previous checkpoint
//! untouched; no file is ever half-written under its final name. The only
//! window in which a directory can hold files of two different saves is between
//! the renames of one save (a crash there); [`load_training`] detects it through
//! the step stored in both safetensors files.
//!
//! # Loading
//!
//! [`load`] never panics on any bytes: every problem is a [`CheckpointError`]
//! naming the file, the field or tensor, and the expected and actual values.
//! It also accepts configs written by `transformers`' `save_pretrained`
//! (`rope_parameters.rope_theta` instead of `rope_theta`, `dtype` instead of
//! `torch_dtype`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use moe_core::{Config, Layout, MoETransformer, TrainConfig, Trainer};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::Serialize;
use serde_json::{Map, Value};

/// File name of the model config inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the AdamW state inside a training checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Version of our checkpoint format, written as `moe_rs.format_version`.
/// Loading refuses a newer version.
pub const FORMAT_VERSION: u64 = 1;
/// `router_aux_loss_coef` written by [`save`] (the CONTRACT §4 default alpha).
pub const DEFAULT_ROUTER_AUX_LOSS_COEF: f32 = 0.01;
/// Value of `__metadata__["format"]` in `optimizer.safetensors`.
pub const OPTIMIZER_FORMAT: &str = "moe-rs/adamw";
/// Prefix of the caller's extra keys in `optimizer.safetensors`' metadata.
const EXTRA_PREFIX: &str = "extra.";

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Everything that can go wrong while saving or loading a checkpoint.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file or directory could not be read, written, created or renamed.
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `config.json` is not valid JSON (or not a JSON object).
    ConfigJson {
        /// The config file.
        path: PathBuf,
        /// The parser's error (line and column).
        source: serde_json::Error,
    },
    /// A required field is absent from `config.json` (or `null`).
    MissingField {
        /// The config file.
        path: PathBuf,
        /// The field, e.g. `"hidden_size"`.
        field: &'static str,
    },
    /// A field of `config.json` has the wrong type or an unsupported value.
    InvalidField {
        /// The config file.
        path: PathBuf,
        /// The field, e.g. `"torch_dtype"` or `"rope_parameters.rope_type"`.
        field: String,
        /// What the field must be.
        expected: String,
        /// What it was (as JSON).
        found: String,
    },
    /// The fields of `config.json` parse but do not form a valid [`Config`]
    /// (e.g. `num_key_value_heads` does not divide `num_attention_heads`).
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// The validation error of moe-core, naming the field.
        source: moe_core::Error,
    },
    /// A safetensors file is corrupt: unreadable header, bad offsets, …
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors crate's error.
        source: SafeTensorError,
    },
    /// A safetensors file is shorter than its header says.
    Truncated {
        /// The file.
        path: PathBuf,
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
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor is not stored as F32.
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype found, e.g. `"F16"`.
        found: String,
    },
    /// A tensor's shape differs from the layout's.
    WrongShape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Shape the layout requires.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The file holds a tensor the layout does not know.
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor holds NaN or ±Inf (on load), or a parameter is non-finite (on save).
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Flat (row-major) index of the first non-finite element within the tensor.
        index: usize,
        /// The value there.
        value: f32,
    },
    /// A tensor element is finite but outside its domain (e.g. a negative AdamW second moment).
    InvalidValue {
        /// The file.
        path: PathBuf,
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
        /// The file.
        path: PathBuf,
        /// The key, e.g. `"step"`.
        key: String,
        /// What it must be.
        expected: String,
        /// What it was (`None`: absent).
        found: Option<String>,
    },
    /// `model.safetensors` and `optimizer.safetensors` come from different saves.
    StepMismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Step recorded in `model.safetensors` (`None`: not a training save).
        model_step: Option<u64>,
        /// Step recorded in `optimizer.safetensors`.
        optimizer_step: u64,
    },
    /// A moe-core error (building the model or trainer, allocation, …).
    Model(moe_core::Error),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointError as E;
        match self {
            E::Io { path, source } => write!(f, "{}: {source}", path.display()),
            E::ConfigJson { path, source } => {
                write!(f, "{}: invalid JSON: {source}", path.display())
            }
            E::MissingField { path, field } => {
                write!(f, "{}: missing field `{field}`", path.display())
            }
            E::InvalidField {
                path,
                field,
                expected,
                found,
            } => write!(
                f,
                "{}: field `{field}` must be {expected}, found {found}",
                path.display()
            ),
            E::InvalidConfig { path, source } => write!(f, "{}: {source}", path.display()),
            E::Safetensors { path, source } => {
                write!(f, "{}: corrupt safetensors file: {source}", path.display())
            }
            E::Truncated {
                path,
                tensor,
                expected_bytes,
                actual_bytes,
            } => {
                write!(
                    f,
                    "{}: truncated: the header requires {expected_bytes} bytes, the file has {actual_bytes}",
                    path.display()
                )?;
                match tensor {
                    Some(t) => write!(f, " (tensor `{t}` is cut off)"),
                    None => write!(f, " (the header itself is cut off)"),
                }
            }
            E::MissingTensor { path, name } => {
                write!(f, "{}: missing tensor `{name}`", path.display())
            }
            E::WrongDtype { path, name, found } => write!(
                f,
                "{}: tensor `{name}` must be F32, found {found}",
                path.display()
            ),
            E::WrongShape {
                path,
                name,
                expected,
                found,
            } => write!(
                f,
                "{}: tensor `{name}` must have shape {expected:?}, found {found:?}",
                path.display()
            ),
            E::UnexpectedTensor { path, name } => write!(
                f,
                "{}: unexpected tensor `{name}` (not a parameter of this config)",
                path.display()
            ),
            E::NonFinite {
                path,
                name,
                index,
                value,
            } => write!(
                f,
                "{}: tensor `{name}` holds a non-finite value {value} at flat index {index}",
                path.display()
            ),
            E::InvalidValue {
                path,
                name,
                index,
                value,
                expected,
            } => write!(
                f,
                "{}: tensor `{name}` at flat index {index} must be {expected}, found {value}",
                path.display()
            ),
            E::Metadata {
                path,
                key,
                expected,
                found,
            } => match found {
                Some(v) => write!(
                    f,
                    "{}: metadata `{key}` must be {expected}, found {v:?}",
                    path.display()
                ),
                None => write!(
                    f,
                    "{}: metadata `{key}` is missing (expected {expected})",
                    path.display()
                ),
            },
            E::StepMismatch {
                dir,
                model_step,
                optimizer_step,
            } => match model_step {
                Some(s) => write!(
                    f,
                    "{}: {MODEL_FILE} is from step {s} but {OPTIMIZER_FILE} from step {optimizer_step} (files of two different saves)",
                    dir.display()
                ),
                None => write!(
                    f,
                    "{}: {MODEL_FILE} was not written by a training save (no `step` metadata) but {OPTIMIZER_FILE} is from step {optimizer_step}",
                    dir.display()
                ),
            },
            E::Model(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            CheckpointError::ConfigJson { source, .. } => Some(source),
            CheckpointError::InvalidConfig { source, .. } => Some(source),
            CheckpointError::Safetensors { source, .. } => Some(source),
            CheckpointError::Model(e) => Some(e),
            _ => None,
        }
    }
}

impl From<moe_core::Error> for CheckpointError {
    fn from(e: moe_core::Error) -> Self {
        CheckpointError::Model(e)
    }
}

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------
// Atomic file writing
// ---------------------------------------------------------------------------------------

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written to a temporary name, not yet renamed into place. Dropping it
/// removes the temporary file.
#[derive(Debug)]
struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `dest`'s future content to a temporary file next to it, flushes and
/// `fsync`s it. Nothing is visible under `dest` yet.
fn stage<F>(dest: &Path, write: F) -> Result<Staged>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| CheckpointError::Io {
            path: dest.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        })?
        .to_string_lossy()
        .into_owned();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp.{}.{n}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // From here on, `staged` removes the temporary file on every error path.
    let staged = Staged {
        tmp,
        dest: dest.to_path_buf(),
        committed: false,
    };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w).map_err(io_err(&staged.tmp))?;
    let file = w
        .into_inner()
        .map_err(|e| io_err(&staged.tmp)(e.into_error()))?;
    file.sync_all().map_err(io_err(&staged.tmp))?;
    Ok(staged)
}

/// Renames every staged file into place, then `fsync`s their directories.
fn commit(mut staged: Vec<Staged>) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for s in staged.iter_mut() {
        fs::rename(&s.tmp, &s.dest).map_err(io_err(&s.dest))?;
        s.committed = true;
        let dir = match s.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    #[cfg(unix)]
    for dir in dirs {
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))?;
    }
    Ok(())
}

/// Writes `path` atomically: `write` fills a temporary file in the same
/// directory, which is flushed, `fsync`ed and renamed over `path`. If `write`
/// (or anything else) fails, the temporary file is removed and a previous
/// `path` is left as it was.
///
/// # Errors
/// [`CheckpointError::Io`] naming the temporary file, `path` or its directory.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    commit(vec![stage(path, write)?])
}

fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if !dir.is_dir() {
        return Err(CheckpointError::Io {
            path: dir.to_path_buf(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "not a directory"),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// safetensors writing (F32 only, in the given order, deterministic bytes)
// ---------------------------------------------------------------------------------------

/// One F32 tensor to write: name, shape (`[]` for a scalar) and row-major data.
#[derive(Debug, Clone)]
pub struct F32Tensor<'a> {
    /// Tensor name.
    pub name: String,
    /// Shape; its product must equal `data.len()` (`[]` means one element).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: &'a [f32],
}

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The safetensors header for `tensors` (stored in the given order) and
/// `metadata` (keys sorted), padded with spaces to a multiple of 8 bytes.
fn safetensors_header(
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> io::Result<Vec<u8>> {
    let mut parts: Vec<String> = Vec::with_capacity(tensors.len() + 1);
    if !metadata.is_empty() {
        parts.push(format!(
            "\"__metadata__\":{}",
            serde_json::to_string(metadata).map_err(io::Error::other)?
        ));
    }
    let mut seen = HashSet::with_capacity(tensors.len());
    let mut off = 0u64;
    for t in tensors {
        if t.name == "__metadata__" || !seen.insert(t.name.as_str()) {
            return Err(invalid_input(format!(
                "tensor name `{}` is reserved or duplicated",
                t.name
            )));
        }
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| invalid_input(format!("tensor `{}`: shape overflows", t.name)))?;
        if numel != t.data.len() {
            return Err(invalid_input(format!(
                "tensor `{}`: shape {:?} has {numel} elements but {} values were given",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        let end = off + 4 * numel as u64;
        parts.push(format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{off},{end}]}}",
            serde_json::to_string(&t.name).map_err(io::Error::other)?,
            serde_json::to_string(&t.shape).map_err(io::Error::other)?,
        ));
        off = end;
    }
    let mut header = format!("{{{}}}", parts.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

fn write_f32_le(w: &mut dyn Write, data: &[f32]) -> io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    for chunk in data.chunks(buf.len() / 4) {
        for (dst, x) in buf.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&x.to_le_bytes());
        }
        w.write_all(&buf[..4 * chunk.len()])?;
    }
    Ok(())
}

fn write_safetensors_to(
    w: &mut dyn Write,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> io::Result<()> {
    let header = safetensors_header(tensors, metadata)?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for t in tensors {
        write_f32_le(w, t.data)?;
    }
    Ok(())
}

fn stage_safetensors(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Staged> {
    stage(path, |w| write_safetensors_to(w, tensors, metadata))
}

/// Writes a safetensors file of F32 tensors atomically (see [`write_atomic`]),
/// tensors in the given order, `__metadata__` keys sorted: the same inputs
/// always give the same bytes.
///
/// # Errors
/// [`CheckpointError::Io`]; also for duplicate names or a shape that does not
/// match its data (`InvalidInput`).
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    commit(vec![stage_safetensors(path, tensors, metadata)?])
}

/// Every tensor of `layout`, with its name prefixed by `prefix` and its data from `flat`.
fn layout_tensors<'a>(layout: &Layout, flat: &'a [f32], prefix: &str) -> Vec<F32Tensor<'a>> {
    layout
        .tensors()
        .iter()
        .map(|t| F32Tensor {
            name: format!("{prefix}{}", t.name),
            shape: t.shape.clone(),
            data: &flat[t.range()],
        })
        .collect()
}

fn check_finite_flat(path: &Path, layout: &Layout, flat: &[f32], prefix: &str) -> Result<()> {
    if let Some(i) = flat.iter().position(|x| !x.is_finite()) {
        let t = layout
            .tensors()
            .iter()
            .find(|t| t.range().contains(&i))
            .map(|t| (format!("{prefix}{}", t.name), i - t.offset))
            .unwrap_or_else(|| (format!("{prefix}<flat>"), i));
        return Err(CheckpointError::NonFinite {
            path: path.to_path_buf(),
            name: t.0,
            index: t.1,
            value: flat[i],
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------

/// Options of [`save_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaveOptions {
    /// Written as `router_aux_loss_coef` (default 0.01).
    pub router_aux_loss_coef: f32,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            router_aux_loss_coef: DEFAULT_ROUTER_AUX_LOSS_COEF,
        }
    }
}

/// What `config.json` holds besides the model [`Config`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointConfig {
    /// The model config.
    pub config: Config,
    /// `router_aux_loss_coef`, if present.
    pub router_aux_loss_coef: Option<f32>,
    /// `moe_rs.format_version`, if present (absent for configs written by others).
    pub format_version: Option<u64>,
}

#[derive(Serialize)]
struct MoeRsOut {
    format_version: u64,
    rope_base: f32,
    rope_alpha: f32,
}

/// `config.json` as written; field order as in CONTRACT §8.
#[derive(Serialize)]
struct HfConfigOut {
    architectures: [&'static str; 1],
    model_type: &'static str,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    num_local_experts: usize,
    num_experts_per_tok: usize,
    rms_norm_eps: f32,
    rope_theta: f32,
    max_position_embeddings: usize,
    tie_word_embeddings: bool,
    router_aux_loss_coef: f32,
    torch_dtype: &'static str,
    // Explicit Hugging Face defaults we rely on.
    hidden_act: &'static str,
    sliding_window: Option<usize>,
    attention_dropout: f32,
    router_jitter_noise: f32,
    moe_rs: MoeRsOut,
}

/// The `config.json` text for `cfg` (pretty-printed, newline-terminated).
/// f32 values are written in their shortest round-trip form (`1e-5`, `10000.0`).
pub fn config_json(cfg: &Config, opts: &SaveOptions) -> String {
    let out = HfConfigOut {
        architectures: ["MixtralForCausalLM"],
        model_type: "mixtral",
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        num_local_experts: cfg.num_local_experts,
        num_experts_per_tok: cfg.num_experts_per_tok,
        rms_norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta(),
        max_position_embeddings: cfg.max_position_embeddings,
        tie_word_embeddings: false,
        router_aux_loss_coef: opts.router_aux_loss_coef,
        torch_dtype: "float32",
        hidden_act: "silu",
        sliding_window: None,
        attention_dropout: 0.0,
        router_jitter_noise: 0.0,
        moe_rs: MoeRsOut {
            format_version: FORMAT_VERSION,
            rope_base: cfg.rope_base,
            rope_alpha: cfg.rope_alpha,
        },
    };
    // Serialising plain numbers, strings and bools cannot fail.
    let mut s = serde_json::to_string_pretty(&out).unwrap_or_default();
    s.push('\n');
    s
}

struct ConfigReader<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

fn json_repr(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

impl ConfigReader<'_> {
    fn invalid(&self, field: &str, expected: &str, found: &Value) -> CheckpointError {
        CheckpointError::InvalidField {
            path: self.path.to_path_buf(),
            field: field.to_owned(),
            expected: expected.to_owned(),
            found: json_repr(found),
        }
    }

    /// The field, `None` if absent or `null`.
    fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn req(&self, field: &'static str) -> Result<&Value> {
        self.get(field)
            .ok_or_else(|| CheckpointError::MissingField {
                path: self.path.to_path_buf(),
                field,
            })
    }

    fn as_usize(&self, field: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.invalid(field, "a non-negative integer", v))
    }

    fn as_f32(&self, field: &str, v: &Value) -> Result<f32> {
        match v.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(x as f32),
            _ => Err(self.invalid(field, "a finite number", v)),
        }
    }

    fn usize(&self, field: &'static str) -> Result<usize> {
        let v = self.req(field)?;
        self.as_usize(field, v)
    }

    fn f32(&self, field: &'static str) -> Result<f32> {
        let v = self.req(field)?;
        self.as_f32(field, v)
    }

    /// An optional string field that, if present, must be one of `allowed`.
    fn str_in(&self, field: &str, allowed: &[&str]) -> Result<()> {
        if let Some(v) = self.get(field) {
            match v.as_str() {
                Some(s) if allowed.contains(&s) => {}
                _ => {
                    let exp = allowed
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>()
                        .join(" or ");
                    return Err(self.invalid(field, &exp, v));
                }
            }
        }
        Ok(())
    }
}

/// Parses the text of a `config.json`; `path` is only used in error messages.
///
/// Required: `model_type: "mixtral"`, `vocab_size`, `hidden_size`,
/// `intermediate_size`, `num_hidden_layers`, `num_attention_heads`,
/// `num_key_value_heads`, `num_local_experts`, `num_experts_per_tok`,
/// `max_position_embeddings`, `rms_norm_eps` and the RoPE base, as `rope_theta`
/// or `rope_parameters.rope_theta`. Optional, checked when present:
/// `architectures` (must list `MixtralForCausalLM`), `head_dim` (default
/// `hidden_size / num_attention_heads` as in `transformers`), `torch_dtype` /
/// `dtype` (`"float32"`), `tie_word_embeddings` (`false`), `hidden_act`
/// (`"silu"`), `sliding_window` (`null` or `>= max_position_embeddings`),
/// `rope_parameters.rope_type` / `rope_scaling` (default RoPE only),
/// `router_aux_loss_coef`, and our `moe_rs` object (`format_version`,
/// `rope_base`, `rope_alpha`; without them the base is `rope_theta` and alpha 1).
///
/// # Errors
/// [`CheckpointError::ConfigJson`], [`CheckpointError::MissingField`],
/// [`CheckpointError::InvalidField`], [`CheckpointError::InvalidConfig`].
pub fn parse_config(text: &str, path: &Path) -> Result<CheckpointConfig> {
    let root: Value = serde_json::from_str(text).map_err(|source| CheckpointError::ConfigJson {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(obj) = root.as_object() else {
        return Err(CheckpointError::InvalidField {
            path: path.to_path_buf(),
            field: "(root)".into(),
            expected: "a JSON object".into(),
            found: json_repr(&root),
        });
    };
    let r = ConfigReader { path, obj };

    // Which model this is.
    let mt = r.req("model_type")?;
    if mt.as_str() != Some("mixtral") {
        return Err(r.invalid("model_type", "\"mixtral\"", mt));
    }
    if let Some(a) = r.get("architectures") {
        let ok = a
            .as_array()
            .is_some_and(|xs| xs.iter().any(|x| x.as_str() == Some("MixtralForCausalLM")));
        if !ok {
            return Err(r.invalid(
                "architectures",
                "a list containing \"MixtralForCausalLM\"",
                a,
            ));
        }
    }
    r.str_in("torch_dtype", &["float32"])?;
    r.str_in("dtype", &["float32"])?;
    r.str_in("hidden_act", &["silu"])?;
    if let Some(v) = r.get("tie_word_embeddings") {
        if v.as_bool() != Some(false) {
            return Err(r.invalid(
                "tie_word_embeddings",
                "false (embedding and lm_head are separate)",
                v,
            ));
        }
    }

    // Sizes.
    let vocab_size = r.usize("vocab_size")?;
    let hidden_size = r.usize("hidden_size")?;
    let intermediate_size = r.usize("intermediate_size")?;
    let num_hidden_layers = r.usize("num_hidden_layers")?;
    let num_attention_heads = r.usize("num_attention_heads")?;
    let num_key_value_heads = r.usize("num_key_value_heads")?;
    let num_local_experts = r.usize("num_local_experts")?;
    let num_experts_per_tok = r.usize("num_experts_per_tok")?;
    let max_position_embeddings = r.usize("max_position_embeddings")?;
    let head_dim = match r.get("head_dim") {
        Some(v) => r.as_usize("head_dim", v)?,
        // transformers: `hidden_size // num_attention_heads`.
        None => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
    };
    let rms_norm_eps = r.f32("rms_norm_eps")?;
    if let Some(v) = r.get("sliding_window") {
        let w = r.as_usize("sliding_window", v)?;
        if w < max_position_embeddings {
            return Err(r.invalid(
                "sliding_window",
                "null (sliding-window attention is not supported) or >= max_position_embeddings",
                v,
            ));
        }
    }

    // RoPE: top-level `rope_theta` (CONTRACT §8) or HF 5.x `rope_parameters`.
    let rope_params = r.get("rope_parameters");
    if let Some(rp) = rope_params {
        let Some(rp_obj) = rp.as_object() else {
            return Err(r.invalid("rope_parameters", "an object", rp));
        };
        if let Some(t) = rp_obj.get("rope_type").filter(|v| !v.is_null()) {
            if t.as_str() != Some("default") {
                return Err(r.invalid(
                    "rope_parameters.rope_type",
                    "\"default\" (no RoPE scaling)",
                    t,
                ));
            }
        }
    }
    if let Some(rs) = r.get("rope_scaling") {
        let ty = rs
            .get("rope_type")
            .or_else(|| rs.get("type"))
            .and_then(Value::as_str);
        if ty != Some("default") {
            return Err(r.invalid("rope_scaling", "null or {\"rope_type\": \"default\"}", rs));
        }
    }
    let rope_theta = match (
        r.get("rope_theta"),
        rope_params.and_then(|p| p.get("rope_theta")),
    ) {
        (Some(v), _) => r.as_f32("rope_theta", v)?,
        (None, Some(v)) if !v.is_null() => r.as_f32("rope_parameters.rope_theta", v)?,
        _ => {
            return Err(CheckpointError::MissingField {
                path: path.to_path_buf(),
                field: "rope_theta",
            })
        }
    };

    let router_aux_loss_coef = match r.get("router_aux_loss_coef") {
        Some(v) => Some(r.as_f32("router_aux_loss_coef", v)?),
        None => None,
    };

    // Our own keys.
    let mut format_version = None;
    let (mut rope_base, mut rope_alpha) = (rope_theta, 1.0f32);
    if let Some(m) = r.get("moe_rs") {
        let Some(mobj) = m.as_object() else {
            return Err(r.invalid("moe_rs", "an object", m));
        };
        let mr = ConfigReader { path, obj: mobj };
        if let Some(v) = mr.get("format_version") {
            let fv = v.as_u64().filter(|&x| x <= FORMAT_VERSION).ok_or_else(|| {
                r.invalid(
                    "moe_rs.format_version",
                    &format!("an integer <= {FORMAT_VERSION} (this build's format)"),
                    v,
                )
            })?;
            format_version = Some(fv);
        }
        match (mr.get("rope_base"), mr.get("rope_alpha")) {
            (None, None) => {}
            (Some(b), Some(a)) => {
                rope_base = r.as_f32("moe_rs.rope_base", b)?;
                rope_alpha = r.as_f32("moe_rs.rope_alpha", a)?;
            }
            (Some(_), None) => {
                return Err(CheckpointError::MissingField {
                    path: path.to_path_buf(),
                    field: "moe_rs.rope_alpha",
                })
            }
            (None, Some(_)) => {
                return Err(CheckpointError::MissingField {
                    path: path.to_path_buf(),
                    field: "moe_rs.rope_base",
                })
            }
        }
    }

    let config = Config {
        vocab_size,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        intermediate_size,
        num_local_experts,
        num_experts_per_tok,
        max_position_embeddings,
        rope_base,
        rope_alpha,
        rms_norm_eps,
    };
    config
        .validate()
        .map_err(|source| CheckpointError::InvalidConfig {
            path: path.to_path_buf(),
            source,
        })?;
    // `rope_theta` is what transformers uses; it must agree with base and alpha.
    let derived = config.rope_theta();
    if (derived as f64 - rope_theta as f64).abs() > 1e-6 * (rope_theta as f64).abs() {
        return Err(CheckpointError::InvalidField {
            path: path.to_path_buf(),
            field: "rope_theta".into(),
            expected: format!(
                "{derived} (= moe_rs.rope_base {rope_base} scaled by rope_alpha {rope_alpha})"
            ),
            found: rope_theta.to_string(),
        });
    }
    Ok(CheckpointConfig {
        config,
        router_aux_loss_coef,
        format_version,
    })
}

/// Reads and parses `dir/config.json` (see [`parse_config`]).
///
/// # Errors
/// [`CheckpointError::Io`] and the errors of [`parse_config`].
pub fn read_config(dir: impl AsRef<Path>) -> Result<CheckpointConfig> {
    let path = dir.as_ref().join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    parse_config(&text, &path)
}

// ---------------------------------------------------------------------------------------
// safetensors reading
// ---------------------------------------------------------------------------------------

/// Explains a safetensors parse failure as truncation when the header says
/// the file should be longer than it is.
fn diagnose_truncation(buf: &[u8]) -> Option<(Option<String>, u64)> {
    let actual = buf.len() as u64;
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    if n > 100_000_000 {
        return None; // not a plausible header length: garbage, not truncation
    }
    let header_end = 8 + n;
    if header_end > actual {
        return Some((None, header_end));
    }
    let header: Value = serde_json::from_slice(&buf[8..header_end as usize]).ok()?;
    let mut worst: Option<(String, u64)> = None;
    for (name, info) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let offs = info.get("data_offsets")?.as_array()?;
        let end = offs.get(1)?.as_u64()?;
        let start = offs.first()?.as_u64()?;
        let file_end = header_end.checked_add(end)?;
        if file_end > actual {
            // Report the tensor that is cut first, i.e. with the lowest start.
            let better = match &worst {
                Some((_, s)) => start < *s,
                None => true,
            };
            if better {
                worst = Some((name.clone(), start));
            }
        }
    }
    let max_end = header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, i)| i.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let (name, _) = worst?;
    Some((Some(name), header_end + max_end))
}

/// A whole safetensors file in memory.
struct StFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl StFile {
    fn read(path: PathBuf) -> Result<Self> {
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        Ok(StFile { path, bytes })
    }

    fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|source| {
            if let Some((tensor, expected_bytes)) = diagnose_truncation(&self.bytes) {
                CheckpointError::Truncated {
                    path: self.path.clone(),
                    tensor,
                    expected_bytes,
                    actual_bytes: self.bytes.len() as u64,
                }
            } else {
                CheckpointError::Safetensors {
                    path: self.path.clone(),
                    source,
                }
            }
        })
    }

    fn metadata(&self) -> Result<Option<std::collections::HashMap<String, String>>> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).map_err(|source| {
            CheckpointError::Safetensors {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(meta.metadata().clone())
    }
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Checks that `st` holds exactly the tensors of `layout` (each name with
/// `prefix` in each of `prefixes`), F32, with the layout's shapes. Allocates nothing
/// per tensor.
fn check_tensors(
    path: &Path,
    st: &SafeTensors<'_>,
    layout: &Layout,
    prefixes: &[&str],
) -> Result<()> {
    for prefix in prefixes {
        for t in layout.tensors() {
            let name = format!("{prefix}{}", t.name);
            let view = st
                .tensor(&name)
                .map_err(|_| CheckpointError::MissingTensor {
                    path: path.to_path_buf(),
                    name: name.clone(),
                })?;
            if view.dtype() != Dtype::F32 {
                return Err(CheckpointError::WrongDtype {
                    path: path.to_path_buf(),
                    name,
                    found: dtype_name(view.dtype()),
                });
            }
            if view.shape() != t.shape.as_slice() {
                return Err(CheckpointError::WrongShape {
                    path: path.to_path_buf(),
                    name,
                    expected: t.shape.clone(),
                    found: view.shape().to_vec(),
                });
            }
        }
    }
    let expected: HashSet<String> = prefixes
        .iter()
        .flat_map(|p| {
            layout
                .tensors()
                .iter()
                .map(move |t| format!("{p}{}", t.name))
        })
        .collect();
    // Report unexpected names in file order, for a stable message.
    let mut names: Vec<(usize, &str)> = st
        .iter()
        .map(|(n, v)| (v.data().as_ptr() as usize, n))
        .collect();
    names.sort();
    if let Some((_, name)) = names.iter().find(|(_, n)| !expected.contains(*n)) {
        return Err(CheckpointError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: (*name).to_owned(),
        });
    }
    Ok(())
}

/// Copies `prefix + name` of every layout tensor into `flat` (already checked
/// by [`check_tensors`]), rejecting non-finite values and, with `non_negative`,
/// negative ones.
fn copy_tensors(
    path: &Path,
    st: &SafeTensors<'_>,
    layout: &Layout,
    prefix: &str,
    flat: &mut [f32],
    non_negative: bool,
) -> Result<()> {
    for t in layout.tensors() {
        let name = format!("{prefix}{}", t.name);
        let view = st
            .tensor(&name)
            .map_err(|_| CheckpointError::MissingTensor {
                path: path.to_path_buf(),
                name: name.clone(),
            })?;
        let data = view.data();
        let out = flat.get_mut(t.range()).unwrap_or_default();
        if data.len() != 4 * out.len() {
            // Unreachable after `check_tensors` and safetensors' own validation.
            return Err(CheckpointError::WrongShape {
                path: path.to_path_buf(),
                name,
                expected: t.shape.clone(),
                found: vec![data.len() / 4],
            });
        }
        for (i, (o, b)) in out.iter_mut().zip(data.chunks_exact(4)).enumerate() {
            let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !x.is_finite() {
                return Err(CheckpointError::NonFinite {
                    path: path.to_path_buf(),
                    name,
                    index: i,
                    value: x,
                });
            }
            if non_negative && x < 0.0 {
                return Err(CheckpointError::InvalidValue {
                    path: path.to_path_buf(),
                    name,
                    index: i,
                    value: x,
                    expected: ">= 0",
                });
            }
            *o = x;
        }
    }
    Ok(())
}

fn try_zeroed(len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| moe_core::Error::AllocationFailed {
            bytes: len.saturating_mul(4),
        })?;
    v.resize(len, 0.0);
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// Model checkpoints
// ---------------------------------------------------------------------------------------

fn model_metadata(step: Option<u64>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    // transformers refuses safetensors metadata without a known `format`.
    m.insert("format".to_owned(), "pt".to_owned());
    if let Some(s) = step {
        m.insert("step".to_owned(), s.to_string());
    }
    m
}

/// Stages `config.json` and `model.safetensors` for `model` in `dir`.
fn stage_model(
    dir: &Path,
    model: &MoETransformer,
    opts: &SaveOptions,
    step: Option<u64>,
) -> Result<Vec<Staged>> {
    let model_path = dir.join(MODEL_FILE);
    check_finite_flat(&model_path, model.layout(), model.params(), "")?;
    if !(opts.router_aux_loss_coef.is_finite() && opts.router_aux_loss_coef >= 0.0) {
        return Err(moe_core::Error::InvalidParameter {
            param: "router_aux_loss_coef",
            expected: "finite and >= 0",
            actual: opts.router_aux_loss_coef as f64,
        }
        .into());
    }
    ensure_dir(dir)?;
    let text = config_json(model.config(), opts);
    let cfg = stage(&dir.join(CONFIG_FILE), |w| w.write_all(text.as_bytes()))?;
    let tensors = layout_tensors(model.layout(), model.params(), "");
    let st = stage_safetensors(&model_path, &tensors, &model_metadata(step))?;
    Ok(vec![cfg, st])
}

/// Saves `model` to `dir` (created if needed): `config.json` and
/// `model.safetensors`, atomically (see the module docs), with
/// `router_aux_loss_coef` 0.01.
///
/// # Errors
/// [`CheckpointError::Io`]; [`CheckpointError::NonFinite`] if a parameter is
/// NaN/Inf (nothing is written then).
pub fn save(dir: impl AsRef<Path>, model: &MoETransformer) -> Result<()> {
    save_with(dir, model, &SaveOptions::default())
}

/// [`save`] with options.
///
/// # Errors
/// As [`save`], and [`CheckpointError::Model`] for a negative or non-finite
/// `router_aux_loss_coef`.
pub fn save_with(dir: impl AsRef<Path>, model: &MoETransformer, opts: &SaveOptions) -> Result<()> {
    commit(stage_model(dir.as_ref(), model, opts, None)?)
}

/// Reads the parameters of `cfg` from a parsed `model.safetensors`.
fn read_params(file: &StFile, cfg: &Config) -> Result<(Layout, Vec<f32>)> {
    // Bound the work by the file before building the layout: a tiny config
    // can name millions of tensors (fuzzing found `load` spending seconds and
    // GBs on that). The precise per-tensor diagnosis below names a missing or
    // malformed tensor; this coarse check only rejects a config that asks for
    // far more tensors than the file's header holds.
    let st = file.parse()?;
    let per_layer = 7u64.saturating_add(3u64.saturating_mul(cfg.num_local_experts as u64));
    let required = 3u64.saturating_add((cfg.num_hidden_layers as u64).saturating_mul(per_layer));
    let present = st.len() as u64;
    if required > 4 * present + 16 {
        return Err(CheckpointError::InvalidField {
            path: file.path.clone(),
            field: "num_hidden_layers / num_local_experts".to_owned(),
            expected: format!("a model file with the {required} tensors they imply"),
            found: format!("{present} tensors in the file"),
        });
    }
    let layout = Layout::new(cfg)?;
    // Names, dtypes and shapes first: a valid file then bounds the allocation.
    check_tensors(&file.path, &st, &layout, &[""])?;
    let mut params = try_zeroed(layout.total)?;
    copy_tensors(&file.path, &st, &layout, "", &mut params, false)?;
    Ok((layout, params))
}

fn load_with_file(dir: &Path) -> Result<(MoETransformer, StFile)> {
    let cc = read_config(dir)?;
    let file = StFile::read(dir.join(MODEL_FILE))?;
    let (_, params) = read_params(&file, &cc.config)?;
    let model = MoETransformer::from_params(&cc.config, params)?;
    Ok((model, file))
}

/// Loads a checkpoint directory written by [`save`], by the golden-fixture
/// generator, or by `transformers`' `save_pretrained` (float32, one
/// `model.safetensors` file).
///
/// # Errors
/// [`CheckpointError::Io`] (missing files), the config errors of
/// [`parse_config`], and for `model.safetensors`: [`CheckpointError::Safetensors`],
/// [`CheckpointError::Truncated`], [`CheckpointError::MissingTensor`],
/// [`CheckpointError::WrongDtype`], [`CheckpointError::WrongShape`],
/// [`CheckpointError::UnexpectedTensor`], [`CheckpointError::NonFinite`].
pub fn load(dir: impl AsRef<Path>) -> Result<MoETransformer> {
    Ok(load_with_file(dir.as_ref())?.0)
}

// ---------------------------------------------------------------------------------------
// Training checkpoints
// ---------------------------------------------------------------------------------------

/// Saves a training checkpoint: [`save`]'s files (with `router_aux_loss_coef` =
/// the trainer's `aux_alpha`, and the step in `model.safetensors`' metadata) plus
/// `optimizer.safetensors` with `m.<name>` and `v.<name>` for every tensor and,
/// in `__metadata__`, `step`, the AdamW hyper-parameters (informative) and
/// every `extra` entry under the key `extra.<key>`. All three files are
/// replaced atomically together (see the module docs).
///
/// # Errors
/// As [`save`], and [`CheckpointError::NonFinite`] for a non-finite moment.
pub fn save_training(
    dir: impl AsRef<Path>,
    trainer: &Trainer,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let dir = dir.as_ref();
    let model = trainer.model();
    let opt = trainer.optimizer();
    let layout = model.layout();
    let opt_path = dir.join(OPTIMIZER_FILE);
    check_finite_flat(&opt_path, layout, opt.m(), "m.")?;
    check_finite_flat(&opt_path, layout, opt.v(), "v.")?;
    let opts = SaveOptions {
        router_aux_loss_coef: trainer.config().aux_alpha,
    };
    let mut staged = stage_model(dir, model, &opts, Some(opt.step()))?;

    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), OPTIMIZER_FORMAT.to_owned());
    meta.insert("format_version".to_owned(), FORMAT_VERSION.to_string());
    meta.insert("step".to_owned(), opt.step().to_string());
    let a = opt.config();
    meta.insert("beta1".to_owned(), a.beta1.to_string());
    meta.insert("beta2".to_owned(), a.beta2.to_string());
    meta.insert("eps".to_owned(), a.eps.to_string());
    meta.insert("weight_decay".to_owned(), a.weight_decay.to_string());
    for (k, v) in extra {
        meta.insert(format!("{EXTRA_PREFIX}{k}"), v.clone());
    }
    let mut tensors = layout_tensors(layout, opt.m(), "m.");
    tensors.extend(layout_tensors(layout, opt.v(), "v."));
    // Optimizer state first, so that a crash between renames leaves a newer
    // optimizer with an older model, which `load_training` detects by step.
    staged.insert(0, stage_safetensors(&opt_path, &tensors, &meta)?);
    commit(staged)
}

fn parse_step(
    path: &Path,
    meta: Option<&std::collections::HashMap<String, String>>,
) -> Result<Option<u64>> {
    match meta.and_then(|m| m.get("step")) {
        None => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| CheckpointError::Metadata {
                path: path.to_path_buf(),
                key: "step".into(),
                expected: "a non-negative integer".into(),
                found: Some(s.clone()),
            }),
    }
}

/// [`load_training`], also returning the `extra` map given to [`save_training`].
///
/// # Errors
/// As [`load_training`].
pub fn load_training_with_extra(
    dir: impl AsRef<Path>,
    config: TrainConfig,
    max_batch: usize,
    max_seq: usize,
) -> Result<(Trainer, BTreeMap<String, String>)> {
    let dir = dir.as_ref();
    let (model, model_file) = load_with_file(dir)?;
    let model_step = parse_step(&model_file.path, model_file.metadata()?.as_ref())?;
    drop(model_file);

    let file = StFile::read(dir.join(OPTIMIZER_FILE))?;
    let st = file.parse()?;
    let meta = file.metadata()?;
    let format = meta.as_ref().and_then(|m| m.get("format"));
    if format.map(String::as_str) != Some(OPTIMIZER_FORMAT) {
        return Err(CheckpointError::Metadata {
            path: file.path.clone(),
            key: "format".into(),
            expected: format!("\"{OPTIMIZER_FORMAT}\""),
            found: format.cloned(),
        });
    }
    if let Some(v) = meta.as_ref().and_then(|m| m.get("format_version")) {
        if v.parse::<u64>().map_or(true, |x| x > FORMAT_VERSION) {
            return Err(CheckpointError::Metadata {
                path: file.path.clone(),
                key: "format_version".into(),
                expected: format!("an integer <= {FORMAT_VERSION}"),
                found: Some(v.clone()),
            });
        }
    }
    let step = parse_step(&file.path, meta.as_ref())?.ok_or_else(|| CheckpointError::Metadata {
        path: file.path.clone(),
        key: "step".into(),
        expected: "the AdamW step count".into(),
        found: None,
    })?;
    if model_step != Some(step) {
        return Err(CheckpointError::StepMismatch {
            dir: dir.to_path_buf(),
            model_step,
            optimizer_step: step,
        });
    }
    let layout = model.layout().clone();
    check_tensors(&file.path, &st, &layout, &["m.", "v."])?;

    let mut trainer = Trainer::new(model, config, max_batch, max_seq)?;
    // The moments are read into staging buffers, then handed to AdamW's
    // validating setters (moe-core keeps its fields private).
    let (mut m, mut v) = (vec![0.0f32; layout.total], vec![0.0f32; layout.total]);
    copy_tensors(&file.path, &st, &layout, "m.", &mut m, false)?;
    copy_tensors(&file.path, &st, &layout, "v.", &mut v, true)?;
    let opt = trainer.optimizer_mut();
    opt.set_moments(&m, &v)?;
    opt.set_step(step)?;

    let extra = meta
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| k.strip_prefix(EXTRA_PREFIX).map(|k| (k.to_owned(), v)))
        .collect();
    Ok((trainer, extra))
}

/// Loads a training checkpoint written by [`save_training`] into a new
/// [`Trainer`] (steps of up to `max_batch × max_seq` tokens) whose parameters,
/// AdamW moments and step count are those saved, so that training resumes
/// bit-identically. The hyper-parameters are those of `config` (the saved
/// AdamW values are informative only).
///
/// # Errors
/// As [`load`], plus for `optimizer.safetensors`: missing/invalid `format` or
/// `step` metadata ([`CheckpointError::Metadata`]), a step different from the
/// model file's ([`CheckpointError::StepMismatch`]), the tensor errors of
/// [`load`] for `m.*`/`v.*`, a negative second moment
/// ([`CheckpointError::InvalidValue`]), and [`CheckpointError::Model`] for an
/// invalid `config` or workspace size.
pub fn load_training(
    dir: impl AsRef<Path>,
    config: TrainConfig,
    max_batch: usize,
    max_seq: usize,
) -> Result<Trainer> {
    Ok(load_training_with_extra(dir, config, max_batch, max_seq)?.0)
}
