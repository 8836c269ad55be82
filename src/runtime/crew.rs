//! Helper threads that take a share of one 4-bit matmul with sub-microsecond hand-off.
//!
//! A decode step runs 49 matrix-vector products of 0.6M to 38.6M weights, 15 to 1000
//! microseconds each on one core. tract's pool (rayon) wakes sleeping workers and blocks the
//! caller meanwhile, which costs more than a second core gives below ~8M weights (BENCHMARKS.md).
//! Here the caller publishes a job, starts on it at once, and helpers that are awake (they poll
//! for a while after each job, yielding the core to anything else runnable) join it: each thread
//! works through its own region of chunks and then steals from the others', so a late helper
//! costs nothing but its share.
//!
//! Soundness of the borrowed job: a helper may read the job only after joining it, which a
//! compare-and-swap on one state word allows only while the job is open and of the expected
//! generation; the caller leaves `run` only through the drop of a guard ([`Published`]) that
//! closes the job and waits until no helper is joined, so a return and an unwind alike wait.
//! A crew has at most one thread a region of a job ([`MOST_THREADS`]), and a panic of a chunk,
//! or of dropping what it panicked with, stays in the thread that ran it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper keeps polling before it sleeps: longer than the gaps between the
/// matmuls of a decode step and between steps, short enough not to matter to an idle program.
const POLL: Duration = Duration::from_millis(3);

/// Beyond this many threads a matrix-vector product is bound by memory, not by cores. A job
/// has a region per thread, so no crew has more.
const MOST_THREADS: usize = 8;

/// Chunks a job can count (front and back of a region share one 64-bit word).
const MOST_CHUNKS: usize = u32::MAX as usize;

/// State word: generation in the high 32 bits, joined helpers above bit 0, bit 0 = open.
const OPEN: u64 = 1;
const HELPER: u64 = 2;
const HELPERS: u64 = (1 << 32) - 2;

struct Job<'a> {
    work: &'a (dyn Fn(usize) + Sync),
    /// Per thread, its region of chunks still unclaimed, `front..back`: front in the low 32
    /// bits, back in the high ones. A thread takes its own region from the front, then the
    /// others' from the back, so each reads the weights in order as long as it can.
    regions: [AtomicU64; MOST_THREADS],
    threads: usize,
    panicked: AtomicBool,
}

impl<'a> Job<'a> {
    fn new(work: &'a (dyn Fn(usize) + Sync), chunks: usize, threads: usize) -> Job<'a> {
        let bound = |t: usize| (chunks * t / threads) as u64;
        let regions = std::array::from_fn(|t| match t < threads {
            true => AtomicU64::new(bound(t + 1) << 32 | bound(t)),
            false => AtomicU64::new(0),
        });
        Job { work, regions, threads, panicked: AtomicBool::new(false) }
    }

    fn claim(&self, region: usize, from_back: bool) -> Option<usize> {
        let region = &self.regions[region];
        let mut span = region.load(Relaxed);
        loop {
            let (front, back) = (span & 0xffff_ffff, span >> 32);
            if front >= back {
                return None;
            }
            let (claimed, next) = match from_back {
                true => (back - 1, (back - 1) << 32 | front),
                false => (front, back << 32 | (front + 1)),
            };
            match region.compare_exchange_weak(span, next, Relaxed, Relaxed) {
                Ok(_) => return Some(claimed as usize),
                Err(now) => span = now,
            }
        }
    }

    /// Works as thread `me` until every chunk is claimed.
    fn work_through(&self, me: usize) {
        let own = std::iter::from_fn(|| self.claim(me, false));
        let stolen = (1..self.threads)
            .flat_map(|i| std::iter::from_fn(move || self.claim((me + i) % self.threads, true)));
        for chunk in own.chain(stolen) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.work)(chunk))) {
                self.panicked.store(true, Relaxed);
                // What a chunk panicked with may panic again when dropped: that too stays here
                // (leaked, the once it happens) rather than unwinding past the job.
                if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                    std::mem::forget(again);
                }
            }
        }
    }
}

