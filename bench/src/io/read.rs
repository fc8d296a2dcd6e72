//! Bounded reads of untrusted input files.
//!
//! Every file the tool reads (config.json, safetensors, tokens.json, result
//! JSON, the training text) comes from the user and may be anything: a FIFO
//! (a plain `open` blocks forever), `/dev/zero` or `/dev/urandom` (a plain
//! `read_to_end` grows until the host runs out of memory), a directory, a
//! dangling symlink, or a regular file far larger than the kind can be.
//! [`read_bounded`] refuses all of these with a typed [`ReadError`] that names
//! the path:
//!
//! * the file is opened with `O_NONBLOCK` (so opening a FIFO returns at once;
//!   the flag has no effect on regular files) and `fstat`ed: anything but a
//!   regular file (after following symlinks) is [`ReadErrorKind::NotRegular`];
//! * its length must be at most the caller's `max` for that kind of file
//!   ([`ReadErrorKind::TooLarge`]); the buffer is reserved with `try_reserve`
//!   ([`ReadErrorKind::AllocationFailed`]), and at most `len + 1` bytes are
//!   read, so a file that grows while it is read cannot grow the buffer past
//!   its checked length ([`ReadErrorKind::Changed`]).
//!
//! The per-kind maxima are listed in docs/errors.md ("Input files").

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest JSON input (config.json, tokens.json, safetensors index, result
/// files): 256 MiB. The largest real ones are a few MB (a result file is
/// ~40 KB, a 32k-token `tokens.json` ~0.5 MB).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Largest training text for `moe train --data`: 4 GiB (it is tokenised into
/// memory, one `u32` per byte with the byte tokenizer).
pub const MAX_TEXT_BYTES: u64 = 4 << 30;

/// Why a bounded read failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReadErrorKind {
    /// Opening, `fstat` or reading failed (missing file, dangling symlink, permissions, …).
    Io(io::Error),
    /// Not a regular file: what it is instead ("a FIFO", "a directory", …).
    NotRegular(&'static str),
    /// Longer than the maximum for this kind of file.
    TooLarge {
        /// The file's length in bytes.
        len: u64,
        /// The maximum for this kind of file.
        max: u64,
    },
    /// The buffer for the file could not be reserved.
    AllocationFailed {
        /// Bytes asked for.
        bytes: u64,
    },
    /// The file's length changed while it was read.
    Changed {
        /// Its length when opened.
        len: u64,
    },
    /// A text file is not UTF-8.
    NotUtf8,
}

/// A failed bounded read of `path`.
#[derive(Debug)]
pub struct ReadError {
    /// The file that was read.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: ReadErrorKind,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_kind(&self.path, &self.kind, f)
    }
}

