//! Checkpoint directories (CONTRACT §8): save, load, training state.
//!
//! Parts: [`error`] (`CheckpointError`: a path and what is wrong there),
//! `config_json` (`config.json` ⇄ [`Config`] through [`HfConfig`]),
//! `safetensors` (F32 tensor files, the one tensor lookup of loading); the
//! atomic writes are [`crate::io::atomic`].
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
//! Every file is written through [`crate::io::atomic`]: to a hidden temporary
//! file in the same directory (`.NAME.tmp.PID.N`), flushed and `fsync`ed; only
//! when *all* files of a save have been written are they renamed over their
//! final names, then the directory is `fsync`ed. A failing save (disk full, read-only directory, a non-finite
//! parameter, …) removes its temporary files and leaves the previous checkpoint
//! untouched; no file is ever half-written under its final name. The only
//! window in which a directory can hold files of two different saves is between
//! the renames of one save (a crash there); [`load_training`] detects it through
//! the step stored in both safetensors files, and through the run id
//! ([`save_training_with`], [`RUN_ID_KEY`]) files of two different runs.
//! `moe train` closes that window: it saves each checkpoint into a new
//! generation directory and switches one symlink to it
//! ([`crate::io::outdir`]), so the checkpoint it points to is always complete.
//!
//! # Loading
//!
//! [`load`] never panics on any bytes: every problem is a [`CheckpointError`]
//! naming the file, the field or tensor, and the expected and actual values.
//! It also accepts configs written by `transformers`' `save_pretrained`
//! (`rope_parameters.rope_theta` instead of `rope_theta`, `dtype` instead of
//! `torch_dtype`).

mod config_json;
pub mod error;
mod safetensors;

use std::collections::BTreeMap;
use std::path::Path;

use moe_core::{Config, Layout, MoETransformer, Precision, TrainConfig, Trainer};

use self::error::model_err;
use self::safetensors::{
    check_finite_flat, check_tensors, copy_tensors, copy_tensors_bf16, layout_tensors,
    safetensors_bound, stage_safetensors, stage_safetensors_as, try_zeroed, StFile, TensorSet,
};
use crate::io::atomic::{commit, commit_dir, ensure_dir, stage, stage_dir, Staged};

pub use self::config_json::{
    check_router_aux_loss_coef, config_json, parse_config, read_config, CheckpointConfig, HfConfig,
    SaveOptions,
};
pub use self::error::{CheckpointError, CheckpointErrorKind};
pub use self::safetensors::{
    write_f32_safetensors, F32Tensor, StoreDtype, MAX_SAFETENSORS_HEADER_BYTES,
};
pub use crate::io::atomic::write_atomic;

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// File name of the model config inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of a sharded checkpoint's index (`save_pretrained(max_shard_size=…)`).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
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
// Model checkpoints
// ---------------------------------------------------------------------------------------

/// Key of the training run's id in both safetensors files' metadata.
pub const RUN_ID_KEY: &str = "run_id";

/// Largest AdamW step accepted on load: moe-core's [`moe_core::optim::MAX_STEP`]
/// (2^53, the largest integer up to which every step is exactly representable
/// in f64 — the type the bias corrections `1 − β^step` are computed in). It is
/// checked here too so that the error names the file and its metadata key.
pub const MAX_STEP: u64 = moe_core::optim::MAX_STEP;

fn model_metadata(step: Option<u64>, run_id: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    // transformers refuses safetensors metadata without a known `format`.
    m.insert("format".to_owned(), "pt".to_owned());
    if let Some(s) = step {
        m.insert("step".to_owned(), s.to_string());
    }
    if let Some(r) = run_id {
        m.insert(RUN_ID_KEY.to_owned(), r.to_owned());
    }
    m
}

/// Stages `config.json` and `model.safetensors` for `model` in `dir`.
fn stage_model(
    dir: &Path,
    model: &MoETransformer,
    opts: &SaveOptions,
    step: Option<u64>,
    run_id: Option<&str>,
) -> Result<Vec<Staged>> {
    let model_path = dir.join(MODEL_FILE);
    let params = model.params().map_err(model_err(dir))?;
    check_finite_flat(&model_path, model.layout(), params, "")?;
    check_router_aux_loss_coef(opts.router_aux_loss_coef).map_err(model_err(dir))?;
    ensure_dir(dir)?;
    let text = config_json(model.config(), opts);
    let cfg = stage(&dir.join(CONFIG_FILE), |w| w.write_all(text.as_bytes()))?;
    let tensors = layout_tensors(model.layout(), params, "");
    let st = stage_safetensors(&model_path, &tensors, &model_metadata(step, run_id))?;
    Ok(vec![cfg, st])
}