struct Shared {
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    /// Taken by the one caller whose job is published; others work alone.
    busy: AtomicBool,
}

struct Helper {
    thread: Thread,
    asleep: Arc<AtomicBool>,
}

pub struct Crew {
    shared: Arc<Shared>,
    helpers: Vec<Helper>,
}

/// The process's crew: one helper per further core, up to [`MOST_THREADS`] threads in all.
pub fn crew() -> &'static Crew {
    static CREW: OnceLock<Crew> = OnceLock::new();
    CREW.get_or_init(|| {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Crew::new(cores.min(MOST_THREADS) - 1)
    })
}

impl Crew {
    /// A crew of up to `helpers` threads, at most one a region of a job beside the caller's;
    /// fewer if the system refuses to start them.
    pub fn new(helpers: usize) -> Crew {
        let helpers = helpers.min(MOST_THREADS - 1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            busy: AtomicBool::new(false),
        });
        let helpers = (0..helpers)
            .map_while(|i| {
                let asleep = Arc::new(AtomicBool::new(false));
                let (state, flag) = (shared.clone(), asleep.clone());
                let handle = thread::Builder::new()
                    .name(format!("gptc-crew-{i}"))
                    .spawn(move || help(&state, &flag, i + 1))
                    .ok()?;
                Some(Helper { thread: handle.thread().clone(), asleep })
            })
            .collect();
        Crew { shared, helpers }
    }

    /// Runs `work(i, chunk)` for each `chunk_len` slice of `data` (the last may be shorter), on
    /// the caller and any helper that joins. `false` if a chunk panicked.
    pub fn run_on_chunks<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        work: impl Fn(usize, &mut [T]) + Sync,
    ) -> bool {
        // Each slot is locked once, by the one thread that claimed its chunk.
        let slots: Vec<Mutex<&mut [T]>> =
            data.chunks_mut(chunk_len.max(1)).map(Mutex::new).collect();
        self.run(slots.len(), &|i| {
            if let Ok(mut slot) = slots[i].lock() {
                work(i, &mut slot)
            }
        })
    }

    /// Runs `work(0) .. work(chunks - 1)`, each exactly once, on the caller and any helper that
    /// joins; returns when all are done. `false` if a chunk panicked.
    pub fn run(&self, chunks: usize, work: &(dyn Fn(usize) + Sync)) -> bool {
        if chunks > MOST_CHUNKS {
            // More than a job counts: in turns (no caller has come near it).
            let mut all_ran = true;
            for first in (0..chunks).step_by(MOST_CHUNKS) {
                let count = MOST_CHUNKS.min(chunks - first);
                all_ran &= self.run(count, &|i| work(first + i));
            }
            return all_ran;
        }
        let shared = &self.shared;
        let alone = chunks < 2
            || self.helpers.is_empty()
            || shared.busy.compare_exchange(false, true, Acquire, Relaxed).is_err();
        if alone {
            let job = Job::new(work, chunks, 1);
            job.work_through(0);
            return !job.panicked.load(Relaxed);
        }
        let job = Job::new(work, chunks, self.helpers.len() + 1);
        // Declared after `job`, so dropped before it, on a return and an unwind alike.
        let published = Published::new(shared, &job);
        for helper in &self.helpers {
            if helper.asleep.swap(false, SeqCst) {
                helper.thread.unpark();
            }
        }
        job.work_through(0);
        drop(published);
        !job.panicked.load(Relaxed)
    }
}

/// The caller's job, open to helpers while this lives. Dropping it (on every way out of
/// [`Crew::run`], unwinding included) closes the job and waits until no helper holds it.
struct Published<'a> {
    shared: &'a Shared,
}

