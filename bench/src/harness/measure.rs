//! The timing loop. A scenario hands [`run`] a closure that performs one
//! iteration; inside it, the closure brackets exactly the work to be timed
//! with [`Probe::start`] / [`Probe::stop`], so that per-iteration setup
//! (restoring an input, spawning nothing, scanning the output, dropping a
//! model) stays outside the timed region.
//!
//! For each bracket the probe records the wall time (`Instant`), the CPU time
//! of the whole process (`getrusage(RUSAGE_SELF)`, user + sys, all threads)
//! and the heap traffic of the counting allocator (all threads). The order is
//! rusage → allocator → clock … clock → allocator → rusage, so the wall time
//! excludes the two syscalls and the allocator reads.

use std::time::Instant;

use crate::harness::sys::alloc_counter::AllocSnapshot;
use crate::harness::sys::rusage::{self, Who};
use crate::Error;

/// One timed iteration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Wall time, ns.
    pub wall_ns: u64,
    /// Process CPU time (user + sys), ns.
    pub cpu_ns: u64,
    /// Heap allocations inside the bracket.
    pub alloc: AllocSnapshot,
}

/// An open bracket; pass it back to [`Probe::stop`].
#[derive(Debug)]
#[must_use = "a started measurement must be stopped"]
pub struct Started {
    cpu_ns: u64,
    alloc: AllocSnapshot,
    t0: Instant,
}

/// Records the samples of one scenario.
#[derive(Debug)]
pub struct Probe {
    samples: Vec<Sample>,
    error: Option<std::io::Error>,
}

fn cpu_now(error: &mut Option<std::io::Error>) -> u64 {
    match rusage::getrusage(Who::SelfProcess) {
        Ok(u) => u.cpu_ns(),
        Err(e) => {
            error.get_or_insert(e);
            0
        }
    }
}

impl Probe {
    fn with_capacity(n: usize) -> Self {
        Probe {
            samples: Vec::with_capacity(n),
            error: None,
        }
    }

    /// Opens the timed region.
    #[inline]
    pub fn start(&mut self) -> Started {
        let cpu_ns = cpu_now(&mut self.error);
        let alloc = AllocSnapshot::now();
        Started {
            cpu_ns,
            alloc,
            t0: Instant::now(),
        }
    }

    /// Closes the timed region and records the sample.
    #[inline]
    pub fn stop(&mut self, s: Started) {
        let wall = s.t0.elapsed();
        let alloc = AllocSnapshot::now().since(s.alloc);
        let cpu = cpu_now(&mut self.error).saturating_sub(s.cpu_ns);
        // `samples` has capacity for every iteration: this push never allocates.
        self.samples.push(Sample {
            wall_ns: u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
            cpu_ns: cpu,
            alloc,
        });
    }

    /// The sample just recorded, to replace a field measured elsewhere
    /// (e.g. a child process's own CPU time).
    pub fn last_mut(&mut self) -> Option<&mut Sample> {
        self.samples.last_mut()
    }
}

/// Warmup and trial samples of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// The `warmup` first iterations.
    pub warmup: Vec<Sample>,
    /// The `trials` timed iterations.
    pub trials: Vec<Sample>,
}

/// Calls `iteration` `warmup + trials` times; every call must record exactly
/// one sample through the probe.
///
/// # Errors
/// The first error of `iteration`, a call that recorded no or several
/// samples, or a failed `getrusage`.
pub fn run<F>(warmup: usize, trials: usize, mut iteration: F) -> Result<Measurement, Error>
where
    F: FnMut(&mut Probe) -> Result<(), Error>,
{
    let total = warmup + trials;
    let mut probe = Probe::with_capacity(total);
    for i in 0..total {
        iteration(&mut probe)?;
        if probe.samples.len() != i + 1 {
            return Err(format!(
                "iteration {i} recorded {} samples, expected {}",
                probe.samples.len(),
                i + 1
            )
            .into());
        }
    }
    if let Some(e) = probe.error {
        return Err(format!("getrusage failed: {e}").into());
    }
    let mut samples = probe.samples;
    let trials = samples.split_off(warmup);
    Ok(Measurement {
        warmup: samples,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_warmup_from_trials_and_counts_allocations() {
        let m = run(2, 3, |p| {
            let s = p.start();
            let v: Vec<u64> = Vec::with_capacity(1000);
            std::hint::black_box(&v);
            p.stop(s);
            Ok(())
        })
        .unwrap();
        assert_eq!(m.warmup.len(), 2);
        assert_eq!(m.trials.len(), 3);
        assert!(m
            .trials
            .iter()
            .all(|s| s.alloc.bytes >= 8000 && s.alloc.count >= 1));
    }

    #[test]
    fn an_iteration_must_record_one_sample() {
        assert!(run(0, 1, |_| Ok(())).is_err());
    }
}