/// Saves `model` to `dir` (created if needed): `config.json` and
/// `model.safetensors`, atomically (see the module docs), with
/// `router_aux_loss_coef` 0.01.
///
/// # Errors
/// [`CheckpointErrorKind::Io`]; [`CheckpointErrorKind::NonFinite`] if a parameter is
/// NaN/Inf (nothing is written then).
pub fn save(dir: impl AsRef<Path>, model: &MoETransformer) -> Result<()> {
    save_with(dir, model, &SaveOptions::default())
}

/// [`save`] with options.
///
/// # Errors
/// As [`save`], and [`CheckpointErrorKind::Model`] for a negative or non-finite
/// `router_aux_loss_coef`.
pub fn save_with(dir: impl AsRef<Path>, model: &MoETransformer, opts: &SaveOptions) -> Result<()> {
    commit(stage_model(dir.as_ref(), model, opts, None, None)?)
}

/// The model file(s) of a checkpoint: `model.safetensors`, or the shards
/// named by `model.safetensors.index.json` (with the index's path).
struct ModelFiles {
    files: Vec<StFile>,
    index: Option<(std::path::PathBuf, BTreeMap<String, String>)>,
}

/// A shard file name from the index: a plain file name in the checkpoint
/// directory (no separator, not `.`/`..`), or an error naming the tensor.
fn check_shard_name(index: &Path, tensor: &str, v: &serde_json::Value) -> Result<String> {
    let bad = || {
        CheckpointError::new(
            index,
            CheckpointErrorKind::InvalidField {
                field: format!("weight_map.{tensor}"),
                expected: "a shard file name in the checkpoint directory (e.g. \"model-00001-of-00002.safetensors\")".to_owned(),
                found: v.to_string(),
            },
        )
    };
    let s = v.as_str().ok_or_else(bad)?;
    if s.is_empty()
        || s == "."
        || s == ".."
        || s.contains('/')
        || s.contains('\\')
        || s.contains('\0')
    {
        return Err(bad());
    }
    Ok(s.to_owned())
}

/// Reads `model.safetensors.index.json`: its `weight_map` (tensor → shard).
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = crate::io::read::read_to_string_bounded(path, crate::io::read::MAX_JSON_BYTES)?;
    let root: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| CheckpointError::new(path, CheckpointErrorKind::ConfigJson { source }))?;
    let invalid = |field: &str, expected: &str, found: &serde_json::Value| {
        let mut f = found.to_string();
        if f.len() > 80 {
            f = format!("{}…", f.chars().take(80).collect::<String>());
        }
        CheckpointError::new(
            path,
            CheckpointErrorKind::InvalidField {
                field: field.to_owned(),
                expected: expected.to_owned(),
                found: f,
            },
        )
    };
    let Some(wm) = root.get("weight_map") else {
        return Err(CheckpointError::new(
            path,
            CheckpointErrorKind::MissingField {
                field: "weight_map",
            },
        ));
    };
    let obj = wm
        .as_object()
        .ok_or_else(|| invalid("weight_map", "an object {tensor: shard file}", wm))?;
    let mut out = BTreeMap::new();
    for (name, v) in obj {
        out.insert(name.clone(), check_shard_name(path, name, v)?);
    }
    Ok(out)
}

