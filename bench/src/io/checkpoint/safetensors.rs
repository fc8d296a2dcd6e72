//! safetensors files: writing F32 tensors deterministically (atomically, see
//! [`crate::io::atomic`]) and reading them back with every problem named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use moe_core::{Layout, TensorInfo};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::error::model_err;
use super::{CheckpointError, CheckpointErrorKind, Result};
use crate::io::atomic::{commit, stage, Staged};

// ---------------------------------------------------------------------------------------
// Writing (F32 only, in the given order, deterministic bytes)
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

/// The dtype tensors are stored in: F32 (the default, exact), or BF16 / F16
/// (each f32 rounded to nearest, ties to even, by `half`), as `moe export
/// --dtype` writes them for the Hugging Face ecosystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDtype {
    /// 4 bytes per element, exact.
    #[default]
    F32,
    /// bfloat16: the top 16 bits of an f32, rounded.
    BF16,
    /// IEEE half precision (finite range ±65504).
    F16,
}

impl StoreDtype {
    /// The safetensors dtype name (`"F32"`, `"BF16"`, `"F16"`).
    pub fn st_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "F32",
            StoreDtype::BF16 => "BF16",
            StoreDtype::F16 => "F16",
        }
    }

    /// The `config.json` `dtype` / `torch_dtype` value.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::BF16 => "bfloat16",
            StoreDtype::F16 => "float16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::BF16 | StoreDtype::F16 => 2,
        }
    }
}

