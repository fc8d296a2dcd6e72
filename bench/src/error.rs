//! [`Error`]: the one error type of the `moe` subcommands.
//!
//! `main` prints it as `error: {e}` and exits with status 1. Its `Display` is
//! that of the wrapped error (or the message itself), so the text a user sees
//! is exactly the message of the layer that failed.

use std::fmt;

use crate::cli::grads::GradsError;
use crate::io::checkpoint::CheckpointError;
use crate::io::corpus::CorpusError;

/// Everything a subcommand can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A message that says it all (a bad flag, a bad file, a failed child process).
    Msg(String),
    /// Reading or writing a file or a pipe.
    Io(std::io::Error),
    /// Serialising or parsing JSON.
    Json(serde_json::Error),
    /// Saving or loading a checkpoint, or an atomic write.
    Checkpoint(CheckpointError),
    /// `moe grads`.
    Grads(GradsError),
    /// Splitting the training corpus.
    Corpus(CorpusError),
    /// A moe-core error (invalid parameter, shape, allocation, …).
    Core(moe_core::Error),
    /// Drawing an SVG plot (plotters' error, as text).
    Plot(String),
    /// `moe report`: an unreadable or inconsistent result file.
    Report(crate::report::ReportError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Msg(m) | Error::Plot(m) => f.write_str(m),
            Error::Io(e) => e.fmt(f),
            Error::Json(e) => e.fmt(f),
            Error::Checkpoint(e) => e.fmt(f),
            Error::Grads(e) => e.fmt(f),
            Error::Corpus(e) => e.fmt(f),
            Error::Core(e) => e.fmt(f),
            Error::Report(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Msg(_) | Error::Plot(_) => None,
            Error::Io(e) => Some(e),
            Error::Json(e) => Some(e),
            Error::Checkpoint(e) => Some(e),
            Error::Grads(e) => Some(e),
            Error::Corpus(e) => Some(e),
            Error::Core(e) => Some(e),
            Error::Report(e) => Some(e),
        }
    }
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::Msg(m)
    }
}

impl From<&str> for Error {
    fn from(m: &str) -> Self {
        Error::Msg(m.to_owned())
    }
}

impl From<std::string::FromUtf8Error> for Error {
    fn from(e: std::string::FromUtf8Error) -> Self {
        Error::Msg(e.to_string())
    }
}

impl From<std::num::ParseFloatError> for Error {
    fn from(e: std::num::ParseFloatError) -> Self {
        Error::Msg(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

impl From<CheckpointError> for Error {
    fn from(e: CheckpointError) -> Self {
        Error::Checkpoint(e)
    }
}

impl From<GradsError> for Error {
    fn from(e: GradsError) -> Self {
        Error::Grads(e)
    }
}

impl From<CorpusError> for Error {
    fn from(e: CorpusError) -> Self {
        Error::Corpus(e)
    }
}

impl From<moe_core::Error> for Error {
    fn from(e: moe_core::Error) -> Self {
        Error::Core(e)
    }
}

impl<E: std::error::Error + Send + Sync> From<plotters::drawing::DrawingAreaErrorKind<E>>
    for Error
{
    fn from(e: plotters::drawing::DrawingAreaErrorKind<E>) -> Self {
        Error::Plot(e.to_string())
    }
}

impl From<crate::report::ReportError> for Error {
    fn from(e: crate::report::ReportError) -> Self {
        Error::Report(e)
    }
}
