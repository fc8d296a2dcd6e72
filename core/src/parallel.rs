//! [`Pool`]: a persistent worker pool for the parallel regions of one step,
//! created once (like a [`crate::Workspace`]) and allocation-free per region.
//!
//! A region is `run(tasks, f)`: the calling thread and the `T − 1` workers
//! claim task indices `0..tasks` from one atomic counter and call `f(i)` for
//! each; `run` returns when every task has finished. Which thread runs which
//! task is not fixed, so callers only split work into tasks whose results do
//! not depend on where they run (a micro-batch, a parameter range, a block of
//! output columns): the results are then bit-identical for every `T`, and
//! `T = 1` is the same code with every task run by the caller.
//!
//! Synchronisation (feature `std`): one `Mutex` + two `Condvar`s and three
//! atomics, all created with the pool. Idle workers spin briefly on the region
//! counter (only when the pool has no more threads than the machine has
//! cores), then yield, then park on the condvar; the caller notifies only if
//! some worker is parked. Oversubscribed pools (`T` > cores) never spin, so
//! they cannot starve the thread doing the work. Without `std` (or with
//! `T = 1`) there are no threads and `run` is a plain loop.
//!
//! The one `unsafe` of this module (with `std`) gives the workers the
//! region's closure: its lifetime is erased while it is published, and `run`
//! does not return (not even by unwinding) before the last worker has
//! dropped its copy of the reference. [`Pool::for_each_mut`] hands out
//! `&mut items[i]` to the one thread that claimed `i`.

use crate::error::{Error, Result};

#[cfg(feature = "std")]
use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    vec::Vec,
};

/// The machine's available parallelism (1 without `std` or when unknown):
/// the default `--threads`.
pub fn available_threads() -> usize {
    #[cfg(feature = "std")]
    {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// A persistent pool of `threads() − 1` workers plus the calling thread.
/// Cloning is cheap (a reference count) and shares the same workers.
#[derive(Debug, Clone)]
pub struct Pool {
    threads: usize,
    #[cfg(feature = "std")]
    inner: Option<Arc<Inner>>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::single()
    }
}

/// The most threads a [`Pool`] takes: far above any core count this code
/// targets, and low enough that a mistyped `--threads 1000000` is a typed
/// error instead of an attempt to spawn a million threads.
pub const MAX_THREADS: usize = 256;

impl Pool {
    /// A pool without worker threads: every region runs on the caller.
    pub const fn single() -> Self {
        Pool {
            threads: 1,
            #[cfg(feature = "std")]
            inner: None,
        }
    }

    /// A pool of `threads` threads in all (the caller counts as one, so
    /// `threads − 1` workers are spawned now and live until the last clone
    /// is dropped). Without `std` any `threads ≥ 1` gives [`Pool::single`].
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] (`"threads"`) for `threads == 0` or
    /// `threads > MAX_THREADS`, or if the OS refuses to spawn a thread.
    pub fn new(threads: usize) -> Result<Self> {
        if threads == 0 || threads > MAX_THREADS {
            return Err(Error::InvalidParameter {
                param: "threads",
                expected: "in 1..=256 (MAX_THREADS)",
                actual: threads as f64,
            });
        }
        #[cfg(feature = "std")]
        {
            if threads == 1 {
                return Ok(Pool::single());
            }
            Inner::spawn(threads).map(|inner| Pool {
                threads,
                inner: Some(inner),
            })
        }
        #[cfg(not(feature = "std"))]
        {
            Ok(Pool::single())
        }
    }

    /// Threads that run a region (workers + the caller).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i in 0..tasks`, spread over the pool, and
    /// returns when all have finished. `f` must not depend on which thread
    /// runs it; a region started from inside a task runs inline.
    ///
    /// # Panics
    /// If a task panicked (after every task has finished).
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        #[cfg(feature = "std")]
        if let Some(inner) = &self.inner {
            if tasks > 1 {
                return inner.run(tasks, f);
            }
        }
        (0..tasks).for_each(f);
    }

    /// `f(i, &mut items[i])` for every item, spread over the pool (each item
    /// is handed to exactly one thread).
    ///
    /// # Panics
    /// As [`Pool::run`].
    pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
        #[cfg(feature = "std")]
        if self.inner.is_some() && items.len() > 1 {
            let base = ItemPtr(items.as_mut_ptr());
            let len = items.len();
            let base = &base;
            return self.run(len, &move |i| {
                debug_assert!(i < len);
                // SAFETY: `run` calls this closure exactly once for each
                // `i < len` (indices come from one atomic counter), so each
                // `&mut` points at a distinct element of `items`, which stays
                // mutably borrowed by this call until `run` has returned.
                let item = unsafe { &mut *base.0.add(i) };
                f(i, item)
            });
        }
        items.iter_mut().enumerate().for_each(|(i, x)| f(i, x));
    }

    /// Runs `f` with this pool as the calling thread's current pool, used by
    /// the GEMVs of decoding ([`current_run`]); the previous one is restored
    /// afterwards. Without `std` this just calls `f`.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        #[cfg(feature = "std")]
        {
            let prev = CURRENT.with(|c| c.replace(Some(self.clone())));
            let _restore = Restore(prev);
            f()
        }
        #[cfg(not(feature = "std"))]
        {
            f()
        }
    }
}

