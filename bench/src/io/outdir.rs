//! `moe train`'s output directory: an exclusive lock for the whole run, the
//! removal of what killed runs left behind, and training checkpoints as
//! *generations* switched by one atomic pointer.
//!
//! ```text
//! OUT/
//!   .moe-train.lock              flock(2)ed by the running trainer (holds its pid)
//!   checkpoint -> checkpoint.gen-000007    relative symlink: the current checkpoint
//!   checkpoint.gen-000007/       config.json, model.safetensors, optimizer.safetensors
//!   loss.csv  loss.svg  summary.json
//! ```
//!
//! A checkpoint is saved by [`OutDir::save_checkpoint`] as a new generation
//! directory whose three files are written, `fsync`ed and renamed in (see
//! [`crate::io::atomic`]), then the directory and `OUT` are `fsync`ed, and only
//! then is the `checkpoint` symlink replaced by one pointing at the new
//! generation (a symlink staged under a temporary name and renamed over the
//! old one: one atomic `rename(2)`). Older generations are removed after the
//! switch. So at every instant `OUT/checkpoint` names one complete,
//! consistent generation — the previous one until the new one is complete —
//! and `OUT/checkpoint/…` paths keep working for every reader (`moe generate
//! --checkpoint OUT`, `--resume OUT`, transformers).
//!
//! [`OutDir::open`] creates `OUT` if needed, checks that it is writable,
//! takes the lock (a second trainer on the same directory gets
//! [`CheckpointErrorKind::Locked`] at once) and then, holding it, removes
//! what a killed run left: temporary files `.NAME.tmp.PID.N` whose process is
//! dead (in `OUT` and in the current generation), and every generation
//! directory the pointer does not name (incomplete ones of a save cut short,
//! and a complete one whose switch never happened). A `checkpoint` directory
//! of the layout before generations is moved into a generation first.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use moe_core::Trainer;

use crate::cli::CHECKPOINT_DIR;
use crate::harness::sys::process::{pid_alive, try_lock_exclusive, LockState};
use crate::io::checkpoint::error::io_err;
use crate::io::checkpoint::{
    save_training_with, CheckpointError, CheckpointErrorKind, CONFIG_FILE, MODEL_FILE,
    OPTIMIZER_FILE,
};

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// Name of the lock file in the output directory.
pub const LOCK_FILE: &str = ".moe-train.lock";
/// Prefix of a generation directory's name (`checkpoint.gen-000007`).
pub const GENERATION_PREFIX: &str = "checkpoint.gen-";

/// The generation a `checkpoint` directory of the layout before generations becomes.
const LEGACY_GENERATION: u64 = 0;

static PROBE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A locked output directory (the lock is released when this is dropped).
#[derive(Debug)]
pub struct OutDir {
    dir: PathBuf,
    _lock: File,
}

/// The process id of a temporary file `.NAME.tmp.PID.N` of
/// [`crate::io::atomic`], or `None` if `name` does not have that form.
pub fn temp_file_pid(name: &str) -> Option<u64> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, n) = tail.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse::<u64>().ok()
}