impl<'a> Published<'a> {
    /// Opens `job`; the caller holds `shared.busy`, and no helper is joined (the previous job
    /// ended with none), so the job may be replaced.
    fn new(shared: &'a Shared, job: &'a Job<'_>) -> Published<'a> {
        let erased: *const Job<'_> = job;
        shared.job.store(erased as *mut Job<'static>, Relaxed);
        let generation = (shared.state.load(Relaxed) >> 32).wrapping_add(1);
        shared.state.store(generation << 32 | OPEN, SeqCst);
        Published { shared }
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        shared.state.fetch_and(!OPEN, SeqCst);
        while shared.state.load(Acquire) & HELPERS != 0 {
            std::hint::spin_loop();
        }
        shared.busy.store(false, Release);
    }
}

/// A helper's hold on the job it joined, let go when dropped (however the work ends).
struct Joined<'a>(&'a AtomicU64);

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(HELPER, Release);
    }
}

/// Helper `me` (1 and up; the caller is 0): joins each new job, works it, polls, then sleeps.
fn help(shared: &Shared, asleep: &AtomicBool, me: usize) {
    let mut seen = 0u64;
    let mut idle_since = Instant::now();
    loop {
        let state = shared.state.load(Acquire);
        let generation = state >> 32;
        if state & OPEN != 0 && generation != seen {
            if shared.state.compare_exchange(state, state + HELPER, AcqRel, Acquire).is_ok() {
                let joined = Joined(&shared.state);
                seen = generation;
                // SAFETY: joined to an open job, which its caller keeps alive until we leave.
                let job = unsafe { &*shared.job.load(Acquire) };
                // A crew has no more helpers than a job has regions (`Crew::new`).
                job.work_through(me);
                drop(joined);
                idle_since = Instant::now();
            }
            continue;
        }
        if idle_since.elapsed() < POLL {
            thread::yield_now();
            continue;
        }
        asleep.store(true, SeqCst);
        let state = shared.state.load(SeqCst);
        if state & OPEN != 0 && state >> 32 != seen {
            asleep.store(false, SeqCst);
            continue;
        }
        thread::park();
        asleep.store(false, SeqCst);
        idle_since = Instant::now();
    }
}

/// A matrix that the chunks of one job write, each its own columns of every row.
pub struct DisjointColumns<'a> {
    start: *mut f32,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: writes go through `write`, whose callers own disjoint ranges.
unsafe impl Sync for DisjointColumns<'_> {}

impl<'a> DisjointColumns<'a> {
    pub fn new(y: &'a mut [f32]) -> DisjointColumns<'a> {
        DisjointColumns { start: y.as_mut_ptr(), len: y.len(), _borrow: std::marker::PhantomData }
    }

    /// Copies `values` to `at..at + values.len()` (checked against the matrix's length).
    ///
    /// # Safety
    /// No other thread reads or writes that range while this runs.
    pub unsafe fn write(&self, at: usize, values: &[f32]) {
        assert!(at.checked_add(values.len()).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds as asserted; the range is the caller's alone.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.start.add(at), values.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let crew = Crew::new(3);
        for chunks in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                assert!(crew.run(chunks, &|i| {
                    counts[i].fetch_add(1, Relaxed);
                }));
            }
            assert!(counts.iter().all(|c| c.load(Relaxed) == 50));
        }
    }

    #[test]
    fn helpers_woken_from_sleep_take_part() {
        let crew = Crew::new(1);
        thread::sleep(POLL * 3);
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        for _ in 0..200 {
            crew.run(64, &|_| {
                threads.lock().unwrap().insert(thread::current().id());
                thread::sleep(Duration::from_micros(20));
            });
        }
        assert_eq!(threads.lock().unwrap().len(), 2);
    }