/// The safetensors header for `tensors` (stored in the given order, as
/// `dtype`) and `metadata` (keys sorted), padded with spaces to a multiple of 8 bytes.
fn safetensors_header_as(
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
    dtype: StoreDtype,
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
        let end = off + dtype.size() * numel as u64;
        parts.push(format!(
            "{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{off},{end}]}}",
            serde_json::to_string(&t.name).map_err(io::Error::other)?,
            dtype.st_name(),
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

/// `data` as little-endian 16-bit floats (`bf16` or `f16`, rounded to nearest even).
fn write_half_le(w: &mut dyn Write, data: &[f32], dtype: StoreDtype) -> io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    for chunk in data.chunks(buf.len() / 2) {
        for (dst, &x) in buf.chunks_exact_mut(2).zip(chunk) {
            let bits = match dtype {
                StoreDtype::BF16 => half::bf16::from_f32(x).to_bits(),
                _ => half::f16::from_f32(x).to_bits(),
            };
            dst.copy_from_slice(&bits.to_le_bytes());
        }
        w.write_all(&buf[..2 * chunk.len()])?;
    }
    Ok(())
}

fn write_safetensors_to(
    w: &mut dyn Write,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> io::Result<()> {
    write_safetensors_as(w, tensors, metadata, StoreDtype::F32)
}

fn write_safetensors_as(
    w: &mut dyn Write,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
    dtype: StoreDtype,
) -> io::Result<()> {
    let header = safetensors_header_as(tensors, metadata, dtype)?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for t in tensors {
        match dtype {
            StoreDtype::F32 => write_f32_le(w, t.data)?,
            _ => write_half_le(w, t.data, dtype)?,
        }
    }
    Ok(())
}

/// Stages a safetensors file of `tensors` stored as `dtype`.
pub(super) fn stage_safetensors_as(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
    dtype: StoreDtype,
) -> Result<Staged> {
    stage(path, |w| write_safetensors_as(w, tensors, metadata, dtype))
}

pub(super) fn stage_safetensors(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Staged> {
    stage(path, |w| write_safetensors_to(w, tensors, metadata))
}

/// Writes a safetensors file of F32 tensors atomically (see [`write_atomic`](crate::io::atomic::write_atomic)),
/// tensors in the given order, `__metadata__` keys sorted: the same inputs
/// always give the same bytes.
///
/// # Errors
/// [`CheckpointErrorKind::Io`]; also for duplicate names or a shape that does not
/// match its data (`InvalidInput`).
pub fn write_f32_safetensors(
    path: &Path,
    tensors: &[F32Tensor<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    commit(vec![stage_safetensors(path, tensors, metadata)?])
}

/// Every tensor of `layout`, with its name prefixed by `prefix` and its data from `flat`.
pub(super) fn layout_tensors<'a>(
    layout: &Layout,
    flat: &'a [f32],
    prefix: &str,
) -> Vec<F32Tensor<'a>> {
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

pub(super) fn check_finite_flat(
    path: &Path,
    layout: &Layout,
    flat: &[f32],
    prefix: &str,
) -> Result<()> {
    if let Some(i) = flat.iter().position(|x| !x.is_finite()) {
        let t = layout
            .tensors()
            .iter()
            .find(|t| t.range().contains(&i))
            .map(|t| (format!("{prefix}{}", t.name), i - t.offset))
            .unwrap_or_else(|| (format!("{prefix}<flat>"), i));
        return Err(CheckpointError::new(
            path,
            CheckpointErrorKind::NonFinite {
                name: t.0,
                index: t.1,
                value: flat[i],
            },
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading
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

/// Largest safetensors header we read: 100 MB, the safetensors crate's own
/// `MAX_HEADER_SIZE` (a header of a real model is a few KB to a few MB).
pub const MAX_SAFETENSORS_HEADER_BYTES: u64 = 100_000_000;

/// The largest safetensors file that can hold `copies` F32 copies of
/// `config`'s parameters: the 8-byte length, the header maximum and
/// `copies · 4 · params` bytes of data (saturating; an absurd config gives
/// an absurd bound, which the bounded read then meets with the file's length).
pub(super) fn safetensors_bound(config: &moe_core::Config, copies: u64) -> u64 {
    let data = config
        .param_counts()
        .total
        .saturating_mul(4)
        .saturating_mul(copies);
    (8 + MAX_SAFETENSORS_HEADER_BYTES).saturating_add(data)
}

/// A safetensors file, memory-mapped ([`crate::io::mmap`]): its bytes are
/// never copied into a heap buffer, so loading holds the parameters once.
pub(super) struct StFile {
    pub(super) path: PathBuf,
    bytes: crate::io::mmap::Mapped,
}

impl StFile {
    /// Maps `path`, a regular file of at most `max` bytes (a FIFO, device or
    /// directory is refused at once, as by [`crate::io::read::read_bounded`]).
    pub(super) fn read(path: PathBuf, max: u64) -> Result<Self> {
        let bytes = crate::io::mmap::map_regular(&path, max)?;
        Ok(StFile { path, bytes })
    }

    fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// Drops the resident pages of `sub` (bytes of this file) after use.
    pub(super) fn release(&self, sub: &[u8]) {
        self.bytes.release(sub);
    }

    pub(super) fn parse(&self) -> Result<SafeTensors<'_>> {
        let bytes = self.bytes();
        SafeTensors::deserialize(bytes).map_err(|source| {
            if let Some((tensor, expected_bytes)) = diagnose_truncation(bytes) {
                CheckpointError::new(
                    &self.path,
                    CheckpointErrorKind::Truncated {
                        tensor,
                        expected_bytes,
                        actual_bytes: bytes.len() as u64,
                    },
                )
            } else {
                CheckpointError::new(&self.path, CheckpointErrorKind::Safetensors { source })
            }
        })
    }

    pub(super) fn metadata(&self) -> Result<Option<HashMap<String, String>>> {
        let (_, meta) = SafeTensors::read_metadata(self.bytes()).map_err(|source| {
            CheckpointError::new(&self.path, CheckpointErrorKind::Safetensors { source })
        })?;
        Ok(meta.metadata().clone())
    }
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Bytes per element of the dtypes loading converts to f32 (F32, BF16, F16).
fn elem_bytes(d: Dtype) -> Option<usize> {
    match d {
        Dtype::F32 => Some(4),
        Dtype::BF16 | Dtype::F16 => Some(2),
        _ => None,
    }
}

/// The tensors of one file or of every shard of a sharded checkpoint, by
/// name, each with the file that holds it.
pub(super) struct TensorSet<'a> {
    by_name: HashMap<String, (usize, TensorView<'a>)>,
    /// Path of file `i`.
    paths: Vec<&'a Path>,
    /// File `i` (to release its pages once a tensor is copied).
    files: Vec<&'a StFile>,
    /// Where a missing tensor is reported: the file, or the shard index.
    missing_path: &'a Path,
}

impl<'a> TensorSet<'a> {
    /// The tensors of one file.
    pub(super) fn single(file: &'a StFile, st: &SafeTensors<'a>) -> Self {
        let by_name = st.iter().map(|(n, v)| (n.to_owned(), (0, v))).collect();
        TensorSet {
            by_name,
            paths: vec![file.path.as_path()],
            files: vec![file],
            missing_path: &file.path,
        }
    }

    /// The tensors of several shards (`files[i]` parsed as `parsed[i]`);
    /// a name stored in two shards is [`CheckpointErrorKind::DuplicateTensor`].
    pub(super) fn shards(
        index_path: &'a Path,
        files: &'a [StFile],
        parsed: &[SafeTensors<'a>],
    ) -> Result<Self> {
        let mut by_name: HashMap<String, (usize, TensorView<'a>)> = HashMap::new();
        for (i, st) in parsed.iter().enumerate() {
            // File order within a shard, for a stable first duplicate.
            let mut names: Vec<(usize, &str, TensorView<'a>)> = st
                .iter()
                .map(|(n, v)| (v.data().as_ptr() as usize, n, v))
                .collect();
            names.sort_by_key(|x| x.0);
            for (_, n, v) in names {
                if let Some((j, _)) = by_name.get(n) {
                    let kind = CheckpointErrorKind::DuplicateTensor {
                        name: n.to_owned(),
                        first: files[*j].path.clone(),
                    };
                    return Err(CheckpointError::new(&files[i].path, kind));
                }
                by_name.insert(n.to_owned(), (i, v));
            }
        }
        Ok(TensorSet {
            by_name,
            paths: files.iter().map(|f| f.path.as_path()).collect(),
            files: files.iter().collect(),
            missing_path: index_path,
        })
    }

    /// Number of tensors.
    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The shard index of `name`, if stored.
    pub(super) fn file_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).map(|x| x.0)
    }

    /// Every name with its file index, in (file, data offset) order.
    pub(super) fn names_in_order(&self) -> Vec<(usize, &str)> {
        let mut v: Vec<(usize, usize, &str)> = self
            .by_name
            .iter()
            .map(|(n, (f, view))| (*f, view.data().as_ptr() as usize, n.as_str()))
            .collect();
        v.sort();
        v.into_iter().map(|(f, _, n)| (f, n)).collect()
    }
}

/// The one tensor lookup of loading: `prefix + t.name` in `set`, which must be
/// F32, BF16 or F16 with `t`'s shape. Used by [`check_tensors`] (every name
/// first, so that a valid file bounds the allocation) and by [`copy_tensors`].
/// Returns the name, the path of the file holding it, and the view.
fn lookup<'a>(
    set: &TensorSet<'a>,
    prefix: &str,
    t: &TensorInfo,
) -> Result<(String, &'a Path, TensorView<'a>)> {
    let name = format!("{prefix}{}", t.name);
    let Some((file, view)) = set.by_name.get(&name) else {
        let kind = CheckpointErrorKind::MissingTensor { name };
        return Err(CheckpointError::new(set.missing_path, kind));
    };
    let path = set.paths[*file];
    let err = |kind| Err(CheckpointError::new(path, kind));
    if elem_bytes(view.dtype()).is_none() {
        let found = dtype_name(view.dtype());
        return err(CheckpointErrorKind::WrongDtype { name, found });
    }
    if view.shape() != t.shape.as_slice() {
        let (expected, found) = (t.shape.clone(), view.shape().to_vec());
        return err(CheckpointErrorKind::WrongShape {
            name,
            expected,
            found,
        });
    }
    Ok((name, path, view.clone()))
}

/// Checks that `set` holds exactly the tensors of `layout` (each name with
/// `prefix` in each of `prefixes`), F32/BF16/F16, with the layout's shapes.
pub(super) fn check_tensors(set: &TensorSet<'_>, layout: &Layout, prefixes: &[&str]) -> Result<()> {
    for prefix in prefixes {
        for t in layout.tensors() {
            lookup(set, prefix, t)?;
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
    if let Some((f, name)) = set
        .names_in_order()
        .into_iter()
        .find(|(_, n)| !expected.contains(*n))
    {
        let name = name.to_owned();
        return Err(CheckpointError::new(
            set.paths[f],
            CheckpointErrorKind::UnexpectedTensor { name },
        ));
    }
    Ok(())
}

/// Element `i` of a little-endian tensor of dtype `d` (F32, BF16 or F16) as
/// f32, exactly: BF16 is the top half of an f32 (a 16-bit shift), F16 is
/// widened by `half` (every f16 is an f32).
#[inline]
fn to_f32(d: Dtype, b: &[u8]) -> f32 {
    match d {
        Dtype::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        Dtype::F16 => half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    }
}

/// Copies `prefix + name` of every layout tensor into `flat` (already checked
/// by [`check_tensors`]), converted to f32, rejecting non-finite values and,
/// with `non_negative`, negative ones.
pub(super) fn copy_tensors(
    set: &TensorSet<'_>,
    layout: &Layout,
    prefix: &str,
    flat: &mut [f32],
    non_negative: bool,
) -> Result<()> {
    for t in layout.tensors() {
        let (name, path, dtype, size, data) = tensor_bytes(set, prefix, t)?;
        let out = flat.get_mut(t.range()).unwrap_or_default();
        for (index, (o, b)) in out.iter_mut().zip(data.chunks_exact(size)).enumerate() {
            let value = to_f32(dtype, b);
            if !value.is_finite() {
                let kind = CheckpointErrorKind::NonFinite { name, index, value };
                return Err(CheckpointError::new(path, kind));
            }
            if non_negative && value < 0.0 {
                let expected = ">= 0";
                let kind = CheckpointErrorKind::InvalidValue {
                    name,
                    index,
                    value,
                    expected,
                };
                return Err(CheckpointError::new(path, kind));
            }
            *o = value;
        }
        release(set, &name, data);
    }
    Ok(())
}

/// Tensor `t`'s name, file, dtype, bytes per element and little-endian bytes
/// (checked by [`lookup`]: present, a loadable dtype, the layout's shape).
fn tensor_bytes<'a>(
    set: &TensorSet<'a>,
    prefix: &str,
    t: &TensorInfo,
) -> Result<(String, &'a Path, Dtype, usize, &'a [u8])> {
    let (name, path, view) = lookup(set, prefix, t)?;
    let dtype = view.dtype();
    let size = elem_bytes(dtype).unwrap_or(4);
    let data = view.data();
    if data.len() != size * t.numel() {
        // Unreachable after `lookup` and safetensors' own validation.
        let (expected, found) = (t.shape.clone(), vec![data.len() / size]);
        let kind = CheckpointErrorKind::WrongShape {
            name,
            expected,
            found,
        };
        return Err(CheckpointError::new(path, kind));
    }
    Ok((name, path, dtype, size, data))
}

/// Releases the pages of tensor `name`'s bytes once they were copied.
fn release(set: &TensorSet<'_>, name: &str, data: &[u8]) {
    if let Some(&(f, _)) = set.by_name.get(name) {
        set.files[f].release(data);
    }
}

/// [`copy_tensors`] into a bf16 buffer (bit patterns), without an f32 copy:
/// BF16 tensor bytes are taken as they are (little-endian `u16`), F32 and
/// F16 values are rounded to bf16 (nearest even, as `torch`'s
/// `.to(torch.bfloat16)`). A value that is, or rounds to, NaN/±∞ is refused
/// ([`CheckpointErrorKind::NonFinite`] with the rounded value).
pub(super) fn copy_tensors_bf16(
    set: &TensorSet<'_>,
    layout: &Layout,
    prefix: &str,
    flat: &mut [u16],
) -> Result<()> {
    use moe_core::kernels::bf16;
    for t in layout.tensors() {
        let (name, path, dtype, size, data) = tensor_bytes(set, prefix, t)?;
        let out = flat.get_mut(t.range()).unwrap_or_default();
        for (o, b) in out.iter_mut().zip(data.chunks_exact(size)) {
            *o = match dtype {
                Dtype::BF16 => u16::from_le_bytes([b[0], b[1]]),
                _ => bf16::round(to_f32(dtype, b)),
            };
        }
        if let Some(index) = bf16::first_non_finite(out) {
            let value = bf16::widen(out[index]);
            let kind = CheckpointErrorKind::NonFinite { name, index, value };
            return Err(CheckpointError::new(path, kind));
        }
        release(set, &name, data);
    }
    Ok(())
}

/// `len` zeros, or [`CheckpointErrorKind::Model`] (`AllocationFailed`) about `path`.
pub(super) fn try_zeroed(path: &Path, len: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        let bytes = len.saturating_mul(4);
        model_err(path)(moe_core::Error::AllocationFailed { bytes })
    })?;
    v.resize(len, 0.0);
    Ok(v)
}