/// A raw element pointer shared by [`Pool::for_each_mut`]'s tasks.
#[cfg(feature = "std")]
struct ItemPtr<T>(*mut T);

// SAFETY: the pointer is only dereferenced as described in `for_each_mut`
// (one thread per element, `T: Send`), so sharing it moves nothing but `T`s.
#[cfg(feature = "std")]
unsafe impl<T: Send> Sync for ItemPtr<T> {}

#[cfg(feature = "std")]
std::thread_local! {
    /// The pool installed on this thread by [`Pool::install`].
    static CURRENT: core::cell::RefCell<Option<Pool>> = const { core::cell::RefCell::new(None) };
}

/// Puts the previous current pool back (also when `f` unwinds).
#[cfg(feature = "std")]
struct Restore(Option<Pool>);

#[cfg(feature = "std")]
impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// Whether a pool is installed on the calling thread (of any size): the
/// GEMVs then take their fixed column split even with one thread.
pub(crate) fn current_installed() -> bool {
    #[cfg(feature = "std")]
    {
        CURRENT.with(|c| c.borrow().is_some())
    }
    #[cfg(not(feature = "std"))]
    {
        false
    }
}

/// Runs `f` over `items` on the current pool if one is installed (see
/// [`Pool::install`]), else on the calling thread: the same tasks either way.
pub(crate) fn current_run<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    #[cfg(feature = "std")]
    if let Some(pool) = CURRENT.with(|c| c.borrow().clone()) {
        return pool.for_each_mut(items, f);
    }
    items.iter_mut().enumerate().for_each(|(i, x)| f(i, x));
}

/// Spin iterations (`spin_loop` hints) before an idle thread yields.
#[cfg(feature = "std")]
const SPIN: u32 = 1 << 14;
/// `yield_now` calls before an idle thread parks on the condvar.
#[cfg(feature = "std")]
const YIELDS: u32 = 16;

/// The job of the current region, its lifetime erased (see the module docs).
#[cfg(feature = "std")]
type Job = &'static (dyn Fn(usize) + Sync);

/// What the lock protects.
#[cfg(feature = "std")]
#[derive(Default)]
struct State {
    /// The current region's job (`None` between regions).
    job: Option<Job>,
    /// Workers currently holding `job`.
    active: usize,
    /// Workers parked on `work`.
    parked: usize,
    /// Whether the caller is parked on `idle`.
    caller_parked: bool,
    /// Set when the pool is dropped.
    shutdown: bool,
}

/// Shared by the caller and the workers.
#[cfg(feature = "std")]
struct Inner {
    state: Mutex<State>,
    /// Workers wait here for a region.
    work: Condvar,
    /// The caller waits here for the end of a region.
    idle: Condvar,
    /// Region counter (also read without the lock while spinning).
    epoch: AtomicUsize,
    /// Next task index to claim.
    next: AtomicUsize,
    /// Tasks of the current region.
    tasks: AtomicUsize,
    /// Tasks finished in the current region.
    done: AtomicUsize,
    /// Whether a task panicked in the current region.
    panicked: AtomicBool,
    /// Whether idle threads may spin (`threads ≤ available cores`).
    spin: bool,
    /// Whether a region is running (a nested `run` runs inline).
    busy: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

#[cfg(feature = "std")]
impl core::fmt::Debug for Inner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Inner").field("spin", &self.spin).finish()
    }
}

