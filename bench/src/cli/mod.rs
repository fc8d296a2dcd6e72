//! The subcommands other than `bench` and `report`, and what they share:
//! the core-error → flag mapping ([`flag_of`], [`with_flag`]) and the
//! "DIR or DIR/checkpoint" rule ([`checkpoint_dir`], [`train_checkpoint`]).
//! Model profiles are [`crate::profile`].

use std::path::{Path, PathBuf};

use crate::io::checkpoint::CONFIG_FILE;
use crate::Error;

pub mod demo;
pub mod dispatch_compare;
pub mod generate;
pub mod grads;
pub mod plan;
pub mod stress;
pub mod train;

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