    #[test]
    fn callers_at_once_each_finish_their_own_job() {
        let crew = Crew::new(1);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let sum = AtomicUsize::new(0);
                        crew.run(37, &|i| {
                            sum.fetch_add(i, Relaxed);
                        });
                        assert_eq!(sum.load(Relaxed), 37 * 36 / 2);
                    }
                });
            }
        });
    }

    #[test]
    fn a_crew_has_no_more_helpers_than_a_job_has_regions() {
        let crew = Crew::new(3 * MOST_THREADS);
        assert_eq!(crew.helpers.len(), MOST_THREADS - 1);
        let counts: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..20 {
            assert!(crew.run(counts.len(), &|i| {
                counts[i].fetch_add(1, Relaxed);
            }));
        }
        assert!(counts.iter().all(|c| c.load(Relaxed) == 20));
    }

    /// Panics when dropped: a chunk that panics with it makes `catch_unwind`'s caller panic
    /// anew as it drops the payload.
    struct PanicsWhenDropped;

    impl Drop for PanicsWhenDropped {
        fn drop(&mut self) {
            panic!("dropping what a chunk panicked with");
        }
    }

    /// Chunks on helpers that count when they start, sleep, then count again as they end: a
    /// caller that left before them sees fewer ends than starts.
    struct SlowHelpers {
        caller: thread::ThreadId,
        started: AtomicUsize,
        finished: AtomicUsize,
    }

    impl SlowHelpers {
        fn new() -> SlowHelpers {
            let caller = thread::current().id();
            SlowHelpers { caller, started: AtomicUsize::new(0), finished: AtomicUsize::new(0) }
        }

        /// Runs on helpers; `true` on the caller, which does nothing else.
        fn work(&self) -> bool {
            if thread::current().id() == self.caller {
                return true;
            }
            self.started.fetch_add(1, SeqCst);
            thread::sleep(Duration::from_millis(5));
            self.finished.fetch_add(1, SeqCst);
            false
        }

        /// Until a helper is inside a chunk (or a second has passed).
        fn wait_for_a_helper(&self) {
            let start = Instant::now();
            while self.started.load(SeqCst) == 0 && start.elapsed() < Duration::from_secs(1) {
                thread::yield_now();
            }
        }
    }

    #[test]
    fn a_panic_in_the_callers_part_waits_for_the_helpers() {
        let crew = Crew::new(1);
        let slow = SlowHelpers::new();
        let first = AtomicBool::new(true);
        let ran = catch_unwind(AssertUnwindSafe(|| {
            crew.run(64, &|_| {
                if slow.work() && first.swap(false, SeqCst) {
                    slow.wait_for_a_helper();
                    std::panic::panic_any(PanicsWhenDropped);
                }
            })
        }));
        // Every chunk a helper began ended before `run` was left, and `run` was left by return.
        let (started, finished) = (slow.started.load(SeqCst), slow.finished.load(SeqCst));
        assert!(started > 0, "no helper took part");
        assert_eq!(finished, started, "run was left while helpers worked");
        assert!(matches!(ran, Ok(false)), "the panic is reported, and stays in the chunk");
        assert!(crew.run(16, &|_| {}), "the crew works on");
    }

    #[test]
    fn unwinding_out_of_a_published_job_waits_for_the_helpers() {
        let crew = Crew::new(1);
        let slow = SlowHelpers::new();
        let work = |_: usize| {
            slow.work();
        };
        let job = Job::new(&work, 32, 2);
        // Take the helpers' own region only: the caller unwinds before taking any chunk.
        assert!(crew.shared.busy.compare_exchange(false, true, Acquire, Relaxed).is_ok());
        let left = catch_unwind(AssertUnwindSafe(|| {
            let _published = Published::new(&crew.shared, &job);
            crew.helpers.iter().for_each(|h| h.thread.unpark());
            slow.wait_for_a_helper();
            panic!("the caller leaves");
        }));
        assert!(left.is_err());
        let (started, finished) = (slow.started.load(SeqCst), slow.finished.load(SeqCst));
        assert!(started > 0, "no helper took part");
        assert_eq!(finished, started, "the job was dropped while helpers worked");
        assert!(crew.run(16, &|_| {}), "the guard let the crew go");
    }

    #[test]
    fn a_panicking_chunk_is_reported_not_lost() {
        let crew = Crew::new(1);
        assert!(!crew.run(16, &|i| assert_ne!(i, 9, "the chunk that fails on purpose")));
        assert!(crew.run(16, &|_| {}));
    }
}
