//! [`ReportError`]: what `moe report` fails with, naming the file (or flag).

use std::fmt;
use std::path::PathBuf;

use crate::io::read::ReadError;

/// A failed `moe report`.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReportError {
    /// A result file could not be read (missing, not a regular file, too large, not UTF-8, …).
    Read(ReadError),
    /// A result file is not JSON.
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// A required part of a result file is missing or has the wrong type.
    Field {
        /// The file.
        path: PathBuf,
        /// The JSON path of the field, e.g. `metadata` or `scenarios[3].id`.
        field: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// Two scenarios of one file have the same id.
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// The repeated id.
        id: String,
    },
    /// `--baseline` names no run.
    UnknownBaseline {
        /// The value given.
        given: String,
        /// The run names it could have been.
        known: Vec<String>,
    },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Read(e) => e.fmt(f),
            ReportError::Json { path, source } => {
                write!(f, "{}: not a JSON result file: {source}", path.display())
            }
            ReportError::Field {
                path,
                field,
                expected,
            } => write!(f, "{}: `{field}`: expected {expected}", path.display()),
            ReportError::DuplicateId { path, id } => write!(
                f,
                "{}: scenario id {id:?} appears more than once (each id must be unique in a file)",
                path.display()
            ),
            ReportError::UnknownBaseline { given, known } => write!(
                f,
                "--baseline {given:?}: no such run; known: {}",
                known.join(", ")
            ),
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::Read(e) => Some(e),
            ReportError::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ReadError> for ReportError {
    fn from(e: ReadError) -> Self {
        ReportError::Read(e)
    }
}
