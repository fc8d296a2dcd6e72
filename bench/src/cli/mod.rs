//! The subcommands other than `bench` and `report`, and what they share:
//! the core-error → flag mapping ([`flag_of`], [`with_flag`]) and the
//! "DIR or DIR/checkpoint" rule ([`checkpoint_dir`], [`train_checkpoint`]).
//! Model profiles are [`crate::profile`].

use std::path::{Path, PathBuf};

use crate::io::checkpoint::CONFIG_FILE;
use crate::Error;

pub mod demo;
pub mod dispatch_compare;
pub mod export;
pub mod generate;
pub mod grads;
pub mod plan;
pub mod stress;
pub mod tokenizer;
pub mod train;

/// `--precision` of `moe generate` and `moe plan`: the parameters' storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PrecisionArg {
    /// f32 weights (4 bytes per parameter).
    #[default]
    F32,
    /// bf16 weights (2 bytes per parameter; inference only, compute in f32).
    Bf16,
}

impl PrecisionArg {
    /// The core's precision.
    pub fn precision(self) -> moe_core::Precision {
        match self {
            PrecisionArg::F32 => moe_core::Precision::F32,
            PrecisionArg::Bf16 => moe_core::Precision::Bf16,
        }
    }
}

/// Name of the checkpoint subdirectory of a `moe train --out` directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// The command-line flag of each parameter name that moe-core's
/// `Error::InvalidParameter` reports (`moe train`'s training config and
/// `moe generate`'s sampling parameters).
const PARAM_FLAGS: &[(&str, &str)] = &[
    ("lr", "--lr"),
    ("min_lr", "--min-lr"),
    ("warmup", "--warmup"),
    ("weight_decay", "--weight-decay"),
    ("aux_alpha", "--aux-alpha"),
    ("clip_grad_norm", "--clip"),
    ("temperature", "--temperature"),
    ("k", "--k"),
    ("p", "--p"),
    ("max_len", "--max-len"),
];

/// The command-line flag a core error is about, if any.
pub fn flag_of(e: &moe_core::Error) -> Option<&'static str> {
    use moe_core::Error as E;
    match e {
        E::InvalidParameter { param, .. } => PARAM_FLAGS
            .iter()
            .find(|(p, _)| p == param)
            .map(|&(_, flag)| flag),
        E::SeqTooLong { .. } => Some("--max-len"),
        E::EmptyInput { arg: "prompt" } => Some("--prompt"),
        _ => None,
    }
}

/// `FLAG: message`, for an error about one flag's value.
pub fn arg_error(flag: &str, msg: impl std::fmt::Display) -> Error {
    Error::Msg(format!("{flag}: {msg}"))
}

/// A core error prefixed by the flag it concerns ([`flag_of`]), else by
/// `fallback` if given, else as it is.
pub fn with_flag(e: moe_core::Error, fallback: Option<&str>) -> Error {
    match flag_of(&e).or(fallback) {
        Some(flag) => arg_error(flag, e),
        None => e.into(),
    }
}

/// A count flag that must be at least 1 (clap `value_parser`): `0` of
/// something that counts repetitions, windows or steps is meaningless.
///
/// # Errors
/// A message clap prints with the flag's name.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be >= 1, got 0".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `--threads N` (clap `value_parser`): in `1..=MAX_THREADS`; the default of every
/// subcommand that takes it is [`moe_core::available_threads`].
///
/// # Errors
/// A message clap prints with the flag's name (`0`, not a number).
pub fn threads_arg(s: &str) -> Result<usize, String> {
    let n = at_least_one(s)?;
    if n > moe_core::MAX_THREADS {
        return Err(format!(
            "must be <= {} (moe_core::MAX_THREADS), got {n}",
            moe_core::MAX_THREADS
        ));
    }
    Ok(n)
}

/// The [`moe_core::Pool`] of `--threads N`.
///
/// # Errors
/// `--threads: …` if the OS refuses the threads.
pub fn pool(threads: usize) -> Result<moe_core::Pool, Error> {
    moe_core::Pool::new(threads).map_err(|e| arg_error("--threads", e))
}

/// Physical memory of the host in bytes (`MemTotal` of `/proc/meminfo`), if known.
pub fn physical_memory() -> Option<u64> {
    // A kernel file, not user input (and its reported length is 0, so the
    // bounded reader of `crate::io::read` does not apply).
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks that a workspace for `batch × seq` tokens of `cfg` in `mode` fits
/// in the host's memory before it is allocated: its size is that of one row
/// (`batch` 1, computed by moe-core) times `batch` (a workspace grows
/// linearly in the batch). `flags` names what asked for it (e.g.
/// `"--batch"`), for the error. A size that does not fit is
/// `AllocationFailed { bytes }`, prefixed by `flags`.
///
/// # Errors
/// `flags: …` with moe-core's error (`AllocationFailed`, `Overflow`, …).
pub fn check_workspace_fits(
    cfg: &moe_core::Config,
    batch: usize,
    seq: usize,
    mode: moe_core::Mode,
    flags: &str,
) -> Result<(), Error> {
    let row = moe_core::Workspace::new(cfg, 1, seq, mode).map_err(|e| arg_error(flags, e))?;
    let bytes = (row.bytes() as u64).saturating_mul(batch as u64);
    if let Some(mem) = physical_memory() {
        if bytes > mem {
            let e = moe_core::Error::AllocationFailed {
                bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
            };
            return Err(arg_error(
                flags,
                format!("{e} (more than the host's {mem} bytes of memory)"),
            ));
        }
    }
    Ok(())
}

/// An empty `Vec` with room for `n` elements, or `AllocationFailed { bytes }`
/// prefixed by `what` (the flag or file that asked for it).
///
/// # Errors
/// `what: …AllocationFailed…`.
pub fn try_vec<T>(n: usize, what: &str) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        let bytes = n.saturating_mul(std::mem::size_of::<T>());
        arg_error(what, moe_core::Error::AllocationFailed { bytes })
    })?;
    Ok(v)
}

/// `DIR/checkpoint` if `DIR` is a `moe train --out` directory (its
/// `checkpoint/` holds a `config.json`).
pub fn train_checkpoint(dir: &Path) -> Option<PathBuf> {
    let sub = dir.join(CHECKPOINT_DIR);
    sub.join(CONFIG_FILE).is_file().then_some(sub)
}

/// `DIR`, or `DIR/checkpoint` when `DIR` is not itself a checkpoint directory
/// but a `moe train --out` directory (`moe generate --checkpoint`).
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    if dir.join(CONFIG_FILE).is_file() {
        return dir.to_path_buf();
    }
    train_checkpoint(dir).unwrap_or_else(|| dir.to_path_buf())
}