/// The number of a generation directory's name.
fn generation_number(name: &str) -> Option<u64> {
    let n = name.strip_prefix(GENERATION_PREFIX)?;
    (n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Removes the temporary files of dead processes in `dir` (and, at open,
/// those of an earlier process that had this process's id). Returns how
/// many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let me = u64::from(std::process::id());
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_file_pid) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            let p = entry.path();
            match fs::remove_file(&p) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
    }
    Ok(removed)
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn is_complete(gen: &Path) -> bool {
    [CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE]
        .iter()
        .all(|f| gen.join(f).is_file())
}

impl OutDir {
    /// Creates `dir` if needed, checks it is writable, locks it for this
    /// process and removes the leftovers of killed runs (see the module docs).
    ///
    /// # Errors
    /// [`CheckpointErrorKind::Io`] naming `dir` (not creatable, not writable,
    /// …), [`CheckpointErrorKind::Locked`] if another trainer holds it.
    pub fn open(dir: &Path) -> Result<OutDir> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if !dir.is_dir() {
            let source = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
            return Err(CheckpointError::new(
                dir,
                CheckpointErrorKind::Io { source },
            ));
        }
        // Writable: create (and remove) a probe file named like a temporary.
        let probe = dir.join(format!(
            ".probe.tmp.{}.{}",
            std::process::id(),
            PROBE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(io_err(dir))?;
        fs::remove_file(&probe).map_err(io_err(&probe))?;

        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match try_lock_exclusive(&lock).map_err(io_err(&lock_path))? {
            LockState::Acquired => {}
            LockState::HeldElsewhere => {
                let mut s = String::new();
                let pid = (&lock)
                    .take(32)
                    .read_to_string(&mut s)
                    .ok()
                    .and_then(|_| s.trim().parse().ok());
                return Err(CheckpointError::new(
                    dir,
                    CheckpointErrorKind::Locked { pid },
                ));
            }
        }
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io_err(&lock_path))?;
        let out = OutDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        out.recover()?;
        Ok(out)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The `checkpoint` pointer.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_DIR)
    }

    /// Generation directories, by number.
    fn generations(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut gens = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(generation_number) {
                gens.push((n, entry.path()));
            }
        }
        gens.sort();
        Ok(gens)
    }

    /// The generation `checkpoint` points to, if it is a symlink to one.
    fn current(&self) -> Option<u64> {
        let target = fs::read_link(self.checkpoint_path()).ok()?;
        let name = target.file_name()?.to_str()?;
        generation_number(name)
    }

    /// Repairs and cleans the directory (called with the lock held).
    fn recover(&self) -> Result<()> {
        remove_stale_temporaries(&self.dir)?;
        let ptr = self.checkpoint_path();
        let legacy = self
            .dir
            .join(format!("{GENERATION_PREFIX}{LEGACY_GENERATION:06}"));
        if fs::symlink_metadata(&ptr).is_ok_and(|m| m.is_dir()) {
            // The layout before generations: it becomes generation 0.
            remove_stale_temporaries(&ptr)?;
            if legacy.exists() {
                fs::remove_dir_all(&legacy).map_err(io_err(&legacy))?;
            }
            fs::rename(&ptr, &legacy).map_err(io_err(&ptr))?;
            sync_dir(&self.dir)?;
            self.point_to(LEGACY_GENERATION)?;
        }
        let mut current = self.current();
        if current.is_none() && is_complete(&legacy) {
            // A crash between the two steps of the move above. Any other
            // generation without a pointer to it was never switched to
            // (`loss.csv` may not have reached it): it is removed below.
            self.point_to(LEGACY_GENERATION)?;
            current = Some(LEGACY_GENERATION);
        }
        for (n, gen) in self.generations()? {
            if Some(n) == current {
                remove_stale_temporaries(&gen)?;
            } else {
                fs::remove_dir_all(&gen).map_err(io_err(&gen))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Replaces the `checkpoint` pointer by one to generation `n` atomically.
    fn point_to(&self, n: u64) -> Result<()> {
        let ptr = self.checkpoint_path();
        let tmp = self.dir.join(format!(
            ".{CHECKPOINT_DIR}.tmp.{}.{}",
            std::process::id(),
            PROBE_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let target = format!("{GENERATION_PREFIX}{n:06}");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
        #[cfg(not(unix))]
        {
            let source = io::Error::new(io::ErrorKind::Unsupported, "symlinks need unix");
            return Err(CheckpointError::new(
                &tmp,
                CheckpointErrorKind::Io { source },
            ));
        }
        if let Err(e) = fs::rename(&tmp, &ptr) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&ptr)(e));
        }
        sync_dir(&self.dir)
    }

    /// Saves a training checkpoint as a new generation and switches the
    /// `checkpoint` pointer to it once it is complete; `before_switch` runs
    /// between the two (`moe train` writes `loss.csv` there, so that the rows
    /// never lag the checkpoint). Older generations are removed afterwards.
    ///
    /// # Errors
    /// Those of [`save_training_with`] and [`CheckpointErrorKind::Io`];
    /// the previous generation stays current on every error.
    pub fn save_checkpoint(
        &self,
        trainer: &Trainer,
        extra: &std::collections::BTreeMap<String, String>,
        run_id: &str,
        before_switch: impl FnOnce() -> std::result::Result<(), crate::Error>,
    ) -> std::result::Result<(), crate::Error> {
        let gens = self.generations()?;
        let n = gens.last().map_or(1, |g| g.0 + 1);
        let gen = self.dir.join(format!("{GENERATION_PREFIX}{n:06}"));
        fs::create_dir(&gen).map_err(io_err(&gen))?;
        let saved = save_training_with(&gen, trainer, extra, Some(run_id))
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = saved {
            let _ = fs::remove_dir_all(&gen);
            return Err(e.into());
        }
        before_switch()?;
        self.point_to(n)?;
        for (m, old) in gens {
            if m != n {
                if let Err(e) = fs::remove_dir_all(&old) {
                    eprintln!("warning: could not remove {}: {e}", old.display());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_parse() {
        assert_eq!(temp_file_pid(".model.safetensors.tmp.123.4"), Some(123));
        assert_eq!(temp_file_pid(".loss.csv.tmp.9.0"), Some(9));
        assert_eq!(temp_file_pid("model.safetensors"), None);
        assert_eq!(temp_file_pid(".x.tmp.12"), None);
        assert_eq!(temp_file_pid(".x.tmp.a.1"), None);
        assert_eq!(generation_number("checkpoint.gen-000012"), Some(12));
        assert_eq!(generation_number("checkpoint.gen-12"), None);
    }

    #[test]
    fn second_open_is_locked_and_names_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let a = OutDir::open(tmp.path()).unwrap();
        let e = OutDir::open(tmp.path()).unwrap_err();
        assert!(
            matches!(e.kind, CheckpointErrorKind::Locked { pid: Some(p) } if p == std::process::id()),
            "{e:?}"
        );
        assert!(
            e.to_string().contains(&tmp.path().display().to_string()),
            "{e}"
        );
        drop(a);
        OutDir::open(tmp.path()).unwrap();
    }
}
