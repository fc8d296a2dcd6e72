//! Read-only memory maps of untrusted input files (safetensors checkpoints),
//! so a checkpoint's bytes are paged in from the page cache instead of being
//! copied into a heap buffer: loading holds the parameters once (the f32
//! buffer), plus the mapped pages the kernel may drop at any time.
//!
//! The file is opened by [`crate::io::read::open_regular`] first, so a FIFO,
//! device, directory or over-long file is refused with the same typed
//! [`ReadError`] as a bounded read (no hang, no unbounded read).

use std::path::Path;

use memmap2::Mmap;

use crate::io::read::{open_regular, ReadError, ReadErrorKind};

/// The bytes of a mapped file (an empty file maps to an empty slice).
#[derive(Debug)]
pub struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Maps the regular file `path` (at most `max` bytes) read-only.
///
/// # Errors
/// [`ReadError`] naming `path`: not openable, not a regular file, too large,
/// or the map failed ([`ReadErrorKind::Io`]) or has another length than
/// `fstat` reported ([`ReadErrorKind::Changed`]).
pub fn map_regular(path: &Path, max: u64) -> Result<Mapped, ReadError> {
    let (file, len) = open_regular(path, max)?;
    if len == 0 {
        return Ok(Mapped { map: None });
    }
    #[allow(unsafe_code)]
    // SAFETY: `file` was checked by `open_regular` to be a regular file, and
    // the map is read-only (`Mmap`, PROT_READ, MAP_PRIVATE semantics for our
    // view). memmap2's contract is that no one truncates or writes the file
    // while mapped; a concurrent writer is outside what we can check (the
    // bytes are still only read as plain `u8`, and every value is validated).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ReadError {
        path: path.to_path_buf(),
        kind: ReadErrorKind::Io(e),
    })?;
    if map.len() as u64 != len {
        return Err(ReadError {
            path: path.to_path_buf(),
            kind: ReadErrorKind::Changed { len },
        });
    }
    Ok(Mapped { map: Some(map) })
}