impl ModelFiles {
    /// `dir/model.safetensors` if it exists (what `transformers` prefers too),
    /// else the shards of `dir/model.safetensors.index.json`; each file at
    /// most `max` bytes and memory-mapped.
    fn open(dir: &Path, max: u64) -> Result<Self> {
        let single = dir.join(MODEL_FILE);
        let index_path = dir.join(INDEX_FILE);
        // `symlink_metadata`: a dangling `model.safetensors` is still "there"
        // and reported as such by the read below.
        if std::fs::symlink_metadata(&single).is_ok()
            || std::fs::symlink_metadata(&index_path).is_err()
        {
            return Ok(ModelFiles {
                files: vec![StFile::read(single, max)?],
                index: None,
            });
        }
        let map = read_index(&index_path)?;
        let mut shards: Vec<&String> = map.values().collect();
        shards.sort();
        shards.dedup();
        let files = shards
            .into_iter()
            .map(|s| StFile::read(dir.join(s), max))
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelFiles {
            files,
            index: Some((index_path, map)),
        })
    }

    /// Checks that the index and the shards agree: every tensor the index
    /// names is in its shard, every tensor of a shard is named by the index
    /// (for that shard).
    fn check_index(&self, set: &TensorSet<'_>) -> Result<()> {
        let Some((index_path, map)) = &self.index else {
            return Ok(());
        };
        let shard_name = |i: usize| {
            self.files[i]
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        for (name, shard) in map {
            let detail = match set.file_of(name) {
                Some(i) if shard_name(i) == *shard => continue,
                Some(i) => format!(
                    "the index places it in {shard}, but it is stored in {}",
                    shard_name(i)
                ),
                None => format!("the index places it in {shard}, which does not hold it"),
            };
            let kind = CheckpointErrorKind::IndexMismatch {
                name: name.clone(),
                detail,
            };
            return Err(CheckpointError::new(index_path, kind));
        }
        if let Some((i, name)) = set
            .names_in_order()
            .into_iter()
            .find(|(_, n)| !map.contains_key(*n))
        {
            let kind = CheckpointErrorKind::IndexMismatch {
                name: name.to_owned(),
                detail: format!("stored in this shard but not named by {INDEX_FILE}'s weight_map"),
            };
            return Err(CheckpointError::new(&self.files[i].path, kind));
        }
        Ok(())
    }

    /// The path errors about "the model file" name.
    fn main_path(&self) -> &Path {
        match &self.index {
            Some((p, _)) => p,
            None => &self.files[0].path,
        }
    }
}

/// The parameters read from a checkpoint, in the precision asked for.
enum ReadParams {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// Reads the parameters of `cfg` from a checkpoint's model file(s).
fn read_params(mf: &ModelFiles, cfg: &Config) -> Result<(Layout, Vec<f32>)> {
    match read_params_as(mf, cfg, Precision::F32)? {
        (layout, ReadParams::F32(p)) => Ok((layout, p)),
        (_, ReadParams::Bf16(_)) => unreachable_bf16(mf.main_path()),
    }
}

/// The `Err` of an arm that cannot happen (kept typed: never a panic).
fn unreachable_bf16<T>(path: &Path) -> Result<T> {
    Err(model_err(path)(moe_core::Error::PrecisionMismatch {
        what: "read_params",
        expected: "f32",
        actual: "bf16",
    }))
}

/// Reads the parameters of `cfg` from a checkpoint's model file(s) as
/// `precision` (bf16: straight into a `u16` buffer, no f32 copy).
fn read_params_as(
    mf: &ModelFiles,
    cfg: &Config,
    precision: Precision,
) -> Result<(Layout, ReadParams)> {
    let parsed = mf
        .files
        .iter()
        .map(StFile::parse)
        .collect::<Result<Vec<_>>>()?;
    let set = match &mf.index {
        None => TensorSet::single(&mf.files[0], &parsed[0]),
        Some((index_path, _)) => TensorSet::shards(index_path, &mf.files, &parsed)?,
    };
    mf.check_index(&set)?;
    // Bound the work by the file before building the layout: a tiny config
    // can name millions of tensors (fuzzing found `load` spending seconds and
    // GBs on that). The precise per-tensor diagnosis below names a missing or
    // malformed tensor; this coarse check only rejects a config that asks for
    // far more tensors than the file's header holds.
    let per_layer = 7u64.saturating_add(3u64.saturating_mul(cfg.num_local_experts as u64));
    let required = 3u64.saturating_add((cfg.num_hidden_layers as u64).saturating_mul(per_layer));
    let present = set.len() as u64;
    if required > 4 * present + 16 {
        return Err(CheckpointError::new(
            mf.main_path(),
            CheckpointErrorKind::InvalidField {
                field: "num_hidden_layers / num_local_experts".to_owned(),
                expected: format!("a model file with the {required} tensors they imply"),
                found: format!("{present} tensors in the file"),
            },
        ));
    }
    let layout = Layout::new(cfg).map_err(model_err(mf.main_path()))?;
    // Names, dtypes and shapes first: a valid file then bounds the allocation.
    check_tensors(&set, &layout, &[""])?;
    let params = match precision {
        Precision::F32 => {
            let mut params = try_zeroed(mf.main_path(), layout.total)?;
            copy_tensors(&set, &layout, "", &mut params, false)?;
            ReadParams::F32(params)
        }
        Precision::Bf16 => {
            let mut params = try_zeroed_u16(mf.main_path(), layout.total)?;
            copy_tensors_bf16(&set, &layout, "", &mut params)?;
            ReadParams::Bf16(params)
        }
    };
    Ok((layout, params))
}

/// `len` zeros (`u16`), or [`CheckpointErrorKind::Model`] (`AllocationFailed`) about `path`.
fn try_zeroed_u16(path: &Path, len: usize) -> Result<Vec<u16>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        let bytes = len.saturating_mul(2);
        model_err(path)(moe_core::Error::AllocationFailed { bytes })
    })?;
    v.resize(len, 0);
    Ok(v)
}

