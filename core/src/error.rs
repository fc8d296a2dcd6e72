//! Typed errors of every public entry point (CONTRACT §6).
//!
//! Every variant names the argument that was wrong and, where it applies, the
//! expected and the actual value, so that `Display` alone tells the caller
//! what to fix.

use core::fmt;

/// Result alias of the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in `moe-core`. Nothing in the crate panics on
/// user input; it returns one of these instead.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration field is invalid (zero, inconsistent with another field, …).
    InvalidConfig {
        /// The field, e.g. `"num_experts_per_tok"`.
        field: &'static str,
        /// What the field must satisfy.
        expected: &'static str,
        /// The value it had (as `f64`, exact for every integer field used here).
        actual: f64,
    },
    /// `batch == 0` or `seq == 0`, or an empty prompt.
    EmptyInput {
        /// Which argument was empty.
        arg: &'static str,
    },
    /// The sequence is longer than the model's `max_position_embeddings`.
    SeqTooLong {
        /// Requested length (prompt + generated tokens, or `seq`).
        seq: usize,
        /// The model's maximum.
        max: usize,
    },
    /// A buffer or slice has the wrong length.
    ShapeMismatch {
        /// The argument, e.g. `"tokens"`.
        arg: &'static str,
        /// Expected number of elements.
        expected: usize,
        /// Actual number of elements.
        actual: usize,
    },
    /// A token id is `>= vocab_size`.
    TokenOutOfRange {
        /// The argument, e.g. `"tokens"` or `"targets"`.
        arg: &'static str,
        /// Flat position of the offending id.
        index: usize,
        /// The id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The request does not fit the workspace that was planned for it.
    WorkspaceTooSmall {
        /// Which dimension, e.g. `"batch"`, `"seq"`.
        dim: &'static str,
        /// Requested size.
        requested: usize,
        /// Planned maximum.
        planned: usize,
    },
    /// The workspace was planned for another model or another mode.
    WorkspaceMismatch {
        /// What differs.
        what: &'static str,
    },
    /// A sampling or optimiser parameter is out of its domain.
    InvalidParameter {
        /// The parameter, e.g. `"temperature"`.
        param: &'static str,
        /// Its domain, e.g. `"finite and > 0"`.
        expected: &'static str,
        /// The value it had.
        actual: f64,
    },
    /// A loss, logit or parameter became NaN or infinite.
    NonFinite {
        /// Which quantity, e.g. `"logits"`, `"loss"`.
        what: &'static str,
        /// Flat index of the first non-finite value.
        index: usize,
    },
    /// A size computation overflowed `usize`/`u64` (e.g. the full profile on a 32-bit target).
    Overflow {
        /// Which quantity.
        what: &'static str,
    },
    /// The arena or a flat buffer could not be allocated.
    AllocationFailed {
        /// Bytes requested.
        bytes: usize,
    },
    /// The call needs the model's parameters in another storage precision
    /// (e.g. `params()` or training on a bf16 model).
    PrecisionMismatch {
        /// The call, e.g. `"params()"`, `"Trainer::new"`.
        what: &'static str,
        /// The precision it needs (`"f32"`, `"bf16"`).
        expected: &'static str,
        /// The model's precision.
        actual: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig {
                field,
                expected,
                actual,
            } => write!(
                f,
                "invalid config: `{field}` must be {expected}, got {actual}"
            ),
            Error::EmptyInput { arg } => write!(f, "empty input: `{arg}` must be > 0"),
            Error::SeqTooLong { seq, max } => write!(
                f,
                "sequence too long: seq = {seq} exceeds max_position_embeddings = {max}"
            ),
            Error::ShapeMismatch {
                arg,
                expected,
                actual,
            } => write!(
                f,
                "shape mismatch: `{arg}` must have {expected} elements, got {actual}"
            ),
            Error::TokenOutOfRange {
                arg,
                index,
                token,
                vocab,
            } => write!(
                f,
                "token out of range: `{arg}[{index}]` = {token} must be < vocab_size = {vocab}"
            ),
            Error::WorkspaceTooSmall {
                dim,
                requested,
                planned,
            } => write!(
                f,
                "workspace too small: `{dim}` = {requested} exceeds the planned maximum {planned}"
            ),
            Error::WorkspaceMismatch { what } => {
                write!(f, "workspace mismatch: {what}")
            }
            Error::InvalidParameter {
                param,
                expected,
                actual,
            } => write!(
                f,
                "invalid parameter: `{param}` must be {expected}, got {actual}"
            ),
            Error::NonFinite { what, index } => write!(
                f,
                "non-finite value: `{what}` has NaN or Inf at flat index {index}"
            ),
            Error::Overflow { what } => write!(f, "size overflow while computing {what}"),
            Error::AllocationFailed { bytes } => {
                write!(f, "allocation of {bytes} bytes failed")
            }
            Error::PrecisionMismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "precision mismatch: {what} needs a {expected} model, this one is {actual}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