/// The message of a failed read of `path` (shared with the error types that
/// wrap a [`ReadErrorKind`]).
pub(crate) fn fmt_kind(
    path: &Path,
    kind: &ReadErrorKind,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    let p = path.display();
    match kind {
        ReadErrorKind::Io(e) => write!(f, "{p}: {e}"),
        ReadErrorKind::NotRegular(what) => {
            write!(f, "{p}: is {what}, not a regular file")
        }
        ReadErrorKind::TooLarge { len, max } => write!(
            f,
            "{p}: {len} bytes is larger than the {max}-byte maximum for this kind of file"
        ),
        ReadErrorKind::AllocationFailed { bytes } => {
            write!(f, "{p}: could not allocate {bytes} bytes to read it")
        }
        ReadErrorKind::Changed { len } => {
            write!(
                f,
                "{p}: the file changed while it was read (it was {len} bytes)"
            )
        }
        ReadErrorKind::NotUtf8 => write!(f, "{p}: not valid UTF-8"),
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ReadErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl ReadError {
    fn new(path: &Path, kind: ReadErrorKind) -> Self {
        ReadError {
            path: path.to_path_buf(),
            kind,
        }
    }

    /// The underlying OS error, for callers whose messages show it as before.
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.kind {
            ReadErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What a non-regular file is, for the error message.
pub(crate) fn file_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading without blocking on FIFOs, and checks that it is
/// a regular file of at most `max` bytes. Returns the file and its length.
///
/// # Errors
/// [`ReadError`] naming `path`: not openable, not a regular file, too large.
pub fn open_regular(path: &Path, max: u64) -> Result<(File, u64), ReadError> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading blocks until a writer appears; with
        // O_NONBLOCK it returns at once and the type check below refuses it.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts
        .open(path)
        .map_err(|e| ReadError::new(path, ReadErrorKind::Io(e)))?;
    let meta = file
        .metadata()
        .map_err(|e| ReadError::new(path, ReadErrorKind::Io(e)))?;
    if !meta.is_file() {
        return Err(ReadError::new(
            path,
            ReadErrorKind::NotRegular(file_kind(&meta.file_type())),
        ));
    }
    let len = meta.len();
    if len > max {
        return Err(ReadError::new(path, ReadErrorKind::TooLarge { len, max }));
    }
    Ok((file, len))
}

/// Reads the regular file `path` whole, refusing anything that is not a
/// regular file or is longer than `max` bytes (see the module docs).
///
/// # Errors
/// [`ReadError`] naming `path`.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let (file, len) = open_regular(path, max)?;
    let mut buf = Vec::new();
    let cap = usize::try_from(len)
        .map_err(|_| ReadError::new(path, ReadErrorKind::AllocationFailed { bytes: len }))?;
    buf.try_reserve_exact(cap)
        .map_err(|_| ReadError::new(path, ReadErrorKind::AllocationFailed { bytes: len }))?;
    // One byte more than the checked length: a file that grew is detected
    // without letting the buffer grow with it.
    file.take(len + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::new(path, ReadErrorKind::Io(e)))?;
    if buf.len() as u64 != len {
        return Err(ReadError::new(path, ReadErrorKind::Changed { len }));
    }
    Ok(buf)
}

/// [`read_bounded`] of a UTF-8 text file.
///
/// # Errors
/// [`ReadError`] naming `path` (also [`ReadErrorKind::NotUtf8`]).
pub fn read_to_string_bounded(path: &Path, max: u64) -> Result<String, ReadError> {
    let bytes = read_bounded(path, max)?;
    String::from_utf8(bytes).map_err(|_| ReadError::new(path, ReadErrorKind::NotUtf8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(path: &str) -> ReadErrorKind {
        read_bounded(Path::new(path), MAX_JSON_BYTES)
            .unwrap_err()
            .kind
    }

    #[test]
    fn special_files_are_refused_at_once() {
        assert!(matches!(
            kind("/dev/zero"),
            ReadErrorKind::NotRegular("a character device")
        ));
        assert!(matches!(kind("/dev/urandom"), ReadErrorKind::NotRegular(_)));
        assert!(matches!(
            kind("/"),
            ReadErrorKind::NotRegular("a directory")
        ));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
        let e = read_bounded(&fifo, 10).unwrap_err();
        assert!(matches!(e.kind, ReadErrorKind::NotRegular("a FIFO")), "{e}");
        assert!(e.to_string().contains("fifo"), "{e}");
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("missing"), &link).unwrap();
        assert!(matches!(
            read_bounded(&link, 10).unwrap_err().kind,
            ReadErrorKind::Io(_)
        ));
    }

    #[test]
    fn length_is_bounded_and_contents_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_bounded(&p, 10).unwrap(), b"0123456789");
        let e = read_bounded(&p, 9).unwrap_err();
        assert!(
            matches!(e.kind, ReadErrorKind::TooLarge { len: 10, max: 9 }),
            "{e}"
        );
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_to_string_bounded(&p, 10).unwrap_err().kind,
            ReadErrorKind::NotUtf8
        ));
    }
}