/// [`load`] into a model of `precision`. [`Precision::Bf16`] reads the
/// tensors straight into the model's bf16 buffer — BF16 tensors bit for bit,
/// F32/F16 ones rounded to nearest even — with no f32 copy of the weights
/// (peak memory: the bf16 buffer plus the memory-mapped files).
///
/// # Errors
/// As [`load`]; with bf16 also [`CheckpointErrorKind::NonFinite`] for an
/// F32/F16 value that rounds past bf16's range.
pub fn load_as(dir: impl AsRef<Path>, precision: Precision) -> Result<MoETransformer> {
    let dir = dir.as_ref();
    let cc = read_config(dir)?;
    let mf = ModelFiles::open(dir, safetensors_bound(&cc.config, 1))?;
    match read_params_as(&mf, &cc.config, precision)? {
        (_, ReadParams::F32(p)) => {
            MoETransformer::from_params(&cc.config, p).map_err(model_err(dir))
        }
        (_, ReadParams::Bf16(p)) => {
            MoETransformer::from_params_bf16(&cc.config, p).map_err(model_err(dir))
        }
    }
}

fn load_with_file(dir: &Path) -> Result<(MoETransformer, StFile)> {
    let cc = read_config(dir)?;
    let mf = ModelFiles::open(dir, safetensors_bound(&cc.config, 1))?;
    let (_, params) = read_params(&mf, &cc.config)?;
    let model = MoETransformer::from_params(&cc.config, params).map_err(model_err(dir))?;
    // The first (or only) model file: its metadata holds a training save's step.
    let file = mf.files.into_iter().next().ok_or_else(|| {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no shard");
        CheckpointError::new(dir.join(INDEX_FILE), CheckpointErrorKind::Io { source })
    })?;
    Ok((model, file))
}

/// Loads a checkpoint directory written by [`save`], [`export`], the
/// golden-fixture generator, or `transformers`' `save_pretrained`: one
/// `model.safetensors` or the shards of `model.safetensors.index.json`;
/// tensors F32, BF16 or F16 (converted to f32 exactly). The files are
/// memory-mapped, not read into memory.
///
/// # Errors
/// [`CheckpointErrorKind::Io`] (missing files), the config errors of
/// [`parse_config`], and for `model.safetensors`: [`CheckpointErrorKind::Safetensors`],
/// [`CheckpointErrorKind::Truncated`], [`CheckpointErrorKind::MissingTensor`],
/// [`CheckpointErrorKind::WrongDtype`], [`CheckpointErrorKind::WrongShape`],
/// [`CheckpointErrorKind::UnexpectedTensor`], [`CheckpointErrorKind::NonFinite`];
/// for a sharded checkpoint also the index's [`CheckpointErrorKind::ConfigJson`],
/// [`CheckpointErrorKind::MissingField`] (`weight_map`), [`CheckpointErrorKind::InvalidField`]
/// (a shard name that is not a plain file name), a missing shard
/// ([`CheckpointErrorKind::Io`]), [`CheckpointErrorKind::DuplicateTensor`] and
/// [`CheckpointErrorKind::IndexMismatch`] (the index names a tensor its shard
/// lacks, or a shard holds a tensor the index does not name).
pub fn load(dir: impl AsRef<Path>) -> Result<MoETransformer> {
    Ok(load_with_file(dir.as_ref())?.0)
}