#[cfg(feature = "std")]
impl Inner {
    fn spawn(threads: usize) -> Result<Arc<Inner>> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            epoch: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            spin: threads <= available_threads(),
            busy: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
        });
        let mut handles = Vec::new();
        for w in 1..threads {
            let shared = Arc::clone(&inner);
            let h = std::thread::Builder::new()
                .name(std::format!("moe-pool-{w}"))
                .spawn(move || worker(&shared));
            match h {
                Ok(h) => handles.push(h),
                Err(_) => {
                    inner.shut_down(handles);
                    return Err(Error::InvalidParameter {
                        param: "threads",
                        expected: "a number of threads the OS can spawn",
                        actual: threads as f64,
                    });
                }
            }
        }
        *lock(&inner.handles) = handles;
        Ok(inner)
    }

    /// Claims and runs tasks of `job` until none is left; returns whether one panicked.
    fn drain(&self, job: &(dyn Fn(usize) + Sync)) {
        let tasks = self.tasks.load(Ordering::Acquire);
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= tasks {
                return;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i)));
            if r.is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.busy.swap(true, Ordering::AcqRel) {
            // Nested region (a task started one): run it here.
            (0..tasks).for_each(f);
            return;
        }
        // SAFETY: only the lifetime is changed. The reference is published in
        // `state.job` for this region only; before returning (the waiting
        // below cannot unwind: tasks run under `catch_unwind`) we take it out
        // again and wait until no worker holds a copy (`active == 0`), so no
        // use of `f` outlives this call.
        let job: Job = unsafe {
            core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        self.panicked.store(false, Ordering::Relaxed);
        self.done.store(0, Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
        self.tasks.store(tasks, Ordering::Release);
        let parked = {
            let mut st = lock(&self.state);
            st.job = Some(job);
            self.epoch.fetch_add(1, Ordering::AcqRel);
            st.parked
        };
        if parked > 0 {
            self.work.notify_all();
        }
        self.drain(f);
        // Wait for the tasks other threads claimed: spin, yield, then park.
        let finished = || self.done.load(Ordering::Acquire) >= tasks;
        let mut spins = 0u32;
        while !finished() && self.spin && spins < SPIN {
            core::hint::spin_loop();
            spins += 1;
        }
        let mut yields = 0u32;
        while !finished() && yields < YIELDS {
            std::thread::yield_now();
            yields += 1;
        }
        let mut st = lock(&self.state);
        st.job = None;
        while !(finished() && st.active == 0) {
            st.caller_parked = true;
            st = self.idle.wait(st).unwrap_or_else(|e| e.into_inner());
            st.caller_parked = false;
        }
        drop(st);
        self.busy.store(false, Ordering::Release);
        if self.panicked.load(Ordering::Acquire) {
            panic!("a task of a moe-core Pool region panicked");
        }
    }

    fn shut_down(&self, handles: Vec<JoinHandle<()>>) {
        lock(&self.state).shutdown = true;
        self.work.notify_all();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Locks, ignoring poisoning (tasks run under `catch_unwind`; the state stays consistent).
#[cfg(feature = "std")]
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker: wait for the next region, run its tasks, repeat.
#[cfg(feature = "std")]
fn worker(inner: &Inner) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        while inner.spin && spins < SPIN && inner.epoch.load(Ordering::Acquire) == seen {
            core::hint::spin_loop();
            spins += 1;
        }
        let mut yields = 0u32;
        while yields < YIELDS && inner.epoch.load(Ordering::Acquire) == seen {
            std::thread::yield_now();
            yields += 1;
        }
        let mut st = lock(&inner.state);
        while inner.epoch.load(Ordering::Acquire) == seen && !st.shutdown {
            st.parked += 1;
            st = inner.work.wait(st).unwrap_or_else(|e| e.into_inner());
            st.parked -= 1;
        }
        if st.shutdown {
            return;
        }
        seen = inner.epoch.load(Ordering::Acquire);
        let Some(job) = st.job else {
            continue; // the region ended before this worker woke
        };
        st.active += 1;
        drop(st);
        inner.drain(job);
        let mut st = lock(&inner.state);
        st.active -= 1;
        if st.active == 0 && st.caller_parked {
            inner.idle.notify_one();
        }
    }
}

/// Stops and joins the workers when the last user clone goes.
#[cfg(feature = "std")]
impl Drop for Pool {
    fn drop(&mut self) {
        // The workers hold one `Arc` each; when only they and this handle
        // remain, this is the last user clone: stop them.
        if let Some(inner) = self.inner.take() {
            let workers = self.threads - 1;
            if Arc::strong_count(&inner) == workers + 1 {
                let handles = core::mem::take(&mut *lock(&inner.handles));
                inner.shut_down(handles);
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once_for_any_thread_count() {
        for t in [1, 2, 3, 4] {
            let pool = Pool::new(t).unwrap(); // ok: unit test, fixed small thread count
            assert_eq!(pool.threads(), t);
            for tasks in [0, 1, 2, 7, 64] {
                let hits: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                for _ in 0..20 {
                    pool.run(tasks, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 20),
                    "T={t} tasks={tasks}"
                );
            }
        }
    }

    #[test]
    fn for_each_mut_writes_every_item() {
        let pool = Pool::new(3).unwrap(); // ok: unit test, fixed small thread count
        let mut v = [0usize; 33];
        pool.for_each_mut(&mut v, |i, x| *x = i * i);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i * i));
    }

    #[test]
    fn zero_threads_is_a_typed_error() {
        assert!(matches!(
            Pool::new(0),
            Err(Error::InvalidParameter {
                param: "threads",
                ..
            })
        ));
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_region() {
        let pool = Pool::new(2).unwrap(); // ok: unit test, fixed small thread count
        let ran = AtomicU64::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                ran.fetch_add(1, Ordering::Relaxed);
                assert!(i != 3, "task 3 fails");
            })
        }));
        assert!(r.is_err());
        assert_eq!(ran.load(Ordering::Relaxed), 8);
        // The pool still works afterwards.
        let n = AtomicU64::new(0);
        pool.run(5, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn install_sets_and_restores_the_current_pool() {
        assert!(!current_installed());
        let pool = Pool::new(2).unwrap(); // ok: unit test, fixed small thread count
        pool.install(|| assert!(current_installed()));
        assert!(!current_installed());
    }
}
