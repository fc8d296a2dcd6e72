//! A counting global allocator: every heap allocation of the process (all
//! threads) adds its size to one atomic byte counter and one to an atomic
//! call counter, then is served by the system allocator.
//!
//! Semantics of the counters (what `memory.alloc_bytes` / `alloc_count` mean):
//! * `alloc` and `alloc_zeroed` count `layout.size()` bytes and one call;
//! * `realloc` counts the *new* size and one call (a grow or shrink is a fresh
//!   request to the allocator, as in divan's counter);
//! * `dealloc` is not subtracted: the counters measure allocation *traffic*,
//!   not live heap.
//!
//! Besides the process-wide counters it keeps the same two counters per
//! thread ([`AllocSnapshot::this_thread`]), so that a test running beside
//! other test threads can assert that *its* work allocated exactly nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static BYTES: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised: reading them never allocates (no lazy init).
    static THREAD_BYTES: Cell<u64> = const { Cell::new(0) };
    static THREAD_COUNT: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator with counters; installed as `#[global_allocator]` in `main.rs`.
#[derive(Debug)]
pub struct CountingAlloc;

#[inline]
fn record(size: usize) {
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    COUNT.fetch_add(1, Ordering::Relaxed);
    // `try_with`: the thread-locals may already be gone during thread teardown.
    let _ = THREAD_BYTES.try_with(|b| b.set(b.get() + size as u64));
    let _ = THREAD_COUNT.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; the counters are lock-free atomics and
// and const-initialised thread-locals never allocate, so there is no re-entrancy.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours (non-zero-size layout), forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was returned by `System` (every allocation goes through us
        // to `System`) with this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: `ptr`/`layout` come from `System` as above; `new_size` is
        // non-zero and valid per the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Cumulative counters since process start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllocSnapshot {
    /// Bytes requested so far.
    pub bytes: u64,
    /// Allocation calls so far.
    pub count: u64,
}

impl AllocSnapshot {
    /// Reads both counters.
    #[inline]
    pub fn now() -> Self {
        AllocSnapshot {
            bytes: BYTES.load(Ordering::Relaxed),
            count: COUNT.load(Ordering::Relaxed),
        }
    }

    /// Reads the calling thread's counters (allocations made on this thread only).
    #[inline]
    pub fn this_thread() -> Self {
        AllocSnapshot {
            bytes: THREAD_BYTES.with(Cell::get),
            count: THREAD_COUNT.with(Cell::get),
        }
    }

    /// Counts between `earlier` and `self`.
    #[inline]
    pub fn since(self, earlier: AllocSnapshot) -> AllocSnapshot {
        AllocSnapshot {
            bytes: self.bytes.wrapping_sub(earlier.bytes),
            count: self.count.wrapping_sub(earlier.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AllocSnapshot;

    #[test]
    fn counts_a_vec_allocation() {
        // Other test threads may allocate concurrently, so only lower bounds hold.
        let before = AllocSnapshot::now();
        let v: Vec<u8> = Vec::with_capacity(4096);
        std::hint::black_box(&v);
        let d = AllocSnapshot::now().since(before);
        assert!(d.bytes >= 4096, "{d:?}");
        assert!(d.count >= 1, "{d:?}");
    }
}