// ---------------------------------------------------------------------------------------
// Export in the Hugging Face forms (dtype, shards)
// ---------------------------------------------------------------------------------------

/// Options of [`export`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ExportOptions {
    /// Written as `router_aux_loss_coef` and the rest of [`SaveOptions`].
    pub save: SaveOptions,
    /// Tensor dtype (F32, or BF16 / F16 rounded to nearest even).
    pub dtype: StoreDtype,
    /// Largest shard in bytes of tensor data (`None`: one `model.safetensors`).
    /// As `save_pretrained(max_shard_size=…)`: tensors are taken in order and a
    /// new shard starts when the next tensor would pass the limit; a tensor
    /// larger than the limit gets a shard of its own.
    pub max_shard_bytes: Option<u64>,
}

/// `NAME` of shard `i` (0-based) of `n`: `model-0000{i+1}-of-0000{n}.safetensors`.
pub fn shard_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

/// Writes `model` to `dir` as `transformers` does: `config.json` declaring
/// `opts.dtype`, and either `model.safetensors` or shards
/// `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`
/// (`{"metadata": {"total_size": BYTES}, "weight_map": {tensor: shard}}`).
///
/// Atomic as a whole: every file is written and `fsync`ed into a temporary
/// directory next to `dir`, which then replaces `dir` by `rename(2)` (an old
/// `dir` is moved aside first and removed after; see
/// [`crate::io::atomic`]), so a crash never leaves a mix of two exports or a
/// partial shard set under `dir`.
///
/// # Errors
/// [`CheckpointErrorKind::Io`]; [`CheckpointErrorKind::NonFinite`] for a
/// non-finite parameter or, with F16, a value outside ±65504 (it would become
/// ±∞); [`CheckpointErrorKind::Model`] for an invalid `router_aux_loss_coef`.
pub fn export(dir: impl AsRef<Path>, model: &MoETransformer, opts: &ExportOptions) -> Result<()> {
    let dir = dir.as_ref();
    let layout = model.layout();
    let params = model.params().map_err(model_err(dir))?;
    check_finite_flat(&dir.join(MODEL_FILE), layout, params, "")?;
    if opts.dtype == StoreDtype::F16 {
        let max = f32::from(half::f16::MAX);
        if let Some(i) = params.iter().position(|x| x.abs() > max) {
            let t = layout.tensors().iter().find(|t| t.range().contains(&i));
            let (name, index) =
                t.map_or(("<flat>".to_owned(), i), |t| (t.name.clone(), i - t.offset));
            let kind = CheckpointErrorKind::NonFinite {
                name,
                index,
                value: f32::from(half::f16::from_f32(params[i])),
            };
            return Err(CheckpointError::new(dir.join(MODEL_FILE), kind));
        }
    }
    check_router_aux_loss_coef(opts.save.router_aux_loss_coef).map_err(model_err(dir))?;
    let tmp = stage_dir(dir)?;
    let text =
        self::config_json::config_json_dtype(model.config(), &opts.save, opts.dtype.torch_name());
    let mut staged = vec![stage(&tmp.tmp.join(CONFIG_FILE), |w| {
        w.write_all(text.as_bytes())
    })?];
    let tensors = layout_tensors(layout, params, "");
    let meta = model_metadata(None, None);
    // Group tensors (in layout order) into shards of at most the limit.
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let b = opts.dtype.size() * t.data.len() as u64;
        if let Some(max) = opts.max_shard_bytes {
            let last = groups.last().map_or(0, Vec::len);
            if last > 0 && bytes + b > max {
                groups.push(Vec::new());
                bytes = 0;
            }
        }
        bytes += b;
        if let Some(g) = groups.last_mut() {
            g.push(i);
        }
    }
    if groups.len() == 1 {
        staged.push(stage_safetensors_as(
            &tmp.tmp.join(MODEL_FILE),
            &tensors,
            &meta,
            opts.dtype,
        )?);
    } else {
        let n = groups.len();
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (k, g) in groups.iter().enumerate() {
            let name = shard_name(k, n);
            let part: Vec<F32Tensor<'_>> = g.iter().map(|&i| tensors[i].clone()).collect();
            for t in &part {
                weight_map.insert(t.name.clone(), name.clone());
                total += opts.dtype.size() * t.data.len() as u64;
            }
            staged.push(stage_safetensors_as(
                &tmp.tmp.join(&name),
                &part,
                &meta,
                opts.dtype,
            )?);
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let mut text = serde_json::to_string_pretty(&index).unwrap_or_default();
        text.push('\n');
        staged.push(stage(&tmp.tmp.join(INDEX_FILE), |w| {
            w.write_all(text.as_bytes())
        })?);
    }
    commit(staged)?;
    commit_dir(tmp)
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
/// As [`save`], and [`CheckpointErrorKind::NonFinite`] for a non-finite moment.
pub fn save_training(
    dir: impl AsRef<Path>,
    trainer: &Trainer,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    save_training_with(dir, trainer, extra, None)
}

/// [`save_training`], also writing `run_id` (the training run's id) into
/// both files' metadata under [`RUN_ID_KEY`]; [`load_training_run`] refuses
/// a model and an optimizer file whose run ids differ.
///
/// # Errors
/// As [`save_training`].
pub fn save_training_with(
    dir: impl AsRef<Path>,
    trainer: &Trainer,
    extra: &BTreeMap<String, String>,
    run_id: Option<&str>,
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
    let mut staged = stage_model(dir, model, &opts, Some(opt.step()), run_id)?;

    let mut meta = BTreeMap::new();
    meta.insert("format".to_owned(), OPTIMIZER_FORMAT.to_owned());
    meta.insert("format_version".to_owned(), FORMAT_VERSION.to_string());
    meta.insert("step".to_owned(), opt.step().to_string());
    let a = opt.config();
    meta.insert("beta1".to_owned(), a.beta1.to_string());
    meta.insert("beta2".to_owned(), a.beta2.to_string());
    meta.insert("eps".to_owned(), a.eps.to_string());
    meta.insert("weight_decay".to_owned(), a.weight_decay.to_string());
    if let Some(r) = run_id {
        meta.insert(RUN_ID_KEY.to_owned(), r.to_owned());
    }
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
        Some(s) => {
            let step = s.parse::<u64>().map_err(|_| {
                CheckpointError::new(
                    path,
                    CheckpointErrorKind::Metadata {
                        key: "step".into(),
                        expected: "a non-negative integer".into(),
                        found: Some(s.clone()),
                    },
                )
            })?;
            if step > MAX_STEP {
                return Err(CheckpointError::new(
                    path,
                    CheckpointErrorKind::Metadata {
                        key: "step".into(),
                        expected: format!(
                            "an integer <= {MAX_STEP} (2^53, the largest step exact in the f64 bias correction)"
                        ),
                        found: Some(s.clone()),
                    },
                ));
            }
            Ok(Some(step))
        }
    }
}

