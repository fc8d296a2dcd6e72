//! Atomic file writes, used by every file the tool writes (checkpoints,
//! `loss.csv`, SVG plots, Markdown reports, JSON results).
//!
//! Every file is first written to a hidden temporary file in the same
//! directory (`.NAME.tmp.PID.N`), flushed and `fsync`ed; only when *all* files
//! of a save have been staged are they renamed over their final names, then
//! their directories are `fsync`ed. A failing write removes its temporary
//! files and leaves the previous files untouched; no file is ever half-written
//! under its final name. A destination that exists and is a device, FIFO or
//! socket is refused before anything is written (a rename would replace the
//! special file itself).
//!
//! Errors are [`CheckpointError`]s of kind `Io` (naming the temporary file,
//! the destination or its directory), as they were when this lived in the
//! checkpoint module.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::io::checkpoint::error::io_err;
use crate::io::checkpoint::{CheckpointError, CheckpointErrorKind};

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written to a temporary name, not yet renamed into place. Dropping it
/// removes the temporary file.
#[derive(Debug)]
pub(crate) struct Staged {
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
pub(crate) fn stage<F>(dest: &Path, write: F) -> Result<Staged>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not a file path");
            CheckpointError::new(dest, CheckpointErrorKind::Io { source })
        })?
        .to_string_lossy()
        .into_owned();
    // A rename over a device, FIFO or socket would replace the special file
    // itself (as root: `/dev/full` becomes a regular file) and report
    // success for a write that went nowhere the user asked: refuse it.
    if let Ok(m) = fs::metadata(dest) {
        if !m.is_file() && !m.is_dir() {
            let what = crate::io::read::file_kind(&m.file_type());
            let source = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("is {what}, not a regular file"),
            );
            return Err(CheckpointError::new(
                dest,
                CheckpointErrorKind::Io { source },
            ));
        }
    }
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
pub(crate) fn commit(mut staged: Vec<Staged>) -> Result<()> {
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
/// a [`CheckpointError`] of kind `Io` naming the temporary file, `path` or its directory.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    commit(vec![stage(path, write)?])
}

pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if !dir.is_dir() {
        let source = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
        return Err(CheckpointError::new(
            dir,
            CheckpointErrorKind::Io { source },
        ));
    }
    Ok(())
}

/// Checks, before any work, that `path` can be written by [`write_atomic`]:
/// its directory exists (it is created if needed) and accepts a new file, and
/// `path` is not a directory. A probe file is staged and removed; nothing is
/// left behind and an existing `path` is untouched.
///
/// # Errors
/// a [`CheckpointError`] of kind `Io` naming `path` or its directory.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_dir(&dir)?;
    if path.is_dir() {
        let source = io::Error::new(io::ErrorKind::AlreadyExists, "is a directory");
        return Err(CheckpointError::new(
            path,
            CheckpointErrorKind::Io { source },
        ));
    }
    // Dropping the uncommitted probe removes its temporary file.
    drop(stage(path, |_| Ok(()))?);
    Ok(())
}

/// [`write_atomic`] of `bytes`, failing with the bare OS error as
/// `std::fs::write` does: for the writers (`moe report`, `moe bench --out`)
/// whose error messages never named the path.
///
/// # Errors
/// The OS error of creating, writing, syncing or renaming the file.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes)).map_err(|e| match e.kind {
        CheckpointErrorKind::Io { source } => source,
        _ => io::Error::other(e.to_string()),
    })
}

/// A directory being filled under a temporary name next to its destination
/// (`PARENT/.NAME.tmp.PID.N/`); [`commit_dir`] renames it into place.
/// Dropping it uncommitted removes it with everything in it.
#[derive(Debug)]
pub(crate) struct StagedDir {
    /// The temporary directory: write the files here (with [`stage`] + [`commit`]).
    pub(crate) tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Creates the temporary directory for a multi-file save to `dest`.
pub(crate) fn stage_dir(dest: &Path) -> Result<StagedDir> {
    let name = dest
        .file_name()
        .ok_or_else(|| {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not a directory name");
            CheckpointError::new(dest, CheckpointErrorKind::Io { source })
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_dir(&parent)?;
    if dest.exists() && !dest.is_dir() {
        let source = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
        return Err(CheckpointError::new(
            dest,
            CheckpointErrorKind::Io { source },
        ));
    }
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;
    Ok(StagedDir {
        tmp,
        dest: dest.to_path_buf(),
        committed: false,
    })
}

/// Puts a fully written (every file `fsync`ed) staged directory in place:
/// `fsync`s it, moves an existing `dest` aside (`.NAME.old.PID.N`), renames
/// the new one to `dest` (one `rename(2)`), `fsync`s the parent and removes
/// the old one. At every instant `dest` is either the old complete directory,
/// absent (between the two renames), or the new complete one — never a mix
/// of files of two saves.
pub(crate) fn commit_dir(mut s: StagedDir) -> Result<()> {
    #[cfg(unix)]
    File::open(&s.tmp)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&s.tmp))?;
    let parent = match s.dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut old = None;
    if s.dest.exists() {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = s.dest.file_name().unwrap_or_default().to_string_lossy();
        let aside = parent.join(format!(".{name}.old.{}.{n}", std::process::id()));
        fs::rename(&s.dest, &aside).map_err(io_err(&s.dest))?;
        old = Some(aside);
    }
    fs::rename(&s.tmp, &s.dest).map_err(io_err(&s.dest))?;
    s.committed = true;
    #[cfg(unix)]
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err(&parent))?;
    if let Some(old) = old {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}
