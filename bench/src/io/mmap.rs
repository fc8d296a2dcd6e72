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

    /// Tells the kernel the pages wholly inside `sub` (a sub-slice of
    /// [`Mapped::bytes`]; anything else is ignored) are not needed any more,
    /// so that they leave this process's resident set once copied: loading
    /// then peaks at the parameters plus about one tensor of mapped pages,
    /// not the parameters plus the whole file. A later read of those bytes
    /// re-reads the file (the map is read-only, so no data is lost).
    pub fn release(&self, sub: &[u8]) {
        let all = self.bytes();
        let (base, end) = (all.as_ptr() as usize, all.as_ptr() as usize + all.len());
        let (s, e) = (sub.as_ptr() as usize, sub.as_ptr() as usize + sub.len());
        if sub.is_empty() || s < base || e > end {
            return;
        }
        const PAGE: usize = 4096;
        // The mapping starts page-aligned; keep to whole pages inside `sub`.
        let first = s.next_multiple_of(PAGE);
        let last = e - (e - base) % PAGE;
        if last <= first {
            return;
        }
        #[allow(unsafe_code)]
        // SAFETY: [first, last) is page-aligned and lies inside this live,
        // read-only, file-backed mapping (checked above against `bytes()`).
        // MADV_DONTNEED on such a mapping only drops the page-cache view;
        // the next access reads the same file bytes again, so every `&[u8]`
        // borrowed from the map stays valid. The result is ignored (advice).
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            );
        }
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