/// The `--seq` a `moe train` checkpoint in `dir` was trained with
/// (`extra.seq` in `optimizer.safetensors`' metadata), or `None` (no
/// optimizer file, unreadable, or not recorded). Reads only the header.
pub fn trained_seq(dir: impl AsRef<Path>) -> Option<usize> {
    let path = dir.as_ref().join(OPTIMIZER_FILE);
    let file = StFile::read(path, u64::MAX).ok()?;
    let meta = file.metadata().ok()??;
    meta.get(&format!("{EXTRA_PREFIX}seq"))?.parse().ok()
}

/// What [`load_training_run`] returns.
#[derive(Debug)]
pub struct TrainingCheckpoint {
    /// The trainer, as saved.
    pub trainer: Trainer,
    /// The `extra` map given to [`save_training`].
    pub extra: BTreeMap<String, String>,
    /// The run id of both files (`None`: written without one).
    pub run_id: Option<String>,
}

/// [`load_training`], also returning the `extra` map and the run id given to
/// [`save_training_with`].
///
/// # Errors
/// As [`load_training`], and [`CheckpointErrorKind::RunMismatch`] when the
/// two files carry different run ids (or only one carries one).
pub fn load_training_run(
    dir: impl AsRef<Path>,
    config: TrainConfig,
    max_batch: usize,
    max_seq: usize,
) -> Result<TrainingCheckpoint> {
    load_training_impl(dir.as_ref(), config, max_batch, max_seq)
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
    let c = load_training_impl(dir.as_ref(), config, max_batch, max_seq)?;
    Ok((c.trainer, c.extra))
}

fn load_training_impl(
    dir: &Path,
    config: TrainConfig,
    max_batch: usize,
    max_seq: usize,
) -> Result<TrainingCheckpoint> {
    let (model, model_file) = load_with_file(dir)?;
    let model_meta = model_file.metadata()?;
    let model_step = parse_step(&model_file.path, model_meta.as_ref())?;
    let model_run = model_meta.and_then(|mut m| m.remove(RUN_ID_KEY));
    drop(model_file);

    let bound = safetensors_bound(model.config(), 2);
    let file = StFile::read(dir.join(OPTIMIZER_FILE), bound)?;
    let st = file.parse()?;
    let meta = file.metadata()?;
    let format = meta.as_ref().and_then(|m| m.get("format"));
    if format.map(String::as_str) != Some(OPTIMIZER_FORMAT) {
        return Err(CheckpointError::new(
            &file.path,
            CheckpointErrorKind::Metadata {
                key: "format".into(),
                expected: format!("\"{OPTIMIZER_FORMAT}\""),
                found: format.cloned(),
            },
        ));
    }
    if let Some(v) = meta.as_ref().and_then(|m| m.get("format_version")) {
        if v.parse::<u64>().map_or(true, |x| x > FORMAT_VERSION) {
            return Err(CheckpointError::new(
                &file.path,
                CheckpointErrorKind::Metadata {
                    key: "format_version".into(),
                    expected: format!("an integer <= {FORMAT_VERSION}"),
                    found: Some(v.clone()),
                },
            ));
        }
    }
    let step = parse_step(&file.path, meta.as_ref())?.ok_or_else(|| {
        CheckpointError::new(
            &file.path,
            CheckpointErrorKind::Metadata {
                key: "step".into(),
                expected: "the AdamW step count".into(),
                found: None,
            },
        )
    })?;
    if model_step != Some(step) {
        return Err(CheckpointError::new(
            dir,
            CheckpointErrorKind::StepMismatch {
                model_step,
                optimizer_step: step,
            },
        ));
    }
    let optimizer_run = meta.as_ref().and_then(|m| m.get(RUN_ID_KEY)).cloned();
    if model_run != optimizer_run {
        return Err(CheckpointError::new(
            dir,
            CheckpointErrorKind::RunMismatch {
                model_run,
                optimizer_run,
            },
        ));
    }
    let layout = model.layout().clone();
    let set = TensorSet::single(&file, &st);
    check_tensors(&set, &layout, &["m.", "v."])?;

    let mut trainer = Trainer::new(model, config, max_batch, max_seq).map_err(model_err(dir))?;
    // The moments are read into staging buffers, then handed to AdamW's
    // validating setters (moe-core keeps its fields private).
    let (mut m, mut v) = (vec![0.0f32; layout.total], vec![0.0f32; layout.total]);
    copy_tensors(&set, &layout, "m.", &mut m, false)?;
    copy_tensors(&set, &layout, "v.", &mut v, true)?;
    let opt = trainer.optimizer_mut();
    opt.set_moments(&m, &v).map_err(model_err(&file.path))?;
    opt.set_step(step).map_err(model_err(&file.path))?;

    let extra = meta
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| k.strip_prefix(EXTRA_PREFIX).map(|k| (k.to_owned(), v)))
        .collect();
    Ok(TrainingCheckpoint {
        trainer,
        extra,
        run_id: optimizer_run,
    })
}

/// Loads a training checkpoint written by [`save_training`] into a new
/// [`Trainer`] (steps of up to `max_batch × max_seq` tokens) whose parameters,
/// AdamW moments and step count are those saved, so that training resumes
/// bit-identically. The hyper-parameters are those of `config` (the saved
/// AdamW values are informative only).
///
/// # Errors
/// As [`load`], plus for `optimizer.safetensors`: missing/invalid `format` or
/// `step` metadata ([`CheckpointErrorKind::Metadata`]), a step different from the
/// model file's ([`CheckpointErrorKind::StepMismatch`]), the tensor errors of
/// [`load`] for `m.*`/`v.*`, a negative second moment
/// ([`CheckpointErrorKind::InvalidValue`]), and [`CheckpointErrorKind::Model`] for an
/// invalid `config` or workspace size.
pub fn load_training(
    dir: impl AsRef<Path>,
    config: TrainConfig,
    max_batch: usize,
    max_seq: usize,
) -> Result<Trainer> {
    Ok(load_training_with_extra(dir, config, max_batch, max_seq)?.0)
}
